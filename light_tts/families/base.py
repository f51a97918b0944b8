"""What a model family supplies to the processes that serve it: the seam between the engines and a model.

A process that serves a model asks its family (families.family_of(model_dir)) for everything that differs from one
model family to another, and never branches on the family's name:

- the model directory: `load_model_config` (its yaml and configs, typed), `check_complete` (every file it needs),
  `flow_files` / `frontend_files` (the files whose content keys group models: equal codec files share decode
  processes, equal frontend files share voice-cache entries and saved voices' features), `frontend_salt` (the
  frontend's settings, part of that key), `llm_weight_files` (what the LLM loads, for the placement check);
- the server's facts (`model_facts` -> ModelFacts): sample rate, token rate, the prompt-feature layout, the first
  audio's token count, the sentence bound, and the voices: a family whose voices are names in its prompt
  (Orpheus) takes no prompt audio (`takes_prompt_audio`), and the HTTP workers check a request's voice against
  the names before anything runs;
- the frontend (encode processes, the offline pipeline): `frontend(...)` (text tokenizer with the family's special
  tokens, speech tokenizer version, speaker model, prompt mel with the yaml's parameters) and `llm_prompt(...)`,
  the LLM's prompt text for each mode (zero-shot, instruct, cross-lingual);
- the LLM (LLM processes): the config the engine is built from carries the family's speech-token facts (ids of
  sos, task_id, eos and fill, the stop set, the min-length rule, sampling defaults, whether the head has a bias);
  `speech_lm(...)` is the family's offline LM (the reference the engine is checked against);
- the codec (decode processes): `decode_engine(...)`, batched token-to-audio across streams, and `token2wav(...)`,
  its one-request reference; `speech_token_filter()` says which LLM tokens reach the codec.

The tools above this layer keep their own table by family name (make_model's writers, the parity CLI's checks).

Family modules import torch and the model code only inside these methods: the HTTP workers and the launcher use the
registry (and the file lists) without loading a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from light_tts.errors import RequestError
from light_tts.request_rules import CROSS_LINGUAL, INSTRUCT, TEXT_MODES, ZERO_SHOT

if TYPE_CHECKING:
    from light_tts.frontend.frontend import Frontend
    from light_tts.llm.spec import LLMSpec
    from light_tts.model_config import ModelConfig

MODES = TEXT_MODES  # the modes with an LLM prompt (voice conversion has none)
__all__ = [
    "CROSS_LINGUAL",
    "INSTRUCT",
    "ZERO_SHOT",
    "MODES",
    "LLMPrompt",
    "ModelFamily",
    "SpeechTokenFilter",
    "filtered",
]


@dataclass(frozen=True)
class ModelFacts:
    """What the server layer needs to know about a model, read from its directory by its family (model_facts).

    A model that takes prompt audio clones the voice of a recording (a saved voice or an upload) whose features
    have the layout below; one that does not (Orpheus) speaks in its named `voices` only (its prompt-feature
    sizes are 0)."""

    sample_rate: int  # of the output audio
    token_rate: float  # speech tokens per second of audio (CosyVoice 25, Orpheus 82.03)
    token_mel_ratio: int  # prompt mel frames per speech token
    embedding_dim: int  # speaker embedding (CAM++)
    num_mels: int
    chunk_tokens: int  # speech tokens per streamed chunk (upstream's token hop; Orpheus: one frame)
    pre_lookahead: int  # tokens the codec looks ahead of a chunk
    fixed_first_audio_tokens: int = 0  # > 0: the codec's first audio needs exactly this many tokens (Orpheus'
    # first window); 0: CosyVoice's first hop (--first_hop_tokens, or 2 chunks - 1) plus the lookahead
    max_sentence_tokens: int = 0  # > 0: a sentence's bound (Orpheus); 0: upstream's 20 per text token
    takes_prompt_audio: bool = True
    voices: tuple[str, ...] = ()  # named voices (a name in its prompt), in the model's order
    # decode batches of up to this many rows take the LLM's small-batch kernels on a GPU unless
    # --llm_small_batch_rows says otherwise: where they measured faster for the family's body (docs/performance.md)
    small_batch_rows: int = 0

    def decode_layout(self) -> tuple[int | float, ...]:
        """What a decode process is built for besides its weights: models that differ here never share one."""
        return (
            self.sample_rate,
            self.token_rate,
            self.token_mel_ratio,
            self.embedding_dim,
            self.num_mels,
            self.chunk_tokens,
            self.pre_lookahead,
        )

    def prompt_layout(self) -> tuple[int, int, int]:
        """(speaker embedding, mel bins, mel frames per token) of its prompt features: the request slots' and
        the voice cache's layout, which every model with prompt audio in one server shares."""
        return self.embedding_dim, self.num_mels, self.token_mel_ratio


@dataclass(frozen=True)
class LLMPrompt:
    """The LLM's side of a voice prompt in one mode (the flow always gets the prompt audio's tokens, mel and
    speaker embedding).

    text: the prompt text that precedes the target text (tokenized by the frontend; text carrying `<|...|>` markup
    is not normalised, as upstream). uses_prompt_speech: the LLM also gets the prompt's speech tokens after
    task_id. counts_in_length: its tokens count toward the min/max speech-token bounds (2x / 20x), as upstream's
    CosyVoice3 cross-lingual mode does (there the marker text is part of the target text itself).
    """

    text: str
    uses_prompt_speech: bool
    counts_in_length: bool = False


class SpeechTokenFilter(Protocol):
    """Decides, token by token, which LLM tokens of one sentence reach the codec (stateful, one per sentence)."""

    def keep(self, token: int) -> bool: ...


def filtered(tokens: Iterable[int], token_filter: SpeechTokenFilter | None) -> Iterator[int]:
    """The tokens a filter keeps (all of them without a filter)."""
    return iter(tokens) if token_filter is None else (t for t in tokens if token_filter.keep(t))


class ModelFamily:
    """Base of every family; subclasses set the class attributes and implement the methods (see module doc)."""

    name: str = ""
    marker: str = ""  # the file that identifies a model directory of this family (upstream AutoModel's yaml)
    modes: tuple[str, ...] = MODES
    CONTROL_TAGS: tuple[str, ...] = ()  # tokenizer tags a text may carry, spoken as one token each (/docs lists them)

    # ---- the model directory ----

    def load_model_config(self, model_dir: str | Path) -> ModelConfig:
        raise NotImplementedError

    def check_complete(self, model_dir: str | Path) -> None:
        """Raises ModelDirError listing every file the directory lacks."""
        raise NotImplementedError

    flow_files: tuple[str, ...] = ()  # codec weights
    frontend_files: tuple[str, ...] = ()  # speech tokenizer, speaker model, text tokenizer
    # the server flags its codec reads: one set that no served model's codec reads is said at startup to do nothing
    decode_flags: tuple[str, ...] = ()

    def frontend_salt(self, cfg) -> str:
        """The frontend's settings that its files do not say (part of the frontend key: equal keys share one
        frontend in the encode processes, and voice-cache entries)."""
        raise NotImplementedError

    def llm_weight_files(self, model_dir: str | Path) -> list[Path]:
        """The files the LLM process loads (their sizes are the placement check's weight estimate)."""
        raise NotImplementedError

    def model_facts(self, cfg) -> ModelFacts:
        raise NotImplementedError

    # ---- frontend ----

    def frontend(
        self,
        cfg: ModelConfig,
        max_text_chars: int | None = None,
        max_prompt_seconds: float | None = None,
        prompt_device: str | None = None,
    ) -> Frontend:
        """The encode processes' frontend: `sentence_tokens(text, voice)` gives the LLM's ids of each sentence;
        a family with prompt audio also computes the prompt's features (see frontend/frontend.py). prompt_device:
        the speech tokenizer and speaker model as torch modules there (None: ONNX Runtime)."""
        from light_tts.frontend.frontend import Frontend

        kwargs: dict[str, Any] = {"prompt_device": prompt_device}
        if max_text_chars is not None:
            kwargs["max_text_chars"] = max_text_chars
        if max_prompt_seconds is not None:
            kwargs["max_prompt_seconds"] = max_prompt_seconds
        return Frontend(cfg, **kwargs)

    def llm_prompt(self, mode: str, transcript: str = "", instruction: str = "") -> LLMPrompt:
        """The LLM prompt of `mode` for a voice with this transcript (zero-shot) or an instruction (instruct)."""
        raise NotImplementedError

    def prompt_counts_in_length(self, mode: str) -> bool:
        """Whether the LLM prompt's text of `mode` counts toward a sentence's length bounds (LLMPrompt)."""
        return mode in self.modes and self.llm_prompt(mode).counts_in_length

    def check_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise RequestError(f"mode {mode!r} is not supported by {self.name} models (modes: {', '.join(self.modes)})")

    # ---- LLM ----

    def llm_spec(self, cfg: ModelConfig) -> LLMSpec:
        """What the LLM engine runs (llm/spec.py): the network, the id layout, the device sampler, the weights."""
        raise NotImplementedError

    def speech_lm(self, cfg: ModelConfig, device: str = "cpu"):
        """The offline speech-token LM (generate / generate_bistream), loaded from the directory's llm.pt."""
        raise NotImplementedError

    # ---- codec ----

    def speech_token_filter(self) -> SpeechTokenFilter | None:
        """A fresh filter for one sentence's tokens on their way to the codec; None: every token goes."""
        return None

    def token2wav(self, cfg: ModelConfig, device: str = "cpu"):
        """The one-request codec: offline(tokens, prompt, seed, speed) and session(prompt, seed, hop_policy, ...)."""
        raise NotImplementedError

    def decode_engine(self, cfg: ModelConfig, **kwargs):
        """The decode processes' engine (decode/engine.py's API), batched across streams."""
        raise NotImplementedError
