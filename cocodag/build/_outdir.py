"""``--out`` as a build sees it (state and resume): the task records, the sha256 cache that lets a clean rerun read
nothing, the per-task locks of ``--shard-range`` jobs, and the checks of what the folder already holds."""
from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic import temp_path
from ..errors import CocodagError
from ..formats.shards import KINDS, MANIFEST_NAME, commit_bytes, read_manifest, sha256_file, shard_name
from ..lock import OutputLock, OutputLockedError
from ._plan import Plan, Task

PROGRESS_DIR = "progress"
SHA_CACHE_PREFIX = "sha-cache"             # progress/sha-cache[.part-A-B].json: sha256 of shards by size + mtime
_CLAIM_BATCH = 256                         # task locks a --shard-range job holds at most at once


def write_json(path: Path, obj: Any, before_commit: Callable[[], None] | None = None) -> None:
    """Pretty sorted JSON, atomically; a full disk is one line (``No space left on device: <path>; ...``)."""
    commit_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode(), before_commit)


def record_path(out_dir: Path, index: int) -> Path:
    return out_dir / PROGRESS_DIR / f"task-{index:05d}.json"


def cache_name(shard_range: tuple[int, int] | None) -> str:
    """The sha cache one job writes (range jobs run at once, so each has its own)."""
    if shard_range is None:
        return f"{SHA_CACHE_PREFIX}.json"
    return f"{SHA_CACHE_PREFIX}.part-{shard_range[0]}-{shard_range[1]}.json"


def _load_record(out_dir: Path, index: int) -> dict | None:
    p = record_path(out_dir, index)
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


class ShaCache:
    """sha256 of shard files keyed by (size, mtime_ns), so a rerun checks every kept shard against its record
    without reading it again. Read from every ``progress/sha-cache*.json`` (one per job: range jobs run at once),
    written to ``name``. Like git's index, an entry whose mtime is not older than its cache file's own mtime is
    not trusted (the file may have changed within the same clock tick) and is hashed again."""

    def __init__(self, folder: Path, name: str):
        self.path = folder / name
        self.entries: dict[str, tuple[int, int, str]] = {}
        self.dirty = False
        for p in sorted(folder.glob(f"{SHA_CACHE_PREFIX}*.json")):
            self._load(p)

    def _load(self, p: Path) -> None:
        try:
            cache_mtime = p.stat().st_mtime_ns
            files = json.loads(p.read_bytes())["files"]
            for name, (size, mtime, digest) in files.items():
                if int(mtime) < cache_mtime:
                    self.entries[name] = (int(size), int(mtime), str(digest))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return          # a damaged cache only costs re-hashing

    def sha256(self, path: Path) -> str:
        st = path.stat()
        e = self.entries.get(path.name)
        if e is not None and e[0] == st.st_size and e[1] == st.st_mtime_ns:
            return e[2]
        digest = sha256_file(path)
        self.entries[path.name] = (st.st_size, st.st_mtime_ns, digest)
        self.dirty = True
        return digest

    def add(self, path: Path, digest: str) -> None:
        """A shard this build just wrote (its digest was computed from the bytes written)."""
        st = path.stat()
        self.entries[path.name] = (st.st_size, st.st_mtime_ns, digest)
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        folder = self.path.parent.parent
        files = {k: list(v) for k, v in sorted(self.entries.items()) if (folder / k).is_file()}
        write_json(self.path, {"format": "cocodag-sha-cache/1", "files": files})
        self.dirty = False


class TaskLocks:
    """Exclusive per-task locks (``progress/task-NNNNN.lock``) of a ``--shard-range`` job: ranges that overlap never
    build one task at once. Disabled (every claim succeeds) for a build holding the whole folder exclusively."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.out_dir, self.enabled = out_dir, enabled
        self.held: dict[int, OutputLock] = {}
        self.took_over: dict[tuple, int] = {}

    def claim(self, index: int) -> bool:
        if not self.enabled:
            return True
        lock = OutputLock(self.out_dir, option=f"--shard-range (task {index})", quiet=True,     # one summary note
                          lock_file=self.out_dir / PROGRESS_DIR / f"task-{index:05d}.lock")        # (`report`)
        try:
            lock.acquire()
        except OutputLockedError:
            return False
        if lock.took_over_:
            key = (lock.took_over_.get("pid", "?"), lock.took_over_.get("host", "?"))
            self.took_over[key] = self.took_over.get(key, 0) + 1
        self.held[index] = lock
        return True

    def release(self, index: int) -> None:
        if index in self.held:
            self.held.pop(index).release()

    def release_all(self) -> None:
        for index in list(self.held):
            self.release(index)

    def report(self) -> None:
        for (pid, host), n in self.took_over.items():
            print(f"note: --out {self.out_dir}: {n} task lock(s) held by a job that is gone (pid {pid} on {host}); "
                  "taking over its unfinished tasks", file=sys.stderr)
        self.took_over.clear()


class OutDir:
    """``--out`` as one build sees it: task records checked against the config and the shards' sha256, the records
    this build keeps or writes, and (``--shard-range``) the task locks."""

    def __init__(self, out_dir: Path, plan: Plan, cache_name: str, ranged: bool):
        self.root, self.plan = out_dir, plan
        self.cache = ShaCache(out_dir / PROGRESS_DIR, cache_name)
        self.locks = TaskLocks(out_dir, ranged)
        self.records: dict[int, dict] = {}
        self.built = 0

    def valid_record(self, index: int) -> dict | None:
        """The task's record when it matches the config and every shard it lists has its recorded size and sha256."""
        rec = _load_record(self.root, index)
        if rec is None or rec.get("config_hash") != self.plan.config_hash or rec.get("task") != index:
            return None
        try:
            for e in rec["entries"]:
                f = self.root / e["file"]
                if not f.is_file() or f.stat().st_size != e["bytes"] or self.cache.sha256(f) != e["sha256"]:
                    return None
        except (KeyError, TypeError):
            return None
        return rec

    def on_record(self, rec: dict) -> None:
        """A task this build just wrote."""
        self.records[rec["task"]] = rec
        self.built += 1
        for e in rec["entries"]:
            self.cache.add(self.root / e["file"], e["sha256"])

    def remove_stale_temps(self, task: Task) -> None:
        """A killed writer's temp files of one task (cocodag.atomic's names); called with the task's lock held."""
        kinds = ("dag", "cityscapes") if task.kind == "frames" else ("coco",)
        for p in [temp_path(self.root / shard_name(k, task.group)) for k in kinds]:
            p.unlink(missing_ok=True)
        temp_path(record_path(self.root, task.index)).unlink(missing_ok=True)

    def claim(self, pending: list[Task]) -> tuple[list[Task], list[Task]]:
        """(tasks to build now, tasks another job holds): claim each task's lock, then keep the task when its record
        is valid."""
        batch: list[Task] = []
        deferred: list[Task] = []
        for task in pending:
            if len(batch) >= _CLAIM_BATCH or not self.locks.claim(task.index):
                deferred.append(task)
                continue
            if self.locks.enabled:
                self.remove_stale_temps(task)
            rec = self.valid_record(task.index)
            if rec is None:
                batch.append(task)
            else:
                self.records[task.index] = rec
                self.locks.release(task.index)
        self.locks.report()
        return batch, deferred


def _record_hashes(out_dir: Path) -> set[str]:
    """The config hashes the task records in ``out_dir`` name (``"None"`` for a record that names none)."""
    hashes = set()
    for rp in (out_dir / PROGRESS_DIR).glob("task-*.json") if (out_dir / PROGRESS_DIR).is_dir() else []:
        try:
            rec = json.loads(rp.read_bytes())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict):
            hashes.add(str(rec.get("config_hash")))
    return hashes


def _check_existing(out_dir: Path, plan: Plan, overwrite: bool) -> None:
    """Refuse a folder holding another config's dataset (or a manifest nothing identifies), unless ``overwrite``."""
    records = _record_hashes(out_dir)
    other, broken = records - {plan.config_hash}, None
    if (out_dir / MANIFEST_NAME).is_file():
        try:
            other |= {str(read_manifest(out_dir).get("config_hash"))} - {plan.config_hash}
        except CocodagError as e:
            broken = str(e)
    if overwrite:
        return
    if other:
        raise CocodagError(f"--out {out_dir}: holds a dataset built with another config or inputs "
                           f"(config hash {min(other)} != {plan.config_hash}); use --overwrite to "
                           f"replace it, or another --out")
    if broken is not None and plan.config_hash not in records:
        reason = broken.split(": ", 1)[-1].split("; ")[0]
        raise CocodagError(f"--out {out_dir}: its {MANIFEST_NAME} cannot be read ({reason}) "
                           f"and no task record says which config built it; use --overwrite to rebuild it, or "
                           f"another --out")
    if broken is not None:
        print(f"note: {broken.split('; ')[0]}; it is rewritten from the task records when the build completes",
              file=sys.stderr)


def _our_files(out_dir: Path) -> list[Path]:
    patterns = ([f"{k}-*.h5" for k in KINDS] + [f"{k}-*.h5.tmp" for k in KINDS]
                + ["manifest.json", "manifest.json.tmp", "manifest.part-*.json*"])
    return [p for pattern in patterns for p in out_dir.glob(pattern)]


def prepare_out_dir(out_dir: Path, plan: Plan, overwrite: bool, ranged: bool) -> None:
    """Check what ``--out`` holds; with ``overwrite`` remove it. A build holding the folder exclusively also removes
    the temp files of a killed run (a range job removes only those of a task it holds: `OutDir.remove_stale_temps`,
    since another range job may be writing its own right now)."""
    _check_existing(out_dir, plan, overwrite)
    if overwrite:
        for p in _our_files(out_dir):
            p.unlink()
        shutil.rmtree(out_dir / PROGRESS_DIR, ignore_errors=True)
    if not ranged:
        for p in [*out_dir.glob("*.tmp"), *(out_dir / PROGRESS_DIR).glob("*.tmp")]:
            p.unlink(missing_ok=True)
    (out_dir / PROGRESS_DIR).mkdir(exist_ok=True)
