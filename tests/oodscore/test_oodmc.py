"""OODMC: feature layout, fitting separable synthetic moments, sampling, persistence, mismatch errors."""
import json
import zipfile

import joblib
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from oodscore import OodscoreError
from oodscore.scores import OODMC, make_classifier, mc_features
from oodscore.scores.oodmc import CLASSIFIER_NAMES, CLASSIFIERS


def make_frame(rng, c=3, k=3, h=12, w=14, ood_frac=0.3, void_frac=0.1):
    """Synthetic MC moments: OOD pixels have high entropy and large variance, ID pixels confident means."""
    label = np.zeros((h, w), np.uint8)
    r = rng.random((h, w))
    label[r < ood_frac] = 1
    label[(r >= ood_frac) & (r < ood_frac + void_frac)] = 255
    ood = label == 1
    mean = rng.normal(size=(c, h, w)).astype(np.float32)
    mean[0] += np.where(ood, 0.0, 4.0)
    central = np.abs(rng.normal(scale=0.3, size=(k - 1, c, h, w))).astype(np.float32)
    central[0] += np.where(ood, 2.0, 0.0)
    entropy = (rng.uniform(0, 0.5, size=(h, w)) + np.where(ood, 0.6, 0.0)).astype(np.float32)
    return {"mean": mean, "central": central, "entropy": entropy}, label


def test_feature_layout():
    rng = np.random.default_rng(0)
    mc, _ = make_frame(rng, c=2, k=4, h=3, w=4)
    w = 0.3
    f = mc_features(mc, w)
    assert f.shape == (12, 1 + 4 * 2) and f.dtype == np.float32
    for y in range(3):
        for x in range(4):
            row = f[y * 4 + x]
            expect = [(1 - w) * mc["entropy"][y, x]] + [w * mc["mean"][cc, y, x] for cc in range(2)]
            for j in range(3):
                expect += [w * mc["central"][j, cc, y, x] for cc in range(2)]
            np.testing.assert_allclose(row, expect, rtol=1e-6)
    # pixel subsets (bool mask or flat indices) pick the same rows
    mask = rng.random((3, 4)) < 0.5
    np.testing.assert_array_equal(mc_features(mc, w, mask), f[mask.ravel()])
    np.testing.assert_array_equal(mc_features(mc, w, np.array([5, 0, 7])), f[[5, 0, 7]])
    # torch tensors accepted, bfloat16 ones read as float32
    np.testing.assert_array_equal(mc_features({k: torch.from_numpy(v) for k, v in mc.items()}, w), f)
    bf = {k: torch.from_numpy(v).bfloat16() for k, v in mc.items()}
    np.testing.assert_array_equal(mc_features(bf, w), mc_features({k: v.float().numpy() for k, v in bf.items()}, w))


def test_fit_separable_and_score():
    rng = np.random.default_rng(1)
    train = [make_frame(rng) for _ in range(4)]
    model = OODMC(svm_points_num=300, svm_eval_subsize=7).fit(train)
    assert model.n_samples_ == {"id": 150, "ood": 150}  # balanced, quota svm_points_num // 2 per class
    n_id = sum(int((lab == 0).sum()) for _, lab in train)
    n_ood = sum(int((lab == 1).sum()) for _, lab in train)
    assert model.n_available_ == {"id": n_id, "ood": n_ood}  # 255 pixels ignored, not OOD
    mc, label = make_frame(rng)
    s = model.score(mc)
    assert s.shape == label.shape and s.dtype == np.float32
    keep = label != 255
    assert roc_auc_score(label[keep], s[keep]) > 0.98
    assert s[label == 1].mean() > 0 > s[label == 0].mean()  # positive = OOD
    # chunked evaluation equals one-shot decision_function on all pixels
    x = model.pipeline_["scaler"].transform(mc_features(mc, 0.5))
    np.testing.assert_allclose(s.ravel(), model.pipeline_["classifier"].decision_function(x), rtol=1e-5, atol=1e-6)
    # the default classifier: LinearSVC seeded by random_state
    assert isinstance(model.pipeline_, Pipeline) and list(model.pipeline_.named_steps) == ["scaler", "classifier"]
    assert repr(model.pipeline_["classifier"]) == "LinearSVC(random_state=0)"


def test_sampling_deterministic_and_quota():
    rng = np.random.default_rng(2)
    train = [make_frame(rng) for _ in range(3)]
    a = OODMC(svm_points_num=100, random_state=5).fit(train)
    b = OODMC(svm_points_num=100, random_state=5).fit(iter(train))
    np.testing.assert_array_equal(a.pipeline_["classifier"].coef_, b.pipeline_["classifier"].coef_)
    np.testing.assert_array_equal(a.pipeline_["scaler"].mean_, b.pipeline_["scaler"].mean_)
    c = OODMC(svm_points_num=100, random_state=6).fit(train)
    assert not np.array_equal(a.pipeline_["scaler"].mean_, c.pipeline_["scaler"].mean_)
    # more points than available: everything is used, and the sample is all labelled pixels
    big = OODMC(svm_points_num=10 ** 6).fit(train)
    assert big.n_samples_ == big.n_available_
    feats = np.concatenate([mc_features(mc, 0.5, lab.ravel() <= 1) for mc, lab in train])
    np.testing.assert_allclose(big.pipeline_["scaler"].mean_, feats.astype(np.float64).mean(axis=0), rtol=1e-5,
                               atol=1e-6)


def test_other_classifiers():
    rng = np.random.default_rng(3)
    train = [make_frame(rng) for _ in range(2)]
    mc, label = make_frame(rng)
    keep = label != 255
    # a named one, any sklearn classifier object (the tree has no decision_function: P(OOD) - 0.5)
    for est in (make_classifier("logistic"), LogisticRegression(), DecisionTreeClassifier()):
        model = OODMC(svm_points_num=200, estimator=est).fit(train)
        s = model.score(mc)
        assert roc_auc_score(label[keep], s[keep]) > 0.9
        assert model.pipeline_["classifier"] is not est and not hasattr(est, "classes_")   # fit works on a clone
        assert model.pipeline_["classifier"].random_state == 0 and est.random_state is None    # seeded by OODMC
    assert OODMC(estimator=LogisticRegression(random_state=3), svm_points_num=200).fit(train).pipeline_[
        "classifier"].random_state == 3     # a classifier's own seed wins
    with pytest.raises(OodscoreError, match="classifier: expected one of linear-svc, logistic, rbf-svc, sgd, got 'no"):
        make_classifier("no-such-thing")
    with pytest.raises(OodscoreError, match="OODMC estimator: expected None or an sklearn classifier object"):
        OODMC(estimator="logistic").fit(train)


def test_named_classifiers():
    assert tuple(CLASSIFIERS) == CLASSIFIER_NAMES == ("linear-svc", "logistic", "rbf-svc", "sgd")
    assert repr(make_classifier("logistic")) == "LogisticRegression(max_iter=1000)"
    assert make_classifier("sgd") is not make_classifier("sgd") and make_classifier("sgd") is not CLASSIFIERS["sgd"]


def _v1_file(model: OODMC, path, params: dict) -> None:
    """A model file as the previous version wrote it: a joblib pickle of a dict with the scaler and the classifier."""
    joblib.dump({"format": "oodscore-oodmc", "version": 1, "params": params, "moments_of": model.moments_of,
                 "moment_order": model.moment_order_, "num_classes": model.num_classes_,
                 "n_samples": model.n_samples_, "n_available": model.n_available_,
                 "scaler": model.pipeline_["scaler"], "clf": model.pipeline_["classifier"]}, path)


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(4)
    train = [make_frame(rng) for _ in range(2)]
    mc, _ = make_frame(rng)
    for est in (LinearSVC(C=0.5), None, *(make_classifier(n) for n in CLASSIFIER_NAMES)):
        model = OODMC(svm_points_num=300, moment_weight=0.4, estimator=est).fit(train)
        p = model.save(tmp_path / "oodmc.joblib")
        assert zipfile.is_zipfile(p)                    # a numpy archive, not a pickle
        back = OODMC.load(p)
        assert repr(back) == repr(model) and repr(back.estimator) == repr(est)
        assert (back.moment_order_, back.num_classes_) == (3, 3) and back.n_samples_ == model.n_samples_
        np.testing.assert_array_equal(back.score(mc), model.score(mc))
    with pytest.raises(OodscoreError, match="not found"):
        OODMC.load(tmp_path / "missing.joblib")
    (tmp_path / "junk.joblib").write_bytes(b"not a pickle")
    with pytest.raises(OodscoreError, match="junk.joblib"):
        OODMC.load(tmp_path / "junk.joblib")
    with pytest.raises(OodscoreError, match="junk.joblib: not a readable joblib file"):
        OODMC.load(tmp_path / "junk.joblib", allow_pickle=True)
    with pytest.raises(OodscoreError, match="cannot store a DecisionTreeClassifier"):
        OODMC(svm_points_num=200, estimator=DecisionTreeClassifier()).fit(train).save(tmp_path / "tree.npz")


def test_version_1_files_load_only_with_allow_pickle(tmp_path):
    """The previous format (a joblib pickle) is read when asked for, and scores as it did."""
    rng = np.random.default_rng(4)
    train = [make_frame(rng) for _ in range(2)]
    mc, _ = make_frame(rng)
    model = OODMC(svm_points_num=300, estimator=LinearSVC(C=0.5)).fit(train)
    params = {"moment_weight": 0.5, "svm_points_num": 300, "svm_eval_subsize": 100, "classifier": "linear-svc",
              "moments_of": "logits", "random_state": 0, "C": 0.5}
    _v1_file(model, tmp_path / "v1.joblib", params)
    with pytest.raises(OodscoreError, match=r"v1.joblib: .*joblib pickle.*allow_pickle=True") as e:
        OODMC.load(tmp_path / "v1.joblib")
    assert "\n" not in str(e.value)
    back = OODMC.load(tmp_path / "v1.joblib", allow_pickle=True)
    assert repr(back.estimator) == "LinearSVC(C=0.5, random_state=0)" and back.svm_points_num == 300
    np.testing.assert_array_equal(back.score(mc), model.score(mc))
    np.testing.assert_array_equal(OODMC.load(back.save(tmp_path / "v2.npz")).score(mc), model.score(mc))
    joblib.dump({"format": "oodscore-oodmc", "version": 7}, tmp_path / "v7.joblib")
    with pytest.raises(OodscoreError, match="version 7 is not supported"):
        OODMC.load(tmp_path / "v7.joblib", allow_pickle=True)


def test_model_file_instantiates_only_known_classes(tmp_path):
    """A file naming another class (or a damaged one) is refused with one line; nothing else is instantiated."""
    rng = np.random.default_rng(4)
    model = OODMC(svm_points_num=200).fit([make_frame(rng) for _ in range(2)])
    p = model.save(tmp_path / "m.npz")
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    assert meta["format"] == "oodscore-oodmc" and meta["version"] == 2

    def write(name, meta):
        np.savez(tmp_path / name, meta=np.array(json.dumps(meta)), **arrays)
        return tmp_path / name

    evil = json.loads(json.dumps(meta).replace("sklearn.svm:LinearSVC", "os:system"))
    for bad, msg in [(evil, "damaged OODMC model file"), ({**meta, "version": 3}, "version 3 is not supported"),
                     ({**meta, "format": "x"}, "not an OODMC model"),
                     ({**meta, "pipeline": None}, "no fitted pipeline"),
                     ({**meta, "params": {**meta["params"], "moment_weight": 5}}, "OODMC moment_weight")]:
        with pytest.raises(OodscoreError, match=msg) as e:
            OODMC.load(write("bad.npz", bad))
        assert "\n" not in str(e.value)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(OodscoreError, match="not an OODMC model"):
        OODMC.load(tmp_path / "other.npz")


def test_mismatches_and_errors():
    rng = np.random.default_rng(5)
    train = [make_frame(rng, k=3) for _ in range(2)]
    model = OODMC(svm_points_num=200).fit(train)
    mc_k4, _ = make_frame(rng, k=4)
    with pytest.raises(OodscoreError, match="moment order K=4"):
        model.score(mc_k4)
    mc_c4, _ = make_frame(rng, c=4)
    with pytest.raises(OodscoreError, match="C=4"):
        model.score(mc_c4)
    mc, _ = make_frame(rng)
    with pytest.raises(OodscoreError, match="moments_of"):
        model.score({**mc, "moments_of": "probs"})
    model.score({**mc, "moments_of": "logits"})
    with pytest.raises(OodscoreError, match="not fitted"):
        OODMC().score(mc)
    with pytest.raises(OodscoreError, match="no OOD"):
        OODMC().fit([(mc, np.zeros((12, 14), np.uint8))])
    with pytest.raises(OodscoreError, match="differ from earlier frames"):
        OODMC().fit([train[0], make_frame(rng, k=4)])
    with pytest.raises(OodscoreError, match=r"MC moments are \(12, 14\) but the label is \(3, 3\), and the MC dict "
                                            "names no upsampling rule"):
        OODMC().fit([(mc, np.zeros((3, 3), np.uint8))])
    with pytest.raises(OodscoreError, match="label: expected shape"):
        OODMC().fit([(mc, np.zeros((3, 3, 2), np.uint8))])
    with pytest.raises(OodscoreError, match="missing keys"):
        model.score({"mean": mc["mean"]})
    with pytest.raises(OodscoreError, match="moment_weight"):
        OODMC(moment_weight=2.0).fit(train)
    with pytest.raises(OodscoreError, match="moments_of"):
        OODMC(moments_of="features").fit(train)


def test_streaming_sample_equals_global_smallest_keys():
    """The one-pass sample equals drawing every labelled pixel's key up front and keeping the smallest per class."""
    rng = np.random.default_rng(6)
    train = [make_frame(rng, h=20, w=20) for _ in range(5)]
    quota = 37
    model = OODMC(svm_points_num=2 * quota, random_state=9).fit(train)
    keys_rng = np.random.default_rng(9)
    keys = {0: [], 1: []}
    feats = {0: [], 1: []}
    for mc, lab in train:  # same draw order as documented: per frame, ID pixels then OOD pixels
        for cls in (0, 1):
            sel = lab.ravel() == cls
            keys[cls].append(keys_rng.random(int(sel.sum())))
            feats[cls].append(mc_features(mc, 0.5, sel))
    chosen = []
    for cls in (0, 1):
        k, f = np.concatenate(keys[cls]), np.concatenate(feats[cls])
        chosen.append(f[np.argsort(k)[:quota]])
    x = np.concatenate(chosen).astype(np.float64)
    np.testing.assert_allclose(model.pipeline_["scaler"].mean_, x.mean(axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model.pipeline_["scaler"].var_, x.var(axis=0), rtol=1e-5, atol=1e-7)


def test_non_finite_moments_are_a_clear_error():
    """float16 exports can overflow 4th moments of logits to inf: OODMC must say so, not crash in sklearn."""
    import numpy as np
    import pytest

    from oodscore import OodscoreError
    from oodscore.scores.oodmc import check_mc

    mc = {"mean": np.zeros((3, 4, 5), np.float32), "central": np.zeros((3, 3, 4, 5), np.float16),
          "entropy": np.zeros((4, 5), np.float32)}
    check_mc(mc)
    mc["central"][2, 0, 1, 1] = np.inf
    with pytest.raises(OodscoreError, match="non-finite.*mc-dtype float32"):
        check_mc(mc)


def test_oodmc_is_a_scorer_of_mc_dicts():
    from oodscore.scores import Scorer

    rng = np.random.default_rng(7)
    model = OODMC(svm_points_num=200).fit([make_frame(rng) for _ in range(2)])
    assert isinstance(model, Scorer) and model.requires == "mc"
    mc, label = make_frame(rng)
    np.testing.assert_array_equal(model.score(mc, size=label.shape), model.score(mc))
    with pytest.raises(OodscoreError, match="names no upsampling rule"):
        model.score(mc, size=(24, 28))


def _upsampled(mc, size, align_corners):
    """The moment maps of ``mc`` upsampled (bilinear) to ``size`` with torch: what a label-size feature sees."""
    import torch.nn.functional as F

    def up(a):
        t = torch.from_numpy(np.ascontiguousarray(a, np.float32))
        t = t.reshape(1, -1, *t.shape[-2:])
        return F.interpolate(t, size=size, mode="bilinear", align_corners=align_corners).reshape(*a.shape[:-2], *size)

    return {k: up(mc[k]).numpy() for k in ("mean", "central", "entropy")}


@pytest.mark.parametrize("align_corners", [False, True])
def test_native_moments_fit_at_label_pixels_and_score_upsampled(align_corners):
    """Moments at native resolution (as LogitsFile.mc gives them: with the rule and the label size): fit takes the
    labelled pixels' features interpolated from the native maps (= features of the upsampled maps), score computes
    the decision natively and upsamples it with the same rule (= the score of the upsampled features: linear model)."""
    from oodscore.scores.oodmc import mc_features_at

    rng = np.random.default_rng(8)
    rule = {"mode": "bilinear", "align_corners": align_corners}
    size = (24, 28)
    frames = []
    for _ in range(3):
        mc, _ = make_frame(rng, h=6, w=7)
        up = _upsampled(mc, size, align_corners)
        label = np.where(up["entropy"] > 0.55, 1, 0).astype(np.uint8)
        frames.append(({**mc, "upsample": rule, "size": size}, label))
    idx = rng.choice(size[0] * size[1], 50, replace=False)
    np.testing.assert_allclose(mc_features_at(frames[0][0], 0.5, idx, size, rule),
                               mc_features(_upsampled(frames[0][0], size, align_corners), 0.5, idx), atol=1e-5)
    model = OODMC(svm_points_num=400, estimator=make_classifier("logistic")).fit(frames)
    ref = OODMC(svm_points_num=400, estimator=make_classifier("logistic")).fit(
        [(_upsampled(mc, size, align_corners), lab) for mc, lab in frames])
    np.testing.assert_allclose(model.pipeline_["scaler"].mean_, ref.pipeline_["scaler"].mean_, rtol=1e-4, atol=1e-5)
    mc, label = frames[0]
    s = model.score(mc, size=size)
    assert s.shape == size and s.dtype == np.float32
    np.testing.assert_allclose(s, model.score(_upsampled(mc, size, align_corners)), atol=1e-4)
    assert model.score(mc).shape == (6, 7)            # no size: the native map itself
    with pytest.raises(OodscoreError, match="bilinear rule only"):
        OODMC().fit([({**mc, "upsample": {"mode": "bicubic", "align_corners": False}}, label)])
