"""Exact pixel-level anomaly metrics: AUROC, AP, FPR95, F1 at a threshold; one-shot, or streaming and mergeable.

Conventions
-----------
- Labels: 0 = in-distribution (negative), 1 = anomaly (positive), anything else is void and ignored.
- Scores: higher = more anomalous. A pixel is *predicted anomalous* at threshold ``t`` iff ``score >= t``.
  Candidate thresholds are the distinct score values (as in sklearn's ``roc_curve`` / ``precision_recall_curve``),
  so the F1-optimal threshold ``t*`` is itself a score value and ``score >= t*`` reproduces its confusion counts.
- AUROC: trapezoid area under the ROC (== ``sklearn.metrics.roc_auc_score``), computed exactly (an integer
  pair count) and rounded once.
- AP: step-wise ``sum_n (R_n - R_{n-1}) P_n`` (== ``sklearn.metrics.average_precision_score``; not trapezoidal).
- FPR95: FPR at the first threshold, scanning scores from high to low, where TPR >= 0.95 (Fishyscapes / SMIYC).
- ``fpr95_interp``: ``np.interp(0.95, tpr, fpr)`` on the full ROC (the point (0, 0) first, then one point per
  distinct score, i.e. sklearn's ``roc_curve(..., drop_intermediate=False)``). This is the interpolating branch of
  ood-metrics' ``fpr_at_95_tpr``; on a TPR plateau at exactly 0.95 numpy's tie rule applies.
- Precision with no predicted positive (threshold above every score) is 0.0, like sklearn's default.
- F1-optimal threshold: the distinct score value maximising ``F1 = 2 TP / (2 TP + FP + FN)`` (float64); among equal
  F1 values the highest threshold wins (fewest predicted positives).
- ``-0.0`` and ``0.0`` are one value. NaN / inf scores on non-void pixels raise; on void pixels they are ignored.

Layout (torchmetrics style)
---------------------------
- :mod:`~oodscore.metrics.functional`: the one-shot functions (``pixel_metrics``, ``auroc``, ...);
- :mod:`~oodscore.metrics.pixel`: :class:`PixelMetrics`, the streaming accumulator, which holds one of the states
  of :mod:`~oodscore.metrics.states` (exact, or quantile-binned with ``bins=``);
- private utilities: ``_keys`` (scores as order-preserving integer keys), ``_runs`` (sorted key / count runs and
  their in-place merges), ``_batch`` (input checks and conversion, the one-pass split, the thread pool),
  ``_histogram`` (every metric in one pass over the anomaly keys), ``_sizes`` (block and chunk sizes).
"""
from __future__ import annotations

from ._histogram import METRIC_KEYS
from .functional import auroc, average_precision, fpr_at_tpr, pixel_metrics
from .pixel import PixelMetrics

__all__ = ["METRIC_KEYS", "PixelMetrics", "auroc", "average_precision", "fpr_at_tpr", "pixel_metrics"]
