"""One task, as a worker runs it: decode each input once, emit its crops into preallocated buffers (Cityscapes
crops, the DAG paste split by centroid, COCO proxy crops), then write the task's shards and its record."""
from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from ..cityscapes import load_frame
from ..coco import ann_to_mask, crop_proxy, image_masks, load_image
from ..errors import CocodagError
from ..formats.shards import STREAM_CODES, SampleMeta, shard_name, write_shard
from ..paste import crop_to_mask, paste_object
from ..split import split_by_centroid
from ..workers import exit_if_orphaned, watch_parent
from ._config import POLL_S
from ._outdir import record_path, write_json
from ._plan import BuildSettings, CocoTask, FrameTask, dag_draw_object, unit_rng

# Test hook: sleep this many seconds per task, between its shards and its record (lets the kill -9 and concurrency
# tests interrupt or overlap a tiny build reliably).
TASK_DELAY_ENV = "COCODAG_TEST_TASK_DELAY"

Tick = Callable[[int], None]
_Item = TypeVar("_Item")
_Decoded = TypeVar("_Decoded")


class StreamBuffer:
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


# what a task computes: its buffers per stream, its dropped-sample counts, the bad inputs it skipped
TaskOutput = tuple[dict[str, StreamBuffer], dict[str, int], list[dict[str, str]]]


def _window(frame_w: int, frame_h: int, window: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The seed's paste window (given on 1024x2048) scaled to this frame, clamped inside it."""
    r0, r1, c0, c1 = window
    sy, sx = frame_h / 1024.0, frame_w / 2048.0
    r0, r1 = (min(max(int(round(v * sy)), 0), frame_h - 1) for v in (r0, r1))
    c0, c1 = (min(max(int(round(v * sx)), 0), frame_w - 1) for v in (c0, c1))
    return r0, r1, c0, c1


def _decode_or_skip(load: Callable[[_Item], _Decoded], item: _Item, skip_bad: bool,
                    skipped: list[dict[str, str]]) -> _Decoded | None:
    """``load(item)``; with ``skip_bad`` a bad file is listed in ``skipped`` and ``None`` returned instead."""
    try:
        return load(item)
    except CocodagError as e:
        if not skip_bad:
            raise
        skipped.append({"file": str(e).split(":")[0], "reason": str(e)})
        return None


def _frame_task(p: FrameTask, tick: Tick) -> TaskOutput:
    st = p.settings
    units = range(p.task.start, p.task.stop)
    out = {"dag": StreamBuffer(4 * sum(u < st.dag_samples for u in units), st.crop),
           "cityscapes": StreamBuffer(st.crops_per_frame * sum(u < p.num_frames for u in units), st.crop)}
    dropped = {"dag_no_ood": 0, "dag_no_id": 0, "dag_empty_paste": 0}
    skipped: list[dict[str, str]] = []
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
                      buf: StreamBuffer) -> None:
    """The original in-distribution stream: ``crops_per_frame`` random S×S crops (random horizontal flip)."""
    s, (H, W) = st.crop, lab.shape
    rng = unit_rng(st.seed, STREAM_CODES["cityscapes"], unit)
    for _ in range(st.crops_per_frame):
        x0, y0 = int(rng.integers(0, W - s + 1)), int(rng.integers(0, H - s + 1))
        flip = st.flip and bool(rng.random() < 0.5)
        buf.add(bgr[y0:y0 + s, x0:x0 + s], lab[y0:y0 + s, x0:x0 + s], SampleMeta(name, crop=(x0, y0, x0 + s, y0 + s)),
                flip)


def _paste_and_split(p: FrameTask, i: int, bgr: np.ndarray, lab: np.ndarray, buf: StreamBuffer,
                     dropped: dict[str, int], skipped: list[dict[str, str]]) -> None:
    """DAG sample of unit ``start + i``: paste its object into the frame (in place), emit the quadrants around the
    object's centroid."""
    st, (obj, cimg) = p.settings, p.pastes[i]
    rng, _ = dag_draw_object(st.seed, p.task.start + i, p.num_objects)   # the object was drawn by the parent
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


def _coco_task(p: CocoTask, tick: Tick) -> TaskOutput:
    st = p.settings
    out = {"coco": StreamBuffer(p.task.stop - p.task.start, st.crop)}
    dropped = {"coco_no_ood": 0}
    skipped: list[dict[str, str]] = []
    for i, v in enumerate(range(p.task.start, p.task.stop)):
        cimg = p.images[i]
        rng = unit_rng(st.seed, STREAM_CODES["coco"], v)
        bgr = _decode_or_skip(load_image, cimg, st.skip_bad, skipped)
        if bgr is not None:
            crop = crop_proxy(bgr, *image_masks(cimg), st.crop, rng, background=st.coco_background)
            if crop is None:
                dropped["coco_no_ood"] += 1
            else:
                out["coco"].add(crop[0], crop[1], SampleMeta(Path(cimg.path).name, crop=crop[2]))
        tick(1)
    return out, dropped, skipped


def compute_task(p: FrameTask | CocoTask, tick: Tick | None = None) -> TaskOutput:
    """Decode + paste + crop one task's units into buffers (no I/O besides reading inputs)."""
    tick = tick or (lambda n: None)
    return _frame_task(p, tick) if isinstance(p, FrameTask) else _coco_task(p, tick)


def write_task_shards(p: FrameTask | CocoTask, out: dict[str, StreamBuffer], dropped: dict[str, int],
                      skipped: list[dict[str, str]]) -> dict[str, Any]:
    """Write the task's shards, then its record (``progress/task-NNNNN.json``, the proof the task is done)."""
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
    delay = float(os.environ.get(TASK_DELAY_ENV, "0") or 0)
    if delay:
        time.sleep(delay)
    record = {"task": task.index, "kind": task.kind, "units": [task.start, task.stop],
              "config_hash": st.config_hash, "entries": entries, "dropped": dropped, "skipped": skipped}
    write_json(record_path(out_dir, task.index), record, before_commit=guard)
    return record


def run_task_in_worker(p: FrameTask | CocoTask) -> dict[str, Any]:
    """A whole task in a pool process, which exits when the build that started it is gone."""
    cv2.setNumThreads(1)   # one process per core already; cv2's own pool would oversubscribe
    watch_parent(p.settings.parent_pid, POLL_S, "cocodag-parent-watchdog")
    return write_task_shards(p, *compute_task(p))
