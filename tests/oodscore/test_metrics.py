"""oodscore.metrics against sklearn (independent reference) on heavily tied data with void labels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from oodscore import OodscoreError
from oodscore.metrics import (
    METRIC_KEYS,
    PixelMetrics,
    _runs,
    _sizes,
    auroc,
    average_precision,
    fpr_at_tpr,
    pixel_metrics,
)
from oodscore.metrics.states import BinnedState, ExactState

TOL = 1e-9


def _data(seed: int, n: int = 20_000, dtype=np.float16, levels: int = 10, void: float = 0.15):
    """Scores rounded to few distinct values (heavy ties), labels 0/1 with 255 (and 7) as void."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(np.uint8)
    s = rng.normal(size=n) + 1.2 * y
    s = (np.round(s * levels / 4) / (levels / 4)).astype(dtype)
    v = rng.random(n)
    y[v < void] = 255
    y[(v >= void) & (v < void + 0.01)] = 7
    return s.reshape(100, -1), y.reshape(100, -1)


def _ref(s, y):
    """sklearn reference on the valid pixels (float64)."""
    valid = (y == 0) | (y == 1)
    return s[valid].astype(np.float64), y[valid].astype(np.int64)


CASES = [(0, np.float16, 10), (1, np.float32, 4), (2, np.float64, 40), (3, np.float16, 1000), (4, np.int32, 3)]


@pytest.mark.parametrize("seed,dtype,levels", CASES)
def test_pixel_metrics_equal_sklearn(seed, dtype, levels):
    s, y = _data(seed, dtype=dtype, levels=levels)
    s_ref, y_ref = _ref(s, y)
    m = pixel_metrics(s, y)
    assert set(m) == set(METRIC_KEYS)
    assert m["auroc"] == pytest.approx(roc_auc_score(y_ref, s_ref), abs=TOL)
    assert m["ap"] == pytest.approx(average_precision_score(y_ref, s_ref), abs=TOL)
    fpr, tpr, _ = roc_curve(y_ref, s_ref, drop_intermediate=False)
    assert m["fpr95"] == pytest.approx(fpr[np.flatnonzero(tpr >= 0.95)[0]], abs=TOL)
    assert m["fpr95_interp"] == pytest.approx(np.interp(0.95, tpr, fpr), abs=TOL)
    assert m["n_pos"] == int((y_ref == 1).sum()) and m["n_neg"] == int((y_ref == 0).sum())
    # the thin wrappers give the same numbers
    assert auroc(s, y) == m["auroc"]
    assert average_precision(s, y) == m["ap"]
    assert fpr_at_tpr(s, y, 0.95) == m["fpr95"]
    assert fpr_at_tpr(s, y, 0.5) == pytest.approx(fpr[np.flatnonzero(tpr >= 0.5)[0]], abs=TOL)


def _at_threshold_ref(s_ref, y_ref, t):
    pred = (s_ref >= t).astype(np.int64)
    p, r, f, _ = precision_recall_fscore_support(y_ref, pred, average="binary", zero_division=0)
    tn, fp, fn, tp = confusion_matrix(y_ref, pred, labels=[0, 1]).ravel()
    return {"precision": p, "recall": r, "f1": f, "fpr": fp / (fp + tn)}


@pytest.mark.parametrize("seed,dtype,levels", CASES[:3])
def test_metrics_at_given_threshold_equal_sklearn(seed, dtype, levels):
    s, y = _data(seed, dtype=dtype, levels=levels)
    s_ref, y_ref = _ref(s, y)
    u = np.unique(s_ref)
    # a distinct score, a value between two scores, one below all, one above all
    for t in (u[len(u) // 2], (u[len(u) // 3] + u[len(u) // 3 + 1]) / 2, u[0] - 1.0, u[-1] + 1.0):
        m = pixel_metrics(s, y, threshold=t)
        ref = _at_threshold_ref(s_ref, y_ref, t)
        assert m["threshold"] == float(t)
        for k in ("precision", "recall", "f1", "fpr"):
            assert m[k] == pytest.approx(ref[k], abs=TOL), (k, t)


@pytest.mark.parametrize("seed,dtype,levels", CASES)
def test_f1_optimal_threshold_is_brute_force_optimum(seed, dtype, levels):
    s, y = _data(seed, n=5000, dtype=dtype, levels=levels)
    s_ref, y_ref = _ref(s, y)
    best_f1, best_t = -1.0, None
    for t in np.unique(s_ref)[::-1]:  # descending: ties keep the highest threshold (our documented rule)
        f = _at_threshold_ref(s_ref, y_ref, t)["f1"]
        if f > best_f1 + 1e-12:
            best_f1, best_t = f, t
    m = pixel_metrics(s, y)
    assert m["f1"] == pytest.approx(best_f1, abs=TOL)
    assert m["threshold"] == best_t
    ref = _at_threshold_ref(s_ref, y_ref, m["threshold"])
    assert m["precision"] == pytest.approx(ref["precision"], abs=TOL)
    assert m["recall"] == pytest.approx(ref["recall"], abs=TOL)


@pytest.mark.parametrize("k", [1, 3, 17])
def test_streaming_chunks_equal_one_shot(k):
    s, y = _data(5, n=30_000, dtype=np.float32, levels=300)
    one = pixel_metrics(s, y)
    m = PixelMetrics()
    for cs, cy in zip(np.array_split(s.ravel(), k), np.array_split(y.ravel(), k)):
        m.update(cs, cy)
    m.update(np.zeros(5, np.float32), np.full(5, 255, np.uint8))  # an all-void batch changes nothing
    assert m.compute() == one
    m.reset()
    with pytest.raises(OodscoreError, match="no valid pixels"):
        m.compute()


def test_streaming_mixed_dtypes_widen_exactly():
    s, y = _data(6, n=20_000, dtype=np.float64, levels=30)
    s = s + np.random.default_rng(0).normal(size=s.shape) * 1e-12  # not representable in float32
    s32 = s.astype(np.float32)
    m = PixelMetrics()
    m.update(s32[:50], y[:50])              # float32 first (uint32 keys) ...
    m.update(s[50:], y[50:])                # ... then true float64 (state widened to uint64 keys)
    s_ref = np.concatenate([s32[:50].astype(np.float64), s[50:]])
    assert m.compute() == pixel_metrics(s_ref, y)
    # float64 arrays that hold float32 values stay in the compact uint32 state
    m2 = PixelMetrics()
    m2.update(s32.astype(np.float64), y)
    assert not m2._state._wide and m2.compute() == pixel_metrics(s32, y)


def test_merge_equals_one_shot():
    s, y = _data(7, n=30_000, dtype=np.float16, levels=200)
    parts = [PixelMetrics() for _ in range(3)]
    for i, (cs, cy) in enumerate(zip(np.array_split(s, 5), np.array_split(y, 5))):
        parts[i % 3].update(cs, cy)
    total = parts[0].merge(parts[1]).merge(parts[2])
    assert total.compute() == pixel_metrics(s, y)


def test_negative_zero_ties_with_zero():
    s = np.array([-0.0, 0.0, 0.0, -0.0, 1.0, -1.0], np.float32)
    y = np.array([1, 0, 1, 0, 1, 0], np.uint8)
    m = pixel_metrics(s, y)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s.astype(np.float64)), abs=TOL)
    assert m["ap"] == pytest.approx(average_precision_score(y, s.astype(np.float64)), abs=TOL)


def test_curves_match_sklearn_roc():
    s, y = _data(8, n=10_000, dtype=np.float16, levels=20)
    s_ref, y_ref = _ref(s, y)
    m = PixelMetrics()
    m.update(s, y)
    c = m.curves(max_points=10_000)
    fpr, tpr, thr = roc_curve(y_ref, s_ref, drop_intermediate=False)
    np.testing.assert_allclose(c["fpr"], fpr, atol=TOL)
    np.testing.assert_allclose(c["tpr"], tpr, atol=TOL)
    np.testing.assert_array_equal(c["thresholds"][1:], thr[1:])
    small = m.curves(max_points=5)
    assert all(len(v) == 5 for v in small.values())
    assert small["fpr"][0] == 0 and small["tpr"][-1] == 1 and small["recall"][-1] == 1


@pytest.mark.parametrize("bins", [768, 2000])
def test_binned_mode_close_on_heavy_tails(bins):
    rng = np.random.default_rng(9)
    n = 400_000
    y = (rng.random(n) < 0.05).astype(np.uint8)
    s = rng.pareto(1.5, n) + 3.0 * y * rng.pareto(1.0, n)  # heavy tails: uniform min..max bins would fail here
    s = s.astype(np.float32)
    y[rng.random(n) < 0.1] = 255
    exact = pixel_metrics(s, y)
    m = PixelMetrics(bins=bins, edge_samples=100_000)
    for cs, cy in zip(np.array_split(s, 8), np.array_split(y, 8)):
        m.update(cs, cy)
    b = m.compute()
    assert m.edges.size <= bins
    assert b["ap"] == pytest.approx(exact["ap"], abs=1e-3)
    assert b["auroc"] == pytest.approx(exact["auroc"], abs=1e-3)
    assert b["fpr95"] == pytest.approx(exact["fpr95"], abs=5e-3)
    assert (b["n_pos"], b["n_neg"]) == (exact["n_pos"], exact["n_neg"])


def test_binned_mode_is_exact_when_few_distinct_values():
    s, y = _data(10, n=50_000, dtype=np.float16, levels=4)  # ~20 distinct values, all frequent
    b = PixelMetrics(bins=768)
    b.update(s, y)
    e = pixel_metrics(s, y)
    out = b.compute()
    for k in ("auroc", "ap", "fpr95", "f1"):
        assert out[k] == pytest.approx(e[k], abs=TOL)


def test_binned_merge_and_edges():
    s, y = _data(11, n=40_000, dtype=np.float32, levels=500)
    a, b = PixelMetrics(bins=64, edge_samples=1000), PixelMetrics(bins=64, edge_samples=1000)
    a.update(s[:50], y[:50])
    b.merge(a)                      # a fixed its edges from this one update: b takes its scores as an update would
    b.update(s[50:], y[50:])
    one = PixelMetrics(bins=64, edge_samples=1000)
    one.update(s[:50], y[:50])
    one.update(s[50:], y[50:])
    assert b.compute() == one.compute() and np.array_equal(b.edges, one.edges)
    # c fixed its own edges from its one update: merged into b (other edges), c's scores are binned with b's
    c = PixelMetrics(bins=64, edge_samples=1000)
    c.update(s[50:], y[50:])
    assert not np.array_equal(c.edges, b.edges)
    c_then = PixelMetrics(bins=64, edge_samples=1000)
    for part in (slice(0, 50), slice(50, None), slice(50, None)):
        c_then.update(s[part], y[part])
    assert b.merge(c).compute() == c_then.compute() and np.array_equal(b.edges, c_then.edges)
    # binned data under other edges cannot be added: d fixed its edges, then binned more scores with them
    d = PixelMetrics(bins=64, edge_samples=1000)
    d.update(s[50:], y[50:])
    d.update(s[:50], y[:50])
    with pytest.raises(OodscoreError, match="different quantile edges"):
        b.merge(d)


def test_torch_input_equals_numpy():
    torch.set_num_threads(1)
    s, y = _data(12, n=20_000, dtype=np.float32, levels=100)
    ref = pixel_metrics(s, y)
    assert pixel_metrics(torch.from_numpy(s), torch.from_numpy(y)) == ref
    assert pixel_metrics(torch.from_numpy(s).half(), torch.from_numpy(y)) == pixel_metrics(s.astype(np.float16), y)
    b = PixelMetrics(bins=128)
    b.update(torch.from_numpy(s), torch.from_numpy(y))
    bn = PixelMetrics(bins=128)
    bn.update(s, y)
    assert b.compute() == bn.compute()


def test_device_unique_path_equals_numpy():
    """The CUDA path (torch.unique on the device, counts to CPU) fed on CPU through the same internal entry point."""
    s, y = _data(13, n=20_000, dtype=np.float32, levels=100)
    st, yt = torch.from_numpy(s.ravel()), torch.from_numpy(y.ravel())
    m = PixelMetrics()
    for cls in (0, 1):
        vals, counts = torch.unique(st[yt == cls], sorted=True, return_counts=True)
        m._state._add_unique(cls, vals.numpy(), counts.numpy().astype(np.int64))
    assert m.compute() == pixel_metrics(s, y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.cuda
def test_cuda_equals_numpy():
    s, y = _data(14, n=50_000, dtype=np.float32, levels=100)
    ref = pixel_metrics(s, y)
    assert pixel_metrics(torch.from_numpy(s).cuda(), torch.from_numpy(y).cuda()) == ref
    for bins in (64,):
        a, b = PixelMetrics(bins=bins), PixelMetrics(bins=bins)
        a.update(torch.from_numpy(s).cuda(), torch.from_numpy(y).cuda())
        b.update(s, y)
        assert a.compute() == b.compute()


@pytest.mark.parametrize("scores,labels,match", [
    (np.array([0.1, 0.2, 0.3]), np.array([0, 0, 255]), "no anomaly pixels"),
    (np.array([0.1, 0.2, 0.3]), np.array([1, 1, 255]), "no in-distribution pixels"),
    (np.array([0.1, 0.2, 0.3]), np.array([255, 255, 255]), "no valid pixels"),
    (np.zeros(0, np.float32), np.zeros(0, np.uint8), "no valid pixels"),
    (np.array([0.1, np.nan, 0.3]), np.array([0, 1, 1]), "non-finite"),
    (np.array([0.1, np.inf, 0.3]), np.array([0, 1, 1]), "non-finite"),
    (np.array([0.1, 0.2, 0.3]), np.array([0, 1]), "shape mismatch"),
    (np.array(["a", "b"]), np.array([0, 1]), "real-valued"),
])
def test_degenerate_inputs_raise(scores, labels, match):
    with pytest.raises(OodscoreError, match=match):
        pixel_metrics(scores, labels)
    with pytest.raises(ValueError):  # OodscoreError is a ValueError
        auroc(scores, labels)


def test_nan_on_void_is_ignored_and_bad_arguments_raise():
    s = np.array([np.nan, 0.2, 0.9, 0.1], np.float32)
    y = np.array([255, 0, 1, 0], np.uint8)
    assert pixel_metrics(s, y)["auroc"] == 1.0
    with pytest.raises(OodscoreError, match="threshold"):
        pixel_metrics(s, y, threshold=float("nan"))
    with pytest.raises(OodscoreError, match="bins"):
        PixelMetrics(bins=1)
    with pytest.raises(OodscoreError, match="tpr"):
        fpr_at_tpr(s, y, tpr=1.5)
    with pytest.raises(OodscoreError, match="non-finite"):
        PixelMetrics(bins=16).update(np.array([np.inf, 1.0]), np.array([0, 1]))


def test_many_blocks_path_equals_sklearn(monkeypatch):
    """compute() walks the histogram in blocks; tiny blocks must give the same numbers."""
    s, y = _data(15, n=8000, dtype=np.float32, levels=200)
    s_ref, y_ref = _ref(s, y)
    monkeypatch.setattr(_sizes, "BLOCK", 7)
    m = pixel_metrics(s, y)
    fpr, tpr, _ = roc_curve(y_ref, s_ref, drop_intermediate=False)
    assert m["auroc"] == pytest.approx(roc_auc_score(y_ref, s_ref), abs=TOL)
    assert m["ap"] == pytest.approx(average_precision_score(y_ref, s_ref), abs=TOL)
    assert m["fpr95"] == pytest.approx(fpr[np.flatnonzero(tpr >= 0.95)[0]], abs=TOL)
    assert m["fpr95_interp"] == pytest.approx(np.interp(0.95, tpr, fpr), abs=TOL)
    monkeypatch.setattr(_sizes, "BLOCK", 1 << 22)
    assert m["threshold"] == pixel_metrics(s, y)["threshold"]


def test_fpr95_interp_on_exact_plateau_follows_np_interp():
    # 20 positives: TPR hits exactly 0.95 after 19 of them, then a run of negative-only thresholds (a plateau)
    pos = np.arange(100, 81, -1.0)                  # 19 positives, highest scores
    neg_plateau = np.array([80.0, 79.0, 78.0])       # negatives while TPR stays 0.95
    s = np.concatenate([pos, neg_plateau, [50.0], np.arange(40.0, 0.0, -1.0)])
    y = np.concatenate([np.ones(19), np.zeros(3), [1], np.zeros(40)]).astype(np.uint8)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert (tpr == 0.95).sum() > 1
    m = pixel_metrics(s, y)
    assert m["fpr95_interp"] == pytest.approx(np.interp(0.95, tpr, fpr), abs=TOL)
    assert m["fpr95"] == pytest.approx(fpr[np.flatnonzero(tpr >= 0.95)[0]], abs=TOL)


# ----------------------------------------------------------------------------- exact state: merges and count dtype
def _ref_hist(keys_list, counts_list):
    """Independent reference for merged runs: np.unique over the concatenation + bincount of the counts."""
    k = np.concatenate(keys_list)
    c = np.concatenate([np.asarray(x, np.int64) for x in counts_list])
    u, inv = np.unique(k, return_inverse=True)
    return u, np.bincount(inv, weights=c, minlength=u.size).astype(np.int64)


@pytest.mark.parametrize("seed", range(4))
def test_merge_runs_in_place_equals_unique(monkeypatch, seed):
    """Small blocks force the blocked search and the back-to-front in-place insertion through many blocks."""
    monkeypatch.setattr(_sizes, "SEARCH_BLOCK", 7)
    monkeypatch.setattr(_sizes, "MOVE_BLOCK", 5)
    rng = np.random.default_rng(seed)
    runs = []
    for n in (500, 37, 1, 300, 2000):
        k = np.unique(rng.integers(0, 3000, n).astype(np.uint32))  # overlapping key ranges, shared keys
        runs.append((k, rng.integers(1, 1000, k.size).astype(np.uint32)))
    ref = _ref_hist([k for k, _ in runs], [c for _, c in runs])
    acc = (runs[0][0].copy(), runs[0][1].copy())
    for k, c in runs[1:]:
        acc = _runs.merge_runs(acc, (k.copy(), c.copy()))
    np.testing.assert_array_equal(acc[0], ref[0])
    np.testing.assert_array_equal(acc[1].astype(np.int64), ref[1])
    # disjoint insertion at the ends and in the middle, into a view (must copy, not resize someone else's buffer)
    base = np.arange(0, 100, 2, dtype=np.uint32)
    ins = np.array([1, 3, 51, 99, 100, 200], np.uint32)
    kk, cc = _runs.insert_disjoint(base[:], np.ones(base.size, np.uint32)[:], ins, np.full(ins.size, 2, np.uint32))
    np.testing.assert_array_equal(kk, np.sort(np.concatenate([base, ins])))
    np.testing.assert_array_equal(cc, np.where(np.isin(kk, ins), 2, 1))
    assert base.size == 50


def test_streaming_small_blocks_buffer_and_flush_equal_sklearn(monkeypatch):
    """Many updates with new and repeated keys go through the buffer, its LSM merges and flushes."""
    monkeypatch.setattr(_sizes, "SEARCH_BLOCK", 16)
    monkeypatch.setattr(_sizes, "MOVE_BLOCK", 64)
    flushes = []
    real_flush = ExactState._flush

    def counting_flush(self, cls):
        flushes.append(len(self._buf[cls]))
        real_flush(self, cls)

    monkeypatch.setattr(ExactState, "_flush", counting_flush)
    rng = np.random.default_rng(21)
    m = PixelMetrics()
    ss, ys = [], []
    for i in range(40):
        n = int(rng.integers(1, 3000))
        y = (rng.random(n) < 0.3).astype(np.uint8)
        y[rng.random(n) < 0.1] = 255
        # a mix of coarse (repeated) and fine (new) float32 values that drift upward
        s = np.where(rng.random(n) < 0.5, np.round(rng.normal(size=n), 1), rng.normal(size=n) + i / 10)
        s = (s + y * 0.7).astype(np.float32)
        m.update(s, y)
        ss.append(s)
        ys.append(y)
    assert sum(n > 0 for n in flushes) >= 3  # buffered runs were merged into the main runs mid-stream
    s, y = np.concatenate(ss), np.concatenate(ys)
    s_ref, y_ref = _ref(s, y)
    out = m.compute()
    assert abs(out["auroc"] - roc_auc_score(y_ref, s_ref)) < TOL
    assert abs(out["ap"] - average_precision_score(y_ref, s_ref)) < TOL
    assert out == pixel_metrics(s, y)
    assert m.n_distinct == np.unique(s[y == 0]).size + np.unique(s[y == 1]).size  # all runs flushed, no repeats


def test_counts_upcast_past_uint32_exactly():
    """Class totals past 2^32 - 1 switch counts to uint64 (no wrap-around); reference: sklearn with sample weights."""
    f32 = lambda *v: np.array(v, np.float32)  # noqa: E731
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    m = PixelMetrics()
    st = m._state
    st._add_unique(0, f32(0.25), i64(3_000_000_000))
    st._add_unique(1, f32(0.5), i64(4_000_000_000))
    assert st._big[0][1].dtype == np.uint32 and st._big[1][1].dtype == np.uint32
    st._add_unique(0, f32(0.25, 0.5), i64(2_000_000_000, 1))        # 3e9 + 2e9 on one key would wrap in uint32
    st._add_unique(1, f32(0.25, 1.0), i64(7, 4_000_000_000))        # new keys into a widened state
    assert st._big[0][1].dtype == np.uint64 and st._big[1][1].dtype == np.uint64
    out = m.compute()
    assert out["n_neg"] == 5_000_000_001 and out["n_pos"] == 8_000_000_007
    s = np.array([0.25, 0.5, 0.5, 0.25, 1.0])
    y = np.array([0, 0, 1, 1, 1])
    w = np.array([5e9, 1, 4e9, 7, 4e9])
    assert abs(out["auroc"] - roc_auc_score(y, s, sample_weight=w)) < TOL
    assert abs(out["ap"] - average_precision_score(y, s, sample_weight=w)) < TOL


def test_mode_is_a_state_object_chosen_at_construction():
    """Exact and binned accumulators share one interface; PixelMetrics only delegates to the one it holds."""
    s, y = _data(30, n=5_000, dtype=np.float32, levels=50)
    exact, binned = PixelMetrics(), PixelMetrics(bins=32, edge_samples=100)
    assert isinstance(exact._state, ExactState) and isinstance(binned._state, BinnedState)
    for m in (exact, binned):
        m.update(s, y)
        assert m.n_distinct > 0
        first = m.compute()
        m.reset()
        with pytest.raises(OodscoreError, match="no valid pixels"):
            m.compute()
        m.update(s, y)
        assert m.compute() == first
    assert exact.edges is None and binned.edges is not None and binned.edges.size <= 32
    with pytest.raises(OodscoreError, match="bins differ"):
        exact.merge(binned)
