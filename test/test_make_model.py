"""make_model writes every file of the released layout, loadable by the normal loaders, reproducibly from a seed."""

import onnxruntime as ort
import torch

from light_tts.model_dir import check_complete, load_model_config
from light_tts.tools.make_model import ESTIMATOR_ONNX, make_model


def test_tiny_model_is_complete_and_seeded(tmp_path):
    a = make_model(tmp_path / "a", size="tiny", seed=1)
    check_complete(a)
    cfg = load_model_config(a)
    assert cfg.llm.qwen.hidden_size == 64 and cfg.flow.cfm.estimator.channels == (64,)
    estimator = ort.InferenceSession(str(a / ESTIMATOR_ONNX), providers=["CPUExecutionProvider"])
    assert [i.name for i in estimator.get_inputs()] == ["x", "mask", "mu", "t", "spks", "cond"]
    b = make_model(tmp_path / "b", size="tiny", seed=1)
    c = make_model(tmp_path / "c", size="tiny", seed=2)
    sa, sb, sc = (torch.load(d / "flow.pt", weights_only=True) for d in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
