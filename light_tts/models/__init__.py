"""Model code: plain nn.Modules whose parameter names match the released checkpoints.

Bodies shared by several families live here (`qwen2.py`, `weights.py`, `speech_lm.py`: the CosyVoice speech LM,
whose special ids come from its config); each family's own modules live in `models/<family>/` (`cosyvoice2/`,
`cosyvoice3/`). Modules here import only `light_tts.kernels` and the core modules (`model_config`, `model_dir`,
`errors`, `sampling`, `request_rules`), never an engine or the server.
"""
