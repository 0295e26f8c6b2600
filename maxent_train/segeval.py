"""Closed-set segmentation quality (mIoU) of a checkpoint on a Cityscapes-layout split.

MaxEnt fine-tuning must not wreck the in-distribution segmentation; this is the number that says whether it did.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cocodag.arrays import to_numpy
from cocodag.cityscapes import find_frames, load_frame_rgb
from cocodag.device import resolve_device
from cocodag.labels import IGNORE_ID, TRAIN_CLASS_NAMES
from cocodag.progress import progress_bar

from .data import normalize
from .export import load_model_for_export, predict_logits


def confusion_matrix(pred: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = ground truth, columns = prediction; label 255 (and >= C) ignored."""
    valid = label < num_classes
    idx = label[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(conf: np.ndarray) -> dict[str, Any]:
    """Per-class IoU (NaN for classes absent from both prediction and ground truth), mIoU over present classes."""
    tp = np.diag(conf).astype(np.float64)
    denom = conf.sum(0) + conf.sum(1) - tp
    present = conf.sum(1) > 0                  # mIoU over classes that occur in the ground truth (Cityscapes-style)
    iou = np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)
    return {
        "miou": float(np.nanmean(np.where(present, iou, np.nan))) if present.any() else float("nan"),
        "pixel_acc": float(tp.sum() / max(conf.sum(), 1)),
        "iou": {TRAIN_CLASS_NAMES[c] if c < len(TRAIN_CLASS_NAMES) else str(c): (None if np.isnan(v) else float(v))
                for c, v in enumerate(iou) if present[c]},
    }


@torch.no_grad()
def evaluate_segmentation(checkpoint: str | Path, cityscapes: str | Path, *, split: str = "val",
                          device: str = "auto", limit: int | None = None, window: int | None = None,
                          stride: int | None = None, progress: bool = True, model: str | None = None,
                          model_kwargs: dict | None = None, num_classes: int | None = None) -> dict[str, Any]:
    """mIoU / pixel accuracy of ``checkpoint`` on ``cityscapes/leftImg8bit/<split>`` at full resolution.

    ``model`` / ``model_kwargs`` / ``num_classes`` build the network when the checkpoint has no metadata (a released
    file), or override it (see :func:`maxent_train.export.load_model_for_export`).
    """
    dev = resolve_device(device)
    net, meta = load_model_for_export(checkpoint, model, num_classes, dev, model_kwargs)
    nc = int(meta["num_classes"])
    frames = find_frames(cityscapes, split)[: limit or None]
    conf = np.zeros((nc, nc), np.int64)
    for fr in progress_bar(frames, desc="mIoU", unit="img", disable=not progress, leave=False):
        rgb, lab = load_frame_rgb(fr)
        x = normalize(torch.from_numpy(rgb)[None].to(dev))
        pred = to_numpy(predict_logits(net, x, window, stride).argmax(1)[0], "prediction")
        conf += confusion_matrix(pred, lab, nc)
    out = iou_from_confusion(conf)
    out.update(n_frames=len(frames), split=split, checkpoint=str(checkpoint), ignore_id=IGNORE_ID,
               model=str(meta["model"]), model_kwargs=dict(meta.get("model_kwargs") or {}))
    return out
