"""`cocodag build`: COCO-DAG + the two original streams -> sharded HDF5 (the shard contract: docs/formats.md §1).

Work is organised so every input is decoded once per sample and nothing is done twice:

- a *frame unit* ``u`` decodes Cityscapes frame ``order[u % n_frames]`` once and emits both its Cityscapes crops
  (stream ``cityscapes``, units ``u < n_frames``) and one pasted sample (:func:`cocodag.paste.paste_object`) split
  into four quadrant crops (:func:`cocodag.split.split_by_centroid`; stream ``dag``, units ``u < dag_samples``);
- a *COCO unit* ``v`` decodes proxy image ``order[v % n_proxies]`` once and emits one crop
  (:func:`cocodag.coco.crop_proxy`; stream ``coco``).

Every random draw of a unit comes from ``np.random.SeedSequence([seed, STREAM_CODES[stream], unit])``
(:data:`cocodag.formats.shards.STREAM_CODES`), so a sample depends only on (seed, stream, index). Units are grouped
into fixed *tasks* (one shard per stream each): a task's bytes do not depend on ``--workers`` or scheduling. Each task
travels as a frozen :class:`FrameTask` / :class:`CocoTask` (its inputs + :class:`BuildSettings`), writes its shards
(built in memory, then ``*.h5.tmp`` -> rename, by :func:`cocodag.formats.shards.write_shard`) and then a small record
``progress/task-NNNNN.json`` (atomic); the manifest is written last. With one worker, a writer thread writes and
hashes task t's shards while task t+1 decodes; with several, each loky process runs whole tasks.

Safe under concurrency and faults:

- *One writer per folder.* A build holds an exclusive :class:`cocodag.lock.OutputLock` on ``--out`` from start to
  end; a second build into it gets one line naming the holder. ``--shard-range`` jobs (Slurm arrays filling one folder
  at once) share that lock and take an exclusive lock per task (``progress/task-NNNNN.lock``) before building it, so
  overlapping ranges never build one task twice: a job *waits* for the tasks another job holds, then keeps them (or
  builds them, when that job died). ``manifest.json`` is written only under the exclusive lock: by the merge step (a
  run without ``--shard-range``), or by the last range job when it finds itself alone with every task done.
- *Workers die with their build.* Each worker checks that the build that started it still runs before every rename
  (shard or record) and has a watchdog thread that exits it when the build is gone (``kill -9``), so nothing under
  ``--out`` changes once the build has died.
- *Reruns repair.* A rerun keeps a task only when its record matches the config and every shard it lists has the
  recorded size and sha256 (cached in ``progress/sha-cache*.json`` by size + mtime, so a clean rerun reads nothing);
  anything else is rebuilt.
- *A full disk is one line* (``No space left on device: <path>; ...``), leaving nothing half-written under a final
  name.

The work is split by concern: ``_config`` (:class:`BuildConfig`, the option parsers), ``_plan`` (inputs, counts,
tasks and their payloads), ``_tasks`` (one task as a worker runs it), ``_outdir`` (task records, sha cache, task
locks: state and resume) and ``_run`` (:func:`build_dataset`: locking, running, merging the manifest).
"""
from ._config import DEFAULT_COMPRESSION, SEED_WINDOW, BuildConfig, BuildResult, parse_range, parse_window
from ._outdir import PROGRESS_DIR, SHA_CACHE_PREFIX
from ._plan import BuildSettings, CocoTask, FrameTask, Plan, Task, plan_build
from ._run import build_dataset

__all__ = ["DEFAULT_COMPRESSION", "PROGRESS_DIR", "SEED_WINDOW", "SHA_CACHE_PREFIX", "BuildConfig", "BuildResult",
           "BuildSettings", "CocoTask", "FrameTask", "Plan", "Task", "build_dataset", "parse_range", "parse_window",
           "plan_build"]
