"""oodscore.compare / `oodscore compare`: leaderboard over report folders.

Oracles: hand-written metrics.json / protocols.csv values and the best per column picked here by hand; plain
csv parsing of the written table; a real report of `evaluate_logits` for the end-to-end path.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from oodscore import OodscoreError
from oodscore.cli import app
from oodscore.compare import compare_reports

runner = CliRunner()


def _report(path, metrics, protocols_csv=None, curves=None):
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(metrics))
    if protocols_csv is not None:
        (path / "protocols.csv").write_text(protocols_csv)
    if curves is not None:
        (path / "curves.json").write_text(json.dumps(curves))
    return path


A = {"msp": {"auroc": 0.90, "ap": 0.40, "fpr95": 0.30, "threshold": 0.5, "f1": 0.5},
     "sml": {"auroc": 0.95, "ap": 0.35, "fpr95": 0.20, "threshold": 0.1, "f1": 0.6}}
B = {"msp": {"auroc": 0.80, "ap": 0.55, "fpr95": 0.20, "threshold": 0.4, "f1": 0.45}}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_leaderboard_values_and_best(tmp_path):
    a, b = _report(tmp_path / "a", A), _report(tmp_path / "b", B)
    res = compare_reports([a, b], tmp_path / "out", metrics="auroc,ap,fpr95,threshold")
    assert res["metrics"] == ["auroc", "ap", "fpr95", "threshold"]
    rows = _rows(tmp_path / "out" / "leaderboard.csv")
    assert [(r["run"], r["method"]) for r in rows] == [("a", "msp"), ("a", "sml"), ("b", "msp")]
    assert "protocol" not in rows[0]                      # one protocol (exact): no column for it
    assert float(rows[1]["auroc"]) == 0.95 and float(rows[2]["ap"]) == 0.55
    # best: auroc max -> a/sml, ap max -> b/msp, fpr95 min -> tie a/sml and b/msp; threshold: never best
    assert rows[0]["best"] == ""
    assert set(rows[1]["best"].split(";")) == {"auroc", "fpr95"}
    assert set(rows[2]["best"].split(";")) == {"ap", "fpr95"}
    assert res["best"] == {"auroc": [1], "ap": [2], "fpr95": [1, 2], "threshold": []}
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "| a | sml | **0.9500** | 0.3500 | **0.2000** | 0.1000 |" in md
    assert "| b | msp | 0.8000 | **0.5500** | **0.2000** | 0.4000 |" in md
    tex = (tmp_path / "out" / "leaderboard.tex").read_text()
    assert tex.startswith("\\begin{tabular}{llrrrr}") and tex.rstrip().endswith("\\end{tabular}")
    assert "a & sml & \\textbf{0.9500} & 0.3500 & \\textbf{0.2000} & 0.1000 \\\\" in tex
    assert "\\textbf{0.5500}" in tex and "\\textbf{0.9000}" not in tex
    assert not (tmp_path / "out" / "roc.png").exists() and res["plotted"] is False and res["notes"]


def test_protocols_names_aliases_and_curves(tmp_path):
    pcsv = ("method,protocol,auroc,ap,fpr95,f1,threshold,component_siou\n"
            "msp,exact,0.9,0.4,0.3,0.5,0.5,\n"
            "msp,smiyc,0.91,0.41,0.29,0.5,0.5,0.7\n")
    c = {"fpr": [0, 0.5, 1], "tpr": [0, 0.9, 1], "precision": [1, 0.6, 0.3], "recall": [0, 0.9, 1]}
    a = _report(tmp_path / "r1" / "report", {"msp": A["msp"]}, pcsv, curves={"msp": c})
    b = _report(tmp_path / "r2" / "report", B)
    res = compare_reports([a, b], tmp_path / "out", metrics=["auroc,siou", "fpr95"], names=["dag", "base"])
    rows = _rows(tmp_path / "out" / "leaderboard.csv")
    assert [(r["run"], r["method"], r["protocol"]) for r in rows] == [
        ("dag", "msp", "exact"), ("dag", "msp", "smiyc"), ("base", "msp", "exact")]
    assert rows[1]["component_siou"] == "0.7" and rows[0]["component_siou"] == ""
    assert rows[1]["best"] == "auroc;component_siou"
    assert set(rows[2]["best"].split(";")) == {"fpr95"}
    assert res["plotted"] and (tmp_path / "out" / "roc.png").stat().st_size > 0
    assert (tmp_path / "out" / "pr.png").stat().st_size > 0
    # default names: same folder name "report" -> parent/name
    res = compare_reports([a, b], tmp_path / "out2")
    assert {r["run"] for r in res["rows"]} == {"r1/report", "r2/report"}


def test_real_report_end_to_end(tmp_path):
    from cocodag.formats.logits import LogitsWriter
    from oodscore.report import evaluate_logits

    rng = np.random.default_rng(0)
    with LogitsWriter(tmp_path / "t.h5", 4) as w:          # as tests/oodscore/test_report.py's fixture
        for i in range(2):
            lab = np.zeros((24, 32), np.uint8)
            lab[8:16, 10:22] = 1
            lg = rng.normal(size=(4, 24, 32))
            lg[0] += 2.5 * (lab == 0)
            w.write(lg, lab, f"frame{i}")
    evaluate_logits(tmp_path / "t.h5", ["msp", "maxlogit"], tmp_path / "rep", max_overlays=0, progress=False)
    r = runner.invoke(app, ["compare", str(tmp_path / "rep"), str(tmp_path / "rep"), "--names", "x,y",
                            "--out", str(tmp_path / "out"), "--metric", "auroc,ap,fpr95"])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    rows = _rows(tmp_path / "out" / "leaderboard.csv")
    assert len(rows) == 4
    for row in rows:
        assert float(row["auroc"]) == pytest.approx(got[row["method"]]["auroc"], abs=0)


@pytest.mark.parametrize("case", ["not_report", "missing", "metric", "names"])
def test_bad_input_one_line(tmp_path, case):
    good = _report(tmp_path / "good", A)
    (tmp_path / "empty").mkdir()
    args = {"not_report": [str(tmp_path / "empty")], "missing": [str(tmp_path / "nope")],
            "metric": [str(good), "--metric", "auroc,bogus"], "names": [str(good), "--names", "a,b"]}[case]
    r = runner.invoke(app, ["compare", *args, "--out", str(tmp_path / "out")])
    assert r.exit_code == 1
    err = r.output.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), r.output
    want = {"not_report": "no metrics.json", "missing": "not found", "metric": "valid: auroc",
            "names": "one per folder"}[case]
    assert want in err[0]
    assert not (tmp_path / "out" / "leaderboard.md").exists()


def test_no_reports():
    with pytest.raises(OodscoreError, match="no report folders"):
        compare_reports([], "unused")


def test_evaluate_writes_curves_that_compare_overlays(tmp_path):
    """`evaluate` stores the curves it plots (curves.npz), so compare draws the overlaid ROC / PR of real reports."""
    from oodscore.compare import compare_reports
    from oodscore.metrics import PixelMetrics
    from oodscore.report import Evaluation, write_report

    rng = np.random.default_rng(0)
    reports = []
    for run in ("a", "b"):
        label = (rng.random(4000) < 0.2).astype(np.uint8)
        score = rng.normal(size=4000) + 1.5 * label
        pm = PixelMetrics()
        pm.update(score, label)
        res = pm.compute()
        ev = Evaluation({"entropy": dict(res)}, {"entropy": {"f1": res["threshold"]}},
                        {"entropy": pm.curves()}, [], {})
        write_report(tmp_path / run, ev)
        with np.load(tmp_path / run / "curves.npz") as z:
            np.testing.assert_array_equal(z["entropy/fpr"], pm.curves()["fpr"])
        reports.append(tmp_path / run)
    out = compare_reports(reports, tmp_path / "cmp")
    assert (tmp_path / "cmp" / "roc.png").is_file() and (tmp_path / "cmp" / "pr.png").is_file()
    assert not any("no curve data" in n for n in out.get("notes", []))
