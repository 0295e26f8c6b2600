"""The one-shot exact path (the batch split and sorted in threads, one pass over the anomaly keys) and the
in-cache streaming split give the numbers of the code they replaced.

Oracles:
- ``metrics_v1_reference.py``, a frozen copy of ``oodscore/metrics.py`` before them (per-class histograms built
  by boolean indexing, the union materialised block by block, AUROC as a float trapezoid sum): every number but
  AUROC and AP must be equal, not close; AP sums the same terms in another grouping (within 1e-12);
- ``_exact_reference`` below: AUROC and AP as exact fractions (Python integers, no keys, blocks or threads).
  AUROC must be that fraction correctly rounded, AP within 1e-13 of it;
- every path (threads 1..3, streaming updates, any block / chunk size) gives the same bits.
"""
from __future__ import annotations

import importlib.util
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import oodscore.metrics as M
from oodscore import OodscoreError

_spec = importlib.util.spec_from_file_location("metrics_v1_reference", Path(__file__).with_name(
    "metrics_v1_reference.py"))
V1 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(V1)


def _labels(rng, n, p_pos=0.2, p_void=0.1):
    y = (rng.random(n) < p_pos).astype(np.uint8)
    u = rng.random(n)
    y[u < p_void] = 255
    y[(u >= p_void) & (u < p_void + 0.02)] = 7   # another void value
    return y


def _case(name: str, seed: int = 0, n: int = 4000):
    rng = np.random.default_rng(seed)
    y = _labels(rng, n)
    base = rng.normal(size=n) + 1.3 * (y == 1)
    if name == "f16_ties":
        return np.round(base * 3).astype(np.float16), y
    if name == "f32":
        return base.astype(np.float32), y
    if name == "f32_ties":
        return (np.round(base * 20) / 20).astype(np.float32), y
    if name == "f64_exact":
        return base.astype(np.float32).astype(np.float64), y
    if name == "f64_wide":
        return base + 1e-12 * rng.normal(size=n), y
    if name == "int":
        return np.round(base * 4).astype(np.int32), y
    if name == "uint8":
        return np.clip(base * 20 + 100, 0, 255).astype(np.uint8), y
    if name == "bool":
        return base > 0.5, y
    if name == "zeros_signed":
        s = np.where(rng.random(n) < 0.5, -0.0, 0.0).astype(np.float32)
        s[rng.random(n) < 0.3] = 1.0
        return s, y
    if name == "one_value":
        return np.full(n, 0.25, np.float32), y
    if name == "inverse":        # anomaly scores below every ID score: anomaly-only keys at the bottom
        return np.where(y == 1, base - 10, base + 10).astype(np.float32), y
    if name == "pos_top_bottom":  # anomaly-only keys at both ends, ID-only keys in the middle
        s = base.astype(np.float32)
        s[(y == 1) & (rng.random(n) < 0.5)] += 50
        s[(y == 1) & (s < 40)] -= 50
        return s, y
    if name == "nan_on_void":
        s = base.astype(np.float32)
        s[y == 255] = np.nan
        s[y == 7] = -np.inf
        return s, y
    raise KeyError(name)


NAMES = ["f16_ties", "f32", "f32_ties", "f64_exact", "f64_wide", "int", "uint8", "bool", "zeros_signed",
         "one_value", "inverse", "pos_top_bottom", "nan_on_void"]


def _exact_reference(s, y):
    """(AUROC, AP) as exact fractions rounded to float: pairs (anomaly, ID) counted with ties as halves; AP as
    sum over distinct anomaly scores of (anomalies there / P) x precision at that threshold."""
    v = s.astype(np.float64)  # every dtype used here converts exactly; -0.0 == 0.0 in the comparisons
    neg, pos = np.sort(v[y == 0]), np.sort(v[y == 1])
    P, N = pos.size, neg.size
    vals, cnt = np.unique(pos, return_counts=True)
    lt = np.searchsorted(neg, vals, side="left").astype(object)
    le = np.searchsorted(neg, vals, side="right").astype(object)
    u = int(sum(c * (a + b) for c, a, b in zip(cnt.astype(object), lt, le)))
    ap, tp = Fraction(0), 0
    for c, a in zip(cnt[::-1].tolist(), lt[::-1]):  # from the highest score down
        tp += c
        ap += Fraction(c, P) * Fraction(tp, tp + N - a)
    return u / (2 * P * N), float(ap)


def _check_new_numbers(new: dict, old: dict, s, y) -> None:
    """``new`` equals ``old`` (the v1 code) on every key but AUROC / AP, which match the exact reference."""
    assert {k: v for k, v in new.items() if k not in ("auroc", "ap")} == \
        {k: v for k, v in old.items() if k not in ("auroc", "ap")}
    auc, ap = _exact_reference(s, y)
    assert new["auroc"] == auc
    assert abs(new["ap"] - ap) <= 1e-13 and abs(new["ap"] - old["ap"]) <= 1e-12
    assert abs(new["auroc"] - old["auroc"]) <= 1e-12


@pytest.fixture(params=[(None, None), (7, 5), (64, 16), (3, 1000)], ids=lambda p: f"block{p[0]}-chunk{p[1]}")
def sizes(request, monkeypatch):
    """Small blocks (many float sums, block ends inside chunks) and small chunks (runs across chunk ends)."""
    block, chunk = request.param
    if block is not None:
        monkeypatch.setattr(M, "_BLOCK", block)
        monkeypatch.setattr(V1, "_BLOCK", block)
    if chunk is not None:
        monkeypatch.setattr(M, "_CHUNK", chunk)
    return request.param


@pytest.mark.parametrize("name", NAMES)
def test_one_shot_equals_the_old_code(name, sizes):
    s, y = _case(name)
    new = M.pixel_metrics(s, y)
    _check_new_numbers(new, V1.pixel_metrics(s, y), s, y)
    for threads in (2, 3):
        assert M.pixel_metrics(s, y, threads=threads) == new
    assert M.auroc(s, y) == new["auroc"]
    assert M.average_precision(s, y, threads=2) == new["ap"]
    assert M.fpr_at_tpr(s, y, 0.5) == V1.fpr_at_tpr(s, y, 0.5)
    valid = s[(y == 0) | (y == 1)].astype(np.float64)
    for t in (float(np.median(valid)), float(valid.min()) - 1, float(valid.max()) + 1, 0.1234567):
        _check_new_numbers(M.pixel_metrics(s, y, threshold=t, threads=3), V1.pixel_metrics(s, y, threshold=t),
                           s, y)


@pytest.mark.parametrize("name", NAMES)
def test_streaming_equals_the_old_code(name, sizes):
    s, y = _case(name, seed=1)
    new, old = M.PixelMetrics(), V1.PixelMetrics()
    for cs, cy in zip(np.array_split(s, 5), np.array_split(y, 5)):
        new.update(cs, cy)
        old.update(cs, cy)
    assert new.compute() == M.pixel_metrics(s, y) == M.pixel_metrics(s, y, threads=2)
    _check_new_numbers(new.compute(), old.compute(), s, y)
    _check_new_numbers(new.compute(threshold=0.3), old.compute(threshold=0.3), s, y)
    assert new.n_distinct == old.n_distinct
    cn, co = new.curves(max_points=300), old.curves(max_points=300)
    assert set(cn) == set(co) and all(np.array_equal(cn[k], co[k]) for k in cn)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_tiny_inputs_equal_the_old_code(n, sizes):
    rng = np.random.default_rng(n)
    for _ in range(20):
        s = rng.integers(0, 3, n).astype(np.float32)
        y = rng.integers(0, 2, n).astype(np.uint8)
        try:
            want = V1.pixel_metrics(s, y)
        except OodscoreError as e:
            with pytest.raises(OodscoreError) as got:
                M.pixel_metrics(s, y)
            assert str(got.value) == str(e)
            continue
        _check_new_numbers(M.pixel_metrics(s, y), want, s, y)


@pytest.mark.parametrize("scores,labels", [
    (np.array([0.1, np.nan, 0.3], np.float32), np.array([0, 1, 1])),
    (np.array([0.1, np.inf, 0.3]), np.array([0, 1, 1])),
    (np.array([-np.inf, 0.2, 0.3], np.float16), np.array([0, 0, 1])),
    (np.array([np.nan, np.nan, 0.3], np.float64), np.array([0, 1, 0])),
    (np.array([0.1, 0.2, 0.3]), np.array([255, 255, 255])),
    (np.array([0.1, 0.2, 0.3]), np.array([0, 0, 255])),
    (np.array([0.1, 0.2, 0.3]), np.array([1, 1, 7])),
    (np.zeros(0, np.float32), np.zeros(0, np.uint8)),
    (np.array([1, 2, 3], np.uint8), np.array(["0", "1", "1"])),
    (np.array(["a", "b"]), np.array([0, 1])),
])
def test_errors_are_the_old_errors(scores, labels):
    with pytest.raises(OodscoreError) as old:
        V1.pixel_metrics(scores, labels)
    with pytest.raises(OodscoreError) as new:
        M.pixel_metrics(scores, labels)
    assert str(new.value) == str(old.value)
    m = M.PixelMetrics()
    try:
        m.update(scores, labels)
        m.compute()
    except OodscoreError as e:
        assert str(e) == str(old.value)


def test_large_random_input_equals_the_old_code():
    """Past one chunk and one block: ~2e5 distinct keys, blocks of 2^14 keys per class."""
    rng = np.random.default_rng(7)
    n = 300_000
    y = _labels(rng, n, p_pos=0.05)
    s = (rng.standard_normal(n) + 2.0 * (y == 1)).astype(np.float32)
    s[rng.random(n) < 0.2] = np.float32(0.5)                    # one heavily tied value
    old_block = M._BLOCK
    try:
        M._BLOCK = V1._BLOCK = 1 << 14
        blocked = M.pixel_metrics(s, y, threads=2)
        _check_new_numbers(blocked, V1.pixel_metrics(s, y), s, y)
    finally:
        M._BLOCK = V1._BLOCK = old_block
    whole = M.pixel_metrics(s, y, threads=3)
    _check_new_numbers(whole, V1.pixel_metrics(s, y), s, y)
    assert {k: v for k, v in whole.items() if k != "ap"} == {k: v for k, v in blocked.items() if k != "ap"}


def test_inputs_are_not_modified():
    s, y = _case("nan_on_void")
    s0, y0 = s.copy(), y.copy()
    M.pixel_metrics(s, y)
    M.PixelMetrics().update(s, y)
    assert np.array_equal(s, s0, equal_nan=True) and np.array_equal(y, y0)


def test_auroc_past_the_exact_integer_range_is_summed_in_float(monkeypatch):
    """Past 2^63 pixel pairs the pair count is summed in float64: the same AUROC to rounding, the rest unchanged."""
    s, y = _case("f32_ties", seed=3)
    exact = M.pixel_metrics(s, y)
    monkeypatch.setattr(M, "_U_EXACT", 0)
    approx = M.pixel_metrics(s, y, threads=2)
    assert abs(approx["auroc"] - exact["auroc"]) <= 1e-15
    assert {k: v for k, v in approx.items() if k != "auroc"} == {k: v for k, v in exact.items() if k != "auroc"}


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_threads_must_be_a_positive_integer(bad):
    with pytest.raises(OodscoreError, match=r"threads: expected None or an integer >= 1, got"):
        M.pixel_metrics(np.zeros(3, np.float32), np.array([0, 1, 0]), threads=bad)


def test_long_tie_runs_across_parts(monkeypatch):
    """ID runs of equal keys longer than the stepping (4) and split across the threads' parts."""
    monkeypatch.setattr(M, "_CHUNK", 64)
    rng = np.random.default_rng(11)
    n = 5000
    y = _labels(rng, n)
    s = rng.integers(0, 6, n).astype(np.float32) + 2 * (y == 1)
    new = M.pixel_metrics(s, y, threads=4)
    _check_new_numbers(new, V1.pixel_metrics(s, y), s, y)
    assert M.pixel_metrics(s, y, threads=1) == new
