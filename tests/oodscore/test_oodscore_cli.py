"""`oodscore` CLI: evaluate (logits and score maps), fit-sml, fit-oodmc, datasets; every bad input -> one line.

Oracles: ``pixel_metrics`` and sklearn on the same arrays held in memory; an SML standardization recomputed here
in float64 from the training logits.
"""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cocodag.formats.logits import LogitsWriter
from oodscore.cli import app
from oodscore.metrics import pixel_metrics

runner = CliRunner()
C, H, W = 4, 20, 28


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _assert_one_line_error(res, match: str):
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in res.output.splitlines() if ln.strip() and "it/s]" not in ln and "frame/s]" not in ln]
    err = [ln for ln in lines if ln.startswith("error:")]
    assert len(err) == 1, res.output
    assert match in err[0], err[0]


@pytest.fixture
def evalset(tmp_path):
    """A standard-layout evaluation set (images + 0/1/255 labels) and score maps in memory."""
    rng = np.random.default_rng(0)
    root = tmp_path / "set"
    names = ["a", "b", "c"]
    labels, scores = {}, {}
    for n in names:
        lab = rng.choice([0, 0, 0, 1, 255], size=(H, W)).astype(np.uint8)
        s = (rng.normal(size=(H, W)) + 1.5 * (lab == 1)).astype(np.float32)
        s[0, :4] = s[1, :4]                                       # some ties
        for d, arr in (("images", rng.integers(0, 256, (H, W, 3), dtype=np.uint8)), ("labels", lab)):
            (root / d).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / d / f"{n}.png")
        labels[n], scores[n] = lab, s
    return root, names, labels, scores


def _concat(names, labels, scores, dtype=np.float32):
    return (np.concatenate([scores[n].astype(dtype).astype(np.float32).ravel() for n in names]),
            np.concatenate([labels[n].ravel() for n in names]))


@pytest.mark.parametrize("fmt", ["npy", "hdf5", "scores.h5"])
def test_evaluate_scores_equals_in_memory(tmp_path, evalset, fmt):
    root, names, labels, scores = evalset
    if fmt == "npy":
        path = tmp_path / "maps"
        path.mkdir()
        for n in names:
            np.save(path / f"{n}.npy", scores[n])
        dtype = np.float32
    elif fmt == "hdf5":                       # as road-anomaly-benchmark's Evaluation.save_output writes them
        path = tmp_path / "anomaly_p"
        path.mkdir()
        for n in names:
            with h5py.File(path / f"{n}.hdf5", "w") as f:
                f.create_dataset("value", data=scores[n].astype(np.float16), compression=9)
        dtype = np.float16
    else:
        path = tmp_path / "scores.h5"
        with h5py.File(path, "w") as f:
            f["score"] = np.stack([scores[n] for n in reversed(names)])
            f.create_dataset("image_id", data=list(reversed(names)), dtype=h5py.string_dtype())
        dtype = np.float32
    res = _run("evaluate", "--scores", path, "--dataset", f"standard:{root}", "--out", tmp_path / "rep",
               "--name", "mine", "--max-overlays", "1")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "rep" / "metrics.json").read_text())["mine"]
    s, y = _concat(names, labels, scores, dtype)
    want = pixel_metrics(s, y)
    for k in ("auroc", "ap", "fpr95", "fpr95_interp", "threshold", "f1", "n_pos", "n_neg"):
        assert got[k] == pytest.approx(want[k], abs=1e-12), k
    keep = y != 255
    assert got["auroc"] == pytest.approx(roc_auc_score(y[keep], s[keep]), abs=1e-9)
    assert (tmp_path / "rep" / "overlays" / "a__mine.png").is_file()


def test_evaluate_scores_missing_and_extra(tmp_path, evalset):
    root, names, labels, scores = evalset
    maps = tmp_path / "maps"
    maps.mkdir()
    np.save(maps / "a.npy", scores["a"])
    np.save(maps / "zzz.npy", scores["a"])
    res = _run("evaluate", "--scores", maps, "--dataset", f"standard:{root}", "--out", tmp_path / "r")
    _assert_one_line_error(res, "2 of 3 frame(s) have no score map: b, c")
    for n in names:
        np.save(maps / f"{n}.npy", scores[n])
    res = _run("evaluate", "--scores", maps, "--dataset", f"standard:{root}", "--out", tmp_path / "r")
    assert res.exit_code == 0 and "1 score map(s) have no ground-truth frame" in res.output
    np.save(maps / "b.npy", scores["b"][:5])
    res = _run("evaluate", "--scores", maps, "--dataset", f"standard:{root}", "--out", tmp_path / "r")
    _assert_one_line_error(res, "score map of 'b' is 5x28, label is 20x28")
    bad = scores["b"].copy()
    bad[labels["b"] != 255] = np.nan
    np.save(maps / "b.npy", bad)
    res = _run("evaluate", "--scores", maps, "--dataset", f"standard:{root}", "--out", tmp_path / "r")
    _assert_one_line_error(res, "frame 'b', maps:")


def _logits(path, rng, n=2, roi=False, mc=False):
    frames = []
    with LogitsWriter(path, C, mc_attrs={"moments_of": "logits", "moment_order": 2}) as w:
        for i in range(n):
            lab = np.zeros((H, W), np.uint8)
            lab[5:12, 8:20] = 1
            lg = rng.normal(size=(C, H, W)).astype(np.float16)
            lg[1] += (3 * (lab == 0)).astype(np.float16)
            m = None
            if mc:
                m = {"mean": lg.astype(np.float32), "central": rng.random((1, C, H, W)).astype(np.float32),
                     "entropy": (rng.random((H, W)) + lab).astype(np.float32)}
            w.write(lg, lab, f"f{i}", roi=np.ones((H, W), np.uint8) if roi else None, mc=m)
            frames.append((lg, lab))
    return frames


def test_fit_sml_then_evaluate_plain_standardized_max_logit(tmp_path):
    rng = np.random.default_rng(1)
    train = _logits(tmp_path / "train.h5", rng, n=3)
    test = _logits(tmp_path / "test.h5", rng, n=2)
    res = _run("fit-sml", "--logits", tmp_path / "train.h5", "--out", tmp_path / "sml.json",
               "--export-official", tmp_path / "official")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "official" / "cityscapes_mean.npy").is_file()
    # oracle: per predicted class, mean / unbiased variance of the max logit over all training pixels (float64)
    lg = np.concatenate([f[0].astype(np.float64).reshape(C, -1) for f in train], axis=1)
    pred, mx = lg.argmax(0), lg.max(0)
    mu = {c: mx[pred == c].mean() for c in np.unique(pred)}
    sd = {c: mx[pred == c].std(ddof=1) for c in np.unique(pred)}
    res = _run("evaluate", "--logits", tmp_path / "test.h5", "--method", "sml", "--sml-stats", tmp_path / "sml.json",
               "--boundary-iters", 0, "--no-smoothing", "--out", tmp_path / "rep", "--max-overlays", 0)
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "rep" / "metrics.json").read_text())["sml"]
    s, y = [], []
    for g, lab in test:
        g = g.astype(np.float64).reshape(C, -1)
        p, m = g.argmax(0), g.max(0)
        s.append(-(m - np.vectorize(mu.get)(p)) / np.vectorize(sd.get)(p))
        y.append(lab.ravel())
    assert got["auroc"] == pytest.approx(roc_auc_score(np.concatenate(y), np.concatenate(s)), abs=1e-6)
    # import the exported official files back
    res = _run("fit-sml", "--import-official", tmp_path / "official" / "cityscapes_mean.npy",
               tmp_path / "official" / "cityscapes_var.npy", "--out", tmp_path / "sml2.json")
    assert res.exit_code == 0, res.output


def test_fit_oodmc_then_evaluate(tmp_path):
    rng = np.random.default_rng(2)
    _logits(tmp_path / "train.h5", rng, n=2, mc=True)
    _logits(tmp_path / "test.h5", rng, n=2, mc=True)
    res = _run("fit-oodmc", "--logits", tmp_path / "train.h5", "--out", tmp_path / "m.joblib",
               "--svm-points-num", 400, "--seed", 3)
    assert res.exit_code == 0, res.output
    res = _run("evaluate", "--logits", tmp_path / "test.h5", "--method", "oodmc", "--method", "entropy",
               "--oodmc-model", tmp_path / "m.joblib", "--out", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert set(got) == {"oodmc", "entropy"} and got["oodmc"]["auroc"] > 0.9    # entropy feature carries the label


def test_bad_inputs_give_one_line(tmp_path, evalset):
    rng = np.random.default_rng(3)
    _logits(tmp_path / "t.h5", rng)
    with h5py.File(tmp_path / "t.h5", "r") as src, h5py.File(tmp_path / "wrongfmt.h5", "w") as dst:
        for k in src:
            src.copy(k, dst)
        dst.attrs["format"] = "not-logits"
        dst.attrs["version"] = 1
    with h5py.File(tmp_path / "shape.h5", "w") as f:
        f.attrs.update({"format": "cocodag-logits", "version": 1, "num_classes": C})
        f["logits"] = np.zeros((1, C, H, W), np.float16)
        f["label"] = np.zeros((1, H, W + 1), np.uint8)
        f.create_dataset("image_id", data=["x"], dtype=h5py.string_dtype())
    out = tmp_path / "r"
    cases = [
        (("evaluate", "--logits", tmp_path / "nope.h5", "--method", "msp", "--out", out), "logits file not found"),
        (("evaluate", "--logits", tmp_path / "wrongfmt.h5", "--method", "msp", "--out", out),
         "format attribute is 'not-logits'"),
        (("evaluate", "--logits", tmp_path / "shape.h5", "--method", "msp", "--out", out), "'label' has shape"),
        (("evaluate", "--logits", tmp_path / "t.h5", "--method", "nonsense", "--out", out), "unknown method"),
        (("evaluate", "--logits", tmp_path / "t.h5", "--method", "sml", "--out", out), "need --sml-stats"),
        (("evaluate", "--logits", tmp_path / "t.h5", "--method", "vde", "--sml-stats", tmp_path / "no.json",
          "--out", out), "file not found"),
        (("evaluate", "--logits", tmp_path / "t.h5", "--method", "msp", "--region", "road", "--out", out),
         "--region road needs a 'roi' dataset"),
        (("evaluate", "--logits", tmp_path / "t.h5", "--out", out), "no --method given"),
        (("evaluate", "--logits", tmp_path / "t.h5", "--method", "msp", "--threshold-from", tmp_path / "x.json",
          "--out", out), "thresholds file not found"),
        (("evaluate", "--scores", tmp_path / "nomaps", "--dataset", f"standard:{evalset[0]}", "--out", out),
         "score path not found"),
        (("evaluate", "--scores", tmp_path / "t.h5", "--out", out), "--scores needs --dataset"),
        (("evaluate", "--scores", tmp_path, "--dataset", f"bogus:{tmp_path}", "--out", out),
         "unknown evaluation-set preset"),
        (("evaluate", "--out", out), "give either --logits"),
        (("fit-sml", "--logits", tmp_path / "wrongfmt.h5", "--out", tmp_path / "s.json"), "format attribute"),
        (("fit-sml", "--out", tmp_path / "s.json"), "give exactly one of"),
        (("fit-oodmc", "--logits", tmp_path / "t.h5", "--out", tmp_path / "m.joblib"), "no mc/* datasets"),
        (("datasets", "convert", "road-anomaly", tmp_path / "empty", tmp_path / "d"), "not a directory"),
        (("datasets", "convert", "nope", tmp_path, tmp_path / "d"), "unknown evaluation-set preset"),
    ]
    for args, match in cases:
        _assert_one_line_error(_run(*args), match)


def test_datasets_commands(real_data, tmp_path):
    res = _run("datasets", "list")
    assert res.exit_code == 0
    for name in ("road-anomaly", "lostandfound", "fishyscapes-laf", "fishyscapes-static", "smiyc-anomaly",
                 "smiyc-obstacle", "cityscapes", "standard"):
        assert name in res.output
    assert "region=road" in res.output
    src = real_data / "anomaly" / "road_anomaly"
    if not src.is_dir():
        pytest.skip("RoadAnomaly frames not present")
    res = _run("datasets", "convert", "road-anomaly", src, tmp_path / "ra")
    assert res.exit_code == 0, res.output
    assert "3 frames" in res.output
    for p in (src / "frames").glob("*.jpg"):
        out = np.asarray(Image.open(tmp_path / "ra" / "labels" / f"{p.stem}.png"))
        np.testing.assert_array_equal(out, np.asarray(Image.open(src / "frames" / f"{p.stem}.labels" /
                                                                 "labels_semantic.png")) == 2)


def test_binned_metrics_close_to_exact(tmp_path, evalset):
    root, names, labels, scores = evalset
    maps = tmp_path / "maps"
    maps.mkdir()
    for n in names:
        np.save(maps / f"{n}.npy", scores[n])
    res = _run("evaluate", "--scores", maps, "--dataset", f"standard:{root}", "--out", tmp_path / "rep",
               "--bins", 768, "--max-overlays", 0, "--name", "m")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "rep" / "metrics.json").read_text())["m"]
    s, y = _concat(names, labels, scores)
    assert got["auroc"] == pytest.approx(pixel_metrics(s, y)["auroc"], abs=5e-3)
    _assert_one_line_error(_run("evaluate", "--scores", maps, "--dataset", f"standard:{root}", "--out",
                                tmp_path / "r", "--bins", 1), "--bins 1")


def test_device_is_resolved_up_front(tmp_path):
    """--device is a plain string resolved by cocodag.device: CUDA on a machine without it is one line, before work."""
    import torch

    _logits(tmp_path / "t.h5", np.random.default_rng(4))
    base = ("evaluate", "--logits", tmp_path / "t.h5", "--method", "msp", "--no-progress", "--out", tmp_path / "r")
    _assert_one_line_error(_run(*base, "--device", "gpu"), "--device 'gpu': expected auto, cpu, cuda or cuda:N")
    _assert_one_line_error(_run("fit-sml", "--logits", tmp_path / "t.h5", "--out", tmp_path / "s.json", "--device",
                                "tpu:0"), "--device 'tpu:0': expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        _assert_one_line_error(_run(*base, "--device", "cuda:1"),
                               "--device cuda:1: CUDA is not available on this machine (use --device cpu)")
        _assert_one_line_error(_run("fit-sml", "--logits", tmp_path / "t.h5", "--out", tmp_path / "s.json",
                                    "--device", "cuda:1"), "--device cuda:1: CUDA is not available")
    assert not (tmp_path / "r").exists() and not (tmp_path / "s.json").exists()
    res = _run(*base, "--device", "cpu", "--max-overlays", 0)
    assert res.exit_code == 0, res.output


def test_method_help_lists_the_registry():
    from oodscore.scores import METHODS

    res = _run("evaluate", "--help")
    assert res.exit_code == 0
    assert " | ".join(METHODS) in " ".join(res.output.replace("│", " ").split())
    assert "<all|road>" in res.output and "<f1|tpr95>" in res.output      # typer lists the Literal choices
