"""meta-ood's segment search and MetaSeg segment metrics, vectorized (the input of the meta classifier,
:mod:`oodscore.meta`).

The definitions are meta-ood's code (``src/metaseg/metrics.pyx``: ``compute_metrics_components``,
``compute_metrics_mask``; ``meta_classification.py``: ``entropy_segments_mask``), with the same names and numbers,
computed with connected components and ``np.bincount`` instead of a per-pixel flood fill:

- **segments**: the 8-connected components of the OOD mask (normalized entropy >= t, void pixels removed),
  numbered from 1 in the raster order of their first pixel (the order of meta-ood's scan). A segment's *boundary*
  pixels have an 8-neighbour outside the mask; the image edge is no boundary. ``components`` holds +k on the
  interior and -k on the boundary of segment k (meta-ood's ``marked`` map).
- **heat maps** per pixel: entropy ``E`` (``sum p log(p + eps) / log(1/C)``, eps of float32), probability distance
  ``D = 1 - p_max + p_second`` and variation ratio ``V = 1 - p_max``, in float32 as meta-ood computes them. Per
  segment and heat map ``h``: mean ``h``, interior / boundary means ``h_in`` / ``h_bd``, variances ``h_var``,
  ``h_var_in``, ``h_var_bd`` (``E[x^2] - E[x]^2``), and the size-relative ``h_rel = h * S_rel``,
  ``h_rel_in = h_in * S_rel_in``, ``h_var_rel``, ``h_var_rel_in``. The ``_in`` metrics of a segment without
  interior are 0. Per-segment sums are float64 of the float32 values, as meta-ood's under its pinned numpy (< 2;
  numpy >= 2 would make its sums float32); the float32 heat maps are computed in meta-ood's order of operations,
  so the numbers agree to float64 rounding.
- **sizes**: ``S``, ``S_in``, ``S_bd``, ``S_rel = S / S_bd``, ``S_rel_in = S_in / S_bd``.
- ``cprob<c>``: the mean probability of class c; ``ndist<c>``: the share of class c (argmax) among the predictions
  of the segment's outside neighbours, counted over (boundary pixel, outside 8-neighbour) pairs with repetition;
  ``mean_x`` the mean *row*, ``mean_y`` the mean column.
- against the ground truth (``labels == 1``): ``iou`` is the adjusted IoU ``I / U`` with ``I`` the segment's
  anomaly pixels and ``U`` the segment plus the anomaly pixels outside every predicted segment that are 8-connected
  to it through such pixels (counted only when ``I > 0``, as meta-ood's search stops there), and ``iou0 = (I == 0)``:
  1 for a false-positive segment. Without labels both are -1 (meta-ood's value without ground truth).

meta-ood's dict also has ``prc``, always 0 and unused; it is left out. A segment covering the whole image has no
boundary: its ``S_rel`` and ``_bd`` metrics are inf / nan (meta-ood stops with a division by zero).

:func:`gt_segments` is ``compute_metrics_mask``'s search with the roles swapped (the ground-truth anomaly segments
against the predicted mask: ``iou0 = 1`` is a false negative); :class:`SegmentMetrics` accumulates frames.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from cocodag.arrays import to_numpy
from cocodag.streaming import StreamingState

from . import OodscoreError

__all__ = ["DEFAULT_THRESHOLD", "GT_METRIC_NAMES", "HEATMAPS", "GtOverlap", "SegmentMetrics", "SegmentTable",
           "entropy_mask", "gt_segments", "metric_names", "segment_metrics"]

#: meta-ood's entropy threshold (``config.py``)
DEFAULT_THRESHOLD = 0.7
#: the heat maps, in meta-ood's order
HEATMAPS = ("E", "D", "V")
#: the metrics :func:`gt_segments` returns (``compute_metrics_mask``'s that need no probabilities or label ids)
GT_METRIC_NAMES = ("iou", "iou0", "rec", "mean_x", "mean_y", "S", "S_in", "S_bd")
_VOID = 255
_ANOMALY = 1
_EPS32 = np.finfo(np.float32).eps
#: the 8 neighbours (row, column offset)
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def metric_names(num_classes: int) -> list[str]:
    """The MetaSeg names for ``num_classes`` classes, in the order of meta-ood's dict (without ``prc``)."""
    names = ["iou", "iou0", "mean_x", "mean_y"]
    for h in (*HEATMAPS, "S"):
        names += [h, f"{h}_in", f"{h}_bd", f"{h}_rel", f"{h}_rel_in"]
        if h != "S":
            names += [f"{h}_var", f"{h}_var_in", f"{h}_var_bd", f"{h}_var_rel", f"{h}_var_rel_in"]
    for c in range(num_classes):
        names += [f"cprob{c}", f"ndist{c}"]
    return names


# ------------------------------------------------------------------------------------------------- inputs
def _probs(probs: Any) -> np.ndarray:
    p = to_numpy(probs, "probs", kinds="f")
    if p.ndim != 3 or p.shape[0] < 2 or 0 in p.shape:
        raise OodscoreError(f"probs: expected softmax probabilities (C, H, W) with C >= 2, got shape {p.shape}")
    return p


def _threshold(t: Any) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)) or not 0 < float(t) <= 1:
        raise OodscoreError(f"entropy threshold {t!r}: expected a number in (0, 1] (meta-ood: {DEFAULT_THRESHOLD})")
    return float(t)


def _map(x: Any, name: str, shape: tuple[int, ...], kinds: str) -> np.ndarray:
    a = to_numpy(x, name, kinds=kinds)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.shape != shape:
        raise OodscoreError(f"{name}: expected shape {shape} (the frame's H, W), got {a.shape}")
    return a


def _mask(ood_mask: Any, labels: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """The segmented mask: ``ood_mask`` as bool with void removed, C-contiguous."""
    seg = _map(ood_mask, "ood_mask", shape, "biuf") != 0
    if labels is not None:
        seg &= labels != _VOID
    return np.ascontiguousarray(seg)


# ------------------------------------------------------------------------------------------------- search
def _raster_components(seg: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of ``seg``, numbered 1..n in raster order of their first pixel: (int32 map, n)."""
    n, lab = cv2.connectedComponents(seg.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    n -= 1
    if n > 1:
        # cv2 scans in blocks, so its numbering is not quite raster order. A component's first pixel has no
        # earlier 8-neighbour (up-left, up, up-right, left) in the mask; among those candidates, the first of
        # each label in raster order gives the order.
        p = np.pad(seg, ((1, 0), (1, 1)))
        cand = seg & ~p[:-1, :-2] & ~p[:-1, 1:-1] & ~p[:-1, 2:] & ~p[1:, :-2]
        cl = lab[cand]
        _, first = np.unique(cl, return_index=True)
        order = cl[np.sort(first)]
        if not np.array_equal(order, np.arange(1, n + 1)):
            rank = np.zeros(n + 1, np.int32)
            rank[order] = np.arange(1, n + 1, dtype=np.int32)
            lab = rank[lab]
    return lab, n


@dataclass
class _Search:
    """One mask's segments: label map, the segment pixels in raster order, boundary, (pixel, outside) pairs."""

    lab: np.ndarray        # (H, W) int32, 0 off the mask
    n: int
    flat: np.ndarray       # the mask's pixels (flat indices), raster order
    seg_of: np.ndarray     # their segment
    on_bd: np.ndarray      # whether each is a boundary pixel
    boundary: np.ndarray   # (H, W) bool
    pair_seg: np.ndarray   # per (boundary pixel, outside neighbour) pair: the segment
    pair_out: np.ndarray   # and the neighbour (flat index)
    size: np.ndarray       # (n + 1,) int64, [0] unused
    n_bd: np.ndarray

    @property
    def rows(self) -> np.ndarray:
        return self.flat // self.lab.shape[1]

    @property
    def cols(self) -> np.ndarray:
        return self.flat % self.lab.shape[1]


def _search(seg: np.ndarray) -> _Search:
    lab, n = _raster_components(seg)
    # boundary: a mask pixel whose 3x3 neighbourhood leaves the mask; erosion with a "mask" border, so the image
    # edge does not count
    eroded = cv2.erode(seg.view(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=1)
    boundary = seg & (eroded == 0)
    flat = np.flatnonzero(seg)
    seg_of = lab.reshape(-1)[flat]
    on_bd = boundary.reshape(-1)[flat]
    bflat, bseg = flat[on_bd], seg_of[on_bd]
    w = seg.shape[1]
    # the 8 neighbours through a copy padded with "mask" (no bounds checks; the image edge is no outside)
    padded = np.pad(seg, 1, constant_values=True).reshape(-1)
    bpad = bflat + (bflat // w) * 2 + w + 3           # (r, c) -> (r + 1) * (w + 2) + c + 1
    ps, po = [], []
    for dy, dx in _OFFSETS:
        out = ~padded[bpad + dy * (w + 2) + dx]
        ps.append(bseg[out])
        po.append(bflat[out] + dy * w + dx)
    size = np.bincount(seg_of, minlength=n + 1).astype(np.int64)
    n_bd = np.bincount(bseg, minlength=n + 1).astype(np.int64)
    return _Search(lab, n, flat, seg_of, on_bd, boundary, np.concatenate(ps), np.concatenate(po), size, n_bd)


def _components_map(s: _Search) -> np.ndarray:
    return np.where(s.boundary, -s.lab, s.lab)


def _intersection_union(s: _Search, seg: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """meta-ood's adjusted IoU parts per segment (index 1..n): ``I`` = the segment's pixels in ``other``;
    ``U`` = the segment + the pixels of ``other`` outside ``seg`` 8-connected to it through such pixels (when
    ``I > 0``: meta-ood stops its search of the union at the first of them otherwise)."""
    other_flat = other.reshape(-1)
    inter = np.bincount(s.seg_of[other_flat[s.flat]], minlength=s.n + 1).astype(np.int64)
    union = s.size.copy()
    touch = other_flat[s.pair_out]
    if touch.any():
        rest = np.ascontiguousarray(other & ~seg)
        nb, blab = cv2.connectedComponents(rest.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        blab = blab.reshape(-1)
        key = np.unique(s.pair_seg[touch].astype(np.int64) * nb + blab[s.pair_out[touch]])
        touched = np.zeros(nb, bool)
        touched[key % nb] = True
        # the areas of the touched components only (one pass over the image)
        area = np.bincount(blab[touched[blab]], minlength=nb).astype(np.int64)
        extra = np.bincount(key // nb, weights=area[key % nb], minlength=s.n + 1).astype(np.int64)
        union += np.where(inter > 0, extra, 0)
    return inter, union


# ------------------------------------------------------------------------------------------------- public
def entropy_mask(probs: Any, threshold: float = DEFAULT_THRESHOLD, labels: Any = None) -> np.ndarray:
    """meta-ood's OOD mask (``entropy_segments_mask``): normalized softmax entropy ``>= threshold``, void pixels
    (``labels == 255``) removed. ``probs``: (C, H, W). Returns (H, W) bool.

    The entropy is ``scipy.stats.entropy`` over the classes (probabilities renormalized, ``0 log 0 = 0``) divided
    by ``log C``, computed as meta-ood's pinned numpy / scipy compute it from float32 probabilities: float32 sums
    class after class, each term ``-q log q`` in double rounded to float32 (``scipy.special.entr``), a float32
    division and comparison — so that no pixel near the threshold falls on the other side.
    """
    p = _probs(probs)
    t = _threshold(threshold)
    total = p[0].astype(np.float32)          # a copy
    for k in range(1, p.shape[0]):
        total += p[k]
    ent = np.zeros(p.shape[1:], np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(p.shape[0]):        # one class at a time: no (C, H, W) temporary
            q = (p[k].astype(np.float32) / total).astype(np.float64)
            ent += np.where(q == 0, 0.0, -q * np.log(q)).astype(np.float32)
    mask = ent / np.float32(np.log(p.shape[0])) >= np.float32(t)
    if labels is not None:
        mask &= _map(labels, "labels", p.shape[1:], "biu") != _VOID
    return mask


def segment_metrics(probs: Any, ood_mask: Any, labels: Any = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The segments of ``ood_mask`` and their MetaSeg metrics (meta-ood's ``compute_metrics_components``).

    Parameters
    ----------
    probs : (C, H, W) softmax probabilities (read as float32, as meta-ood does)
    ood_mask : (H, W) bool, the OOD mask (:func:`entropy_mask`); void pixels are removed here too
    labels : (H, W) uint8, 0 in-distribution, 1 anomaly, 255 void; None: no ground truth (``iou``, ``iou0`` = -1)

    Returns
    -------
    metrics : MetaSeg name (:func:`metric_names`) -> (n,) float64, segment k at index k - 1
    components : (H, W) int32, +k on the interior and -k on the boundary of segment k, 0 elsewhere
    """
    p = _probs(probs)
    c, shape = p.shape[0], p.shape[1:]
    lab = None if labels is None else _map(labels, "labels", shape, "biu")
    seg = _mask(ood_mask, lab, shape)
    s = _search(seg)
    n = s.n
    if n == 0:
        return {m: np.zeros(0) for m in metric_names(c)}, np.zeros(shape, np.int32)
    out: dict[str, np.ndarray] = {}
    if lab is None:
        out["iou"] = out["iou0"] = np.full(n, -1.0)
    else:
        inter, union = _intersection_union(s, seg, lab == _ANOMALY)
        out["iou"] = inter[1:] / union[1:]
        out["iou0"] = (inter[1:] == 0).astype(np.float64)
    size, n_bd = s.size[1:].astype(np.float64), s.n_bd[1:].astype(np.float64)
    n_in = size - n_bd
    out["mean_x"] = np.bincount(s.seg_of, weights=s.rows, minlength=n + 1)[1:] / size
    out["mean_y"] = np.bincount(s.seg_of, weights=s.cols, minlength=n + 1)[1:] / size

    # (C, pixels of the mask), C-contiguous: the class sums of E then run class after class, as meta-ood's
    # reduction over the class axis of a (C, H, W) array does (a pairwise sum would differ in the last bit)
    pm = _gather(p, s.flat)
    with np.errstate(divide="ignore", invalid="ignore"):
        s_rel, s_rel_in = size / n_bd, n_in / n_bd
        key = 2 * s.seg_of.astype(np.int64) + s.on_bd                  # (segment, boundary?) bins
        for h, values in zip(HEATMAPS, _heatmaps(pm)):
            v = values.astype(np.float64)
            sums = np.bincount(key, weights=v, minlength=2 * n + 2).reshape(-1, 2)[1:]
            squares = np.bincount(key, weights=v * v, minlength=2 * n + 2).reshape(-1, 2)[1:]
            mean = sums.sum(1) / size
            mean_in = np.where(n_in > 0, sums[:, 0] / np.maximum(n_in, 1), 0.0)
            mean_bd = sums[:, 1] / n_bd
            var = squares.sum(1) / size - mean ** 2
            var_in = np.where(n_in > 0, squares[:, 0] / np.maximum(n_in, 1) - mean_in ** 2, 0.0)
            var_bd = squares[:, 1] / n_bd - mean_bd ** 2
            out.update({h: mean, f"{h}_in": mean_in, f"{h}_bd": mean_bd, f"{h}_rel": mean * s_rel,
                        f"{h}_rel_in": mean_in * s_rel_in, f"{h}_var": var, f"{h}_var_in": var_in,
                        f"{h}_var_bd": var_bd, f"{h}_var_rel": var * s_rel, f"{h}_var_rel_in": var_in * s_rel_in})
    out.update(S=size, S_in=n_in, S_bd=n_bd, S_rel=s_rel, S_rel_in=s_rel_in)

    # the outside neighbours' predicted classes (argmax, first maximum as np.argmax), one count per pair
    pred = _argmax(_gather(p, s.pair_out))
    ndist = np.bincount(s.pair_seg.astype(np.int64) * c + pred, minlength=(n + 1) * c).reshape(n + 1, c)[1:]
    ndist = ndist / np.maximum(ndist.sum(1, keepdims=True), 1)
    for k in range(c):
        out[f"cprob{k}"] = np.bincount(s.seg_of, weights=pm[k], minlength=n + 1)[1:] / size
        out[f"ndist{k}"] = ndist[:, k]
    return {m: np.asarray(out[m], dtype=np.float64) for m in metric_names(c)}, _components_map(s)


def _gather(p: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """``p[:, pixels]`` as a C-contiguous (C, n) float32 array, one class at a time."""
    out = np.empty((p.shape[0], flat.size), np.float32)
    for k in range(p.shape[0]):
        if p.dtype == np.float32:
            np.take(p[k].reshape(-1), flat, out=out[k])
        else:
            out[k] = p[k].reshape(-1)[flat]
    return out


def _argmax(pm: np.ndarray) -> np.ndarray:
    """``np.argmax(pm, axis=0)`` (the first maximum) of a (C, n) array, class after class."""
    best, arg = pm[0].copy(), np.zeros(pm.shape[1], np.int64)
    for k in range(1, pm.shape[0]):
        better = pm[k] > best
        arg[better] = k
        np.maximum(best, pm[k], out=best)
    return arg


def _heatmaps(pm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """E, D, V (float32) of (C, n) probabilities, as meta-ood's ``entropy``, ``probdist``, ``varrat``."""
    c = pm.shape[0]
    # float32 throughout, as numpy 1.x runs meta-ood's ``entropy`` (the float64 divisor is cast to float32)
    e = (pm * np.log(pm + _EPS32)).sum(axis=0) / np.float32(np.log(1.0 / c))
    top1 = pm[0].copy()
    top2 = np.full_like(top1, -np.inf)
    for row in pm[1:]:   # the two largest values (equal ones counted twice, as argsort's last two)
        np.maximum(top2, np.minimum(top1, row), out=top2)
        np.maximum(top1, row, out=top1)
    # meta-ood's Cython writes ``1.0 - p_max + p_second``: double arithmetic, rounded to float32 once
    t1 = top1.astype(np.float64)
    return e, ((1.0 - t1) + top2).astype(np.float32), (1.0 - t1).astype(np.float32)


def gt_segments(ood_mask: Any, labels: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The ground-truth anomaly segments (8-connected components of ``labels == 1``, raster order) against the
    predicted mask (``ood_mask`` without void), as meta-ood's ``compute_metrics_mask``: ``iou`` / ``iou0`` with
    the roles swapped (``iou0 = 1``: a false negative, no predicted pixel on it), ``rec`` = the segment's share
    of predicted pixels, and its size and centre. Returns (metrics by :data:`GT_METRIC_NAMES`, components)."""
    lab = to_numpy(labels, "labels", kinds="biu")
    if lab.ndim != 2:
        raise OodscoreError(f"labels: expected one (H, W) map, got shape {lab.shape}")
    pred = _mask(ood_mask, lab, lab.shape)
    gt = np.ascontiguousarray(lab == _ANOMALY)
    s = _search(gt)
    if s.n == 0:
        return {m: np.zeros(0) for m in GT_METRIC_NAMES}, np.zeros(lab.shape, np.int32)
    inter, union = _intersection_union(s, gt, pred)
    size = s.size[1:].astype(np.float64)
    out = {"iou": inter[1:] / union[1:], "iou0": (inter[1:] == 0), "rec": inter[1:] / size,
           "mean_x": np.bincount(s.seg_of, weights=s.rows, minlength=s.n + 1)[1:] / size,
           "mean_y": np.bincount(s.seg_of, weights=s.cols, minlength=s.n + 1)[1:] / size,
           "S": size, "S_in": size - s.n_bd[1:], "S_bd": s.n_bd[1:]}
    return {m: np.asarray(out[m], dtype=np.float64) for m in GT_METRIC_NAMES}, _components_map(s)


# ------------------------------------------------------------------------------------------------- streaming
@dataclass(frozen=True)
class GtOverlap:
    """A frame's ground-truth anomaly segments against its predicted segments (for the false-negative counts).

    Attributes
    ----------
    n_gt : the frame's ground-truth segments (8-connected components of its anomaly pixels)
    pairs : ``(k, 2)`` int64: (ground-truth segment, predicted segment) pairs that share a pixel, both from 1
    covers_frame : the ground truth covers every pixel (meta-ood's ``remove()`` then counts no false negative after)
    """

    n_gt: int
    pairs: np.ndarray
    covers_frame: bool = False


def _overlap(pred: np.ndarray, n_pred: int, gt: np.ndarray, n_gt: int) -> GtOverlap:
    both = (pred != 0) & (gt != 0)
    key = np.unique(np.abs(gt[both]).astype(np.int64) * (n_pred + 1) + np.abs(pred[both]))
    pairs = np.stack([key // (n_pred + 1), key % (n_pred + 1)], axis=1)
    return GtOverlap(n_gt, pairs, bool(gt.size) and bool((gt != 0).all()))


@dataclass(frozen=True)
class _Frame:
    num_classes: int
    metrics: dict[str, np.ndarray]
    gt: GtOverlap | None
    gt_metrics: dict[str, np.ndarray] | None


@dataclass(frozen=True)
class SegmentTable:
    """What :class:`SegmentMetrics` accumulated, frame after frame.

    Attributes
    ----------
    metrics : MetaSeg name -> (n,) float64 over every segment of the set, frame after frame (meta-ood's
        ``concatenate_metrics``)
    frame : (n,) int64, each segment's frame (0 = the first frame seen)
    segment : (n,) int64, each segment's number in its frame (from 1: its ``components`` value)
    gt : per frame, its :class:`GtOverlap` (None: a frame seen without labels)
    gt_metrics : :func:`gt_segments`'s metrics over every ground-truth segment of the labelled frames
    gt_frame : (m,) int64, each ground-truth segment's frame
    """

    metrics: dict[str, np.ndarray]
    frame: np.ndarray
    segment: np.ndarray
    gt: list[GtOverlap | None] = field(default_factory=list)
    gt_metrics: dict[str, np.ndarray] = field(default_factory=dict)
    gt_frame: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def num_frames(self) -> int:
        return len(self.gt)


class SegmentMetrics(StreamingState):
    """Streaming segment search + MetaSeg metrics over the frames of a set (a :class:`~cocodag.streaming.
    StreamingState`: a worker updates an :meth:`empty_copy` with one frame, the parent merges them in frame order).

    Parameters
    ----------
    threshold : the entropy threshold of the OOD mask, in (0, 1] (meta-ood: 0.7)

    ``update(probs, labels=None, ood_mask=None)`` folds in one frame: its OOD mask (:func:`entropy_mask` unless
    given), :func:`segment_metrics` and, with labels, :func:`gt_segments` and the overlaps of both for the
    false-negative counts. Only the per-segment numbers are kept (no maps): the state stays small.
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD):
        self.threshold = _threshold(threshold)
        self._frames: list[_Frame] = []

    def update(self, probs: Any, labels: Any = None, ood_mask: Any = None) -> None:
        p = _probs(probs)
        lab = None if labels is None else _map(labels, "labels", p.shape[1:], "biu")
        if self._frames and self._frames[0].num_classes != p.shape[0]:
            raise OodscoreError(f"probs: {p.shape[0]} classes, but the earlier frames had "
                                f"{self._frames[0].num_classes}")
        if ood_mask is None:
            ood_mask = entropy_mask(p, self.threshold, lab)
        metrics, comp = segment_metrics(p, ood_mask, lab)
        gt = gt_metrics = None
        if lab is not None:
            gt_metrics, gt_comp = gt_segments(ood_mask, lab)
            gt = _overlap(comp, len(metrics["S"]), gt_comp, len(gt_metrics["S"]))
        self._frames.append(_Frame(p.shape[0], metrics, gt, gt_metrics))

    def merge(self, other: SegmentMetrics) -> SegmentMetrics:
        if not isinstance(other, SegmentMetrics) or other.threshold != self.threshold:
            raise ValueError("merge: expected a SegmentMetrics with the same threshold")
        if self._frames and other._frames and self._frames[0].num_classes != other._frames[0].num_classes:
            raise ValueError("merge: the states were fed probabilities of different class counts")
        self._frames.extend(other._frames)
        return self

    def compute(self) -> SegmentTable:
        frames = self._frames
        names = list(frames[0].metrics) if frames else []
        counts = [len(f.metrics["S"]) for f in frames]
        metrics = {m: np.concatenate([f.metrics[m] for f in frames]) for m in names}
        frame = np.repeat(np.arange(len(frames), dtype=np.int64), counts)
        segment = np.concatenate([np.arange(1, k + 1, dtype=np.int64) for k in counts] or [np.zeros(0, np.int64)])
        labelled = [(i, f.gt_metrics) for i, f in enumerate(frames) if f.gt_metrics is not None]
        gt_metrics = {m: np.concatenate([g[m] for _, g in labelled] or [np.zeros(0)]) for m in GT_METRIC_NAMES}
        gt_frame = np.repeat(np.array([i for i, _ in labelled], np.int64),
                             [len(g["S"]) for _, g in labelled]).astype(np.int64)
        return SegmentTable(metrics, frame, segment, [f.gt for f in frames], gt_metrics, gt_frame)

    def reset(self) -> SegmentMetrics:
        self._frames = []
        return self

    def empty_copy(self) -> SegmentMetrics:
        return SegmentMetrics(self.threshold)

    @property
    def num_frames(self) -> int:
        return len(self._frames)
