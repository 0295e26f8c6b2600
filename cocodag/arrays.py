"""The one array-conversion rule of the project: numpy arrays and torch tensors in, a numpy array out."""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import CocodagError

__all__ = ["is_torch", "to_numpy"]


def is_torch(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (without importing torch)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def to_numpy(x: Any, name: str = "array", *, kinds: str | None = None) -> np.ndarray:
    """``x`` as a numpy array: a tensor is detached and moved to the CPU, bfloat16 read as float32 (numpy has no
    bfloat16; every bfloat16 value is exact in float32), other dtypes kept; anything else through ``np.asarray``.

    ``kinds``: the numpy dtype kinds accepted (e.g. ``"fiu"``); anything else is one line naming ``name``.
    """
    if is_torch(x):
        t = x.detach()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        a = t.cpu().numpy()
    else:
        try:
            a = np.asarray(x)
        except (TypeError, ValueError) as e:
            raise CocodagError(f"{name}: expected a numpy array or a torch tensor, got {type(x).__name__} "
                               f"({e})") from None
    if kinds is not None and a.dtype.kind not in kinds:
        raise CocodagError(f"{name}: expected a numeric array, got dtype {a.dtype}")
    return a
