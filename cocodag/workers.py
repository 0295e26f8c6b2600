"""Worker processes die with their parent: the one watchdog used by every process pool of the project.

A killed job (``kill -9``) re-parents its pool workers; they would otherwise finish their tasks and write into an
output that another job may own by then. :func:`exit_if_orphaned` is the guarantee (call it right before committing
anything); :func:`watch_parent` also stops the useless work within ``poll_s`` of the parent's death.
"""
from __future__ import annotations

import os
import threading
import time

#: exit status of a worker that found its parent gone
ORPHAN_EXIT = 75
POLL_S = 0.2
_WATCHED: set[int] = set()


def exit_if_orphaned(parent_pid: int) -> None:
    """In a worker process: ``os._exit`` at once when the process that started it (``parent_pid``) is gone.
    A no-op when called in the parent itself, or without a parent pid."""
    if parent_pid and parent_pid != os.getpid() and os.getppid() != parent_pid:
        os._exit(ORPHAN_EXIT)


def watch_parent(parent_pid: int, poll_s: float = POLL_S, name: str = "parent-watchdog") -> None:
    """Start (once per worker process and parent) a daemon thread that calls :func:`exit_if_orphaned` every
    ``poll_s`` seconds."""
    if not parent_pid or parent_pid == os.getpid() or parent_pid in _WATCHED:
        return
    _WATCHED.add(parent_pid)

    def watch() -> None:
        while True:
            exit_if_orphaned(parent_pid)
            time.sleep(poll_s)

    threading.Thread(target=watch, name=name, daemon=True).start()
