"""CosyVoice3's decode engine (`dit_engine.py`, the family's decode_engine): the shared engine's scheduling,
admission and pool around its DiT flow over the paged pool (`paged_dit.py` over `dit_cache.py`, its packed inputs
`dit_inputs.py`), reusing `flow/`'s packing, page conventions and encoder helpers."""
