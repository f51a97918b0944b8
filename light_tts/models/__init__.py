"""Model code: plain nn.Modules whose parameter names match the released checkpoints.

Bodies shared by several families live here (`qwen2.py`, `weights.py`); each family's own modules live in
`models/<family>/` (`cosyvoice2/`, ...). Modules here import only `light_tts.kernels` and the core modules
(`model_config`, `errors`, `sampling`), never an engine or the server.
"""
