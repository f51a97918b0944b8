"""Model code: plain nn.Modules whose parameter names match the released CosyVoice2 checkpoints."""
