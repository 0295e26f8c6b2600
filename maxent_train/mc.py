"""MC dropout: streaming moments of T stochastic passes, BatchNorm frozen, head-only when possible.

What export stores of them (the ``mc/*`` block of ``logits.h5``) is in docs/formats.md, section 3.

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
  ``native=True`` samples the logits before the network's final upsampling (``forward_head(feats, None)`` /
  ``forward_native``; head-only, the masks are the same as at the input size): what export stores by default.
* ``prepare_mc_dropout`` (run by export before sampling) refuses a model none of whose dropout layers reaches the
  logits (zeroing their outputs leaves the logits unchanged: SML's only dropout is in its unused ``dsn`` head), which
  would otherwise give all-zero central moments; with ``p`` it first inserts test-time ``nn.Dropout2d(p)`` on the
  input of the final classifier (``insert_mc_dropout``; the protocol a model follows for it is in
  ``maxent_train.models._registry``).
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from math import comb
from typing import Any, Protocol, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import MaxentError
from .choices import MOMENTS_OF, MomentsOf


class SplitModel(Protocol):
    """What head-only sampling calls: ``forward(x) == forward_head(forward_features(x), x.shape[-2:])``, every dropout
    layer in the head (our models get both from ``maxent_train.models._split.SplitForward``)."""

    def forward_features(self, x: torch.Tensor) -> Any: ...

    def forward_head(self, feats: Any, size: Sequence[int] | None = None) -> torch.Tensor: ...


def _as_split(model: nn.Module) -> SplitModel | None:
    """``model`` when it has the trunk / head split (``forward_features`` and ``forward_head``), else None."""
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return cast(SplitModel, model)
    return None


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
        raw = self._raw()                  # refuses an empty state
        assert self.shift is not None      # set by the first update
        return self.shift + raw[0]

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
def mc_dropout_mode(model: nn.Module) -> Iterator[int]:
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


def _features_are_deterministic(model: nn.Module, x: torch.Tensor) -> tuple[Any, bool]:
    """Run ``forward_features``; return (feats, True) unless a dropout layer fired inside it."""
    fired: list[int] = []
    hooks = [m.register_forward_hook(lambda *_: fired.append(1)) for m in model.modules() if _is_dropout(m)]
    try:
        feats = cast(SplitModel, model).forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    return feats, not fired


@torch.no_grad()
def mc_moments(model: nn.Module, x: torch.Tensor, samples: int = 128, order: int = 4, moments_of: MomentsOf = "logits",
               head_only: bool = True, seed: int = 0, sample_batch: int = 1,
               dtype: torch.dtype = torch.float32, native: bool = False, classes: int | None = None
               ) -> dict[str, Any]:
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
    native : bool, default=False
        Sample the logits before the network's final upsampling (``forward_head(feats, None)`` / ``forward_native``),
        at its output resolution (h, w); only the mean of these moments commutes with that upsampling.
    classes : int, optional
        The class channels are the first ``classes`` (the rest, an abstention channel, is no class): the softmax
        whose mean gives the entropy is taken over them, while the moments of the logits keep every channel.
        Moments of probabilities are then refused (they would not have the logits' channels).

    Returns
    -------
    dict
        ``mean`` (N, C, H, W) (native: (N, C, h, w), likewise below), ``central`` (N, K-1, C, H, W) population
        central moments of orders 2..K,
        ``entropy`` (N, H, W) natural-log entropy of the mean softmax (unnormalized), all float32 on x's device;
        plus ``head_only`` (bool, what actually ran), ``samples``, ``order``, ``moments_of``, ``seed``.
    """
    if moments_of not in MOMENTS_OF:
        raise MaxentError(f"moments_of must be one of {MOMENTS_OF}, got {moments_of!r}")
    if int(samples) < 1:
        raise MaxentError(f"MC samples must be >= 1, got {samples}")
    if int(sample_batch) < 1:
        raise MaxentError(f"sample_batch must be >= 1, got {sample_batch}")
    if classes is not None and moments_of == "probs":
        raise MaxentError("moments of probabilities with an abstention channel: the class probabilities have one "
                          "channel less than the logits; use moments of logits")
    if x.ndim != 4:
        raise MaxentError(f"images must be (N, 3, H, W), got shape {tuple(x.shape)}")
    samples, order, sample_batch = int(samples), int(order), int(sample_batch)
    devices = [x.device] if x.device.type == "cuda" else []

    with mc_dropout_mode(model) as n_dropout, torch.random.fork_rng(devices=devices):
        if n_dropout == 0:
            raise MaxentError(f"model {type(model).__name__} has no dropout layer: MC dropout would repeat one pass")
        feats = _head_features(model, x, samples) if head_only else None
        torch.manual_seed(seed)  # seeded after the features so head-only and full passes draw the same masks
        ps, prob_sum = _sample_passes(model, x, feats, samples, order, moments_of, sample_batch, dtype, native,
                                      classes)

    mean = ps.mean()
    if moments_of == "probs":
        p_mean = mean
    else:
        assert prob_sum is not None        # summed for moments of logits
        p_mean = prob_sum / samples
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
    if _as_split(model) is None:
        return None
    feats, deterministic = _features_are_deterministic(model, x)
    if not deterministic:
        warnings.warn(f"{type(model).__name__}.forward_features contains dropout: running {samples} full "
                      f"forward passes instead of head-only sampling", stacklevel=3)
        return None
    return feats


def _sample_passes(model: nn.Module, x: torch.Tensor, feats: Any, samples: int, order: int, moments_of: str,
                   sample_batch: int, dtype: torch.dtype, native: bool = False,
                   classes: int | None = None) -> tuple[PowerSums, torch.Tensor | None]:
    """Run the T stochastic passes (head-only when ``feats`` is given), ``sample_batch`` at a time, at the input size
    or (``native``) at the network's output resolution.

    Returns the power sums of the logits or probs, and the sum of the softmax over passes (moments of logits only:
    the entropy needs the mean softmax too).
    """
    full: Callable[[torch.Tensor], torch.Tensor] = model
    if native:
        forward_native = getattr(model, "forward_native", None)
        if not callable(forward_native):
            raise MaxentError(f"model {type(model).__name__} has no forward_native: cannot sample at native "
                              "resolution")
        full = forward_native
    head = cast(SplitModel, model).forward_head if feats is not None else None
    size = None if native else tuple(x.shape[-2:])
    n = x.shape[0]
    ps = PowerSums(order, dtype=dtype)
    prob_sum = None
    for start in range(0, samples, sample_batch):
        b = min(sample_batch, samples - start)
        out = head(_repeat(feats, b), size) if head is not None else full(_repeat(x, b))
        out = out.float().reshape(b, n, *out.shape[1:])  # (b, N, C, H, W): pass-major, as _repeat stacked them
        probs = F.softmax(out if classes is None else out[:, :, :classes], dim=2)
        ps.update_batch(out if moments_of == "logits" else probs)
        if moments_of == "logits":
            if prob_sum is None:
                prob_sum = torch.zeros(probs.shape[1:], dtype=dtype, device=probs.device)
            for pb in probs:
                prob_sum.add_(pb)
    return ps, prob_sum


# --------------------------------------------------------------------------------------------------------- checks
def _fire_recorder(modules: dict[str, nn.Module], fired: list[str], zero: bool) -> list:
    """Forward hooks on ``modules`` that record which ran (and, with ``zero``, replace their output by zeros)."""
    def hook_for(name: str):
        def hook(_mod, _args, out):
            fired.append(name)
            return torch.zeros_like(out) if zero and isinstance(out, torch.Tensor) else None
        return hook
    return [m.register_forward_hook(hook_for(n)) for n, m in modules.items()]


def _forward_fn(model: nn.Module, x: torch.Tensor, modules: dict[str, nn.Module]) -> Callable[[], torch.Tensor]:
    """A deterministic (eval-mode) forward of ``x``: ``forward_head`` on features computed once when the model has the
    split and none of ``modules`` runs inside ``forward_features``, else a full ``model(x)``."""
    split = _as_split(model)
    if split is not None:
        fired: list[str] = []
        hooks = _fire_recorder(modules, fired, zero=False)
        try:
            feats = split.forward_features(x)
        finally:
            for h in hooks:
                h.remove()
        if not fired:
            size = tuple(x.shape[-2:])
            return lambda: split.forward_head(feats, size)
    return lambda: model(x)


@torch.no_grad()
def output_depends_on(model: nn.Module, x: torch.Tensor, modules: dict[str, nn.Module]) -> tuple[list[str], bool]:
    """Whether zeroing the outputs of ``modules`` (name -> module) changes the model's logits on ``x``, in eval mode.

    Returns ``(names of the modules that ran, changed)``; the model's train/eval flags are restored.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        run = _forward_fn(model, x, modules)
        base = run()
        fired: list[str] = []
        hooks = _fire_recorder(modules, fired, zero=True)
        try:
            perturbed = run()
        finally:
            for h in hooks:
                h.remove()
    finally:
        for m, f in flags:
            m.training = f
    return list(dict.fromkeys(fired)), not torch.equal(base, perturbed)


def dropout_on_output_path(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the dropout layers (``p > 0``) whose output reaches the logits on ``x`` (empty when none does: MC
    dropout would then repeat one pass and write all-zero central moments)."""
    layers = {n: m for n, m in model.named_modules() if _is_dropout(m) and float(getattr(m, "p", 0.0)) > 0}
    if not layers:
        return []
    fired, changed = output_depends_on(model, x, layers)
    return fired if changed else []


def _no_dropout_detail(model: nn.Module) -> str:
    """Why no dropout reaches the output, for the error message."""
    all_drop = [n for n, m in model.named_modules() if _is_dropout(m)]
    live = [n for n, m in model.named_modules() if _is_dropout(m) and float(getattr(m, "p", 0.0)) > 0]
    if not all_drop:
        return "it has no dropout layer"
    if not live:
        return f"its dropout layers ({', '.join(all_drop[:3])}) have p = 0"
    return f"its dropout ({', '.join(live[:3])}) is off the path to the logits"


def final_classifier(model: nn.Module, x: torch.Tensor, name: str = "model") -> str:
    """The dotted name of the module producing the logits: ``model.final_classifier`` (or ``final_classifier_name``)
    when set, else the last ``Conv2d`` with ``num_classes`` outputs that runs and whose output reaches the logits."""
    named = dict(model.named_modules())
    explicit = getattr(model, "final_classifier", None) or getattr(model, "final_classifier_name", None)
    if isinstance(explicit, str):
        if explicit not in named:
            raise MaxentError(f"model {name}: final_classifier {explicit!r} is not one of its modules")
        return explicit
    nc = getattr(model, "num_classes", None)
    convs: dict[str, nn.Module] = {n: m for n, m in named.items() if isinstance(m, nn.Conv2d) and m.out_channels == nc}
    ran, _ = output_depends_on(model, x, convs) if convs else ([], False)
    for n in reversed(ran):
        if output_depends_on(model, x, {n: convs[n]})[1]:
            return n
    raise MaxentError(f"model {name}: cannot find its final classifier (no Conv2d with {nc} outputs reaches the "
                      f"logits); give the model a `final_classifier` attribute naming that module")


def _apply_mc_dropout(mod: nn.Module, args: tuple) -> tuple:
    return (mod.get_submodule("mc_dropout")(args[0]), *args[1:])


def insert_mc_dropout(model: nn.Module, p: float, x: torch.Tensor, name: str = "model") -> str:
    """Insert test-time ``nn.Dropout2d(p)`` on the input of the model's final classifier; returns where.

    A model's own ``insert_mc_dropout(p)`` takes precedence. Otherwise the dropout becomes the child ``mc_dropout`` of
    the classifier (no parameters: the state_dict is unchanged), applied by a forward pre-hook: identity in eval
    mode, active in MC mode (:func:`enable_mc_dropout`).
    """
    own = getattr(model, "insert_mc_dropout", None)
    if own is not None:
        return str(own(p))
    target = final_classifier(model, x, name)
    mod = dict(model.named_modules())[target]
    if hasattr(mod, "mc_dropout"):
        raise MaxentError(f"model {name}: test-time dropout already inserted before {target}")
    mod.add_module("mc_dropout", nn.Dropout2d(p))
    mod.register_forward_pre_hook(_apply_mc_dropout)
    return f"Dropout2d(p={p}) on the input of {target}"


def prepare_mc_dropout(model: nn.Module, x: torch.Tensor, p: float | None = None, name: str = "model") -> str | None:
    """Make sure MC sampling of ``model`` cannot be silently empty; run before sampling, on one frame ``x``.

    Without ``p``: refuse (one line naming the model and ``--mc-dropout P``) when no dropout layer reaches the logits.
    With ``p``: insert test-time dropout before the final classifier (:func:`insert_mc_dropout`; refused when the
    model already has dropout on its output path) and check that it reaches the logits. Returns where the dropout
    was inserted (None without ``p``).
    """
    active = dropout_on_output_path(model, x)
    if p is None:
        if not active:
            raise MaxentError(f"model {name}: no dropout layer with p > 0 is on the path to its output "
                              f"({_no_dropout_detail(model)}), so MC dropout would write all-zero central moments; "
                              f"pass --mc-dropout P (e.g. 0.1) to insert test-time dropout before its final "
                              f"classifier (a deviation: the network was not trained with it there)")
        return None
    if active:
        raise MaxentError(f"--mc-dropout {p}: model {name} already has dropout on its output path "
                          f"({', '.join(active[:3])}); drop --mc-dropout (its own dropout is sampled)")
    where = insert_mc_dropout(model, p, x, name)
    if not dropout_on_output_path(model, x):
        raise MaxentError(f"--mc-dropout {p}: the inserted dropout ({where}) does not reach model {name}'s logits; "
                          f"give the model a `final_classifier` attribute naming its last layer")
    return where
