"""Quantized LLM weights and KV cache (--quantization, --kv_cache_dtype): what each mode swaps in, and what this
device can run. docs/quantization.md describes the modes and their accuracy.

Weights: after the model is loaded in its compute dtype, every nn.Linear of the decoder body (model.layers, any
family) becomes a QuantLinear holding fp8 or int8 weights with a float32 scale per output channel; embeddings,
norms and the output head stay as they are. The KV cache's dtype and per-(token, head) scales live in
model.KVCache; the kernels take them from there.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from light_tts.kernels.llm import ops
from light_tts.kernels.llm.quant import FP8, INT8, quantize_weight

FP8_CAPABILITY = (8, 9)  # Ada and Hopper: fp8 tensor cores and Triton's e4m3 conversions


class QuantLinear(nn.Module):
    """A Linear with an fp8 (w8a8: activations quantized per token) or int8 (weight-only) weight [N, K] and its
    scales [N]; the bias, if any, stays in the compute dtype."""

    def __init__(self, linear: nn.Linear, mode: str):
        super().__init__()
        self.mode = mode
        weight, scale = quantize_weight(linear.weight.detach(), mode)
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale)
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] @ W^T without the bias."""
        return self._linear(x, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._linear(x, self.bias)

    def _linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        linear = ops.fp8_linear if self.mode == FP8 else ops.int8_linear
        out = linear(x.reshape(-1, self.in_features), self.weight, self.weight_scale, bias)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}"


def matmul(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x @ W^T of a plain or quantized Linear, without its bias (the rotary kernel adds the qkv projection's)."""
    if isinstance(layer, QuantLinear):
        return layer.matmul(x)
    return nn.functional.linear(x, layer.weight)


def linear_weights(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(weight, its scale per output channel or None, bias or None) of a plain or quantized Linear, as the
    small-batch kernels take them (kernels/llm/small_batch.py)."""
    if isinstance(layer, QuantLinear):
        return layer.weight, layer.weight_scale, layer.bias
    return layer.weight, None, layer.bias


def quantize_linears(body: nn.Module, mode: str) -> int:
    """Replace every nn.Linear under `body` by a QuantLinear of `mode` ("none": leave them); returns how many."""
    if mode == "none":
        return 0
    swaps = [
        (parent, name, child)
        for parent in body.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in swaps:
        setattr(parent, name, QuantLinear(child, mode))
    return len(swaps)


def kv_cache_format(kv_cache_dtype: str) -> str | None:
    """--kv_cache_dtype -> the cache's quantized format (None: the compute dtype)."""
    return None if kv_cache_dtype == "auto" else kv_cache_dtype


def check_support(quantization: str, kv_cache_dtype: str, device: torch.device) -> list[tuple[int, str]]:
    """What the modes run on this device, as startup lines (logging level, text): a fallback is a warning. Raises
    ValueError for a mode this device cannot run."""
    if quantization == "none" and kv_cache_dtype == "auto":
        return []
    weights = {
        "none": "weights in the compute dtype",
        FP8: "fp8 weights (a scale per output channel) and fp8 activations (a scale per token)",
        INT8: "int8 weights (a scale per output channel; activations in the compute dtype)",
    }[quantization]
    kv = (
        "KV cache in the compute dtype"
        if kv_cache_dtype == "auto"
        else f"{kv_cache_dtype} KV cache (a scale per token and head)"
    )
    lines = [(logging.INFO, f"LLM quantization: {weights}, {kv}")]
    if device.type != "cuda":
        lines.append(
            (
                logging.WARNING,
                "LLM quantization on the CPU runs the torch reference, which rounds as the "
                "GPU kernels do (for tests; no faster than float32)",
            )
        )
        return lines
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_CAPABILITY:
        wants = [
            f"--{flag} fp8"
            for flag, value in (("quantization", quantization), ("kv_cache_dtype", kv_cache_dtype))
            if value == FP8
        ]
        if wants:
            raise ValueError(
                f"{' and '.join(wants)} need an fp8 GPU (compute capability 8.9+: L4, L40S, H100, "
                f"H200); {torch.cuda.get_device_name(device)} is {capability[0]}.{capability[1]}: "
                "use int8 instead"
            )
    if quantization == FP8:
        from light_tts.kernels.llm.quant_linear import FP8_TRITON_MAX_ROWS, scaled_mm_works

        if scaled_mm_works(device):
            lines.append(
                (logging.INFO, f"fp8 GEMMs: a Triton kernel up to {FP8_TRITON_MAX_ROWS} row(s), torch._scaled_mm above")
            )
        else:
            lines.append(
                (
                    logging.WARNING,
                    "fp8 GEMMs: the Triton kernel at every size (torch._scaled_mm with "
                    "row-wise scales does not run on this GPU and torch)",
                )
            )
    return lines
