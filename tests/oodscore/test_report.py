"""oodscore.report (evaluation runs), oodscore.options (their settings), oodscore.writers / .plots (their files).

Oracles: sklearn metrics on scores re-computed here with numpy in float64 from the stored logits; plain csv/json
parsing of the written files; literal F1 at a fixed threshold; the library's own choice definitions.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from cocodag.errors import CocodagError
from cocodag.formats.logits import LogitsWriter
from oodscore import OodscoreError
from oodscore.options import COMPONENT_RULE_CHOICES, PROTOCOL_CHOICES, SML_BORDERS, TRACK_CHOICES, EvalOptions
from oodscore.plots import normalize_scores, save_overlay
from oodscore.report import evaluate_logits
from oodscore.writers import load_thresholds, save_thresholds, write_metrics

C, H, W = 4, 24, 32


def _logits_file(path, rng, n=3, roi=True, images=True):
    frames = []
    with LogitsWriter(path, C) as w:
        for i in range(n):
            lab = np.zeros((H, W), np.uint8)
            lab[8:16, 10:22] = 1
            lab[:2] = 255
            lg = rng.normal(size=(C, H, W))
            lg[0] += 2.5 * (lab == 0)                       # confident on ID pixels
            r = (np.arange(H)[:, None] >= 6).repeat(W, 1).astype(np.uint8) if roi else None
            img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8) if images else None
            w.write(lg, lab, f"frame{i}", roi=r, image=img)
            frames.append((lg.astype(np.float16).astype(np.float64), lab, r))
    return frames


def _msp64(lg):
    e = np.exp(lg - lg.max(0))
    return 1 - (e / e.sum(0)).max(0)


def _valid(frames, region="all"):
    s, y = [], []
    for lg, lab, r in frames:
        keep = (lab != 255) & ((r == 1) if region == "road" else True)
        s.append(np.stack([_msp64(lg)[keep], -lg.max(0)[keep]]))
        y.append(lab[keep])
    return np.concatenate(s, 1), np.concatenate(y)


@pytest.mark.parametrize("region", ["all", "road"])
def test_evaluate_logits_matches_sklearn(tmp_path, region):
    rng = np.random.default_rng(0)
    frames = _logits_file(tmp_path / "t.h5", rng)
    out = evaluate_logits(tmp_path / "t.h5", ["msp", "maxlogit"], tmp_path / "rep", region=region, max_overlays=1,
                          progress=False)
    s, y = _valid(frames, region)
    for k, m in enumerate(["msp", "maxlogit"]):
        r = out.results[m]
        assert r["n_pos"] == int((y == 1).sum()) and r["n_neg"] == int((y == 0).sum())
        assert r["auroc"] == pytest.approx(roc_auc_score(y, s[k]), abs=1e-5)
        assert r["ap"] == pytest.approx(average_precision_score(y, s[k]), abs=1e-5)
    # the files
    rep = tmp_path / "rep"
    doc = json.loads((rep / "metrics.json").read_text())
    assert set(doc) == {"msp", "maxlogit"} and doc["msp"]["auroc"] == pytest.approx(out.results["msp"]["auroc"])
    rows = list(csv.DictReader(open(rep / "metrics.csv")))
    assert [r["method"] for r in rows] == ["msp", "maxlogit"]
    assert float(rows[1]["ap"]) == pytest.approx(doc["maxlogit"]["ap"], rel=1e-12)
    for f in ("roc.png", "pr.png", "overlays/frame0__msp.png", "overlays/frame0__maxlogit.png"):
        assert Image.open(rep / f).size[0] > 100
    th = json.loads((rep / "thresholds.json").read_text())
    assert th["methods"]["msp"]["f1"] == pytest.approx(out.results["msp"]["threshold"])
    # TPR-95 threshold: the highest threshold whose TPR reaches 0.95 (literal check on the pixels; max-logit
    # scores are exact here: the negated max of float16 logits)
    t95 = th["methods"]["maxlogit"]["tpr95"]
    pos = s[1][y == 1]
    assert (pos >= t95).mean() >= 0.95
    assert (pos > t95).mean() < 0.95


def test_threshold_from_validation_run(tmp_path):
    rng = np.random.default_rng(1)
    _logits_file(tmp_path / "val.h5", rng)
    test_frames = _logits_file(tmp_path / "test.h5", rng)
    evaluate_logits(tmp_path / "val.h5", ["msp"], tmp_path / "val", max_overlays=0, progress=False)
    t = load_thresholds(tmp_path / "val" / "thresholds.json", "f1")["msp"]
    out = evaluate_logits(tmp_path / "test.h5", ["msp"], tmp_path / "test", max_overlays=0, progress=False,
                          threshold_from=tmp_path / "val" / "thresholds.json", threshold_kind="f1")
    s, y = _valid(test_frames)
    pred = s[0].astype(np.float32) >= np.float32(t)
    tp, fp, fn = (pred & (y == 1)).sum(), (pred & (y == 0)).sum(), (~pred & (y == 1)).sum()
    r = out.results["msp"]
    assert r["threshold@f1_given"] == pytest.approx(t)
    assert r["f1@f1_given"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-3)
    assert r["fpr@f1_given"] == pytest.approx(fp / (y == 0).sum(), abs=1e-3)
    with pytest.raises(OodscoreError, match="no f1 threshold for method"):
        evaluate_logits(tmp_path / "test.h5", ["maxlogit"], tmp_path / "x", progress=False,
                        threshold_from=tmp_path / "val" / "thresholds.json")


def test_evaluate_errors(tmp_path):
    rng = np.random.default_rng(2)
    _logits_file(tmp_path / "noroi.h5", rng, roi=False, images=False)
    with pytest.raises(OodscoreError, match="--region road needs a 'roi' dataset"):
        evaluate_logits(tmp_path / "noroi.h5", ["msp"], tmp_path / "r", region="road", progress=False)
    with pytest.raises(OodscoreError, match="need --sml-stats"):
        evaluate_logits(tmp_path / "noroi.h5", ["sml"], tmp_path / "r", progress=False)
    with pytest.raises(OodscoreError, match="unknown method 'bogus'"):
        evaluate_logits(tmp_path / "noroi.h5", ["bogus"], tmp_path / "r", progress=False)
    with pytest.raises(OodscoreError, match="needs MC-dropout data"):
        evaluate_logits(tmp_path / "noroi.h5", ["oodmc"], tmp_path / "r", oodmc_model=tmp_path / "m.joblib",
                        progress=False)
    with pytest.raises(OodscoreError, match="--components 'x'"):
        evaluate_logits(tmp_path / "noroi.h5", ["msp"], tmp_path / "r", components="x", progress=False)


def test_metrics_and_thresholds_files(tmp_path):
    write_metrics(tmp_path, {"a": {"auroc": 0.5, "n_pos": np.int64(3), "f1_per_tau": [1, 2]},
                             "b": {"auroc": np.float32(0.25), "extra": 1.0}})
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc == {"a": {"auroc": 0.5, "n_pos": 3}, "b": {"auroc": 0.25, "extra": 1.0}}
    rows = list(csv.reader(open(tmp_path / "metrics.csv")))
    assert rows[0] == ["method", "auroc", "n_pos", "extra"] and rows[2] == ["b", "0.25", "", "1.0"]
    save_thresholds(tmp_path / "t.json", {"sml": {"f1": 1.5, "tpr95": -0.5}}, source="val.h5")
    assert load_thresholds(tmp_path / "t.json", "tpr95") == {"sml": -0.5}
    with pytest.raises(OodscoreError, match="--threshold-kind 'f2'"):
        load_thresholds(tmp_path / "t.json", "f2")
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(OodscoreError, match="expected 'oodscore-thresholds'"):
        load_thresholds(tmp_path / "m.json")


def test_normalize_negative_heavy_tailed_scores():
    rng = np.random.default_rng(3)
    s = -50 - rng.standard_cauchy((40, 40))          # all negative, heavy tails: min-max would look black
    n, lo, hi = normalize_scores(s)
    assert n.dtype == np.float32 and n.min() == 0.0 and n.max() == 1.0
    assert lo == pytest.approx(np.percentile(s, 1)) and hi == pytest.approx(np.percentile(s, 99))
    inner = (s > lo) & (s < hi)
    assert 0.2 < n[inner].mean() < 0.8                    # the bulk spreads over the range
    n, _, _ = normalize_scores(np.full((4, 4), -3.0))
    assert (n == 0).all()


def test_save_overlay_resizes_to_image(tmp_path):
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    score = rng.normal(size=(60, 80)).astype(np.float32)
    lab = np.zeros((60, 80), np.uint8)
    lab[10:20, 10:30] = 1
    save_overlay(tmp_path / "o.png", img, score, lab, threshold=0.5, threshold_name="f1")
    save_overlay(tmp_path / "o2.png", img, score)
    assert Image.open(tmp_path / "o.png").size[0] > Image.open(tmp_path / "o2.png").size[0]


def test_evaluation_is_separate_from_writing(tmp_path):
    """evaluate_frames computes and writes nothing; write_report writes the folder from its result."""
    from oodscore.report import evaluate_frames, write_report

    rng = np.random.default_rng(5)
    frames = []
    for i in range(3):
        lab = np.zeros((H, W), np.uint8)
        lab[8:20, 10:24] = 1                                  # one anomaly component of 168 px
        lab[0] = 255
        frames.append((f"f{i}", lab, {"a": (rng.normal(size=(H, W)) + lab).astype(np.float32)},
                       rng.integers(0, 256, (H, W, 3), dtype=np.uint8)))
    ev = evaluate_frames(["a"], lambda: iter(frames), len(frames), overlay_at={1}, components="anomaly")
    assert list(tmp_path.iterdir()) == []
    s = np.concatenate([f[2]["a"][f[1] != 255] for f in frames])
    y = np.concatenate([f[1][f[1] != 255] for f in frames])
    assert ev.results["a"]["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert "component_mean_f1" in ev.results["a"] and ev.thresholds["a"]["f1"] == ev.results["a"]["threshold"]
    assert [o[0] for o in ev.overlays] == ["f1"]
    files = write_report(tmp_path / "rep", ev, source="test")
    assert sorted(p.relative_to(tmp_path / "rep").as_posix() for p in files) == sorted(
        ["metrics.json", "metrics.csv", "roc.png", "pr.png", "curves.npz", "thresholds.json", "overlays/f1__a.png"])
    assert all(p.is_file() for p in files)
    assert not list((tmp_path / "rep").rglob("*.tmp*"))


def test_unreadable_overlay_image_is_skipped(tmp_path):
    from oodscore.sources import _overlay_image

    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert _overlay_image(tmp_path / "bad.png") is None
    assert _overlay_image(tmp_path / "missing.png") is None
    Image.fromarray(np.full((4, 5, 3), 7, np.uint8)).save(tmp_path / "ok.png")
    assert _overlay_image(tmp_path / "ok.png").shape == (4, 5, 3)


@pytest.mark.parametrize("kw, message", [
    (dict(workers=0), "--workers 0: expected at least 1"),
    (dict(workers=1.5), "--workers 1.5: expected an integer >= 1"),
    (dict(bins=1), "--bins 1: expected at least 2 (or leave it out for exact metrics)"),
    (dict(max_overlays=-1), "--max-overlays -1: expected >= 0"),
    (dict(components="x"), "--components 'x': expected anomaly, obstacle or none"),
    (dict(region="nowhere"), "--region 'nowhere': expected all or road"),
    (dict(protocol="smiyx"), "--protocol 'smiyx': expected one of exact, smiyc, fishyscapes, all"),
    (dict(components="anomaly", component_rule="gte"), "--component-rule 'gte': expected gt (score > t) or ge"),
    (dict(component_rule="gt"), "--component-rule needs --components anomaly|obstacle"),
    (dict(protocol="smiyc", bins=100), "--bins is a binning of the exact protocol; --protocol smiyc computes"),
    (dict(protocol="all", threshold_from="t.json"), "--threshold-from works with --protocol exact only"),
    (dict(protocol="fishyscapes", components="anomaly"),
     "--components anomaly --protocol fishyscapes: protocol 'fishyscapes' defines no component metrics"),
    (dict(threshold_kind="f2"), "--threshold-kind 'f2': expected one of f1, tpr95"),
    (dict(sml_border="kornia"), "--sml-border 'kornia': expected one of geodesic, official-2021"),
    (dict(save_scores=["png:x"]), "--save-scores 'png:x': unknown layout 'png'"),
    (dict(device="gpu"), "--device 'gpu': expected auto, cpu, cuda or cuda:N"),
])
def test_eval_options_one_line_per_bad_option(kw, message):
    with pytest.raises(CocodagError) as e:         # OodscoreError; the device's is cocodag.device's own
        EvalOptions(**kw).validate()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_eval_options_protocols_and_replace():
    assert EvalOptions().validate().protocols() == ["exact"]
    assert EvalOptions(protocol="all", components="obstacle").protocols() == ["exact", "smiyc", "fishyscapes"]
    assert EvalOptions(protocol="smiyc", components="anomaly", component_rule="ge").protocols() == ["smiyc"]
    opts = EvalOptions(save_scores=["npy:a"])                        # a list (the CLI's) is kept as a tuple
    assert opts.save_scores == ("npy:a",) and opts.replace(workers=3).workers == 3 and opts.workers == 1
    with pytest.raises(TypeError):                                   # a misspelt option is a bug, not a user error
        opts.replace(regoin="road")
    with pytest.raises(OodscoreError, match="scorer options for --logits"):
        EvalOptions(temperature=2.0).check_score_maps()


def test_choices_are_the_library_definitions():
    """The CLI's choices (oodscore.options' Literal aliases) are those the library modules define."""
    from oodscore.components import RULES, TRACKS
    from oodscore.protocols import PROTOCOLS
    from oodscore.scores.sml import BORDERS

    assert PROTOCOL_CHOICES == (*PROTOCOLS, "all")
    assert set(TRACK_CHOICES) == {*TRACKS, "none"}
    assert set(COMPONENT_RULE_CHOICES) == set(RULES)
    assert SML_BORDERS == tuple(BORDERS)


def test_options_object_and_keywords_give_the_same_report(tmp_path):
    _logits_file(tmp_path / "t.h5", np.random.default_rng(6))
    opts = EvalOptions(components="obstacle", max_overlays=0, progress=False)
    a = evaluate_logits(tmp_path / "t.h5", ["msp"], tmp_path / "a", opts)
    b = evaluate_logits(tmp_path / "t.h5", ["msp"], tmp_path / "b", components="obstacle", max_overlays=0,
                        progress=False)
    c = evaluate_logits(tmp_path / "t.h5", ["msp"], tmp_path / "c", EvalOptions(max_overlays=0), progress=False,
                        components="obstacle")                       # keywords on top of an options object
    assert a.results == b.results == c.results and "component_mean_f1" in a.results["msp"]
    for f in ("metrics.json", "metrics.csv", "thresholds.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() == \
            (tmp_path / "c" / f).read_bytes(), f
    with pytest.raises(OodscoreError, match="--workers 0"):         # keywords are checked as the options are
        evaluate_logits(tmp_path / "t.h5", ["msp"], tmp_path / "d", workers=0)
    assert not (tmp_path / "d").exists()
