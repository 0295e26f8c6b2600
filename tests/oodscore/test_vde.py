"""VDE: the vectorized closed form against a slow literal implementation of the seed's raster procedure."""
import numpy as np
import pytest
import torch

from oodscore import OodscoreError
from oodscore.scores import SML, VDE, SMLStats, drivable_region

torch.set_num_threads(1)


# ---------------------------------------------------------------------- slow literal reference (docs/methods.md §5.5)
def literal_region(confident, kernel="square"):
    """The seed's description, pixel by pixel.

    (3) In-place raster dilation: visit pixels top->bottom, left->right; a pixel becomes set when any pixel of its
        neighbourhood (3x3 square, or the 1x3 row segment) is set in the mask *as updated so far* (in place, so a set
        pixel propagates to the right along its row and, with the square, down into later rows).
    (4) Two row-wise erosions: in every row, from the left end rightwards, clear pixels until the first
        confident-road pixel; then from the right end leftwards, clear pixels until the first confident-road pixel.
    """
    h, w = confident.shape
    m = confident.copy()
    offs = ([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)] if kernel == "square"
            else [(0, -1), (0, 0), (0, 1)])
    for y in range(h):
        for x in range(w):
            for dy, dx in offs:
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and m[yy, xx]:
                    m[y, x] = True
                    break
    for y in range(h):
        for x in range(w):  # left -> right
            if confident[y, x]:
                break
            m[y, x] = False
        for x in range(w - 1, -1, -1):  # right -> left
            if confident[y, x]:
                break
            m[y, x] = False
    return m


def random_masks(n, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = int(rng.integers(1, 9)), int(rng.integers(1, 14))
        density = rng.choice([0.02, 0.1, 0.3, 0.6, 0.95])
        m = rng.random((h, w)) < density
        if i % 7 == 0:
            m[rng.integers(0, h)] = False  # an empty row
        if i % 11 == 0:
            m[rng.integers(0, h)] = True  # a full row
        yield m


def test_closed_form_equals_literal_on_random_masks():
    n = 0
    for m in random_masks(300):
        ref = literal_region(m)
        assert np.array_equal(literal_region(m, kernel="row"), ref)  # both readings of "dilation" agree
        got = drivable_region(m)
        assert got.dtype == bool and np.array_equal(got, ref), m.astype(int)
        assert np.array_equal(drivable_region(torch.from_numpy(m)).numpy(), ref)
        n += 1
    assert n >= 200


def test_closed_form_batched():
    masks = [m for m in random_masks(40, seed=1) if m.shape == (5, 9)] or [np.eye(5, 9, dtype=bool)]
    masks = np.stack(masks + [np.zeros((5, 9), bool), np.ones((5, 9), bool)])
    got = drivable_region(torch.from_numpy(masks)).numpy()
    assert np.array_equal(got, np.stack([literal_region(m) for m in masks]))
    assert np.array_equal(drivable_region(masks), got)


# ---------------------------------------------------------------------- VDE score
@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    coarse = rng.normal(scale=3.0, size=(6, 5, 9, 11))
    coarse[:, 0, 5:] += 6.0  # road in the lower part of the image
    z = np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)[:, :, :34, :41]
    z = (z + rng.normal(scale=0.7, size=z.shape)).astype(np.float32)
    stats = SMLStats().partial_fit(z[:4])
    return stats, z[4:]


@pytest.mark.parametrize("iters,smoothing", [(4, True), (0, False)])
def test_vde_region_and_scores(setup, iters, smoothing):
    stats, z = setup
    tau = 0.5
    sml = SML(stats, boundary_iters=iters, smoothing=smoothing).score(z)
    out = VDE(stats, threshold=tau, boundary_iters=iters, smoothing=smoothing).score(z)
    pred = z.argmax(axis=1)
    for i in range(z.shape[0]):
        # confident road: predicted road and post-processed s = -score >= tau
        region = literal_region((pred[i] == 0) & (-sml[i] >= tau))
        assert region.any() and (~region).any()
        np.testing.assert_array_equal(out[i][region], sml[i][region])  # inside: the SML score itself
        assert out[i][~region].max() < out[i][region].min()  # outside: below every in-region score
        assert np.all(out[i][~region] < sml[i][~region])
        # order outside is kept (a constant shift per frame)
        shift = sml[i][~region] - out[i][~region]
        np.testing.assert_allclose(shift, shift[0], rtol=1e-5)
    fixed = VDE(stats, threshold=tau, margin=2.0, boundary_iters=iters, smoothing=smoothing).score(z)
    for i in range(z.shape[0]):
        region = literal_region((pred[i] == 0) & (-sml[i] >= tau))
        np.testing.assert_array_equal(fixed[i], np.where(region, sml[i], sml[i] - np.float32(2.0)))


def test_vde_threshold_monotone_and_empty_region(setup):
    stats, z = setup
    low = VDE(stats, threshold=-1.0, margin=1.0).score(z[0])
    high = VDE(stats, threshold=1.5, margin=1.0).score(z[0])
    sml = SML(stats).score(z[0])
    in_low, in_high = low == sml, high == sml
    assert in_low.sum() > in_high.sum() and not (in_high & ~in_low).any()
    # no confident road at all: every pixel is shifted by the same amount, order kept
    none = VDE(stats, threshold=1e6).score(z[0])
    d = sml - none
    assert d.min() > 0
    np.testing.assert_allclose(d, d.flat[0], rtol=1e-5)


def test_vde_bad_params(setup):
    stats, z = setup
    with pytest.raises(OodscoreError, match="threshold"):
        VDE(stats, threshold=float("nan")).score(z[0])
    with pytest.raises(OodscoreError, match="margin"):
        VDE(stats, margin=-1.0).score(z[0])


def test_vde_passes_the_sml_border_through(setup):
    """VDE restricts the SML map it is configured with: `border` / `boundary_width` reach its SML."""
    stats, z = setup
    tau = 0.5
    for border, width in (("official-2021", None), ("geodesic", 8)):
        sml = SML(stats, border=border, boundary_width=width).score(z)
        out = VDE(stats, threshold=tau, border=border, boundary_width=width).score(z)
        pred = z.argmax(axis=1)
        for i in range(z.shape[0]):
            region = literal_region((pred[i] == 0) & (-sml[i] >= tau))
            np.testing.assert_array_equal(out[i][region], sml[i][region])
    geo = VDE(stats, threshold=tau).score(z)
    off = VDE(stats, threshold=tau, border="official-2021").score(z)
    assert not np.array_equal(geo, off)       # the border rule changes the map near the image edge
