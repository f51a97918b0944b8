"""The two released frontend models, the S3 speech tokenizer and the CAM++ speaker model, run either by ONNX Runtime
(on the host's cores) or as torch modules built from the same ONNX files (onnx_torch.TorchGraph: on the GPU)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from light_tts.errors import ModelDirError

log = logging.getLogger(__name__)


def open_session(path: str | Path):
    """An InferenceSession on CUDA when onnxruntime offers it, else on the CPU; ModelDirError names a bad file."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelDirError(f"ONNX model missing: {path}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1  # as upstream: frontend calls are small and run beside the GPU workers
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises several unrelated types for a corrupt file
        raise ModelDirError(f"cannot load ONNX model {path}: {e}") from e


class GraphRunner:
    """One ONNX file, run by torch on `device` (TorchGraph) or, with device None or a graph TorchGraph cannot run,
    by ONNX Runtime; `backend` says which."""

    def __init__(self, path: str | Path, device: str | None = None):
        self.graph, self.session = None, None
        if device is not None:
            from light_tts.frontend.onnx_torch import TorchGraph, UnsupportedGraph

            try:
                self.graph = TorchGraph(path, device)
                self.input_names, self.backend = self.graph.input_names, f"torch ({device})"
                return
            except UnsupportedGraph as e:
                log.warning("%s; it runs on ONNX Runtime instead", e)
        self.session = open_session(path)
        self.input_names, self.backend = [i.name for i in self.session.get_inputs()], "onnxruntime"

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        if self.graph is not None:
            return [out.cpu().numpy() for out in self.graph(*inputs)]
        return self.session.run(None, dict(zip(self.input_names, inputs)))


class SpeechTokenizerONNX:
    """speech_tokenizer_v2.onnx / _v3.onnx (same I/O): Whisper log-mel [1,128,T] (100 frames/s) -> 25 Hz speech tokens
    in [0, 6561)."""

    def __init__(self, path: str | Path, device: str | None = None):
        self.runner = GraphRunner(path, device)
        if len(self.runner.input_names) != 2:  # the released file's inputs, by position, as upstream feeds them
            raise ModelDirError(f"{path}: expected 2 inputs (feats, feats_len), found {self.runner.input_names}")

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        """feats [1, 128, T] float32 -> tokens int32 [num_tokens]."""
        feats_len = np.array([feats.shape[2]], dtype=np.int32)
        tokens = self.runner.run(feats.astype(np.float32, copy=False), feats_len)[0]
        return tokens.reshape(-1).astype(np.int32)


class CampPlusONNX:
    """campplus.onnx: mean-normalised fbank [1,T,80] -> speaker embedding [192]."""

    def __init__(self, path: str | Path, device: str | None = None):
        self.runner = GraphRunner(path, device)

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        """feats [T, 80] float32 -> embedding float32 [192]."""
        out = self.runner.run(feats[None].astype(np.float32, copy=False))[0]
        return out.reshape(-1).astype(np.float32)
