"""Standardized Max Logits (Jung et al., ICCV 2021); the steps are written out in docs/methods.md §5.4.

* :class:`SMLStats` — per **predicted** class mean and unbiased variance of the max logit; the statistics are a
  file contract shared with ``maxent-train export``, so the class lives in :mod:`cocodag.formats.sml_stats` and is
  re-exported here.
* :class:`SML` — ``s = (L_max - mu_c) / sigma_c``, then iterative boundary suppression and dilated smoothing, all
  vectorized with torch (``conv2d`` / ``max_pool2d``) so it runs batched on CPU and CUDA. Score = ``-s``.

Two fidelity switches (docs/methods.md §5.4), both off by default:

* ``border``: ``"geodesic"`` (ours: the image edge is no boundary) or ``"official-2021"`` — the boundary mask as the
  official code computed it with its pinned kornia (commit ``af948c5``, whose ``kornia/morphology/basic_operators.py``
  is byte-identical to the kornia 0.5.0 release): ``erosion`` pads with the constant 1, so every pixel on the image's
  outer ring predicted as a class >= 2 is a boundary (classes 0 and 1 are unaffected: the padded 1 never changes
  their 3x3 minimum's comparison with the dilation).
* ``boundary_width``: the official radius schedule of ``BoundarySuppressionWithSmoothing.forward`` (``network/
  deepv3.py``) — iteration i of ``boundary_iters`` dilates by ``width - (width // iters) * i - 1``, the last one by 0.
  With the defaults (width 4, 4 iterations) it is today's 3, 2, 1, 0; ``None`` keeps today's meaning of
  ``boundary_iters`` (the first k radii of 3, 2, 1, 0) under the geodesic border and means the official width 4 under
  ``border="official-2021"``.

Classes that were never predicted on the training data (or predicted once, so no variance, or with zero variance)
have no usable statistics; pixels predicted as such a class are standardized with the global statistics of all
fitted pixels instead, and the fallback is announced with a ``UserWarning`` and recorded in
``SML.fallback_classes_``.
"""
from __future__ import annotations

import numbers
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from cocodag.formats.sml_stats import SMLStats
from oodscore import OodscoreError
from oodscore.options import SML_BORDERS
from oodscore.scores.base import (
    BOOLEAN,
    DEVICE,
    Interval,
    Options,
    Scorer,
    as_logits_tensor,
    to_output,
    upsample,
    validate_params,
)

#: radii of the L1-diamond dilation of the boundary at iterations 0..3 (the official defaults)
BOUNDARY_RADII = (3, 2, 1, 0)
#: border rules of the boundary mask: ours (first, the default) and the official code's as it ran in 2021
BORDERS = SML_BORDERS   # the choices of ``--sml-border``, defined once in :mod:`oodscore.options`
#: the official ``--boundary_width`` default (the SML code's ``config.py``); with 4 iterations: radii 3, 2, 1, 0
OFFICIAL_BOUNDARY_WIDTH = 4
#: the value kornia 0.5.0 (= commit af948c5) pads ``erosion``'s input with
_OFFICIAL_EROSION_PAD = 1
#: dilated smoothing: replicate pad 18, 7x7 Gaussian sigma=1, dilation 6 (3 * 6 = 18 -> same output size)
SMOOTH_KERNEL_SIZE = 7
SMOOTH_SIGMA = 1.0
SMOOTH_DILATION = 6


def _max_and_argmax(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max logit and predicted class of ``(N, C, H, W)`` (first index on ties, as numpy/torch argmax)."""
    lmax, pred = t.max(dim=1)
    return lmax, pred


# ---------------------------------------------------------------------- post-processing kernels (torch)
# All kernels are built from shifted slices of the tensor rather than padded windows: a pixel's neighbours outside
# the image simply do not exist, which is exactly the geodesic border (docs/methods.md §5.4), and on CPU the slice
# arithmetic is several times faster than max_pool2d / dilated conv2d on one channel (same results on CUDA).
def _dilate_cross(x: torch.Tensor) -> torch.Tensor:
    """Binary dilation of a bool ``(..., H, W)`` mask by the 3x3 cross (neighbours outside the image do not
    exist, so nothing is dilated in from the border)."""
    out = x.clone()
    out[..., 1:, :] |= x[..., :-1, :]
    out[..., :-1, :] |= x[..., 1:, :]
    out[..., :, 1:] |= x[..., :, :-1]
    out[..., :, :-1] |= x[..., :, 1:]
    return out


def _erode_square(x: torch.Tensor, big) -> torch.Tensor:
    """Min over the 3x3 square of ``(..., H, W)`` integer maps; outside the image counts as ``big`` (>= every
    label, so it never wins: geodesic). Separable: rows then columns (exact for min)."""
    p = F.pad(x, (1, 1, 1, 1), value=big)
    r = torch.minimum(p[..., :, :-2], p[..., :, 1:-1])
    torch.minimum(r, p[..., :, 2:], out=r)
    out = torch.minimum(r[..., :-2, :], r[..., 1:-1, :])
    return torch.minimum(out, r[..., 2:, :], out=out)


def _dilate_cross_labels(x: torch.Tensor) -> torch.Tensor:
    """Max over the 3x3 cross of ``(..., H, W)`` non-negative integer maps; outside counts as 0 (<= every label,
    so it never wins: geodesic)."""
    p = F.pad(x, (1, 1, 1, 1), value=0)
    out = torch.maximum(p[..., 1:-1, 1:-1], p[..., :-2, 1:-1])
    torch.maximum(out, p[..., 2:, 1:-1], out=out)
    torch.maximum(out, p[..., 1:-1, :-2], out=out)
    return torch.maximum(out, p[..., 1:-1, 2:], out=out)


def _check_border(border) -> str:
    if not (isinstance(border, str) and border in BORDERS):
        raise OodscoreError(f"border: expected one of {', '.join(map(repr, BORDERS))}, got {border!r}")
    return border


def boundary_mask(pred: torch.Tensor, border: str = "geodesic") -> torch.Tensor:
    """``B0 = dilate(pred, 3x3 cross) != erode(pred, 3x3 square)`` of class maps ``(..., H, W)`` (bool).

    ``border="geodesic"`` (default): pixels outside the image never take part, so the image edge is no boundary.
    ``border="official-2021"``: as ``find_boundaries`` of the official ``network/deepv3.py`` computed it with its
    pinned kornia (af948c5 = 0.5.0): ``dilation`` there pads with 0 (the same as geodesic for class ids >= 0), but
    ``erosion`` pads with the constant 1 (``F.pad(..., value=1.)`` in ``kornia/morphology/basic_operators.py``), so
    the erosion of an outer-ring pixel is ``min(its 3x3 minimum, 1)``: every ring pixel of a class >= 2 becomes a
    boundary, and nothing changes for classes 0 and 1.
    """
    if pred.is_floating_point() or pred.dtype == torch.bool or int(pred.min()) < 0:
        raise OodscoreError(f"pred: expected non-negative integer class ids, got {pred.dtype}")
    if _check_border(border) == "official-2021":
        pad = _OFFICIAL_EROSION_PAD
    else:
        pad = 255 if pred.dtype == torch.uint8 else int(pred.max()) + 1  # >= every label: never the minimum
    return _dilate_cross_labels(pred) != _erode_square(pred, pad)


def official_radii(width: int, iterations: int) -> tuple[int, ...]:
    """Dilation radius of each boundary-suppression iteration in the official width/iterations schedule.

    Mirrors the ``expansion_width`` rule of ``BoundarySuppressionWithSmoothing.forward`` (``network/deepv3.py``):
    ``diff = width // iterations`` (the code asserts ``width % iterations == 0``); iteration i uses
    ``width - diff * i - 1``, except the last one and every one when ``width == 0``, which use 0 (no expansion).
    The official code only built the diamond kernels of radius 1..9 (``d_ks``), so it ran with ``width <= 10``;
    larger widths here extend the same rule.

    Raises
    ------
    OodscoreError
        A negative value, or ``width`` not a multiple of ``iterations`` (the official assertion).
    """
    if width < 0 or iterations < 0:
        raise OodscoreError(f"boundary_width / boundary_iters: expected ints >= 0, got {width} / {iterations}")
    if iterations == 0:
        return ()
    if width % iterations:
        raise OodscoreError(f"boundary_width: expected a multiple of boundary_iters={iterations} (the official "
                            f"width/iterations schedule), got {width}")
    diff = width // iterations
    return tuple(0 if width == 0 or i == iterations - 1 else width - diff * i - 1 for i in range(iterations))


def _box3(x: torch.Tensor) -> torch.Tensor:
    """3x3 box sum of ``(N, 1, H, W)`` with replicate padding."""
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel_size=3, stride=1) * 9.0


def boundary_suppression(s: torch.Tensor, pred: torch.Tensor, iterations: int = 4, *,
                         radii: tuple[int, ...] | None = None, border: str = "geodesic") -> torch.Tensor:
    """SML's iterative boundary suppression (docs/methods.md §5.4) of ``s`` ``(N, 1, H, W)`` given integer ``pred``
    (same shape).

    Iteration i dilates ``B0 = boundary_mask(pred, border)`` by radius ``r = radii[i]`` (default: the first
    ``iterations`` of 3, 2, 1, 0; :func:`official_radii` gives the official width/iterations schedule):
    ``B = dilate(B0, L1 diamond r)``, ``M = 1 - B``, ``avg = box3(s*M) / box3(M)`` (replicate padding; where no
    neighbour is outside the boundary, s is kept) and ``s = where(B, avg, s)`` — the loop body of the official
    ``BoundarySuppressionWithSmoothing.forward`` (``expand_boundaries``, ``first_conv`` on ``ReplicationPad2d(1)``
    inputs, the count-0 rule).
    """
    radii = BOUNDARY_RADII[:iterations] if radii is None else tuple(int(r) for r in radii)
    if not radii:
        return s
    if min(radii) < 0:
        raise OodscoreError(f"radii: expected radii >= 0, got {radii}")
    # small integer labels: min/max on 1-byte (or 4-byte) ints instead of floats
    labels = pred.to(torch.uint8) if int(pred.max()) < 255 else pred
    b0 = boundary_mask(labels, border)
    # diamond dilations of radius 0..max = repeated 3x3-cross dilations (geodesic: a diamond clipped to a rectangle
    # is reached by steps that stay inside it; the official ``expand_boundaries`` dilates the 0/1 map with a
    # zero-padded diamond kernel, which is the same thing)
    diamonds = [b0]
    for _ in range(max(radii)):
        diamonds.append(_dilate_cross(diamonds[-1]))
    for r in radii:
        b = diamonds[r]
        m = (~b).to(s.dtype)
        num = _box3(s * m)
        den = _box3(m)  # a sum of 0/1 values: exact, so den == 0 is a reliable test
        s = torch.where(b & (den > 0), num / den, s)
    return s


def gaussian_kernel(size: int = SMOOTH_KERNEL_SIZE, sigma: float = SMOOTH_SIGMA) -> list[float]:
    """1-D sampled Gaussian ``exp(-x^2 / (2 sigma^2))``, x = -(size//2)..size//2, normalized to sum 1 (its outer
    product with itself is the normalized 2-D kernel)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return [float(v) for v in g / g.sum()]


def dilated_smoothing(s: torch.Tensor) -> torch.Tensor:
    """Replicate pad 18, 7x7 Gaussian (sigma 1, sum 1) with dilation 6, of ``(..., H, W)``.

    The 2-D Gaussian is separable and the padding is done once before both passes, so two 1-D passes (7 shifted
    slices each) compute the same convolution up to float rounding, at 14 instead of 49 multiply-adds per pixel.
    """
    d = SMOOTH_DILATION
    half = d * (SMOOTH_KERNEL_SIZE // 2)
    g = gaussian_kernel()
    h, w = s.shape[-2:]
    p = F.pad(s, (half, half, half, half), mode="replicate")
    v = p[..., 0:h, :] * g[0]
    for k in range(1, SMOOTH_KERNEL_SIZE):
        v.add_(p[..., k * d:k * d + h, :], alpha=g[k])
    out = v[..., :, 0:w] * g[0]
    for k in range(1, SMOOTH_KERNEL_SIZE):
        out.add_(v[..., :, k * d:k * d + w], alpha=g[k])
    return out


class SML(Scorer):
    """Standardized Max Logits score: ``-s`` with ``s = (L_max - mu_c) / sigma_c`` post-processed.

    Parameters
    ----------
    stats : SMLStats or path to its JSON
    boundary_iters : int, default=4
        Boundary-suppression iterations; 0 disables it. With ``boundary_width=None`` and the geodesic border: 0..4,
        the radii 3, 2, 1, 0 of the first ``boundary_iters`` (today's meaning). Under the official schedule
        (``boundary_width`` given, or ``border="official-2021"``): the official ``boundary_iteration``, any count
        dividing the width.
    smoothing : bool, default=True
        Dilated Gaussian smoothing after boundary suppression.
    device : str or torch.device, optional
        Where to compute (default: the input's device).
    border : {"geodesic", "official-2021"}, default="geodesic"
        Border rule of the boundary mask (see :func:`boundary_mask`): ``"official-2021"`` reproduces the official
        pipeline as it ran with its pinned kornia (every outer-ring pixel of a class >= 2 is a boundary).
    boundary_width : int >= 0, optional
        The official ``boundary_width``: radii from :func:`official_radii` (``width`` a multiple of
        ``boundary_iters``). None: today's radii under ``"geodesic"``, the official default 4 under
        ``"official-2021"``. ``border="official-2021"`` with the other defaults is the official default
        configuration (width 4, 4 iterations, smoothing 7x7 / dilation 6).

    Attributes
    ----------
    stats_ : SMLStats
        The statistics in use (``stats`` itself, or read from its path).
    fallback_classes_ : list of int
        Classes scored with the global statistics because they had none of their own.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype("float32")
    >>> SML(SMLStats().partial_fit(z)).score(z).shape
    (1, 16, 16)
    >>> SML(SMLStats(), boundary_width=6, boundary_iters=3).boundary_radii()
    (5, 3, 0)
    """

    requires = "logits"
    requires_fit = True
    definition = ("-(L_max - mu_c) / sigma_c per predicted class c, boundary-suppressed and dilation-smoothed "
                  "(Jung et al., ICCV 2021)")
    _parameter_constraints = {
        "stats": [SMLStats, str, os.PathLike],
        "boundary_iters": [Interval(numbers.Integral, 0, len(BOUNDARY_RADII))],
        "smoothing": [BOOLEAN],
        "device": DEVICE,
    }
    #: the fidelity switches, checked apart from ``_parameter_constraints`` (VDE spreads that table into its own
    #: and has no such parameters); under the official schedule ``boundary_iters`` is any int >= 0
    _schedule_constraints = {
        "border": [Options(*BORDERS)],
        "boundary_width": [None, Interval(numbers.Integral, 0, None)],
    }

    def __init__(self, stats, boundary_iters: int = 4, smoothing: bool = True, device=None,
                 border: str = "geodesic", boundary_width: int | None = None):
        self.stats = stats
        self.boundary_iters = boundary_iters
        self.smoothing = smoothing
        self.device = device
        self.border = border
        self.boundary_width = boundary_width

    def _official_schedule(self) -> bool:
        return self.boundary_width is not None or (isinstance(self.border, str) and self.border == "official-2021")

    def _validate_params(self) -> None:
        """The common checks, then the schedule's: ``boundary_iters`` in 0..4 for today's radii, else any int >= 0
        with the width a multiple of it (the official assertion)."""
        constraints = {**self._parameter_constraints, **self._schedule_constraints}
        if self._official_schedule():
            constraints["boundary_iters"] = [Interval(numbers.Integral, 0, None)]
        validate_params(constraints, self.get_params(deep=False), type(self).__name__)
        self._radii = self._schedule()

    def _schedule(self) -> tuple[int, ...]:
        iters = int(self.boundary_iters)
        if not self._official_schedule():
            return BOUNDARY_RADII[:iters]
        width = OFFICIAL_BOUNDARY_WIDTH if self.boundary_width is None else int(self.boundary_width)
        if iters and width % iters:
            name, value = (("boundary_iters", iters) if self.boundary_width is None else ("boundary_width", width))
            expected = (f"a divisor of the official default boundary_width={width}" if self.boundary_width is None
                        else f"a multiple of boundary_iters={iters}")
            raise OodscoreError(f"{type(self).__name__} {name}: expected {expected} (the official width/iterations "
                                f"schedule), got {value}")
        return official_radii(width, iters)

    def boundary_radii(self) -> tuple[int, ...]:
        """The dilation radius of each boundary-suppression iteration, as configured (parameters are checked)."""
        self._validate_params()
        return self._radii

    def _prepare(self) -> None:
        """Check the parameters, read the stats (once per distinct path) and build the per-class tables."""
        self._validate_params()
        if isinstance(self.stats, SMLStats):
            self.stats_ = self.stats
        elif getattr(self, "_stats_path", None) != os.fspath(self.stats):  # score() runs once per frame
            self.stats_ = SMLStats.load(self.stats)
            self._stats_path = os.fspath(self.stats)
        mean, std, fallback = self.stats_.tables()
        if fallback and getattr(self, "fallback_classes_", None) != fallback:
            warnings.warn(f"SML: classes {fallback} have no usable statistics (never or once predicted in the fit "
                          f"data, or zero variance); their pixels use the global max-logit mean/std", stacklevel=3)
        self.fallback_classes_ = fallback
        self._mean, self._std = mean, std

    def standardized(self, logits, size=None) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """``(s, pred, batched)``: the raw standardized max logit and the argmax, ``(N, H, W)`` tensors at ``size``."""
        self._prepare()
        # finiteness is checked on the max logit only (NaN propagates through max, +inf becomes the max, -inf in a
        # non-winning class is harmless here): one pass over (N, H, W) instead of (N, C, H, W)
        t, batched = as_logits_tensor(logits, device=self.device, check_finite=False)
        num_classes = self._mean.shape[0]
        if t.shape[1] != num_classes:
            raise OodscoreError(f"logits: the SML stats have {num_classes} classes, the logits {t.shape[1]}")
        with torch.no_grad():
            lmax, pred = _max_and_argmax(upsample(t, size))
            if not bool(torch.isfinite(lmax).all()):
                raise OodscoreError("logits: contains NaN or +inf values (or a pixel whose logits are all -inf)")
            mean = torch.as_tensor(self._mean, dtype=torch.float32, device=t.device)
            std = torch.as_tensor(self._std, dtype=torch.float32, device=t.device)
            s = (lmax - mean[pred]) / std[pred]
        return s, pred, batched

    def postprocess(self, s: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Boundary suppression then dilated smoothing of ``s`` ``(N, H, W)`` (as configured)."""
        with torch.no_grad():
            x = s.unsqueeze(1)
            x = boundary_suppression(x, pred.unsqueeze(1), radii=self.boundary_radii(), border=self.border)
            if self.smoothing:
                x = dilated_smoothing(x)
            return x.squeeze(1)

    def sml_map(self, logits, size=None) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """``(s, pred, batched)`` with s post-processed (higher = more in-distribution); the score is ``-s``."""
        s, pred, batched = self.standardized(logits, size)
        return self.postprocess(s, pred), pred, batched

    def score(self, logits, size=None) -> np.ndarray:
        """SML anomaly map.

        Parameters
        ----------
        logits : (N, C, h, w) or (C, h, w) float array or tensor
        size : (H, W), optional
            Label size; logits are upsampled bilinearly to it before anything else.

        Returns
        -------
        (N, H, W) or (H, W) float32 ndarray: ``-s``, higher = more anomalous.
        """
        s, _, batched = self.sml_map(logits, size)
        return to_output(-s, batched)
