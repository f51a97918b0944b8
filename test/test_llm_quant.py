"""The LLM engine with --quantization / --kv_cache_dtype on the tiny fixture model (CosyVoice2's Qwen2 body) and
the tiny Orpheus model (the Llama body, tied head): each mode swaps in what it says and stays close to the float32
engine (teacher-forced log-probs and top-1, as light_tts.bench.quant measures them); the flags' validation and
their way from ServerConfig to the engine; on CUDA, graphs capture them."""

import logging

import pytest
import torch

from light_tts.bench.quant import accuracy, forced_logprobs
from light_tts.families.cosyvoice2 import llm_spec
from light_tts.llm.config import EngineConfig
from light_tts.llm.engine import LLMEngine
from light_tts.llm.quantization import QuantLinear, check_support
from light_tts.llm.request import LLMRequest
from light_tts.model_dir import load_model_config
from light_tts.server.runtime.config import ServerConfig

MODES = [("fp8", "auto"), ("int8", "auto"), ("none", "fp8"), ("none", "int8"), ("fp8", "fp8")]
NUM_STEPS = 120
# of NUM_STEPS teacher-forced steps, the share whose argmax must be the float32 engine's (measured: 0.99-1.0 on the
# tiny model, whose random weights give near-flat distributions where a top-1 flip is cheap)
MIN_TOP1 = 0.95
ORPHEUS_STEPS = 60  # fewer: each step scores Orpheus's 156,940-id vocabulary


@pytest.fixture(scope="module")
def tiny(fixture_dir):
    """The tiny fixture model's config and its llm.pt."""
    return load_model_config(fixture_dir), torch.load(fixture_dir / "llm.pt", weights_only=True)


@pytest.fixture(scope="module")
def tiny_cv3(cv3_fixture_dir):
    """The tiny CosyVoice3 fixture model's config and its llm.pt (the same Qwen2 body, an unbiased speech head)."""
    from light_tts.models.cosyvoice3.config import load_model_config as load_cv3_config

    return load_cv3_config(cv3_fixture_dir), torch.load(cv3_fixture_dir / "llm.pt", weights_only=True)


def make_engine(tiny, device="cpu", **kw) -> LLMEngine:
    cfg = EngineConfig(
        **{
            "data_type": "float32",
            "max_req_total_len": 512,
            "running_max_req_size": 4,
            "max_total_token_num": 2048,
            **kw,
        }
    )
    model_cfg, state_dict = tiny
    return LLMEngine(llm_spec(model_cfg), cfg, device, state_dict)


def request(req_id="q", **kw) -> LLMRequest:
    return LLMRequest(
        req_id,
        list(range(11, 20)),
        [3, 4, 5],
        list(range(100, 160)),
        seed=5,
        **{"min_len": NUM_STEPS, "max_len": NUM_STEPS, **kw},
    )


def held_slots(engine: LLMEngine) -> int:
    """KV slots that requests hold (the voice prefixes kept for reuse are not theirs)."""
    stats = engine.stats()
    return stats["kv_used_tokens"] - stats["kv_cached_tokens"]


@pytest.fixture(scope="module")
def reference(tiny):
    return forced_logprobs(make_engine(tiny), request(greedy=True), None)


@pytest.mark.parametrize("quantization, kv_cache_dtype", MODES)
def test_each_mode_stays_close_to_float32(tiny, reference, quantization, kv_cache_dtype):
    engine = make_engine(tiny, quantization=quantization, kv_cache_dtype=kv_cache_dtype)
    layer = engine.runner.model.layers[0]
    kv = engine.runner.kv
    if quantization != "none":  # every projection of the body swapped, the head left alone
        projections = (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj)
        assert all(isinstance(p, QuantLinear) and p.mode == quantization for p in projections)
        assert type(engine.runner.model.llm_decoder) is torch.nn.Linear
    expected_kv = {"auto": torch.float32, "fp8": torch.float8_e4m3fn, "int8": torch.int8}[kv_cache_dtype]
    assert kv.k.dtype == kv.v.dtype == expected_kv and (kv.k_scale is None) == (kv_cache_dtype == "auto")
    ref_tokens, ref_logprobs = reference
    tokens, logprobs = forced_logprobs(engine, request(greedy=True), ref_tokens)
    result = accuracy(ref_logprobs, logprobs)
    assert result["top1_agreement"] >= MIN_TOP1, result
    assert 0 < result["kl_mean"] < 1e-3, result  # quantized (not identical), and close
    if kv_cache_dtype != "auto":  # the cache holds what was written: every used slot has a scale
        assert (kv.k_scale[:, : len(tokens)] > 0).any()
    assert held_slots(engine) == 0  # the request ended and freed its slots


@pytest.fixture(scope="module")
def orpheus(orpheus_dir):
    """The tiny Orpheus model's engine spec, its released state dict and a served prompt."""
    from light_tts.families.orpheus import llm_spec, load_model_config
    from light_tts.models.orpheus.lm import build_prompt
    from light_tts.models.weights import read_safetensors

    cfg = load_model_config(orpheus_dir)
    return llm_spec(cfg), read_safetensors(orpheus_dir), build_prompt(cfg.tokens, list(range(1000, 1012)))


def orpheus_engine(orpheus, device="cpu", **kw) -> LLMEngine:
    spec, state_dict, _ = orpheus
    cfg = EngineConfig(
        **{
            "data_type": "float32",
            "max_req_total_len": 512,
            "running_max_req_size": 4,
            "max_total_token_num": 2048,
            **kw,
        }
    )
    return LLMEngine(spec, cfg, device, state_dict)


def orpheus_request(orpheus, req_id="o", num_steps=ORPHEUS_STEPS) -> LLMRequest:
    """A fixed-length greedy request: audio ids in frame order, as fixed_speech_tokens serves them."""
    return LLMRequest(req_id, orpheus[2], greedy=True, min_len=num_steps, max_len=num_steps)


def orpheus_run(orpheus, ref_tokens=None, **kw):
    """An Orpheus engine in one mode and its teacher-forced run of one request."""
    engine = orpheus_engine(orpheus, **kw)
    return engine, forced_logprobs(engine, orpheus_request(orpheus), ref_tokens)


@pytest.fixture(scope="module")
def orpheus_reference(orpheus):
    return orpheus_run(orpheus)[1]


@pytest.mark.parametrize("quantization, kv_cache_dtype", MODES)
def test_orpheus_llama_body_quantizes_and_stays_close(orpheus, orpheus_reference, quantization, kv_cache_dtype):
    """The same modes on the Llama body (no qkv bias, GQA 6/2, llama3 rope): every projection swapped, the tied head
    still the embedding table, and the same tolerances against the float32 engine."""
    ref_tokens, ref_logprobs = orpheus_reference
    engine, (tokens, logprobs) = orpheus_run(
        orpheus, ref_tokens, quantization=quantization, kv_cache_dtype=kv_cache_dtype
    )
    model, kv = engine.runner.model, engine.runner.kv
    if quantization != "none":
        layer = model.layers[-1]
        projections = (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj)
        assert all(isinstance(p, QuantLinear) and p.mode == quantization for p in projections)
        assert layer.qkv_proj.bias is None
    assert model.llm_decoder.weight is model.embed.weight and model.embed.weight.dtype == torch.float32
    expected_kv = {"auto": torch.float32, "fp8": torch.float8_e4m3fn, "int8": torch.int8}[kv_cache_dtype]
    assert kv.k.dtype == expected_kv and (kv.k_scale is None) == (kv_cache_dtype == "auto")
    assert tokens == ref_tokens and len(tokens) == ORPHEUS_STEPS
    result = accuracy(ref_logprobs, logprobs)
    assert result["top1_agreement"] >= MIN_TOP1, result
    assert 0 < result["kl_mean"] < 1e-3, result
    assert held_slots(engine) == 0


def test_quantized_kv_cache_holds_more_tokens_per_byte(tiny):
    from light_tts.llm.model import KVCache

    q = tiny[0].llm.qwen
    fp16 = KVCache.bytes_per_slot(q, torch.float16)
    int8 = KVCache.bytes_per_slot(q, torch.float16, "int8")
    assert int8 == 2 * q.num_hidden_layers * q.num_key_value_heads * (q.head_dim + 4) < fp16


def test_sampled_requests_run_in_a_batch(tiny):
    """The ordinary path (engine.step(), RAS sampling, several requests batched) with every quantized part on."""
    engine = make_engine(tiny, quantization="int8", kv_cache_dtype="fp8")
    for i in range(3):
        engine.add_request(request(f"r{i}", min_len=10, max_len=30 + i))
    lengths = {f"r{i}": 0 for i in range(3)}
    while engine.has_unfinished():
        for out in engine.step():
            lengths[out.req_id] += len(out.new_token_ids)
            assert out.finish_reason in (None, "stop", "length"), out.finish_reason
    assert all(10 <= n <= 30 + i for i, n in enumerate(lengths.values())) and held_slots(engine) == 0


def test_engine_and_server_flags_are_validated():
    with pytest.raises(ValueError, match="quantization"):
        EngineConfig(quantization="fp4")
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        EngineConfig(kv_cache_dtype="fp16")
    with pytest.raises(SystemExit):
        ServerConfig.from_args(["--quantization", "int4"])
    with pytest.raises(ValueError, match="--quantization"):
        ServerConfig(kv_cache_dtype="float8")
    cfg = ServerConfig.from_args(["--quantization", "fp8", "--kv_cache_dtype", "int8"])
    assert (cfg.quantization, cfg.kv_cache_dtype) == ("fp8", "int8")


def test_startup_lines_say_what_runs_where(monkeypatch):
    assert check_support("none", "auto", torch.device("cpu")) == []
    (level, line), (cpu_level, cpu_line) = check_support("int8", "fp8", torch.device("cpu"))
    assert "int8 weights" in line and "fp8 KV cache" in line and level == logging.INFO
    assert "on the CPU runs the torch reference" in cpu_line and cpu_level == logging.WARNING  # a fallback
    # a GPU without fp8 (an A10 is 8.6): fp8 refused at startup with what to use instead, int8 accepted
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A10")
    gpu = torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"--quantization fp8 and --kv_cache_dtype fp8 need an fp8 GPU.*A10 is 8\.6"):
        check_support("fp8", "fp8", gpu)
    with pytest.raises(ValueError, match="--kv_cache_dtype fp8 need"):
        check_support("int8", "fp8", gpu)
    assert "int8 KV cache" in check_support("int8", "int8", gpu)[0][1]


def cuda_mode(quantization: str, kv_cache_dtype: str) -> dict:
    """EngineConfig overrides of a bf16 CUDA engine in one mode (skips fp8 below compute capability 8.9)."""
    if "fp8" in (quantization, kv_cache_dtype) and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9")
    return dict(
        data_type="bfloat16",
        quantization=quantization,
        kv_cache_dtype=kv_cache_dtype,
        graph_max_batch_size=4,
        max_total_token_num=None,
    )


def check_graphs_match_eager(make_engine_for, make_request) -> None:
    """Graphs replay what the eager forward computes, for a batch of 3 padded into the bucket of 4:
    make_engine_for(disable_cudagraph) -> engine, make_request(req_id) -> a greedy request."""
    runs = []
    for disable_cudagraph in (False, True):
        engine = make_engine_for(disable_cudagraph)
        assert (engine.runner.graphs is None) == disable_cudagraph
        for i in range(3):
            engine.add_request(make_request(f"g{i}"))
        tokens = {}
        while engine.has_unfinished():
            for out in engine.step():
                tokens.setdefault(out.req_id, []).extend(out.new_token_ids)
        runs.append(tokens)
    num_equal = sum(runs[0][k] == runs[1][k] for k in runs[0])
    assert num_equal >= 2, runs  # bf16 near-ties may flip one greedy sequence


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("quantization, kv_cache_dtype", MODES)
def test_cuda_graphs_capture_quantized_paths(tiny, quantization, kv_cache_dtype):
    kw = cuda_mode(quantization, kv_cache_dtype)
    check_graphs_match_eager(
        lambda disable: make_engine(tiny, "cuda", disable_cudagraph=disable, **kw),
        lambda req_id: request(req_id, greedy=True, min_len=40, max_len=40),
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("quantization, kv_cache_dtype", MODES)
def test_cuda_graphs_capture_quantized_orpheus(orpheus, quantization, kv_cache_dtype):
    """The same on the Llama body with the nucleus sampler (greedy rows) in the graphs."""
    kw = cuda_mode(quantization, kv_cache_dtype)
    check_graphs_match_eager(
        lambda disable: orpheus_engine(orpheus, "cuda", disable_cudagraph=disable, **kw),
        lambda req_id: orpheus_request(orpheus, req_id, 40),
    )


def test_quant_bench_runs_on_the_tiny_model(fixture_dir, tmp_path):
    """light_tts.bench.quant at a tiny size on the CPU: the accuracy and pipeline columns, the baseline exact."""
    import json

    from light_tts.bench.quant import main

    main(
        [
            "--out",
            str(tmp_path / "q.json"),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--model_dir",
            str(fixture_dir),
            "--modes",
            "int8/int8",
            "--steps",
            "20",
            "--batches",
            "",
            "--pipeline_tokens",
            "30",
        ]
    )
    baseline, int8 = json.loads((tmp_path / "q.json").read_text())["modes"]
    assert (baseline["kl_mean"], baseline["top1_agreement"], baseline["audio_rel_l2"]) == (0.0, 1.0, 0.0)
    assert int8["kl_mean"] > 0 and int8["kv_bytes_per_token"] < baseline["kv_bytes_per_token"]
    assert 0 <= int8["pipeline_token_agreement"] <= 1 and int8["mel_rel_l2"] >= 0


def test_server_and_engine_accept_the_same_values():
    from light_tts.llm import config as engine_config
    from light_tts.server.runtime import config as server_config

    assert server_config.QUANTIZATIONS == engine_config.QUANTIZATIONS
    assert server_config.KV_CACHE_DTYPES == engine_config.KV_CACHE_DTYPES


@pytest.mark.parametrize("quantization, kv_cache_dtype", [("none", "auto"), ("fp8", "fp8"), ("int8", "int8")])
@pytest.mark.parametrize("family", ["cosyvoice2", "cosyvoice3", "orpheus"])
def test_small_batch_path_gives_the_general_paths_logprobs(
    tiny, tiny_cv3, orpheus, family, quantization, kv_cache_dtype
):
    """--llm_small_batch_rows: one-row decode steps take DecoderLayer.forward_small (its ops' references on the CPU;
    test_small_batch_kernels holds the kernels to them) and score every step as the general path does, on the Qwen2
    body (qkv bias; CosyVoice2's biased speech head, CosyVoice3's unbiased one) and the Llama body (tied head);
    prefill never takes it. fp8 weights there multiply unquantized
    activations, so its steps score closer to the unquantized weights' than the general path's w8a8 does."""
    modes = dict(quantization=quantization, kv_cache_dtype=kv_cache_dtype)
    build, req = {
        "cosyvoice2": (lambda **kw: make_engine(tiny, **kw), lambda: request(greedy=True)),
        "cosyvoice3": (lambda **kw: make_engine(tiny_cv3, **kw), lambda: request(greedy=True)),
        "orpheus": (lambda **kw: orpheus_engine(orpheus, **kw), lambda: orpheus_request(orpheus, num_steps=20)),
    }[family]
    general = build(**modes)
    small = build(small_batch_rows=1, **modes)
    calls = []
    layer = small.runner.model.layers[0]
    original = layer.forward_small
    layer.forward_small = lambda *args: calls.append(len(args[0])) or original(*args)
    tokens, expected = forced_logprobs(general, req(), None)
    _, logprobs = forced_logprobs(small, req(), tokens)
    assert calls == [1] * (len(tokens) - 1)  # every decode step, one row each; not the prefill
    if quantization != "fp8":
        assert (logprobs - expected).abs().max() < 1e-4
        return
    _, unquantized = forced_logprobs(build(kv_cache_dtype=kv_cache_dtype), req(), tokens)
    decode = slice(1, None)  # the prefill's scores come from the general path in both engines
    assert (logprobs[0] - expected[0]).abs().max() < 1e-4
    small_error = (logprobs[decode] - unquantized[decode]).norm()
    general_error = (expected[decode] - unquantized[decode]).norm()
    assert (logprobs[decode] - expected[decode]).abs().max() > 1e-3  # not the w8a8 products (those match to 1e-4)
    assert small_error < general_error  # CosyVoice2: 0.68 vs 0.90; Orpheus (its large random head): 14.3 vs 15.6


def test_small_batch_rows_flag_is_bounded_by_the_kernels():
    from light_tts.kernels.llm.small_batch import MAX_ROWS
    from light_tts.llm.config import SMALL_BATCH_MAX_ROWS
    from light_tts.server.runtime import config as server_config

    assert SMALL_BATCH_MAX_ROWS == server_config.SMALL_BATCH_MAX_ROWS == MAX_ROWS
    with pytest.raises(ValueError, match="small_batch_rows"):
        EngineConfig(small_batch_rows=MAX_ROWS + 1)
    with pytest.raises(ValueError, match="llm_small_batch_rows"):
        ServerConfig(llm_small_batch_rows=-2)  # -1: the model's setting
    with pytest.raises(ValueError, match="llm_small_batch_rows"):
        ServerConfig(llm_small_batch_rows=MAX_ROWS + 1)
