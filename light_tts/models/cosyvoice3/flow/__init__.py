"""CosyVoice3's flow: token embedding and pre-lookahead layer, the CFM with a DiT estimator."""

from light_tts.models.cosyvoice3.flow.flow import DiTFlow, DiTFlowState

__all__ = ["DiTFlow", "DiTFlowState"]
