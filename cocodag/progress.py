"""The one progress-bar rule of the project: a tqdm bar on a terminal, plain lines in a log.

``progress_bar(...)`` takes tqdm's arguments. When stderr is a terminal it *is* a tqdm bar; otherwise (output
redirected to a file, a pipe, CI) it is a :class:`LineProgress` that writes one plain line when it starts, every
``_EVERY`` of the total (or every ``_EVERY_S`` seconds without a known total) and when it closes — so
``cocodag demo > demo.log`` stays readable instead of holding thousands of carriage-return refreshes.

``COCODAG_PROGRESS=bar|lines`` forces one kind (a parent that pipes a child's stderr to a terminal, as
``cocodag demo`` does, passes ``bar`` on).
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

__all__ = ["LineProgress", "progress_bar", "use_bars"]

ENV = "COCODAG_PROGRESS"
_EVERY = 0.1      # a line per 10 % of a known total
_EVERY_S = 30.0   # a line per 30 s otherwise


def use_bars(stream: TextIO | None = None) -> bool:
    """Whether progress is drawn as tqdm bars (a terminal, or ``COCODAG_PROGRESS=bar``) or as plain lines."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("bar", "lines"):
        return forced == "bar"
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):   # closed or replaced by an object without isatty
        return False


class LineProgress:
    """A tqdm stand-in for logs: the subset of tqdm's interface we use (``update``, ``set_postfix``, ``refresh``,
    ``close``, ``total``, iteration, context manager), written as occasional whole lines."""

    def __init__(self, iterable: Iterable | None = None, *, total: float | None = None, desc: str = "",
                 unit: str = "it", initial: float = 0, disable: bool = False, file: TextIO | None = None,
                 **_ignored: Any):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = initial
        self.disable = disable
        self.file = file
        self._postfix = ""
        self._start = self._last_t = time.monotonic()
        self._last_n = initial
        self._closed = False
        if not disable:
            self._line()

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LineProgress: nothing to iterate (no iterable given)")
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def _due(self) -> bool:
        now = time.monotonic()
        if self.total:
            return (self.n - self._last_n) >= _EVERY * self.total or self.n >= self.total > self._last_n
        return now - self._last_t >= _EVERY_S

    def _line(self) -> None:
        elapsed = time.monotonic() - self._start
        done = f"{self.n:g}/{self.total:g}" if self.total else f"{self.n:g}"
        pct = f" {100.0 * self.n / self.total:3.0f}%" if self.total else ""
        rate = f", {self.n / elapsed:.1f} {self.unit}/s" if elapsed > 0 and self.n else ""
        post = f", {self._postfix}" if self._postfix else ""
        out = self.file if self.file is not None else sys.stderr
        print(f"{self.desc or 'progress'}:{pct} {done} {self.unit} ({elapsed:.0f} s{rate}{post})", file=out,
              flush=True)
        self._last_n, self._last_t = self.n, time.monotonic()

    def update(self, n: float = 1) -> None:
        self.n += n
        if not self.disable and not self._closed and self._due():
            self._line()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def refresh(self) -> None:
        return None

    def close(self) -> None:
        if not self._closed and not self.disable and self.n != self._last_n:
            self._line()
        self._closed = True


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> Any:
    """A tqdm bar on a terminal, a :class:`LineProgress` otherwise (same arguments as ``tqdm``)."""
    if use_bars(kwargs.get("file")):
        from tqdm import tqdm  # only where a bar is drawn

        return tqdm(iterable, **kwargs)
    return LineProgress(iterable, **kwargs)
