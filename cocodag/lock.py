"""Exclusive outputs: one job holds an OS-level lock on what it writes for as long as it runs.

Every command that writes an output (``cocodag build --out``, ``maxent-train fit --out``, ``export --out``,
``oodscore evaluate --out``) holds an :class:`OutputLock` on it. A second job on the same output gets one line naming
the holder and exits 1::

    with OutputLock(out_dir, option="--out"):          # DIR/.lock for a folder, F.h5.lock for a file
        ... write ...

The lock is ``fcntl.flock`` on a small lock file (STYLE §6): the kernel releases it when the holder dies, even by
``kill -9``, so there is never a stale lock to clean up by hand. The file only *informs*: the holder writes its pid,
host, start time and command line there, and empties it on a clean release; finding it non-empty when the lock is
free means the previous holder died, which is reported as a note before taking over. On Linux NFS mounts ``flock``
is carried out as a POSIX lock by the NFS lock manager, so jobs on different machines of a cluster exclude each
other too.

``shared=True`` takes a shared lock: several holders at once (e.g. ``cocodag build --shard-range`` jobs filling one
folder, each of which locks its own tasks), while an exclusive request (the merge step, a full build) is refused as
long as any of them runs.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import CocodagError

LOCK_NAME = ".lock"


class OutputLockedError(CocodagError):
    """Another job holds the lock on an output (the message names it)."""


def lock_path_for(path: Path | str, kind: str | None = None) -> Path:
    """Where the lock of ``path`` lives: ``DIR/.lock`` for a folder, ``<file>.lock`` beside a file.

    ``kind`` (``"dir"`` or ``"file"``) says which ``path`` is meant to be; without it, an existing folder counts as
    a folder and anything else as a file (so pass ``kind="dir"`` for a folder that does not exist yet).
    """
    path = Path(path)
    if kind not in (None, "dir", "file"):
        raise ValueError(f"kind must be None, 'dir' or 'file', got {kind!r}")
    is_dir = path.is_dir() if kind is None else kind == "dir"
    return path / LOCK_NAME if is_dir else path.with_name(path.name + ".lock")


def _holder_text(info: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"])) if "started" in info else "?"
    cmd = info.get("command", "")
    cmd = (cmd[:117] + "...") if len(cmd) > 120 else cmd
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {when}" + (f": {cmd}" if cmd else "")


class OutputLock:
    """An exclusive (or shared) lock on one output, held from :meth:`acquire` to :meth:`release`.

    Parameters
    ----------
    path : the output (a folder or a file); the lock file is :func:`lock_path_for` of it.
    option : the command-line option that named ``path`` (used in the message), e.g. ``"--out"``.
    shared : take a shared lock (see the module docstring).
    kind : ``"dir"`` or ``"file"``: what ``path`` is (default: a folder if one exists there, else a file).
    quiet : do not print the take-over note (the caller reports :attr:`took_over_` itself, e.g. once for many locks).
    lock_file : use this lock file instead of the default one.

    Raises
    ------
    OutputLockedError
        From :meth:`acquire` when another job holds the lock (never waits).
    """

    def __init__(self, path: Path | str, *, option: str = "--out", shared: bool = False, kind: str | None = None,
                 quiet: bool = False, lock_file: Path | str | None = None):
        self.path = Path(path)
        self.option = option
        self.shared = shared
        self.quiet = quiet
        self.lock_file = Path(lock_file) if lock_file is not None else lock_path_for(self.path, kind)
        self._fd: int | None = None
        self.took_over_: dict | None = None

    # ------------------------------------------------------------------------------------------------ acquire
    def acquire(self) -> OutputLock:
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CocodagError(f"{self.option} {self.path}: cannot create the lock file {self.lock_file} "
                               f"({os.strerror(e.errno) if e.errno else e}); is the folder writable?") from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as e:
            info = _read_info(fd)
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise CocodagError(f"{self.option} {self.path}: cannot lock {self.lock_file} "
                                   f"({os.strerror(e.errno) if e.errno else e})") from None
            holder = (_holder_text(info) if info else
                      "jobs that share it (e.g. `cocodag build --shard-range` jobs)")
            raise OutputLockedError(f"{self.option} {self.path}: in use by another job ({holder}); wait for it to "
                                    f"finish or choose another {self.option}") from None
        self._fd = fd
        if not self.shared:
            old = _read_info(fd)
            if old:          # the lock was free but its file names a holder: that job died without releasing
                self.took_over_ = old
                if not self.quiet:
                    print(f"note: {self.option} {self.path}: the job that held it ({_holder_text(old)}) is "
                          "gone; taking over", file=sys.stderr)
            _write_info(fd, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                             "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""})
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if not self.shared:
                os.ftruncate(fd, 0)          # a clean release: the next holder finds nothing to report
        except OSError:
            pass
        finally:
            os.close(fd)                     # closing releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"OutputLock({str(self.path)!r}, shared={self.shared}, held={self.held})"


def _read_info(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        return json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        return {}


def _write_info(fd: int, info: dict) -> None:
    data = json.dumps(info).encode()
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, data)
