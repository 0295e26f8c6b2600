"""cocodag.lock (exclusive outputs) and cocodag.outputs (output checks, disk errors)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from cocodag import CocodagError
from cocodag.lock import OutputLock, OutputLockedError, lock_path_for
from cocodag.outputs import check_free_space, disk_errors, prepare_output


def _hold_in_child(path, ready, shared=False):
    """Start a process that takes the lock on ``path`` and sleeps; returns it once the lock is held."""
    code = textwrap.dedent(f"""
        import time, pathlib
        from cocodag.lock import OutputLock
        OutputLock({str(path)!r}, shared={shared}).acquire()
        pathlib.Path({str(ready)!r}).write_text("held")
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code])
    for _ in range(300):
        if ready.exists():
            return p
        time.sleep(0.05)
    p.kill()
    raise AssertionError("child never took the lock")


def test_second_job_is_refused_with_the_holder_then_takes_over_after_kill9(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    child = _hold_in_child(out, tmp_path / "ready")
    try:
        with pytest.raises(OutputLockedError) as e:
            OutputLock(out).acquire()
        msg = str(e.value)
        assert f"pid {child.pid} on " in msg and "in use by another job" in msg and "\n" not in msg
        assert msg.startswith(f"--out {out}:")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    # the kernel released the lock with the process; its info is still in the file -> a note, then ours
    with OutputLock(out) as lk:
        assert lk.took_over_ and lk.took_over_["pid"] == child.pid
        info = json.loads(lock_path_for(out).read_text())
        assert info["pid"] == os.getpid()
    assert "is gone; taking over" in capsys.readouterr().err
    # a clean release leaves nothing to report
    assert lock_path_for(out).read_text() == ""
    with OutputLock(out) as lk:
        assert lk.took_over_ is None


def test_shared_holders_coexist_and_exclude_an_exclusive_one(tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    child = _hold_in_child(out, tmp_path / "ready", shared=True)
    try:
        with OutputLock(out, shared=True):
            pass
        with pytest.raises(OutputLockedError, match="jobs that share it"):
            OutputLock(out).acquire()
    finally:
        child.kill()
        child.wait()
    with OutputLock(out):
        pass


def test_lock_file_places(tmp_path):
    (tmp_path / "d").mkdir()
    assert lock_path_for(tmp_path / "d") == tmp_path / "d" / ".lock"
    assert lock_path_for(tmp_path / "x.h5") == tmp_path / "x.h5.lock"
    assert lock_path_for(tmp_path / "not-yet", kind="dir") == tmp_path / "not-yet" / ".lock"


def test_prepare_output_refuses_odd_paths_before_work(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(CocodagError, match="is an existing file, expected a folder"):
        prepare_output(f, kind="dir")
    with pytest.raises(CocodagError, match="afile is a file, so nothing can be created under it"):
        prepare_output(f / "sub", kind="dir")
    with pytest.raises(CocodagError, match="afile is a file"):
        prepare_output(f / "x.h5", kind="file", option="--out")
    with pytest.raises(CocodagError, match="is a folder, expected a file name"):
        prepare_output(tmp_path, kind="file")
    assert prepare_output(tmp_path / "new" / "deep", kind="dir").is_dir()
    assert prepare_output(tmp_path / "n2" / "o.h5", kind="file").parent.is_dir()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_prepare_output_unwritable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(CocodagError, match="cannot write in"):
            prepare_output(ro / "out", kind="file")
    finally:
        ro.chmod(0o700)


def test_disk_full_is_one_line(small_fs):
    mnt, size = small_fs
    target = mnt / "big.bin"
    with pytest.raises(CocodagError) as e:
        with disk_errors(target):
            with open(target, "wb") as f:
                f.write(b"\0" * (2 * size))
                f.flush()
                os.fsync(f.fileno())
    assert str(e.value).startswith(f"No space left on device: {target}") and "\n" not in str(e.value)
    target.unlink()
    with pytest.raises(CocodagError, match="No space left on device: .* needs about 2.0 MiB"):
        check_free_space(mnt / "x.h5", 2 * size)
    check_free_space(mnt / "x.h5", size // 4)


def test_other_os_errors_keep_their_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        with disk_errors(tmp_path / "x"):
            open(tmp_path / "missing" / "x", "rb")
