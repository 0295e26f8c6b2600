"""The ``fishyscapes`` protocol: the Fishyscapes / bdl-benchmark pixel evaluation.

Reference: https://github.com/hermannsblum/bdl-benchmark at ``03773d6``, ``bdlb/fishyscapes/benchmark.py``,
``calculate_metrics_perpixAP`` (what ``FishyscapesValidation.evaluate`` and the Fishyscapes web benchmark run):

1. labels 0 / 1 valid, everything else void (``valid = (labels == 1) | (labels == 0)``);
2. scores of the valid pixels cast with ``.astype(np.float32, copy=False)`` -- float64 scores that differ only
   beyond float32's precision tie here;
3. an exact sort (``np.argsort(kind='mergesort')``) and one curve point per distinct float32 value, as sklearn:
   ``AP = -sum(diff(recall) * precision[:-1])`` (step-wise, up to the first full recall), ``AUROC =
   trapz(tpr, fpr)`` with the origin added, ``FPR95 = fpr[searchsorted(tpr, 0.95)]``.

Those are exactly our exact metrics (:mod:`oodscore.metrics`: sklearn's AP and AUROC, FPR at the first threshold
with TPR >= 0.95) on the float32-cast scores, so this protocol streams the float32 maps into an exact
:class:`~oodscore.metrics.PixelMetrics` (memory: one entry per distinct float32 value and class) instead of
stacking every frame as the official function does; ``tests/oodscore/test_protocols.py`` checks it against numbers
recorded from the official function to 1e-9. The official code defines no threshold, F1, precision or recall and no
component metrics: those keys are None, and components are refused.
"""
from __future__ import annotations

import numpy as np

from cocodag.streaming import StreamingState
from oodscore import OodscoreError
from oodscore.components import _frame_map
from oodscore.metrics import PixelMetrics

__all__ = ["UNDEFINED", "FishyscapesPixels"]

#: metric keys the official code does not compute (None in results)
UNDEFINED = ("fpr95_interp", "threshold", "f1", "precision", "recall", "fpr")
_F32_MAX = float(np.finfo(np.float32).max)


class FishyscapesPixels(StreamingState):
    """Streaming ``calculate_metrics_perpixAP``: ``update(score, label)`` per frame, then ``compute()``."""

    def __init__(self) -> None:
        self._pm = PixelMetrics()
        self.n_frames = 0

    def reset(self) -> None:
        """Forget every frame."""
        self._pm.reset()
        self.n_frames = 0

    @staticmethod
    def _cast(score, label) -> tuple[np.ndarray, np.ndarray]:
        """(float32 scores, labels) of one frame, the cast the official code makes."""
        s = _frame_map(score, "score_map")
        y = _frame_map(label, "label_map")
        if s.shape != y.shape:
            raise OodscoreError(f"score_map/label_map: shape mismatch, {s.shape} vs {y.shape}")
        valid = (y == 0) | (y == 1)
        if not np.isfinite(s[valid]).all():
            raise OodscoreError("score_map: non-finite (NaN/inf) values on non-void pixels")
        with np.errstate(over="ignore"):
            s32 = s.astype(np.float32, copy=False)
        if not np.isfinite(s32[valid]).all():
            raise OodscoreError(f"score_map: scores beyond float32's range (|s| > {_F32_MAX:.3g}) on non-void "
                                "pixels; the fishyscapes protocol casts scores to float32")
        return s32, y

    def update(self, score, label) -> None:
        """Add one frame: (H, W) score map and label map (numpy or torch; labels 0 ID, 1 anomaly, else void)."""
        self._pm.update(*self._cast(score, label))
        self.n_frames += 1

    def empty_copy(self) -> FishyscapesPixels:
        """An empty accumulator (e.g. to update with one frame in a worker)."""
        return type(self)()

    @property
    def n_distinct(self) -> int:
        """Stored histogram entries (distinct float32 values per class)."""
        return self._pm.n_distinct

    def merge(self, other: FishyscapesPixels) -> FishyscapesPixels:
        """Fold another accumulator in; returns self (order does not matter: the sort is exact)."""
        if not isinstance(other, FishyscapesPixels):
            raise OodscoreError(f"merge: expected a FishyscapesPixels, got {type(other).__name__}")
        self._pm.merge(other._pm)
        self.n_frames += other.n_frames
        return self

    def compute(self) -> dict:
        """``auroc, ap, fpr95, n_pos, n_neg, protocol``; the keys of :data:`UNDEFINED` are None."""
        r = self._pm.compute()
        out = {k: r[k] for k in ("auroc", "ap", "fpr95", "n_pos", "n_neg")}
        out.update(dict.fromkeys(UNDEFINED), protocol="fishyscapes")
        return out

    def curves(self, max_points: int = 2000) -> dict:
        """ROC / PR curves of the float32 scores (as :meth:`PixelMetrics.curves`)."""
        return self._pm.curves(max_points)
