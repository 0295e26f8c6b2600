"""The one-shot pixel metrics (exact): :func:`pixel_metrics` and its parts, :func:`auroc`,
:func:`average_precision`, :func:`fpr_at_tpr` (conventions: :mod:`oodscore.metrics`).

numpy input is cut into one part per thread; each thread splits its part and sorts its ID keys (numpy releases the
GIL while it sorts and searches); the anomaly keys are merged, and the pass over them runs its chunks in the same
threads, the ID pixels below a key being summed over the parts. At 10^8 float32 pixels this takes ~1.3-1.4
``np.sort`` of the same scores on the development machine's 2 cores (``bench/metrics.py``; numpy's AVX-512 sort;
~1.9 on one thread): of ~1.0 s of CPU, the split ~0.2, the sort ~0.36, the search of 5 x 10^6 anomaly keys ~0.3
(ties included), their arithmetic ~0.05. Torch tensors go through an exact streaming state (on their device).
"""
from __future__ import annotations

from cocodag.arrays import is_torch

from .. import OodscoreError
from ._batch import check_shapes, flat_checked, split_sorted, threads_for
from ._histogram import Counts, PartsHist, check_threshold
from ._runs import compact_runs
from .states import ExactState

__all__ = ["auroc", "average_precision", "fpr_at_tpr", "pixel_metrics"]


def _parts_hist(scores, labels, threads: int | None) -> PartsHist:
    """The exact histogram of a numpy batch for the one-shot functions: one in-cache pass per thread splits its
    part of the batch into ID and anomaly keys, each part sorted in its thread; the anomaly keys reduced to
    distinct values with their counts."""
    s, y = flat_checked(scores, labels)
    t = threads_for(threads, s.size)
    wide, parts, kp = split_sorted(s, y, t)
    pv, pc = compact_runs(kp)
    return PartsHist([k[skip:] for k, skip in parts], pv, pc, wide, t)


def _hist_of(scores, labels, threads: int | None = None) -> Counts:
    """The exact histogram of a batch: numpy through :func:`_parts_hist`, tensors through an exact state."""
    check_shapes(scores, labels)
    if not (is_torch(scores) or is_torch(labels)):
        return _parts_hist(scores, labels, threads)
    threads_for(threads, 0)  # checked, unused: tensors go through the streaming state
    state = ExactState()
    state.update(scores, labels)
    return state.compute()


def pixel_metrics(scores, labels, threshold: float | None = None, *, threads: int | None = None) -> dict:
    """All pixel metrics at once (exact). See :mod:`oodscore.metrics` for the conventions.

    Parameters
    ----------
    scores : array or tensor
        Anomaly scores, higher = more anomalous.
    labels : array or tensor, same shape
        0 = ID, 1 = anomaly, anything else void.
    threshold : float, optional
        Threshold for F1/precision/recall/FPR (``score >= threshold`` is anomalous); None -> F1-optimal.
    threads : int, optional
        Threads that split and sort numpy input (numpy releases the GIL while it sorts and searches); None: the
        CPUs this process may use, at most 8, from 2^22 pixels on. The numbers do not depend on it.

    Returns
    -------
    dict
        ``auroc, ap, fpr95, fpr95_interp, threshold, f1, precision, recall, fpr, n_pos, n_neg``.
    """
    t = check_threshold(threshold)
    return _hist_of(scores, labels, threads).metrics(t)


def auroc(scores, labels, *, threads: int | None = None) -> float:
    """Area under the ROC (trapezoid, computed exactly; == ``sklearn.metrics.roc_auc_score``); ``threads`` as in
    :func:`pixel_metrics`."""
    return _hist_of(scores, labels, threads).auroc()


def average_precision(scores, labels, *, threads: int | None = None) -> float:
    """Step-wise average precision (== ``sklearn.metrics.average_precision_score``); ``threads`` as in
    :func:`pixel_metrics`."""
    return _hist_of(scores, labels, threads).ap()


def fpr_at_tpr(scores, labels, tpr: float = 0.95, *, threads: int | None = None) -> float:
    """FPR at the first threshold (scanning scores from high to low) where TPR >= ``tpr``; ``threads`` as in
    :func:`pixel_metrics`."""
    if not 0.0 < float(tpr) <= 1.0:
        raise OodscoreError(f"tpr: expected a value in (0, 1], got {tpr!r}")
    return _hist_of(scores, labels, threads).fpr_at_tpr(float(tpr))
