"""oodscore.meta: meta-ood's meta classifier (features, standardization, cross-validation, kicks), the segment
counts before / after, the model file.

Oracles: meta-ood's own procedure written out literally (the ``meta_ood`` fixture of conftest.py:
``metrics_to_dataset`` + the ``LeaveOneOut`` loop of ``classifier_fit_and_predict``, the ``remove()`` loop over
component maps), sklearn's metrics, counts worked out by hand; and the official pipeline's numbers recorded in
tests/fixtures/official/metaseg.npz (``record_metaseg.py``).
"""
from __future__ import annotations

import json
import pickle
import zipfile

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score
from sklearn.model_selection import GroupKFold

from oodscore import OodscoreError
from oodscore.meta import (
    MODEL_FORMAT,
    MetaClassifier,
    check_cv,
    check_threshold,
    classify_segments,
    count_segments,
    cross_val_proba,
    feature_names,
    standardize,
    total_counts,
)
from oodscore.metaseg import GtOverlap, gt_segments, segment_metrics


def _metrics(n=90, seed=0, num_classes=3):
    """A metrics dict of meta-ood's kinds: float32-rounded heat-map means, int sizes, class probabilities."""
    rng = np.random.default_rng(seed)
    e = rng.random(n)
    m = {"iou": rng.random(n), "iou0": (e + 0.35 * rng.normal(size=n) > 0.5).astype(np.float64),
         "prc": np.zeros(n), "mean_x": rng.random(n) * 100, "mean_y": rng.random(n) * 200,
         "E": e.astype(np.float32).astype(np.float64), "E_in": rng.random(n), "S": rng.integers(1, 900, n) * 1.0,
         "S_rel": rng.random(n) * 5}
    for c in range(num_classes):
        m[f"cprob{c}"], m[f"ndist{c}"] = rng.random(n), rng.random(n)
    return m


def _frames_of(n, per=10):
    return np.arange(n) // per


def _no_gt(n_frames):
    return [GtOverlap(0, np.zeros((0, 2), np.int64))] * n_frames


# ------------------------------------------------------------------------------------------------- the classifier
def test_loo_is_meta_ood_bit_for_bit(meta_ood):
    m = _metrics()
    proba, y = meta_ood.loo(m)
    frame = _frames_of(len(y))
    r = classify_segments(m, frame, _no_gt(frame.max() + 1))
    assert np.array_equal(r.proba, proba)                     # same features, same standardization, same fits
    assert np.array_equal(r.kick, np.argmax(proba, axis=-1))
    assert r.scores == {"meta_auroc": roc_auc_score(y, proba[:, 1]),
                        "meta_auprc": average_precision_score(y, proba[:, 1]),
                        "meta_accuracy": accuracy_score(y, np.argmax(proba, axis=-1))}
    assert r.settings["cv"] == "loo" and r.settings["single_class_folds"] == 0
    # threads fit the same folds
    r2 = classify_segments(m, frame, _no_gt(frame.max() + 1), workers=2)
    assert np.array_equal(r2.proba, proba)


def test_features_and_standardization():
    m = _metrics(num_classes=12)
    names = feature_names(m)
    assert names == sorted(names) and not {"iou", "iou0", "prc"} & set(names)
    assert names.index("cprob10") < names.index("cprob2")      # Python's string order, as meta-ood sorts them
    X = np.stack([m[k] for k in names], axis=1)
    X[:, 0] = 3.25                                            # a constant column: 0 after standardization
    Z, mean, scale = standardize(X)
    assert np.allclose(mean, X.mean(0)) and np.allclose(scale, X.std(0) + 1e-10)   # population std + 1e-10
    assert np.all(Z[:, 0] == 0)
    assert np.allclose(Z[:, 1:].mean(0), 0, atol=1e-12) and np.allclose(Z[:, 1:].std(0), 1, atol=1e-9)


def test_grouped_kfold_never_trains_on_the_judged_frame():
    m = _metrics(n=60)
    frame = _frames_of(60, per=6)                       # 10 frames
    names = feature_names(m)
    Z, _, _ = standardize(np.stack([m[k] for k in names], axis=1))
    y = m["iou0"].astype(int)
    proba, single = cross_val_proba(Z, y, 5, frame)
    assert single == 0
    # out of fold: each fold's frames are judged by a model fitted on the other frames only
    for train, test in GroupKFold(n_splits=5).split(Z, groups=frame):
        assert not set(frame[train]) & set(frame[test])
        ref = LogisticRegression(solver="liblinear").fit(Z[train], y[train]).predict_proba(Z[test])
        assert np.array_equal(proba[test], ref)
    r = classify_segments(m, frame, _no_gt(10), cv=5)
    assert r.settings["cv"] == 5 and np.array_equal(r.proba, proba)


def test_one_class_training_fold_predicts_that_class():
    m = _metrics(n=30)
    m["iou0"] = np.zeros(30)
    m["iou0"][7] = 1                                    # leave-one-out without segment 7 sees one class
    r = classify_segments(m, _frames_of(30), _no_gt(3))
    assert r.settings["single_class_folds"] == 1
    assert list(r.proba[7]) == [1.0, 0.0] and r.kick[7] == 0


@pytest.mark.parametrize("value,what", [(0.0, "true positive"), (1.0, "false positive")])
def test_one_class_set_cannot_be_fitted(value, what):
    m = _metrics(n=12)
    m["iou0"] = np.full(12, value)
    with pytest.raises(OodscoreError, match=f"every one of the 12 segment\\(s\\) is a {what}") as e:
        classify_segments(m, _frames_of(12), _no_gt(2))
    assert "\n" not in str(e.value)
    with pytest.raises(OodscoreError, match="cannot be fitted"):
        MetaClassifier().fit(m)


def test_no_segment_and_unlabelled_sets():
    m = {k: np.zeros(0) for k in _metrics()}
    with pytest.raises(OodscoreError, match="no segment to classify"):
        classify_segments(m, np.zeros(0, int), _no_gt(2))
    m = _metrics(n=20)
    with pytest.raises(OodscoreError, match="cross-validation needs ground truth"):
        classify_segments(m, _frames_of(20), [None, None])
    m["iou"] = m["iou0"] = np.full(20, -1.0)            # meta-ood's value without labels
    with pytest.raises(OodscoreError, match="no ground truth"):
        MetaClassifier().fit(m)


def test_bad_settings_are_one_line():
    assert check_cv("loo") == "loo" and check_cv(" LOO ") == "loo" and check_cv("5") == 5 and check_cv(3) == 3
    for bad in ("1", 1, 0, "abc", "", True, 2.5):
        with pytest.raises(OodscoreError, match="--cv"):
            check_cv(bad)
    assert check_threshold(1) == 1.0 and check_threshold(0.7) == 0.7
    for bad in (0, -0.1, 1.01, "0.7", None, True, float("nan")):
        with pytest.raises(OodscoreError, match=r"--entropy-threshold .*\(0, 1\]"):
            check_threshold(bad)
    m = _metrics(n=20)
    with pytest.raises(OodscoreError, match="--cv 3: 3 folds grouped by frame need at least 3 frames"):
        classify_segments(m, np.zeros(20, int), _no_gt(1), cv=3)


# ------------------------------------------------------------------------------------------------- counts
def test_counts_by_hand():
    # frame 0: segments 1 (TP on gt 1), 2 (FP), 3 (TP on gt 1 and gt 2), 4 (FP); gt 3 touched by none
    # frame 1: one FP segment, no ground truth segment
    iou0 = np.array([0, 1, 0, 1, 1.0])
    frame = np.array([0, 0, 0, 0, 1])
    gt = [GtOverlap(3, np.array([[1, 1], [1, 3], [2, 3]])), GtOverlap(0, np.zeros((0, 2), np.int64))]
    nothing = count_segments(iou0, np.zeros(5), frame, gt)
    assert nothing[0] == {"segments": 4, "kicked": 0, "fp_before": 2, "fp_after": 0, "fp_left": 2, "fp_removed": 0,
                          "tp_removed": 0, "gt_segments": 3, "fn_before": 1, "fn_after": 1}
    # meta-ood's fp_after is the true positives removed: kicking segment 3 (a TP) and one FP gives fp_after 1,
    # while one false positive is left; gt 2 is now uncovered: fn_after > fn_before
    rows = count_segments(iou0, np.array([0, 1, 1, 0, 1]), frame, gt)
    assert rows[0] == {"segments": 4, "kicked": 2, "fp_before": 2, "fp_after": 1, "fp_left": 1, "fp_removed": 1,
                       "tp_removed": 1, "gt_segments": 3, "fn_before": 1, "fn_after": 2}
    assert rows[1]["fp_after"] == 0 and rows[1]["fp_removed"] == 1 and rows[1]["fn_after"] == 0
    assert total_counts(rows) == {"segments": 5, "kicked": 3, "fp_before": 3, "fp_after": 1, "fp_left": 1,
                                  "fp_removed": 2, "tp_removed": 1, "gt_segments": 3, "fn_before": 1, "fn_after": 2}
    # no classifier: counts after are None; no ground truth: the counts that need it are None
    before = count_segments(iou0, None, frame, gt)[0]
    assert before["fp_before"] == 2 and before["fn_before"] == 1 and before["fp_after"] is None
    assert before["kicked"] is None
    blind = count_segments(None, np.zeros(5), frame, [None, None])
    assert blind[0]["kicked"] == 0 and blind[0]["fp_before"] is None and total_counts(blind)["fn_after"] is None


def test_counts_match_meta_ood_remove_on_maps(meta_ood):
    rng = np.random.default_rng(3)
    for trial in range(6):
        probs = rng.dirichlet(np.ones(4) * 0.6, size=(30, 40)).transpose(2, 0, 1).astype(np.float32)
        labels = np.zeros((30, 40), np.uint8)
        for _ in range(3):
            y, x = rng.integers(0, 26), rng.integers(0, 34)
            labels[y:y + rng.integers(1, 6), x:x + rng.integers(1, 7)] = 1
        labels[rng.random((30, 40)) < 0.03] = 255
        mask = rng.random((30, 40)) < 0.25
        metrics, comp = segment_metrics(probs, mask, labels)
        gm, gcomp = gt_segments(mask, labels)
        n = len(metrics["S"])
        kick = rng.integers(0, 2, n)
        pairs = np.unique(np.stack([np.abs(gcomp), np.abs(comp)], -1).reshape(-1, 2), axis=0)
        pairs = pairs[(pairs > 0).all(1)]
        g = GtOverlap(len(gm["S"]), pairs)
        row = count_segments(metrics["iou0"], kick, np.zeros(n, int), [g])[0]
        assert row["fn_after"] == meta_ood.remove(comp, gcomp, kick), trial
        assert row["fn_before"] == int(gm["iou0"].sum()) == meta_ood.remove(comp, gcomp, np.zeros(n))
        assert row["fp_before"] == int((metrics["iou"] == 0).sum())
        assert row["fp_after"] == int(np.sum([kick == 1]) - np.sum(metrics["iou0"][kick == 1]))


def test_ground_truth_over_the_whole_frame_counts_no_false_negative_after(meta_ood):
    # meta-ood's np.unique(comp_gt)[1:] drops the frame's only ground-truth segment when no pixel is outside it
    comp = np.ones((4, 5), int)
    gt_comp = np.ones((4, 5), int)
    g = GtOverlap(1, np.array([[1, 1]]), covers_frame=True)
    row = count_segments(np.array([0.0]), np.array([1]), np.zeros(1, int), [g])[0]
    assert row["fn_before"] == 0 and row["fn_after"] == 0 == meta_ood.remove(comp, gt_comp, [1])


# ------------------------------------------------------------------------------------------------- model file
def test_model_save_load_round_trip(tmp_path):
    m = _metrics()
    model = MetaClassifier(entropy_threshold=0.6).fit(m)
    p = model.save(tmp_path / "meta.npz")
    assert zipfile.is_zipfile(p)
    with np.load(p, allow_pickle=False) as z:            # plain arrays and a JSON header: no pickle
        header = json.loads(str(z["meta"][()]))
        assert header["format"] == MODEL_FORMAT and header["feature_names"] == feature_names(m)
    back = MetaClassifier.load(p)
    assert back.entropy_threshold == 0.6 and back.n_segments_ == 90
    assert np.array_equal(back.predict_proba(m), model.predict_proba(m))
    # on another set: standardized with the fitting set's mean and scale
    other = _metrics(n=25, seed=5)
    names = feature_names(m)
    Z = (np.stack([other[k] for k in names], axis=1) - model.mean_) / model.scale_
    assert np.allclose(back.predict_proba(other), model.model_.predict_proba(Z), rtol=0, atol=1e-15)
    assert np.array_equal(back.predict(other), np.argmax(back.predict_proba(other), axis=-1))
    # the same fit as meta-ood's on every segment
    names = feature_names(m)
    Zall, _, _ = standardize(np.stack([m[k] for k in names], axis=1))
    ref = LogisticRegression(solver="liblinear").fit(Zall, m["iou0"])
    assert np.array_equal(model.model_.coef_, ref.coef_) and np.array_equal(model.model_.intercept_, ref.intercept_)


def test_a_tie_keeps_the_segment():
    m = _metrics(n=20)
    model = MetaClassifier().fit(m)
    model.model_.coef_[:] = 0
    model.model_.intercept_[:] = 0                       # P(false positive) = 0.5 exactly
    assert np.all(model.predict_proba(m) == 0.5) and not model.predict(m).any()


def test_model_of_other_features_is_one_line(tmp_path):
    model = MetaClassifier().fit(_metrics(num_classes=3))
    with pytest.raises(OodscoreError, match="fitted on 12 features, these segments have 14"):
        model.predict_proba(_metrics(num_classes=4))


def test_bad_model_files_are_one_line(tmp_path):
    good = MetaClassifier().fit(_metrics()).save(tmp_path / "good.npz")
    with pytest.raises(OodscoreError, match="file not found"):
        MetaClassifier.load(tmp_path / "nope.npz")
    with pytest.raises(OodscoreError, match="is a folder"):
        MetaClassifier.load(tmp_path)
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(OodscoreError, match="not a meta-classifier file"):
        MetaClassifier.load(tmp_path / "text.npz")
    (tmp_path / "pickled.npz").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(OodscoreError, match="not a meta-classifier file"):
        MetaClassifier.load(tmp_path / "pickled.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(OodscoreError, match="meta-classifier"):
        MetaClassifier.load(truncated)

    def rewrite(name, **changes):
        with np.load(good, allow_pickle=False) as z:
            header = json.loads(str(z["meta"][()]))
            arrays = {k: z[k] for k in z.files if k != "meta"}
        header.update(changes.pop("header", {}))
        arrays.update(changes)
        np.savez(tmp_path / name, meta=np.array(json.dumps(header)), **arrays)
        return tmp_path / name

    with pytest.raises(OodscoreError, match="expected format"):
        MetaClassifier.load(rewrite("fmt.npz", header={"format": "oodscore-oodmc"}))
    with pytest.raises(OodscoreError, match="version 9 is not supported"):
        MetaClassifier.load(rewrite("ver.npz", header={"version": 9}))
    with pytest.raises(OodscoreError, match="damaged meta-classifier file"):
        MetaClassifier.load(rewrite("coef.npz", coef=np.zeros((1, 3))))
    with pytest.raises(OodscoreError, match="damaged meta-classifier file"):
        MetaClassifier.load(rewrite("thr.npz", header={"entropy_threshold": 3}))
    with pytest.raises(OodscoreError, match="not fitted"):
        MetaClassifier().save(tmp_path / "unfitted.npz")


# ------------------------------------------------------------------------------------------------- official
def _pipeline_inputs(off, ours: bool):
    """The pipeline's frames: the official metrics and maps as recorded (``ours`` False: ``marked`` and
    ``compute_metrics_mask``'s components give the ground-truth overlaps), or ours recomputed from the recorded
    probabilities, labels and mask (:func:`segment_metrics`, :func:`gt_segments`)."""
    names = [str(c) for c in off["pipeline/frames"]]
    parts, gt, frame = [], [], []
    for f, c in enumerate(names):
        probs, labels = off[f"{c}/probs"], off[f"{c}/labels"]
        mask = off[f"{c}/ood_mask"].astype(bool)
        if ours:
            metrics, comp = segment_metrics(probs, mask, labels)
            gcomp = gt_segments(mask, labels)[1]
        else:
            metrics = {str(k): off[f"{c}/metrics/{k}"].astype(np.float64) for k in off[f"{c}/metric_names"]
                       if str(k) != "prc"}
            comp, gcomp = off[f"{c}/marked"], off[f"{c}/gt_components"]
        pairs = np.unique(np.stack([np.abs(gcomp), np.abs(comp)], -1).reshape(-1, 2), axis=0)
        n_gt = int(np.abs(gcomp).max(initial=0))
        gt.append(GtOverlap(n_gt, pairs[(pairs > 0).all(1)], bool((gcomp != 0).all())))
        parts.append(metrics)
        frame += [f] * len(metrics["S"])
    keys = list(parts[0])
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}, np.array(frame), gt


@pytest.mark.parametrize("ours", [False, True], ids=["official-metrics", "our-metrics"])
def test_pipeline_equals_official(official_metaseg, ours):
    official = official_metaseg
    metrics, frame, gt = _pipeline_inputs(official, ours)
    r = classify_segments(metrics, frame, gt, cv="loo")
    p = "pipeline/"
    names = feature_names(metrics)
    assert names == [str(n) for n in official[p + "X_names"]]
    if not ours:    # meta-ood's standardized features, bit for bit
        assert np.array_equal(standardize(np.stack([metrics[k] for k in names], axis=1))[0], official[p + "Xa"])
    assert np.abs(r.proba - official[p + "proba"]).max() <= 1e-6
    assert np.array_equal(r.kick, official[p + "kick"])
    for k in ("meta_auroc", "meta_auprc", "meta_accuracy"):
        assert abs(r.scores[k] - float(official[p + k])) <= 1e-6, k
    for k in ("fp_before", "fp_after", "fn_before", "fn_after"):
        assert r.totals[k] == int(official[p + k]), k
