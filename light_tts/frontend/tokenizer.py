"""The Qwen2 text tokenizer (CosyVoice-BlankEN) with the special tokens of the model's tokenizer version added
(upstream get_qwen_tokenizer(version): CosyVoice2Tokenizer or CosyVoice3Tokenizer)."""

from __future__ import annotations

import logging
from pathlib import Path

from light_tts.errors import ModelDirError
from light_tts.model_dir import TOKENIZER_FILES
from light_tts.text_tokens import SPECIAL_TOKENS


class QwenTokenizer:
    """encode/decode as upstream QwenTokenizer: no BOS/EOS added, special tokens skipped on decode."""

    def __init__(self, token_dir: str | Path, version: str = "cosyvoice2"):
        if version not in SPECIAL_TOKENS:
            raise ModelDirError(f"unknown tokenizer version {version!r} (known: {', '.join(SPECIAL_TOKENS)})")
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
        self.special_tokens = SPECIAL_TOKENS[version]  # each one token id, wherever it stands in a text
        self.tokenizer.add_special_tokens(
            {
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "additional_special_tokens": list(self.special_tokens),
            }
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def token_id(self, token: str) -> int:
        return self.tokenizer.convert_tokens_to_ids(token)

    def __len__(self) -> int:
        return len(self.tokenizer)
