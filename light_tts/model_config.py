"""Typed model hyper-parameters, read from a released model directory by its family's loader (model_dir.py for
CosyVoice2, models/cosyvoice3/config.py for CosyVoice3). The parts every family has (LLMConfig with its SpeechIds,
MelConfig, FrontendConfig, the top-level facts) are defined here; a family's own flow and vocoder configs live
beside its modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3 rope scaling (config.json `rope_scaling` / `rope_parameters` with rope_type llama3): it rewrites the
    low rotary frequencies themselves, so it matters at every position (light_tts.models.rope)."""

    factor: float = 32.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class QwenConfig:
    """A pre-norm decoder body: Qwen2 (the speech-token LM of CosyVoice-BlankEN/config.json, the defaults) or Llama
    (no qkv bias, llama3 rope scaling; `DecoderConfig` names it so)."""

    hidden_size: int = 896
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    intermediate_size: int = 4864
    vocab_size: int = 151936
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    max_position_embeddings: int = 32768
    attention_bias: bool = True  # q, k and v projections carry a bias (Qwen2) or not (Llama)
    rope_scaling: RopeScaling | None = None
    tie_word_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


DecoderConfig = QwenConfig  # the same body class serves Llama


@dataclass(frozen=True)
class RASConfig:
    """Repetition-aware sampling: nucleus sampling with a repetition window fallback."""

    top_p: float = 0.8
    top_k: int = 25
    win_size: int = 10
    tau_r: float = 0.1


@dataclass(frozen=True)
class NucleusConfig:
    """Temperature, top-p and a repetition penalty over the ids a request generated, applied in vLLM's order
    (penalty, temperature, top-p); no top-k (kernels/llm/nucleus_sampling.py)."""

    temperature: float = 0.6
    top_p: float = 0.8
    repetition_penalty: float = 1.3

    def __post_init__(self):
        if not (self.temperature > 0 and 0 < self.top_p <= 1 and self.repetition_penalty > 0):
            raise ValueError(f"bad sampling parameters {self}: temperature > 0, 0 < top_p <= 1, penalty > 0")


@dataclass(frozen=True)
class MinLenRule:
    """What a decode step forbids before min_len tokens (upstream's `ignore_eos`), one of two forms:
    reject_from: a drawn id >= it is thrown away and drawn again (CosyVoice2's rule as we keep it);
    masked_id: that one id's score is -inf before the draw (upstream CosyVoice3 masks speech_token_size, which is
    its sos id, so eos and the other stop ids stay allowed and a stream can end before min_len)."""

    reject_from: int | None = None
    masked_id: int | None = None


@dataclass(frozen=True)
class SpeechIds:
    """The speech vocabulary of a speech LM (rows of speech_embedding and llm_decoder) and its special ids; set by the
    family (upstream hard-codes them in its LM class, not in the yaml)."""

    num_rows: int  # rows of speech_embedding / llm_decoder: the speech tokens and the special ids
    eos: int
    fill: int  # bistream: asks for 5 more text tokens
    stop_ids: tuple[int, ...]  # any of them ends a decode
    sos_row: int | None  # the speech_embedding row of sos; None: llm_embedding row 0 (CosyVoice2)
    task_row: int | None  # likewise task_id (llm_embedding row 1)
    decoder_bias: bool  # llm_decoder has a bias
    min_len: MinLenRule

    @classmethod
    def cosyvoice2(cls, speech_token_size: int) -> SpeechIds:
        """eos, an unused id and fill after the speech tokens; sos and task_id in llm_embedding."""
        n = speech_token_size
        return cls(
            num_rows=n + 3,
            eos=n,
            fill=n + 2,
            stop_ids=(n, n + 1, n + 2),
            sos_row=None,
            task_row=None,
            decoder_bias=True,
            min_len=MinLenRule(reject_from=n),
        )


@dataclass(frozen=True)
class LLMConfig:
    llm_input_size: int = 896
    llm_output_size: int = 896
    speech_token_size: int = 6561
    mix_ratio: tuple[int, int] = (5, 15)
    sampling: RASConfig = field(default_factory=RASConfig)
    qwen: QwenConfig = field(default_factory=QwenConfig)
    ids: SpeechIds = field(default_factory=lambda: SpeechIds.cosyvoice2(6561))
    # bistream: the prompt text up to and including this text id goes right after sos, before the text/speech
    # interleave (CosyVoice3's <|endofprompt|>); None: the whole prompt text is interleaved (CosyVoice2)
    prompt_end_text_id: int | None = None

    @property
    def eos_token(self) -> int:
        return self.ids.eos

    @property
    def fill_token(self) -> int:
        return self.ids.fill

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return self.ids.stop_ids

    @property
    def num_speech_rows(self) -> int:
        return self.ids.num_rows


@dataclass(frozen=True)
class EncoderConfig:
    """UpsampleConformerEncoder of the flow (rel-pos espnet attention, no conv module)."""

    input_size: int = 512
    output_size: int = 512
    attention_heads: int = 8
    linear_units: int = 2048
    num_blocks: int = 6
    num_up_blocks: int = 4
    upsample_stride: int = 2
    normalize_before: bool = True
    static_chunk_size: int = 25
    pre_lookahead_len: int = 3


@dataclass(frozen=True)
class EstimatorConfig:
    """CausalConditionalDecoder: the CFM velocity estimator."""

    in_channels: int = 320
    out_channels: int = 80
    channels: tuple[int, ...] = (256,)
    attention_head_dim: int = 64
    n_blocks: int = 4
    num_mid_blocks: int = 12
    num_heads: int = 8
    act_fn: str = "gelu"
    static_chunk_size: int = 50
    num_decoding_left_chunks: int = -1


@dataclass(frozen=True)
class CFMConfig:
    in_channels: int = 240
    spk_emb_dim: int = 80
    sigma_min: float = 1e-6
    t_scheduler: str = "cosine"
    inference_cfg_rate: float = 0.7
    n_timesteps: int = 10
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)


@dataclass(frozen=True)
class TokenFlowConfig:
    """The token side every CosyVoice flow has: token embedding, speaker affine layer, lookahead, mel ratio."""

    input_size: int = 512
    output_size: int = 80
    spk_embed_dim: int = 192
    vocab_size: int = 6561
    input_frame_rate: int = 25
    token_mel_ratio: int = 2
    pre_lookahead_len: int = 3


@dataclass(frozen=True)
class FlowConfig(TokenFlowConfig):
    """CosyVoice2's flow: the conformer encoder and a CFM with the causal U-Net estimator."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    cfm: CFMConfig = field(default_factory=CFMConfig)


@dataclass(frozen=True)
class F0PredictorConfig:
    num_class: int = 1
    in_channels: int = 80
    cond_channels: int = 512


@dataclass(frozen=True)
class HiFTConfig:
    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 24000
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10
    upsample_rates: tuple[int, ...] = (8, 5, 3)
    upsample_kernel_sizes: tuple[int, ...] = (16, 11, 7)
    istft_n_fft: int = 16
    istft_hop_len: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_predictor: F0PredictorConfig = field(default_factory=F0PredictorConfig)

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per mel frame (480 at 24 kHz)."""
        n = self.istft_hop_len
        for r in self.upsample_rates:
            n *= r
        return n


@dataclass(frozen=True)
class MelConfig:
    """The 24 kHz prompt mel (matcha mel_spectrogram). fmax None is the Nyquist frequency (CosyVoice3's 12 kHz)."""

    n_fft: int = 1920
    num_mels: int = 80
    sampling_rate: int = 24000
    hop_size: int = 480
    win_size: int = 1920
    fmin: float = 0
    fmax: float | None = 8000
    center: bool = False

    @property
    def top_hz(self) -> float:
        return self.sampling_rate / 2 if self.fmax is None else self.fmax


@dataclass(frozen=True)
class FrontendConfig:
    """Which frontend files and text tokens a model uses (upstream picks them in its model class and its
    `get_tokenizer.version`)."""

    speech_tokenizer: str = "speech_tokenizer_v2.onnx"
    tokenizer_version: str = "cosyvoice2"  # the special tokens added to the Qwen tokenizer (frontend/tokenizer.py)


@dataclass(frozen=True)
class ModelConfig:
    """Everything a model directory says; `model_dir` is where its files live, `family` which family read it.
    `flow` and `hift` are the family's own configs (FlowConfig and HiFTConfig for CosyVoice2)."""

    model_dir: Path
    family: str = "cosyvoice2"
    sample_rate: int = 24000
    token_frame_rate: int = 25
    token_mel_ratio: int = 2
    chunk_size: int = 25
    llm: LLMConfig = field(default_factory=LLMConfig)
    flow: Any = field(default_factory=FlowConfig)
    hift: Any = field(default_factory=HiFTConfig)
    feat: MelConfig = field(default_factory=MelConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)

    @property
    def samples_per_token(self) -> int:
        """Audio samples per speech token (960 at 24 kHz)."""
        return self.hift.samples_per_frame * self.token_mel_ratio

    def path(self, name: str) -> Path:
        return self.model_dir / name
