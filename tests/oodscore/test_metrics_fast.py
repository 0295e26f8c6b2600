"""The exact metrics on every path (one-shot in threads, streaming, binned, torch) against oracles written here.

Oracles, none of which shares code with ``oodscore.metrics`` (no keys, runs, blocks or threads):

- :func:`_reference`: every metric re-derived from the valid scores in float64 with plain numpy (one ROC point per
  distinct score, ``searchsorted`` counts) and Python integers / ``fractions.Fraction``: AUROC is the exact pair
  count correctly rounded, AP within 1e-13 of the exact fraction, every other number bit for bit (the same
  IEEE operations on the same exact integers, or an exact fraction rounded once);
- :func:`_reference_curves`: the subsampled ROC / PR curves from the same counts;
- sklearn (``roc_auc_score``, ``average_precision_score``, ``roc_curve``) for AUROC, AP and FPR95 to 1e-12;
- every path (threads 1..4, streaming updates, merged states, any block / chunk size) gives the same bits.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

import oodscore.metrics as M
from oodscore import OodscoreError
from oodscore.metrics import _sizes


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


# ----------------------------------------------------------------------------- the oracles
def _roc(s, y):
    """(distinct valid scores descending, TP and FP at ``score >= t`` for each, P, N), float64 / int64."""
    valid = (y == 0) | (y == 1)
    v = s[valid].astype(np.float64) + 0.0          # every dtype used here converts exactly; -0.0 -> 0.0
    lab = y[valid]
    neg, pos = np.sort(v[lab == 0]), np.sort(v[lab == 1])
    thr = np.unique(v)[::-1]
    tp = pos.size - np.searchsorted(pos, thr, side="left")
    fp = neg.size - np.searchsorted(neg, thr, side="left")
    return thr, tp, fp, pos.size, neg.size


def _at(tp: int, fp: int, p: int, n: int, t: float) -> dict:
    """F1 / precision / recall / FPR at one threshold: exact fractions rounded once."""
    fn = p - tp
    return {"threshold": float(t), "f1": float(Fraction(2 * tp, 2 * tp + fp + fn)),
            "precision": float(Fraction(tp, tp + fp)) if tp + fp else 0.0,
            "recall": float(Fraction(tp, p)), "fpr": float(Fraction(fp, n))}


def _reference(s, y, threshold: float | None = None, target: float = 0.95) -> dict:
    """Every metric of ``pixel_metrics`` re-derived (see the module doc); AP is the exact fraction rounded."""
    thr, tp, fp, P, N = _roc(s, y)
    if P == 0 or N == 0:
        raise ValueError("degenerate")
    # AUROC: pairs (anomaly, ID) with the anomaly higher, ties as halves, as an exact integer
    valid = (y == 0) | (y == 1)
    v, lab = s[valid].astype(np.float64) + 0.0, y[valid]
    neg = np.sort(v[lab == 0])
    vals, cnt = np.unique(v[lab == 1], return_counts=True)
    lt = np.searchsorted(neg, vals, side="left").astype(object)
    le = np.searchsorted(neg, vals, side="right").astype(object)
    u = int(sum(c * (a + b) for c, a, b in zip(cnt.astype(object), lt, le)))
    ap, seen = Fraction(0), 0
    for c, a in zip(cnt[::-1].tolist(), lt[::-1]):  # AP: from the highest anomaly score down
        seen += c
        ap += Fraction(c, P) * Fraction(seen, seen + N - a)
    tpr, fpr = tp / P, fp / N
    first = int(np.flatnonzero(tpr >= target)[0])
    f1 = (tp * 2.0) / ((tp + fp).astype(np.float64) + P)
    best = int(np.argmax(f1))                        # the first maximum, descending: the highest threshold wins
    t = thr[best] if threshold is None else threshold
    at = _at(int(np.count_nonzero(v[lab == 1] >= t)), int(np.count_nonzero(v[lab == 0] >= t)), P, N, t)
    return {"auroc": u / (2 * P * N), "ap": float(ap), "fpr95": float(fpr[first]),
            "fpr95_interp": float(np.interp(target, np.concatenate([[0.0], tpr]), np.concatenate([[0.0], fpr]))),
            **at, "n_pos": P, "n_neg": N}


def _check(got: dict, s, y, threshold: float | None = None) -> None:
    """``got`` equals :func:`_reference` bit for bit (AP: within 1e-13 of the exact fraction) and sklearn."""
    want = _reference(s, y, threshold)
    assert list(got) == list(M.METRIC_KEYS)
    assert {k: v for k, v in got.items() if k != "ap"} == {k: v for k, v in want.items() if k != "ap"}
    assert abs(got["ap"] - want["ap"]) <= 1e-13
    valid = (y == 0) | (y == 1)
    sv, yv = s[valid].astype(np.float64), y[valid].astype(np.int64)
    assert got["auroc"] == pytest.approx(roc_auc_score(yv, sv), abs=1e-12)
    assert got["ap"] == pytest.approx(average_precision_score(yv, sv), abs=1e-12)
    fpr, tpr, _ = roc_curve(yv, sv, drop_intermediate=False)
    assert got["fpr95"] == pytest.approx(fpr[np.flatnonzero(tpr >= 0.95)[0]], abs=1e-12)


def _reference_curves(s, y, max_points: int) -> dict:
    """``PixelMetrics.curves``: the ROC origin, then one point per distinct score (descending), subsampled."""
    thr, tp, fp, P, N = _roc(s, y)
    tps = np.concatenate([[0], tp]).astype(np.float64)
    fps = np.concatenate([[0], fp]).astype(np.float64)
    n = tps.size
    idx = np.unique(np.round(np.linspace(0, n - 1, min(n, max_points))).astype(np.int64))
    tps, fps = tps[idx], fps[idx]
    precision = np.ones(idx.size)
    hit = tps + fps > 0
    precision[hit] = tps[hit] / (tps + fps)[hit]
    return {"fpr": fps / N, "tpr": tps / P, "precision": precision, "recall": tps / P,
            "thresholds": np.concatenate([[np.inf], thr])[idx]}


def _error_of(s, y) -> str:
    """The one-line error the metrics give for degenerate labels (the contract, spelled out)."""
    valid = (y == 0) | (y == 1)
    P, N = int(np.count_nonzero(y[valid] == 1)), int(np.count_nonzero(y[valid] == 0))
    if P == N == 0:
        return "labels: no valid pixels (label 0 or 1); cannot compute metrics on empty input"
    if P == 0:
        return f"labels: no anomaly pixels (label 1) among {N} valid pixels; AUROC/AP/FPR95 are undefined"
    return f"labels: no in-distribution pixels (label 0) among {P} valid pixels; AUROC/FPR95 are undefined"


@pytest.fixture(params=[(None, None), (7, 5), (64, 16), (3, 1000)], ids=lambda p: f"block{p[0]}-chunk{p[1]}")
def sizes(request, monkeypatch):
    """Small blocks (many float sums, block ends inside chunks) and small chunks (runs across chunk ends)."""
    block, chunk = request.param
    if block is not None:
        monkeypatch.setattr(_sizes, "BLOCK", block)
    if chunk is not None:
        monkeypatch.setattr(_sizes, "CHUNK", chunk)
    return request.param


# ----------------------------------------------------------------------------- the paths against the oracles
def test_interp_oracle_is_the_formula_of_the_docs():
    """``fpr95_interp`` = linear interpolation between the two ROC points around TPR 0.95 (np.interp)."""
    s, y = _case("f32_ties")
    thr, tp, fp, P, N = _roc(s, y)
    tpr, fpr = np.concatenate([[0.0], tp / P]), np.concatenate([[0.0], fp / N])
    j = int(np.searchsorted(tpr, 0.95, side="right")) - 1
    slope = (fpr[j + 1] - fpr[j]) / (tpr[j + 1] - tpr[j])
    assert M.pixel_metrics(s, y)["fpr95_interp"] == float(slope * (0.95 - tpr[j]) + fpr[j])


@pytest.mark.parametrize("name", NAMES)
def test_one_shot_equals_the_oracles(name, sizes):
    s, y = _case(name)
    new = M.pixel_metrics(s, y)
    _check(new, s, y)
    for threads in (2, 3):
        assert M.pixel_metrics(s, y, threads=threads) == new
    assert M.auroc(s, y) == new["auroc"]
    assert M.average_precision(s, y, threads=2) == new["ap"]
    assert M.fpr_at_tpr(s, y, 0.5) == _reference(s, y, target=0.5)["fpr95"]
    valid = s[(y == 0) | (y == 1)].astype(np.float64)
    for t in (float(np.median(valid)), float(valid.min()) - 1, float(valid.max()) + 1, 0.1234567):
        _check(M.pixel_metrics(s, y, threshold=t, threads=3), s, y, threshold=t)


@pytest.mark.parametrize("name", NAMES)
def test_streaming_equals_the_oracles(name, sizes):
    s, y = _case(name, seed=1)
    new = M.PixelMetrics()
    for cs, cy in zip(np.array_split(s, 5), np.array_split(y, 5)):
        new.update(cs, cy)
    assert new.compute() == M.pixel_metrics(s, y) == M.pixel_metrics(s, y, threads=2)
    _check(new.compute(), s, y)
    _check(new.compute(threshold=0.3), s, y, threshold=0.3)
    assert new.n_distinct == np.unique(s[y == 0] + 0.0).size + np.unique(s[y == 1] + 0.0).size
    got, want = new.curves(max_points=300), _reference_curves(s, y, 300)
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in got)
    # per-batch states merged in order: the same state, bit for bit
    merged = M.PixelMetrics()
    for cs, cy in zip(np.array_split(s, 5), np.array_split(y, 5)):
        part = merged.empty_copy()
        part.update(cs, cy)
        merged.merge(part)
    assert merged.compute() == new.compute() and merged.n_distinct == new.n_distinct


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_tiny_inputs_equal_the_oracles(n, sizes):
    rng = np.random.default_rng(n)
    for _ in range(20):
        s = rng.integers(0, 3, n).astype(np.float32)
        y = rng.integers(0, 2, n).astype(np.uint8)
        if (y == 1).all() or (y == 0).all():
            with pytest.raises(OodscoreError) as got:
                M.pixel_metrics(s, y)
            assert str(got.value) == _error_of(s, y)
            continue
        _check(M.pixel_metrics(s, y), s, y)


@pytest.mark.parametrize("scores,labels,message", [
    (np.array([0.1, np.nan, 0.3], np.float32), np.array([0, 1, 1]),
     "scores: 1 non-finite (NaN/inf) values on non-void pixels (label 1)"),
    (np.array([0.1, np.inf, 0.3]), np.array([0, 1, 1]),
     "scores: 1 non-finite (NaN/inf) values on non-void pixels (label 1)"),
    (np.array([-np.inf, 0.2, 0.3], np.float16), np.array([0, 0, 1]),
     "scores: 1 non-finite (NaN/inf) values on non-void pixels (label 0)"),
    (np.array([np.nan, np.nan, 0.3], np.float64), np.array([0, 1, 0]),
     "scores: 1 non-finite (NaN/inf) values on non-void pixels (label 0)"),
    (np.array([0.1, 0.2, 0.3]), np.array([255, 255, 255]),
     "labels: no valid pixels (label 0 or 1); cannot compute metrics on empty input"),
    (np.array([0.1, 0.2, 0.3]), np.array([0, 0, 255]),
     "labels: no anomaly pixels (label 1) among 2 valid pixels; AUROC/AP/FPR95 are undefined"),
    (np.array([0.1, 0.2, 0.3]), np.array([1, 1, 7]),
     "labels: no in-distribution pixels (label 0) among 2 valid pixels; AUROC/FPR95 are undefined"),
    (np.zeros(0, np.float32), np.zeros(0, np.uint8),
     "labels: no valid pixels (label 0 or 1); cannot compute metrics on empty input"),
    (np.array([1, 2, 3], np.uint8), np.array(["0", "1", "1"]),
     "labels: expected an integer array (0/1/void), got dtype <U1"),
    (np.array(["a", "b"]), np.array([0, 1]), "scores: expected a real-valued array, got dtype <U1"),
])
def test_errors_are_one_line_and_the_same_on_every_path(scores, labels, message):
    with pytest.raises(OodscoreError) as one_shot:
        M.pixel_metrics(scores, labels)
    assert str(one_shot.value) == message
    m = M.PixelMetrics()
    with pytest.raises(OodscoreError) as streamed:
        m.update(scores, labels)
        m.compute()
    assert str(streamed.value) == message


def test_large_random_input_equals_the_oracles(monkeypatch):
    """Past one chunk and one block: ~2e5 distinct keys, blocks of 2^14 keys per class."""
    rng = np.random.default_rng(7)
    n = 300_000
    y = _labels(rng, n, p_pos=0.05)
    s = (rng.standard_normal(n) + 2.0 * (y == 1)).astype(np.float32)
    s[rng.random(n) < 0.2] = np.float32(0.5)                    # one heavily tied value
    whole = M.pixel_metrics(s, y, threads=3)
    _check(whole, s, y)
    monkeypatch.setattr(_sizes, "BLOCK", 1 << 14)
    blocked = M.pixel_metrics(s, y, threads=2)
    _check(blocked, s, y)
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
    monkeypatch.setattr(_sizes, "U_EXACT", 0)
    approx = M.pixel_metrics(s, y, threads=2)
    assert abs(approx["auroc"] - exact["auroc"]) <= 1e-15
    assert {k: v for k, v in approx.items() if k != "auroc"} == {k: v for k, v in exact.items() if k != "auroc"}


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_threads_must_be_a_positive_integer(bad):
    with pytest.raises(OodscoreError, match=r"threads: expected None or an integer >= 1, got"):
        M.pixel_metrics(np.zeros(3, np.float32), np.array([0, 1, 0]), threads=bad)


def test_long_tie_runs_across_parts(monkeypatch):
    """ID runs of equal keys longer than the stepping (4) and split across the threads' parts."""
    monkeypatch.setattr(_sizes, "CHUNK", 64)
    rng = np.random.default_rng(11)
    n = 5000
    y = _labels(rng, n)
    s = rng.integers(0, 6, n).astype(np.float32) + 2 * (y == 1)
    new = M.pixel_metrics(s, y, threads=4)
    _check(new, s, y)
    assert M.pixel_metrics(s, y, threads=1) == new


def test_bfloat16_tensors_are_read_as_float32():
    s, y = _case("f32", seed=5)
    sb = torch.from_numpy(s).bfloat16()
    s32 = sb.float().numpy()                     # every bfloat16 value is exact in float32
    want = M.pixel_metrics(s32, y)
    _check(want, s32, y)
    assert M.pixel_metrics(sb, torch.from_numpy(y)) == want
    assert M.pixel_metrics(sb, y) == want        # mixed torch / numpy
    m = M.PixelMetrics()
    m.update(sb, y)
    assert m.compute() == want


@pytest.mark.parametrize("name", ["f32", "f32_ties", "f16_ties", "pos_top_bottom"])
def test_binned_mode_is_the_exact_metrics_of_the_lower_edges(name):
    """A bin acts as one tied score equal to its lower edge (scores below the first edge join the first bin)."""
    s, y = _case(name, seed=2, n=20_000)
    b = M.PixelMetrics(bins=48, edge_samples=5000)
    for cs, cy in zip(np.array_split(s, 4), np.array_split(y, 4)):
        b.update(cs, cy)
    out = b.compute()
    edges = b.edges
    assert edges is not None and edges.size <= 48 and np.all(np.diff(edges) > 0)
    valid = (y == 0) | (y == 1)
    at_edge = np.zeros(s.size)
    at_edge[valid] = edges[np.clip(np.searchsorted(edges, s[valid].astype(np.float64), side="right") - 1, 0, None)]
    assert out == M.pixel_metrics(at_edge, y)
    got, want = b.curves(max_points=40), _reference_curves(at_edge, y, 40)
    assert all(np.array_equal(got[k], want[k]) for k in got)
