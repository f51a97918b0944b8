"""Optional TensorRT engine for the whole-utterance CFM estimator (non-stream requests), built once from the ONNX
export and cached on disk per GPU model, TensorRT version and precision.

Not exercised here: tensorrt is installed neither in the development venv nor on the GPU image, so this branch
has never run. Without tensorrt the engine logs one line and keeps the CUDA-graph/eager path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from light_tts.decode.flow.estimator_onnx import INPUT_NAMES, OUTPUT_NAME, export_estimator_onnx
from light_tts.model_config import ModelConfig

logger = logging.getLogger(__name__)

MAX_BATCH = 16  # optimisation profile: rows of the CFG pair (2 x requests) and frames
MAX_FRAMES = 3000


def load_trt_estimator(cfg: ModelConfig, estimator, dtype: torch.dtype, fallback):
    """A runner for CausalConditionalCFM.runner: TensorRT for cache-free whole-utterance calls, `fallback` for
    the rest; just `fallback` when tensorrt cannot be imported."""
    try:
        import tensorrt as trt
    except ImportError:
        logger.warning("load_trt: tensorrt is not importable; the estimator runs on CUDA graphs/eager PyTorch")
        return fallback
    precision = "fp16" if dtype == torch.float16 else "fp32"
    gpu = torch.cuda.get_device_name().replace(" ", "_")
    plan = cfg.path(f"flow.decoder.estimator.{precision}.{gpu}.trt{trt.__version__}.plan")
    if not plan.exists():
        onnx_path = export_estimator_onnx(estimator, cfg.path("flow.decoder.estimator.fp32.onnx"))
        plan.write_bytes(_build(trt, onnx_path, precision == "fp16", estimator.cfg.out_channels))
        logger.info("built TensorRT estimator %s", plan)
    return TrtEstimator(trt, plan, fallback)


def _build(trt, onnx_path: Path, fp16: bool, channels: int) -> bytes:
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, log)
    if not parser.parse(onnx_path.read_bytes()):
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {parser.get_error(0)}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name in INPUT_NAMES:
        per_frame = {"x": channels, "mu": channels, "cond": channels, "mask": 1}
        if name in per_frame:
            shapes = [(2, per_frame[name], 4), (2, per_frame[name], 500), (MAX_BATCH, per_frame[name], MAX_FRAMES)]
        elif name == "spks":
            shapes = [(2, channels), (2, channels), (MAX_BATCH, channels)]
        else:  # t
            shapes = [(2,), (2,), (MAX_BATCH,)]
        profile.set_shape(name, *shapes)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed")
    return bytes(serialized)


class TrtEstimator:
    """Estimator-signature callable: TensorRT when the call is a whole utterance that fits the profile."""

    def __init__(self, trt, plan: Path, fallback):
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        self.context = self.engine.create_execution_context()
        self.fallback = fallback

    def __call__(self, x, mu, t, spks, cond, cache, streaming: bool, num_pad=None):
        rows, _, frames = x.shape
        if streaming or cache.num_frames > 0 or num_pad is not None or rows > MAX_BATCH or frames > MAX_FRAMES:
            return self.fallback(x, mu, t, spks, cond, cache, streaming, num_pad)
        # the engine takes float32 inputs (the fp32 ONNX; fp16 is TensorRT's internal precision)
        inputs = dict(zip(INPUT_NAMES, (x, torch.ones_like(x[:, :1]), mu, t, spks, cond)))
        inputs = {name: value.float().contiguous() for name, value in inputs.items()}
        out = torch.empty_like(inputs["x"])
        for name, value in inputs.items():
            self.context.set_input_shape(name, tuple(value.shape))
            self.context.set_tensor_address(name, value.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
        # no cache comes back: a whole-utterance call is the only call of its request
        return out.to(x.dtype), cache
