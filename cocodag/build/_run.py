"""Running a build: ``build_dataset`` locks ``--out``, plans, keeps or builds every task (a writer thread, or loky
processes), waits for the tasks other range jobs hold, and writes the manifest when every task is done."""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from joblib import Parallel, delayed

from ..errors import CocodagError
from ..formats.shards import MANIFEST_NAME, build_manifest
from ..lock import OutputLock, OutputLockedError
from ..outputs import disk_errors, prepare_output
from ..progress import progress_bar
from ._config import POLL_S, BuildConfig, BuildResult
from ._outdir import OutDir, cache_name, prepare_out_dir, write_json
from ._plan import BuildSettings, Plan, Task, plan_build, task_payload
from ._tasks import Tick, compute_task, run_task_in_worker, write_task_shards

_SHARED_GRACE_S = 10.0      # a range job retries this long for its shared lock (another range job may hold the
                            # exclusive one for a moment, to write the manifest)


def _run_sequential(plan: Plan, todo: list[Task], settings: BuildSettings, on_record: Callable[[dict], None],
                    tick: Tick) -> None:
    """One process: a writer thread writes + hashes task t's shards while task t+1 decodes (h5py I/O, sha256
    and cv2 decoding release the GIL). At most one task waits for its write, so memory stays at two tasks."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cocodag-writer") as ex:
        pending: Future[dict[str, Any]] | None = None
        for task in todo:
            p = task_payload(plan, task, settings)
            result = compute_task(p, tick)
            if pending is not None:
                on_record(pending.result())
            pending = ex.submit(write_task_shards, p, *result)
        if pending is not None:
            on_record(pending.result())


def _run_parallel(plan: Plan, todo: list[Task], settings: BuildSettings, on_record: Callable[[dict], None],
                  workers: int, tick: Tick) -> None:
    """Several loky processes, each running whole tasks (they exit when this process dies:
    `cocodag.workers.watch_parent`)."""
    par = Parallel(n_jobs=min(workers, len(todo)), backend="loky", return_as="generator_unordered")
    for rec in par(delayed(run_task_in_worker)(task_payload(plan, task, settings)) for task in todo):
        on_record(rec)
        tick(rec["units"][1] - rec["units"][0])


def _build_tasks(plan: Plan, state: OutDir, task_ids: list[int], settings: BuildSettings, workers: int,
                 bar: Any) -> None:
    """Keep or build every task of ``task_ids``. A range job waits (polling every ``POLL_S``) for the tasks another
    range job holds, then keeps them, or builds them when that job died without finishing them."""
    pending, noted = [plan.tasks[t] for t in task_ids], False
    while pending:
        batch, pending = state.claim(pending)
        try:
            if batch:
                bar.total += sum(t.stop - t.start for t in batch)
                bar.refresh()
                if workers == 1 or len(batch) <= 1:
                    _run_sequential(plan, batch, settings, state.on_record, bar.update)
                else:
                    _run_parallel(plan, batch, settings, state.on_record, workers, bar.update)
        finally:
            state.locks.release_all()
        if pending and not batch:
            if not noted:
                print(f"note: --out {state.root}: waiting for {len(pending)} task(s) another --shard-range job is "
                      "building", file=sys.stderr)
                noted = True
            time.sleep(POLL_S)


def _parse_shard_range(shard_range: str | tuple[int, int] | None, n: int) -> tuple[int, int] | None:
    if shard_range is None:
        return None
    if isinstance(shard_range, str):
        try:
            a_s, b_s = shard_range.split(":")
            a, b = int(a_s or 0), int(b_s or n)
        except ValueError:
            raise CocodagError(f"--shard-range: expected A:B task indices, got {shard_range!r}") from None
    else:
        a, b = shard_range
    if not (0 <= a < b <= n):
        raise CocodagError(f"--shard-range {a}:{b}: must satisfy 0 <= A < B <= {n} (this build has {n} shard tasks)")
    return a, b


def build_dataset(cityscapes: Path | str | None, coco: Path | str | None, out_dir: Path | str,
                  cfg: BuildConfig | None = None, *, workers: int = 1, shard_range: str | tuple[int, int] | None = None,
                  overwrite: bool = False, progress: bool = True, coco_json: Path | str | None = None,
                  coco_images: Path | str | None = None) -> BuildResult:
    """Build (or resume, or repair) a cocodag dataset in ``out_dir``.

    Parameters
    ----------
    cityscapes, coco : input roots (``coco_json`` / ``coco_images`` override the COCO layout).
    cfg : :class:`BuildConfig` (all byte-determining options).
    workers : joblib (loky) processes; the output bytes do not depend on it.
    shard_range : ``"A:B"`` builds tasks A..B-1 only and writes ``manifest.part-A-B.json``. Range jobs may fill one
        folder at once (each locks the tasks it builds; see :mod:`cocodag.build`); ``manifest.json`` is written by
        a run without ``shard_range`` (the merge step), or by the last range job when no other one still runs.
    overwrite : replace a dataset built with another config (otherwise refused); not with ``shard_range``.
    progress : show a progress bar (:func:`cocodag.progress.progress_bar`) on stderr.

    Raises
    ------
    CocodagError
        Bad inputs or options, ``out_dir`` unusable or in use by another build
        (:class:`cocodag.lock.OutputLockedError`), a full disk.
    """
    cfg = cfg or BuildConfig()
    if workers < 1:
        raise CocodagError(f"--workers must be >= 1, got {workers}")
    if overwrite and shard_range is not None:
        raise CocodagError("--overwrite cannot be combined with --shard-range (range jobs share --out and must not "
                           "delete each other's shards); empty --out (or run one build with --overwrite) first")
    out_dir = prepare_output(Path(out_dir), kind="dir", option="--out")
    with _lock_out_dir(out_dir, shared=shard_range is not None):
        plan = plan_build(cityscapes, coco, cfg, coco_json=coco_json, coco_images=coco_images)
        task_range = _parse_shard_range(shard_range, len(plan.tasks))
        result = _build_locked(plan, out_dir, task_range, workers, overwrite, progress)
    if task_range is not None:
        manifest = _merge_if_alone(plan, out_dir)
        if manifest is not None:
            result.manifest, result.manifest_path, result.counts = manifest, out_dir / MANIFEST_NAME, manifest["totals"]
    return result


@contextlib.contextmanager
def _lock_out_dir(out_dir: Path, shared: bool) -> Iterator[OutputLock]:
    """Hold ``--out``'s lock: exclusive, or shared for a range job, which retries for ``_SHARED_GRACE_S`` (another
    range job may hold it exclusively for a moment, to write the manifest)."""
    lock = OutputLock(out_dir, option="--out", shared=shared, kind="dir")
    deadline = time.monotonic() + (_SHARED_GRACE_S if shared else 0.0)
    while True:
        try:
            lock.acquire()
            break
        except OutputLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(POLL_S)
    try:
        yield lock
    finally:
        lock.release()


def _build_locked(plan: Plan, out_dir: Path, task_range: tuple[int, int] | None, workers: int, overwrite: bool,
                  progress: bool) -> BuildResult:
    """The build itself, with ``--out`` locked (exclusively, or shared for a range job)."""
    n_tasks = len(plan.tasks)
    task_ids = list(range(*task_range)) if task_range else list(range(n_tasks))
    with disk_errors(out_dir):
        prepare_out_dir(out_dir, plan, overwrite, task_range is not None)
    state = OutDir(out_dir, plan, cache_name(task_range), task_range is not None)
    bar = progress_bar(total=0, unit="sample", desc="cocodag build", disable=not progress, dynamic_ncols=True,
                       smoothing=0.1)
    try:
        _build_tasks(plan, state, task_ids, BuildSettings.from_plan(plan, out_dir), workers, bar)
    finally:
        bar.close()
    state.cache.save()
    result = BuildResult(out_dir, None, out_dir / MANIFEST_NAME, state.built, len(task_ids) - state.built, n_tasks)
    if task_range:
        part = _manifest(plan, [state.records[t] for t in task_ids])
        part["partial"] = {"tasks": list(task_range), "of": n_tasks}
        result.manifest_path = out_dir / f"manifest.part-{task_range[0]}-{task_range[1]}.json"
        result.counts = part["totals"]
        write_json(result.manifest_path, part)
        return result
    manifest = _merge(plan, state)
    if manifest is not None:
        result.manifest, result.counts = manifest, manifest["totals"]
    return result


def _merge(plan: Plan, state: OutDir) -> dict[str, Any] | None:
    """Write ``manifest.json`` when every task has a valid record (the caller holds ``--out`` exclusively)."""
    recs = []
    for t in range(len(plan.tasks)):
        rec = state.records.get(t) or state.valid_record(t)
        if rec is None:
            return None          # other shard ranges still missing: no manifest.json yet
        recs.append(rec)
    manifest = _manifest(plan, recs)
    write_json(state.root / MANIFEST_NAME, manifest)
    state.cache.save()
    return manifest


def _merge_if_alone(plan: Plan, out_dir: Path) -> dict[str, Any] | None:
    """After a range job: act as the merge step when no other job holds ``--out`` and every task is done."""
    lock = OutputLock(out_dir, option="--out", kind="dir")
    try:
        lock.acquire()
    except OutputLockedError:
        return None              # other range jobs still run: the last one (or the merge step) writes it
    try:
        return _merge(plan, OutDir(out_dir, plan, cache_name(None), ranged=False))
    finally:
        lock.release()


def _manifest(plan: Plan, recs: list[dict]) -> dict[str, Any]:
    dropped: dict[str, int] = {"dag_no_ood": 0, "dag_no_id": 0, "dag_empty_paste": 0, "coco_no_ood": 0}
    skipped, entries = [], []
    for r in recs:
        entries += r["entries"]
        for k, v in r["dropped"].items():
            dropped[k] = dropped.get(k, 0) + v
        skipped += r["skipped"]
    skipped += (plan.coco.stats.get("skipped", []) if plan.coco else [])
    coco_filter = {k: v for k, v in (plan.coco.stats if plan.coco else {}).items() if k != "skipped"}
    return build_manifest(entries, crop_size=plan.cfg.crop, config=plan.resolved, seed=plan.cfg.seed,
                          inputs=plan.inputs, extra={"coco_filter": coco_filter, "dropped": dropped,
                                                     "skipped": skipped, "num_tasks": len(plan.tasks)})
