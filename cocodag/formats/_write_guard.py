"""The file object :class:`cocodag.formats.logits.LogitsWriter` hands HDF5: a full disk becomes one error line.

Kept apart from the ``logits.h5`` contract itself (what the file holds); nothing outside :mod:`cocodag.formats`
uses it.
"""
from __future__ import annotations

import os
from pathlib import Path


class WriteGuard:
    """The file object HDF5 writes ``logits.h5`` through: it records the first ``OSError`` of a write (a full disk,
    a quota) and accepts every later write without doing it, so that HDF5 never sees a failed write. (After a failed
    write HDF5 cannot close its file and the process crashes at exit; here the writer raises the recorded error as
    one line and deletes the temp file instead.)"""

    def __init__(self, path: Path):
        self._raw = open(path, "w+b", buffering=0)
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):        # unbuffered writes may be partial
                    n = self._raw.write(view[done:])
                    if not n:
                        raise OSError(28, os.strerror(28))
                    done += n
            except OSError as e:
                self.error = e
        return len(view)

    def _guarded(self, fn, *args):
        if self.error is None:
            try:
                return fn(*args)
            except OSError as e:
                self.error = e
        return None

    def read(self, size: int = -1) -> bytes:
        return self._raw.read(size)

    def readinto(self, buf) -> int:
        return self._raw.readinto(buf)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def truncate(self, size: int | None = None) -> int:
        out = self._guarded(self._raw.truncate, size)
        return self._raw.tell() if out is None else out

    def flush(self) -> None:
        self._guarded(self._raw.flush)

    def close(self) -> None:
        if not self._raw.closed:
            self._guarded(os.fsync, self._raw.fileno())
            self._raw.close()
