"""Typed model hyper-parameters, read from a released CosyVoice2 model directory (see model_dir.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
    (penalty, temperature, top-p); no top-k (kernels/nucleus_sampling.py)."""

    temperature: float = 0.6
    top_p: float = 0.8
    repetition_penalty: float = 1.3

    def __post_init__(self):
        if not (self.temperature > 0 and 0 < self.top_p <= 1 and self.repetition_penalty > 0):
            raise ValueError(f"bad sampling parameters {self}: temperature > 0, 0 < top_p <= 1, penalty > 0")


@dataclass(frozen=True)
class LLMConfig:
    llm_input_size: int = 896
    llm_output_size: int = 896
    speech_token_size: int = 6561
    mix_ratio: tuple[int, int] = (5, 15)
    sampling: RASConfig = field(default_factory=RASConfig)
    qwen: QwenConfig = field(default_factory=QwenConfig)

    @property
    def eos_token(self) -> int:
        return self.speech_token_size

    @property
    def fill_token(self) -> int:
        return self.speech_token_size + 2

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return tuple(self.speech_token_size + i for i in range(3))

    @property
    def num_speech_rows(self) -> int:
        """Rows of speech_embedding / llm_decoder: the speech tokens plus eos, an unused id and fill."""
        return self.speech_token_size + 3


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
class FlowConfig:
    input_size: int = 512
    output_size: int = 80
    spk_embed_dim: int = 192
    vocab_size: int = 6561
    input_frame_rate: int = 25
    token_mel_ratio: int = 2
    pre_lookahead_len: int = 3
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
    """The 24 kHz prompt mel (matcha mel_spectrogram)."""

    n_fft: int = 1920
    num_mels: int = 80
    sampling_rate: int = 24000
    hop_size: int = 480
    win_size: int = 1920
    fmin: float = 0
    fmax: float = 8000
    center: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """Everything a model directory says; `model_dir` is where its files live."""

    model_dir: Path
    sample_rate: int = 24000
    token_frame_rate: int = 25
    token_mel_ratio: int = 2
    chunk_size: int = 25
    llm: LLMConfig = field(default_factory=LLMConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    hift: HiFTConfig = field(default_factory=HiFTConfig)
    feat: MelConfig = field(default_factory=MelConfig)

    @property
    def samples_per_token(self) -> int:
        """Audio samples per speech token (960 at 24 kHz)."""
        return self.hift.samples_per_frame * self.token_mel_ratio

    def path(self, name: str) -> Path:
        return self.model_dir / name
