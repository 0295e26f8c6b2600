"""Component-level metrics of SegmentMeIfYouCan (DESIGN §4.5): sIoU, PPV and mean F1 over sIoU/PPV thresholds.

Per frame (labels 0 = ID, 1 = anomaly, anything else void):

1. Prediction ``P = score >= threshold`` (the pixel metrics' convention, so the F1-optimal pixel threshold means the
   same thing here; ``strict=True`` gives the SMIYC code's ``score > threshold``), with void pixels set to 0.
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
zero-division convention) instead of a division by zero.
"""
from __future__ import annotations

import cv2
import numpy as np

from oodscore import OodscoreError

__all__ = ["ComponentMetrics", "component_metrics", "TRACKS", "TAUS"]

#: track -> (min predicted component size, min ground-truth component size), SMIYC's published settings
TRACKS = {"anomaly": (500, 100), "obstacle": (50, 10)}
TAUS = np.linspace(0.25, 0.75, 11)


def _to_numpy(x, name: str) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise OodscoreError(f"{name}: expected one (H, W) map per frame, got shape {x.shape}")
    return x


def _components(mask: np.ndarray):
    """8-connected components of a boolean mask: (label map int32, areas indexed by label, 0 = background)."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return lab, stats[:, cv2.CC_STAT_AREA].astype(np.int64), n


def frame_components(score_map, label_map, threshold: float, min_pred_size: int, min_gt_size: int,
                     strict: bool = False):
    """One frame's per-component values: (sIoU of each GT component, PPV of each predicted component).

    Public so that reports can show per-frame values; ``ComponentMetrics`` aggregates them.
    """
    s = _to_numpy(score_map, "score_map")
    y = _to_numpy(label_map, "label_map")
    if s.shape != y.shape:
        raise OodscoreError(f"score_map/label_map: shape mismatch, {s.shape} vs {y.shape}")
    valid = (y == 0) | (y == 1)
    if not np.isfinite(s[valid]).all():
        raise OodscoreError("score_map: non-finite (NaN/inf) values on non-void pixels")
    with np.errstate(invalid="ignore"):  # NaN scores on void pixels are allowed and never predicted
        pred = (s > threshold) if strict else (s >= threshold)
    pred &= valid

    plab, parea, pn = _components(pred)
    keep = parea >= min_pred_size
    keep[0] = False
    pmap = np.zeros(pn, np.int64)
    pmap[keep] = np.arange(1, int(keep.sum()) + 1)
    plab = pmap[plab]

    glab, garea, gn = _components(y == 1)
    small = garea < min_gt_size
    small[0] = False
    region = valid & ~small[glab]
    gmap = np.zeros(gn, np.int64)
    gmap[~small & (np.arange(gn) > 0)] = np.arange(1, int((~small[1:]).sum()) + 1)
    glab = gmap[glab]

    g = glab[region]
    p = plab[region]
    ng = int(gmap.max()) if gn > 1 else 0
    npred = int(pmap.max()) if pn > 1 else 0
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
    present = psize[1:] > 0                                # a component entirely on voided GT does not count
    ppv = pgt[1:][present] / psize[1:][present]
    return siou.astype(np.float64), ppv.astype(np.float64)


class ComponentMetrics:
    """Streaming SegmentMeIfYouCan component metrics: ``update(score_map, label_map)`` per frame, then ``compute()``.

    Parameters
    ----------
    threshold : float
        Pixel threshold; ``score >= threshold`` is predicted anomalous (typically the F1-optimal pixel threshold).
    track : {"anomaly", "obstacle"}
        Size-filter preset (predicted / GT minimum sizes 500 / 100 or 50 / 10).
    min_pred_size, min_gt_size : int, optional
        Override the preset's sizes.
    strict : bool
        Use ``score > threshold`` (the SMIYC code's comparison) instead of ``>=``.
    """

    def __init__(self, threshold: float, track: str = "anomaly", min_pred_size: int | None = None,
                 min_gt_size: int | None = None, strict: bool = False):
        if track not in TRACKS:
            raise OodscoreError(f"track: expected one of {sorted(TRACKS)}, got {track!r}")
        try:
            t = float(threshold)
        except (TypeError, ValueError):
            raise OodscoreError(f"threshold: expected a real number, got {threshold!r}") from None
        if not np.isfinite(t):
            raise OodscoreError(f"threshold: expected a finite number, got {t}")
        dp, dg = TRACKS[track]
        self.threshold = t
        self.track = track
        self.min_pred_size = dp if min_pred_size is None else int(min_pred_size)
        self.min_gt_size = dg if min_gt_size is None else int(min_gt_size)
        self.strict = bool(strict)
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
                                     self.strict)
        tp = (siou[None, :] >= TAUS[:, None]).sum(axis=1)
        self._tp += tp
        self._fn += siou.size - tp
        self._fp += (ppv[None, :] < TAUS[:, None]).sum(axis=1)
        self._siou_sum += float(siou.sum())
        self._ppv_sum += float(ppv.sum())
        self.n_gt += siou.size
        self.n_pred += ppv.size
        self.n_frames += 1

    def merge(self, other: "ComponentMetrics") -> "ComponentMetrics":
        """Fold another accumulator (same settings) into this one; returns self."""
        mine = (self.threshold, self.min_pred_size, self.min_gt_size, self.strict)
        theirs = (other.threshold, other.min_pred_size, other.min_gt_size, other.strict)
        if mine != theirs:
            raise OodscoreError(f"merge: settings differ {mine} vs {theirs}")
        self._tp += other._tp
        self._fn += other._fn
        self._fp += other._fp
        self._siou_sum += other._siou_sum
        self._ppv_sum += other._ppv_sum
        self.n_gt += other.n_gt
        self.n_pred += other.n_pred
        self.n_frames += other.n_frames
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
        from oodscore.metrics import PixelMetrics

        pm = PixelMetrics()
        for s, y in zip(score_maps, label_maps):
            pm.update(s, y)
        threshold = pm.compute()["threshold"]
    m = ComponentMetrics(threshold, track=track, **kwargs)
    for s, y in zip(score_maps, label_maps):
        m.update(s, y)
    return m.compute()
