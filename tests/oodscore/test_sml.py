"""SMLStats and SML against an independent float64 numpy re-computation of docs/methods.md §4.3 and §5.4.

The reference below uses only numpy (explicit padding and loops over kernel offsets, the 2-D Gaussian applied
directly, diamond dilation from its definition), never the torch code under test.
"""
import json
import warnings

import numpy as np
import pytest
import torch

from cocodag import CocodagError  # SMLStats is the foundation's (cocodag.formats.sml_stats)
from oodscore import OodscoreError
from oodscore.scores import SML, SMLStats

torch.set_num_threads(1)


# ---------------------------------------------------------------------- float64 numpy reference
def ref_bilinear(z, out_h, out_w):
    """Bilinear resize (align_corners=False, half-pixel centres, clamped) of (C, h, w) in float64."""
    c, h, w = z.shape

    def axis(n_in, n_out):
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.maximum(src, 0.0)
        i0 = np.floor(src).astype(int)
        i0 = np.minimum(i0, n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, ly = axis(h, out_h)
    x0, x1, lx = axis(w, out_w)
    z = z.astype(np.float64)
    top = z[:, y0][:, :, x0] * (1 - lx) + z[:, y0][:, :, x1] * lx
    bot = z[:, y1][:, :, x0] * (1 - lx) + z[:, y1][:, :, x1] * lx
    return top * (1 - ly)[:, None] + bot * ly[:, None]


def _shifts(a, offsets, pad, mode="constant", value=0):
    p = np.pad(a, pad, mode=mode, constant_values=value) if mode == "constant" else np.pad(a, pad, mode=mode)
    h, w = a.shape
    return [p[pad + dy:pad + dy + h, pad + dx:pad + dx + w] for dy, dx in offsets]


CROSS = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]
SQUARE = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def ref_boundary(pred):
    """B0 = dilate(pred, cross) != erode(pred, square); outside pixels never take part (geodesic)."""
    big = 10 ** 6
    dil = np.max(_shifts(pred, CROSS, 1, value=-big), axis=0)
    ero = np.min(_shifts(pred, SQUARE, 1, value=big), axis=0)
    return dil != ero


def ref_diamond(b, r):
    offs = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if abs(dy) + abs(dx) <= r]
    return np.any(_shifts(b, offs, r, value=False), axis=0)


def ref_box(x):
    return np.sum(_shifts(x, SQUARE, 1, mode="edge"), axis=0)


def ref_sml(z, mean, std, iters=4, smoothing=True, size=None):
    """(H, W) float64 SML score -s for one (C, h, w) logits array."""
    z = z.astype(np.float64) if size is None else ref_bilinear(z, *size)
    lmax, pred = z.max(axis=0), z.argmax(axis=0)
    s = (lmax - mean[pred]) / std[pred]
    if iters:
        b0 = ref_boundary(pred)
        for r in [3, 2, 1, 0][:iters]:
            b = ref_diamond(b0, r)
            m = 1.0 - b
            num, den = ref_box(s * m), ref_box(m)
            avg = np.where(den > 0, num / np.where(den > 0, den, 1.0), s)
            s = np.where(b, avg, s)
    if smoothing:
        g1 = np.exp(-(np.arange(-3, 4) ** 2) / 2.0)
        g2 = np.outer(g1, g1)
        g2 /= g2.sum()
        offs = [(6 * i, 6 * j) for i in range(-3, 4) for j in range(-3, 4)]
        parts = _shifts(s, offs, 18, mode="edge")
        s = sum(g2[dy // 6 + 3, dx // 6 + 3] * p for (dy, dx), p in zip(offs, parts))
    return -s


def ref_stats(z):
    """Per predicted class (count, mean, unbiased var) of the max logit, float64, plus global (mean, std)."""
    z = z.astype(np.float64)
    lmax, pred = z.max(axis=1).ravel(), z.argmax(axis=1).ravel()
    c = z.shape[1]
    cnt = np.array([(pred == k).sum() for k in range(c)])
    mean = np.array([lmax[pred == k].mean() if cnt[k] else np.nan for k in range(c)])
    var = np.array([lmax[pred == k].var(ddof=1) if cnt[k] > 1 else np.nan for k in range(c)])
    return cnt, mean, var, (lmax.mean(), lmax.std(ddof=1))


def blocky_logits(rng, n, c, h, w, cell=4, noise=0.5):
    """Logits whose argmax forms blocks (realistic boundaries) plus noise; float32."""
    coarse = rng.normal(scale=3.0, size=(n, c, h // cell + 1, w // cell + 1))
    z = np.repeat(np.repeat(coarse, cell, axis=2), cell, axis=3)[:, :, :h, :w]
    return (z + rng.normal(scale=noise, size=z.shape)).astype(np.float32)


# ---------------------------------------------------------------------- SMLStats
def test_stats_match_numpy_and_chunks():
    rng = np.random.default_rng(0)
    z = blocky_logits(rng, 6, 5, 20, 24)
    cnt, mean, var, _ = ref_stats(z)
    one = SMLStats().partial_fit(z)
    per_image = SMLStats()
    for i in range(6):
        per_image.partial_fit(z[i])  # (C, H, W) single image
    uneven = SMLStats().fit([z[:1], z[1:4], torch.from_numpy(z[4:])])
    for st in (one, per_image, uneven):
        np.testing.assert_array_equal(st.count_, cnt)
        np.testing.assert_allclose(st.mean_, mean, rtol=1e-12)
        np.testing.assert_allclose(st.var_, var, rtol=1e-10)
        np.testing.assert_allclose(st.std_, np.sqrt(var), rtol=1e-10)
        assert st.n_images_ == 6 and st.n_pixels_ == 6 * 20 * 24


def test_stats_float16_and_large_offset():
    # float16 input is widened; a large common offset must not destroy the variance (two-pass per batch + Chan)
    rng = np.random.default_rng(1)
    z = (rng.normal(size=(4, 3, 16, 16)) + 1000.0).astype(np.float32)
    cnt, mean, var, _ = ref_stats(z)
    st = SMLStats()
    for i in range(4):
        st.partial_fit(z[i:i + 1])
    np.testing.assert_allclose(st.var_, var, rtol=1e-6)
    h = z.astype(np.float16)
    np.testing.assert_allclose(SMLStats().partial_fit(h).mean_, ref_stats(h.astype(np.float32))[1], rtol=1e-12)


def test_stats_unfitted_and_errors(tmp_path):
    st = SMLStats()
    with pytest.raises(CocodagError, match=r"SMLStats is not fitted: call partial_fit\(\) or SMLStats.load\(path\)"):
        _ = st.std_
    with pytest.raises(CocodagError, match="not fitted"):
        SML(st).score(np.zeros((3, 4, 4), np.float32))
    st.partial_fit(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(CocodagError, match="expected 3 classes"):
        st.partial_fit(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(CocodagError, match="num_classes"):
        SMLStats(num_classes=19).partial_fit(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(CocodagError, match="not found"):
        SMLStats.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(CocodagError, match="bad.json: not a valid JSON"):
        SMLStats.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CocodagError, match="format"):
        SMLStats.load(tmp_path / "other.json")


def test_json_roundtrip(tmp_path):
    rng = np.random.default_rng(2)
    z = blocky_logits(rng, 3, 6, 16, 16)
    z[:, 5] -= 100.0  # class 5 never predicted
    st = SMLStats(source="unit-test").partial_fit(z)
    assert np.isnan(st.mean_[5]) and st.count_[5] == 0
    path = st.save(tmp_path / "sml.json")
    d = json.loads(path.read_text())  # strict JSON: no NaN literals
    assert d["classes"]["5"] == {"mean": None, "std": None, "var": None, "count": 0}
    assert d["classes"]["0"]["count"] == int(st.count_[0])
    back = SMLStats.load(path)
    np.testing.assert_array_equal(back.count_, st.count_)
    np.testing.assert_array_equal(back.mean_, st.mean_)
    np.testing.assert_array_equal(back.var_, st.var_)
    assert back.n_images_ == 3 and back.source == "unit-test"
    # a loaded file can be extended, equal to fitting everything at once
    z2 = blocky_logits(rng, 2, 6, 16, 16)
    back.partial_fit(z2)
    both = SMLStats().partial_fit(np.concatenate([z, z2]))
    np.testing.assert_allclose(back.mean_[:5], both.mean_[:5], rtol=1e-12)
    np.testing.assert_allclose(back.var_[:5], both.var_[:5], rtol=1e-10)
    # the bare mapping {class: {mean, std, count}} is accepted too
    bare = {str(k): {"mean": float(st.mean_[k]), "std": float(st.std_[k]), "count": int(st.count_[k])}
            for k in range(5)}
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    b2 = SMLStats.load(tmp_path / "bare.json")
    np.testing.assert_allclose(b2.std_[:5], st.std_[:5], rtol=1e-15)
    assert b2.mean_.shape == (5,)


def test_official_roundtrip(tmp_path):
    rng = np.random.default_rng(4)
    # hand-written files in the official layout: np.save of {trainId: numpy float} dicts
    mean_d = {k: np.float32(rng.normal()) for k in range(19)}
    var_d = {k: np.float64(rng.uniform(0.5, 2.0)) for k in range(19)}
    np.save(tmp_path / "cityscapes_mean.npy", mean_d)
    np.save(tmp_path / "cityscapes_var.npy", var_d)
    st = SMLStats.import_official(tmp_path / "cityscapes_mean.npy", tmp_path / "cityscapes_var.npy")
    np.testing.assert_array_equal(st.mean_, [float(mean_d[k]) for k in range(19)])
    np.testing.assert_array_equal(st.var_, [var_d[k] for k in range(19)])
    assert not st.counts_known_
    with pytest.raises(CocodagError, match="no pixel counts"):
        st.partial_fit(rng.normal(size=(19, 4, 4)))
    # export -> import gives the same numbers, and JSON keeps "count unknown"
    m, v = st.export_official(tmp_path / "out")
    again = SMLStats.import_official(m, v)
    np.testing.assert_array_equal(again.mean_, st.mean_)
    np.testing.assert_array_equal(again.var_, st.var_)
    j = SMLStats.load(st.save(tmp_path / "imp.json"))
    assert not j.counts_known_
    np.testing.assert_array_equal(j.var_, st.var_)
    # the exported files are plain dicts, as the official code reads them
    raw = np.load(m, allow_pickle=True).item()
    assert raw == {k: float(mean_d[k]) for k in range(19)}
    np.save(tmp_path / "notdict.npy", np.zeros(3))
    with pytest.raises(CocodagError, match="expected an np.save'd dict"):
        SMLStats.import_official(tmp_path / "notdict.npy", v)


# ---------------------------------------------------------------------- SML score
@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(5)
    train = blocky_logits(rng, 4, 6, 32, 40)
    cnt, mean, var, _ = ref_stats(train)
    assert (cnt > 1).all()
    return SMLStats().partial_fit(train), mean, np.sqrt(var)


@pytest.mark.parametrize("iters,smoothing", [(4, True), (4, False), (2, True), (1, False), (0, True)])
def test_sml_matches_reference(fitted, iters, smoothing):
    st, mean, std = fitted
    rng = np.random.default_rng(10 + iters)
    z = blocky_logits(rng, 2, 6, 30, 41, cell=3)
    out = SML(st, boundary_iters=iters, smoothing=smoothing).score(z)
    assert out.shape == (2, 30, 41) and out.dtype == np.float32
    for i in range(2):
        ref = ref_sml(z[i], mean, std, iters, smoothing)
        np.testing.assert_allclose(out[i], ref, atol=1e-4, rtol=0)


def test_sml_with_upsampling(fitted):
    st, mean, std = fitted
    z = blocky_logits(np.random.default_rng(6), 1, 6, 12, 15, cell=2)
    out = SML(st).score(torch.from_numpy(z[0]), size=(37, 44))
    assert out.shape == (37, 44)
    np.testing.assert_allclose(out, ref_sml(z[0], mean, std, 4, True, size=(37, 44)), atol=1e-4, rtol=0)


def test_sml_without_postprocessing_is_exactly_standardized_max_logit(fitted):
    st = fitted[0]
    z = blocky_logits(np.random.default_rng(7), 3, 6, 17, 23)
    out = SML(st, boundary_iters=0, smoothing=False).score(z)
    pred, lmax = z.argmax(axis=1), z.max(axis=1)
    mu, sd = st.mean_.astype(np.float32), st.std_.astype(np.float32)
    np.testing.assert_array_equal(out, -((lmax - mu[pred]) / sd[pred]))


def test_sml_geodesic_border_and_boundary_effect(fitted):
    st = fitted[0]
    z = np.zeros((6, 12, 12), np.float32)
    z[0] = 5.0  # one class everywhere: no boundary anywhere (not even at the image edge)
    z[0] += np.random.default_rng(8).normal(scale=0.3, size=(12, 12)).astype(np.float32)
    raw = SML(st, boundary_iters=0, smoothing=False).score(z)
    np.testing.assert_array_equal(SML(st, boundary_iters=4, smoothing=False).score(z), raw)
    z2 = z.copy()
    z2[1, :, 6:] = 10.0  # right half predicted as class 1: a vertical boundary changes values near it only
    raw2 = SML(st, boundary_iters=0, smoothing=False).score(z2)
    bs2 = SML(st, boundary_iters=4, smoothing=False).score(z2)
    changed = np.argwhere(bs2 != raw2)
    assert changed.size and set(np.unique(changed[:, 1])) <= set(range(1, 11))


def test_sml_unused_class_falls_back_to_global(tmp_path):
    rng = np.random.default_rng(9)
    train = blocky_logits(rng, 2, 4, 16, 16)
    train[:, 3] -= 100.0  # class 3 never predicted in training
    st = SMLStats().partial_fit(train)
    _, _, _, (g_mean, g_std) = ref_stats(train)
    np.testing.assert_allclose(st.global_stats(), (g_mean, g_std), rtol=1e-10)
    z = np.zeros((4, 5, 5), np.float32)
    z[3] = 2.0  # test image predicted as class 3 everywhere
    with pytest.warns(UserWarning, match=r"classes \[3\]"):
        sml = SML(st, boundary_iters=0, smoothing=False)
        out = sml.score(z)
    assert sml.fallback_classes_ == [3]
    np.testing.assert_allclose(out, -(2.0 - g_mean) / g_std, rtol=1e-6)


def test_sml_bad_params(fitted):
    st = fitted[0]
    with pytest.raises(OodscoreError, match="boundary_iters"):
        SML(st, boundary_iters=5).score(np.zeros((6, 4, 4), np.float32))
    with pytest.raises(OodscoreError, match="stats have 6 classes"):
        SML(st).score(np.zeros((5, 4, 4), np.float32))
    with pytest.raises(OodscoreError, match="stats"):
        SML(stats=42).score(np.zeros((6, 4, 4), np.float32))


def test_sml_stats_from_path(fitted, tmp_path):
    st = fitted[0]
    p = st.save(tmp_path / "s.json")
    z = blocky_logits(np.random.default_rng(11), 1, 6, 10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(SML(str(p)).score(z), SML(st).score(z))


def test_sml_many_classes_reference():
    """More than 255 classes takes the wide-integer label path of the boundary mask."""
    rng = np.random.default_rng(12)
    train = blocky_logits(rng, 2, 300, 24, 24, cell=2, noise=2.0)
    st = SMLStats().partial_fit(train)
    z = blocky_logits(rng, 1, 300, 14, 16, cell=2, noise=2.0)
    assert z.argmax(axis=1).max() >= 255
    mean = np.where(st.valid_, st.mean_, st.global_stats()[0])
    std = np.where(st.valid_, st.std_, st.global_stats()[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # many of the 300 classes are unseen in so little training data
        out = SML(st, smoothing=False).score(z)
    np.testing.assert_allclose(out[0], ref_sml(z[0], mean, std, 4, False), atol=1e-4, rtol=0)


def test_sml_rejects_nan_logits(fitted):
    z = np.zeros((6, 4, 4), np.float32)
    z[2, 1, 1] = np.nan
    with pytest.raises(OodscoreError, match="NaN"):
        SML(fitted[0]).score(z)
