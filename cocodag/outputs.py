"""Output paths checked before the work starts, and file-system failures turned into one clear line.

* :func:`prepare_output` — an ``--out`` folder or file: refuse an existing file where a folder is wanted (and the
  reverse), a parent that is a file, a read-only or unwritable location, *before* a job spends an hour computing;
  creates the folder (or the file's parent).
* :func:`disk_errors` — a context manager that turns ``ENOSPC`` / ``EDQUOT`` / ``EROFS`` / ``EACCES`` raised while
  writing into ``CocodagError("No space left on device: <path>; ...")``, so a full disk is one line, not a traceback.
* :func:`check_free_space` — refuse up front when a job knows roughly how much it will write.
"""
from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CocodagError

#: errno -> what to tell the user (the fix follows in the message)
_DISK_ERRNOS = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EROFS: "Read-only file system",
    errno.EACCES: "Permission denied",
    errno.EFBIG: "File too large for this file system",
}


def _first_file_ancestor(path: Path) -> Path | None:
    for p in [path, *path.parents]:
        if p.exists():
            return p if not p.is_dir() else None
    return None


def _os_reason(e: OSError) -> str:
    """The short reason of an ``OSError``: our wording for the disk errnos, else the system's."""
    if not e.errno:
        return str(e)
    return _DISK_ERRNOS.get(e.errno, os.strerror(e.errno))


def _probe_writable(folder: Path, option: str, path: Path) -> None:
    probe = folder / f".cocodag-write-test-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"0")
    except OSError as e:
        what = _os_reason(e)
        raise CocodagError(f"{option} {path}: cannot write in {folder} ({what}); choose another {option}") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:         # a read-only file system refuses even removing a file that is not there
            pass


def prepare_output(path: Path | str, *, kind: str, option: str = "--out") -> Path:
    """Check an output location and create what it needs; returns it as a Path.

    Parameters
    ----------
    path : the output.
    kind : ``"dir"`` (a folder the job fills; created) or ``"file"`` (a file the job writes; its parent is created).
    option : the option that named it, for the message.

    Raises
    ------
    CocodagError
        One line: the path is a file where a folder is wanted (or the reverse), a parent is a file, or the location
        cannot be written (read-only file system, permissions).
    """
    if kind not in ("dir", "file"):
        raise ValueError(f"kind must be 'dir' or 'file', got {kind!r}")      # a bug in the caller, not the user's
    path = Path(path)
    if kind == "dir" and path.exists() and not path.is_dir():
        raise CocodagError(f"{option} {path}: is an existing file, expected a folder; choose another {option}")
    if kind == "file" and path.is_dir():
        raise CocodagError(f"{option} {path}: is a folder, expected a file name (e.g. {path / 'out.h5'})")
    blocker = _first_file_ancestor(path.parent if kind == "file" else path)
    if blocker is not None and blocker != path:
        raise CocodagError(f"{option} {path}: {blocker} is a file, so nothing can be created under it")
    folder = path if kind == "dir" else path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        what = _os_reason(e)
        raise CocodagError(f"{option} {path}: cannot create {folder} ({what}); choose another {option}") from None
    _probe_writable(folder, option, path)
    return path


@contextmanager
def disk_errors(path: Path | str, *, option: str = "--out") -> Iterator[None]:
    """Turn file-system exhaustion or refusal while writing ``path`` into one ``CocodagError`` line.

    Only the errnos of :data:`_DISK_ERRNOS` are translated; any other ``OSError`` keeps its traceback (a bug or an
    unexpected failure). The caller's own atomic writes make sure nothing half-written is left under a final name.
    """
    try:
        yield
    except OSError as e:
        err = e.errno if e.errno in _DISK_ERRNOS else _errno_in_chain(e)
        if err is None:
            raise
        raise CocodagError(f"{_DISK_ERRNOS[err]}: {path}; free space (or fix permissions) and rerun the same "
                           f"command, or choose another {option}") from None


def _errno_in_chain(e: BaseException) -> int | None:
    """h5py reports a full disk as OSError without errno, with the C error text; find the cause in the text."""
    text = str(e)
    for err, what in _DISK_ERRNOS.items():
        if what.lower() in text.lower() or os.strerror(err).lower() in text.lower():
            return err
    return None


def check_free_space(path: Path | str, needed_bytes: int, *, option: str = "--out", margin: float = 1.05) -> None:
    """Refuse up front when the file system of ``path`` has less than ``needed_bytes * margin`` free."""
    folder = Path(path)
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed_bytes * margin:
        raise CocodagError(f"No space left on device: {path} needs about {needed_bytes / 2**20:.1f} MiB but "
                           f"{folder} has {free / 2**20:.1f} MiB free; free space or choose another {option}")
