"""`oodscore evaluate --save-scores LAYOUT:DIR`: the smiyc / fishyscapes / npy layouts, read back by --scores.

Oracle: the metrics of the run that wrote the maps (float32 layouts: equal exactly), and for the float16 smiyc layout
an evaluation of the float16-cast maps held in memory; the SMIYC file opened with plain h5py.
"""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cocodag.formats.logits import LogitsFile, LogitsWriter
from oodscore.cli import app
from oodscore.report import evaluate_frames

runner = CliRunner()
C, H, W = 4, 18, 24
METHODS = ("energy", "msp")
KEYS = ("auroc", "ap", "fpr95", "threshold", "f1")


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(res, match: str):
    assert res.exit_code != 0, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    err = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and match in err[0], res.output


@pytest.fixture
def data(tmp_path):
    """A logits file (dataset attr "toyset") and the same frames as a standard-layout evaluation set."""
    rng = np.random.default_rng(3)
    root = tmp_path / "set"
    logits = tmp_path / "test.h5"
    labels, lgs = {}, {}
    with LogitsWriter(logits, C, dataset="toyset") as w:
        for n in ("f0", "f1", "f2"):
            lab = rng.choice([0, 0, 0, 1, 255], size=(H, W)).astype(np.uint8)
            lg = rng.normal(size=(C, H, W)).astype(np.float32)
            lg[2] += 2.5 * (lab == 0)
            lg[:, 0, :3] = lg[:, 1, :3]                           # ties
            w.write(lg, lab, n)
            for d, arr in (("images", rng.integers(0, 256, (H, W, 3), dtype=np.uint8)), ("labels", lab)):
                (root / d).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / d / f"{n}.png")
            labels[n], lgs[n] = lab, lg
    return logits, root, labels, lgs


def _metrics(rep):
    return json.loads((rep / "metrics.json").read_text())


def _evaluate_with_save(tmp_path, logits, spec):
    rep = tmp_path / "rep"
    res = _run("evaluate", "--logits", logits, *sum((["--method", m] for m in METHODS), []), "--out", rep,
               "--no-progress", "--max-overlays", 0, "--save-scores", spec)
    assert res.exit_code == 0, res.output
    return _metrics(rep)


def _evaluate_saved(tmp_path, path, root, name):
    rep = tmp_path / f"back-{name}"
    res = _run("evaluate", "--scores", path, "--dataset", f"standard:{root}", "--out", rep, "--no-progress",
               "--max-overlays", 0, "--name", name)
    assert res.exit_code == 0, res.output
    return _metrics(rep)[name]


@pytest.mark.parametrize("layout", ["npy", "fishyscapes"])
def test_float32_layouts_round_trip_exactly(tmp_path, data, layout):
    logits, root, labels, lgs = data
    out = tmp_path / "maps"
    first = _evaluate_with_save(tmp_path, logits, f"{layout}:{out}")
    for m in METHODS:
        names = sorted(p.name for p in (out / m).iterdir())
        if layout == "npy":
            assert names == ["f0.npy", "f1.npy", "f2.npy"]
        else:
            assert names == sorted(f"{n}_{k}.npy" for n in labels for k in ("anomaly", "segmentation"))
            seg = np.load(out / m / "f1_segmentation.npy")
            with LogitsFile(logits) as lf:
                assert seg.dtype == np.uint8 and np.array_equal(seg, lf.frame(1).logits.argmax(0))
            assert np.load(out / m / "f1_anomaly.npy").dtype == np.float32
        back = _evaluate_saved(tmp_path, out / m, root, m)
        for k in KEYS:
            assert back[k] == first[m][k], (m, k)


def test_energy_map_is_minus_logsumexp(tmp_path, data):
    logits, root, labels, lgs = data
    out = tmp_path / "maps"
    _evaluate_with_save(tmp_path, logits, f"npy:{out}")
    with LogitsFile(logits) as lf:                       # the logits as stored (float16 by default)
        lg = lf.frame(0).logits.astype(np.float64)
    mx = lg.max(0)
    ref = -(mx + np.log(np.exp(lg - mx).sum(0)))
    s = np.load(out / "energy" / "f0.npy")
    assert s.dtype == np.float32
    assert np.allclose(s, ref, rtol=1e-6, atol=1e-6)


def test_smiyc_layout_round_trips_as_float16(tmp_path, data):
    logits, root, labels, lgs = data
    out = tmp_path / "sub"
    _evaluate_with_save(tmp_path, logits, f"smiyc:{out}")
    maps = {}
    for m in METHODS:
        d = out / "anomaly_p" / m / "toyset"          # <dataset> = the logits file's dataset attribute
        assert sorted(p.name for p in d.iterdir()) == ["f0.hdf5", "f1.hdf5", "f2.hdf5"]
        for n in labels:
            with h5py.File(d / f"{n}.hdf5", "r") as f:
                v = f["value"]
                assert v.dtype == np.float16 and v.shape == (H, W) and v.compression == "gzip"
                maps[(m, n)] = v[()]
        # the default --name of an anomaly_p/<method>/<dataset> folder is <method>
        rep = tmp_path / f"noname-{m}"
        res = _run("evaluate", "--scores", d, "--dataset", f"standard:{root}", "--out", rep, "--no-progress",
                   "--max-overlays", 0)
        assert res.exit_code == 0, res.output
        back = _metrics(rep)[m]
        frames = [(n, labels[n], {m: maps[(m, n)].astype(np.float32)}, None) for n in labels]
        ref = evaluate_frames([m], lambda frames=frames: iter(frames), len(labels)).results[m]
        for k in KEYS:
            assert back[k] == ref[k], (m, k)


def test_save_scores_from_score_maps_and_two_layouts(tmp_path, data):
    """--scores ... --save-scores converts: npy maps re-saved as smiyc (<dataset> = preset name) and npy."""
    logits, root, labels, lgs = data
    first = tmp_path / "first"
    _evaluate_with_save(tmp_path, logits, f"npy:{first}")
    res = _run("evaluate", "--scores", first / "msp", "--dataset", f"standard:{root}", "--out", tmp_path / "r2",
               "--no-progress", "--max-overlays", 0, "--save-scores", f"smiyc:{tmp_path / 's'}",
               "--save-scores", f"npy:{tmp_path / 'n'}")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "s" / "anomaly_p" / "msp" / "standard").iterdir()) == \
        ["f0.hdf5", "f1.hdf5", "f2.hdf5"]
    assert np.array_equal(np.load(tmp_path / "n" / "msp" / "f2.npy"), np.load(first / "msp" / "f2.npy"))


def test_save_scores_with_workers_equals_serial(tmp_path, data):
    logits, root, labels, lgs = data
    for w, d in ((1, "a"), (2, "b")):
        res = _run("evaluate", "--logits", logits, "--method", "energy", "--out", tmp_path / f"r{d}",
                   "--no-progress", "--max-overlays", 0, "--workers", w, "--save-scores",
                   f"fishyscapes:{tmp_path / d}")
        assert res.exit_code == 0, res.output
    for n in labels:
        for k in ("anomaly", "segmentation"):
            a, b = (np.load(tmp_path / d / "energy" / f"{n}_{k}.npy") for d in "ab")
            assert np.array_equal(a, b)


def test_bad_save_scores(tmp_path, data):
    logits, root, labels, lgs = data
    base = ("evaluate", "--logits", logits, "--method", "msp", "--out", tmp_path / "r", "--no-progress")
    _one_line_error(_run(*base, "--save-scores", f"png:{tmp_path / 'x'}"),
                    "unknown layout 'png'; expected one of smiyc, fishyscapes, npy")
    _one_line_error(_run(*base, "--save-scores", str(tmp_path / "x")), "expected LAYOUT:DIR")
    res = _run(*base, "--save-scores", f"npy:{tmp_path / 'held'}")
    assert res.exit_code == 0, res.output
    _one_line_error(_run(*base, "--save-scores", f"smiyc:{tmp_path / 'held'}"), "already holds npy score maps")
    _one_line_error(_run(*base, "--save-scores", f"fishyscapes:{tmp_path / 'held'}"), "already holds npy")
    res = _run(*base, "--save-scores", f"npy:{tmp_path / 'held'}")        # the same layout: rewritten in place
    assert res.exit_code == 0, res.output
