"""Stateless baseline scores (DESIGN §4.4): MSP, max-logit, normalized entropy. Higher = more anomalous."""
from __future__ import annotations

import math

import numpy as np
import torch

from oodscore.scores.base import DEVICE, Scorer, as_logits_tensor, to_output, upsample


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


class MSP(_LogitScorer):
    """Maximum softmax probability (Hendrycks & Gimpel 2017): ``1 - max_c softmax(z)_c``."""

    def _compute(self, t):
        return 1.0 - torch.softmax(t, dim=1).amax(dim=1)


class MaxLogit(_LogitScorer):
    """Max logit (Hendrycks et al. 2022): ``-max_c z_c``."""

    def _compute(self, t):
        return -t.amax(dim=1)


class Entropy(_LogitScorer):
    """Softmax entropy normalized to [0, 1]: ``H(softmax(z)) / log C``."""

    def _compute(self, t):
        logp = torch.log_softmax(t, dim=1)
        # p*log p -> 0 when p underflows to 0 (logp finite), so no NaN from 0*-inf
        h = -(logp.exp() * logp).sum(dim=1)
        return h / math.log(t.shape[1])
