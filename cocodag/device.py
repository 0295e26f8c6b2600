"""Device resolution for every command's ``--device`` option, defined once (torch is imported only when called)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import CocodagError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str | torch.device | None, *, option: str = "--device") -> torch.device:
    """``"auto"`` (or None) -> CUDA when available, else CPU; anything else -> ``torch.device(name)``, checked.

    Raises
    ------
    CocodagError
        An unparsable name, or CUDA asked for on a machine without it.
    """
    import torch

    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise CocodagError(f"{option} {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CocodagError(f"{option} {name}: CUDA is not available on this machine (use {option} cpu)")
    return dev
