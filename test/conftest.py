import os
from pathlib import Path

import pytest

# Without a GPU, Triton kernels run in Triton's interpreter, which must be switched on before triton is imported.
# The ops dispatch by tensor device, so this changes nothing for code that runs the torch references on the CPU.
try:
    import torch

    _has_cuda = torch.cuda.is_available()
except ImportError:
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")
if not _has_cuda:
    from light_tts.kernels.interpreter import fix_interpreter

    fix_interpreter()

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DIR = Path(os.environ.get("LIGHTTTS_FIXTURE_DIR", ROOT.parent / "shared" / "fixtures" / "cosyvoice2-tiny"))
if not FIXTURE_DIR.exists():  # CI clones main with shared/ beside it; a checkout may also carry shared/ inside
    FIXTURE_DIR = ROOT / "shared" / "fixtures" / "cosyvoice2-tiny"


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The tests' tensors are tiny: one thread is as fast, and immune to oversubscribing CI's 2 cores (the e2e
    servers run beside the test process)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not FIXTURE_DIR.exists():
        pytest.fail(f"parity fixtures not found at {FIXTURE_DIR}")
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def cv3_fixture_dir() -> Path:
    """The CosyVoice3 parity fixture, beside the CosyVoice2 one."""
    path = FIXTURE_DIR.parent / "cosyvoice3-tiny"
    if not path.exists():
        pytest.fail(f"parity fixtures not found at {path}")
    return path


@pytest.fixture(scope="session")
def orpheus_dir(tmp_path_factory) -> Path:
    """A tiny random Orpheus model directory (make_model --family orpheus --size tiny), written once per session."""
    from light_tts.tools.make_orpheus import make_orpheus

    return make_orpheus(tmp_path_factory.mktemp("orpheus"), "tiny", seed=0)


@pytest.fixture
def poisoned_empty(monkeypatch):
    """Makes torch.empty return NaN (floats) or -1 (ints), so a kernel that skips writing an output fails."""
    import torch

    real_empty = torch.empty

    def empty(*size, dtype=None, **kwargs):
        t = real_empty(*size, dtype=dtype, **kwargs)
        return t.fill_(float("nan") if t.is_floating_point() else -1)

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(
        torch,
        "empty_like",
        lambda x, **kw: empty(x.shape, dtype=kw.pop("dtype", x.dtype), device=kw.pop("device", x.device)),
    )
