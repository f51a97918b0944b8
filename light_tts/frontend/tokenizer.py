"""The Qwen2 text tokenizer of CosyVoice2 (CosyVoice-BlankEN) with the CosyVoice2 special tokens added."""

from __future__ import annotations

import logging
from pathlib import Path

from light_tts.errors import ModelDirError
from light_tts.model_dir import TOKENIZER_FILES

# Upstream adds these in this order; their ids follow the tokenizer files' own added tokens
# (151646.. for the released files, so len == 151663).
COSYVOICE2_SPECIAL_TOKENS = (
    "<|im_start|>", "<|im_end|>", "<|endofprompt|>",
    "[breath]", "<strong>", "</strong>", "[noise]",
    "[laughter]", "[cough]", "[clucking]", "[accent]",
    "[quick_breath]", "<laughter>", "</laughter>",
    "[hissing]", "[sigh]", "[vocalized-noise]",
    "[lipsmack]", "[mn]",
)


class QwenTokenizer:
    """encode/decode as upstream QwenTokenizer: no BOS/EOS added, special tokens skipped on decode."""

    def __init__(self, token_dir: str | Path):
        token_dir = Path(token_dir)
        for name in TOKENIZER_FILES:
            if not (token_dir / name).is_file():
                raise ModelDirError(f"tokenizer file missing: {token_dir / name}")
        # transformers logs a long notice about the added tokens; it is expected here
        logging.getLogger("transformers").setLevel(logging.ERROR)
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(token_dir))
        except Exception as e:
            raise ModelDirError(f"cannot load the tokenizer in {token_dir}: {e}") from e
        self.special_tokens = COSYVOICE2_SPECIAL_TOKENS  # each one token id, wherever it stands in a text
        self.tokenizer.add_special_tokens({
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "additional_special_tokens": list(self.special_tokens),
        })

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def token_id(self, token: str) -> int:
        return self.tokenizer.convert_tokens_to_ids(token)

    def __len__(self) -> int:
        return len(self.tokenizer)
