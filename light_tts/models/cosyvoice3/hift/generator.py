"""CosyVoice3's vocoder (upstream CausalHiFTGenerator): mel -> 24 kHz audio, causal but for a short lookahead.

As HiFTGenerator (CosyVoice2's HiFT, whose STFT/iSTFT it inherits, as upstream's class does) with: causal convs
everywhere (left zero padding); conv_pre (k=5) looking 4 frames ahead; nearest-upsampling + causal conv instead of
transposed convs; causal strided source convs; an f0 predictor looking 3 frames ahead and run in float64; fixed
noise tables instead of per-call draws (source.py).

finalize=False (a stream's chunk): the last 3 mel frames only feed the f0 predictor's lookahead, the next 4 only
conv_pre's, and the last 480 samples are dropped: the audio of all but the last 8 frames, equal to what
finalize=True gives for them. `inference` is upstream's call over a whole mel; streaming.py composes the same steps
(f0, phases, excitation, decode) over a window of recent frames, so that a chunk does not re-run the whole past.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from light_tts.models.cosyvoice2.hift.generator import HiFT, fold_weight_norm, to_parametrized_weight_norm
from light_tts.models.cosyvoice3.config import CausalHiFTConfig, DiTFlowConfig
from light_tts.models.cosyvoice3.hift.layers import (
    CausalConv1d,
    CausalDownsample,
    CausalF0Predictor,
    CausalResBlock,
    CausalUpsample,
)
from light_tts.models.cosyvoice3.hift.source import CausalSource, NoiseTable
from light_tts.models.weights import load_strict, read_state_dict

HOLD_BACK_FRAMES = 8  # a non-final call's audio stops this many mel frames before its input's end


class CausalHiFT(HiFT):
    """The released CausalHiFTGenerator's parameters (same names), for inference only."""

    def __init__(self, cfg: CausalHiFTConfig, flow_cfg: DiTFlowConfig):
        nn.Module.__init__(self)  # HiFT's layers are not causal: only its STFT / iSTFT are taken over
        self.cfg = cfg
        self.n_fft, self.hop = cfg.istft_n_fft, cfg.istft_hop_len
        self.samples_per_frame = cfg.samples_per_frame
        self.m_source = CausalSource(cfg)
        self.conv_pre = weight_norm(
            CausalConv1d(cfg.in_channels, cfg.base_channels, cfg.conv_pre_look_right + 1, looks_ahead=True)
        )
        widths = [cfg.base_channels // 2**i for i in range(len(cfg.upsample_rates) + 1)]
        self.ups = nn.ModuleList(
            weight_norm(CausalUpsample(widths[i], widths[i + 1], k, u))
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))
        )
        spec_channels = self.n_fft + 2
        stage_strides = [1]  # the source STFT is strided down to each upsampling stage's rate
        for u in reversed(cfg.upsample_rates[1:]):
            stage_strides.insert(0, stage_strides[0] * u)
        self.source_downs = nn.ModuleList(
            CausalConv1d(spec_channels, widths[i + 1], 1)
            if s == 1
            else CausalDownsample(spec_channels, widths[i + 1], s)
            for i, s in enumerate(stage_strides)
        )
        self.source_resblocks = nn.ModuleList(
            CausalResBlock(widths[i + 1], k, tuple(d))
            for i, (k, d) in enumerate(zip(cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilation_sizes))
        )
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.resblocks = nn.ModuleList(
            CausalResBlock(widths[i + 1], k, tuple(d))
            for i in range(len(cfg.upsample_rates))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)
        )
        self.conv_post = weight_norm(CausalConv1d(widths[-1], spec_channels, 7))
        self.f0_predictor = CausalF0Predictor(cfg.f0_predictor)
        self._init_fourier()
        self.noise = NoiseTable(flow_cfg, cfg)
        self.register_buffer("noise_table", self.noise.grow(0), persistent=False)
        self.runner = None  # CUDA graphs of synthesize_window's non-final passes (decode/dit/hift_graphs.py)
        self.keyed_runner = None  # no keyed noise: its noise is a fixed table
        self.conv_dtype = torch.float32  # of the convolution stack (set_conv_dtype; the f0 predictor stays float64)

    @classmethod
    def from_checkpoint(cls, cfg: CausalHiFTConfig, flow_cfg: DiTFlowConfig, path: Path) -> CausalHiFT:
        """Load hift.pt (either weight-norm key form), strictly. Weight norm is folded: the f0 predictor's in
        float64 (its weights formed from float64 g and v, as upstream computes them), the rest in float32."""
        model = cls(cfg, flow_cfg)
        load_strict(model, to_parametrized_weight_norm(read_state_dict(Path(path))), str(path))
        model.f0_predictor.double()
        for module in model.f0_predictor.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        fold_weight_norm(model)
        return model.eval()

    def _apply(self, fn, recurse=True):
        """Device and dtype moves keep the f0 predictor in float64 (upstream casts it at every call)."""
        super()._apply(fn, recurse)
        self.f0_predictor.double()
        return self

    def noise_rows(self, start: int, num: int) -> torch.Tensor:
        """Noise table rows of samples [start, start + num) on this module's device (grown as needed)."""
        if start + num > self.noise_table.shape[0]:
            self.noise_table = self.noise.grow(start + num).to(self.noise_table.device)
        return self.noise_table[start : start + num]

    def f0(self, mel: torch.Tensor, finalize: bool) -> torch.Tensor:
        """[B, 80, T] -> f0 [B, T or T - 3] in float32, computed in float64."""
        return self.f0_predictor(mel.double(), finalize).to(mel.dtype)

    def decode(self, mel: torch.Tensor, source: torch.Tensor, finalize: bool = True) -> torch.Tensor:
        """mel [B, 80, T] and its excitation [B, 1, T * 480] -> audio [B, T * 480] (finalize) or
        [B, (T - 5) * 480] (the last 4 frames are conv_pre's lookahead, and 480 more samples are held back)."""
        source_spec = self._stft(source.squeeze(1)).to(self.conv_dtype)
        x = self.conv_pre(mel.to(self.conv_dtype), finalize)
        if not finalize:
            look = self.cfg.conv_pre_look_right * (self.samples_per_frame // self.hop)
            source_spec = source_spec[:, :, :-look]
        audio = self._synthesis(x, source_spec)
        if not finalize:
            audio = audio[:, : -self.samples_per_frame]
        return audio.clamp(-self.cfg.audio_limit, self.cfg.audio_limit)

    def synthesize_window(
        self, mel: torch.Tensor, f0: torch.Tensor, cycles: torch.Tensor, noise: torch.Tensor, finalize: bool
    ) -> torch.Tensor:
        """decode(mel, its excitation from f0 [B, T], cycles [B, T, H] and noise rows [B, T * 480, H]): through
        the runner's CUDA graphs when one was captured for the pass's shape (non-final passes only)."""
        if self.runner is not None:
            return self.runner(mel, f0, cycles, noise, finalize)
        return self.decode(mel, self.m_source(f0, cycles, noise), finalize)

    def excitation(self, f0: torch.Tensor, cycles: torch.Tensor, first_frame: int) -> torch.Tensor:
        """The source [B, 1, T * 480] of frames first_frame.. with this f0 [B, T] and accumulated cycles."""
        spf = self.samples_per_frame
        return self.m_source(f0, cycles, self.noise_rows(first_frame * spf, f0.shape[1] * spf))

    @torch.inference_mode()
    def inference(self, mel: torch.Tensor, finalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Upstream's call over a whole mel [B, 80, T] from the utterance start: (audio [B, T * 480] or
        [B, (T - 8) * 480], source)."""
        f0 = self.f0(mel, finalize)
        cycles = self.m_source.phases(f0, self.m_source.new_state(mel.shape[0], mel.device))
        source = self.excitation(f0, cycles, 0)
        return self.decode(mel[:, :, : f0.shape[1]], source, finalize), source
