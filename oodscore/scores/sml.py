"""Standardized Max Logits (Jung et al., ICCV 2021), DESIGN §4.4.

* :class:`SMLStats` — per **predicted** class mean and unbiased variance of the max logit; the statistics are a
  file contract shared with ``maxent-train export``, so the class lives in :mod:`cocodag.formats.sml_stats` and is
  re-exported here.
* :class:`SML` — ``s = (L_max - mu_c) / sigma_c``, then iterative boundary suppression and dilated smoothing, all
  vectorized with torch (``conv2d`` / ``max_pool2d``) so it runs batched on CPU and CUDA. Score = ``-s``.

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
from oodscore.scores.base import (BOOLEAN, DEVICE, Interval, Scorer, as_logits_tensor, to_output,
                                  upsample)

#: radii of the L1-diamond dilation of the boundary at iterations 0..3 (DESIGN §4.4; official defaults)
BOUNDARY_RADII = (3, 2, 1, 0)
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
# the image simply do not exist, which is exactly the geodesic border DESIGN §4.4 asks for, and on CPU the slice
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


def boundary_mask(pred: torch.Tensor) -> torch.Tensor:
    """``B0 = dilate(pred, 3x3 cross) != erode(pred, 3x3 square)`` of class maps ``(..., H, W)`` (bool).

    Borders are geodesic: pixels outside the image never take part, so the image edge is not an artificial
    boundary (the pinned old kornia of the official code padded with zeros and produced one).
    """
    if pred.is_floating_point() or pred.dtype == torch.bool or int(pred.min()) < 0:
        raise OodscoreError(f"pred: expected non-negative integer class ids, got {pred.dtype}")
    big = 255 if pred.dtype == torch.uint8 else int(pred.max()) + 1
    return _dilate_cross_labels(pred) != _erode_square(pred, big)


def _box3(x: torch.Tensor) -> torch.Tensor:
    """3x3 box sum of ``(N, 1, H, W)`` with replicate padding."""
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel_size=3, stride=1) * 9.0


def boundary_suppression(s: torch.Tensor, pred: torch.Tensor, iterations: int = 4) -> torch.Tensor:
    """SML's iterative boundary suppression (DESIGN §4.4) of ``s`` ``(N, 1, H, W)`` given integer ``pred`` (same
    shape).

    For iteration i with radius r = (3, 2, 1, 0)[i]: ``B = dilate(B0, L1 diamond r)``, ``M = 1 - B``,
    ``avg = box3(s*M) / box3(M)`` (replicate padding; where no neighbour is outside the boundary, s is kept) and
    ``s = where(B, avg, s)``.
    """
    if iterations <= 0:
        return s
    # small integer labels: min/max on 1-byte (or 4-byte) ints instead of floats
    labels = pred.to(torch.uint8) if int(pred.max()) < 255 else pred
    b0 = boundary_mask(labels)
    # diamond dilations of radius 0..3 = repeated 3x3-cross dilations (geodesic: a diamond clipped to a rectangle
    # is reached by steps that stay inside it)
    radii = BOUNDARY_RADII[:iterations]
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
        Boundary-suppression iterations, 0..4 (radii 3, 2, 1, 0 of the first ``boundary_iters``); 0 disables it.
    smoothing : bool, default=True
        Dilated Gaussian smoothing after boundary suppression.
    device : str or torch.device, optional
        Where to compute (default: the input's device).

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
    """

    requires = "logits"
    requires_fit = True
    _parameter_constraints = {
        "stats": [SMLStats, str, os.PathLike],
        "boundary_iters": [Interval(numbers.Integral, 0, len(BOUNDARY_RADII))],
        "smoothing": [BOOLEAN],
        "device": DEVICE,
    }

    def __init__(self, stats, boundary_iters: int = 4, smoothing: bool = True, device=None):
        self.stats = stats
        self.boundary_iters = boundary_iters
        self.smoothing = smoothing
        self.device = device

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
            x = boundary_suppression(x, pred.unsqueeze(1), int(self.boundary_iters))
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
