"""CosyVoice3's own modules: the DiT flow (flow/), the causal HiFT (hift/) and its config reader (config.py). The
speech LM is the shared models/speech_lm.py with CosyVoice3's SpeechIds."""
