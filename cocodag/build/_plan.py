"""Planning a build: scan and check the inputs, resolve the counts, cut the work into fixed tasks, and give each
task the one frozen payload (:class:`FrameTask` / :class:`CocoTask` with :class:`BuildSettings`) a worker needs."""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..cityscapes import Frame, find_frames
from ..coco import CocoImage, CocoObject, CocoSource, coco_paths, load_coco
from ..errors import CocodagError
from ..formats.choices import Compression
from ..formats.shards import KINDS, STREAM_CODES, config_hash
from ..labels import COCO_BACKGROUND_IDS
from ._config import BuildConfig

_ORDER_FRAMES, _ORDER_COCO = 3, 4          # extra SeedSequence streams (after STREAM_CODES): the visiting orders


def unit_rng(seed: int, stream: int, unit: int) -> np.random.Generator:
    """The generator of one unit of one stream: a sample depends only on (seed, stream, unit)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream), int(unit)]))


def _visiting_order(seed: int, stream: int, n: int) -> np.ndarray:
    """A seeded visiting order of n inputs, so `--dag-samples` < n draws a random subset of frames."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream])).permutation(n)


def dag_draw_object(seed: int, unit: int, n_objects: int) -> tuple[np.random.Generator, int]:
    """The DAG unit's generator after its first draw (the object): the parent uses it to ship only needed objects."""
    rng = unit_rng(seed, STREAM_CODES["dag"], unit)
    return rng, int(rng.integers(n_objects))


@dataclass(frozen=True)
class Task:
    """A fixed slice of units ``start:stop`` of one kind; its shards are ``<stream>-<group>.h5``."""

    index: int
    kind: Literal["frames", "coco"]
    group: int         # shard file index within its stream(s)
    start: int
    stop: int


@dataclass
class Plan:
    cfg: BuildConfig
    resolved: dict[str, Any]                 # the resolved config: what the config hash and the manifest record
    frames: list[Frame]
    coco: CocoSource | None
    frame_order: np.ndarray
    coco_order: np.ndarray
    n_frame_units: int
    tasks: list[Task]
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
               coco_json: Path | str | None = None, coco_images: Path | str | None = None) -> Plan:
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
    tasks: list[Task] = []
    for g, a in enumerate(range(0, n_units, units_per_task)):
        tasks.append(Task(len(tasks), "frames", g, a, min(a + units_per_task, n_units)))
    for g, a in enumerate(range(0, coco_n, cfg.shard_size)):
        tasks.append(Task(len(tasks), "coco", g, a, min(a + cfg.shard_size, coco_n)))
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
    return Plan(cfg, resolved, frames, src, _visiting_order(cfg.seed, _ORDER_FRAMES, n_frames),
                _visiting_order(cfg.seed, _ORDER_COCO, len(src.images) if src else 0), n_units, tasks, inputs,
                config_hash(resolved))


# ------------------------------------------------------------------------------------------------------- payloads
@dataclass(frozen=True)
class BuildSettings:
    """What every task needs from the resolved config (so workers never see the plan or the COCO index)."""

    out_dir: str
    config_hash: str
    crop: int
    seed: int
    compression: Compression
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
    def from_plan(cls, plan: Plan, out_dir: Path) -> BuildSettings:
        r = plan.resolved
        return cls(str(out_dir), plan.config_hash, r["crop"], r["seed"], r["compression"], r["skip_bad"],
                   r["cityscapes_crops_per_frame"], r["dag_samples"], tuple(r["object_scale"]),
                   tuple(r["paste_window"]), r["feather"], r["flip"], COCO_BACKGROUND_IDS[r["coco_background"]],
                   plan.coco.json_path if plan.coco is not None else "", os.getpid())


@dataclass(frozen=True)
class FrameTask:
    """A frames task: unit ``u`` decodes ``frames[u - start]`` once for its Cityscapes crops (``u < num_frames``)
    and one DAG paste of ``pastes[u - start]`` (``u < dag_samples``)."""

    task: Task
    settings: BuildSettings
    frames: tuple[Frame, ...]
    pastes: tuple[tuple[CocoObject, CocoImage], ...]
    num_frames: int
    num_objects: int                           # size of the object list the DAG draw picks from


@dataclass(frozen=True)
class CocoTask:
    """A COCO task: unit ``v`` crops proxy image ``images[v - start]``."""

    task: Task
    settings: BuildSettings
    images: tuple[CocoImage, ...]


def task_payload(plan: Plan, task: Task, settings: BuildSettings) -> FrameTask | CocoTask:
    """Only what one task needs (a full COCO index would be hundreds of MB to pickle per task)."""
    units = range(task.start, task.stop)
    coco = plan.coco
    if task.kind == "coco":
        assert coco is not None, "COCO tasks are planned only with a COCO source"
        n = len(coco.images)
        return CocoTask(task, settings, tuple(coco.images[int(plan.coco_order[v % n])] for v in units))
    n = len(plan.frames)
    frames = tuple(plan.frames[int(plan.frame_order[u % n])] for u in units)
    pastes: tuple[tuple[CocoObject, CocoImage], ...] = ()
    num_objects = 0
    if settings.dag_samples:
        assert coco is not None, "DAG samples are planned only with a COCO source"
        num_objects = len(coco.objects)
        objects = [coco.objects[dag_draw_object(settings.seed, u, num_objects)[1]]
                   for u in range(task.start, min(task.stop, settings.dag_samples))]
        pastes = tuple((o, coco.images[o.image]) for o in objects)
    return FrameTask(task, settings, frames, pastes, n, num_objects)
