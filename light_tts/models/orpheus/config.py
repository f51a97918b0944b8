"""Reads an Orpheus model directory into a typed OrpheusConfig, from the released files themselves.

The directory is the Hugging Face snapshot of an Orpheus fine-tune (canopylabs/orpheus-3b-0.1-ft: config.json,
model*.safetensors (+ index), tokenizer.json, ...) with the SNAC 24 kHz codec beside it in `snac_24khz/`
(hubertsiuzdak/snac_24khz: config.json, pytorch_model.bin). What the released files do not say is not guessed:
- control and audio ids are looked up in tokenizer.json by token name (`<custom_token_N>`, `<|begin_of_text|>`,
  `<|eot_id|>`), never assumed to be 128256 + N; the audio ids must be contiguous;
- the stop id is end-of-speech (`<custom_token_2>`), not config.json's eos_token_id;
- sampling defaults, voices, the prompt's double BOS and the default length are serving choices: the defaults
  below (ref-pkg's served values and the English fine-tune's voices), overridable by an optional `lighttts.json`
  in the directory ({"voices": [...], "temperature": ..., "top_p": ..., "repetition_penalty": ...,
  "max_new_tokens": ..., "double_bos": ..., "audio_only": ...}); generation_config.json is not read (its values
  are not the served ones).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from light_tts.errors import ModelDirError
from light_tts.model_config import NucleusConfig, QwenConfig, RopeScaling
from light_tts.model_dir import read_json

CONFIG_NAME = "config.json"
TOKENIZER_NAME = "tokenizer.json"
SNAC_DIR = "snac_24khz"
SETTINGS_NAME = "lighttts.json"
# audio-only sampling offers the ids from end-of-speech to the audio ids at a frame boundary (the released
# tokenizer: 128258, then 7 control ids, then 128266): at most this many, the ones between ending an utterance too
MAX_STOP_GAP = 16
NUM_POSITIONS = 7  # tokens per audio frame: 1 + 2 + 4 SNAC codes
# the English fine-tune's voices, in Canopy's order (README); lighttts.json lists others (multilingual fine-tunes)
DEFAULT_VOICES = ("tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe")
# the control tokens by role (the training layout of Canopy's dataset notebook)
CONTROL_TOKENS = {
    "start_of_speech": 1,
    "end_of_speech": 2,
    "start_of_human": 3,
    "end_of_human": 4,
    "start_of_ai": 5,
    "end_of_ai": 6,
    "pad": 7,
}
FIRST_AUDIO_TOKEN = 10  # <custom_token_10> is code 0 of position 0


@dataclass(frozen=True)
class OrpheusTokens:
    """Ids of the prompt's and the codec's tokens, as tokenizer.json numbers them."""

    bos: int
    end_of_text: int
    start_of_speech: int
    end_of_speech: int
    start_of_human: int
    end_of_human: int
    start_of_ai: int
    end_of_ai: int
    pad: int
    first_audio: int
    codebook_size: int = 4096
    frame_len: int = NUM_POSITIONS

    @property
    def num_audio_ids(self) -> int:
        return self.codebook_size * self.frame_len


@dataclass(frozen=True)
class SNACConfig:
    """snac_24khz/config.json (the SNAC class's arguments; only the decode path is served)."""

    sampling_rate: int = 24000
    encoder_dim: int = 48
    encoder_rates: tuple[int, ...] = (2, 4, 8, 8)
    latent_dim: int | None = None
    decoder_dim: int = 1024
    decoder_rates: tuple[int, ...] = (8, 8, 4, 2)
    attn_window_size: int | None = None
    codebook_size: int = 4096
    codebook_dim: int = 8
    vq_strides: tuple[int, ...] = (4, 2, 1)
    noise: bool = True
    depthwise: bool = True

    @property
    def latent(self) -> int:
        return self.latent_dim or self.encoder_dim * 2 ** len(self.encoder_rates)

    @property
    def hop_length(self) -> int:
        n = 1
        for r in self.encoder_rates:
            n *= r
        return n

    @property
    def samples_per_frame(self) -> int:
        """Audio samples of one Orpheus frame: one code of the coarsest codebook (2048 at 24 kHz)."""
        return self.hop_length * self.vq_strides[0]


@dataclass(frozen=True)
class OrpheusConfig:
    model_dir: Path
    body: QwenConfig
    tokens: OrpheusTokens
    snac: SNACConfig = field(default_factory=SNACConfig)
    sampling: NucleusConfig = field(default_factory=NucleusConfig)
    voices: tuple[str, ...] = DEFAULT_VOICES
    double_bos: bool = True  # serve ref-pkg's [bos, start_of_human, bos, ...] (vLLM re-adds the bos it decoded)
    max_new_tokens: int = 1200  # ids generated when the request sets no bound (ref-pkg: 14.6 s of audio)
    # sample only the audio ids of each frame position (and end-of-speech at a frame boundary), not the whole
    # vocabulary whose other ids the references' parsers drop (prompt_layout.py)
    audio_only: bool = True
    family: ClassVar[str] = "orpheus"  # which family read it (as ModelConfig.family)

    @property
    def sample_rate(self) -> int:
        return self.snac.sampling_rate

    @property
    def tokens_per_second(self) -> float:
        """Audio tokens per second of audio: the real-time rate (82.03 at 24 kHz)."""
        return self.sample_rate / self.snac.samples_per_frame * self.tokens.frame_len

    def path(self, name: str) -> Path:
        return self.model_dir / name


def is_orpheus_config(data: dict) -> bool:
    """A Llama whose vocabulary holds the 7 x 4096 audio ids past Llama 3's 128,256 (the registry's test)."""
    return "LlamaForCausalLM" in (data.get("architectures") or []) and int(data.get("vocab_size", 0)) >= 156938


def is_orpheus_file(config_json: Path) -> bool:
    """is_orpheus_config of a config.json; False for an unreadable one (then it is no family's)."""
    try:
        return is_orpheus_config(json.loads(config_json.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def read_body(path: Path) -> QwenConfig:
    """The Llama body of config.json; a feature the engine does not implement is a clear error."""
    c = read_json(path)
    missing = [
        k
        for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
        if k not in c
    ]
    if missing:
        raise ModelDirError(f"malformed {path}: missing {', '.join(missing)}")
    if c.get("mlp_bias") or c.get("hidden_act", "silu") != "silu":
        raise ModelDirError(f"{path}: only a SwiGLU MLP without bias is supported")
    heads = c["num_attention_heads"]
    if c.get("head_dim") not in (None, c["hidden_size"] // heads):
        raise ModelDirError(f"{path}: head_dim {c['head_dim']} is not hidden_size / num_attention_heads")
    rope = c.get("rope_scaling") or c.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ModelDirError(f"{path}: rope_type {rope_type!r} is not supported (default, llama3)")
    scaling = None
    if rope_type == "llama3":
        scaling = RopeScaling(
            float(rope["factor"]),
            float(rope["low_freq_factor"]),
            float(rope["high_freq_factor"]),
            int(rope["original_max_position_embeddings"]),
        )
    return QwenConfig(
        hidden_size=c["hidden_size"],
        num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=c.get("num_key_value_heads", heads),
        intermediate_size=c["intermediate_size"],
        vocab_size=c["vocab_size"],
        rms_norm_eps=float(c.get("rms_norm_eps", 1e-5)),
        rope_theta=float(c.get("rope_theta", rope.get("rope_theta", 10000.0))),
        max_position_embeddings=int(c.get("max_position_embeddings", 131072)),
        attention_bias=bool(c.get("attention_bias", False)),
        rope_scaling=scaling,
        tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
    )  # transformers' Llama default: untied


def read_tokens(tokenizer, path: Path) -> OrpheusTokens:
    """Control and audio ids by token name; the audio ids must be one contiguous run (7 x 4096)."""

    def id_of(token: str) -> int:
        i = tokenizer.token_to_id(token)
        if i is None:
            raise ModelDirError(f"{path} has no token {token}")
        return i

    roles = {role: id_of(f"<custom_token_{n}>") for role, n in CONTROL_TOKENS.items()}
    tokens = OrpheusTokens(
        bos=id_of("<|begin_of_text|>"),
        end_of_text=id_of("<|eot_id|>"),
        first_audio=id_of(f"<custom_token_{FIRST_AUDIO_TOKEN}>"),
        **roles,
    )
    for k in range(0, tokens.num_audio_ids, 97):  # a sample of the run, and its last id
        for n in (k, tokens.num_audio_ids - 1):
            if id_of(f"<custom_token_{FIRST_AUDIO_TOKEN + n}>") != tokens.first_audio + n:
                raise ModelDirError(f"{path}: the audio tokens are not numbered contiguously")
    return tokens


def load_tokenizer(model_dir: Path):
    from tokenizers import Tokenizer

    path = model_dir / TOKENIZER_NAME
    if not path.is_file():
        raise ModelDirError(f"missing model file: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises its own exception types for malformed files
        raise ModelDirError(f"cannot load the tokenizer {path}: {e}") from e


def read_snac_config(path: Path) -> SNACConfig:
    c = read_json(path)
    known = SNACConfig.__dataclass_fields__
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in c.items() if k in known}
    cfg = SNACConfig(**values)
    if len(cfg.vq_strides) != 3 or cfg.attn_window_size is not None:
        raise ModelDirError(f"{path}: Orpheus needs the 3-codebook SNAC without local attention (snac_24khz)")
    return cfg


def load_model_config(model_dir: str | Path, tokenizer=None) -> OrpheusConfig:
    """config.json, tokenizer.json (ids), snac_24khz/config.json and the optional lighttts.json."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"model directory not found: {model_dir}")
    body = read_body(model_dir / CONFIG_NAME)
    tokens = read_tokens(tokenizer or load_tokenizer(model_dir), model_dir / TOKENIZER_NAME)
    if tokens.first_audio + tokens.num_audio_ids > body.vocab_size:
        raise ModelDirError(f"{model_dir / CONFIG_NAME}: vocab_size {body.vocab_size} does not hold the audio ids")
    settings = read_json(model_dir / SETTINGS_NAME) if (model_dir / SETTINGS_NAME).is_file() else {}
    known = {"voices", "temperature", "top_p", "repetition_penalty", "max_new_tokens", "double_bos", "audio_only"}
    unknown = set(settings) - known
    if unknown:
        raise ModelDirError(f"{model_dir / SETTINGS_NAME}: unknown keys {', '.join(sorted(unknown))}")
    try:
        sampling = NucleusConfig(
            **{k: float(settings[k]) for k in ("temperature", "top_p", "repetition_penalty") if k in settings}
        )
    except ValueError as e:
        raise ModelDirError(f"{model_dir / SETTINGS_NAME}: {e}") from e
    audio_only = settings.get("audio_only", True)
    if not isinstance(audio_only, bool):
        raise ModelDirError(f"{model_dir / SETTINGS_NAME}: audio_only must be true or false")
    if audio_only and not 0 < tokens.first_audio - tokens.end_of_speech <= MAX_STOP_GAP:
        raise ModelDirError(
            f"{model_dir}: audio-only sampling needs end-of-speech ({tokens.end_of_speech}) at most {MAX_STOP_GAP} "
            f'ids below the audio ids ({tokens.first_audio}); set "audio_only": false in {SETTINGS_NAME}'
        )
    voices = tuple(settings.get("voices", DEFAULT_VOICES))
    if not voices or not all(isinstance(v, str) and v.strip() for v in voices):
        raise ModelDirError(f"{model_dir / SETTINGS_NAME}: voices must be a non-empty list of names")
    return OrpheusConfig(
        model_dir=model_dir,
        body=body,
        tokens=tokens,
        snac=read_snac_config(model_dir / SNAC_DIR / CONFIG_NAME),
        sampling=sampling,
        voices=voices,
        double_bos=bool(settings.get("double_bos", True)),
        max_new_tokens=int(settings.get("max_new_tokens", 1200)),
        audio_only=audio_only,
    )
