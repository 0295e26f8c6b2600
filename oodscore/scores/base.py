"""Common pieces of the scorers: input validation, numpy/torch conversion, the ``Scorer`` base class.

Every scorer maps logits to an anomaly map, **higher = more anomalous** (DESIGN §4.4), returned as a float32 numpy
array ``(N, H, W)`` for ``(N, C, h, w)`` input or ``(H, W)`` for ``(C, h, w)`` input.
"""
from __future__ import annotations

import numpy as np
import torch

from cocodag.formats.logits import upsample as upsample_rule
from oodscore import OodscoreError


def resolve_device(device) -> torch.device | None:
    """``None`` -> None (follow the input's device); a string or ``torch.device`` -> that device."""
    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise OodscoreError(f"device: expected e.g. 'cpu' or 'cuda:0', got {device!r}") from e


def as_logits_tensor(logits, *, name: str = "logits", device=None, check_finite: bool = True
                     ) -> tuple[torch.Tensor, bool]:
    """Validate logits and return them as a float32 ``(N, C, h, w)`` tensor plus whether a batch axis was given.

    Parameters
    ----------
    logits : (N, C, h, w) or (C, h, w) array-like, numpy or torch, any float dtype (float16 is widened)
    name : str
        Argument name used in error messages.
    device : str or torch.device, optional
        Where to compute; default: the tensor's own device (CPU for numpy).
    check_finite : bool
        Refuse NaN / inf values (they would silently poison every downstream statistic).

    Raises
    ------
    OodscoreError
        Wrong number of dimensions, fewer than 2 classes, non-numeric dtype or non-finite values.
    """
    if isinstance(logits, torch.Tensor):
        t = logits
    else:
        arr = np.asarray(logits)
        if arr.dtype.kind not in "fiu":
            raise OodscoreError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.ndim not in (3, 4):
        raise OodscoreError(f"{name}: expected shape (N, C, H, W) or (C, H, W), got {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:
        raise OodscoreError(f"{name}: expected a real float array, got {t.dtype}")
    batched = t.ndim == 4
    if not batched:
        t = t.unsqueeze(0)
    if t.shape[1] < 2:
        raise OodscoreError(f"{name}: expected at least 2 classes on axis 1, got {t.shape[1]}")
    dev = resolve_device(device)
    if dev is not None:
        t = t.to(dev)
    t = t.float()
    if check_finite and not bool(torch.isfinite(t).all()):
        raise OodscoreError(f"{name}: contains NaN or inf values")
    return t, batched


def check_size(size) -> tuple[int, int] | None:
    """Validate an output ``(H, W)`` size (the label size)."""
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError) as e:
        raise OodscoreError(f"size: expected (H, W) with two positive ints, got {size!r}") from e
    if h <= 0 or w <= 0:
        raise OodscoreError(f"size: expected (H, W) with two positive ints, got {size!r}")
    return h, w


def upsample(t: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of ``(N, C, h, w)`` to ``size`` = (H, W) (``align_corners=False``, as the SML code's
    ``Upsample``); no-op when ``size`` is None or already equal."""
    return upsample_rule(t, check_size(size))


def to_output(t: torch.Tensor, batched: bool) -> np.ndarray:
    """``(N, H, W)`` tensor -> float32 numpy, dropping the batch axis when the input had none."""
    out = t.detach().to("cpu", torch.float32).numpy()
    return out if batched else out[0]


class Scorer:
    """Base class: ``fit`` (no-op unless the scorer has state) and ``score(logits, size=None) -> map``.

    Parameters live in ``__init__`` (copied onto attributes of the same name), learned state in attributes ending
    with ``_`` (scikit-learn convention).
    """

    #: whether ``fit`` must be called (or state loaded) before ``score``
    requires_fit = False

    def fit(self, *args, **kwargs):
        return self

    def score(self, logits, size=None) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_params(self) -> dict:
        import inspect
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names if hasattr(self, n)}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if not hasattr(v, "mean_"))
        return f"{type(self).__name__}({params})"
