"""HiFT vocoder (NSF source + HiFi-GAN upsampler + iSTFT head): mel [B,80,T] -> 24 kHz audio [B, T*480]."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from light_tts.kernels.flow.flow_ops import keyed_noise, snake
from light_tts.model_config import HiFTConfig
from light_tts.models.cosyvoice2.hift.f0_predictor import ConvRNNF0Predictor
from light_tts.models.cosyvoice2.hift.source import Generators, HarmonicSource, draw_source_noise
from light_tts.models.weights import load_strict, read_state_dict


def to_parametrized_weight_norm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename legacy weight-norm keys (`x.weight_g`, `x.weight_v`) to the parametrization form
    (`x.parametrizations.weight.original0`, `...original1`); both hold the same g and v tensors."""
    legacy_suffixes = {
        ".weight_g": ".parametrizations.weight.original0",
        ".weight_v": ".parametrizations.weight.original1",
    }
    converted = {}
    for key, value in state_dict.items():
        for old, new in legacy_suffixes.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
                break
        converted[key] = value
    return converted


def fold_weight_norm(module: nn.Module) -> None:
    """Replace every weight-norm parametrization by its computed weight, so forward does not recompute g*v/|v|."""
    for m in module.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


def fourier_bases(window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv kernels of the windowed one-sided DFT of len(window) = n_fft points and of its inverse, both
    (2 * (n_fft/2 + 1), 1, n_fft) over channels [real bins | imaginary bins]: the STFT is a strided conv1d with the
    first, the iSTFT (before the window-envelope division) a strided conv_transpose1d with the second. As
    convolutions they run in CUDA graphs, which torch.istft cannot (it checks the envelope on the host)."""
    n_fft = window.shape[0]
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    angle = 2 * torch.pi * k * torch.arange(n_fft, dtype=torch.float64)[None, :] / n_fft  # (bins, n_fft)
    w = window.double()[None, :]
    forward = torch.cat([torch.cos(angle) * w, -torch.sin(angle) * w])
    # irfft: the DC and Nyquist bins count once and their imaginary parts are ignored, the others twice
    weight = torch.full_like(k, 2.0)
    weight[0] = weight[-1] = 1.0
    inverse = torch.cat([torch.cos(angle) * weight, -torch.sin(angle) * weight]) * w / n_fft
    return forward.float()[:, None], inverse.float()[:, None]


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha with a per-channel alpha (stored linearly, not in log scale)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return snake(x.contiguous(), self.alpha)  # one fused kernel on a GPU, the same formula in torch else


class ResBlock(nn.Module):
    """Three (Snake, dilated conv, Snake, conv) residual steps at a fixed width and kernel size."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()

        def conv(dilation: int) -> nn.Conv1d:
            padding = (kernel_size * dilation - dilation) // 2  # keeps the length
            return weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=dilation, padding=padding))

        self.convs1 = nn.ModuleList(conv(d) for d in dilations)
        self.convs2 = nn.ModuleList(conv(1) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for act1, conv1, act2, conv2 in zip(self.activations1, self.convs1, self.activations2, self.convs2):
            x = x + conv2(act2(conv1(act1(x))))
        return x


class HiFT(nn.Module):
    """The released HiFTGenerator's parameters (same names), for inference only."""

    def __init__(self, cfg: HiFTConfig):
        super().__init__()
        self.cfg = cfg
        self.n_fft = cfg.istft_n_fft
        self.hop = cfg.istft_hop_len
        self.samples_per_frame = cfg.samples_per_frame
        self.f0_predictor = ConvRNNF0Predictor(cfg.f0_predictor)
        self.m_source = HarmonicSource(cfg)
        self.conv_pre = weight_norm(nn.Conv1d(cfg.in_channels, cfg.base_channels, 7, padding=3))
        widths = [cfg.base_channels // 2**i for i in range(len(cfg.upsample_rates) + 1)]
        self.ups = nn.ModuleList(
            weight_norm(nn.ConvTranspose1d(widths[i], widths[i + 1], k, u, padding=(k - u) // 2))
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))
        )
        # The source STFT ([B, n_fft+2, T_s/hop]) is strided down to each upsampling stage's rate.
        spec_channels = self.n_fft + 2
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        stage_strides = [1]
        for u in reversed(cfg.upsample_rates[1:]):
            stage_strides.insert(0, stage_strides[0] * u)
        for i, (stride, k, d) in enumerate(
            zip(stage_strides, cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilation_sizes)
        ):
            if stride == 1:
                self.source_downs.append(nn.Conv1d(spec_channels, widths[i + 1], 1))
            else:
                self.source_downs.append(
                    nn.Conv1d(spec_channels, widths[i + 1], stride * 2, stride, padding=stride // 2)
                )
            self.source_resblocks.append(ResBlock(widths[i + 1], k, tuple(d)))
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.resblocks = nn.ModuleList(
            ResBlock(widths[i + 1], k, tuple(d))
            for i in range(len(cfg.upsample_rates))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)
        )
        self.conv_post = weight_norm(nn.Conv1d(widths[-1], spec_channels, 7, padding=3))
        self._init_fourier()
        # Callables with synthesize's / synthesize_keyed's signature that run them instead (an engine's CUDA
        # graphs); None: the methods themselves.
        self.runner = None
        self.keyed_runner = None
        self.conv_dtype = torch.float32  # of the convolution stack (set_conv_dtype)

    def _init_fourier(self) -> None:
        """The STFT / iSTFT buffers (self.n_fft): scipy's periodic hann, computed in float64 and rounded like
        upstream's numpy window, and its Fourier bases."""
        window = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float64).float()
        self.register_buffer("stft_window", window, persistent=False)
        stft_basis, istft_basis = fourier_bases(window)
        self.register_buffer("stft_basis", stft_basis, persistent=False)
        self.register_buffer("istft_basis", istft_basis, persistent=False)

    @classmethod
    def from_checkpoint(cls, cfg: HiFTConfig, path: Path, fold: bool = True) -> HiFT:
        """Load hift.pt (either weight-norm key form), strictly; fold weight norm unless told not to."""
        model = cls(cfg)
        load_strict(model, to_parametrized_weight_norm(read_state_dict(Path(path))), str(path))
        if fold:
            fold_weight_norm(model)
        return model.eval()

    def set_conv_dtype(self, dtype: torch.dtype) -> None:
        """Runs the convolution stack (conv_pre, upsampler, resblocks, source downsampling, conv_post) in `dtype`;
        the f0 predictor, the harmonic source, the STFT and the exp/iSTFT head stay in float32 (the voicing
        threshold, the phase integration and the magnitude's exp need it)."""
        for m in (self.conv_pre, self.ups, self.source_downs, self.source_resblocks, self.resblocks, self.conv_post):
            m.to(dtype)
        self.conv_dtype = dtype

    def _stft(self, x: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, 2F, frames) [real | imaginary], as torch.stft(center=True, reflect padding)."""
        x = F.pad(x[:, None], (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        return F.conv1d(x, self.stft_basis, stride=self.hop)

    def _istft(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, 2F, frames) [real | imaginary] -> (B, hop * (frames - 1)), as torch.istft(center=True)."""
        frames = spec.shape[2]
        audio = F.conv_transpose1d(spec, self.istft_basis, stride=self.hop)[:, 0]  # (B, n_fft + hop*(frames-1))
        square = self.stft_window.square()[None, None]
        envelope = F.conv_transpose1d(square.new_ones(1, 1, frames), square, stride=self.hop)[0, 0]
        half = self.n_fft // 2
        return audio[:, half:-half] / envelope[half:-half]  # the envelope is > 0 inside the centre-trimmed span

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """mel [B,80,T] and excitation [B,1,T*480] -> audio [B, T*480], clamped to audio_limit."""
        source_spec = self._stft(source.squeeze(1)).to(self.conv_dtype)
        audio = self._synthesis(self.conv_pre(mel.to(self.conv_dtype)), source_spec)
        return audio.clamp(-self.cfg.audio_limit, self.cfg.audio_limit)

    def _synthesis(self, x: torch.Tensor, source_spec: torch.Tensor) -> torch.Tensor:
        """conv_pre's output and the source STFT (both in conv_dtype) -> audio (unclamped, float32): upsampling
        stages fused with the strided source, resblocks averaged, conv_post to magnitude and phase, iSTFT."""
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, self.cfg.lrelu_slope))
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")  # one more frame so the iSTFT yields exactly T*480 samples
            x = x + self.source_resblocks[i](self.source_downs[i](source_spec))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs = xs + block(x)
            x = xs / self.num_kernels
        x = self.conv_post(F.leaky_relu(x)).float()  # default slope 0.01 here, as upstream
        num_bins = self.n_fft // 2 + 1
        magnitude = torch.exp(x[:, :num_bins]).clamp(max=1e2)
        phase = torch.sin(x[:, num_bins:])  # upstream squashes the phase through sin; kept for parity
        return self._istft(torch.cat([magnitude * torch.cos(phase), magnitude * torch.sin(phase)], dim=1))

    @torch.inference_mode()
    def inference(
        self,
        mel: torch.Tensor,
        cache_source: torch.Tensor | None = None,
        generator: Generators = None,
        noise_keys: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mel [B,80,T] -> (audio [B, T*480], excitation [B,1,T*480]).

        cache_source [B,1,S] (or None / S=0) replaces the first S excitation samples, so the harmonic phase of
        a streamed chunk continues the previous chunk's. `generator`: one torch.Generator for the batch, one per
        request (each request then draws exactly what a single call with it would), or None for the global RNG.
        noise_keys (seeds [B], sample offsets [B], int64 on mel's device): counter-based noise instead of the
        generators (kernels/flow/hift_noise.py), drawn inside the call (inside a CUDA graph too).
        """
        if cache_source is None:
            cache_source = mel.new_zeros(mel.shape[0], 1, 0)
        if noise_keys is not None:
            return (self.keyed_runner or self.synthesize_keyed)(mel, *noise_keys, cache_source)
        num_samples = mel.shape[2] * self.samples_per_frame
        phase, noise = draw_source_noise(mel.shape[0], num_samples, self.m_source.num_harmonics, generator, mel.device)
        return (self.runner or self.synthesize)(mel, phase, noise, cache_source)

    def synthesize_keyed(
        self, mel: torch.Tensor, seeds: torch.Tensor, offsets: torch.Tensor, cache_source: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """synthesize with each row's noise drawn from its (seed, sample offset) in one launch (no host sync)."""
        phase, noise = keyed_noise(seeds, offsets, mel.shape[2] * self.samples_per_frame, self.m_source.num_harmonics)
        return self.synthesize(mel, phase, noise, cache_source)

    def synthesize(
        self, mel: torch.Tensor, phase: torch.Tensor, noise: torch.Tensor, cache_source: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """inference after its random draws (initial phases [B, H], noise [B, T*480, H]): no host sync, no RNG,
        so that it can be captured in a CUDA graph."""
        f0 = self.f0_predictor(mel)  # (B, T)
        f0 = f0.repeat_interleave(self.samples_per_frame, dim=1).unsqueeze(-1)  # (B, T_s, 1), nearest upsampling
        source = self.m_source(f0, phase, noise).transpose(1, 2)  # (B, 1, T_s)
        if cache_source.shape[2] > 0:
            source = torch.cat([cache_source, source[:, :, cache_source.shape[2] :]], dim=2)
        return self.decode(mel, source), source
