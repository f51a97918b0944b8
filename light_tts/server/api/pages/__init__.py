"""The pages the server shows about itself: the OpenAPI document's extra descriptions (api_docs) and Swagger UI /
ReDoc served offline (docs_pages). The playground stays beside the app (it serves api/static/)."""
