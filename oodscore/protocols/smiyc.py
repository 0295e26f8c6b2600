"""The ``smiyc`` protocol: SegmentMeIfYouCan's own metric code, as it runs with its pinned requirements.

Reference: https://github.com/SegmentMeIfYouCan/road-anomaly-benchmark at ``1c7804e`` (2023-08-24), with numpy
1.23.3 as its ``requirements.txt`` pins. Each step below names the official file and function it mirrors; where
exactness needs it the same numpy calls are made on the same dtypes, and the two places where numpy >= 1.25
behaves otherwise than numpy 1.23 are replayed by :mod:`oodscore.protocols._numpy123`. Not one line is copied;
``tests/oodscore/test_protocols.py`` compares with numbers recorded from the official code itself
(``tests/fixtures/official/record_protocols.py``).

Pixel metrics (``PixBinaryClass``; ``metrics/pixel_classification.py`` and ``pixel_classification_curves.py``):

1. ``evaluation.py`` ``Evaluation.save_output``: the map is stored as ``anomaly_p.astype(np.float16)``; everything
   below sees the float16 map (values past +-65504 would become inf: refused).
2. ``MetricPixelClassification.process_frame``: region ``label < 255``, positives ``label.astype(bool)``.
3. ``binary_confusion_matrix(bin_strategy="percentiles", num_bins=768)``, per frame: edges = ``[vmin - eps,
   vmax + eps]`` (``eps = max(1e-2 * (vmax - vmin), 1e-2)``, float64 under numpy 1.23) + ``np.quantile`` of each
   class's float16 values at ``min(384, n)`` levels, ``np.unique``; ``np.histogram`` per class; every bin counts at
   its lower edge.
4. ``aggregate_dynamic_bins``: all frames' (lower edge, tp, fp) entries, ``np.argsort(edges)[::-1]``, cumulative
   sums. ``curves_from_cmats``: keeps index 0 and the last index of each run of equal thresholds. Index 0 is the
   first entry of the descending order alone: when several frames share the top threshold it is *one* frame's
   count (which one is numpy 1.23's introsort tie order; :func:`~oodscore.protocols._numpy123.argsort_last`).
   The other kept points are the complete counts at each distinct threshold, so they are computed by grouping
   (``np.unique``), without a full sort.
5. ``curves_from_cmats``: the origin is prepended (threshold ``max + 1``), precision 1 where nothing is predicted,
   ``AP = sum(diff(recall) * precision[1:])``, ``AUROC = trapz(tpr, fpr)``, ``FPR95 = fpr[searchsorted(tpr, .95)]``
   (1.0 if never reached), best F1 ``nanargmax(2tp / (2tp + fp + fn))`` and its threshold.

Component metrics (``SegEval-AnomalyTrack`` / ``-ObstacleTrack``; ``metrics/instance_segmentation.py``):

1. ``MetricSegment.get_thresh_p_from_curve``: the best-F1 threshold above, read back from HDF5 as ``np.float64``.
2. ``default_instancer``: ``anomaly_p > thresh_p`` on the float16 map (numpy 1.23 compares in float16), void
   pixels unpredicted, 8-connected components (``scipy.ndimage.label``; cv2 here, the same sets, renumbered in
   raster order as scipy numbers them); predicted components under 500 / 50 px dropped (sizes over the frame);
   GT components under 100 / 10 px voided, and so is the *background* (component 0 of its loop: every pixel not
   labelled 1, void included) when it has fewer pixels than that.
3. ``segment_metrics``: sIoU per GT component, precision per predicted component, TP/FN/FP per τ in
   ``linspace(0.25, 0.75, 11)``; ``MetricSegment.aggregate``: means over all components (NaN when there are none),
   ``F1(τ)`` from the summed counts, ``f1_mean`` accumulated over τ then divided by 11.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cocodag.streaming import StreamingState
from oodscore import OodscoreError
from oodscore.components import (
    TAUS,
    TRACKS,
    _frame_map,
    add_totals,
    check_rule,
    check_track_threshold,
    gt_components,
    pred_components,
    region_values,
)
from oodscore.protocols._numpy123 import argsort_last, legacy_threshold

__all__ = [
    "NUM_BINS",
    "FrameBins",
    "SmiycComponents",
    "SmiycPixels",
    "curve_metrics",
    "frame_bins",
    "instancer",
    "smiyc_frame",
]

#: ``PixBinaryClass``'s ``num_bins`` (``MetricPixelClassification.configs``)
NUM_BINS = 768
# numpy < 2.0 has only trapz (same formula), which numpy 2's type stubs no longer declare
_trapz = getattr(np, "trapezoid", None) or np.trapz  # type: ignore[attr-defined]
_F16_MAX = float(np.finfo(np.float16).max)


@dataclass
class FrameBins:
    """One frame's binned counts as ``binary_confusion_matrix`` leaves them: lower edges (descending) with the
    positive / negative pixel counts of their bins, and the frame's class sizes."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    num_pos: int
    num_neg: int


def smiyc_frame(score, label) -> tuple[np.ndarray, np.ndarray]:
    """(float16 score map, uint8 label map with void = 255) of one frame, as the official code stores and reads them.

    ``Evaluation.save_output``: ``anomaly_p.astype(np.float16)``. Labels: ours (0 ID, 1 anomaly, anything else
    void) become the SMIYC data sets' 0 / 1 / 255.
    """
    s = _frame_map(score, "score_map")
    y = _frame_map(label, "label_map")
    if s.shape != y.shape:
        raise OodscoreError(f"score_map/label_map: shape mismatch, {s.shape} vs {y.shape}")
    lab = np.where((y == 0) | (y == 1), y, 255).astype(np.uint8)
    valid = lab < 255
    if not np.isfinite(s[valid]).all():
        raise OodscoreError("score_map: non-finite (NaN/inf) values on non-void pixels")
    with np.errstate(over="ignore"):
        value = s.astype(np.float16)
    if not np.isfinite(value[valid]).all():
        raise OodscoreError(f"score_map: scores beyond float16's range (|s| > {_F16_MAX:g}) on non-void pixels; "
                            "the smiyc protocol stores maps as float16 (its save_output), rescale the scores")
    return value, lab


def _outer_edges(prob: np.ndarray) -> tuple[np.float64, np.float64]:
    """``binary_confusion_matrix``'s ``[vmin - eps, vmax + eps]`` as numpy 1.23 computes them: ``vmax - vmin`` of
    two float16 scalars is float16, ``vrange * 1e-2`` and everything after it is float64 (scalar promotion)."""
    vmin, vmax = np.min(prob), np.max(prob)
    with np.errstate(over="ignore"):
        vrange = vmax - vmin
    eps = np.maximum(np.float64(vrange) * 1e-2, 1e-2)
    return np.float64(vmin) - eps, np.float64(vmax) + eps


def frame_bins(value: np.ndarray, lab: np.ndarray) -> FrameBins | None:
    """``MetricPixelClassification.process_frame`` + ``binary_confusion_matrix(bin_strategy='percentiles')``.

    ``value``: the float16 map, ``lab``: 0 / 1 / 255 (from :func:`smiyc_frame`). None for a frame without a
    valid pixel (the official code fails there: ``np.min`` of an empty array).
    """
    roi = lab < 255
    prob = value[roi]
    if prob.size == 0:
        return None
    gt = lab[roi].astype(bool)
    pos, neg = prob[gt], prob[~gt]
    edges: list = [list(_outer_edges(prob))]
    for part in (pos, neg):
        if part.size:
            edges.append(np.quantile(part, np.linspace(0, 1, min(NUM_BINS // 2, part.size))))
    bins = np.unique(np.concatenate(edges))
    tp_rel, _ = np.histogram(pos, bins=bins, range=None)
    fp_rel, bin_edges = np.histogram(neg, bins=bins, range=None)
    return FrameBins(bin_edges[::-1][1:].copy(), tp_rel[::-1].astype(np.int64), fp_rel[::-1].astype(np.int64),
                     int(pos.size), int(neg.size))


def _kept_points(thr: np.ndarray, tp_rel: np.ndarray, fp_rel: np.ndarray):
    """(tp, fp, thresholds) at the points ``curves_from_cmats`` keeps from ``aggregate_dynamic_bins``' cumsums.

    Point 0: the first entry of ``np.argsort(thr)[::-1]`` alone (numpy 1.23's tie order). Then one point per
    distinct threshold, descending, with the counts of every entry at or above it: the run ends of the sorted
    order, whose cumulative sums do not depend on the order inside a run (float64 sums of integers, exact).
    """
    first = argsort_last(thr)
    u, inv = np.unique(thr, return_inverse=True)
    tps = np.cumsum(np.bincount(inv, weights=tp_rel.astype(np.float64), minlength=u.size)[::-1])
    fps = np.cumsum(np.bincount(inv, weights=fp_rel.astype(np.float64), minlength=u.size)[::-1])
    tp = np.concatenate([[float(tp_rel[first])], tps])
    fp = np.concatenate([[float(fp_rel[first])], fps])
    return tp, fp, np.concatenate([[thr[first]], u[::-1]])


def _close_curve(tp, fp, fn, tn, thresholds):
    """``curves_from_cmats``: the origin first (threshold ``max + 1``) and the all-positive point last
    (threshold ``max - 1``, sic) unless present."""
    num_pos, num_neg = tp[0] + fn[0], fp[0] + tn[0]
    if tp[0] != 0 or fp[0] != 0:
        tp, fp = np.concatenate([[0], tp]), np.concatenate([[0], fp])
        fn, tn = np.concatenate([[num_pos], fn]), np.concatenate([[num_neg], tn])
        thresholds = np.concatenate([[float(np.max(thresholds)) + 1], thresholds])
    if tp[-1] != num_pos or fp[-1] != num_neg:
        tp, fp = np.concatenate([tp, [num_pos]]), np.concatenate([fp, [num_neg]])
        fn, tn = np.concatenate([fn, [0]]), np.concatenate([tn, [0]])
        thresholds = np.concatenate([thresholds, [float(np.max(thresholds)) - 1]])
    return tp, fp, fn, tn, thresholds


def curve_metrics(tp, fp, num_pos: int, num_neg: int, thresholds) -> dict:
    """``curves_from_cmats`` on the kept points: curves, AP, AUROC, FPR95, best F1 (``pixel_classification_curves``)."""
    tp, fp, fn, tn, thr = _close_curve(tp, fp, num_pos - tp, num_neg - fp, thresholds)
    tpr, fpr = tp / (tp + fn), fp / (fp + tn)
    n_preds = tp + fp
    precision = np.ones(tp.shape[0], np.float64)
    precision[n_preds > 0] = tp[n_preds > 0] / n_preds[n_preds > 0]
    recall = tp / (tp + fn)
    f1 = (2 * tp) / (2 * tp + fp + fn)
    i95 = np.searchsorted(tpr, 0.95)
    ix = int(np.nanargmax(f1))
    return {
        "auroc": float(_trapz(tpr, fpr)), "ap": float(np.sum(np.diff(recall) * precision[1:])),
        "fpr95": float(fpr[i95]) if i95 < tpr.shape[0] else 1.0,
        "threshold": float(thr[ix]), "f1": float(f1[ix]), "precision": float(precision[ix]),
        "recall": float(recall[ix]), "fpr": float(fpr[ix]),
        "curve": {"fpr": fpr, "tpr": tpr, "precision": precision, "recall": recall, "thresholds": thr},
    }


class SmiycPixels(StreamingState):
    """Streaming ``PixBinaryClass``: ``update(score, label)`` per frame, in data set order, then ``compute()``.

    Memory: at most 769 (edge, tp, fp) entries per frame (the binned cmats), independent of the frame size.
    Frames are merged in the order they were added (``run_metric_single``'s order; the official parallel runner
    merges in ``imap_unordered`` completion order, which only moves index 0 of the curve).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every frame."""
        self._bins: list[FrameBins] = []
        self.n_frames = 0

    def update(self, score, label) -> None:
        """Add one frame: (H, W) score map and label map (numpy or torch; labels 0 ID, 1 anomaly, else void); a
        frame without a valid pixel is counted and adds nothing."""
        bins = frame_bins(*smiyc_frame(score, label))
        self.n_frames += 1
        if bins is not None:
            self._bins.append(bins)

    def merge(self, other: SmiycPixels) -> SmiycPixels:
        """Append another accumulator's frames after this one's; returns self."""
        if not isinstance(other, SmiycPixels):
            raise OodscoreError(f"merge: expected a SmiycPixels, got {type(other).__name__}")
        self._bins.extend(other._bins)
        self.n_frames += other.n_frames
        return self

    def empty_copy(self) -> SmiycPixels:
        """An empty accumulator (e.g. to update with one frame in a worker)."""
        return type(self)()

    @property
    def n_distinct(self) -> int:
        """Stored (edge, tp, fp) entries: at most 769 per frame."""
        return sum(b.thresholds.size for b in self._bins)

    def _result(self) -> dict:
        num_pos = sum(b.num_pos for b in self._bins)
        num_neg = sum(b.num_neg for b in self._bins)
        if num_pos == 0 or num_neg == 0:
            raise OodscoreError(f"labels: {num_pos} anomaly and {num_neg} in-distribution pixels in "
                                f"{self.n_frames} frame(s); the smiyc pixel metrics need both")
        thr = np.concatenate([b.thresholds for b in self._bins])
        tp, fp, kept = _kept_points(thr, np.concatenate([b.tp for b in self._bins]),
                                    np.concatenate([b.fp for b in self._bins]))
        out = curve_metrics(tp, fp, num_pos, num_neg, kept)
        out.update(n_pos=int(num_pos), n_neg=int(num_neg))
        return out

    def compute(self) -> dict:
        """``auroc, ap, fpr95, threshold, f1, precision, recall, fpr, n_pos, n_neg`` (``fpr95_interp``: None, the
        official code has none) and ``protocol``; ``threshold`` is the best-F1 bin edge the component metrics use."""
        out = self._result()
        out.pop("curve")
        out.update(fpr95_interp=None, protocol="smiyc")
        return out

    def curves(self, max_points: int = 2000) -> dict:
        """The official curve (origin first, threshold ``max + 1``), at most ``max_points`` points, ends kept."""
        c = self._result()["curve"]
        n = c["tpr"].size
        idx = np.unique(np.round(np.linspace(0, n - 1, min(n, max(int(max_points), 2)))).astype(np.int64))
        return {k: np.asarray(v, np.float64)[idx] for k, v in c.items()}


def _raster_ids(lab: np.ndarray, n: int) -> np.ndarray:
    """Renumber components 1..n in the raster order of their first pixel (``scipy.ndimage.label``'s numbering,
    which fixes the order ``segment_metrics`` sums the per-component values in)."""
    if n < 2:
        return lab
    flat = lab.ravel()
    nz = np.flatnonzero(flat)
    _, first = np.unique(flat[nz], return_index=True)
    rank = np.zeros(n + 1, np.int64)
    rank[1 + np.argsort(nz[first], kind="stable")] = np.arange(1, n + 1)
    return rank[lab]


def instancer(value: np.ndarray, lab: np.ndarray, thresh, rule: str, min_pred_size: int, min_gt_size: int):
    """``default_instancer`` + the region ``segment_metrics`` sees: (GT ids, predicted ids) of the region's pixels,
    number of GT / predicted components. ``thresh``: the threshold as :func:`legacy_threshold` casts it."""
    with np.errstate(invalid="ignore"):
        seg = (value > thresh) if rule == "gt" else (value >= thresh)
    plab, npred = pred_components(seg & (lab != 255), min_pred_size)
    gt = lab == 1
    glab, small, ng = gt_components(gt, min_gt_size)
    region = (lab != 255) & ~small
    if np.count_nonzero(~gt) < min_gt_size:   # the size loop's component 0: every pixel not labelled 1
        region &= gt
    plab, glab = _raster_ids(plab, npred), _raster_ids(glab, ng)
    return glab[region], plab[region], ng, npred


class SmiycComponents(StreamingState):
    """Streaming ``SegEval-AnomalyTrack`` / ``SegEval-ObstacleTrack`` at a given pixel threshold.

    Parameters
    ----------
    threshold : float
        The pixel threshold, normally :meth:`SmiycPixels.compute`'s ``threshold`` (the binned best-F1 edge).
    track : {"anomaly", "obstacle"}
        Size filters 500 / 100 or 50 / 10 px (predicted / GT), as the two official configs.
    rule : {"gt", "ge"}
        ``"gt"`` (official): ``score > threshold``; ``"ge"``: ``score >= threshold`` (a deviation, on request).
    """

    def __init__(self, threshold: float, track: str = "anomaly", rule: str = "gt"):
        t = check_track_threshold(track, threshold)
        self.threshold, self.track, self.rule = t, track, check_rule(rule)
        self.min_pred_size, self.min_gt_size = TRACKS[track]
        self._thresh = legacy_threshold(np.float64(t))   # get_thresh_p_from_curve: an np.float64 from HDF5
        self.reset()

    def reset(self) -> None:
        """Forget every frame."""
        self._tp = np.zeros(TAUS.size, np.int64)
        self._fn = np.zeros(TAUS.size, np.int64)
        self._fp = np.zeros(TAUS.size, np.int64)
        self._siou_sum = self._ppv_sum = 0.0
        self.n_gt = self.n_pred = self.n_frames = 0

    def update(self, score, label) -> None:
        """Add one frame: (H, W) score map and label map (numpy or torch); ``segment_metrics``' per-τ counts, the
        sums in frame order."""
        value, lab = smiyc_frame(score, label)
        siou, ppv = region_values(*instancer(value, lab, self._thresh, self.rule, self.min_pred_size,
                                             self.min_gt_size))
        siou, ppv = np.asarray(siou, np.float64), np.asarray(ppv, np.float64)
        self._tp += [np.count_nonzero(siou >= t) for t in TAUS]
        self._fn += [np.count_nonzero(siou < t) for t in TAUS]
        self._fp += [np.count_nonzero(ppv < t) for t in TAUS]
        self._siou_sum += np.sum(siou)
        self._ppv_sum += np.sum(ppv)
        self.n_gt += siou.size
        self.n_pred += ppv.size
        self.n_frames += 1

    def merge(self, other: SmiycComponents) -> SmiycComponents:
        """Fold another accumulator (same settings) in after this one's frames (the sums are float: merge frame
        states in frame order); returns self."""
        if not isinstance(other, SmiycComponents):
            raise OodscoreError(f"merge: expected a SmiycComponents, got {type(other).__name__}")
        mine, theirs = (self.threshold, self.track, self.rule), (other.threshold, other.track, other.rule)
        if mine != theirs:
            raise OodscoreError(f"merge: settings differ {mine} vs {theirs}")
        add_totals(self, other)
        return self

    def empty_copy(self) -> SmiycComponents:
        """An empty accumulator with these settings (e.g. to update with one frame in a worker)."""
        return type(self)(self.threshold, self.track, self.rule)

    def compute(self) -> dict:
        """``MetricSegment.aggregate``: ``siou, ppv, mean_f1, f1_per_tau, n_gt, n_pred, taus, tp, fn, fp,
        threshold, track, rule``; ``siou`` / ``ppv`` are NaN without GT / predicted components, as officially."""
        den = 2 * self._tp + self._fn + self._fp
        if not den.all():
            raise OodscoreError(f"label_maps: no ground-truth component of at least {self.min_gt_size} px and no "
                                f"predicted component in {self.n_frames} frame(s); F1 is 0/0 (the official code "
                                "raises ZeroDivisionError)")
        f1 = [float(2 * tp) / float(d) for tp, d in zip(self._tp, den)]
        f1_mean = 0.0
        for v in f1:
            f1_mean += v
        return {
            "siou": float(self._siou_sum / self.n_gt) if self.n_gt else float("nan"),
            "ppv": float(self._ppv_sum / self.n_pred) if self.n_pred else float("nan"),
            "mean_f1": f1_mean / TAUS.size, "f1_per_tau": f1, "n_gt": int(self.n_gt), "n_pred": int(self.n_pred),
            "taus": [float(t) for t in TAUS], "tp": [int(v) for v in self._tp], "fn": [int(v) for v in self._fn],
            "fp": [int(v) for v in self._fp], "threshold": self.threshold, "track": self.track, "rule": self.rule,
        }
