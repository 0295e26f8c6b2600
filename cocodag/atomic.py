"""Atomic file writes, the one place that does temp file + ``os.replace`` for the whole project.

Readers (and a rerun after a kill) see the old file or the new one, never half of one::

    with atomic_write("metrics.csv") as tmp:          # tmp = metrics.csv.tmp
        tmp.write_text(...)
    with atomic_write("roc.png", keep_suffix=True) as tmp:   # tmp = roc.tmp.png (for writers that pick the
        fig.savefig(tmp)                                       # format from the extension: cv2, matplotlib, np.save)

On an exception inside the block the temp file is removed and the target is left untouched.
"""
from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temp_path(path: Path | str, *, keep_suffix: bool = False) -> Path:
    """The temp name :func:`atomic_write` uses for ``path``: ``<name>.tmp``, or ``<stem>.tmp<suffix>``."""
    path = Path(path)
    if keep_suffix and path.suffix:
        return path.with_name(f"{path.stem}.tmp{path.suffix}")
    return path.with_name(path.name + ".tmp")


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except IsADirectoryError:   # a writer that made a directory; nothing to flush
        return
    try:
        os.fsync(fd)            # an error here (ENOSPC on delayed allocation, EIO) must stop the rename
    except OSError as e:
        if e.errno != errno.EINVAL:     # EINVAL: a special file that cannot be synced
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: Path | str, *, keep_suffix: bool = False, fsync: bool = True) -> Iterator[Path]:
    """Yield a temp path next to ``path``; when the block exits cleanly, fsync it and ``os.replace`` it onto ``path``.

    Parameters
    ----------
    path : the final file; its folder must exist.
    keep_suffix : name the temp file ``<stem>.tmp<suffix>`` so that writers choosing the format from the extension
        (``cv2.imwrite``, ``savefig``, ``np.save``) see the right one.
    fsync : flush the temp file to disk before the rename (a crash right after the rename keeps the content).
    """
    path = Path(path)
    tmp = temp_path(path, keep_suffix=keep_suffix)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path | str, obj: Any, *, sort_keys: bool = True) -> None:
    """Pretty JSON (sorted keys by default: manifests, progress records, results)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys))
