"""The flow (speech tokens -> mel) over packed chunks of many streams, with every cache in the paged pool: the
decode engine's hot path, one call per engine step (a CUDA graph replay at the bucket's shapes on the GPU).

Equal to models/flow (Flow.chunk_mel over each stream's own dense cache) to float rounding; what differs is only
the layout: positions of all rows packed along one axis, both CFG branches as virtual rows, causal convs as
matmuls over taps, attention through page tables (see flow_inputs.py and kernels/flow/). The estimator is
paged_estimator.py (one kernel per op) or fused_estimator.py (its fused launches).
"""

from __future__ import annotations

import torch

from light_tts.decode.flow.flow_cache import FlowCache
from light_tts.decode.flow.flow_inputs import FlowInputs, build_flow_inputs
from light_tts.decode.flow.fused_estimator import FusedEstimator
from light_tts.decode.flow.paged_encoder import PagedEncoder
from light_tts.decode.flow.paged_estimator import PagedEstimator
from light_tts.models.cosyvoice2.flow import Flow


class PagedFlow:
    def __init__(
        self, flow: Flow, cache: FlowCache, max_tokens: int, use_triton: bool | None = None, fused: bool = False
    ):
        """max_tokens: the most tokens (prompt included) one stream's cache can hold (sizes position tables);
        fused: the estimator's CFM steps and the encoder's blocks in fused launches (fused_estimator.py,
        paged_encoder.py), else one kernel per op."""
        self.flow, self.cache, self.use_triton = flow, cache, use_triton
        cfm = flow.decoder
        self.encoder = PagedEncoder(flow.encoder, max_tokens, fused)
        self.times, self.dts = cfm.euler_times(cache.device)  # as CausalConditionalCFM.solve accumulates them
        self.estimator = PagedEstimator(flow, self.times)
        self.fused = FusedEstimator(self.estimator, use_triton) if fused else None
        self.dt_values = [float(dt) for dt in self.dts]  # for the fused steps' launches (no host sync in a graph)
        self.rate = cfm.cfg.inference_cfg_rate

    def build_inputs(self, specs, device=None, bucket=None, table_width: int = 0) -> FlowInputs:
        c = self.cache
        return build_flow_inputs(specs, c.shape, c.num_slots, c.scratch_page, device or c.device, bucket, table_width)

    @torch.inference_mode()
    def __call__(self, inputs: FlowInputs) -> torch.Tensor:
        """-> float32 mel [Mf, 80] of every row's new frames (packed as inputs.frame_starts / num_frames say)."""
        flow, cache, dtype = self.flow, self.cache, self.cache.act_dtype
        emb = flow.input_embedding(inputs.tokens)
        mu = flow.encoder_proj(self.encoder(emb, inputs, cache, self.use_triton))  # [Mf, 80]
        x = flow.decoder.rand_noise[0][:, inputs.noise_frames].t().float()  # [Mf, 80], each frame's fixed noise
        spks, cond = cache.spks[inputs.spk_slots], inputs.cond.to(dtype)
        if self.fused is not None:
            return self.fused.solve(x, mu, spks, cond, inputs, cache, self.dt_values, self.rate)
        mf = mu.shape[0]
        zeros = torch.zeros_like(mu)
        mu_in, spks_in, cond_in = torch.cat([mu, zeros]), torch.cat([spks, zeros]), torch.cat([cond, zeros])
        for step in range(len(self.times)):
            x_in = torch.cat([x, x]).to(dtype)
            v = self.estimator(step, torch.cat([x_in, mu_in, spks_in, cond_in], dim=1), inputs, cache, self.use_triton)
            v_cond, v_uncond = v[:mf].float(), v[mf:].float()
            x = x + self.dts[step] * ((1.0 + self.rate) * v_cond - self.rate * v_uncond)
        return x
