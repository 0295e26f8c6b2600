"""Where an evaluation's frames are computed: in this process, or in worker processes (``oodscore evaluate
--workers N``), with the results handed back in frame order either way.

A *source* is a picklable object whose ``open(stack)`` returns ``(frame, describe)``: ``frame(i)`` computes frame
``i`` as ``(name, label, {method: score map}, image | None)`` and ``describe(name)`` names its file for error
messages (resources go on the ``contextlib.ExitStack``). A *task* is a picklable object whose
``run(item, describe)`` turns one frame into what the parent needs (each accumulator's state of that frame, see
:mod:`oodscore.passes`): small, so that only results cross process boundaries, never score maps.

:class:`SerialFrames` runs the tasks in this process; :class:`WorkerFrames` in N processes (``spawn``: each worker
opens the source itself, once), submitting at most ``2 N`` frames ahead of the one the parent waits for and yielding
results strictly in frame order, so that the parent folds them in exactly the order a one-process run does (float
sums, the binned metrics' edges) with a bounded reorder buffer. Workers only read; they ignore Ctrl-C (the parent
stops them), and a watchdog thread in each ends it within ``_POLL_S`` once its parent is gone (``kill -9``).
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from threadpoolctl import threadpool_limits

from cocodag.errors import CocodagError
from cocodag.workers import watch_parent

from . import OodscoreError

__all__ = ["SerialFrames", "WorkerFrames", "check_workers"]

_POLL_S = 0.2          # watchdog period of a worker
_AHEAD = 2             # frames in flight per worker (the reorder buffer holds at most workers * _AHEAD results)
# Test hook: a worker sleeps this many seconds before each frame (lets tests kill an evaluation mid-run).
_DELAY_ENV = "OODSCORE_TEST_FRAME_DELAY"


def check_workers(workers) -> int:
    """``--workers`` as an int >= 1 (one line otherwise)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise OodscoreError(f"--workers {workers!r}: expected an integer >= 1")
    return workers


class SerialFrames:
    """Every frame computed in this process, in order (``--workers 1``)."""

    workers = 1

    def __init__(self, frames: Callable[[], Iterable[tuple]], describe: Callable[[str], str] | None = None):
        self.frames, self.describe = frames, describe

    def __enter__(self) -> SerialFrames:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def results(self, task_of: Callable[[int], Any], num_frames: int) -> Iterator:
        """``task_of(i).run(frame i)`` for every frame, in order; ``task_of(i)`` is called right before frame i."""
        for i, item in enumerate(self.frames()):
            yield task_of(i).run(item, self.describe)


class WorkerFrames:
    """Frames computed in ``workers`` spawned processes that each open ``source`` themselves (see the module doc)."""

    def __init__(self, source, workers: int, num_frames: int):
        self.source = source
        self.workers = max(1, min(check_workers(workers), num_frames))
        self._ex: ProcessPoolExecutor | None = None

    def __enter__(self) -> WorkerFrames:
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        self._ex = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_init, initargs=(self.source, os.getpid(), threads))
        return self

    def __exit__(self, exc_type, *exc) -> None:
        ex, self._ex = self._ex, None
        if ex is not None:  # on an error or Ctrl-C: drop the frames not started, do not wait for the others
            ex.shutdown(wait=exc_type is None, cancel_futures=True)

    def results(self, task_of: Callable[[int], Any], num_frames: int) -> Iterator:
        """``task_of(i).run(frame i)`` in the workers, yielded in frame order; ``task_of(i)`` is called when frame
        i is submitted, at most ``_AHEAD * workers`` frames ahead of the one yielded next."""
        ex = self._ex
        if ex is None:
            raise RuntimeError("WorkerFrames.results: use the WorkerFrames in a with-block")
        pending: deque = deque()
        nxt = 0
        try:
            while nxt < num_frames or pending:
                while nxt < num_frames and len(pending) < _AHEAD * self.workers:
                    pending.append(ex.submit(_worker_run, nxt, task_of(nxt)))
                    nxt += 1
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise OodscoreError("an evaluation worker process died: killed, out of memory (rerun with fewer --workers "
                                f"than {self.workers}), or it could not start (a Python script that evaluates with "
                                "workers > 1 must do so under `if __name__ == \"__main__\":`)") from None
        finally:
            for f in pending:
                f.cancel()


# ------------------------------------------------------------------------------------------- in the workers
_STATE: dict = {}


def _limit_threads(threads: int) -> None:
    """One worker per share of the cores: cap the thread pools of the libraries loaded so far to ``threads``
    (OpenMP and BLAS through threadpoolctl; torch's and cv2's own pools through their setters)."""
    threadpool_limits(limits=threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(threads)


def _worker_init(source, parent_pid: int, threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent handles it
    watch_parent(parent_pid, _POLL_S, "oodscore-parent-watchdog")
    stack = contextlib.ExitStack()
    try:
        _STATE["frame"], _STATE["describe"] = source.open(stack)
    except CocodagError as e:  # reported with the first frame, as one line, by the parent
        _STATE["error"] = e
    _STATE["stack"] = stack
    _STATE["threads"] = threads
    _limit_threads(threads)     # the source's imports loaded the libraries it needs (torch, BLAS)


def _worker_run(i: int, task):
    if "error" in _STATE:
        raise _STATE["error"]
    if not _STATE.get("tasks_limited"):   # the first task's unpickling imported its modules (cv2 for components)
        _STATE["tasks_limited"] = True
        _limit_threads(_STATE["threads"])
    delay = float(os.environ.get(_DELAY_ENV) or 0)
    if delay:
        time.sleep(delay)
    return task.run(_STATE["frame"](i), _STATE["describe"])
