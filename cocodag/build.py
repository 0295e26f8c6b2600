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
(``*.h5.tmp`` -> rename, by :func:`cocodag.formats.shards.write_shard`) and then a small record
``progress/task-NNNNN.json`` (atomic); a rerun keeps tasks whose record matches the config, and the manifest is
written last. With one worker, a writer thread writes and hashes task t's shards while task t+1 decodes; with
several, each loky process runs whole tasks.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from .atomic import atomic_write_json, temp_path
from .cityscapes import Frame, find_frames, load_frame
from .coco import (CocoImage, CocoObject, CocoSource, ann_to_mask, coco_paths, crop_proxy, image_masks, load_coco,
                   load_image)
from .errors import CocodagError
from .formats.shards import (COMPRESSIONS, KINDS, MANIFEST_NAME, STREAM_CODES, SampleMeta, build_manifest,
                             config_hash, read_manifest, shard_name, write_shard)
from .labels import IGNORE_ID, ROAD_ID
from .paste import crop_to_mask, paste_object
from .split import split_by_centroid

_ORDER_FRAMES, _ORDER_COCO = 3, 4          # extra SeedSequence streams (after STREAM_CODES): the visiting orders
PROGRESS_DIR = "progress"
DEFAULT_COMPRESSION = "none"               # measured by bench/build.py (see README): fastest, lzf/gzip save little
SEED_WINDOW = (250, 774, 250, 1798)        # the seed's paste window: rows 250..774, cols 250..1798 of 1024x2048
# Test hook: sleep this many seconds per task (lets the kill -9 resume test interrupt a tiny build reliably).
_SLOW_ENV = "COCODAG_TEST_TASK_DELAY"


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

    @classmethod
    def from_plan(cls, plan: _Plan, out_dir: Path) -> BuildSettings:
        r = plan.resolved
        return cls(str(out_dir), plan.config_hash, r["crop"], r["seed"], r["compression"], r["skip_bad"],
                   r["cityscapes_crops_per_frame"], r["dag_samples"], tuple(r["object_scale"]),
                   tuple(r["paste_window"]), r["feather"], r["flip"],
                   ROAD_ID if r["coco_background"] == "road" else IGNORE_ID)


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
    obj_bgr, obj_mask = crop_to_mask(obj_bgr, ann_to_mask(cimg, ann))
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
    entries = []
    for kind, buf in out.items():
        images, labels, metas = buf.arrays()
        if not metas:
            continue   # an empty stream writes no shard (readers never see 0-sample files)
        entries.append(write_shard(out_dir / shard_name(kind, task.group), kind, images, labels, metas,
                                   compression=st.compression,
                                   extra_attrs={"config_hash": st.config_hash, "task": task.index,
                                                "units": f"{task.start}:{task.stop}"}))
    delay = float(os.environ.get(_SLOW_ENV, "0") or 0)
    if delay:
        time.sleep(delay)
    record = {"task": task.index, "kind": task.kind, "units": [task.start, task.stop],
              "config_hash": st.config_hash, "entries": entries, "dropped": dropped, "skipped": skipped}
    atomic_write_json(_record_path(out_dir, task.index), record)
    return record


def _run_task(p: FrameTask | CocoTask, tick: Callable[[int], None] | None = None, limit_threads: bool = False):
    if limit_threads:
        cv2.setNumThreads(1)   # one process per core already; cv2's own pool would oversubscribe
    return _write_task_shards(p, *_compute_task(p, tick))


def _compute_task(p: FrameTask | CocoTask, tick: Callable[[int], None] | None = None) -> tuple:
    """Decode + paste + crop one task's units into buffers (no I/O besides reading inputs)."""
    tick = tick or (lambda n: None)
    return _frame_task(p, tick) if isinstance(p, FrameTask) else _coco_task(p, tick)


def _run_sequential(plan: _Plan, todo: list[_Task], settings: BuildSettings, records: dict, tick) -> None:
    """One process: a writer thread writes + hashes task t's shards while task t+1 decodes (h5py I/O, sha256
    and cv2 decoding release the GIL). At most one task waits for its write, so memory stays at two tasks."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cocodag-writer") as ex:
        pending = None
        for task in todo:
            p = _task_payload(plan, task, settings)
            result = _compute_task(p, tick)
            if pending is not None:
                rec = pending.result()
                records[rec["task"]] = rec
            pending = ex.submit(_write_task_shards, p, *result)
        if pending is not None:
            rec = pending.result()
            records[rec["task"]] = rec


# ------------------------------------------------------------------------------------------------------- out dir
def _record_path(out_dir: Path, index: int) -> Path:
    return out_dir / PROGRESS_DIR / f"task-{index:05d}.json"


def _load_record(out_dir: Path, index: int) -> dict | None:
    import json

    p = _record_path(out_dir, index)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _record_valid(out_dir: Path, rec: dict | None, config_hash: str) -> bool:
    if rec is None or rec.get("config_hash") != config_hash:
        return False
    for e in rec.get("entries", []):
        f = out_dir / e["file"]
        if not f.is_file() or f.stat().st_size != e["bytes"]:
            return False
    return True


def _existing_hashes(out_dir: Path) -> set[str]:
    import json

    hashes = set()
    if (out_dir / MANIFEST_NAME).is_file():
        try:
            hashes.add(read_manifest(out_dir).get("config_hash"))
        except CocodagError:
            hashes.add("<unreadable manifest>")
    for rp in (out_dir / PROGRESS_DIR).glob("task-*.json") if (out_dir / PROGRESS_DIR).is_dir() else []:
        try:
            hashes.add(json.loads(rp.read_text()).get("config_hash"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    return hashes


def _our_files(out_dir: Path) -> list[Path]:
    pats = [f"{k}-*.h5" for k in KINDS] + [f"{k}-*.h5.tmp" for k in KINDS] + ["manifest.json", "manifest.json.tmp",
                                                                             "manifest.part-*.json*"]
    return [p for pat in pats for p in out_dir.glob(pat)]


def _prepare_out_dir(out_dir: Path, plan: _Plan, overwrite: bool, task_ids: list[int] | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    other = _existing_hashes(out_dir) - {plan.config_hash}
    if other and not overwrite:
        raise CocodagError(f"--out {out_dir}: holds a dataset built with another config or inputs "
                           f"(config hash {sorted(other)[0]} != {plan.config_hash}); use --overwrite to replace "
                           f"it, or another --out")
    if overwrite:
        for p in _our_files(out_dir):
            p.unlink()
        shutil.rmtree(out_dir / PROGRESS_DIR, ignore_errors=True)
    # Stale partial files from a killed run. With a shard range, only this range's: another array job may be
    # writing its own *.tmp in the same folder right now.
    if task_ids is None:
        stale = [p for p in out_dir.glob("*.tmp")] + list((out_dir / PROGRESS_DIR).glob("*.tmp"))
    else:
        stale = []
        for t in task_ids:
            task = plan.tasks[t]
            kinds = ("dag", "cityscapes") if task.kind == "frames" else ("coco",)
            # the temp names cocodag.atomic gives this task's shards and record (<shard>.h5.tmp, task-N.json.tmp)
            stale += [temp_path(out_dir / shard_name(k, task.group)) for k in kinds]
            stale.append(temp_path(_record_path(out_dir, t)))
    for p in stale:
        if p.is_file():
            p.unlink()
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
    """Build (or resume) a cocodag dataset in ``out_dir``.

    Parameters
    ----------
    cityscapes, coco : input roots (``coco_json`` / ``coco_images`` override the COCO layout).
    cfg : :class:`BuildConfig` (all byte-determining options).
    workers : joblib (loky) processes; the output bytes do not depend on it.
    shard_range : ``"A:B"`` builds tasks A..B-1 only and writes ``manifest.part-A-B.json``; ``manifest.json`` is
        written by whichever run finds every task complete.
    overwrite : replace a dataset built with another config (otherwise refused).
    """
    from tqdm import tqdm

    cfg = cfg or BuildConfig()
    if workers < 1:
        raise CocodagError(f"--workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    plan = plan_build(cityscapes, coco, cfg, coco_json=coco_json, coco_images=coco_images)
    n_tasks = len(plan.tasks)
    rng_ab = _parse_shard_range(shard_range, n_tasks)
    task_ids = list(range(*rng_ab)) if rng_ab else list(range(n_tasks))
    _prepare_out_dir(out_dir, plan, overwrite, task_ids if rng_ab else None)
    records: dict[int, dict] = {}
    todo = []
    for t in task_ids:
        rec = _load_record(out_dir, t)
        if _record_valid(out_dir, rec, plan.config_hash):
            records[t] = rec
        else:
            todo.append(plan.tasks[t])
    kept = len(records)
    settings = BuildSettings.from_plan(plan, out_dir)
    total_units = sum(t.stop - t.start for t in todo)
    bar = tqdm(total=total_units, unit="sample", desc="cocodag build", disable=not progress, dynamic_ncols=True,
               smoothing=0.1)
    try:
        if workers == 1 or len(todo) <= 1:
            _run_sequential(plan, todo, settings, records, bar.update)
        else:
            from joblib import Parallel, delayed

            par = Parallel(n_jobs=min(workers, len(todo)), backend="loky", return_as="generator_unordered")
            gen = par(delayed(_run_task)(_task_payload(plan, task, settings), None, True) for task in todo)
            for rec in gen:
                records[rec["task"]] = rec
                bar.update(rec["units"][1] - rec["units"][0])
    finally:
        bar.close()
    extra_base = {"coco_filter": {k: v for k, v in (plan.coco.stats if plan.coco else {}).items() if k != "skipped"}}
    result = BuildResult(out_dir, None, out_dir / MANIFEST_NAME, len(todo), kept, n_tasks)
    if rng_ab:
        part = _manifest(plan, [records[t] for t in task_ids], extra_base)
        part["partial"] = {"tasks": list(rng_ab), "of": n_tasks}
        path = out_dir / f"manifest.part-{rng_ab[0]}-{rng_ab[1]}.json"
        atomic_write_json(path, part)
        result.manifest_path, result.counts = path, part["totals"]
    all_recs = []
    for t in range(n_tasks):
        rec = records.get(t) or _load_record(out_dir, t)
        if not _record_valid(out_dir, rec, plan.config_hash):
            return result          # other shard ranges still missing: no manifest.json yet
        all_recs.append(rec)
    manifest = _manifest(plan, all_recs, extra_base)
    atomic_write_json(out_dir / MANIFEST_NAME, manifest)
    result.manifest, result.manifest_path, result.counts = manifest, out_dir / MANIFEST_NAME, manifest["totals"]
    return result


def _manifest(plan: _Plan, recs: list[dict], extra: dict) -> dict[str, Any]:
    dropped: dict[str, int] = {"dag_no_ood": 0, "dag_no_id": 0, "dag_empty_paste": 0, "coco_no_ood": 0}
    skipped, entries = [], []
    for r in recs:
        entries += r["entries"]
        for k, v in r["dropped"].items():
            dropped[k] = dropped.get(k, 0) + v
        skipped += r["skipped"]
    skipped += (plan.coco.stats.get("skipped", []) if plan.coco else [])
    return build_manifest(entries, crop_size=plan.cfg.crop, config=plan.resolved, seed=plan.cfg.seed,
                          inputs=plan.inputs, extra={**extra, "dropped": dropped, "skipped": skipped,
                                                     "num_tasks": len(plan.tasks)})
