"""MC dropout (DESIGN §4.3): streaming moments of T stochastic passes, BatchNorm frozen, head-only when possible.

* ``PowerSums`` accumulates power sums of *shifted* samples ``d = x - shift`` (shift = the first sample, or the mean of
  the first batch of samples), so memory is independent of T and float32 accumulation keeps its precision even for
  logits far from zero (the cancellation in raw power sums ``Σx^k`` is what makes the naive form fail).
  Central moments are *population* moments: ``m_k = (1/T) Σ_t (x_t - x̄)^k`` (divide by T, not T-1), k = 2..K.
* ``enable_mc_dropout`` puts the model in eval mode except dropout layers: BatchNorm uses its running statistics, so a
  pixel's output never depends on the other images in the batch (the seed's code set BatchNorm to train mode too).
* ``mc_moments`` runs ``forward_features`` once and ``forward_head`` T times when the model has both (all our models
  keep every dropout layer in the head); otherwise, or if a dropout layer fires inside ``forward_features``, it runs T
  full forwards. Passes are seeded (``torch.manual_seed(seed)`` inside ``torch.random.fork_rng``, so the caller's RNG
  is untouched): with ``sample_batch=1`` pass t draws exactly the dropout masks of the t-th of T plain
  ``model(x)`` calls after ``torch.manual_seed(seed)``. ``sample_batch=b > 1`` runs b passes as one batch (faster on
  a GPU); the result is then deterministic for that (seed, b) and statistically equivalent, not bitwise equal.
"""
from __future__ import annotations

import contextlib
import warnings
from math import comb
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import MaxentError

MOMENTS_OF = ("logits", "probs")


def _is_dropout(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.dropout._DropoutNd)  # Dropout, Dropout1d/2d/3d, AlphaDropout, ...


class PowerSums:
    """Streaming power sums of order 1..K; ``mean()`` and population central moments of orders 2..K.

    Parameters
    ----------
    order : int
        K, the highest moment order (>= 1).
    dtype : torch.dtype, default=torch.float32
        Accumulation dtype (``torch.float64`` for extra headroom; float32 is enough thanks to the shift).
    """

    def __init__(self, order: int, dtype: torch.dtype = torch.float32):
        if int(order) < 1:
            raise MaxentError(f"moment order must be >= 1, got {order}")
        self.order = int(order)
        self.dtype = dtype
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.sums: list[torch.Tensor] = []

    def update(self, x: torch.Tensor) -> None:
        """Add one sample (any shape; every later sample must have the same shape)."""
        self.update_batch(x.unsqueeze(0))

    def update_batch(self, xs: torch.Tensor) -> None:
        """Add ``xs.shape[0]`` samples at once (leading axis = samples)."""
        xs = xs.to(self.dtype)
        if self.shift is None:
            self.shift = xs.mean(dim=0)  # any value near the mean works; the first batch's mean is a good one
            self.sums = [torch.zeros_like(self.shift) for _ in range(self.order)]
        elif xs.shape[1:] != self.shift.shape:
            raise MaxentError(f"PowerSums: sample shape {tuple(xs.shape[1:])} != {tuple(self.shift.shape)}")
        d = xs - self.shift
        half = (self.order + 1) // 2
        for db in d:  # per-sample in-place adds: several times faster on CPU than sum(dim=0) over the batch
            pw = [db]  # pw[j-1] = db**j for j <= ceil(K/2); higher orders as one fused product of two of them
            for _ in range(1, half):
                pw.append(pw[-1] * db)
            for k in range(1, self.order + 1):
                if k <= half:
                    self.sums[k - 1].add_(pw[k - 1])
                else:
                    self.sums[k - 1].addcmul_(pw[k // 2 - 1], pw[k - k // 2 - 1])
        self.count += xs.shape[0]

    def _raw(self) -> list[torch.Tensor]:
        if self.count == 0:
            raise MaxentError("PowerSums is empty: call update() first")
        return [s / self.count for s in self.sums]  # raw moments E[d^k] of the shifted data, k = 1..K

    def mean(self) -> torch.Tensor:
        """Mean of the samples (``shape`` of one sample)."""
        return self.shift + self._raw()[0]

    def central(self) -> torch.Tensor:
        """Population central moments of orders 2..K, stacked: ``(K-1, *shape)`` (empty first axis for K=1)."""
        raw = self._raw()
        mu = raw[0]
        out = []
        for k in range(2, self.order + 1):
            # E[(d - mu)^k] = sum_j C(k, j) E[d^j] (-mu)^(k-j), with E[d^0] = 1
            acc = (-mu) ** k
            for j in range(1, k + 1):
                acc = acc + comb(k, j) * raw[j - 1] * (-mu) ** (k - j)
            out.append(acc)
        if not out:
            return mu.new_zeros((0, *mu.shape))
        return torch.stack(out)


def enable_mc_dropout(model: nn.Module) -> int:
    """Eval mode everywhere except dropout layers (train mode). Returns the number of dropout layers."""
    model.eval()
    n = 0
    for m in model.modules():
        if _is_dropout(m):
            m.train()
            n += 1
    return n


@contextlib.contextmanager
def mc_dropout_mode(model: nn.Module):
    """Context manager: ``enable_mc_dropout`` inside, each module's previous train/eval flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield enable_mc_dropout(model)
    finally:
        for m, f in flags:
            m.training = f


def _repeat(obj: Any, b: int) -> Any:
    """Repeat every tensor of a (nested) feature structure ``b`` times along its batch axis."""
    if b == 1:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.repeat(b, *([1] * (obj.ndim - 1)))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_repeat(o, b) for o in obj)
    if isinstance(obj, dict):
        return {k: _repeat(v, b) for k, v in obj.items()}
    return obj


def _features_are_deterministic(model: nn.Module, x: torch.Tensor):
    """Run ``forward_features``; return (feats, True) unless a dropout layer fired inside it."""
    fired = []
    hooks = [m.register_forward_hook(lambda *_: fired.append(1)) for m in model.modules() if _is_dropout(m)]
    try:
        feats = model.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    return feats, not fired


@torch.no_grad()
def mc_moments(model: nn.Module, x: torch.Tensor, samples: int = 128, order: int = 4, moments_of: str = "logits",
               head_only: bool = True, seed: int = 0, sample_batch: int = 1,
               dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """MC-dropout moments of T stochastic passes over a batch of images.

    Parameters
    ----------
    model : torch.nn.Module
        ``model(x)`` -> logits ``(N, C, H, W)``; head-only sampling needs ``forward_features`` / ``forward_head``.
    x : Tensor (N, 3, H, W)
        Normalized images on the model's device.
    samples : int, default=128
        T, the number of stochastic passes (the seed's ``moment_num``).
    order : int, default=4
        K: central moments of orders 2..K are returned (the seed's ``moment_order``).
    moments_of : {"logits", "probs"}, default="logits"
        Moments of the logits (the paper) or of the softmax probabilities (the seed's code).
    head_only : bool, default=True
        Run the backbone once and resample only the head (when the model supports it).
    seed : int, default=0
        Seeds the dropout masks; the caller's global RNG state is restored afterwards.
    sample_batch : int, default=1
        Passes run together as one batch (see the module docstring for determinism).
    dtype : torch.dtype, default=torch.float32
        Accumulation dtype of the power sums.

    Returns
    -------
    dict
        ``mean`` (N, C, H, W), ``central`` (N, K-1, C, H, W) population central moments of orders 2..K,
        ``entropy`` (N, H, W) natural-log entropy of the mean softmax (unnormalized), all float32 on x's device;
        plus ``head_only`` (bool, what actually ran), ``samples``, ``order``, ``moments_of``, ``seed``.
    """
    if moments_of not in MOMENTS_OF:
        raise MaxentError(f"moments_of must be one of {MOMENTS_OF}, got {moments_of!r}")
    if int(samples) < 1:
        raise MaxentError(f"MC samples must be >= 1, got {samples}")
    if int(sample_batch) < 1:
        raise MaxentError(f"sample_batch must be >= 1, got {sample_batch}")
    if x.ndim != 4:
        raise MaxentError(f"images must be (N, 3, H, W), got shape {tuple(x.shape)}")
    samples, order, sample_batch = int(samples), int(order), int(sample_batch)
    devices = [x.device] if x.device.type == "cuda" else []

    with mc_dropout_mode(model) as n_dropout, torch.random.fork_rng(devices=devices):
        if n_dropout == 0:
            raise MaxentError(f"model {type(model).__name__} has no dropout layer: MC dropout would repeat one pass")
        feats = _head_features(model, x, samples) if head_only else None
        torch.manual_seed(seed)  # seeded after the features so head-only and full passes draw the same masks
        ps, prob_sum = _sample_passes(model, x, feats, samples, order, moments_of, sample_batch, dtype)

    mean = ps.mean()
    p_mean = mean if moments_of == "probs" else prob_sum / samples
    entropy = -torch.special.xlogy(p_mean, p_mean).sum(dim=1)  # 0·log 0 = 0
    return {
        "mean": mean.float(),
        "central": ps.central().float().transpose(0, 1).contiguous(),  # (K-1, N, ...) -> (N, K-1, ...)
        "entropy": entropy.float(),
        "head_only": feats is not None,
        "samples": samples,
        "order": order,
        "moments_of": moments_of,
        "seed": seed,
    }


def _head_features(model: nn.Module, x: torch.Tensor, samples: int) -> Any:
    """``forward_features(x)`` for head-only sampling, or None when the model cannot be sampled head-only."""
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        return None
    feats, deterministic = _features_are_deterministic(model, x)
    if not deterministic:
        warnings.warn(f"{type(model).__name__}.forward_features contains dropout: running {samples} full "
                      f"forward passes instead of head-only sampling", stacklevel=3)
        return None
    return feats


def _sample_passes(model: nn.Module, x: torch.Tensor, feats: Any, samples: int, order: int, moments_of: str,
                   sample_batch: int, dtype: torch.dtype) -> tuple[PowerSums, torch.Tensor | None]:
    """Run the T stochastic passes (head-only when ``feats`` is given), ``sample_batch`` at a time.

    Returns the power sums of the logits or probs, and the sum of the softmax over passes (moments of logits only:
    the entropy needs the mean softmax too).
    """
    size = tuple(x.shape[-2:])
    n = x.shape[0]
    ps = PowerSums(order, dtype=dtype)
    prob_sum = None
    for start in range(0, samples, sample_batch):
        b = min(sample_batch, samples - start)
        out = model.forward_head(_repeat(feats, b), size) if feats is not None else model(_repeat(x, b))
        out = out.float().reshape(b, n, *out.shape[1:])  # (b, N, C, H, W): pass-major, as _repeat stacked them
        probs = F.softmax(out, dim=2)
        ps.update_batch(out if moments_of == "logits" else probs)
        if moments_of == "logits":
            if prob_sum is None:
                prob_sum = torch.zeros(probs.shape[1:], dtype=dtype, device=probs.device)
            for pb in probs:
                prob_sum.add_(pb)
    return ps, prob_sum
