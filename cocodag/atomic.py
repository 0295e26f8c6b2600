"""Atomic file writes shared by the three packages: ``<path>.tmp``, fsync, ``os.replace``.

Readers (and a rerun after a kill) see the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path | str, obj: Any) -> None:
    """Pretty JSON with sorted keys (manifests, progress records, results)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True))
