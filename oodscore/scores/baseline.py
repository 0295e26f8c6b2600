"""Stateless post-hoc scores (docs/methods.md §5): pure functions of the logits, plus the MC predictive entropy.

PEBAL's anomaly score (``pebal``) is the free energy blurred at the label size: the map of ``Energy(blur=True)``.

Higher = more anomalous. Each class states its formula and reference in ``definition`` (what ``oodscore methods``
lists). Logits are ``z`` (C classes per pixel); ``T`` a temperature.

Numerics: MSP-T and GEN never form ``1 - p`` by subtraction from a probability close to 1 (float32 would round it
to 0 and tie every confident pixel); they use the sum of the other classes' ``exp(z_k - z_max)`` instead (see
:func:`_softmax_parts`). MSP keeps the textbook ``1 - max softmax`` in float32, as every MSP number we have reported
was computed: its confident pixels can tie at 0 (``msp-t`` with ``--temperature 1`` is the tie-free MSP).
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from cocodag.arrays import to_numpy
from cocodag.errors import CocodagError
from cocodag.filters import gaussian_blur
from cocodag.formats.logits import check_upsample_rule, upsample_frame
from oodscore import OodscoreError
from oodscore.scores.base import (
    BOOLEAN,
    DEVICE,
    Interval,
    Scorer,
    as_logits_tensor,
    check_size,
    to_output,
    upsample,
)


class _LeftOpen:
    """A finite real number in ``(left, right]`` (``right=None``: unbounded); booleans excluded."""

    def __init__(self, left: float, right: float | None = None):
        self.left, self.right = left, right

    def is_satisfied_by(self, v) -> bool:
        return (Interval(numbers.Real, None, self.right).is_satisfied_by(v) and v > self.left)

    def __str__(self) -> str:
        if self.right is None:
            return f"a finite number > {self.left}"
        return f"a finite number in ({self.left}, {self.right}]"


#: a finite number > 0 (temperatures)
POSITIVE = _LeftOpen(0)
#: PEBAL's smoothing of its anomaly map: torchvision's ``GaussianBlur(7, sigma=1)``
BLUR_KERNEL_SIZE, BLUR_SIGMA = 7, 1.0


def _blurred(m: torch.Tensor) -> torch.Tensor:
    """PEBAL's blur of ``(N, H, W)`` maps (:func:`cocodag.filters.gaussian_blur`, 7x7, sigma 1, mirror padding)."""
    pad = BLUR_KERNEL_SIZE // 2
    if min(m.shape[-2:]) <= pad:
        raise OodscoreError(f"the {BLUR_KERNEL_SIZE}x{BLUR_KERNEL_SIZE} blur needs maps of at least {pad + 1}x"
                            f"{pad + 1} pixels, got {m.shape[-2]}x{m.shape[-1]}")
    return gaussian_blur(m, BLUR_KERNEL_SIZE, BLUR_SIGMA)


def _softmax_parts(t: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(e, s, rest)`` of ``(N, C, H, W)`` logits at temperature T: ``e = exp((z - z_max) / T)`` with the argmax
    entry (first on ties) zeroed, ``s = 1 + sum(e)`` (the softmax normalizer relative to the max) and
    ``rest = sum(e)``: ``p_k = e_k / s`` for k != argmax, ``p_max = 1 / s`` and ``1 - p_max = rest / s`` exactly,
    without cancellation."""
    zmax, arg = t.max(dim=1, keepdim=True)
    e = torch.exp((t - zmax) / temperature)
    e.scatter_(1, arg, 0.0)
    rest = e.sum(dim=1)
    return e, 1.0 + rest, rest


class _LogitScorer(Scorer):
    """Shared plumbing: validate, optionally upsample to the label size, score on ``device``.

    Parameters
    ----------
    device : str or torch.device, optional
        Where to compute (``"auto"``, ``"cpu"``, ``"cuda[:i]"``); default: the input's device.
    """

    requires = "logits"
    _parameter_constraints = {"device": DEVICE}

    def __init__(self, device=None):
        self.device = device

    def _compute(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, logits, size=None) -> np.ndarray:
        """Anomaly map of ``logits``.

        Parameters
        ----------
        logits : (N, C, h, w) or (C, h, w) float array or tensor
        size : (H, W), optional
            Label size; logits are upsampled bilinearly to it first.

        Returns
        -------
        (N, H, W) or (H, W) float32 ndarray, higher = more anomalous.
        """
        self._validate_params()
        t, batched = as_logits_tensor(logits, device=self.device)
        with torch.no_grad():
            return to_output(self._compute(upsample(t, size)), batched)


class _TemperedScorer(_LogitScorer):
    """A logit scorer with a ``temperature`` parameter (a finite number > 0); subclasses set its default."""

    _parameter_constraints = {"temperature": [POSITIVE], "device": DEVICE}


class MSP(_LogitScorer):
    """Maximum softmax probability (Hendrycks & Gimpel 2017): ``1 - max_c softmax(z)_c``."""

    definition = "1 - max_c softmax(z)_c (maximum softmax probability; Hendrycks & Gimpel, ICLR 2017)"

    def _compute(self, t):
        return 1.0 - torch.softmax(t, dim=1).amax(dim=1)


class MSPT(_TemperedScorer):
    """Temperature-scaled MSP (ODIN without input perturbation; Liang et al. 2018): ``1 - max_c softmax(z/T)_c``.

    Parameters
    ----------
    temperature : float > 0, default=1000
        T (ODIN's choice; T = 1 is MSP).
    device : str or torch.device, optional
    """

    definition = ("1 - max_c softmax(z/T)_c, T = 1000 by default (temperature-scaled MSP, ODIN without input "
                  "perturbation; Liang et al., ICLR 2018)")

    def __init__(self, temperature: float = 1000.0, device=None):
        self.temperature = temperature
        self.device = device

    def _compute(self, t):
        _, s, rest = _softmax_parts(t, float(self.temperature))
        return rest / s


class MaxLogit(_LogitScorer):
    """Max logit (Hendrycks et al. 2022): ``-max_c z_c``."""

    definition = "-max_c z_c (max logit; Hendrycks et al., ICML 2022)"

    def _compute(self, t):
        return -t.amax(dim=1)


class Energy(_TemperedScorer):
    """Free energy (Liu et al. 2020): ``E(z) = -T * logsumexp(z / T)``; higher energy = more anomalous.

    Liu et al. score in-distribution data with ``-E = T * logsumexp(z/T)``; as an anomaly score (higher = more
    anomalous) that is ``E`` itself.

    Parameters
    ----------
    temperature : float > 0, default=1
    blur : bool, default=False
        Smooth the map at the label size with PEBAL's Gaussian blur (7x7, sigma 1, mirror padding); with T = 1
        this is the ``pebal`` score.
    device : str or torch.device, optional
    """

    definition = "-T * logsumexp_c(z_c / T), T = 1 by default (free energy; Liu et al., NeurIPS 2020)"
    _parameter_constraints = {"temperature": [POSITIVE], "blur": [BOOLEAN], "device": DEVICE}

    def __init__(self, temperature: float = 1.0, blur: bool = False, device=None):
        self.temperature = temperature
        self.blur = blur
        self.device = device

    def _compute(self, t):
        temperature = float(self.temperature)
        energy = -temperature * torch.logsumexp(t / temperature, dim=1)
        return _blurred(energy) if self.blur else energy


class PEBAL(_LogitScorer):
    """PEBAL's anomaly score (Tian et al. 2022): the free energy of the class logits at the label size, blurred.

    What its code's ``compute_anomaly_score`` computes from the network's output once upsampled to the input size:
    ``-logsumexp`` over the first 19 (= the C class) channels, then torchvision's ``GaussianBlur(7, sigma=1)``.
    The abstention channel of a PEBAL network is no class: ``oodscore`` hands scorers the class channels only (a
    ``logits.h5`` file's ``abstention_channel``), so here all the channels given are the classes.

    Parameters
    ----------
    device : str or torch.device, optional
    """

    definition = ("-logsumexp_c z_c over the C classes at the label size, then a 7x7 Gaussian blur (sigma 1, mirror "
                  "padding) (PEBAL's compute_anomaly_score; Tian et al., ECCV 2022)")

    def _compute(self, t):
        return _blurred(-torch.logsumexp(t, dim=1))


class Entropy(_LogitScorer):
    """Softmax entropy normalized to [0, 1]: ``H(softmax(z)) / log C``."""

    definition = ("-sum_c p_c log p_c / log C, p = softmax(z) (normalized softmax entropy; a baseline of "
                  "Fishyscapes, Blum et al., IJCV 2021)")

    def _compute(self, t):
        logp = torch.log_softmax(t, dim=1)
        # p*log p -> 0 when p underflows to 0 (logp finite), so no NaN from 0*-inf
        h = -(logp.exp() * logp).sum(dim=1)
        return h / math.log(t.shape[1])


class GEN(_LogitScorer):
    """Generalized entropy (Liu, Lochman & Zach 2023): ``sum over the M largest p_j of p_j^g * (1 - p_j)^g``.

    Parameters
    ----------
    gamma : float in (0, 1], default=0.1
    top_m : int >= 1, default=100
        M, capped at the number of classes.
    device : str or torch.device, optional

    ``1 - p_j`` is ``(s - e_j) / s`` for the non-maximal classes and ``rest / s`` for the argmax (see
    :func:`_softmax_parts`): no cancellation, so confident pixels keep distinct scores.
    """

    definition = ("sum over the M largest p_j of p_j^g (1 - p_j)^g, p = softmax(z), g = 0.1, M = 100 by default "
                  "(generalized entropy GEN; Liu, Lochman & Zach, CVPR 2023)")
    _parameter_constraints = {"gamma": [_LeftOpen(0, 1)], "top_m": [Interval(numbers.Integral, 1)],
                              "device": DEVICE}

    def __init__(self, gamma: float = 0.1, top_m: int = 100, device=None):
        self.gamma = gamma
        self.top_m = top_m
        self.device = device

    def _compute(self, t):
        e, s, rest = _softmax_parts(t)
        arg = t.argmax(dim=1, keepdim=True)
        p = e / s.unsqueeze(1)
        q = (s.unsqueeze(1) - e) / s.unsqueeze(1)       # 1 - p_k for k != argmax (s - e_k >= 1)
        p.scatter_(1, arg, (1.0 / s).unsqueeze(1))
        q.scatter_(1, arg, (rest / s).unsqueeze(1))
        g = float(self.gamma)
        terms = p.pow(g) * q.pow(g)
        m = min(int(self.top_m), t.shape[1])
        if m < t.shape[1]:
            terms = terms.gather(1, p.topk(m, dim=1).indices)
        return terms.sum(dim=1)


def _mc_array(mc: dict, key: str) -> np.ndarray:
    if key not in mc:
        raise OodscoreError(f"mc: missing key {key!r} (expected the MC dict of LogitsFile.mc: mean, central, "
                            "entropy)")
    try:
        return to_numpy(mc[key], f"mc['{key}']", kinds="fiu")
    except CocodagError as e:       # callers add the frame to OodscoreError only
        raise OodscoreError(str(e)) from None


class MCEntropy(Scorer):
    """Predictive entropy of the MC-dropout mean softmax, normalized: ``H(mean_t softmax(z_t)) / log C``.

    Input: one frame's MC dict (``LogitsFile.mc(i)``). Its ``entropy`` entry is used as stored: ``maxent-train
    export`` (``maxent_train.mc.mc_moments``) computes it from the mean of the T passes' softmax probabilities under
    both ``moments_of`` settings, in its accumulation dtype, before the float32 cast. It is not recomputed from
    ``mean``: under ``moments_of="logits"`` that is the mean *logit* (its softmax entropy is another quantity), and
    under ``"probs"`` a recomputation would only add the rounding of the stored mean. ``mean`` gives C.

    At native resolution (the MC dict carries ``upsample`` and the label ``size``, as ``LogitsFile.mc`` gives them),
    the map is computed at (h, w) and upsampled with that rule to the label size, as OODMC's decision map is.
    """

    requires = "mc"
    definition = ("H(p) / log C, p = mean over MC-dropout passes t of softmax(z_t) (predictive entropy; Gal & "
                  "Ghahramani, ICML 2016)")

    def __init__(self):
        pass

    def score(self, mc: dict, size=None) -> np.ndarray:
        """Normalized predictive-entropy map ``(H, W)`` float32 of one frame's MC dict (higher = more anomalous)."""
        self._validate_params()
        if not isinstance(mc, dict):
            raise OodscoreError(f"mc: expected a dict with keys mean, central, entropy; got {type(mc).__name__}")
        mean, ent = _mc_array(mc, "mean"), _mc_array(mc, "entropy")
        if mean.ndim != 3 or mean.shape[0] < 2 or ent.shape != mean.shape[1:]:
            raise OodscoreError(f"mc: expected mean (C >= 2, h, w) and entropy (h, w), got {mean.shape} and "
                                f"{ent.shape}")
        if not np.isfinite(ent).all():
            raise OodscoreError(f"mc['entropy']: {int((~np.isfinite(ent)).sum())} non-finite values")
        out = (ent.astype(np.float64) / math.log(mean.shape[0])).astype(np.float32)
        size = check_size(size)
        if size is None or size == out.shape:
            return out
        if mc.get("upsample") is None:
            raise OodscoreError(f"mc: the entropy map is {out.shape} but the label is {size}, and the MC dict "
                                "names no upsampling rule ('upsample', as LogitsFile.mc gives it)")
        try:
            rule = check_upsample_rule(dict(mc["upsample"]))
        except (CocodagError, TypeError, ValueError) as e:
            raise OodscoreError(f"mc['upsample']: {e}") from None
        return upsample_frame(out, size, rule)
