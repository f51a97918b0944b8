"""/docs (Swagger UI) and /redoc served from the package, so they work on a host without internet.

FastAPI's own pages load Swagger UI and ReDoc from a CDN: blank pages offline, and on-premise GPU hosts often
are. The assets come from the `fastapi-offline` package (Swagger UI and ReDoc bundles, MIT, on PyPI); only its
static files are used, served under /static/docs/ (public, like the playground's files: no data in them). The
ReDoc bundle fetches one thing from the internet by itself, the Redocly logo of its menu's footer: it is served
with that address pointed at our favicon.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/static/docs"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
REDOC_LOGO_URL = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


def assets_dir() -> Path:
    import fastapi_offline  # the server extra's Swagger UI and ReDoc bundles

    return Path(fastapi_offline.__file__).with_name("static")


def mount_docs(app: FastAPI) -> None:
    """Call before any other /static mount (the first matching mount wins), on an app made with docs_url=None
    and redoc_url=None."""
    redoc_js: list[bytes] = []  # read on first use

    @app.get(f"{ASSETS_URL}/redoc.standalone.js", include_in_schema=False)  # before the mount, which it shadows
    async def redoc_bundle() -> Response:
        if not redoc_js:
            bundle = (assets_dir() / "redoc.standalone.js").read_bytes()
            redoc_js.append(bundle.replace(REDOC_LOGO_URL, f"{ASSETS_URL}/favicon.png".encode()))
        return Response(redoc_js[0], media_type="text/javascript", headers={"Cache-Control": "max-age=3600"})

    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")

    def url(request: Request, path: str) -> str:
        return request.scope.get("root_path", "") + path

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=url(request, app.openapi_url),
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=url(request, OAUTH2_REDIRECT_URL),
            swagger_js_url=url(request, f"{ASSETS_URL}/swagger-ui-bundle.js"),
            swagger_css_url=url(request, f"{ASSETS_URL}/swagger-ui.css"),
            swagger_favicon_url=url(request, f"{ASSETS_URL}/favicon.png"),
            swagger_ui_parameters={"validatorUrl": None},
        )  # the spec validator badge is an online service

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=url(request, app.openapi_url),
            title=f"{app.title} - ReDoc",
            redoc_js_url=url(request, f"{ASSETS_URL}/redoc.standalone.js"),
            redoc_favicon_url=url(request, f"{ASSETS_URL}/favicon.png"),
            with_google_fonts=False,
        )
