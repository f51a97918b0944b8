"""ONNX export of the CFM estimator for whole utterances (no cache, full attention), with upstream's interface
(flow.decoder.estimator.fp32.onnx): inputs x, mask, mu, t, spks, cond; output estimator_out; dynamic batch and
frame count. The source for a TensorRT engine (trt.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from light_tts.models.cosyvoice2.flow.estimator import CausalConditionalDecoder

INPUT_NAMES = ("x", "mask", "mu", "t", "spks", "cond")
OUTPUT_NAME = "estimator_out"


class WholeUtteranceEstimator(nn.Module):
    """(x, mask, mu, t, spks, cond) -> velocity, every frame seeing every frame (upstream's non-streaming call).

    Upstream's mask is all ones in inference (batch 1, no padding) and so is ours: rows must not be padded. The
    output is multiplied by it, as upstream's last layer does."""

    def __init__(self, estimator: CausalConditionalDecoder):
        super().__init__()
        self.estimator = estimator

    def forward(self, x, mask, mu, t, spks, cond):
        # x, mu, cond (B, 80, T); mask (B, 1, T); t (B,); spks (B, 80)
        cache = self.estimator.empty_cache(x.shape[0])
        velocity, _ = self.estimator(x, mu, t, spks, cond, cache, streaming=False)
        return velocity * mask


def example_inputs(
    estimator: CausalConditionalDecoder,
    batch: int = 2,
    frames: int = 120,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    c = estimator.cfg.out_channels

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device)

    return (
        randn(batch, c, frames),
        torch.ones(batch, 1, frames, device=device),
        randn(batch, c, frames),
        torch.rand(batch, generator=g).to(device),
        randn(batch, c),
        randn(batch, c, frames),
    )


def export_estimator_onnx(estimator: CausalConditionalDecoder, path: Path) -> Path:
    """Writes the float32 ONNX file (opset 18, TorchScript exporter: a static graph with named dynamic axes)."""
    module = WholeUtteranceEstimator(estimator).float().eval()
    inputs = example_inputs(estimator, device=next(estimator.parameters()).device)
    frames = {0: "batch", 2: "frames"}
    dynamic_axes = {
        "x": frames,
        "mask": frames,
        "mu": frames,
        "t": {0: "batch"},
        "spks": {0: "batch"},
        "cond": frames,
        OUTPUT_NAME: frames,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            opset_version=18,
            dynamo=False,
        )
    return path
