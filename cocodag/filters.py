"""Image filters shared by the trainer and the scores, written once on plain torch (no torchvision here).

:func:`gaussian_blur` is torchvision's ``transforms.GaussianBlur(kernel_size, sigma)`` as PEBAL and Balanced Energy
use it (their reward map and their anomaly score): kernel ``exp(-x**2 / (2 sigma**2))`` on
``x = -(k-1)/2 .. (k-1)/2``, normalized to sum 1, the outer product of two such kernels convolved with every map,
and reflect padding that does not repeat the edge pixel (SciPy's ``mode="mirror"``, not ``"reflect"``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gaussian_kernel1d", "gaussian_blur"]


def gaussian_kernel1d(kernel_size: int, sigma: float, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """The normalized 1-D Gaussian of ``kernel_size`` taps (torchvision's ``_get_gaussian_kernel1d``)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size, dtype=torch.float32)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return (pdf / pdf.sum()).to(dtype=dtype, device=device)


def gaussian_blur(x: torch.Tensor, kernel_size: int = 7, sigma: float = 1.0) -> torch.Tensor:
    """Blur every ``(H, W)`` map of ``x`` (shape ``(..., H, W)``, a float dtype) as torchvision's GaussianBlur does.

    Differentiable (the trainer blurs a map that carries gradients). ``H`` and ``W`` must exceed ``kernel_size // 2``
    (reflect padding).
    """
    if x.ndim < 2:
        raise ValueError(f"gaussian_blur expects (..., H, W), got shape {tuple(x.shape)}")
    k1 = gaussian_kernel1d(kernel_size, sigma, dtype=x.dtype, device=x.device)
    k2 = torch.mm(k1[:, None], k1[None, :])[None, None]          # (1, 1, k, k), as torchvision builds it
    shape = x.shape
    maps = x.reshape(-1, 1, shape[-2], shape[-1])
    pad = kernel_size // 2
    out = F.conv2d(F.pad(maps, [pad, pad, pad, pad], mode="reflect"), k2)
    return out.reshape(shape)
