"""The exported whole-utterance CFM estimator (ONNX, upstream's interface) against torch, on onnxruntime's CPU."""

import numpy as np
import onnxruntime as ort
import torch

from light_tts.decode.flow.estimator_onnx import (
    INPUT_NAMES,
    OUTPUT_NAME,
    WholeUtteranceEstimator,
    example_inputs,
    export_estimator_onnx,
)
from light_tts.model_dir import load_model_config
from light_tts.models.cosyvoice2.flow import Flow


def test_onnx_matches_torch(fixture_dir, tmp_path):
    cfg = load_model_config(fixture_dir)
    estimator = Flow.from_checkpoint(cfg.flow, cfg.path("flow.pt")).decoder.estimator.eval()
    path = export_estimator_onnx(estimator, tmp_path / "flow.decoder.estimator.fp32.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(INPUT_NAMES)
    assert [o.name for o in session.get_outputs()] == [OUTPUT_NAME]
    module = WholeUtteranceEstimator(estimator)
    # other batch and length than the export's example: the axes are dynamic
    for batch, frames in ((1, 57), (3, 200)):
        inputs = example_inputs(estimator, batch, frames, seed=batch)
        with torch.no_grad():
            want = module(*inputs).numpy()
        got = session.run(None, {name: t.numpy() for name, t in zip(INPUT_NAMES, inputs)})[0]
        assert got.shape == (batch, cfg.flow.output_size, frames)
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert err < 1e-5, err


def test_wrapper_is_the_non_streaming_estimator(fixture_dir):
    """The wrapper equals the estimator call that Flow.inference(streaming=False) makes at each Euler step."""
    cfg = load_model_config(fixture_dir)
    estimator = Flow.from_checkpoint(cfg.flow, cfg.path("flow.pt")).decoder.estimator.eval()
    x, mask, mu, t, spks, cond = example_inputs(estimator, 2, 90)
    with torch.no_grad():
        want, _ = estimator(x, mu, t, spks, cond, estimator.empty_cache(2), streaming=False)
        got = WholeUtteranceEstimator(estimator)(x, mask, mu, t, spks, cond)
    torch.testing.assert_close(got, want)
