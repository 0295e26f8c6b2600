"""oodscore.components: hand-computed fixtures and a slow literal implementation of the SMIYC definitions."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from oodscore import OodscoreError
from oodscore.components import TAUS, ComponentMetrics, component_metrics, frame_components
from oodscore.metrics import pixel_metrics


# ----------------------------------------------------------------------------- slow literal reference
def _label_8conn(mask: np.ndarray):
    """Breadth-first 8-connected labelling (independent of cv2)."""
    lab = np.zeros(mask.shape, np.int64)
    n = 0
    h, w = mask.shape
    for i in range(h):
        for j in range(w):
            if mask[i, j] and not lab[i, j]:
                n += 1
                lab[i, j] = n
                q = deque([(i, j)])
                while q:
                    a, b = q.popleft()
                    for da in (-1, 0, 1):
                        for db in (-1, 0, 1):
                            x, y = a + da, b + db
                            if 0 <= x < h and 0 <= y < w and mask[x, y] and not lab[x, y]:
                                lab[x, y] = n
                                q.append((x, y))
    return lab, n


def _literal_frame(score, label, thr, min_pred, min_gt):
    """docs/methods.md §6.5 read literally, one component at a time with boolean masks."""
    valid = (label == 0) | (label == 1)
    pred = (score >= thr) & valid
    plab, pn = _label_8conn(pred)
    glab, gn = _label_8conn(label == 1)
    for c in range(1, pn + 1):
        if (plab == c).sum() < min_pred:
            plab[plab == c] = 0
    region = valid.copy()
    gt_ids = []
    for k in range(1, gn + 1):
        if (glab == k).sum() < min_gt:
            region[glab == k] = False  # small GT -> void
        else:
            gt_ids.append(k)
    pred_ids = [c for c in range(1, pn + 1) if ((plab == c) & region).any()]
    gt_any = np.isin(glab, gt_ids) & region
    siou = []
    for k in gt_ids:
        kmask = (glab == k) & region
        touching = [c for c in pred_ids if ((plab == c) & kmask).any()]
        khat = np.isin(plab, touching) & region if touching else np.zeros_like(kmask)
        inter = (kmask & khat).sum()
        a = (khat & gt_any & ~kmask).sum()
        siou.append(inter / (khat.sum() + kmask.sum() - inter - a))
    ppv = []
    for c in pred_ids:
        cmask = (plab == c) & region
        ppv.append((cmask & gt_any).sum() / cmask.sum())
    return np.array(siou, float), np.array(ppv, float)


def _literal_dataset(frames, thr, min_pred, min_gt):
    sious, ppvs, f1 = [], [], []
    per = [_literal_frame(s, y, thr, min_pred, min_gt) for s, y in frames]
    sious = np.concatenate([p[0] for p in per])
    ppvs = np.concatenate([p[1] for p in per])
    for t in TAUS:
        tp = sum(int((p[0] >= t).sum()) for p in per)
        fn = sum(int((p[0] < t).sum()) for p in per)
        fp = sum(int((p[1] < t).sum()) for p in per)
        f1.append(2 * tp / (2 * tp + fn + fp))
    return sious, ppvs, f1


def _random_frame(rng, h=28, w=36):
    """Blobby GT (a few rectangles), noisy scores correlated with it, a void band."""
    label = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(1, 5)):
        y0, x0 = rng.integers(0, h - 3), rng.integers(0, w - 3)
        label[y0:y0 + rng.integers(1, 9), x0:x0 + rng.integers(1, 9)] = 1
    score = label * 0.6 + rng.random((h, w)) * 0.7
    score = np.round(score, 1).astype(np.float32)  # ties exactly at the threshold
    if rng.random() < 0.5:
        label[:, rng.integers(0, w):][:, :3] = 255
    return score, label


# ----------------------------------------------------------------------------- hand-computed fixture
def _hand_fixture():
    label = np.zeros((20, 30), np.uint8)
    label[2:6, 2:6] = 1      # GT k1: 16 px
    label[2:6, 10:14] = 1    # GT k2: 16 px
    label[15:17, 25:27] = 1  # GT k3: 4 px (voided when min_gt > 4)
    label[10:20, 0:6] = 255  # void region
    score = np.zeros((20, 30), np.float32)
    score[3:5, 4:12] = 1.0   # P1: 16 px; 4 on k1, 8 off GT, 4 on k2
    score[12:15, 18:21] = 1.0  # P2: 9 px off GT
    score[15:17, 24:27] = 1.0  # P3: 6 px, 4 of them on k3
    score[11:14, 1:4] = 1.0  # inside void: never predicted
    return score, label


def test_hand_fixture_siou_ppv():
    score, label = _hand_fixture()
    siou, ppv = frame_components(score, label, 0.5, min_pred_size=1, min_gt_size=1)
    # k1: |k∩K̂| = 4, |K̂| = 16, |k| = 16, A = 4 (P1 on k2) -> 4 / (16 + 16 - 4 - 4); k2 likewise; k3: 4 / (6 + 4 - 4)
    np.testing.assert_allclose(np.sort(siou), np.sort([4 / 24, 4 / 24, 4 / 6]))
    np.testing.assert_allclose(np.sort(ppv), np.sort([8 / 16, 0 / 9, 4 / 6]))
    # k3 voided (min_gt 5): P3 keeps only its 2 pixels outside k3, both off GT -> PPV 0
    siou, ppv = frame_components(score, label, 0.5, min_pred_size=1, min_gt_size=5)
    np.testing.assert_allclose(siou, [4 / 24, 4 / 24])
    np.testing.assert_allclose(np.sort(ppv), [0.0, 0.0, 0.5])
    # predicted components under 10 px dropped (P2, P3): k3 unmatched
    siou, ppv = frame_components(score, label, 0.5, min_pred_size=10, min_gt_size=1)
    np.testing.assert_allclose(siou, [4 / 24, 4 / 24, 0.0])
    np.testing.assert_allclose(ppv, [0.5])


def test_hand_fixture_dataset_f1():
    score, label = _hand_fixture()
    out = component_metrics([score, score], [label, label], threshold=0.5, min_pred_size=1, min_gt_size=1)
    # per frame: sIoU {1/6, 1/6, 2/3}, PPV {1/2, 0, 2/3}; two identical frames
    f1 = []
    for t in TAUS:
        tp = 2 * sum(v >= t for v in (1 / 6, 1 / 6, 2 / 3))
        fn = 6 - tp
        fp = 2 * sum(v < t for v in (1 / 2, 0.0, 2 / 3))
        f1.append(2 * tp / (2 * tp + fn + fp))
    assert out["f1_per_tau"] == pytest.approx(f1)
    assert out["mean_f1"] == pytest.approx(np.mean(f1))
    assert out["siou"] == pytest.approx((1 / 6 + 1 / 6 + 2 / 3) / 3)
    assert out["ppv"] == pytest.approx((1 / 2 + 0 + 2 / 3) / 3)
    assert (out["n_gt"], out["n_pred"]) == (6, 6)


def test_threshold_convention_ge_and_strict():
    score, label = _hand_fixture()
    a = frame_components(score, label, 1.0, 1, 1)               # score >= 1.0 predicts the components
    b = frame_components(score, label, 1.0, 1, 1, strict=True)  # score > 1.0 predicts nothing
    assert len(a[1]) == 3 and len(b[1]) == 0
    np.testing.assert_allclose(b[0], [0, 0, 0])


@pytest.mark.parametrize("seed", range(6))
def test_equals_literal_implementation(seed):
    rng = np.random.default_rng(seed)
    frames = [_random_frame(rng) for _ in range(8)]
    thr, min_pred, min_gt = 0.7, 4, 3
    s_ref, p_ref, f1_ref = _literal_dataset(frames, thr, min_pred, min_gt)
    m = ComponentMetrics(thr, min_pred_size=min_pred, min_gt_size=min_gt)
    for s, y in frames:
        siou, ppv = frame_components(s, y, thr, min_pred, min_gt)
        r_siou, r_ppv = _literal_frame(s, y, thr, min_pred, min_gt)
        # component numbering is the labeller's business: compare as multisets
        np.testing.assert_allclose(np.sort(siou), np.sort(r_siou), atol=1e-12)
        np.testing.assert_allclose(np.sort(ppv), np.sort(r_ppv), atol=1e-12)
        m.update(s, y)
    out = m.compute()
    assert out["siou"] == pytest.approx(s_ref.mean(), abs=1e-12)
    assert out["ppv"] == pytest.approx(p_ref.mean() if p_ref.size else 0.0, abs=1e-12)
    assert out["f1_per_tau"] == pytest.approx(f1_ref, abs=1e-12)
    assert out["mean_f1"] == pytest.approx(np.mean(f1_ref), abs=1e-12)
    assert (out["n_gt"], out["n_pred"]) == (s_ref.size, p_ref.size)


def test_track_presets_size_filters():
    label = np.zeros((64, 64), np.uint8)
    label[5:15, 5:15] = 1      # 100 px GT: kept in the anomaly track (>= 100)
    label[40:49, 40:51] = 1    # 99 px GT: void in the anomaly track, kept in the obstacle track
    score = np.zeros((64, 64), np.float32)
    score[20:40, 5:30] = 1.0   # 500 px prediction, off GT: kept (>= 500)
    score[50:64, 0:35] = 1.0   # 490 px prediction: dropped in the anomaly track
    a = component_metrics(score, label, threshold=0.5, track="anomaly")
    assert (a["n_gt"], a["n_pred"], a["siou"], a["ppv"]) == (1, 1, 0.0, 0.0)
    o = component_metrics(score, label, threshold=0.5, track="obstacle")
    assert (o["n_gt"], o["n_pred"]) == (2, 2)


def test_streaming_merge_torch_and_default_threshold():
    rng = np.random.default_rng(42)
    frames = [_random_frame(rng) for _ in range(6)]
    kw = dict(min_pred_size=4, min_gt_size=3)
    one = component_metrics([f[0] for f in frames], [f[1] for f in frames], threshold=0.7, **kw)
    a, b = ComponentMetrics(0.7, **kw), ComponentMetrics(0.7, **kw)
    for i, (s, y) in enumerate(frames):
        (a if i % 2 else b).update(torch.from_numpy(s), torch.from_numpy(y))
    assert a.merge(b).compute() == one
    # threshold=None -> the F1-optimal pixel threshold of the same frames
    auto = component_metrics(np.stack([f[0] for f in frames]), np.stack([f[1] for f in frames]), **kw)
    t = pixel_metrics(np.stack([f[0] for f in frames]), np.stack([f[1] for f in frames]))["threshold"]
    assert auto == component_metrics([f[0] for f in frames], [f[1] for f in frames], threshold=t, **kw)


def test_bad_inputs_raise():
    score, label = _hand_fixture()
    with pytest.raises(OodscoreError, match="no ground-truth"):
        component_metrics(score, np.zeros_like(label), threshold=0.5)
    with pytest.raises(OodscoreError, match="shape mismatch"):
        component_metrics(score, label[:, :5], threshold=0.5)
    with pytest.raises(OodscoreError, match="track"):
        ComponentMetrics(0.5, track="lanes")
    with pytest.raises(OodscoreError, match="threshold"):
        ComponentMetrics(float("nan"))
    bad = score.copy()
    bad[2, 2] = np.nan
    with pytest.raises(OodscoreError, match="non-finite"):
        component_metrics(bad, label, threshold=0.5)
    ok = score.copy()
    ok[12, 2] = np.nan  # NaN on a void pixel is fine
    component_metrics(ok, label, threshold=0.5, min_pred_size=1, min_gt_size=1)
