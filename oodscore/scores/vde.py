"""VDE — drivable-region restriction of the SML score (seed paper; our exact reading, docs/methods.md §5.5).

(1) road = ``pred == road_class`` (trainId 0); (2) confident road = road & ``s >= threshold``, with ``s`` the SML
map **after** its post-processing (boundary suppression + smoothing as configured; higher ``s`` = more
in-distribution, the SML anomaly score is ``-s``); (3)+(4) the seed's in-place raster dilation followed by its two
row-wise erosions reduce, in every row, to the span from the first to the last confident-road pixel (rows without
one are empty) — computed here in closed form with two ``argmax`` calls per row; (5) inside the region the score is
the SML score, outside it is lowered by ``margin`` (default: per frame, just below every in-region score).

The slow literal raster implementation lives in ``tests/oodscore/test_vde.py`` and is checked against
:func:`drivable_region` on random masks.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from cocodag.labels import ROAD_ID
from oodscore.scores.base import Interval, Scorer, to_output
from oodscore.scores.sml import SML

#: trainId of road, defined once in cocodag.labels
ROAD_CLASS = ROAD_ID
#: default confidence threshold on the post-processed standardized max logit: max logit at least the training mean of
#: pixels predicted as the same class (s >= 0). ``s`` is in standard deviations, so this is comparable across models.
DEFAULT_THRESHOLD = 0.0


def drivable_region(confident):
    """Closed form of the seed's raster dilation + two row-wise erosions: per row, first..last confident pixel.

    Parameters
    ----------
    confident : (..., H, W) bool ndarray or tensor

    Returns
    -------
    Same type and shape, bool: True from the first to the last True of each row (inclusive), all False in rows
    without a True.
    """
    if isinstance(confident, torch.Tensor):
        c = confident.bool()
        w = c.shape[-1]
        has = c.any(dim=-1, keepdim=True)
        # argmax on an int row returns the first maximal index -> first True; on the flipped row -> last True
        first = c.to(torch.uint8).argmax(dim=-1, keepdim=True)
        last = (w - 1) - c.flip(-1).to(torch.uint8).argmax(dim=-1, keepdim=True)
        col = torch.arange(w, device=c.device)
        return has & (col >= first) & (col <= last)
    a = np.asarray(confident, dtype=bool)
    n = a.shape[-1]
    rows = a.any(axis=-1, keepdims=True)
    start = a.argmax(axis=-1)[..., None]
    stop = (n - 1) - a[..., ::-1].argmax(axis=-1)[..., None]
    cols = np.arange(n)
    return rows & (cols >= start) & (cols <= stop)


def restrict_score(score: torch.Tensor, region: torch.Tensor, margin: float | None = None) -> torch.Tensor:
    """Lower ``score`` ``(N, H, W)`` outside ``region`` (step 4 of docs/methods.md §5.5).

    ``margin=None``: per frame, subtract ``max(score) - min(score in region) + 1`` outside, so every outside pixel
    scores strictly below every inside pixel of the same frame (frames without a region are shifted as a whole,
    which keeps their order). A float: subtract that constant outside.

    The default guarantee is per frame; for metrics pooled over many frames, pass a ``margin`` larger than the
    score range of the data set to put every outside pixel below every inside pixel of every frame.
    """
    if margin is None:
        flat = score.flatten(1)
        inside_min = torch.where(region.flatten(1), flat, torch.full_like(flat, math.inf)).amin(dim=1)
        top = flat.amax(dim=1)
        # empty region: inside_min = inf -> use the frame's own range so the shift stays finite
        inside_min = torch.where(torch.isfinite(inside_min), inside_min, flat.amin(dim=1))
        shift = (top - inside_min + 1.0).view(-1, 1, 1)
    else:
        shift = torch.as_tensor(float(margin), dtype=score.dtype, device=score.device)
    return torch.where(region, score, score - shift)


class VDE(Scorer):
    """SML score restricted to the drivable region estimated from confident road pixels.

    Parameters
    ----------
    stats : SMLStats or path to its JSON
    threshold : float, default=0.0
        tau: a road pixel is *confident* when its post-processed standardized max logit ``s >= threshold``
        (i.e. SML anomaly score ``<= -threshold``).
    margin : float or None, default=None
        How much to lower the score outside the region; None = per frame, below every in-region score.
    boundary_iters, smoothing, device, border, boundary_width
        As in :class:`~oodscore.scores.sml.SML` (the SML map that VDE restricts; checked by SML).
    road_class : int, default=0
        trainId of road.
    """

    requires = "logits"
    requires_fit = True
    _parameter_constraints = {
        **SML._parameter_constraints,
        "threshold": [Interval(numbers.Real)],
        "margin": [None, Interval(numbers.Real, 0)],     # >= 0: it lowers the score outside the region
        "road_class": [Interval(numbers.Integral, 0)],
    }

    def __init__(self, stats, threshold: float = DEFAULT_THRESHOLD, margin: float | None = None,
                 boundary_iters: int = 4, smoothing: bool = True, device=None, road_class: int = ROAD_CLASS,
                 border: str = "geodesic", boundary_width: int | None = None):
        self.stats = stats
        self.threshold = threshold
        self.margin = margin
        self.boundary_iters = boundary_iters
        self.smoothing = smoothing
        self.device = device
        self.road_class = road_class
        self.border = border
        self.boundary_width = boundary_width

    def region(self, pred: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Drivable region ``(N, H, W)`` bool from the prediction and the post-processed SML map ``s``."""
        confident = (pred == int(self.road_class)) & (s >= float(self.threshold))
        return drivable_region(confident)

    def score(self, logits, size=None) -> np.ndarray:
        """VDE anomaly map: SML score inside the drivable region, lowered outside.

        Returns
        -------
        (N, H, W) or (H, W) float32 ndarray, higher = more anomalous.
        """
        self._validate_params()
        key = (id(self.stats), self.boundary_iters, self.smoothing, str(self.device), self.border,
               self.boundary_width)
        if getattr(self, "_sml_key", None) != key:  # one SML per configuration: stats files are read once
            self._sml = SML(self.stats, boundary_iters=self.boundary_iters, smoothing=self.smoothing,
                            device=self.device, border=self.border, boundary_width=self.boundary_width)
            self._sml_key = key
        sml = self._sml
        s, pred, batched = sml.sml_map(logits, size)
        self.stats_, self.fallback_classes_ = sml.stats_, sml.fallback_classes_
        with torch.no_grad():
            out = restrict_score(-s, self.region(pred, s), self.margin)
        return to_output(out, batched)
