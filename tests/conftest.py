import os
from pathlib import Path

import pytest

# see maxent_train/__init__.py: avoid OpenMP spin-waiting when the two xdist workers share 2 cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("COCODAG_REAL_DATA", ROOT.parent / "shared" / "real-data"))


@pytest.fixture
def real_data() -> Path:
    """The real public files beside the checkout (../shared/real-data); tests using it skip when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real-data folder not present at {REAL_DATA}")
    return REAL_DATA


def pytest_configure(config):
    # Tests run as `pytest -n 2` on 2 cores: one intra-op thread per worker avoids OpenMP oversubscription,
    # which slows torch on a busy machine by an order of magnitude.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:  # pragma: no cover
            pass


@pytest.fixture
def small_fs(tmp_path):
    """A folder on its own tiny file system (a 1 MiB tmpfs) to provoke "No space left on device".

    Mounting needs root and a kernel that allows it (true on the dev machine and in CI containers run as root);
    the tests using it skip otherwise. Yields ``(folder, size_bytes)``.
    """
    import subprocess

    mnt = tmp_path / "smallfs"
    mnt.mkdir()
    size = 1 << 20
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt, size
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
