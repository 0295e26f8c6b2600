"""A logits file with an abstention channel (PEBAL, Balanced Energy): every class-based score, the SML statistics,
the OODMC fit and the argmax segmentation see the C classes only.

Oracle: the same frames written without the abstention channel (the C class channels, no attribute): every report
number and every saved map must be equal, bit for bit. And ``--method pebal`` against PEBAL's own
``compute_anomaly_score``, recorded once from the official code (tests/fixtures/official/pebal_objectives.npz).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cocodag.formats.logits import LogitsFile, LogitsWriter
from oodscore.cli import app
from oodscore.fit import fit_oodmc, fit_sml
from oodscore.report import evaluate_logits
from oodscore.scores import METHODS, scorer_class

C, K = 4, 3                         # classes (+ 1 abstention channel), moment order
H, W, h, w = 16, 20, 8, 10          # label size, native size
RULE = {"mode": "bilinear", "align_corners": True}
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "pebal_objectives.npz"


def _frames(n=3):
    rng = np.random.default_rng(11)
    out = []
    for i in range(n):
        label = rng.choice(np.array([0, 0, 0, 1, 255], np.uint8), (H, W))
        z = rng.normal(scale=2.0, size=(C + 1, h, w)).astype(np.float32)
        z[C] += 3.0 * (rng.random((h, w)) < 0.3)            # the abstention channel wins ~30% of the pixels
        mc = {"mean": z + rng.normal(scale=0.1, size=z.shape).astype(np.float32),
              "central": rng.random((K - 1, C + 1, h, w)).astype(np.float32),
              "entropy": rng.random((h, w)).astype(np.float32)}
        out.append((f"f{i}", z, label, mc))
    return out


def _write(path: Path, frames, abstention: bool) -> Path:
    """The frames with their abstention channel (and the attribute), or their C class channels only."""
    keep = slice(None) if abstention else slice(0, C)
    attrs = {"abstention_channel": C} if abstention else {}
    with LogitsWriter(path, C, attrs=attrs, logits_dtype="float32", logits_resolution="native", upsample_rule=RULE,
                      mc_attrs={"moments_of": "logits", "moment_order": K}) as wr:
        for name, z, label, mc in frames:
            wr.write(z[keep], label, name, mc={"mean": mc["mean"][keep], "central": mc["central"][:, keep],
                                              "entropy": mc["entropy"]})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("abstention")
    frames = _frames()
    return d, _write(d / "pebal.h5", frames, True), _write(d / "classes.h5", frames, False)


def test_fits_see_the_classes_only(files):
    d, with_a, classes = files
    with LogitsFile(with_a) as lf:
        assert (lf.num_classes, lf.num_channels, lf.abstention_channel) == (C, C + 1, C)
    a, b = fit_sml(with_a, progress=False), fit_sml(classes, progress=False)
    assert a.mean_.shape == (C,)
    for attr in ("count_", "mean_", "var_"):
        np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))
    ma = fit_oodmc(with_a, progress=False, svm_points_num=200, random_state=0)
    mb = fit_oodmc(classes, progress=False, svm_points_num=200, random_state=0)
    assert ma.num_classes_ == mb.num_classes_ == C
    np.testing.assert_array_equal(ma.pipeline_[-1].coef_, mb.pipeline_[-1].coef_)


def test_every_score_equals_that_of_the_class_channels(files, tmp_path):
    d, with_a, classes = files
    a_sml, b_sml = tmp_path / "a-sml.json", tmp_path / "b-sml.json"
    fit_sml(with_a, progress=False).save(a_sml)
    fit_sml(classes, progress=False).save(b_sml)
    a_mc, b_mc = tmp_path / "a-oodmc.npz", tmp_path / "b-oodmc.npz"
    fit_oodmc(with_a, progress=False, svm_points_num=200, random_state=0).save(a_mc)
    fit_oodmc(classes, progress=False, svm_points_num=200, random_state=0).save(b_mc)
    methods = list(METHODS)             # every registered score, class-based or MC
    runs = {}
    for key, path, sml, oodmc in (("a", with_a, a_sml, a_mc), ("b", classes, b_sml, b_mc)):
        maps = tmp_path / f"maps-{key}"
        res = evaluate_logits(path, methods, tmp_path / f"rep-{key}", sml_stats=sml, oodmc_model=oodmc,
                              max_overlays=0, progress=False, save_scores=[f"fishyscapes:{maps}"])
        runs[key] = (res.results, maps)
    (ra, maps_a), (rb, maps_b) = runs["a"], runs["b"]
    assert list(ra) == methods and ra == rb
    for m in methods:
        for f in sorted((maps_b / m).iterdir()):
            a, b = np.load(maps_a / m / f.name), np.load(f)
            np.testing.assert_array_equal(a, b, err_msg=f"{m}/{f.name}")
            if f.name.endswith("_segmentation.npy"):     # the argmax never picks the abstention channel
                assert a.max() < C
    # and the abstention channel does win the argmax of some pixels: without the rule, the maps would differ
    with LogitsFile(with_a) as lf:
        assert (lf.frame(0).logits.argmax(0) == C).any()


def _fixture_cases():
    if not FIXTURE.is_file():
        return []
    with np.load(FIXTURE) as z:
        return [str(c) for c in z["cases"]]


@pytest.mark.skipif(not FIXTURE.is_file(), reason=f"{FIXTURE.name} (PEBAL's official outputs, recorded by "
                    "tests/fixtures/official/record_pebal.py) is not in the tree yet")
@pytest.mark.parametrize("case", _fixture_cases() or ["none"])
def test_method_pebal_equals_the_official_compute_anomaly_score(tmp_path, case):
    """``oodscore evaluate --method pebal`` on a 20-channel file (abstention channel 19) gives PEBAL's
    ``compute_anomaly_score`` of the same logits (``<case>/pebal/score``) to <= 1e-5."""
    with np.load(FIXTURE) as z:
        logits, labels, official = z[f"{case}/logits"], z[f"{case}/labels"], z[f"{case}/pebal/score"]
    n, c = logits.shape[:2]
    assert c == 20 and official.shape == (n, *logits.shape[2:])
    path = tmp_path / "pebal.h5"
    with LogitsWriter(path, c - 1, attrs={"abstention_channel": c - 1}, logits_dtype="float32") as wr:
        for i in range(n):
            label = np.where(labels[i] == 254, 1, np.where(labels[i] == 255, 255, 0)).astype(np.uint8)
            label[0, :2] = (0, 1)       # both classes present (the map does not depend on the label)
            wr.write(logits[i], label, f"f{i}")
    maps = tmp_path / "maps"
    res = CliRunner().invoke(app, ["evaluate", "--logits", str(path), "--method", "pebal", "--out",
                                   str(tmp_path / "rep"), "--no-progress", "--max-overlays", "0",
                                   "--save-scores", f"npy:{maps}"])
    assert res.exit_code == 0, res.output
    ours = np.stack([np.load(maps / "pebal" / f"f{i}.npy") for i in range(n)]).astype(np.float64)
    scale = max(1.0, float(np.abs(official).max()))
    assert np.abs(ours - official).max() <= 1e-5 * scale
    # the scorer on the 19 class channels, as a library call (float64 logits are read as float32)
    direct = scorer_class("pebal")().score(logits[:, :19])
    assert np.abs(direct.astype(np.float64) - official).max() <= 1e-5 * scale
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["pebal"]
