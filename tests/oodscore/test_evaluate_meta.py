"""`oodscore evaluate --meta`: a meta-classify folder's numbers beside the pixel metrics, `oodscore compare` showing
them, and every bad --meta as one line.

Oracles: the meta.json that `meta-classify` wrote, parsed with plain json; the report of the same evaluation
without --meta (its files unchanged, byte for byte); best-per-column picked here by hand.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cocodag.formats.logits import LogitsWriter
from oodscore import OodscoreError
from oodscore.cli import app
from oodscore.compare import compare_reports
from oodscore.meta_report import meta_classify
from oodscore.meta_summary import COUNT_KEYS, parse_meta_spec, read_meta
from oodscore.options import EvalOptions
from oodscore.report import evaluate_logits

runner = CliRunner()
C, H, W = 4, 32, 44


def _logits_file(path, n=5, seed=0, prefix="f"):
    """Confident on in-distribution pixels; uncertain on an anomaly box and a few random blobs (false positives)."""
    rng = np.random.default_rng(seed)
    with LogitsWriter(path, C) as w:
        for i in range(n):
            lab = np.zeros((H, W), np.uint8)
            y, x = rng.integers(5, H - 12), rng.integers(5, W - 14)
            lab[y:y + 8, x:x + 10] = 1
            lab[:3] = 255
            lg = rng.normal(size=(C, H, W)) * 0.6
            lg[0] += 4.0 * (lab == 0)
            for _ in range(3):
                yy, xx = rng.integers(0, H - 5), rng.integers(0, W - 5)
                lg[0, yy:yy + rng.integers(1, 6), xx:xx + rng.integers(1, 6)] -= 4
            w.write(lg.astype(np.float32), lab, f"{prefix}{i}")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("meta_eval")
    lf = _logits_file(d / "test.h5")
    meta_classify(lf, d / "meta", progress=False, max_overlays=0)
    return d, lf, d / "meta"


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_meta_numbers_in_the_entropy_row(world, tmp_path):
    _, lf, meta = world
    doc = json.loads((meta / "meta.json").read_text())
    evaluate_logits(lf, ["msp", "entropy"], tmp_path / "plain", progress=False, max_overlays=0)
    res = evaluate_logits(lf, ["msp", "entropy"], tmp_path / "with", progress=False, max_overlays=0, meta=meta)
    got = json.loads((tmp_path / "with" / "metrics.json").read_text())
    base = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    # the meta.json numbers, unchanged, under meta_* keys, after every metric of the run; msp's row untouched
    expected = {"meta_auroc": doc["meta_auroc"], "meta_auprc": doc["meta_auprc"],
                "meta_accuracy": doc["meta_accuracy"], **{f"meta_{k}": doc[k] for k in COUNT_KEYS},
                "meta_entropy_threshold": doc["settings"]["entropy_threshold"]}
    assert list(got["entropy"]) == [*base["entropy"], *expected]
    assert {k: got["entropy"][k] for k in expected} == expected
    assert got["msp"] == base["msp"]
    assert doc["segments"] > 0 and doc["fp_before"] > 0           # the world has false-positive segments
    assert res.results["entropy"]["meta_fp_left"] == doc["fp_left"]
    rows = _rows(tmp_path / "with" / "metrics.csv")
    assert rows[0]["method"] == "msp" and rows[0]["meta_fp_before"] == ""
    assert int(rows[1]["meta_fp_before"]) == doc["fp_before"] and float(rows[1]["meta_auroc"]) == doc["meta_auroc"]
    # every other file of the report is the one without --meta, byte for byte
    for name in ("thresholds.json", "curves.npz"):
        assert (tmp_path / "with" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()


def test_meta_row_named_and_options_object(world, tmp_path):
    _, lf, meta = world
    opts = EvalOptions(progress=False, max_overlays=0, meta=f"msp={meta}")
    res = evaluate_logits(lf, ["msp"], tmp_path / "r", opts)
    assert "meta_segments" in res.results["msp"]
    assert parse_meta_spec(f"energy={meta}") == ("energy", meta)
    assert parse_meta_spec(str(meta)) == ("entropy", meta)
    assert parse_meta_spec("runs/a=b/meta")[1].as_posix() == "runs/a=b/meta"    # '=' inside a path is a path
    assert read_meta(meta / "meta.json").values == read_meta(meta).values        # the file itself works too


def test_cli_evaluate_then_compare(world, tmp_path):
    _, lf, meta = world
    res = runner.invoke(app, ["evaluate", "--logits", str(lf), "--method", "msp", "--method", "entropy",
                              "--meta", str(meta), "--out", str(tmp_path / "r"), "--no-progress",
                              "--max-overlays", "0"])
    assert res.exit_code == 0, res.output
    doc = json.loads((meta / "meta.json").read_text())
    assert f"meta: {doc['segments']} segments, false positives {doc['fp_before']} -> {doc['fp_left']}" in res.output
    assert res.output.count("meta:") == 1
    plain = runner.invoke(app, ["evaluate", "--logits", str(lf), "--method", "msp", "--out",
                                str(tmp_path / "p"), "--no-progress", "--max-overlays", "0"])
    assert plain.exit_code == 0 and "meta" not in plain.output
    res = runner.invoke(app, ["compare", str(tmp_path / "r"), str(tmp_path / "p"), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    rows = _rows(tmp_path / "cmp" / "leaderboard.csv")
    assert [h for h in rows[0] if h.startswith("meta_")] == ["meta_auroc", "meta_fp_before", "meta_fp_left",
                                                             "meta_fn_before", "meta_fn_after"]
    by = {(r["run"], r["method"]): r for r in rows}
    assert int(by[("r", "entropy")]["meta_fp_left"]) == doc["fp_left"]
    assert by[("r", "msp")]["meta_fp_left"] == "" and by[("p", "msp")]["meta_auroc"] == ""
    res = runner.invoke(app, ["compare", str(tmp_path / "r"), "--out", str(tmp_path / "cmp2"),
                              "--metric", "auroc,meta_fp_after,meta_tp_removed"])
    assert res.exit_code == 0, res.output
    rows = _rows(tmp_path / "cmp2" / "leaderboard.csv")
    assert int(rows[1]["meta_fp_after"]) == doc["fp_after"] == int(rows[1]["meta_tp_removed"])


def test_compare_best_of_meta_columns(tmp_path):
    def report(name, values):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"entropy": {"auroc": 0.9, **values}}))
        return tmp_path / name

    a = report("a", {"meta_auroc": 0.8, "meta_fp_before": 10, "meta_fp_left": 4, "meta_fn_before": 1,
                     "meta_fn_after": 3, "meta_segments": 20})
    b = report("b", {"meta_auroc": 0.7, "meta_fp_before": 12, "meta_fp_left": 2, "meta_fn_before": 1,
                     "meta_fn_after": 1, "meta_segments": 30})
    res = compare_reports([a, b], tmp_path / "out", metrics="meta_auroc,meta_fp_left,meta_fn_after,meta_segments")
    assert res["best"] == {"meta_auroc": [0], "meta_fp_left": [1], "meta_fn_after": [1], "meta_segments": []}
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "| b | entropy | 0.7000 | **2** | **1** | 30 |" in md           # counts as integers
    res = compare_reports([a, b], tmp_path / "out2")
    assert res["metrics"] == ["auroc", "meta_auroc", "meta_fp_before", "meta_fp_left", "meta_fn_before",
                              "meta_fn_after"]


def _one_line_error(res, match):
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    err = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, res.output
    assert match in err[0], err[0]


def _bad_meta(tmp_path, meta, edit):
    bad = tmp_path / "bad"
    bad.mkdir()
    doc = json.loads((meta / "meta.json").read_text())
    edit(doc)
    (bad / "meta.json").write_text(json.dumps(doc))
    return bad


@pytest.mark.parametrize("case, match", [
    ("missing", "not found"),
    ("empty_folder", "no meta.json there"),
    ("not_json", "not valid JSON"),
    ("format", "expected 'oodscore-meta'"),
    ("version", "version 2 is not supported"),
    ("string_count", "fp_left is '3', expected a number or null"),
    ("no_key", "no 'fn_after'"),
    ("frames", "meta-classify saw 4 frame(s), this evaluation has 5"),
    ("names", "frame 0 is 'g0' there"),
    ("method", "its numbers go to method 'entropy', which this evaluation does not score (msp); add --method"),
    ("empty_method", "empty method name"),
])
def test_bad_meta_one_line(world, tmp_path, case, match):
    d, lf, meta = world
    methods = ["--method", "msp"] if case == "method" else ["--method", "entropy"]
    if case == "missing":
        spec = str(tmp_path / "nope")
    elif case == "empty_folder":
        (tmp_path / "e").mkdir()
        spec = str(tmp_path / "e")
    elif case == "not_json":
        (tmp_path / "nj").mkdir()
        (tmp_path / "nj" / "meta.json").write_text("{")
        spec = str(tmp_path / "nj")
    elif case == "format":
        spec = str(_bad_meta(tmp_path, meta, lambda doc: doc.update(format="oodscore-thresholds")))
    elif case == "version":
        spec = str(_bad_meta(tmp_path, meta, lambda doc: doc.update(version=2)))
    elif case == "string_count":
        spec = str(_bad_meta(tmp_path, meta, lambda doc: doc.update(fp_left="3")))
    elif case == "no_key":
        spec = str(_bad_meta(tmp_path, meta, lambda doc: doc.pop("fn_after")))
    elif case in ("frames", "names"):
        other = _logits_file(tmp_path / "other.h5", n=4 if case == "frames" else 5, prefix="g")
        meta_classify(other, tmp_path / "m2", progress=False, max_overlays=0)
        spec = str(tmp_path / "m2")
    elif case == "method":
        spec = str(meta)
    else:
        spec = f"={meta}"
    res = runner.invoke(app, ["evaluate", "--logits", str(lf), *methods, "--meta", spec,
                              "--out", str(tmp_path / "r"), "--no-progress"])
    _one_line_error(res, match)
    assert not (tmp_path / "r" / "metrics.json").exists()         # refused before any scoring


def test_meta_with_score_maps_needs_its_row(world, tmp_path):
    with pytest.raises(OodscoreError, match="does not score"):
        read_meta(world[2]).check(["my_maps"], num_frames=5)
