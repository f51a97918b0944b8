"""The prompt models as torch modules built from their ONNX files (frontend/onnx_torch.py) against ONNX Runtime:
the model directory's two graphs on the fixtures' prompt (tokens identical, embedding within 1e-4 relative L2 in
float32), two graphs exported the way the released files were (torch's TorchScript exporter) from small modules
of the released architectures (a Whisper-style encoder with FSMN attention, rotary positions, length masks and
FSQ codes; a CAM++-style network with 2-D convolutions, batch norms, segment pooling and statistics pooling),
single and batched, and ops whose ONNX meaning is easy to get wrong. A graph with an op the runner lacks falls
back to ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from light_tts.frontend.audio import resample
from light_tts.frontend.features import SAMPLE_RATE, speaker_features, whisper_log_mel
from light_tts.frontend.onnx_models import CampPlusONNX, GraphRunner, SpeechTokenizerONNX
from light_tts.frontend.onnx_torch import TorchGraph, UnsupportedGraph
from light_tts.tools.make_onnx import write_campplus_onnx, write_speech_tokenizer_onnx


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def ort_run(path, *inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: x for i, x in zip(session.get_inputs(), inputs)})


@pytest.fixture(scope="module")
def fixture_prompt(fixture_dir) -> np.ndarray:
    """The fixtures' prompt audio at 16 kHz (feat_io.pt's 24 kHz wav, resampled as the frontend does)."""
    wav24k = torch.load(fixture_dir / "feat_io.pt", weights_only=False)["wav24k"].reshape(-1).numpy()
    return resample(wav24k.astype(np.float32), 24000, SAMPLE_RATE)


@pytest.mark.parametrize("size", ["tiny", "full"])
def test_model_directory_graphs_match_onnx_runtime_on_the_fixture_prompt(tmp_path, fixture_prompt, size):
    tokenizer_path = write_speech_tokenizer_onnx(tmp_path / "st.onnx", size, seed=0)
    campplus_path = write_campplus_onnx(tmp_path / "cp.onnx", size, seed=0)
    mel, fbank = whisper_log_mel(fixture_prompt).numpy(), speaker_features(fixture_prompt)
    want_tokens, got_tokens = SpeechTokenizerONNX(tokenizer_path)(mel), SpeechTokenizerONNX(tokenizer_path, "cpu")(mel)
    assert len(want_tokens) > 10 and np.array_equal(got_tokens, want_tokens)
    want, got = CampPlusONNX(campplus_path)(fbank), CampPlusONNX(campplus_path, "cpu")(fbank)
    assert got.shape == want.shape == (192,) and rel_l2(got, want) < 1e-4


class Rotary(torch.nn.Module):
    def __init__(self, dim: int, length: int = 512):
        super().__init__()
        freqs = torch.outer(torch.arange(length).float(), 1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("cos", torch.cat([freqs.cos(), freqs.cos()], -1))
        self.register_buffer("sin", torch.cat([freqs.sin(), freqs.sin()], -1))

    def forward(self, x):  # (B, T, H, D)
        t, half = x.shape[1], x.shape[-1] // 2
        turned = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * self.cos[:t, None] + turned * self.sin[:t, None]


class FSMNBlock(torch.nn.Module):
    """A Whisper block with FSMN memory on the values, as the S3 tokenizer v2 has (small widths)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attn_ln, self.mlp_ln = torch.nn.LayerNorm(dim, eps=1e-6), torch.nn.LayerNorm(dim)
        self.query, self.key = torch.nn.Linear(dim, dim), torch.nn.Linear(dim, dim, bias=False)
        self.value, self.out = torch.nn.Linear(dim, dim), torch.nn.Linear(dim, dim)
        self.fsmn = torch.nn.Conv1d(dim, dim, 31, groups=dim, bias=False)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))
        self.rotary = Rotary(dim // heads)

    def forward(self, x, bias, mask):  # x (B, T, C); bias (B, 1, 1, T); mask (B, T, 1)
        b, t, c = x.shape
        h = self.attn_ln(x)
        q, k = (f(h).view(b, t, self.heads, -1) for f in (self.query, self.key))
        v = self.value(h)
        q, k = self.rotary(q), self.rotary(k)
        memory = self.fsmn(torch.nn.functional.pad((v * mask).transpose(1, 2), (15, 15))).transpose(1, 2)
        memory = (memory + v * mask) * mask
        scale = (c // self.heads) ** -0.25
        scores = (q.permute(0, 2, 1, 3) * scale) @ (k.permute(0, 2, 3, 1) * scale) + bias
        heads = torch.softmax(scores, -1) @ v.view(b, t, self.heads, -1).permute(0, 2, 1, 3)
        x = x + self.out(heads.permute(0, 2, 1, 3).reshape(b, t, c)) + memory
        return x + self.mlp(self.mlp_ln(x))


class MiniTokenizer(torch.nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4):
        super().__init__()
        self.conv1 = torch.nn.Conv1d(128, dim, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv1d(dim, dim, 3, stride=2, padding=1)
        self.blocks = torch.nn.ModuleList([FSMNBlock(dim, heads) for _ in range(2)])
        self.project_down = torch.nn.Linear(dim, 8)

    def forward(self, feats, feats_length):  # (B, 128, T), (B,)
        x = torch.nn.functional.gelu(self.conv1(feats))
        x = torch.nn.functional.gelu(self.conv2(x)).transpose(1, 2)
        lengths = ((feats_length.long() + 1) // 2 + 1) // 2
        valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]  # (B, T4)
        bias = (1.0 - valid.float())[:, None, None, :] * -1e10
        for block in self.blocks:
            x = block(x, bias, valid.float()[:, :, None])
        digits = torch.round(torch.tanh(self.project_down(x)) * 0.999) + 1
        return (digits * 3 ** torch.arange(8).float()).sum(-1).int()


class CamLayer(torch.nn.Module):
    """CAM++'s context-aware masking: a local conv gated by the utterance mean and 100-frame segment means."""

    def __init__(self, channels: int):
        super().__init__()
        self.local = torch.nn.Conv1d(channels, channels, 3, padding=1)
        self.gate = torch.nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        segments = torch.nn.functional.avg_pool1d(x, 100, 100, ceil_mode=True)
        segments = segments.unsqueeze(-1).expand(*segments.shape, 100).reshape(*x.shape[:2], -1)[..., : x.shape[-1]]
        context = x.mean(-1, keepdim=True) + segments
        return self.local(x) * torch.sigmoid(self.gate(context))


class MiniCampPlus(torch.nn.Module):
    def __init__(self, channels: int = 16):
        super().__init__()
        self.head = torch.nn.Sequential(
            torch.nn.Conv2d(1, channels, 3, stride=(2, 1), padding=1, bias=False),
            torch.nn.BatchNorm2d(channels),
            torch.nn.ReLU(),
        )
        self.tdnn = torch.nn.Sequential(
            torch.nn.Conv1d(channels * 40, 64, 5, stride=2, padding=2, bias=False),
            torch.nn.BatchNorm1d(64),
            torch.nn.ReLU(),
        )
        self.pre_bn = torch.nn.BatchNorm1d(64)  # batch norm before a conv: not folded into it on export
        self.cam = CamLayer(64)
        self.dense = torch.nn.Conv1d(128, 192, 1, bias=False)
        self.post_bn = torch.nn.BatchNorm1d(192, affine=False)
        for bn in (self.head[1], self.tdnn[1], self.pre_bn):  # running statistics other than the identity
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, fbank):  # (B, T, 80)
        x = self.head(fbank.permute(0, 2, 1).unsqueeze(1))  # (B, C, 40, T)
        x = self.tdnn(x.reshape(x.shape[0], -1, x.shape[-1]))
        x = self.cam(torch.relu(self.pre_bn(x)))
        stats = torch.cat([x.mean(-1), x.std(-1, unbiased=True)], dim=1)
        return self.post_bn(self.dense(stats.unsqueeze(-1)).squeeze(-1))


def export(module: torch.nn.Module, inputs: tuple, names: list[str], path, dynamic: dict):
    torch.manual_seed(0)
    module.eval()
    torch.onnx.export(
        module,
        inputs,
        str(path),
        input_names=names,
        output_names=["out"],
        dynamic_axes=dynamic,
        opset_version=17,
        dynamo=False,
    )
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    tokenizer = export(
        MiniTokenizer(),
        (torch.randn(1, 128, 300), torch.tensor([300], dtype=torch.int32)),
        ["feats", "feats_length"],
        d / "tokenizer.onnx",
        {"feats": {0: "B", 2: "T"}, "feats_length": {0: "B"}, "out": {0: "B", 1: "T4"}},
    )
    campplus = export(
        MiniCampPlus(),
        (torch.randn(1, 230, 80),),
        ["fbank"],
        d / "campplus.onnx",
        {"fbank": {0: "B", 1: "T"}, "out": {0: "B"}},
    )
    return tokenizer, campplus


def test_exported_tokenizer_gives_the_same_codes_alone_and_padded_in_a_batch(exported):
    path = exported[0]
    graph = TorchGraph(path, "cpu")
    rng = np.random.default_rng(1)
    feats = rng.normal(0, 1, (3, 128, 333)).astype(np.float32)
    lengths = np.array([333, 250, 97], dtype=np.int32)
    feats[1, :, 250:] = feats[2, :, 97:] = 0
    want, got = ort_run(path, feats, lengths)[0], graph(feats, lengths)[0].numpy()
    assert np.array_equal(got, want)
    alone = graph(feats[2:, :, :97], lengths[2:])[0].numpy()
    assert np.array_equal(alone, ort_run(path, feats[2:, :, :97], lengths[2:])[0])


def test_exported_speaker_model_matches_onnx_runtime(exported):
    path = exported[1]
    graph = TorchGraph(path, "cpu")
    ops = {n.op for n in graph.nodes}
    assert {"BatchNormalization", "AveragePool", "Conv", "ReduceMean", "Sqrt"} <= ops, ops  # what it exercises
    for t in (230, 171):
        fbank = np.random.default_rng(t).normal(0, 1, (2, t, 80)).astype(np.float32)
        assert rel_l2(graph(fbank)[0].numpy(), ort_run(path, fbank)[0]) < 1e-5


def single_op_graph(op: str, inputs: list[tuple[str, int, list]], attrs: dict, initializers=(), opset: int = 17):
    node = helper.make_node(op, [name for name, _, _ in inputs] + [i.name for i in initializers], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        op,
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def const(name, values, dtype=np.int64):
    return onnx.numpy_helper.from_array(np.array(values, dtype=dtype), name)


F32, I64 = TensorProto.FLOAT, TensorProto.INT64


@pytest.mark.parametrize(
    "op, attrs, initializers, opset",
    [
        ("Slice", {}, [const("s", [-2, 5]), const("e", [-100, 1]), const("a", [1, 2]), const("st", [-1, -2])], 17),
        ("Pad", {"mode": "reflect"}, [const("p", [0, 0, 2, 0, 0, 3])], 17),
        ("Softmax", {"axis": 1}, [], 11),  # before opset 13: over every dim from the axis on
        ("ReduceMean", {"axes": [-1], "keepdims": 0}, [], 17),
        ("AveragePool", {"kernel_shape": [4], "strides": [3], "ceil_mode": 1}, [], 17),
        ("Expand", {}, [const("shape", [2, 1, 1])], 17),
    ],
)
def test_single_ops_mean_what_onnx_runtime_says(tmp_path, op, attrs, initializers, opset):
    model = single_op_graph(op, [("x", F32, [2, 5, 7])], attrs, initializers, opset)
    path = tmp_path / f"{op}.onnx"
    onnx.save(model, str(path))
    x = np.random.default_rng(0).normal(0, 1, (2, 5, 7)).astype(np.float32)
    got, want = TorchGraph(path, "cpu")(x)[0].numpy(), ort_run(path, x)[0]
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-6)


def test_integer_division_truncates_and_gather_takes_negative_indices(tmp_path):
    nodes = [helper.make_node("Div", ["a", "b"], ["q"]), helper.make_node("Gather", ["q", "i"], ["y"], axis=0)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("a", I64, [4]), helper.make_tensor_value_info("b", I64, [4])],
        [helper.make_tensor_value_info("y", I64, None)],
        initializer=[const("i", [-1, 0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "div.onnx"
    onnx.save(model, str(path))
    a, b = np.array([7, -7, 9, -1]), np.array([2, 2, -4, 3])
    assert TorchGraph(path, "cpu")(a, b)[0].tolist() == ort_run(path, a, b)[0].tolist() == [0, 3]


def test_a_graph_with_an_unknown_op_falls_back_to_onnx_runtime(tmp_path):
    model = single_op_graph("Hardmax", [("x", F32, [2, 5])], {}, [], 17)
    path = tmp_path / "hardmax.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UnsupportedGraph, match="Hardmax"):
        TorchGraph(path, "cpu")
    runner = GraphRunner(path, "cpu")
    assert runner.backend == "onnxruntime" and runner.run(np.ones((2, 5), np.float32))[0].shape == (2, 5)
    assert GraphRunner(write_campplus_onnx(tmp_path / "cp.onnx"), "cpu").backend == "torch (cpu)"
