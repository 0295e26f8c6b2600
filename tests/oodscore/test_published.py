"""oodscore.published (the shipped SegmentMeIfYouCan leaderboard) and `oodscore compare --published`.

Oracles: the counts of methods and the values of PEBAL and Maximized Entropy read by hand from
``assets/leaderboard.json`` of SegmentMeIfYouCan/segment-me-if-you-can at commit 24aa91e, written here literally;
the sidecar's sha256 of the copied file; plain csv parsing of the written table.
"""
from __future__ import annotations

import csv
import hashlib
import json
from importlib import resources
from pathlib import Path

import pytest
from typer.testing import CliRunner

from oodscore import OodscoreError
from oodscore.cli import app
from oodscore.compare import compare_reports
from oodscore.published import LEADERBOARDS, PUBLISHED_METRICS, leaderboard_source, load_published

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def _by_method(name):
    out = {}
    for r in load_published(name).rows:
        out.setdefault(r.method, []).append(r)
    return out


def test_the_three_tables():
    assert LEADERBOARDS == ("smiyc-anomaly", "smiyc-obstacle", "smiyc-laf")
    counts = {n: len(load_published(n).rows) for n in LEADERBOARDS}
    assert counts == {"smiyc-anomaly": 47, "smiyc-obstacle": 45, "smiyc-laf": 21}
    for n in LEADERBOARDS:
        t = load_published(n)
        assert t.name == n and "24aa91e" in t.citation()
        for r in t.rows:
            assert r.method == r.method.strip() and r.method
            assert set(r.values) == set(PUBLISHED_METRICS)
            assert all(v is not None and 0.0 <= v <= 1.0 for v in r.values.values()), (n, r.method)
    # a method published twice, with and without OOD data: both kept, told apart by the flag
    assert sorted(r.requires_ood for r in _by_method("smiyc-anomaly")["RbA"]) == [False, True]
    # names with a trailing space in the JSON ("DenseHybrid ") are stripped
    assert "DenseHybrid" in _by_method("smiyc-obstacle")
    # no flag in the JSON -> None, never a guessed False
    assert _by_method("smiyc-anomaly")["SOTA"][0].requires_ood is None


def test_spot_check_anomaly_track():
    by = _by_method("smiyc-anomaly")
    (pebal,), (maxent,) = by["PEBAL"], by["Maximized Entropy"]
    # "AnomalyTrack-test-PixBinaryClass-area_PRC", "-tpr95_fpr", "SegEval-AnomalyTrack-sIoU_gt", "-prec_pred",
    # "-f1_mean" of each entry, as in the JSON (fractions)
    assert pebal.values == {"ap": 0.49144391, "fpr95": 0.4082214359, "component_siou": 0.3887923221,
                            "component_ppv": 0.2719620721, "component_mean_f1": 0.144818218}
    assert pebal.requires_ood is True
    assert pebal.paper == "https://arxiv.org/abs/2111.12264" and pebal.code == "https://github.com/tianyu0207/PEBAL"
    assert maxent.values == {"ap": 0.8546903408, "fpr95": 0.1499860887, "component_siou": 0.4920577213,
                             "component_ppv": 0.3950618201, "component_mean_f1": 0.2872489726}
    assert maxent.requires_ood is True and maxent.code == "https://github.com/robin-chan/meta-ood"
    # the obstacle track's and LaF's prefixes are mapped too
    (mo,) = _by_method("smiyc-obstacle")["Maximized Entropy"]
    assert mo.values["ap"] == 0.8506818478 and mo.values["component_mean_f1"] == 0.4851047716
    (ml,) = _by_method("smiyc-laf")["Maximized Entropy"]
    assert ml.values["fpr95"] == 0.0970299486 and ml.values["component_siou"] == 0.45900371


def test_shipped_file_is_the_recorded_copy():
    src = leaderboard_source()
    assert src["repository"] == "https://github.com/SegmentMeIfYouCan/segment-me-if-you-can"
    assert src["path"] == "assets/leaderboard.json" and src["commit"].startswith("24aa91e") and src["copied"]
    data = (resources.files("oodscore") / "data" / "published" / src["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == src["sha256"]
    assert set(json.loads(data)) == {"anomaly_track", "obstacle_track", "laf_no_known"}
    tomllib = pytest.importorskip("tomllib")            # Python 3.11+
    # package data: a wheel carries the files as a source checkout does
    pkg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["oodscore"]
    assert "data/published/*.json" in pkg


def test_unknown_leaderboard():
    with pytest.raises(OodscoreError, match="unknown leaderboard; valid: smiyc-anomaly, smiyc-obstacle, smiyc-laf"):
        load_published("smiyc-foo")


def _report(path, metrics):
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_compare_with_published(tmp_path):
    rep = _report(tmp_path / "dag", {"entropy": {"auroc": 0.9, "ap": 0.99, "fpr95": 0.01, "component_siou": 0.3}})
    res = compare_reports([rep], tmp_path / "out", published="smiyc-anomaly")
    assert res["metrics"] == ["auroc", "ap", "fpr95", "component_siou", "component_ppv", "component_mean_f1"]
    rows = _rows(tmp_path / "out" / "leaderboard.csv")
    assert len(rows) == 1 + 47 and len(res["rows"]) == 48
    ours = rows[0]
    assert (ours["run"], ours["method"], ours["protocol"], ours["source"], ours["requires_ood"]) == (
        "dag", "entropy", "exact", "report", "")
    pub = {r["method"]: r for r in rows[1:] if r["method"] in ("PEBAL", "Maximized Entropy")}
    assert (pub["PEBAL"]["run"], pub["PEBAL"]["protocol"], pub["PEBAL"]["source"], pub["PEBAL"]["requires_ood"]) == (
        "smiyc-anomaly", "smiyc", "published", "yes")
    assert float(pub["PEBAL"]["ap"]) == 0.49144391 and float(pub["PEBAL"]["component_mean_f1"]) == 0.144818218
    assert float(pub["Maximized Entropy"]["fpr95"]) == 0.1499860887 and pub["PEBAL"]["auroc"] == ""
    assert {r["requires_ood"] for r in rows[1:]} == {"yes", "no", ""}
    # best over all rows, published included: our ap 0.99 and fpr95 0.01 beat every published one (0.9633,
    # 0.0198); the best sIoU is a published row's
    assert set(ours["best"].split(";")) == {"auroc", "ap", "fpr95"}
    assert 0 not in res["best"]["component_siou"] and res["best"]["component_siou"]
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "over all rows, the published ones included" in md and "24aa91e" in md
    assert "| smiyc-anomaly | PEBAL | smiyc | published | yes | - | 0.4914 | 0.4082 | 0.3888 | 0.2720 | 0.1448 |" in md
    tex = (tmp_path / "out" / "leaderboard.tex").read_text()
    assert "smiyc-anomaly & PEBAL & smiyc & published & yes & - & 0.4914" in tex


def test_compare_without_published_is_unchanged(tmp_path):
    rep = _report(tmp_path / "dag", {"entropy": {"auroc": 0.9, "ap": 0.95}})
    compare_reports([rep], tmp_path / "out")
    rows = _rows(tmp_path / "out" / "leaderboard.csv")
    assert list(rows[0]) == ["run", "method", "auroc", "ap", "best"] and len(rows) == 1
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "Best per column in **bold** (auroc ↑, ap ↑); `-`: not in that report.\n\n| run | method | auroc" in md


def test_cli_published(tmp_path):
    rep = _report(tmp_path / "dag", {"entropy": {"ap": 0.5, "fpr95": 0.1}})
    r = runner.invoke(app, ["compare", str(rep), "--out", str(tmp_path / "out"), "--published", "smiyc-laf"])
    assert r.exit_code == 0, r.output
    assert "22 rows" in r.output and "21 published rows" in r.output and "24aa91e" in r.output
    rows = _rows(tmp_path / "out" / "leaderboard.csv")
    assert [r["run"] for r in rows].count("smiyc-laf") == 21
    bad = runner.invoke(app, ["compare", str(rep), "--out", str(tmp_path / "out2"), "--published", "smiyc-foo"])
    assert bad.exit_code == 2 and "smiyc-foo" in bad.output and "smiyc-anomaly" in bad.output
    assert not (tmp_path / "out2").exists()


def test_paper_results_are_the_numbers_of_their_excerpts():
    """Each recorded paper number is its source's text: the percent printed in the excerpt, over 100; and each sits
    on a preset that exists, for a recipe that exists."""
    import re

    from cocodag.formats.evalsets import PRESETS
    from oodscore.published import paper_results

    printed = {"ap": "AP", "fpr95": "FPR95"}
    results = paper_results()
    assert {r.recipe for r in results} == {"pebal", "sml"}
    for r in results:
        assert r.preset in PRESETS and r.split and r.source.startswith("https://")
        assert r.method in r.excerpt and r.dataset in r.excerpt
        for key, value in r.values.items():
            m = re.search(rf"\b{printed[key]} (\d+\.\d+)\b", r.excerpt)
            assert m is not None and round(float(m.group(1)) / 100, 6) == value, (r.dataset, key)
    road = next(r for r in paper_results("pebal") if r.preset == "road-anomaly")
    assert road.values == {"ap": 0.4510, "fpr95": 0.4458}
    laf = next(r for r in paper_results("pebal") if r.preset == "lostandfound")
    assert set(laf.values) == {"ap"}         # its "FPR" is not said to be at 95 % TPR: left out
    assert paper_results("meta-ood") == []
