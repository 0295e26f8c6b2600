"""Component-level metrics of SegmentMeIfYouCan (docs/methods.md §6.5): sIoU, PPV and mean F1 over sIoU/PPV
thresholds.

Per frame (labels 0 = ID, 1 = anomaly, anything else void):

1. Prediction ``P = score >= threshold`` (``rule="ge"``, the pixel metrics' convention, so the F1-optimal pixel
   threshold means the same thing here; ``rule="gt"``, alias ``strict=True``, gives the SMIYC code's
   ``score > threshold``), with void pixels set to 0.
2. 8-connected components (``cv2.connectedComponentsWithStats``) of ``P`` and of the ground truth ``label == 1``.
   Predicted components smaller than ``min_pred_size`` pixels are dropped; ground-truth components smaller than
   ``min_gt_size`` pixels become void. Presets: anomaly track 500 / 100, obstacle track 50 / 10.
3. Evaluation region R = non-void pixels (after step 2). Component sizes below are counted inside R (a predicted
   component's pixels on a voided small GT component do not count), as in the SMIYC code.
4. sIoU of a GT component k: ``|k ∩ K̂| / (|K̂| + |k| - |k ∩ K̂| - |A|)`` with K̂ the union of predicted components
   intersecting k and A the pixels of K̂ inside other GT components. (Equivalently ``|k ∩ K̂| / (|k| + |K̂ \\ GT|)``.)
   PPV of a predicted component j: ``|j ∩ GT| / |j|``.
5. For τ in ``linspace(0.25, 0.75, 11)``: TP = GT components with sIoU >= τ, FN = the others, FP = predicted
   components with PPV < τ; TP/FN/FP are summed over the data set, ``F1(τ) = 2TP / (2TP + FN + FP)``; ``mean_f1`` is
   the mean over τ. ``siou`` / ``ppv`` are means over all GT / predicted components of the data set.

Deviations from the SMIYC code, on purpose: its size filter loop also treats the background (label 0 of the
component map) as a "component", which voids the whole background of images with fewer than ``min_gt_size``
background pixels; we do not. With no predicted component in the whole data set, ``ppv`` is 0.0 (sklearn's
zero-division convention) instead of a division by zero. ``oodscore.protocols.smiyc`` reproduces the SMIYC code
with its quirks, on top of :func:`region_values`.
"""
from __future__ import annotations

import copy
from typing import Any

import cv2
import numpy as np

from cocodag.arrays import to_numpy
from cocodag.streaming import StreamingState
from oodscore import OodscoreError
from oodscore.metrics import PixelMetrics
from oodscore.options import COMPONENT_RULE_CHOICES

__all__ = ["ComponentMetrics", "component_metrics", "frame_components", "region_values", "check_rule", "TRACKS", "TAUS",
           "RULES"]

#: track -> (min predicted component size, min ground-truth component size), SMIYC's published settings
TRACKS = {"anomaly": (500, 100), "obstacle": (50, 10)}
TAUS = np.linspace(0.25, 0.75, 11)
#: comparison of a score with the threshold: "ge" = ``score >= t`` (ours, default), "gt" = ``score > t`` (SMIYC);
#: the choices of ``--component-rule``, defined once in :mod:`oodscore.options`
RULES = COMPONENT_RULE_CHOICES


def _frame_map(x, name: str) -> np.ndarray:
    """One frame's (H, W) map as a numpy array (a (1, H, W) one is squeezed); one line otherwise."""
    x = to_numpy(x, name)
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise OodscoreError(f"{name}: expected one (H, W) map per frame, got shape {x.shape}")
    return x


def check_rule(rule: str | None = None, strict: bool = False) -> str:
    """The comparison rule, ``"ge"`` (``score >= t``) or ``"gt"`` (``score > t``); ``strict=True`` is ``"gt"``."""
    if rule is None:
        return "gt" if strict else "ge"
    if rule not in RULES:
        raise OodscoreError(f"component rule {rule!r}: expected ge (score >= threshold) or gt (score > threshold)")
    if strict and rule == "ge":
        raise OodscoreError("component rule 'ge' contradicts strict=True (strict means 'gt')")
    return rule


def _components(mask: np.ndarray):
    """8-connected components of a boolean mask: (label map int32, areas indexed by label, 0 = background)."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return lab, stats[:, cv2.CC_STAT_AREA].astype(np.int64), n


def pred_components(pred: np.ndarray, min_pred_size: int) -> tuple[np.ndarray, int]:
    """Predicted components of a boolean map, those under ``min_pred_size`` px dropped (sizes over the whole map):
    (label map renumbered 1..n, 0 = none; n)."""
    plab, parea, pn = _components(pred)
    keep = parea >= min_pred_size
    keep[0] = False
    pmap = np.zeros(pn, np.int64)
    pmap[keep] = np.arange(1, int(keep.sum()) + 1)
    return pmap[plab], int(keep.sum())


def gt_components(gt: np.ndarray, min_gt_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Ground-truth components of a boolean map: (label map renumbered 1..n over the kept ones, 0 = none;
    boolean map of the pixels of components under ``min_gt_size`` px, which become void; n)."""
    glab, garea, gn = _components(gt)
    small = garea < min_gt_size
    small[0] = False
    gmap = np.zeros(gn, np.int64)
    kept = ~small & (np.arange(gn) > 0)
    gmap[kept] = np.arange(1, int(kept.sum()) + 1)
    return gmap[glab], small[glab], int(kept.sum())


def region_values(g: np.ndarray, p: np.ndarray, ng: int, npred: int) -> tuple[np.ndarray, np.ndarray]:
    """sIoU of each GT component and PPV of each predicted component present, from the evaluation region's pixels.

    ``g`` / ``p``: GT / predicted component ids (0 = none) of the region's pixels, ids ``1..ng`` / ``1..npred``.
    A predicted component with no pixel in the region is not counted (the SMIYC code sees only the region).
    """
    psize = np.bincount(p, minlength=npred + 1)            # |j| inside the region
    pgt = np.bincount(p[g > 0], minlength=npred + 1)       # |j ∩ GT|
    gsize = np.bincount(g, minlength=ng + 1)               # |k|
    both = (g > 0) & (p > 0)
    pair = np.unique(g[both] * (npred + 1) + p[both])      # (k, j) pairs that touch
    pk, pj = pair // (npred + 1), pair % (npred + 1)
    inter = np.bincount(g[both], minlength=ng + 1)         # |k ∩ K̂|: pixels of k covered by any prediction
    # |K̂| - |A| - |k ∩ K̂| = pixels of K̂ outside every GT component (K̂'s pixels on GT are on k or in A)
    off_gt = np.bincount(pk, weights=(psize - pgt)[pj], minlength=ng + 1)
    siou = inter[1:] / (gsize[1:] + off_gt[1:])
    present = psize[1:] > 0
    ppv = pgt[1:][present] / psize[1:][present]
    return siou.astype(np.float64), ppv.astype(np.float64)


def frame_components(score_map, label_map, threshold: float, min_pred_size: int, min_gt_size: int,
                     strict: bool = False, rule: str | None = None):
    """One frame's per-component values: (sIoU of each GT component, PPV of each predicted component).

    ``rule``: ``"ge"`` (default) predicts ``score >= threshold``, ``"gt"`` (or ``strict=True``) ``score > threshold``.
    Public so that reports can show per-frame values; ``ComponentMetrics`` aggregates them.
    """
    rule = check_rule(rule, strict)
    s = _frame_map(score_map, "score_map")
    y = _frame_map(label_map, "label_map")
    if s.shape != y.shape:
        raise OodscoreError(f"score_map/label_map: shape mismatch, {s.shape} vs {y.shape}")
    valid = (y == 0) | (y == 1)
    if not np.isfinite(s[valid]).all():
        raise OodscoreError("score_map: non-finite (NaN/inf) values on non-void pixels")
    with np.errstate(invalid="ignore"):  # NaN scores on void pixels are allowed and never predicted
        pred = (s > threshold) if rule == "gt" else (s >= threshold)
    pred &= valid
    plab, npred = pred_components(pred, min_pred_size)
    glab, small, ng = gt_components(y == 1, min_gt_size)
    region = valid & ~small
    return region_values(glab[region], plab[region], ng, npred)


def check_track_threshold(track: str, threshold) -> float:
    """Validate a component track name and a pixel threshold; returns the threshold as a finite float."""
    if track not in TRACKS:
        raise OodscoreError(f"track: expected one of {sorted(TRACKS)}, got {track!r}")
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise OodscoreError(f"threshold: expected a real number, got {threshold!r}") from None
    if not np.isfinite(t):
        raise OodscoreError(f"threshold: expected a finite number, got {t}")
    return t


#: the additive totals of a component accumulator (ours and SMIYC's): merging two is adding these
_TOTALS = ("_tp", "_fn", "_fp", "_siou_sum", "_ppv_sum", "n_gt", "n_pred", "n_frames")


def add_totals(state: Any, other: Any) -> None:
    """Fold ``other``'s component totals into ``state`` (same settings, checked by the caller)."""
    for name in _TOTALS:
        setattr(state, name, getattr(state, name) + getattr(other, name))


class ComponentMetrics(StreamingState):
    """Streaming SegmentMeIfYouCan component metrics: ``update(score_map, label_map)`` per frame, then ``compute()``.

    A state that has seen one frame holds that frame's counts and sums; merging such states in frame order gives
    exactly the state ``update`` with the frames in that order gives (what worker processes do).

    Parameters
    ----------
    threshold : float
        Pixel threshold; ``score >= threshold`` is predicted anomalous (typically the F1-optimal pixel threshold).
    track : {"anomaly", "obstacle"}
        Size-filter preset (predicted / GT minimum sizes 500 / 100 or 50 / 10).
    min_pred_size, min_gt_size : int, optional
        Override the preset's sizes.
    strict : bool
        Use ``score > threshold`` (the SMIYC code's comparison) instead of ``>=``; the same as ``rule="gt"``.
    rule : {"ge", "gt"}, optional
        ``"ge"`` (default): ``score >= threshold`` is predicted anomalous; ``"gt"``: ``score > threshold``.
    """

    def __init__(self, threshold: float, track: str = "anomaly", min_pred_size: int | None = None,
                 min_gt_size: int | None = None, strict: bool = False, rule: str | None = None):
        t = check_track_threshold(track, threshold)
        dp, dg = TRACKS[track]
        self.threshold = t
        self.track = track
        self.min_pred_size = dp if min_pred_size is None else int(min_pred_size)
        self.min_gt_size = dg if min_gt_size is None else int(min_gt_size)
        self.rule = check_rule(rule, bool(strict))
        self.strict = self.rule == "gt"
        self.reset()

    def reset(self) -> None:
        """Forget every frame."""
        self._tp = np.zeros(TAUS.size, np.int64)
        self._fn = np.zeros(TAUS.size, np.int64)
        self._fp = np.zeros(TAUS.size, np.int64)
        self._siou_sum = 0.0
        self._ppv_sum = 0.0
        self.n_gt = 0
        self.n_pred = 0
        self.n_frames = 0

    def update(self, score_map, label_map) -> None:
        """Add one frame: (H, W) score map and (H, W) label map (numpy or torch)."""
        siou, ppv = frame_components(score_map, label_map, self.threshold, self.min_pred_size, self.min_gt_size,
                                     rule=self.rule)
        siou, ppv = np.asarray(siou, np.float64), np.asarray(ppv, np.float64)
        tp = (siou[None, :] >= TAUS[:, None]).sum(axis=1)
        self._tp += tp
        self._fn += siou.size - tp
        self._fp += (ppv[None, :] < TAUS[:, None]).sum(axis=1)
        self._siou_sum += float(siou.sum())
        self._ppv_sum += float(ppv.sum())
        self.n_gt += siou.size
        self.n_pred += ppv.size
        self.n_frames += 1

    def empty_copy(self) -> ComponentMetrics:
        """An empty accumulator of this class with these settings (e.g. to update with one frame in a worker)."""
        out = copy.copy(self)
        out.reset()
        return out

    def merge(self, other: ComponentMetrics) -> ComponentMetrics:
        """Fold another accumulator (same settings) in after this one's frames (the sums are float: merge frame
        states in frame order); returns self."""
        if not isinstance(other, ComponentMetrics):
            raise OodscoreError(f"merge: expected a ComponentMetrics, got {type(other).__name__}")
        mine = (self.threshold, self.min_pred_size, self.min_gt_size, self.strict)
        theirs = (other.threshold, other.min_pred_size, other.min_gt_size, other.strict)
        if mine != theirs:
            raise OodscoreError(f"merge: settings differ {mine} vs {theirs}")
        add_totals(self, other)
        return self

    def compute(self) -> dict:
        """``siou, ppv, mean_f1, f1_per_tau, n_gt, n_pred`` (+ ``taus, tp, fn, fp`` per τ, ``threshold``)."""
        if self.n_gt == 0:
            raise OodscoreError(f"label_maps: no ground-truth anomaly component of at least {self.min_gt_size} px "
                                f"in {self.n_frames} frame(s); component metrics are undefined")
        f1 = 2 * self._tp / (2 * self._tp + self._fn + self._fp)
        return {
            "siou": self._siou_sum / self.n_gt,
            "ppv": self._ppv_sum / self.n_pred if self.n_pred else 0.0,
            "mean_f1": float(f1.mean()),
            "f1_per_tau": [float(v) for v in f1],
            "n_gt": int(self.n_gt),
            "n_pred": int(self.n_pred),
            "taus": [float(t) for t in TAUS],
            "tp": [int(v) for v in self._tp],
            "fn": [int(v) for v in self._fn],
            "fp": [int(v) for v in self._fp],
            "threshold": self.threshold,
        }


def component_metrics(score_maps, label_maps, threshold: float | None = None, track: str = "anomaly",
                      **kwargs) -> dict:
    """Component metrics over a data set of frames (sequences or (N, H, W) arrays of score / label maps).

    ``threshold=None`` uses the F1-optimal pixel threshold of the same data (as SMIYC does); extra keyword
    arguments go to :class:`ComponentMetrics`.
    """
    if hasattr(score_maps, "ndim") and score_maps.ndim == 2:
        score_maps, label_maps = [score_maps], [label_maps]
    score_maps, label_maps = list(score_maps), list(label_maps)
    if len(score_maps) != len(label_maps):
        raise OodscoreError(f"score_maps/label_maps: {len(score_maps)} score maps vs {len(label_maps)} label maps")
    if not score_maps:
        raise OodscoreError("score_maps: no frames given")
    if threshold is None:
        pm = PixelMetrics()
        for s, y in zip(score_maps, label_maps):
            pm.update(s, y)
        threshold = pm.compute()["threshold"]
    m = ComponentMetrics(threshold, track=track, **kwargs)
    for s, y in zip(score_maps, label_maps):
        m.update(s, y)
    return m.compute()
