"""Writes a working Qwen2-style tokenizer folder (CosyVoice-BlankEN) for made-up test models.

The BPE is trained here on a small built-in Chinese/English sample, for both sizes: a `full` model's text
embedding still has 151936 rows (config.json says so) but only the first few hundred are ever used.
The files load through transformers' Qwen2Tokenizer exactly as the released ones do.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from light_tts.model_config import QwenConfig
from light_tts.text_tokens import SPECIAL_TOKENS

# Qwen2's pre-tokenizer split (the same regex its tokenizer.json carries), so merges train on the same pieces.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

TINY_QWEN = QwenConfig(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=160,
    vocab_size=1200,
    max_position_embeddings=4096,
)

SAMPLE_TEXT = """\
Hello, this is a short sample of English text used to train a tiny tokenizer. The quick brown fox jumps over
the lazy dog while the weather stays warm and sunny. We measure the latency of the first audio chunk, then the
real time factor of the whole stream. Streaming speech synthesis turns text into sound as soon as it arrives;
a voice prompt of a few seconds sets the speaker. Numbers such as one hundred and twenty-three, or the year two
thousand and twenty-four, are spelled out before tokenisation. Questions? Yes! Please read the next sentence
slowly: "Good morning, everyone." It's nine o'clock, and we're ready to begin. Thank you very much for listening.
收到好友从远方寄来的生日礼物，那份意外的惊喜与深深的祝福让我心中充满了甜蜜的快乐，笑容如花儿般绽放。
今天天气很好，我们一起去公园散步吧。希望你喜欢这个声音，也欢迎你再来听听我们的新节目。
语音合成系统把文字变成声音，第一段音频的延迟越短，用户的体验就越好。请问现在几点了？已经九点半了！
他说：“我们明天早上八点在学校门口见面。”中文和英文混合的句子也很常见，例如 CosyVoice 和 Qwen 模型。
春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。床前明月光，疑是地上霜。举头望明月，低头思故乡。
"""


def train_bpe(vocab_size: int):
    """A byte-level BPE on SAMPLE_TEXT with Qwen2's pre-tokenisation; deterministic."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(SAMPLE_TEXT.splitlines(), trainer=trainer)
    return tok


def tokenizer_config(num_bpe: int) -> dict:
    """Qwen2's tokenizer_config.json: its three specials sit right after the BPE vocabulary."""
    added = {
        str(num_bpe + i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in enumerate(QWEN2_SPECIALS)
    }
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": list(QWEN2_SPECIALS[1:]),
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def qwen2_config(qwen: QwenConfig) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "hidden_size": qwen.hidden_size,
        "intermediate_size": qwen.intermediate_size,
        "num_hidden_layers": qwen.num_hidden_layers,
        "num_attention_heads": qwen.num_attention_heads,
        "num_key_value_heads": qwen.num_key_value_heads,
        "vocab_size": qwen.vocab_size,
        "rms_norm_eps": qwen.rms_norm_eps,
        "rope_theta": qwen.rope_theta,  # older transformers read this key, newer ones rope_parameters
        "rope_parameters": {"rope_theta": qwen.rope_theta, "rope_type": "default"},
        "max_position_embeddings": qwen.max_position_embeddings,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "sliding_window": None,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
        "bos_token_id": None,
        "eos_token_id": None,
    }


def write_tokenizer(
    out_dir: str | Path,
    size: str,
    vocab_size: int | None = None,
    qwen: QwenConfig | None = None,
    num_bpe: int = 1000,
    version: str = "cosyvoice2",
) -> int:
    """Write vocab.json, merges.txt, tokenizer_config.json and config.json; return the tokenizer's length once the
    special tokens of `version` are added (cosyvoice2: 19, cosyvoice3: 280).

    config.json takes `qwen`'s dims (default: the fixture's tiny dims, or the released 0.5B ones for `full`), with
    `vocab_size` (the LLM's text-embedding rows) overriding qwen.vocab_size when given.
    Raises ValueError when the tokenizer would not fit in those rows.
    """
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    qwen = qwen or (TINY_QWEN if size == "tiny" else QwenConfig())
    if vocab_size is not None:
        qwen = replace(qwen, vocab_size=vocab_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    bpe = train_bpe(num_bpe)
    num_vocab = bpe.get_vocab_size()
    num_tokens = num_vocab + len(set(QWEN2_SPECIALS) | set(SPECIAL_TOKENS[version]))
    if num_tokens > qwen.vocab_size:
        raise ValueError(f"tokenizer has {num_tokens} tokens but the LLM vocab_size is {qwen.vocab_size}")
    bpe.model.save(str(out_dir))  # vocab.json + merges.txt in the GPT-2/Qwen layout
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(num_vocab), indent=2))
    (out_dir / "config.json").write_text(json.dumps(qwen2_config(qwen), indent=2))
    return num_tokens
