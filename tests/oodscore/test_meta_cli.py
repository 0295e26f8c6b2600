"""`oodscore meta-classify`: the report of a small logits file, cross-validation and model files, workers, the
abstention channel, and every bad input as one line.

Oracles: meta-ood's procedure written out literally (``metrics_to_dataset`` + the ``LeaveOneOut`` loop, the
``remove()`` loop over each frame's component maps, ``oodd_metrics_segment``'s counts) on the segment metrics of
the same probabilities; plain json / csv parsing of the written files.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from scipy.special import softmax as scipy_softmax
from typer.testing import CliRunner

from cocodag.formats.logits import LogitsFile, LogitsWriter
from cocodag.lock import OutputLock
from oodscore.cli import app
from oodscore.meta import COUNT_KEYS, MetaClassifier
from oodscore.meta_report import classify_frames, meta_classify, softmax
from oodscore.metaseg import entropy_mask, gt_segments, segment_metrics

runner = CliRunner()
C, H, W = 4, 32, 44


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(res, match: str):
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    err = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, res.output
    assert match in err[0], err[0]


def _logits_file(path, n=6, seed=0, *, images=True, void=False, anomaly=True, blobs=3, abstention=False,
                 margin=4.0):
    """Frames confident on in-distribution pixels, uncertain on an anomaly box and on a few random blobs (false
    positives); the top rows void."""
    rng = np.random.default_rng(seed)
    attrs = {"abstention_channel": C} if abstention else {}
    with LogitsWriter(path, C, attrs=attrs) as w:
        for i in range(n):
            lab = np.zeros((H, W), np.uint8)
            y, x = rng.integers(5, H - 12), rng.integers(5, W - 14)
            if anomaly:
                lab[y:y + 8, x:x + 10] = 1
            lab[:3] = 255
            lg = rng.normal(size=(C + abstention, H, W)) * 0.6
            lg[0] += margin * (lab == 0)
            for _ in range(blobs):
                yy, xx = rng.integers(0, H - 5), rng.integers(0, W - 5)
                lg[0, yy:yy + rng.integers(1, 6), xx:xx + rng.integers(1, 6)] -= 4
            if void:
                lab[:] = 255
            img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8) if images else None
            w.write(lg.astype(np.float32), lab, f"f{i}", image=img)
    return path


def _csv(path):
    return list(csv.DictReader(open(path)))


def _official(meta_ood, path, threshold=0.7):
    """meta-ood's pipeline on the file's frames: LOO proba, kicks, per-frame counts (evaluation.py / remove())."""
    frames = []
    with LogitsFile(path) as lf:
        for fr in lf.iter_frames(image=False):
            probs = softmax(fr.logits[:C])
            mask = entropy_mask(probs, threshold, fr.label)
            metrics, comp = segment_metrics(probs, mask, fr.label)
            gm, gcomp = gt_segments(mask, fr.label)
            frames.append((metrics, comp, gm, gcomp))
    keys = [k for k in frames[0][0] if k != "prc"]
    metrics = {k: np.concatenate([f[0][k] for f in frames]) for k in keys}
    proba, y = meta_ood.loo(metrics)
    kick = np.argmax(proba, axis=-1)
    start = np.cumsum([0] + [len(f[0]["S"]) for f in frames])
    rows = []
    for i, (m, comp, gm, gcomp) in enumerate(frames):
        k = kick[start[i]:start[i + 1]]
        rows.append({"segments": len(m["S"]), "fp_before": int((m["iou"] == 0).sum()),
                     "fp_after": int(np.sum([k == 1]) - np.sum(m["iou0"][k == 1])),
                     "fn_before": int(gm["iou0"].sum()), "fn_after": meta_ood.remove(comp, gcomp, k)})
    return proba, y, kick, rows


def test_softmax_is_the_softmax():
    rng = np.random.default_rng(0)
    lg = rng.normal(size=(C, 5, 7)).astype(np.float32) * 8
    p = softmax(lg)
    assert p.dtype == np.float32 and np.allclose(p, scipy_softmax(lg.astype(np.float64), axis=0), atol=1e-7)


def test_report_equals_meta_ood_pipeline(tmp_path, meta_ood):
    f = _logits_file(tmp_path / "t.h5")
    res = _run("meta-classify", "--logits", f, "--out", tmp_path / "rep", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "false positives" in res.output and "AUROC" in res.output
    proba, y, kick, rows = _official(meta_ood, f)
    doc = json.loads((tmp_path / "rep" / "meta.json").read_text())
    from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score
    assert doc["meta_auroc"] == roc_auc_score(y, proba[:, 1])
    assert doc["meta_auprc"] == average_precision_score(y, proba[:, 1])
    assert doc["meta_accuracy"] == accuracy_score(y, kick)
    assert doc["segments"] == len(y) and doc["frames"] == 6 and doc["kicked"] == int(kick.sum())
    for k in ("fp_before", "fp_after", "fn_before", "fn_after"):
        assert doc[k] == sum(r[k] for r in rows), k
    assert doc["fp_left"] == int(((y == 1) & (kick == 0)).sum()) and doc["tp_removed"] == doc["fp_after"]
    assert doc["settings"]["cv"] == "loo" and doc["settings"]["entropy_threshold"] == 0.7
    assert 0 < doc["fp_before"] < doc["segments"]       # the file has both kinds of segments
    # frames.csv: the same counts per frame
    table = _csv(tmp_path / "rep" / "frames.csv")
    assert [r["frame"] for r in table] == [f"f{i}" for i in range(6)] and list(table[0]) == ["frame", *COUNT_KEYS]
    for r, o in zip(table, rows):
        assert {k: int(r[k]) for k in o} == o
    for k in COUNT_KEYS:
        assert sum(int(r[k]) for r in table) == doc[k]
    # segments.csv: one row per segment, the out-of-fold probability and the kick
    segs = _csv(tmp_path / "rep" / "segments.csv")
    assert len(segs) == len(y)
    assert np.array_equal([float(s["p_false_positive"]) for s in segs], proba[:, 1])
    assert [int(s["kick"]) for s in segs] == kick.tolist()
    assert [int(s["segment"]) for s in segs if s["frame"] == "f0"] == list(range(1, rows[0]["segments"] + 1))
    # overlays: 4 frames spread over the 6
    pngs = sorted(p.name for p in (tmp_path / "rep" / "overlays").iterdir())
    assert pngs == ["f0.png", "f2.png", "f3.png", "f5.png"]
    assert Image.open(tmp_path / "rep" / "overlays" / "f0.png").size[0] > 200
    assert not list((tmp_path / "rep").glob("*.tmp*"))


def test_kfold_save_model_and_apply(tmp_path, meta_ood):
    f = _logits_file(tmp_path / "t.h5", n=8)
    res = _run("meta-classify", "--logits", f, "--out", tmp_path / "cv", "--cv", "4", "--save-model",
               tmp_path / "m" / "meta.npz", "--no-progress", "--max-overlays", "0")
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "cv" / "meta.json").read_text())
    assert doc["settings"]["cv"] == 4 and not (tmp_path / "cv" / "overlays").exists()
    model = MetaClassifier.load(tmp_path / "m" / "meta.npz")
    # applied to the same file: the fitted model's own decisions
    res = _run("meta-classify", "--logits", f, "--out", tmp_path / "apply", "--model", tmp_path / "m" / "meta.npz",
               "--no-progress")
    assert res.exit_code == 0, res.output
    applied = json.loads((tmp_path / "apply" / "meta.json").read_text())
    assert applied["settings"]["cv"] is None and applied["settings"]["model"].endswith("meta.npz")
    segs = _csv(tmp_path / "apply" / "segments.csv")
    proba, _, _, _ = _official(meta_ood, f)          # only for its metrics order; the model's decisions:
    out = meta_classify(f, tmp_path / "apply2", model=tmp_path / "m" / "meta.npz", progress=False, max_overlays=0)
    assert [int(s["kick"]) for s in segs] == out.result.kick.tolist()
    assert applied["fp_before"] == doc["fp_before"] and applied["fn_before"] == doc["fn_before"]
    assert applied["meta_auroc"] is not None and len(proba) == applied["segments"]
    # applied to an unlabelled copy (every label pixel void): decisions, no ground-truth counts
    u = _logits_file(tmp_path / "u.h5", n=8, void=True)
    res = _run("meta-classify", "--logits", u, "--out", tmp_path / "blind", "--model", tmp_path / "m" / "meta.npz",
               "--no-progress")
    assert res.exit_code == 0, res.output
    blind = json.loads((tmp_path / "blind" / "meta.json").read_text())
    assert blind["segments"] > 0 and blind["kicked"] is not None
    assert blind["fp_before"] is None and blind["fn_after"] is None and blind["meta_auroc"] is None
    assert model.entropy_threshold == blind["settings"]["entropy_threshold"] == 0.7


def test_model_on_partly_labelled_frames(tmp_path):
    f = _logits_file(tmp_path / "t.h5", n=4)
    meta_classify(f, tmp_path / "fit", save_model=tmp_path / "m.npz", progress=False, max_overlays=0)
    with LogitsFile(f) as lf, LogitsWriter(tmp_path / "mixed.h5", C) as w:
        for i, fr in enumerate(lf.iter_frames()):
            w.write(fr.logits, np.full_like(fr.label, 255) if i == 2 else fr.label, fr.image_id)
    _one_line_error(_run("meta-classify", "--logits", tmp_path / "mixed.h5", "--out", tmp_path / "cv",
                         "--no-progress"), "cross-validation needs ground truth, and some frames have none")
    out = meta_classify(tmp_path / "mixed.h5", tmp_path / "r", model=tmp_path / "m.npz", progress=False)
    rows = _csv(tmp_path / "r" / "frames.csv")
    assert rows[2]["fp_before"] == "" and rows[2]["kicked"] != "" and all(rows[i]["fn_after"] != "" for i in (0, 1, 3))
    assert out.summary["fp_before"] is None and out.summary["meta_auroc"] is None
    assert out.summary["kicked"] == sum(int(r["kicked"]) for r in rows)


def test_workers_give_the_same_report(tmp_path):
    f = _logits_file(tmp_path / "t.h5", n=5)
    for w in (1, 2):
        res = _run("meta-classify", "--logits", f, "--out", tmp_path / f"w{w}", "--workers", w, "--no-progress",
                   "--max-overlays", "1")
        assert res.exit_code == 0, res.output
    for name in ("meta.json", "frames.csv", "segments.csv"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name


def test_abstention_channel_is_no_class(tmp_path):
    a = _logits_file(tmp_path / "a.h5", abstention=True)
    with LogitsFile(a) as lf, LogitsWriter(tmp_path / "c.h5", C) as w:
        assert lf.abstention_channel == C
        for i in range(len(lf)):
            fr = lf.frame(i)
            w.write(fr.logits[:C], fr.label, fr.image_id, image=fr.image)
    for name in ("a", "c"):
        res = _run("meta-classify", "--logits", tmp_path / f"{name}.h5", "--out", tmp_path / f"r{name}",
                   "--no-progress", "--max-overlays", "0")
        assert res.exit_code == 0, res.output
    ra, rc = (json.loads((tmp_path / f"r{n}" / "meta.json").read_text()) for n in "ac")
    assert {k: v for k, v in ra.items() if k != "source"} == {k: v for k, v in rc.items() if k != "source"}


def test_overlays_without_images_show_the_entropy(tmp_path):
    f = _logits_file(tmp_path / "t.h5", n=3, images=False)
    res = _run("meta-classify", "--logits", f, "--out", tmp_path / "r", "--no-progress", "--max-overlays", "2")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "r" / "overlays").iterdir()) == ["f0.png", "f2.png"]


def test_command_pass_equals_the_official_pipeline(tmp_path, official_metaseg):
    """The command's whole path after the file (softmax of the logits, entropy mask, segments, LOO classifier,
    counts, files) on the recorded frames, their logits being the log of the recorded probabilities."""
    off = official_metaseg
    names = [str(c) for c in off["pipeline/frames"]]
    frames = [(c, np.log(off[f"{c}/probs"]), off[f"{c}/labels"], None) for c in names]
    res = classify_frames(lambda: iter(frames), len(frames), tmp_path / "r", progress=False, source="fixture")
    doc = json.loads((tmp_path / "r" / "meta.json").read_text())
    p = "pipeline/"
    for k in ("meta_auroc", "meta_auprc", "meta_accuracy"):
        assert abs(doc[k] - float(off[p + k])) <= 1e-6, k
    for k in ("fp_before", "fp_after", "fn_before", "fn_after"):
        assert doc[k] == int(off[p + k]), k
    assert doc["segments"] == len(off[p + "kick"]) and np.array_equal(res.result.kick, off[p + "kick"])
    assert np.abs(res.result.proba - off[p + "proba"]).max() <= 1e-6
    table = _csv(tmp_path / "r" / "frames.csv")
    start = off[p + "start"]
    assert [int(r["segments"]) for r in table] == np.diff(start).tolist()


# ------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args,match", [
    (["--entropy-threshold", "0"], "--entropy-threshold 0.0: expected a number in (0, 1]"),
    (["--entropy-threshold", "1.5"], "--entropy-threshold 1.5"),
    (["--cv", "1"], "--cv '1': expected loo"),
    (["--cv", "abc"], "--cv 'abc'"),
    (["--workers", "0"], "--workers 0"),
    (["--max-overlays", "-1"], "--max-overlays -1"),
    (["--cv", "3", "--model", "x.npz"], "--cv is for cross-validation"),
    (["--model", "x.npz", "--save-model", "y.npz"], "--save-model writes the classifier fitted here"),
    (["--cv", "50"], "--cv 50: 50 folds grouped by frame need at least 50 frames"),
])
def test_bad_options_are_one_line(tmp_path, args, match):
    f = _logits_file(tmp_path / "t.h5", n=3)
    _one_line_error(_run("meta-classify", "--logits", f, "--out", tmp_path / "r", "--no-progress", *args), match)


def test_bad_files_are_one_line(tmp_path):
    f = _logits_file(tmp_path / "t.h5", n=3)
    base = ["meta-classify", "--logits", f, "--no-progress"]
    _one_line_error(_run("meta-classify", "--logits", tmp_path / "nope.h5", "--out", tmp_path / "r"),
                    "logits file not found")
    (tmp_path / "file").write_text("x")
    _one_line_error(_run(*base, "--out", tmp_path / "file"), "is an existing file, expected a folder")
    _one_line_error(_run(*base, "--out", tmp_path / "r", "--model", tmp_path / "nope.npz"),
                    "meta-classifier file not found")
    (tmp_path / "bad.npz").write_bytes(b"\x00" * 50)
    _one_line_error(_run(*base, "--out", tmp_path / "r", "--model", tmp_path / "bad.npz"),
                    "not a meta-classifier file")
    # a model of another class count
    g = _logits_file(tmp_path / "g.h5", n=3)
    meta_classify(g, tmp_path / "g", save_model=tmp_path / "m.npz", progress=False, max_overlays=0)
    with LogitsFile(g) as lf, LogitsWriter(tmp_path / "five.h5", C + 1) as w:
        for fr in lf.iter_frames():
            w.write(np.concatenate([fr.logits, fr.logits[:1] - 5]), fr.label, fr.image_id)
    _one_line_error(_run("meta-classify", "--logits", tmp_path / "five.h5", "--out", tmp_path / "r5", "--model",
                         tmp_path / "m.npz", "--no-progress"), "fitted on segments of 4 classes, the logits have 5")
    # the output folder held by another job
    (tmp_path / "held").mkdir()
    with OutputLock(tmp_path / "held", option="--out", kind="dir"):
        _one_line_error(_run(*base, "--out", tmp_path / "held"), "--out")


def test_a_segment_over_the_whole_frame_is_one_line(tmp_path):
    f = _logits_file(tmp_path / "t.h5", n=3)
    with LogitsFile(f) as lf, LogitsWriter(tmp_path / "w.h5", C) as w:
        for i, fr in enumerate(lf.iter_frames()):
            label = fr.label.copy()
            if i == 1:                  # uniform probabilities, no void: one segment without boundary
                fr.logits[:] = 0
                label[label == 255] = 0
            w.write(fr.logits, label, fr.image_id)
    _one_line_error(_run("meta-classify", "--logits", tmp_path / "w.h5", "--out", tmp_path / "r", "--no-progress"),
                    "frame 'f1': a segment has non-finite features (D_bd, D_rel, D_rel_in, ...): it has no boundary "
                    "pixel, it covers the whole frame")
    doc = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert doc["fp_before"] is not None and doc["fp_after"] is None and "non-finite" in doc["error"]


def test_unlabelled_file_needs_a_model(tmp_path):
    u = _logits_file(tmp_path / "u.h5", n=3, void=True)
    _one_line_error(_run("meta-classify", "--logits", u, "--out", tmp_path / "r", "--no-progress"),
                    "every label pixel is void (no ground truth): cross-validation needs labels; apply a fitted "
                    "classifier with --model FILE instead")
    assert not (tmp_path / "r" / "meta.json").exists()


@pytest.mark.parametrize("case", ["all-fp", "all-tp", "no-segment"])
def test_classifier_that_cannot_be_fitted_still_writes_the_counts(tmp_path, case):
    if case == "all-fp":            # no anomaly in the labels: every segment a false positive
        f = _logits_file(tmp_path / "t.h5", n=3, anomaly=False)
        match, extra = "is a false positive (none touches an anomaly pixel)", []
    elif case == "all-tp":          # uncertain on the anomalies only
        f = _logits_file(tmp_path / "t.h5", n=3, blobs=0, margin=9.0)
        match, extra = "is a true positive (each touches the anomaly)", []
    else:
        f = _logits_file(tmp_path / "t.h5", n=3)
        match, extra = "no segment to classify", ["--entropy-threshold", "1"]
    res = _run("meta-classify", "--logits", f, "--out", tmp_path / "r", "--no-progress", *extra)
    _one_line_error(res, match)
    doc = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert match in doc["error"]
    assert doc["fp_before"] is not None and doc["fn_before"] is not None
    assert doc["gt_segments"] == (0 if case == "all-fp" else 3)
    assert doc["fp_after"] is None and doc["fn_after"] is None and doc["meta_auroc"] is None
    if case == "all-fp":
        assert doc["fp_before"] == doc["segments"] > 0
    elif case == "all-tp":
        assert doc["fp_before"] == 0 < doc["segments"] and doc["fn_before"] == 0
    else:
        assert doc["segments"] == 0 and doc["fn_before"] == 3
    rows = _csv(tmp_path / "r" / "frames.csv")
    assert sum(int(r["segments"]) for r in rows) == doc["segments"] and rows[0]["fp_after"] == ""
