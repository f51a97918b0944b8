"""The three back-end processes, one class with one loop each: encode (text normalisation, tokens, prompt
features, the voice cache), LLM (speech tokens, continuous batching) and decode (flow + HiFT). `worker_common.py`
holds what their loops share (process entry, abort bookkeeping); `idle*.py` the idle release of GPU memory.

Imports the engines, `runtime`, `ipc` and `metrics`; never `api` or `launch`.
"""
