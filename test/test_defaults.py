"""Defaults sized to the host (server/runtime/defaults.py): a GPU host gets the capacity run's settings without
flags, each printed; a CPU host keeps ServerConfig's; a flag given on the command line always wins."""

import pytest

from light_tts.server.runtime.config import DERIVED, ServerConfig
from light_tts.server.runtime.defaults import GIB, HostFacts, derive_defaults

H100 = HostFacts(num_gpus=1, gpu_bytes=80 * GIB, has_fp8=True, num_cpus=16)


def test_a_gpu_host_gets_the_capacity_runs_settings_without_flags():
    cfg, lines = derive_defaults(ServerConfig.from_args(["--model_dir", "/m"]), H100)
    assert (cfg.httpserver_workers, cfg.encode_process_num, cfg.running_max_req_size) == (2, 4, 512)
    assert (cfg.decode_max_batch_size, cfg.hop_policy, cfg.max_total_token_num) == (256, "fixed", 512 * 800)
    assert (cfg.flow_cache_dtype, cfg.decode_mem_fraction) == ("fp8_e4m3", 0.8)
    assert (cfg.router_max_wait_tokens, cfg.latency_lane) == (0, "short_steps")
    assert len(lines) == len(DERIVED) and all(line.startswith("--") and "(" in line for line in lines)
    assert "--running_max_req_size 512 (512 per GPU, 1 GPU(s))" in lines


def test_given_flags_win_and_the_rest_follow_them():
    argv = ["--running_max_req_size", "64", "--latency_lane", "off", "--hop_policy", "growing"]
    cfg, lines = derive_defaults(ServerConfig.from_args(argv), H100)
    assert (cfg.running_max_req_size, cfg.latency_lane, cfg.hop_policy) == (64, "off", "growing")
    assert cfg.max_total_token_num == 64 * 800  # derived from the slots given
    assert not any(line.startswith(("--running_max_req_size", "--latency_lane", "--hop_policy")) for line in lines)


@pytest.mark.parametrize("host, argv", [(HostFacts(0, 0, False, 2), []), (H100, ["--device", "cpu"])])
def test_a_cpu_host_keeps_the_defaults(host, argv):
    cfg = ServerConfig.from_args(argv)
    assert derive_defaults(cfg, host) == (cfg, [])


def test_gpus_without_fp8_or_with_little_memory():
    cfg, _ = derive_defaults(ServerConfig(), HostFacts(2, 24 * GIB, False, 64))
    assert (cfg.flow_cache_dtype, cfg.decode_max_batch_size, cfg.running_max_req_size) == ("auto", 64, 1024)
    assert (cfg.httpserver_workers, cfg.encode_process_num) == (4, 8)


def test_the_command_line_remembers_what_was_given_and_help_says_what_is_derived(capsys):
    assert ServerConfig.from_args(["--port", "9000", "--disable_cudagraph"]).given == ("disable_cudagraph", "port")
    assert ServerConfig.from_args([]).given == ()
    with pytest.raises(SystemExit):
        ServerConfig.from_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # --help wraps its lines
    assert text.count("on a GPU host: sized to it at startup") == len(DERIVED)
