"""What a voice prompt contributes to a request, as plain numpy arrays (no audio or tokenizer imports needed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Prompt:
    """Everything a voice prompt contributes to a request; numpy so it can be cached and sent between processes."""

    text_tokens: np.ndarray  # int32 [Lp], the normalised prompt transcript
    speech_tokens: np.ndarray  # int32 [P], 25 Hz
    embedding: np.ndarray  # float32 [192], CAM++ speaker embedding
    mel: np.ndarray  # float32 [2P, 80], 24 kHz prompt mel (token_mel_ratio frames per token)
