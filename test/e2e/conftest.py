"""End-to-end fixtures: a tiny random model, the real server as a subprocess (started once per session), and
the offline pipeline whose audio the server must reproduce."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from server_harness import ServerProcess, serving

# Room for every request of these tests: prompt + text + 20 x text speech tokens (the random tiny model rarely
# samples eos), so the server's length bound is the offline pipeline's.
MAX_REQ_TOTAL_LEN = 1024
IDLE_TIMEOUT_S = 3  # --ws_idle_timeout_s and --http_body_timeout_s of the shared server (twice: the body deadline)
HEADER_TIMEOUT_S = 2  # shorter: a WebSocket that outlives it shows the header timer leaves upgraded sockets alone


@pytest.fixture(scope="session", autouse=True)
def voices_outside_home(tmp_path_factory):
    """Servers started without --data_dir keep saved voices in the XDG data directory: a temporary one here, so
    that no test reads or writes the voices of the user running the tests."""
    previous = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg_data"))
    yield
    if previous is None:
        os.environ.pop("XDG_DATA_HOME")
    else:
        os.environ["XDG_DATA_HOME"] = previous


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from light_tts.tools.make_model import make_model

    return make_model(tmp_path_factory.mktemp("model") / "tiny", size="tiny", seed=0)


@pytest.fixture(scope="session")
def server(tiny_model_dir, tmp_path_factory):
    """The shared server: 2 HTTP workers, 2 decode processes. Stopping it (Ctrl-C) is itself checked."""
    srv = ServerProcess(
        tiny_model_dir,
        tmp_path_factory.mktemp("logs") / "server.log",
        "--data_dir",
        str(tmp_path_factory.mktemp("voices")),
        "--httpserver_workers",
        "2",
        "--decode_process_num",
        "2",
        "--running_max_req_size",
        "24",
        "--max_text_chars",
        "2000",
        "--request_timeout_s",
        "120",
        "--cache_capacity",
        "8",
        "--max_req_total_len",
        str(MAX_REQ_TOTAL_LEN),
        "--ws_idle_timeout_s",
        str(IDLE_TIMEOUT_S),
        "--http_body_timeout_s",
        str(IDLE_TIMEOUT_S),
        "--http_header_timeout_s",
        str(HEADER_TIMEOUT_S),
        "--http_body_deadline_s",
        str(2 * IDLE_TIMEOUT_S),
    )
    with serving(srv):
        yield srv


@pytest.fixture(scope="session")
def pipeline(tiny_model_dir):
    import torch

    from light_tts.pipeline import Pipeline

    torch.set_num_threads(1)
    return Pipeline(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def pipelines(model_dirs):
    """The offline pipeline of each model of a module's several-model server (its `model_dirs`: name -> dir)."""
    import torch

    from light_tts.pipeline import Pipeline

    torch.set_num_threads(1)
    return {name: Pipeline(path, device="cpu") for name, path in model_dirs.items()}
