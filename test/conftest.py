import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DIR = Path(os.environ.get("LIGHTTTS_FIXTURE_DIR", ROOT.parent / "shared" / "fixtures" / "cosyvoice2-tiny"))
if not FIXTURE_DIR.exists():  # CI clones main with shared/ beside it; a checkout may also carry shared/ inside
    FIXTURE_DIR = ROOT / "shared" / "fixtures" / "cosyvoice2-tiny"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not FIXTURE_DIR.exists():
        pytest.fail(f"parity fixtures not found at {FIXTURE_DIR}")
    return FIXTURE_DIR
