"""The streaming accumulator of the pixel metrics, :class:`PixelMetrics` (conventions: :mod:`oodscore.metrics`)."""
from __future__ import annotations

import warnings

import numpy as np

from cocodag.streaming import StreamingState

from .. import OodscoreError
from ._batch import check_shapes
from ._histogram import check_threshold
from .states import BinnedState, ExactState, PixelState

__all__ = ["PixelMetrics"]


class PixelMetrics(StreamingState):
    """Streaming pixel metrics: ``update(scores, labels)`` per batch, ``compute()`` at the end; states merge.

    The mode is fixed at construction: an exact or a binned state object (:mod:`oodscore.metrics.states`) holds the
    counts, and ``update``, ``merge``, ``compute``, ``curves`` and ``reset`` delegate to it (torchmetrics'
    ``thresholds=None`` vs binned). Worker processes ``update`` an :meth:`empty_copy` with one frame each; merging
    those in frame order gives exactly the state that ``update`` with the frames in that order gives.

    Parameters
    ----------
    bins : int or None
        None (default): exact (histogram over distinct score values; see :mod:`oodscore.metrics.states` for the
        memory bound). int: quantile-binned with at most ``bins`` bins (constant memory; AP error ~1e-4 at 768 bins).
    edge_samples : int
        Binned mode only: number of valid scores buffered from the first update(s) to place the quantile edges.
    seed : int
        Binned mode only: seed of the subsample used for the edges when more than ``edge_samples`` are buffered.

    Raises
    ------
    OodscoreError
        A bad ``bins`` or ``edge_samples``.

    Examples
    --------
    >>> m = PixelMetrics()
    >>> for s, y in batches:           # y in {0, 1, 255}; 255 ignored
    ...     m.update(s, y)
    >>> m.compute()["auroc"]
    """

    def __init__(self, bins: int | None = None, edge_samples: int = 1_000_000, seed: int = 0):
        if bins is not None and (isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2):
            raise OodscoreError(f"bins: expected None (exact) or an integer >= 2, got {bins!r}")
        if int(edge_samples) < 2:
            raise OodscoreError(f"edge_samples: expected an integer >= 2, got {edge_samples!r}")
        self.bins = None if bins is None else int(bins)
        self.edge_samples = int(edge_samples)
        self.seed = int(seed)
        self._state: PixelState = (ExactState() if self.bins is None
                                   else BinnedState(self.bins, self.edge_samples, self.seed))

    def reset(self) -> None:
        """Forget every update (binned mode: the edges too)."""
        self._state.reset()

    def update(self, scores, labels) -> None:
        """Add a batch: ``scores`` and ``labels`` of the same shape (numpy arrays or torch tensors, CPU or CUDA)."""
        check_shapes(scores, labels)
        self._state.update(scores, labels)

    def empty_copy(self) -> PixelMetrics:
        """An empty accumulator of this class with this one's settings and (binned mode) its fixed edges, to update
        with batches for it (e.g. in a worker process) and :meth:`merge` back."""
        out = type(self)(bins=self.bins, edge_samples=self.edge_samples, seed=self.seed)
        out._state = self._state.empty_copy()
        return out

    def merge(self, other: PixelMetrics) -> PixelMetrics:
        """Fold another accumulator's data in after this one's (e.g. from a worker / rank); returns self.

        Merging the :meth:`empty_copy` states of batches in the batches' order gives exactly the state ``update``
        with each batch gives (binned mode: copies made before the edges were fixed hold their scores unbinned).
        """
        if not isinstance(other, PixelMetrics):
            raise OodscoreError(f"merge: expected a PixelMetrics, got {type(other).__name__}")
        if other.bins != self.bins:
            raise OodscoreError(f"merge: bins differ ({self.bins} vs {other.bins})")
        self._state.merge(other._state)
        return self

    def compute(self, threshold: float | None = None) -> dict:
        """Metrics dict (keys ``METRIC_KEYS``); ``threshold=None`` -> the F1-optimal threshold."""
        t = check_threshold(threshold)
        hist = self._state.compute()
        if self._state.approximate and t is not None:
            warnings.warn("binned PixelMetrics: counts at a given threshold are approximated by the bin "
                          "containing it", stacklevel=2)
        return hist.metrics(t)

    def curves(self, max_points: int = 2000) -> dict:
        """ROC and PR curves for plotting, subsampled to at most ``max_points`` points (endpoints kept).

        All arrays have the same length; point 0 is the ROC origin (threshold +inf, fpr = tpr = recall = 0,
        precision = 1 as in sklearn's PR curve end point); point i > 0 is ``score >= thresholds[i]``.
        """
        if int(max_points) < 2:
            raise OodscoreError(f"max_points: expected an integer >= 2, got {max_points!r}")
        return self._state.compute().curves(int(max_points))

    @property
    def edges(self) -> np.ndarray | None:
        """Binned mode: the quantile lower edges (float64, ascending) once fixed; None before that and in exact mode."""
        return getattr(self._state, "edges", None)

    @property
    def n_distinct(self) -> int:
        """Number of stored histogram entries (both classes): the exact mode's memory is ~8-16 bytes each."""
        return self._state.n_distinct
