"""`oodscore evaluate --protocol / --component-rule / --sml-border / --boundary-width / --temperature` and
`oodscore methods`: the CLI wiring of oodscore.protocols and of the scorer options (the protocols themselves are
checked against the official code in test_protocols.py)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cocodag.formats.logits import LogitsWriter
from oodscore.cli import app
from oodscore.protocols import protocol_metrics
from oodscore.scores import METHODS, definitions, get_scorer

runner = CliRunner()
C, H, W = 4, 40, 48


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(res, match: str):
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    err = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, res.output
    assert match in err[0], err[0]


@pytest.fixture(scope="module")
def logits(tmp_path_factory):
    """A small logits file (3 frames, an obstacle-sized anomaly each, ties from float16 logits)."""
    path = tmp_path_factory.mktemp("lg") / "test.h5"
    rng = np.random.default_rng(3)
    frames = []
    with LogitsWriter(path, C) as w:
        for i in range(3):
            lab = np.zeros((H, W), np.uint8)
            lab[8 + i:20 + i, 10:26] = 1
            lab[0, :] = 255
            lg = rng.normal(size=(C, H, W)).astype(np.float16)
            lg[1] += (2.5 * (lab == 0)).astype(np.float16)
            w.write(lg, lab, f"f{i}")
            frames.append((lg, lab))
    return path, frames


def _usage_error(res, option: str, *choices: str):
    """A choice outside the option's Literal: typer refuses it before the command runs (exit 2), listing them."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    text = " ".join(res.output.replace("│", " ").split())
    assert f"Invalid value for '{option}'" in text, text
    for c in choices:
        assert f"'{c}'" in text, (c, text)


def _score_maps(method, frames, **params):
    sc = get_scorer(method, **params)
    return [(np.asarray(sc.score(lg, size=lab.shape), np.float32), lab) for lg, lab in frames]


def _evaluate(path, out, *args):
    res = _run("evaluate", "--logits", path, "--out", out, "--max-overlays", 0, "--no-progress", *args)
    assert res.exit_code == 0, res.output
    return json.loads((out / "metrics.json").read_text())


def _close(got: dict, want: dict, keys):
    for k in keys:
        w = want[k]
        if w is None:
            assert got[k] is None, k
        elif isinstance(w, str):
            assert got[k] == w, k
        elif np.isnan(w):
            assert got[k] is None, k          # NaN is written as null
        else:
            assert got[k] == pytest.approx(w, abs=1e-12), k


@pytest.mark.parametrize("track", ["obstacle"])
def test_smiyc_equals_the_library(tmp_path, logits, track):
    path, frames = logits
    got = _evaluate(path, tmp_path / "rep", "--method", "maxlogit", "--method", "entropy", "--protocol", "smiyc",
                    "--components", track)
    assert list(got) == ["maxlogit", "entropy"]                 # layout kept: {method: {...}}
    for m in got:
        want = protocol_metrics("smiyc", _score_maps(m, frames), components=track)
        assert got[m]["protocol"] == "smiyc" and got[m]["component_rule"] == "gt"
        _close(got[m], want, [k for k, v in want.items() if np.isscalar(v) or v is None])
    th = json.loads((tmp_path / "rep" / "thresholds.json").read_text())["methods"]["maxlogit"]
    assert th["f1"] == got["maxlogit"]["threshold"] and th["protocol"] == "smiyc"
    # the rule can be overridden; the protocol's own is the default
    ge = _evaluate(path, tmp_path / "ge", "--method", "maxlogit", "--protocol", "smiyc", "--components", track,
                   "--component-rule", "ge")["maxlogit"]
    want = protocol_metrics("smiyc", _score_maps("maxlogit", frames), components=track, component_rule="ge")
    assert ge["component_rule"] == "ge"
    assert ge["component_siou"] == pytest.approx(want["component_siou"], abs=1e-12)


def test_fishyscapes_equals_the_library_and_none_keys_are_written(tmp_path, logits):
    path, frames = logits
    out = tmp_path / "rep"
    got = _evaluate(path, out, "--method", "msp", "--protocol", "fishyscapes", "--max-overlays", 2)["msp"]
    want = protocol_metrics("fishyscapes", _score_maps("msp", frames))
    _close(got, want, ["auroc", "ap", "fpr95", "protocol", "threshold", "f1"])
    assert got["threshold"] is None and got["f1"] is None
    th = json.loads((out / "thresholds.json").read_text())["methods"]["msp"]
    assert "f1" not in th and th["protocol"] == "fishyscapes"       # None entries left out
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert rows[0]["f1"] == "" and rows[0]["protocol"] == "fishyscapes"
    assert (out / "roc.png").is_file() and (out / "pr.png").is_file()


def test_exact_is_the_default_and_unchanged(tmp_path, logits):
    path, frames = logits
    a = tmp_path / "a"
    b = tmp_path / "b"
    _evaluate(path, a, "--method", "msp", "--components", "obstacle")
    got = _evaluate(path, b, "--method", "msp", "--components", "obstacle", "--protocol", "exact",
                    "--component-rule", "ge")
    for f in ("metrics.json", "metrics.csv", "thresholds.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert "protocol" not in got["msp"] and "component_rule" not in got["msp"]
    want = protocol_metrics("exact", _score_maps("msp", frames), components="obstacle")
    _close(got["msp"], want, ["auroc", "ap", "fpr95", "threshold", "f1", "component_siou", "component_mean_f1"])
    gt = _evaluate(path, tmp_path / "gt", "--method", "msp", "--components", "obstacle", "--component-rule", "gt")
    want = protocol_metrics("exact", _score_maps("msp", frames), components="obstacle", component_rule="gt")
    assert gt["msp"]["component_rule"] == "gt"
    assert gt["msp"]["component_siou"] == pytest.approx(want["component_siou"], abs=1e-12)


def test_protocol_all_writes_the_side_by_side_table(tmp_path, logits):
    path, frames = logits
    out = tmp_path / "all"
    got = _evaluate(path, out, "--method", "maxlogit", "--protocol", "all", "--components", "obstacle")
    exact = _evaluate(path, tmp_path / "exact", "--method", "maxlogit", "--components", "obstacle")
    assert (out / "metrics.json").read_bytes() == (tmp_path / "exact" / "metrics.json").read_bytes()
    assert got == exact
    rows = list(csv.DictReader(open(out / "protocols.csv")))
    assert [r["protocol"] for r in rows] == ["exact", "smiyc", "fishyscapes"]
    maps = _score_maps("maxlogit", frames)
    for r in rows:
        want = protocol_metrics(r["protocol"], maps,
                                components=None if r["protocol"] == "fishyscapes" else "obstacle")
        assert float(r["ap"]) == pytest.approx(want["ap"], abs=1e-12)
        if r["protocol"] == "fishyscapes":
            assert r["f1"] == "" and r["component_siou"] == ""
        else:
            assert float(r["component_siou"]) == pytest.approx(want["component_siou"], abs=1e-12)
    md = (out / "protocols.md").read_text()
    assert "| maxlogit | smiyc |" in md and "| maxlogit | fishyscapes |" in md


def test_workers_give_the_same_protocol_numbers(tmp_path, logits):
    path, _ = logits
    one = _evaluate(path, tmp_path / "one", "--method", "maxlogit", "--protocol", "smiyc", "--components", "obstacle")
    two = _evaluate(path, tmp_path / "two", "--method", "maxlogit", "--protocol", "smiyc", "--components", "obstacle",
                    "--workers", 2)
    assert one == two


def test_scorer_options_are_routed(tmp_path, logits):
    path, frames = logits
    got = _evaluate(path, tmp_path / "t", "--method", "energy", "--method", "msp-t", "--temperature", 2.5)
    for m in ("energy", "msp-t"):
        want = protocol_metrics("exact", _score_maps(m, frames, temperature=2.5))
        assert got[m]["ap"] == pytest.approx(want["ap"], abs=1e-12)
    default = _evaluate(path, tmp_path / "d", "--method", "energy")
    want = protocol_metrics("exact", _score_maps("energy", frames))
    assert default["energy"]["ap"] == pytest.approx(want["ap"], abs=1e-12)


def test_sml_border_and_width_are_routed(tmp_path, logits):
    path, frames = logits
    from oodscore.scores import SMLStats

    stats_path = tmp_path / "sml.json"
    res = _run("fit-sml", "--logits", path, "--out", stats_path)
    assert res.exit_code == 0, res.output
    got = _evaluate(path, tmp_path / "s", "--method", "sml", "--sml-stats", stats_path, "--sml-border",
                    "official-2021", "--boundary-width", 6, "--boundary-iters", 3)["sml"]
    maps = _score_maps("sml", frames, stats=SMLStats.load(stats_path), border="official-2021", boundary_width=6,
                       boundary_iters=3)
    assert got["ap"] == pytest.approx(protocol_metrics("exact", maps)["ap"], abs=1e-12)
    default = _evaluate(path, tmp_path / "g", "--method", "sml", "--sml-stats", stats_path)["sml"]
    maps = _score_maps("sml", frames, stats=SMLStats.load(stats_path))
    assert default["ap"] == pytest.approx(protocol_metrics("exact", maps)["ap"], abs=1e-12)


def test_bad_protocol_options_give_one_line(tmp_path, logits):
    path, _ = logits
    base = ("evaluate", "--logits", path, "--method", "msp", "--no-progress", "--out")
    _usage_error(_run(*base, tmp_path / "a", "--protocol", "smiyx"), "--protocol", "exact", "smiyc", "fishyscapes",
                 "all")
    _one_line_error(_run(*base, tmp_path / "b", "--protocol", "fishyscapes", "--components", "anomaly"),
                    "defines no component metrics")
    thr = tmp_path / "thr.json"
    thr.write_text(json.dumps({"format": "oodscore-thresholds", "methods": {"msp": {"f1": 0.5}}}))
    _one_line_error(_run(*base, tmp_path / "c", "--protocol", "smiyc", "--threshold-from", thr),
                    "--threshold-from works with --protocol exact only")
    _one_line_error(_run(*base, tmp_path / "d", "--protocol", "smiyc", "--bins", 100), "--bins")
    _usage_error(_run(*base, tmp_path / "e", "--components", "anomaly", "--component-rule", "gte"),
                 "--component-rule", "gt", "ge")
    _one_line_error(_run(*base, tmp_path / "f", "--component-rule", "gt"), "needs --components")
    _one_line_error(_run(*base, tmp_path / "g", "--temperature", 2), "--temperature: none of the methods msp")
    _one_line_error(_run(*base, tmp_path / "h", "--sml-border", "official-2021"), "--sml-border")
    _usage_error(_run(*base, tmp_path / "i", "--sml-border", "kornia"), "--sml-border", "geodesic", "official-2021")
    # the library's own messages for these values: test_report.py::test_eval_options_one_line_per_bad_option
    for d in "abcdefghi":
        assert not (tmp_path / d / "metrics.json").exists()


def test_methods_lists_the_registry():
    res = _run("methods")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert len(lines) == len(METHODS)
    defs = definitions()
    for m, ln in zip(METHODS, lines):
        assert ln.split()[0] == m and defs[m] in ln
    assert "[mc]" in dict(zip(METHODS, lines))["mc-entropy"]
    assert "[logits]" in dict(zip(METHODS, lines))["energy"]
