"""``oodscore.metaseg``: meta-ood's segment search and MetaSeg metrics.

The numbers are checked against meta-ood's own code: ``tests/fixtures/official/metaseg.npz`` holds the outputs of
its compiled ``compute_metrics_components`` / ``compute_metrics_mask`` and of its pipeline, recorded once by
``record_metaseg.py`` beside it. A small hand-made frame is re-derived here by hand (float64), and the streaming
state is checked against updating frame by frame.
"""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from oodscore import OodscoreError
from oodscore.metaseg import (
    GT_METRIC_NAMES,
    SegmentMetrics,
    entropy_mask,
    gt_segments,
    metric_names,
    segment_metrics,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "metaseg.npz"
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def rec():
    if not FIXTURE.is_file():
        pytest.skip(f"the recorded meta-ood outputs are not there yet ({FIXTURE.name}, written by record_metaseg.py)")
    with np.load(FIXTURE, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _cases(rec):
    return [str(c) for c in rec["cases"]]


def _inputs(rec, case):
    return rec[f"{case}/probs"], rec[f"{case}/labels"], rec[f"{case}/ood_mask"]


# ------------------------------------------------------------------------------------------------- the official code
def test_fixture_is_small_and_covers_the_cases(rec):
    assert FIXTURE.stat().st_size < 1_000_000
    cases = _cases(rec)
    n_seg = [len(rec[f"{c}/metrics/S"]) for c in cases]
    assert 0 in n_seg and max(n_seg) > 5                   # a frame without segment, frames with many
    sizes = np.concatenate([rec[f"{c}/metrics/S"] for c in cases])
    assert sizes.min() == 1 and sizes.max() > 50           # one-pixel segments and large ones
    assert any((rec[f"{c}/labels"] == 255).any() for c in cases)
    border = [np.abs(rec[f"{c}/marked"])[[0, -1]].any() or np.abs(rec[f"{c}/marked"])[:, [0, -1]].any()
              for c in cases]
    assert any(border)


def test_metrics_equal_the_official_compute_metrics_components(rec):
    for case in _cases(rec):
        probs, labels, mask = _inputs(rec, case)
        metrics, components = segment_metrics(probs, mask.astype(bool), labels)
        official = [str(n) for n in rec[f"{case}/metric_names"]]
        assert list(metrics) == [n for n in official if n != "prc"], case
        assert metrics["S"].size == rec[f"{case}/metrics/S"].size, case
        for name in metrics:
            np.testing.assert_allclose(metrics[name], rec[f"{case}/metrics/{name}"], rtol=RTOL, atol=ATOL,
                                       err_msg=f"{case}: {name}")
            assert metrics[name].dtype == np.float64
        np.testing.assert_array_equal(components, rec[f"{case}/marked"], err_msg=case)
        assert components.dtype == np.int32


def test_gt_segments_equal_the_official_compute_metrics_mask(rec):
    checked = 0
    for case in _cases(rec):
        if f"{case}/gt_components" not in rec:
            continue
        probs, labels, mask = _inputs(rec, case)
        metrics, components = gt_segments(mask.astype(bool), labels)
        np.testing.assert_array_equal(components, rec[f"{case}/gt_components"], err_msg=case)
        for name in GT_METRIC_NAMES:
            np.testing.assert_allclose(metrics[name], rec[f"{case}/gt_metrics/{name}"], rtol=RTOL, atol=ATOL,
                                       err_msg=f"{case}: {name}")
        checked += 1
    assert checked


def test_entropy_mask_equals_entropy_segments_mask(rec):
    for case in _cases(rec):
        probs, labels, mask = _inputs(rec, case)
        np.testing.assert_array_equal(entropy_mask(probs, 0.7, labels), mask.astype(bool) & (labels != 255),
                                      err_msg=case)


def test_streaming_state_reproduces_the_official_pipeline_counts(rec):
    """The frames of the recorded pipeline through :class:`SegmentMetrics`: the per-segment metrics concatenated
    in frame order, and the segment counts of meta-ood's ``remove()`` / ``oodd_metrics_segment`` computed from the
    state's ground-truth overlaps with the official kicks."""
    frames = [str(f) for f in rec["pipeline/frames"]]
    state = SegmentMetrics(0.7)
    for case in frames:
        probs, labels, mask = _inputs(rec, case)
        state.update(probs, labels, ood_mask=mask)
    table = state.compute()
    for name in table.metrics:
        np.testing.assert_allclose(table.metrics[name],
                                   np.concatenate([rec[f"{c}/metrics/{name}"] for c in frames]),
                                   rtol=RTOL, atol=ATOL, err_msg=name)
    kick = rec["pipeline/kick"].astype(bool)
    iou0 = table.metrics["iou0"] == 1
    assert kick.size == iou0.size
    assert int(iou0.sum()) == int(rec["pipeline/fp_before"])
    assert int(kick.sum() - iou0[kick].sum()) == int(rec["pipeline/fp_after"])
    fn_before = fn_after = 0
    for f, g in enumerate(table.gt):
        assert g is not None
        kept = ~kick[table.frame == f]
        fn_before += g.n_gt - np.unique(g.pairs[:, 0]).size
        if not g.covers_frame:
            fn_after += g.n_gt - np.unique(g.pairs[kept[g.pairs[:, 1] - 1], 0]).size
    assert fn_before == int(rec["pipeline/fn_before"])
    assert fn_after == int(rec["pipeline/fn_after"])


# ------------------------------------------------------------------------------------------------- by hand
def _hand_frame():
    """5 x 6, 3 classes. Segment 1: the corner pixel (0, 5); segment 2: the 3 x 3 block rows 1-3, columns 1-3
    (interior: (2, 2)). Anomaly: (2, 2), (3, 3) in the block, (3, 4), (4, 4), (4, 5) and (4, 0) outside it;
    void: (0, 0)."""
    mask = np.zeros((5, 6), bool)
    mask[0, 5] = True
    mask[1:4, 1:4] = True
    probs = np.empty((3, 5, 6), np.float32)
    probs[:] = np.array([0.7, 0.2, 0.1], np.float32)[:, None, None]
    probs[:, 1, 4] = probs[:, 1, 5] = [0.2, 0.7, 0.1]        # predicted class 1
    probs[:, 0, 5] = [0.5, 0.3, 0.2]
    probs[:, 2, 2] = [0.1, 0.1, 0.8]
    labels = np.zeros((5, 6), np.uint8)
    for r, c in [(2, 2), (3, 3), (3, 4), (4, 4), (4, 5), (4, 0)]:
        labels[r, c] = 1
    labels[0, 0] = 255
    return probs, mask, labels


def _entropy(p):
    p = np.asarray(p, np.float64)
    return -np.sum(p * np.log(p + np.finfo(np.float32).eps)) / np.log(p.size)


def test_hand_made_frame():
    probs, mask, labels = _hand_frame()
    m, comp = segment_metrics(probs, mask, labels)
    expected = np.zeros((5, 6), np.int32)
    expected[0, 5] = -1
    expected[1:4, 1:4] = -2
    expected[2, 2] = 2
    np.testing.assert_array_equal(comp, expected)
    assert list(m) == metric_names(3)
    close = {
        "S": [1, 9], "S_in": [0, 1], "S_bd": [1, 8], "S_rel": [1, 9 / 8], "S_rel_in": [0, 1 / 8],
        "mean_x": [0, 2], "mean_y": [5, 2],
        # segment 2: I = 2; U = 9 + the anomaly outside the mask 8-connected to it: {(3,4), (4,4), (4,5)}, {(4,0)}
        "iou": [0, 2 / 13], "iou0": [1, 0],
        # the corner pixel's in-image neighbours (0,4), (1,4), (1,5): classes 0, 1, 1 (the image edge is no
        # neighbour); the block's 32 (boundary pixel, outside pixel) pairs, 2 of them with (1, 4)
        "ndist0": [1 / 3, 30 / 32], "ndist1": [2 / 3, 2 / 32], "ndist2": [0, 0],
        "cprob0": [0.5, (8 * 0.7 + 0.1) / 9], "cprob2": [0.2, (8 * 0.1 + 0.8) / 9],
        "V": [0.5, (8 * 0.3 + 0.2) / 9], "V_in": [0, 0.2], "V_bd": [0.5, 0.3], "V_var_in": [0, 0],
        "V_var": [0, (8 * 0.09 + 0.04) / 9 - (2.6 / 9) ** 2], "V_rel": [0.5, 2.6 / 9 * 9 / 8],
        "D": [0.8, (8 * 0.5 + 0.3) / 9], "D_in": [0, 0.3], "D_bd": [0.8, 0.5],
        "E": [_entropy([0.5, 0.3, 0.2]), (8 * _entropy([0.7, 0.2, 0.1]) + _entropy([0.1, 0.1, 0.8])) / 9],
        "E_in": [0, _entropy([0.1, 0.1, 0.8])], "E_bd": [_entropy([0.5, 0.3, 0.2]), _entropy([0.7, 0.2, 0.1])],
        "E_rel_in": [0, _entropy([0.1, 0.1, 0.8]) / 8],
    }
    for name, want in close.items():
        np.testing.assert_allclose(m[name], want, rtol=1e-6, atol=1e-6, err_msg=name)

    g, gcomp = gt_segments(mask, labels)
    # ground-truth segment 1: (2,2), (3,3), (3,4), (4,4), (4,5), all boundary; 2: (4,0). Segment 1 meets the
    # prediction at 2 pixels; U = 5 + the 7 other pixels of the block (predicted, not anomaly, 8-connected)
    expected = np.zeros((5, 6), np.int32)
    for r, c in [(2, 2), (3, 3), (3, 4), (4, 4), (4, 5)]:
        expected[r, c] = -1
    expected[4, 0] = -2
    np.testing.assert_array_equal(gcomp, expected)
    np.testing.assert_allclose(g["iou"], [2 / 12, 0])
    np.testing.assert_array_equal(g["iou0"], [0, 1])
    np.testing.assert_allclose(g["rec"], [2 / 5, 0])
    np.testing.assert_array_equal(g["S"], [5, 1])
    np.testing.assert_array_equal(g["S_in"], [0, 0])


def test_hand_made_frame_streaming_overlaps():
    probs, mask, labels = _hand_frame()
    state = SegmentMetrics()
    state.update(probs, labels, ood_mask=mask)
    t = state.compute()
    assert t.num_frames == 1 and t.gt[0] is not None
    assert t.gt[0].n_gt == 2 and not t.gt[0].covers_frame
    np.testing.assert_array_equal(t.gt[0].pairs, [[1, 2]])     # gt segment 1 meets predicted segment 2
    np.testing.assert_array_equal(t.frame, [0, 0])
    np.testing.assert_array_equal(t.segment, [1, 2])
    np.testing.assert_array_equal(t.gt_frame, [0, 0])
    np.testing.assert_array_equal(t.gt_metrics["iou0"], [0, 1])


# ------------------------------------------------------------------------------------------------- edge cases
def _probs(shape=(6, 7), c=4, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(c, *shape)).astype(np.float32)
    e = np.exp(z - z.max(0))
    return (e / e.sum(0)).astype(np.float32)


def test_no_segment():
    probs = _probs()
    for mask, labels in [(np.zeros((6, 7), bool), None),
                         (np.ones((6, 7), bool), np.full((6, 7), 255, np.uint8))]:     # every pixel void
        m, comp = segment_metrics(probs, mask, labels)
        assert list(m) == metric_names(4)
        assert all(v.shape == (0,) and v.dtype == np.float64 for v in m.values())
        assert comp.shape == (6, 7) and not comp.any()
    g, gcomp = gt_segments(np.ones((6, 7), bool), np.zeros((6, 7), np.uint8))
    assert all(v.shape == (0,) for v in g.values()) and not gcomp.any()


def test_void_is_removed_and_without_labels_iou_is_minus_one():
    probs = _probs()
    mask = np.zeros((6, 7), bool)
    mask[2:5, 2:5] = True
    labels = np.zeros((6, 7), np.uint8)
    labels[3, 2:5] = 255                       # cuts the block into two segments
    m, comp = segment_metrics(probs, mask, labels)
    np.testing.assert_array_equal(m["S"], [3, 3])
    assert not comp[3].any()
    m, comp = segment_metrics(probs, mask, None)
    np.testing.assert_array_equal(m["S"], [9])
    np.testing.assert_array_equal(m["iou"], [-1])
    np.testing.assert_array_equal(m["iou0"], [-1])


def test_image_edge_is_no_boundary():
    probs = _probs()
    mask = np.zeros((6, 7), bool)
    mask[:3] = True                            # the top three rows, edge to edge
    m, comp = segment_metrics(probs, mask, None)
    np.testing.assert_array_equal(comp[:2], 1)
    np.testing.assert_array_equal(comp[2], -1)
    np.testing.assert_array_equal(m["S_bd"], [7])
    # every boundary pixel sees the 3 pixels below it, except the two at the image edges (2): 19 pairs
    below = np.argmax(probs[:, 3], axis=0)
    want = np.bincount(below, weights=[2, 3, 3, 3, 3, 3, 2], minlength=4) / 19
    np.testing.assert_allclose([m[f"ndist{k}"][0] for k in range(4)], want)
    m, comp = segment_metrics(probs, np.ones((6, 7), bool), None)   # no boundary at all: no crash
    assert not (comp < 0).any() and m["S_bd"][0] == 0 and np.isinf(m["S_rel"][0])


def test_raster_order_of_the_first_pixel():
    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = rng.random((40, 50)) < 0.3
        _, comp = segment_metrics(_probs((40, 50), 3, 1), mask, None)
        ids = np.abs(comp).ravel()
        ids = ids[ids > 0]
        _, first = np.unique(ids, return_index=True)
        np.testing.assert_array_equal(ids[np.sort(first)], np.arange(1, ids.max() + 1))
        assert ((comp != 0) == mask).all()


def test_torch_and_float64_inputs():
    probs, mask, labels = _hand_frame()
    m32, c32 = segment_metrics(probs, mask, labels)
    mt, ct = segment_metrics(torch.from_numpy(probs), torch.from_numpy(mask), torch.from_numpy(labels))
    m64, c64 = segment_metrics(probs.astype(np.float64), mask, labels)
    for name in m32:
        np.testing.assert_array_equal(mt[name], m32[name])
        np.testing.assert_array_equal(m64[name], m32[name])     # read as float32, as meta-ood does
    np.testing.assert_array_equal(ct, c32)


def test_bad_input_is_one_line():
    probs, mask, labels = _hand_frame()
    with pytest.raises(OodscoreError, match="probs"):
        segment_metrics(probs[0], mask, labels)
    with pytest.raises(OodscoreError, match="ood_mask"):
        segment_metrics(probs, mask[:4], labels)
    with pytest.raises(OodscoreError, match="labels"):
        segment_metrics(probs, mask, labels[:, :3])
    for t in (0, 1.5, -0.1, True, "0.7"):
        with pytest.raises(OodscoreError, match="threshold"):
            entropy_mask(probs, t)
        with pytest.raises(OodscoreError, match="threshold"):
            SegmentMetrics(t)


def test_entropy_mask_against_scipy():
    """``entropy_segments_mask`` as meta-ood's pinned numpy (< 2) runs it: ``scipy.stats.entropy`` of float32
    probabilities stays float32, and so do the division by ``log C`` and the comparison with the threshold."""
    rng = np.random.default_rng(5)
    probs = _probs((60, 80), 19, 5) ** rng.uniform(0.05, 1.0, (60, 80)).astype(np.float32)   # all entropies
    probs /= probs.sum(0)
    labels = np.zeros((60, 80), np.uint8)
    labels[:5] = 255
    ent = scipy_entropy(probs, axis=0)
    assert ent.dtype == np.float32
    ent = ent / np.float32(np.log(19))
    for t in (0.3, 0.5, 0.7, 0.9, 1.0):
        mask = entropy_mask(probs, t, labels)
        assert mask.dtype == bool
        np.testing.assert_array_equal(mask, (ent >= np.float32(t)) & (labels != 255))
        assert 0 < mask.sum() < mask.size or t == 1.0


# ------------------------------------------------------------------------------------------------- streaming
def _frames():
    rng = np.random.default_rng(7)
    out = []
    for i in range(4):
        probs = _probs((24, 32), 5, 10 + i)
        labels = (rng.random((24, 32)) < 0.2).astype(np.uint8)
        labels[rng.random((24, 32)) < 0.05] = 255
        out.append((probs, None if i == 2 else labels))
    return out


def _same(a, b):
    assert list(a.metrics) == list(b.metrics)
    for k in a.metrics:
        np.testing.assert_array_equal(a.metrics[k], b.metrics[k])
    for k in GT_METRIC_NAMES:
        np.testing.assert_array_equal(a.gt_metrics[k], b.gt_metrics[k])
    np.testing.assert_array_equal(a.frame, b.frame)
    np.testing.assert_array_equal(a.segment, b.segment)
    np.testing.assert_array_equal(a.gt_frame, b.gt_frame)
    assert len(a.gt) == len(b.gt)
    for x, y in zip(a.gt, b.gt):
        assert (x is None) == (y is None)
        if x is not None and y is not None:
            assert x.n_gt == y.n_gt and x.covers_frame == y.covers_frame
            np.testing.assert_array_equal(x.pairs, y.pairs)


def test_merge_in_frame_order_equals_update_in_order():
    frames = _frames()
    whole = SegmentMetrics(0.5)
    for probs, labels in frames:
        whole.update(probs, labels)
    parts = []
    for probs, labels in frames:
        s = whole.empty_copy()
        s.update(probs, labels)
        parts.append(pickle.loads(pickle.dumps(s)))           # as a worker hands it back
    merged = parts[0]
    for s in parts[1:]:
        assert merged.merge(s) is merged
    a, b = whole.compute(), merged.compute()
    _same(a, b)
    assert a.num_frames == 4 and a.gt[2] is None
    assert a.frame.max() == 3 and a.metrics["S"].size == a.frame.size
    assert set(a.gt_frame.tolist()) <= {0, 1, 3}
    # each frame's rows are that frame's own segment_metrics
    probs, labels = frames[1]
    m, _ = segment_metrics(probs, entropy_mask(probs, 0.5, labels), labels)
    for k in m:
        np.testing.assert_array_equal(a.metrics[k][a.frame == 1], m[k])


def test_state_reset_empty_copy_and_size():
    frames = _frames()
    s = SegmentMetrics(0.6)
    for probs, labels in frames:
        s.update(probs, labels)
    assert s.num_frames == 4
    assert len(pickle.dumps(s)) < 200_000                    # per-segment numbers only, no maps
    e = s.empty_copy()
    assert e.threshold == 0.6 and e.num_frames == 0
    empty = e.compute()
    assert empty.metrics == {} and empty.frame.size == 0 and empty.num_frames == 0
    with pytest.raises(OodscoreError, match="classes"):
        s.update(_probs((24, 32), 3), None)
    s.reset()
    assert s.num_frames == 0 and s.threshold == 0.6
    s.update(_probs((24, 32), 3), None)                      # a reset state takes any class count
    with pytest.raises(ValueError):
        s.merge(SegmentMetrics(0.7))
