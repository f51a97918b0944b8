"""The topology (placement.py) and the model set (model_set.py): pure CPU, no server."""

from pathlib import Path

import pytest

from light_tts.errors import NotFoundError
from light_tts.families.base import ModelFacts
from light_tts.server.runtime.config import ServerConfig
from light_tts.server.runtime.model_set import ModelEntry, digest_files, parse_model_specs, resolve_model
from light_tts.server.runtime.placement import (
    CUDA_CONTEXT_BYTES,
    GIB,
    ProcessPlan,
    Topology,
    check_fits,
    check_shares,
    decode_groups,
    plan,
)

FACTS = ModelFacts(24000, 25, 2, 192, 80, 25, 3)


def entry(name: str, flow: str = "f", frontend: str = "t", facts: ModelFacts = FACTS) -> ModelEntry:
    return ModelEntry(name, f"/models/{name}", facts, flow, frontend)


STYLES = [entry("A"), entry("B"), entry("C", flow="other")]  # A and B: same flow/HiFT; C its own


def test_models_on_the_command_line():
    assert parse_model_specs(["/m/tiny"]) == [("tiny", "/m/tiny")]
    assert parse_model_specs(["/m/a/", "b=/m/a", "/x/k=v"]) == [("a", "/m/a/"), ("b", "/m/a"), ("k=v", "/x/k=v")]
    for bad in (["/m/a", "/n/a"], ["x=/m/a", "x=/m/b"], ["default=/m/a"], ["=/m/a"]):
        with pytest.raises(ValueError):
            parse_model_specs(bad)
    cfg = ServerConfig.from_args(["--model_dir", "/m/a", "--model_dir", "B=/m/b"])
    assert cfg.model_dir == ("/m/a", "B=/m/b") and ServerConfig(model_dir="/m/a").model_dir == ("/m/a",)
    assert ServerConfig.from_args([]).model_dir is None  # the tiny model, as before
    with pytest.raises(SystemExit):  # a clear argparse error, exit code 2
        ServerConfig.from_args(["--model_dir", "/m/a", "--model_dir", "/n/a"])


def test_unknown_model_names_the_served_ones():
    assert [resolve_model(STYLES, n) for n in ("A", "B", "C", "default")] == [0, 1, 2, 0]
    assert resolve_model(STYLES, "tts-1", aliases=("tts-1",)) == 0
    with pytest.raises(NotFoundError, match="'A', 'B', 'C'") as e:
        resolve_model(STYLES, "nope")
    assert e.value.http_status == 404


def test_content_keys_hash_the_files(tmp_path):
    for name, data in (
        ("a/flow.pt", b"1"),
        ("a/hift.pt", b"2"),
        ("b/flow.pt", b"1"),
        ("b/hift.pt", b"2"),
        ("c/flow.pt", b"1"),
        ("c/hift.pt", b"3"),
        ("a/tok/v.json", b"t"),
        ("b/tok/v.json", b"u"),
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    flow = {d: digest_files(tmp_path / d, ("flow.pt", "hift.pt")) for d in "abc"}
    assert flow["a"] == flow["b"] != flow["c"]
    assert digest_files(tmp_path / "a", ("tok",)) != digest_files(tmp_path / "b", ("tok",))  # a folder's files


def test_one_llm_per_model_and_decode_groups_by_flow():
    cfg = ServerConfig(decode_process_num=2, encode_process_num=2)
    topo = plan(cfg, STYLES, num_gpus=0)
    assert decode_groups(STYLES) == [[0, 1], [2]]
    assert [(p.rank, p.models) for p in topo.processes if p.stage == "llm"] == [(0, ("A",)), (1, ("B",)), (2, ("C",))]
    decodes = [(p.rank, p.models, p.group) for p in topo.processes if p.stage == "decode"]
    assert decodes == [(0, ("A", "B"), 0), (1, ("A", "B"), 0), (2, ("C",), 1), (3, ("C",), 1)]
    assert topo.decode_ranks_of_llm(0) == topo.decode_ranks_of_llm(1) == [0, 1]
    assert topo.decode_ranks_of_llm(2) == [2, 3]
    assert [p.models for p in topo.processes if p.stage == "encode"] == [("A", "B", "C")] * 2
    assert {p.device for p in topo.processes} == {"cpu"}
    lines = topo.log_lines()
    assert len(lines) == len(topo.processes) and "decode0 serves A, B on cpu (decode group 0)" in lines[3 + 2]


def test_another_decode_layout_gets_its_own_group():
    other = ModelFacts(16000, 25, 2, 192, 80, 25, 3)
    assert decode_groups([entry("A"), entry("B", facts=other)]) == [[0], [1]]


def test_one_model_plans_as_before():
    cfg = ServerConfig(decode_process_num=2, kv_cache_mem_fraction=0.3, decode_mem_fraction=0.7)
    topo = plan(cfg, [entry("tiny")], num_gpus=1)
    assert [(p.stage, p.rank, p.device, p.memory_share) for p in topo.processes] == [
        ("encode", 0, "cpu", 0.0),
        ("llm", 0, "cuda:0", 0.3),
        ("decode", 0, "cuda:0", 0.35),
        ("decode", 1, "cuda:0", 0.35),
    ]
    assert plan(cfg.replace(device="cuda:3"), [entry("tiny")], num_gpus=0).plan_of("decode", 1).device == "cuda:3"


def test_devices_and_memory_shares_on_several_gpus():
    topo = plan(ServerConfig(decode_process_num=1, kv_cache_mem_fraction=0.6, decode_mem_fraction=0.8), STYLES, 3)
    llms = [p for p in topo.processes if p.stage == "llm"]
    assert {p.device for p in llms} == {"cuda:0"} and [p.memory_share for p in llms] == pytest.approx([0.2] * 3)
    decodes = [(p.device, p.memory_share) for p in topo.processes if p.stage == "decode"]
    assert decodes == [("cuda:1", 0.8), ("cuda:2", 0.8)]  # one decode process per GPU: the whole fraction
    check_shares(topo)


def test_startup_refuses_what_does_not_fit_a_gpu():
    topo = plan(ServerConfig(), STYLES, num_gpus=1)  # 3 LLMs and 2 decode processes on cuda:0
    weights = {(p.stage, p.rank): 2 * GIB for p in topo.processes if p.stage != "encode"}
    check_fits(topo, weights, {"cuda:0": 80 * GIB})  # 5 x (2 GiB + a context) fit 80 GiB
    with pytest.raises(SystemExit, match="do not fit cuda:0.*llm0 \\(A\\)"):
        check_fits(topo, weights, {"cuda:0": 12 * GIB})
    assert 5 * (2 * GIB + CUDA_CONTEXT_BYTES) > 0.8 * 12 * GIB
    overbooked = Topology((ProcessPlan("llm", 0, ("A",), "cuda:0", 0.7), ProcessPlan("llm", 1, ("B",), "cuda:0", 0.7)))
    with pytest.raises(SystemExit, match="llm processes on cuda:0 .* sum to 1.4"):
        check_shares(overbooked)


def test_settings_of_several_models(tmp_path):
    from light_tts.model_config import FlowConfig, ModelConfig
    from light_tts.server.runtime.settings import build_settings

    models = [ModelConfig(Path("/models/a")), ModelConfig(Path("/models/b"), sample_rate=48000, token_frame_rate=50)]
    s = build_settings(ServerConfig(max_prompt_seconds=4), models, ["a", "b"])
    assert s.model_names == ["a", "b"] and s.model == s.models[0].facts and s.model_index("default") == 0
    assert s.shm.audio_ring_samples == 60 * 48000 and s.shm.prompt_speech_tokens == 4 * 50 + 50  # the max
    assert s.llm_engine_config("cpu", 1).ahead_tokens == int(3.0 * 50)  # llm1 runs model b
    assert s.topology.decode_ranks_of_llm(0) != s.topology.decode_ranks_of_llm(1)  # other layouts: own groups
    with pytest.raises(ValueError, match="another layout"):
        build_settings(ServerConfig(), [models[0], ModelConfig(Path("/models/c"), flow=FlowConfig(spk_embed_dim=256))])


def test_settings_of_a_model_without_prompt_audio_beside_one_with():
    """An Orpheus model (named voices, no prompt features) beside CosyVoice2: the prompt arrays keep CosyVoice2's
    layout and 25-Hz sizing, Orpheus' LLM knows its fixed first window and its sentence bound, its voices are
    checked by name, and a request naming no model finds the model by its voice."""
    from light_tts.errors import RequestError
    from light_tts.model_config import ModelConfig, QwenConfig
    from light_tts.models.orpheus.config import OrpheusConfig, OrpheusTokens
    from light_tts.server.runtime.model_set import (
        check_voice,
        has_modes,
        model_for_voice,
        refuse_prompt_audio,
        voice_model,
    )
    from light_tts.server.runtime.settings import build_settings

    tokens = OrpheusTokens(128000, 128009, 128257, 128258, 128259, 128260, 128261, 128262, 128263, 128266)
    orpheus = OrpheusConfig(Path("/models/o"), QwenConfig(), tokens, max_new_tokens=600, voices=("tara", "leo"))
    s = build_settings(ServerConfig(max_prompt_seconds=4), [ModelConfig(Path("/models/c")), orpheus], ["c", "o"])
    o = s.models[1]
    assert o.family == "orpheus" and not o.facts.takes_prompt_audio and s.models[0].facts.takes_prompt_audio
    assert (s.shm.embedding_dim, s.shm.num_mels, s.shm.prompt_speech_tokens) == (192, 80, 4 * 25 + 25)
    assert s.llm_engine_config("cpu", 1).first_hop_tokens == 28  # 4 frames of 7: SNAC's first window
    assert s.llm_engine_config("cpu", 0).first_hop_tokens == 2 * 25 - 1 + 3  # CosyVoice2's first hop
    assert s.sentence_speech_tokens(o.facts, 10, None) == 600 and s.sentence_speech_tokens(o.facts, 10, 70) == 70
    assert s.sentence_speech_tokens(s.models[0].facts, 10, None) == 200
    assert s.topology.decode_ranks_of_llm(0) != s.topology.decode_ranks_of_llm(1)
    assert check_voice(o, "leo") == "leo" and "tara, leo" in str(refuse_prompt_audio(o))
    with pytest.raises(RequestError, match="unknown voice 'alloy' for model 'o': it speaks as tara, leo"):
        check_voice(o, "alloy")
    assert [model_for_voice(s.models, name, "tara", ["tts-1"]) for name in (None, "tts-1", "c", "o")] == [1, 1, 0, 1]
    assert model_for_voice(s.models, None, "voice_x") == 0 and voice_model(s.models) == 0
    with pytest.raises(RequestError, match="no model of this server takes prompt audio"):
        voice_model([o])
    assert voice_model(s.models, "c") == 0
    with pytest.raises(RequestError, match="model 'o' takes no prompt audio"):
        voice_model(s.models, "o")  # an upload naming Orpheus
    with pytest.raises(NotFoundError):
        voice_model(s.models, "nope")
    # Orpheus has no modes: a mode (any), an instruction or voice conversion is a 400; CosyVoice takes them
    assert has_modes(s.models[0], "instruct", "Speak softly.") and not has_modes(o, None, " ")
    for mode, instruction in (("zero_shot", None), ("vc", None), (None, "Speak softly.")):
        with pytest.raises(RequestError, match="model 'o' has no modes"):
            has_modes(o, mode, instruction)
    assert s.first_chunk_tokens(o.facts, 0) == 28 and s.first_chunk_tokens(s.models[0].facts, 0) == 25 + 3
    alone = build_settings(ServerConfig(hop_policy="fixed", decode_max_batch_size=64), orpheus)
    assert (alone.shm.embedding_dim, alone.shm.prompt_speech_tokens) == (0, 0)
    assert alone.ignored_flags() == ["--hop_policy has no effect: no served model's codec reads it (orpheus)"]
    assert build_settings(ServerConfig(hop_policy="fixed"), [ModelConfig(Path("/c")), orpheus]).ignored_flags() == []
    # --snac_kernels is Orpheus's codec flag: read beside Orpheus, said to do nothing on a CosyVoice-only server
    assert build_settings(ServerConfig(snac_kernels="module"), orpheus).ignored_flags() == []
    cosy = build_settings(ServerConfig(snac_kernels="module"), ModelConfig(Path("/c")))
    assert [n for n in cosy.ignored_flags() if "snac" in n] == [
        "--snac_kernels has no effect: no served model's codec reads it (cosyvoice2)"
    ]


def test_llm_replicas_spread_over_the_llm_gpus_and_share_their_model_decode_group():
    cfg = ServerConfig(
        llm_replicas=2,
        llm_gpus="0,1",
        decode_gpus="2,3",
        decode_process_num=2,
        kv_cache_mem_fraction=0.5,
        decode_mem_fraction=0.8,
    )
    topo = plan(cfg, STYLES, num_gpus=4)
    llms = [(p.rank, p.models, p.device, p.memory_share) for p in topo.processes if p.stage == "llm"]
    assert llms == [
        (0, ("A",), "cuda:0", 0.5 / 3),
        (1, ("A",), "cuda:1", 0.5 / 3),
        (2, ("B",), "cuda:0", 0.5 / 3),
        (3, ("B",), "cuda:1", 0.5 / 3),
        (4, ("C",), "cuda:0", 0.5 / 3),
        (5, ("C",), "cuda:1", 0.5 / 3),
    ]
    assert topo.llm_ranks_of("A") == [0, 1] and topo.llm_ranks_of("C") == [4, 5]
    assert topo.decode_ranks_of_llm(1) == topo.decode_ranks_of_llm(2) == [0, 1]  # A's and B's group
    assert topo.decode_ranks_of_llm(5) == [2, 3]
    decodes = [(p.rank, p.device, p.memory_share) for p in topo.processes if p.stage == "decode"]
    assert decodes == [(0, "cuda:2", 0.4), (1, "cuda:3", 0.4), (2, "cuda:2", 0.4), (3, "cuda:3", 0.4)]
    assert not topo.is_simulated and topo.compute_device("decode", 3) == "cuda:3"
    check_shares(topo)


def test_a_failed_process_fails_only_the_requests_it_may_hold():
    # llm0, llm1: A; llm2, llm3: B; llm4, llm5: C
    topo = plan(ServerConfig(llm_replicas=2, decode_process_num=2), STYLES, num_gpus=0)  # decode0,1: A, B; 2,3: C
    assert topo.may_hold("llm", 1, "A", 1, 0) and not topo.may_hold("llm", 1, "A", 0, 0)
    assert topo.may_hold("llm", 1, "A", -1, -1)  # not sent yet: it may be on its way to llm1
    assert not topo.may_hold("llm", 2, "A", -1, -1)  # B's replica never sees A's requests
    assert topo.may_hold("decode", 1, "B", 3, 1) and not topo.may_hold("decode", 0, "B", 3, 1)
    assert topo.may_hold("decode", 0, "B", 3, -1) and not topo.may_hold("decode", 2, "B", 3, -1)  # C's group
    assert topo.may_hold("encode", 0, "C", 5, 2)


def test_simulated_gpus_are_planned_and_printed_as_gpus_and_computed_on_the_cpu():
    cfg = ServerConfig(simulate_gpus=2, decode_gpus="0,1", decode_process_num=4, decode_mem_fraction=0.6)
    topo = plan(cfg, [entry("tiny")], num_gpus=0)
    assert [p.device for p in topo.processes if p.stage == "decode"] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert {p.memory_share for p in topo.processes if p.stage == "decode"} == {0.3}  # two per GPU
    assert topo.is_simulated and topo.compute_device("decode", 1) == topo.compute_device("llm", 0) == "cpu"
    lines = topo.log_lines()
    assert "topology: decode1 serves tiny on cuda:1 (simulated on the CPU) (decode group 0), memory share 0.3" in lines
    assert "topology: encode0 serves tiny on cpu" in lines


def test_gpu_lists_are_checked_against_the_host():
    with pytest.raises(SystemExit, match="--decode_gpus names GPU 2, but this host has 2"):
        plan(ServerConfig(decode_gpus="1,2"), [entry("tiny")], num_gpus=2)
    with pytest.raises(SystemExit, match="no GPU is visible"):
        plan(ServerConfig(llm_gpus="0"), [entry("tiny")], num_gpus=0)
    with pytest.raises(ValueError, match="--device cuda:1 puts every process on one device"):
        ServerConfig(device="cuda:1", decode_gpus="0")
    with pytest.raises(ValueError, match="--llm_replicas"):
        ServerConfig(llm_replicas=0)
