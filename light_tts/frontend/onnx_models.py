"""onnxruntime sessions for the two released frontend models: the S3 speech tokenizer and the CAM++ speaker model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from light_tts.errors import ModelDirError


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


class SpeechTokenizerONNX:
    """speech_tokenizer_v2.onnx / _v3.onnx (same I/O): Whisper log-mel [1,128,T] (100 frames/s) -> 25 Hz speech tokens in [0, 6561)."""

    def __init__(self, path: str | Path):
        self.session = open_session(path)
        inputs = self.session.get_inputs()
        if len(inputs) != 2:
            raise ModelDirError(f"{path}: expected 2 inputs (feats, feats_len), found {[i.name for i in inputs]}")
        # the released file's input names are read from the session, as upstream does
        self.feats_name, self.feats_len_name = inputs[0].name, inputs[1].name

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        """feats [1, 128, T] float32 -> tokens int32 [num_tokens]."""
        feats_len = np.array([feats.shape[2]], dtype=np.int32)
        tokens = self.session.run(None, {self.feats_name: feats.astype(np.float32, copy=False),
                                         self.feats_len_name: feats_len})[0]
        return tokens.reshape(-1).astype(np.int32)


class CampPlusONNX:
    """campplus.onnx: mean-normalised fbank [1,T,80] -> speaker embedding [192]."""

    def __init__(self, path: str | Path):
        self.session = open_session(path)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        """feats [T, 80] float32 -> embedding float32 [192]."""
        out = self.session.run(None, {self.input_name: feats[None].astype(np.float32, copy=False)})[0]
        return out.reshape(-1).astype(np.float32)
