"""`cocodag build`: COCO-DAG + the two original streams -> sharded HDF5 (DESIGN §3, §4.1).

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
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from .atomic import temp_path
from .cityscapes import Frame, find_frames, load_frame
from .coco import (CocoImage, CocoObject, CocoSource, ann_to_mask, coco_paths, crop_proxy, image_masks, load_coco,
                   load_image)
from .errors import CocodagError
from .formats.shards import (COMPRESSIONS, KINDS, LZF_REFUSED, MANIFEST_NAME, STREAM_CODES, SampleMeta,
                             build_manifest, commit_bytes, config_hash, read_manifest, sha256_file, shard_name,
                             write_shard)
from .labels import IGNORE_ID, ROAD_ID
from .lock import OutputLock, OutputLockedError
from .outputs import disk_errors, prepare_output
from .paste import crop_to_mask, paste_object
from .split import split_by_centroid
from .workers import exit_if_orphaned, watch_parent

_ORDER_FRAMES, _ORDER_COCO = 3, 4          # extra SeedSequence streams (after STREAM_CODES): the visiting orders
PROGRESS_DIR = "progress"
DEFAULT_COMPRESSION = "none"               # measured by bench/build.py (see README): fastest, lzf/gzip save little
SEED_WINDOW = (250, 774, 250, 1798)        # the seed's paste window: rows 250..774, cols 250..1798 of 1024x2048
# Test hook: sleep this many seconds per task, between its shards and its record (lets the kill -9 and concurrency
# tests interrupt or overlap a tiny build reliably).
_SLOW_ENV = "COCODAG_TEST_TASK_DELAY"
SHA_CACHE_PREFIX = "sha-cache"             # progress/sha-cache[.part-A-B].json: sha256 of shards by size + mtime
_POLL_S = 0.2                              # worker watchdog period; wait period for tasks another range job holds
_CLAIM_BATCH = 256                         # task locks a --shard-range job holds at most at once
_SHARED_GRACE_S = 10.0                     # a range job retries this long for its shared lock (another range job
                                           # may hold the exclusive one for a moment, to write the manifest)


@dataclass
class BuildConfig:
    """Everything that determines the bytes of a build (``workers`` and ``shard_range`` do not)."""

    split: str = "train"
    coco_split: str = "train2017"
    crop: int = 480
    shard_size: int = 128                    # target crops per shard
    seed: int = 0
    object_scale: tuple[float, float] = (1.0, 1.0)
    min_object_area: float = 1000.0
    min_proxy_size: int | None = None        # None -> crop size (meta-ood: 480)
    dag_samples: int | None = None           # pasted frames; None -> one per Cityscapes frame
    cityscapes_crops_per_frame: int = 1
    coco_samples: int | None = None          # None -> every proxy image once
    streams: tuple[str, ...] = KINDS
    coco_background: str = "ignore"          # ours; "road" reproduces meta-ood (background = trainId 0)
    compression: str = DEFAULT_COMPRESSION
    skip_bad: bool = False
    feather: float = 0.0                     # ours; 0 = hard paste (the seed's)
    paste_window: tuple[int, int, int, int] = SEED_WINDOW  # rows r0..r1, cols c0..c1 of a 1024x2048 frame
    label_source: str = "auto"
    flip: bool = True

    def validate(self) -> None:
        if self.crop <= 0:
            raise CocodagError(f"--crop must be > 0, got {self.crop}")
        if self.shard_size <= 0:
            raise CocodagError(f"--shard-size must be > 0, got {self.shard_size}")
        lo, hi = self.object_scale
        if not (0 < lo <= hi):
            raise CocodagError(f"--object-scale: expected 0 < MIN <= MAX, got {lo}:{hi}")
        bad = [s for s in self.streams if s not in KINDS]
        if bad or not self.streams:
            raise CocodagError(f"--streams: expected a comma list of {', '.join(KINDS)}, got {','.join(self.streams)}")
        if self.coco_background not in ("ignore", "road"):
            raise CocodagError(f"--coco-background: expected ignore or road, got {self.coco_background!r}")
        if self.compression == "lzf":
            raise CocodagError(f"--compression lzf: {LZF_REFUSED}")
        if self.compression not in COMPRESSIONS:
            raise CocodagError(f"--compression: expected one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")
        for name in ("dag_samples", "coco_samples", "min_proxy_size"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise CocodagError(f"--{name.replace('_', '-')} must be >= 0, got {v}")
        if self.cityscapes_crops_per_frame < 0:
            raise CocodagError(f"--cityscapes-crops-per-frame must be >= 0, got {self.cityscapes_crops_per_frame}")
        if self.min_object_area < 0 or self.feather < 0:
            raise CocodagError("--min-object-area and --feather must be >= 0")
        r0, r1, c0, c1 = self.paste_window
        if not (0 <= r0 <= r1 <= 1024 and 0 <= c0 <= c1 <= 2048):
            raise CocodagError(f"--paste-window: expected R0:R1:C0:C1 within 1024x2048, got {self.paste_window}")


@dataclass
class BuildResult:
    out_dir: Path
    manifest: dict[str, Any] | None          # None when only part of the tasks exist (shard range)
    manifest_path: Path
    built_tasks: int
    kept_tasks: int
    total_tasks: int
    counts: dict[str, int] = field(default_factory=dict)


def parse_range(text: str, name: str) -> tuple[float, float]:
    """``"A:B"`` -> (A, B); a single number means A = B."""
    try:
        parts = [float(p) for p in str(text).split(":")]
    except ValueError:
        raise CocodagError(f"{name}: expected MIN:MAX numbers, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise CocodagError(f"{name}: expected MIN:MAX, got {text!r}")
    return parts[0], parts[1]


def parse_window(text: str) -> tuple[int, int, int, int]:
    """``"R0:R1:C0:C1"`` -> the paste window (rows, then columns, on a 1024x2048 frame)."""
    try:
        window = tuple(int(float(v)) for v in str(text).split(":"))
    except ValueError:
        window = ()
    if len(window) != 4:
        raise CocodagError(f"--paste-window: expected R0:R1:C0:C1 numbers, got {text!r}")
    return window


def _rng(seed: int, stream: int, unit: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream), int(unit)]))


def _order(seed: int, stream: int, n: int) -> np.ndarray:
    """A seeded visiting order of n inputs, so `--dag-samples` < n draws a random subset of frames."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream])).permutation(n)


# ------------------------------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class _Task:
    index: int
    kind: str          # "frames" | "coco"
    group: int         # shard file index within its stream(s)
    start: int
    stop: int


@dataclass
class _Plan:
    cfg: BuildConfig
    resolved: dict[str, Any]
    frames: list[Frame]
    coco: CocoSource | None
    frame_order: np.ndarray
    coco_order: np.ndarray
    n_frame_units: int
    tasks: list[_Task]
    inputs: dict[str, Any]
    config_hash: str


def _fingerprint_frames(frames: list[Frame], root: Path) -> dict[str, Any]:
    # Names + sizes (not mtimes): a copy of the data set on another node (Slurm scratch) fingerprints the same.
    h = hashlib.sha256()
    for fr in frames:
        for p in (fr.image, fr.label):
            h.update(f"{Path(p).relative_to(root)}\0{os.path.getsize(p)}\n".encode())
    return {"root": str(root), "frames": len(frames), "files_hash": h.hexdigest()[:16]}


def plan_build(cityscapes: Path | str | None, coco: Path | str | None, cfg: BuildConfig, *,
               coco_json: Path | str | None = None, coco_images: Path | str | None = None) -> _Plan:
    """Scan and validate the inputs, resolve counts and cut the work into tasks (no decoding)."""
    cfg.validate()
    streams = tuple(s for s in KINDS if s in cfg.streams)
    need_frames = "dag" in streams or ("cityscapes" in streams and cfg.cityscapes_crops_per_frame > 0)
    need_coco = "dag" in streams or "coco" in streams
    frames: list[Frame] = []
    inputs: dict[str, Any] = {}
    if need_frames:
        if cityscapes is None:
            raise CocodagError("--cityscapes: required for the dag/cityscapes streams")
        frames = find_frames(cityscapes, cfg.split, label_source=cfg.label_source)
        for fr in frames:
            if cfg.crop > fr.width or cfg.crop > fr.height:
                raise CocodagError(f"--crop {cfg.crop} is larger than the frame {Path(fr.image).name} "
                                   f"({fr.width}x{fr.height})")
        inputs["cityscapes"] = _fingerprint_frames(frames, Path(cityscapes))
    src = None
    min_proxy = cfg.crop if cfg.min_proxy_size is None else cfg.min_proxy_size
    if need_coco:
        jp, idir = coco_paths(coco, cfg.coco_split, json_path=coco_json, image_dir=coco_images)
        src = load_coco(jp, idir, min_size=max(min_proxy, cfg.crop if "coco" in streams else 0),
                        min_object_area=cfg.min_object_area, skip_bad=cfg.skip_bad)
        inputs["coco"] = dict(src.fingerprint, image_dir=str(idir))
    n_frames = len(frames)
    dag_n = (n_frames if cfg.dag_samples is None else cfg.dag_samples) if "dag" in streams else 0
    k = cfg.cityscapes_crops_per_frame if "cityscapes" in streams else 0
    coco_n = ((len(src.images) if cfg.coco_samples is None else cfg.coco_samples)
              if ("coco" in streams and src is not None) else 0)
    n_units = max(dag_n, n_frames if k > 0 else 0)
    per_unit = (4 if dag_n else 0) + k
    units_per_task = max(1, cfg.shard_size // max(per_unit, 1))
    tasks: list[_Task] = []
    for g, a in enumerate(range(0, n_units, units_per_task)):
        tasks.append(_Task(len(tasks), "frames", g, a, min(a + units_per_task, n_units)))
    for g, a in enumerate(range(0, coco_n, cfg.shard_size)):
        tasks.append(_Task(len(tasks), "coco", g, a, min(a + cfg.shard_size, coco_n)))
    if not tasks:
        raise CocodagError("nothing to build: every stream is empty (check --streams and the sample counts)")
    resolved = asdict(cfg)
    # Normalized types: 200 and 200.0 must hash the same (library callers vs the CLI).
    resolved.update(streams=list(streams), object_scale=[float(v) for v in cfg.object_scale],
                    paste_window=[int(v) for v in cfg.paste_window], min_object_area=float(cfg.min_object_area),
                    feather=float(cfg.feather), crop=int(cfg.crop), shard_size=int(cfg.shard_size), seed=int(cfg.seed),
                    min_proxy_size=min_proxy, dag_samples=dag_n, cityscapes_crops_per_frame=k, coco_samples=coco_n,
                    frames_per_shard=units_per_task, format="cocodag-build/1")
    # Content fingerprints only, not paths: the same data mounted elsewhere (another node) may resume/merge.
    portable = {name: {kk: vv for kk, vv in fp.items() if kk not in ("root", "json", "image_dir")}
                for name, fp in inputs.items()}
    resolved["inputs_hash"] = hashlib.sha256(repr(sorted(portable.items())).encode()).hexdigest()[:16]
    return _Plan(cfg, resolved, frames, src, _order(cfg.seed, _ORDER_FRAMES, n_frames),
                 _order(cfg.seed, _ORDER_COCO, len(src.images) if src else 0), n_units, tasks, inputs,
                 config_hash(resolved))


# ------------------------------------------------------------------------------------------------------- payloads
@dataclass(frozen=True)
class BuildSettings:
    """What every task needs from the resolved config (so workers never see the plan or the COCO index)."""

    out_dir: str
    config_hash: str
    crop: int
    seed: int
    compression: str
    skip_bad: bool
    crops_per_frame: int                       # resolved: 0 when the cityscapes stream is off
    dag_samples: int                           # resolved: 0 when the dag stream is off
    object_scale: tuple[float, float]
    paste_window: tuple[int, int, int, int]
    feather: float
    flip: bool
    coco_background: int                       # label of COCO background pixels (IGNORE_ID, or ROAD_ID = meta-ood)
    coco_json: str = ""                        # named in errors about an annotation
    parent_pid: int = 0                        # the build's process: a worker whose parent differs exits

    @classmethod
    def from_plan(cls, plan: _Plan, out_dir: Path) -> BuildSettings:
        r = plan.resolved
        return cls(str(out_dir), plan.config_hash, r["crop"], r["seed"], r["compression"], r["skip_bad"],
                   r["cityscapes_crops_per_frame"], r["dag_samples"], tuple(r["object_scale"]),
                   tuple(r["paste_window"]), r["feather"], r["flip"],
                   ROAD_ID if r["coco_background"] == "road" else IGNORE_ID,
                   plan.coco.json_path if plan.coco is not None else "", os.getpid())


@dataclass(frozen=True)
class FrameTask:
    """A frames task: unit ``u`` decodes ``frames[u - start]`` once for its Cityscapes crops (``u < num_frames``)
    and one DAG paste of ``pastes[u - start]`` (``u < dag_samples``)."""

    task: _Task
    settings: BuildSettings
    frames: tuple[Frame, ...]
    pastes: tuple[tuple[CocoObject, CocoImage], ...]
    num_frames: int
    num_objects: int                           # size of the object list the DAG draw picks from


@dataclass(frozen=True)
class CocoTask:
    """A COCO task: unit ``v`` crops proxy image ``images[v - start]``."""

    task: _Task
    settings: BuildSettings
    images: tuple[CocoImage, ...]


def _task_payload(plan: _Plan, task: _Task, settings: BuildSettings) -> FrameTask | CocoTask:
    """Only what one task needs (a full COCO index would be hundreds of MB to pickle per task)."""
    units = range(task.start, task.stop)
    if task.kind == "coco":
        n = len(plan.coco.images)
        return CocoTask(task, settings, tuple(plan.coco.images[int(plan.coco_order[v % n])] for v in units))
    n = len(plan.frames)
    frames = tuple(plan.frames[int(plan.frame_order[u % n])] for u in units)
    pastes, num_objects = (), 0
    if settings.dag_samples:
        num_objects = len(plan.coco.objects)
        objs = [plan.coco.objects[_dag_draw_object(settings.seed, u, num_objects)[1]]
                for u in range(task.start, min(task.stop, settings.dag_samples))]
        pastes = tuple((o, plan.coco.images[o.image]) for o in objs)
    return FrameTask(task, settings, frames, pastes, n, num_objects)


# ------------------------------------------------------------------------------------------------------- workers
def _dag_draw_object(seed: int, unit: int, n_objects: int) -> tuple[np.random.Generator, int]:
    """The DAG unit's generator after its first draw (the object): the parent uses it to ship only needed objects."""
    rng = _rng(seed, STREAM_CODES["dag"], unit)
    return rng, int(rng.integers(n_objects))


def _window(frame_w: int, frame_h: int, window: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The seed's paste window (given on 1024x2048) scaled to this frame, clamped inside it."""
    r0, r1, c0, c1 = window
    sy, sx = frame_h / 1024.0, frame_w / 2048.0
    r0, r1 = (min(max(int(round(v * sy)), 0), frame_h - 1) for v in (r0, r1))
    c0, c1 = (min(max(int(round(v * sx)), 0), frame_w - 1) for v in (c0, c1))
    return r0, r1, c0, c1


def _decode_or_skip(load: Callable, item, skip_bad: bool, skipped: list):
    """``load(item)``; with ``skip_bad`` a bad file is listed in ``skipped`` and ``None`` returned instead."""
    try:
        return load(item)
    except CocodagError as e:
        if not skip_bad:
            raise
        skipped.append({"file": str(e).split(":")[0], "reason": str(e)})
        return None


class _StreamBuffer:
    """Preallocated (capacity, S, S, 3) / (capacity, S, S) arrays: crops are converted BGR->RGB straight into place
    (one cv2 pass) instead of collecting strided views and stacking them (two passes, the slow one strided)."""

    def __init__(self, capacity: int, s: int):
        self.img = np.empty((capacity, s, s, 3), np.uint8)
        self.lab = np.empty((capacity, s, s), np.uint8)
        self.meta: list[SampleMeta] = []

    def add(self, bgr: np.ndarray, lab: np.ndarray, meta: SampleMeta, flip: bool = False) -> None:
        i = len(self.meta)
        if flip:
            cv2.flip(bgr, 1, dst=self.img[i])
            cv2.cvtColor(self.img[i], cv2.COLOR_BGR2RGB, dst=self.img[i])
            cv2.flip(lab, 1, dst=self.lab[i])
        else:
            cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=self.img[i])
            self.lab[i] = lab
        self.meta.append(meta)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, list[SampleMeta]]:
        n = len(self.meta)
        return self.img[:n], self.lab[:n], self.meta


def _frame_task(p: FrameTask, tick: Callable[[int], None]) -> tuple:
    st = p.settings
    units = range(p.task.start, p.task.stop)
    out = {"dag": _StreamBuffer(4 * sum(u < st.dag_samples for u in units), st.crop),
           "cityscapes": _StreamBuffer(st.crops_per_frame * sum(u < p.num_frames for u in units), st.crop)}
    dropped = {"dag_no_ood": 0, "dag_no_id": 0, "dag_empty_paste": 0}
    skipped: list = []
    for i, u in enumerate(units):
        frame = p.frames[i]
        decoded = _decode_or_skip(load_frame, frame, st.skip_bad, skipped)
        if decoded is not None:
            bgr, lab = decoded
            if u < p.num_frames and st.crops_per_frame > 0:
                _cityscapes_crops(st, u, frame.name, bgr, lab, out["cityscapes"])
            if u < st.dag_samples:
                # Last use of the frame: the paste may write into it (the Cityscapes crops are already copied out).
                _paste_and_split(p, i, bgr, lab, out["dag"], dropped, skipped)
        tick(1)
    return out, dropped, skipped


def _cityscapes_crops(st: BuildSettings, unit: int, name: str, bgr: np.ndarray, lab: np.ndarray,
                      buf: _StreamBuffer) -> None:
    """The original in-distribution stream: ``crops_per_frame`` random S×S crops (random horizontal flip)."""
    s, (H, W) = st.crop, lab.shape
    rng = _rng(st.seed, STREAM_CODES["cityscapes"], unit)
    for _ in range(st.crops_per_frame):
        x0, y0 = int(rng.integers(0, W - s + 1)), int(rng.integers(0, H - s + 1))
        flip = st.flip and bool(rng.random() < 0.5)
        buf.add(bgr[y0:y0 + s, x0:x0 + s], lab[y0:y0 + s, x0:x0 + s], SampleMeta(name, crop=(x0, y0, x0 + s, y0 + s)),
                flip)


def _paste_and_split(p: FrameTask, i: int, bgr: np.ndarray, lab: np.ndarray, buf: _StreamBuffer, dropped: dict,
                     skipped: list) -> None:
    """DAG sample of unit ``start + i``: paste its object into the frame (in place), emit the quadrants around the
    object's centroid."""
    st, obj, cimg = p.settings, *p.pastes[i]
    rng, _ = _dag_draw_object(st.seed, p.task.start + i, p.num_objects)   # the object was drawn by the parent
    obj_bgr = _decode_or_skip(load_image, cimg, st.skip_bad, skipped)
    if obj_bgr is None:
        return
    ann = next(a for a in cimg.anns if a["id"] == obj.ann_id)
    mask = ann_to_mask(cimg, ann)
    if not mask.any():
        why = f"annotation {obj.ann_id} (image {cimg.id}, {Path(cimg.path).name}): its polygon gives an empty mask"
        if not st.skip_bad:
            raise CocodagError(f"{st.coco_json}: {why}; fix or remove it, or use --skip-bad to skip it")
        skipped.append({"file": st.coco_json, "reason": why})
        return
    obj_bgr, obj_mask = crop_to_mask(obj_bgr, mask)
    scale = float(rng.uniform(*st.object_scale))
    H, W = lab.shape
    r0, r1, c0, c1 = _window(W, H, st.paste_window)
    cy, cx = int(rng.integers(r0, r1 + 1)), int(rng.integers(c0, c1 + 1))
    comp, plab, box = paste_object(bgr, lab, obj_bgr, obj_mask, (cx, cy), scale, st.feather, return_box=True,
                                   inplace=True)
    split = split_by_centroid(comp, plab, st.crop, within=box)
    if split.centroid is None:
        dropped["dag_empty_paste"] += 1
        return
    dropped["dag_no_ood"] += split.no_ood
    dropped["dag_no_id"] += split.no_id
    for c in split.crops:
        buf.add(c.image, c.label, SampleMeta(p.frames[i].name, coco_ann=obj.ann_id, centroid=split.centroid,
                                             crop=c.box, quadrant=c.quadrant))


def _coco_task(p: CocoTask, tick: Callable[[int], None]) -> tuple:
    st = p.settings
    out = {"coco": _StreamBuffer(p.task.stop - p.task.start, st.crop)}
    dropped = {"coco_no_ood": 0}
    skipped: list = []
    for i, v in enumerate(range(p.task.start, p.task.stop)):
        cimg = p.images[i]
        rng = _rng(st.seed, STREAM_CODES["coco"], v)
        bgr = _decode_or_skip(load_image, cimg, st.skip_bad, skipped)
        if bgr is not None:
            crop = crop_proxy(bgr, *image_masks(cimg), st.crop, rng, background=st.coco_background)
            if crop is None:
                dropped["coco_no_ood"] += 1
            else:
                out["coco"].add(crop[0], crop[1], SampleMeta(Path(cimg.path).name, crop=crop[2]))
        tick(1)
    return out, dropped, skipped


def _write_task_shards(p: FrameTask | CocoTask, out: dict[str, _StreamBuffer], dropped: dict,
                       skipped: list) -> dict[str, Any]:
    st, task = p.settings, p.task
    out_dir = Path(st.out_dir)
    guard = functools.partial(exit_if_orphaned, st.parent_pid)   # right before each rename
    entries = []
    for kind, buf in out.items():
        images, labels, metas = buf.arrays()
        if not metas:
            continue   # an empty stream writes no shard (readers never see 0-sample files)
        entries.append(write_shard(out_dir / shard_name(kind, task.group), kind, images, labels, metas,
                                   compression=st.compression, before_commit=guard,
                                   extra_attrs={"config_hash": st.config_hash, "task": task.index,
                                                "units": f"{task.start}:{task.stop}"}))
    delay = float(os.environ.get(_SLOW_ENV, "0") or 0)
    if delay:
        time.sleep(delay)
    record = {"task": task.index, "kind": task.kind, "units": [task.start, task.stop],
              "config_hash": st.config_hash, "entries": entries, "dropped": dropped, "skipped": skipped}
    _write_json(_record_path(out_dir, task.index), record, before_commit=guard)
    return record


def _write_json(path: Path, obj: Any, before_commit: Callable[[], None] | None = None) -> None:
    """Pretty sorted JSON, atomically; a full disk is one line (``No space left on device: <path>; ...``)."""
    commit_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode(), before_commit)


def _run_task(p: FrameTask | CocoTask, tick: Callable[[int], None] | None = None, limit_threads: bool = False):
    if limit_threads:          # a worker process
        cv2.setNumThreads(1)   # one process per core already; cv2's own pool would oversubscribe
        watch_parent(p.settings.parent_pid, _POLL_S, "cocodag-parent-watchdog")
    return _write_task_shards(p, *_compute_task(p, tick))


def _compute_task(p: FrameTask | CocoTask, tick: Callable[[int], None] | None = None) -> tuple:
    """Decode + paste + crop one task's units into buffers (no I/O besides reading inputs)."""
    tick = tick or (lambda n: None)
    return _frame_task(p, tick) if isinstance(p, FrameTask) else _coco_task(p, tick)


def _run_sequential(plan: _Plan, todo: list[_Task], settings: BuildSettings, on_record: Callable[[dict], None],
                    tick) -> None:
    """One process: a writer thread writes + hashes task t's shards while task t+1 decodes (h5py I/O, sha256
    and cv2 decoding release the GIL). At most one task waits for its write, so memory stays at two tasks."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cocodag-writer") as ex:
        pending = None
        for task in todo:
            p = _task_payload(plan, task, settings)
            result = _compute_task(p, tick)
            if pending is not None:
                on_record(pending.result())
            pending = ex.submit(_write_task_shards, p, *result)
        if pending is not None:
            on_record(pending.result())


def _run_parallel(plan: _Plan, todo: list[_Task], settings: BuildSettings, on_record: Callable[[dict], None],
                  workers: int, tick) -> None:
    """Several loky processes, each running whole tasks (they exit when this process dies: `cocodag.workers.watch_parent`)."""
    from joblib import Parallel, delayed

    par = Parallel(n_jobs=min(workers, len(todo)), backend="loky", return_as="generator_unordered")
    for rec in par(delayed(_run_task)(_task_payload(plan, task, settings), None, True) for task in todo):
        on_record(rec)
        tick(rec["units"][1] - rec["units"][0])


# ------------------------------------------------------------------------------------------------------- out dir
def _record_path(out_dir: Path, index: int) -> Path:
    return out_dir / PROGRESS_DIR / f"task-{index:05d}.json"


def _load_record(out_dir: Path, index: int) -> dict | None:
    p = _record_path(out_dir, index)
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


class _ShaCache:
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
        _write_json(self.path, {"format": "cocodag-sha-cache/1", "files": files})
        self.dirty = False


class _TaskLocks:
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


class _OutDir:
    """``--out`` as one build sees it: task records checked against the config and the shards' sha256, the records
    this build keeps or writes, and (``--shard-range``) the task locks."""

    def __init__(self, out_dir: Path, plan: _Plan, cache_name: str, ranged: bool):
        self.root, self.plan = out_dir, plan
        self.cache = _ShaCache(out_dir / PROGRESS_DIR, cache_name)
        self.locks = _TaskLocks(out_dir, ranged)
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

    def remove_stale_temps(self, task: _Task) -> None:
        """A killed writer's temp files of one task (cocodag.atomic's names); called with the task's lock held."""
        kinds = ("dag", "cityscapes") if task.kind == "frames" else ("coco",)
        for p in [temp_path(self.root / shard_name(k, task.group)) for k in kinds]:
            p.unlink(missing_ok=True)
        temp_path(_record_path(self.root, task.index)).unlink(missing_ok=True)


def _claim(state: _OutDir, pending: list[_Task]) -> tuple[list[_Task], list[_Task]]:
    """(tasks to build now, tasks another job holds): claim each task's lock, then keep it when its record is valid."""
    batch, deferred = [], []
    for task in pending:
        if len(batch) >= _CLAIM_BATCH or not state.locks.claim(task.index):
            deferred.append(task)
            continue
        if state.locks.enabled:
            state.remove_stale_temps(task)
        rec = state.valid_record(task.index)
        if rec is None:
            batch.append(task)
        else:
            state.records[task.index] = rec
            state.locks.release(task.index)
    state.locks.report()
    return batch, deferred


def _build_tasks(plan: _Plan, state: _OutDir, task_ids: list[int], settings: BuildSettings, workers: int,
                 bar) -> None:
    """Keep or build every task of ``task_ids``. A range job waits (polling every ``_POLL_S``) for the tasks another
    range job holds, then keeps them, or builds them when that job died without finishing them."""
    pending, noted = [plan.tasks[t] for t in task_ids], False
    while pending:
        batch, pending = _claim(state, pending)
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
            time.sleep(_POLL_S)


def _record_hashes(out_dir: Path) -> set[str]:
    hashes = set()
    for rp in (out_dir / PROGRESS_DIR).glob("task-*.json") if (out_dir / PROGRESS_DIR).is_dir() else []:
        try:
            rec = json.loads(rp.read_bytes())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict):
            hashes.add(rec.get("config_hash"))
    return hashes


def _check_existing(out_dir: Path, plan: _Plan, overwrite: bool) -> None:
    """Refuse a folder holding another config's dataset (or a manifest nothing identifies), unless ``overwrite``."""
    records = _record_hashes(out_dir)
    other, broken = records - {plan.config_hash}, None
    if (out_dir / MANIFEST_NAME).is_file():
        try:
            other |= {read_manifest(out_dir).get("config_hash")} - {plan.config_hash}
        except CocodagError as e:
            broken = str(e)
    if overwrite:
        return
    if other:
        raise CocodagError(f"--out {out_dir}: holds a dataset built with another config or inputs "
                           f"(config hash {min(map(str, other))} != {plan.config_hash}); use --overwrite to "
                           f"replace it, or another --out")
    if broken is not None and plan.config_hash not in records:
        raise CocodagError(f"--out {out_dir}: its {MANIFEST_NAME} cannot be read ({broken.split(': ', 1)[-1].split('; ')[0]}) "
                           f"and no task record says which config built it; use --overwrite to rebuild it, or "
                           f"another --out")
    if broken is not None:
        print(f"note: {broken.split('; ')[0]}; it is rewritten from the task records when the build completes",
              file=sys.stderr)


def _our_files(out_dir: Path) -> list[Path]:
    pats = [f"{k}-*.h5" for k in KINDS] + [f"{k}-*.h5.tmp" for k in KINDS] + ["manifest.json", "manifest.json.tmp",
                                                                             "manifest.part-*.json*"]
    return [p for pat in pats for p in out_dir.glob(pat)]


def _prepare_out_dir(out_dir: Path, plan: _Plan, overwrite: bool, ranged: bool) -> None:
    """Check what ``--out`` holds; with ``overwrite`` remove it. A build holding the folder exclusively also removes
    the temp files of a killed run (a range job removes only those of a task it holds: `_OutDir.remove_stale_temps`,
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


# ------------------------------------------------------------------------------------------------------- main
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
        folder at once (each locks the tasks it builds; see the module docstring); ``manifest.json`` is written by a
        run without ``shard_range`` (the merge step), or by the last range job when no other one still runs.
    overwrite : replace a dataset built with another config (otherwise refused); not with ``shard_range``.

    Raises
    ------
    CocodagError
        Bad inputs or options, ``out_dir`` unusable or in use by another build (:class:`cocodag.lock.OutputLockedError`),
        a full disk.
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
        rng_ab = _parse_shard_range(shard_range, len(plan.tasks))
        result = _build_locked(plan, out_dir, rng_ab, workers, overwrite, progress)
    if rng_ab is not None:
        manifest = _merge_if_alone(plan, out_dir)
        if manifest is not None:
            result.manifest, result.manifest_path, result.counts = manifest, out_dir / MANIFEST_NAME, manifest["totals"]
    return result


@contextlib.contextmanager
def _lock_out_dir(out_dir: Path, shared: bool):
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
            time.sleep(_POLL_S)
    try:
        yield lock
    finally:
        lock.release()


def _build_locked(plan: _Plan, out_dir: Path, rng_ab: tuple[int, int] | None, workers: int, overwrite: bool,
                  progress: bool) -> BuildResult:
    """The build itself, with ``--out`` locked (exclusively, or shared for a range job)."""
    from tqdm import tqdm

    n_tasks = len(plan.tasks)
    task_ids = list(range(*rng_ab)) if rng_ab else list(range(n_tasks))
    with disk_errors(out_dir):
        _prepare_out_dir(out_dir, plan, overwrite, rng_ab is not None)
    state = _OutDir(out_dir, plan, _cache_name(rng_ab), rng_ab is not None)
    bar = tqdm(total=0, unit="sample", desc="cocodag build", disable=not progress, dynamic_ncols=True, smoothing=0.1)
    try:
        _build_tasks(plan, state, task_ids, BuildSettings.from_plan(plan, out_dir), workers, bar)
    finally:
        bar.close()
    state.cache.save()
    result = BuildResult(out_dir, None, out_dir / MANIFEST_NAME, state.built, len(task_ids) - state.built, n_tasks)
    if rng_ab:
        part = _manifest(plan, [state.records[t] for t in task_ids])
        part["partial"] = {"tasks": list(rng_ab), "of": n_tasks}
        result.manifest_path, result.counts = out_dir / f"manifest.part-{rng_ab[0]}-{rng_ab[1]}.json", part["totals"]
        _write_json(result.manifest_path, part)
        return result
    manifest = _merge(plan, state)
    if manifest is not None:
        result.manifest, result.counts = manifest, manifest["totals"]
    return result


def _cache_name(rng_ab: tuple[int, int] | None) -> str:
    return f"{SHA_CACHE_PREFIX}.json" if rng_ab is None else f"{SHA_CACHE_PREFIX}.part-{rng_ab[0]}-{rng_ab[1]}.json"


def _merge(plan: _Plan, state: _OutDir) -> dict[str, Any] | None:
    """Write ``manifest.json`` when every task has a valid record (the caller holds ``--out`` exclusively)."""
    recs = []
    for t in range(len(plan.tasks)):
        rec = state.records.get(t) or state.valid_record(t)
        if rec is None:
            return None          # other shard ranges still missing: no manifest.json yet
        recs.append(rec)
    manifest = _manifest(plan, recs)
    _write_json(state.root / MANIFEST_NAME, manifest)
    state.cache.save()
    return manifest


def _merge_if_alone(plan: _Plan, out_dir: Path) -> dict[str, Any] | None:
    """After a range job: act as the merge step when no other job holds ``--out`` and every task is done."""
    lock = OutputLock(out_dir, option="--out", kind="dir")
    try:
        lock.acquire()
    except OutputLockedError:
        return None              # other range jobs still run: the last one (or the merge step) writes it
    try:
        return _merge(plan, _OutDir(out_dir, plan, _cache_name(None), ranged=False))
    finally:
        lock.release()


def _manifest(plan: _Plan, recs: list[dict]) -> dict[str, Any]:
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
