import os
import subprocess
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("COCODAG_REAL_DATA", ROOT.parent / "shared" / "real-data"))


@pytest.fixture
def real_data() -> Path:
    """The real public files beside the checkout (../shared/real-data); tests using it skip when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real-data folder not present at {REAL_DATA}")
    return REAL_DATA


def pytest_configure(config):
    # Tests run as `pytest -n 2` on 2 cores: one thread per worker in every OpenMP / BLAS pool (torch's included)
    # avoids oversubscription, which slows torch on a busy machine by an order of magnitude.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        try:
            import torch  # noqa: F401 - loaded first, so that threadpoolctl sees its OpenMP runtime
        except ImportError:  # pragma: no cover
            pass
        threadpool_limits(limits=1)        # for the whole session: never restored


@pytest.fixture
def one_torch_thread():
    """torch on one thread during the test: bit-identical CPU results between this process and the subprocesses
    it compares with (run with OMP_NUM_THREADS=1) need equal thread counts."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def small_fs(tmp_path):
    """A folder on its own tiny file system (a 1 MiB tmpfs) to provoke "No space left on device".

    Mounting needs root and a kernel that allows it (true on the dev machine and in CI containers run as root);
    the tests using it skip otherwise. Yields ``(folder, size_bytes)``.
    """
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
