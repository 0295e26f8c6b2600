import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("COCODAG_REAL_DATA", ROOT.parent / "shared" / "real-data"))


@pytest.fixture
def real_data() -> Path:
    """The real public files beside the checkout (../shared/real-data); tests using it skip when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real-data folder not present at {REAL_DATA}")
    return REAL_DATA
