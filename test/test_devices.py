"""GPU placement rules (devices.py): the lists, their defaults, simulated GPUs, and the load-based LLM pick."""

import pytest

from light_tts.server.runtime.devices import gpu_layout, parse_gpu_list, pick_least_loaded


def devices(layout, stage, count):
    return [layout.device_of(stage, i) for i in range(count)]


def test_defaults_keep_the_llm_on_gpu0_and_spread_decode_over_the_others():
    four = gpu_layout(None, None, 0, 4, "auto")
    assert devices(four, "llm", 2) == ["cuda:0", "cuda:0"]
    assert devices(four, "decode", 4) == ["cuda:1", "cuda:2", "cuda:3", "cuda:1"]
    one = gpu_layout(None, None, 0, 1, "auto")
    assert devices(one, "llm", 1) == devices(one, "decode", 2)[:1] == ["cuda:0"]
    assert devices(one, "decode", 2) == ["cuda:0", "cuda:0"]
    assert four.device_of("encode", 0) == "cpu" and not four.is_simulated


def test_lists_place_llm_replicas_on_different_gpus_and_several_decodes_per_gpu():
    layout = gpu_layout("0,1", "2 3", 0, 4, "auto")
    assert devices(layout, "llm", 4) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]  # 2 models x 2 replicas
    assert devices(layout, "decode", 4) == ["cuda:2", "cuda:3", "cuda:2", "cuda:3"]
    shared = gpu_layout("0", "0,1", 0, 2, "auto")  # the LLM's GPU may also hold decode processes
    assert devices(shared, "decode", 3) == ["cuda:0", "cuda:1", "cuda:0"]


def test_no_gpu_or_device_cpu_runs_everything_on_the_cpu():
    assert gpu_layout(None, None, 0, 0, "auto") is None
    assert gpu_layout(None, None, 0, 8, "cpu") is None
    with pytest.raises(SystemExit, match="no GPU is visible"):
        gpu_layout("0", None, 0, 0, "auto")
    with pytest.raises(SystemExit, match="--device cpu"):
        gpu_layout(None, "1", 0, 4, "cpu")


def test_simulated_gpus_are_planned_as_gpus_and_computed_on_the_cpu():
    layout = gpu_layout(None, "0,1", 2, 0, "auto")
    assert layout.is_simulated and devices(layout, "decode", 4) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]


@pytest.mark.parametrize(
    "llm, decode, visible, message",
    [
        ("2", None, 2, "--llm_gpus names GPU 2, but this host has 2"),
        (None, "0,4", 4, "--decode_gpus names GPU 4, but this host has 4"),
    ],
)
def test_a_gpu_that_does_not_exist_stops_startup(llm, decode, visible, message):
    with pytest.raises(SystemExit, match=message):
        gpu_layout(llm, decode, 0, visible, "auto")


@pytest.mark.parametrize("text", ["", "a", "0,,x", "-1", "1,1", "0.5"])
def test_bad_gpu_lists_are_rejected(text):
    with pytest.raises(ValueError, match="--decode_gpus"):
        parse_gpu_list(text, "decode_gpus")


def test_parse_gpu_list():
    assert parse_gpu_list(None, "x") is None and parse_gpu_list("3, 1", "x") == (3, 1)


def test_pick_least_loaded_prefers_the_lightest_and_spreads_ties():
    assert pick_least_loaded([0, 1], {0: 5, 1: 2}, turn=0) == 1
    assert [pick_least_loaded([0, 1], {}, turn=t) for t in range(4)] == [0, 1, 0, 1]
    assert pick_least_loaded([2, 3], {2: 1, 3: 1, 0: 0}, turn=1) == 3  # only the given ranks count
    with pytest.raises(ValueError):
        pick_least_loaded([], {}, turn=0)
