"""cocodag.filters.gaussian_blur against SciPy (an independent implementation of the same filter)."""
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from cocodag.filters import gaussian_blur, gaussian_kernel1d


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blur_equals_scipy_mirror_correlation(dtype):
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 17, 23))).to(dtype)
    k = np.exp(-0.5 * np.arange(-3, 4, dtype=np.float64) ** 2)
    k /= k.sum()
    ref = ndi.correlate1d(ndi.correlate1d(x.double().numpy(), k, axis=-1, mode="mirror"), k, axis=-2, mode="mirror")
    # the kernel is computed in float32 first, as torchvision did when PEBAL was written: ~1e-8 from float64
    assert np.abs(gaussian_blur(x).double().numpy() - ref).max() < 1e-6


def test_edge_is_not_repeated_and_blur_keeps_constants_and_shapes():
    x = torch.zeros(1, 9, 9, dtype=torch.float64)
    x[0, 0, 4] = 1.0                 # an edge pixel: mirror padding reflects it without repeating it
    y = gaussian_blur(x)
    k = gaussian_kernel1d(7, 1.0, dtype=torch.float64)
    assert y.shape == x.shape
    assert torch.allclose(y[0, 0, 4], k[3] * k[3])     # the mirrored copies land on rows -1.. not on row 0 again
    assert torch.allclose(gaussian_blur(torch.full((4, 8, 8), 2.5)), torch.full((4, 8, 8), 2.5))


def test_gradients_flow():
    x = torch.randn(1, 8, 8, requires_grad=True)
    gaussian_blur(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
