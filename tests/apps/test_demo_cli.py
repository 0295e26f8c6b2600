"""`cocodag demo` (a top-layer app): a failed stage is one whole error line naming what failed and the full log.

The whole pipeline itself runs in tests/e2e/test_demo_pipeline.py (slow).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cocodag.errors import CocodagError
from cocodag_apps import demo, stage_runner
from cocodag_apps.cli import cocodag_app


def test_failed_stage_is_one_line_with_the_error_and_the_log(tmp_path):
    log = tmp_path / "logs" / "verify.log"
    missing = tmp_path / "no-such-dataset"
    with pytest.raises(CocodagError) as e:
        demo._run(demo._cmd("cocodag.cli", "verify", missing), log)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == f"demo stage `cocodag.cli verify` failed (exit 1): {missing}: dataset directory does not exist " \
                  f"(full log: {log})"
    assert f"error: {missing}" in log.read_text()


def test_failed_stage_with_a_traceback_names_the_exception(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("error: an older run's error, not this one\n")
    code = "import sys; print('working', flush=True); print('progress 50%', file=sys.stderr); raise KeyError('k')"
    for quiet in (True, False):     # quiet=False: stderr is shown and also kept in the log
        with pytest.raises(CocodagError) as e:
            demo._run([sys.executable, "-c", code], log, quiet=quiet)
        msg = str(e.value)
        assert "\n" not in msg and msg.endswith(f"KeyError: 'k' (full log: {log})"), msg
    assert log.read_text().splitlines().count("progress 50%") == 2


def test_cli_prints_a_stage_failure_whole(tmp_path, monkeypatch):
    long_dir = tmp_path.joinpath(*[f"a-rather-long-folder-name-{i}" for i in range(6)])

    def fake_run_demo(cfg):
        demo._run(demo._cmd("cocodag.cli", "verify", long_dir / "shards"), long_dir / "logs" / "verify.log")

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    r = CliRunner().invoke(cocodag_app, ["demo", str(long_dir), "--no-progress"], terminal_width=60)
    assert r.exit_code == 1
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].endswith(f"(full log: {long_dir / 'logs' / 'verify.log'})"), r.output
    assert f"{long_dir / 'shards'}: dataset directory does not exist" in errors[0]


def test_cli_rejects_a_missing_baseline_file(tmp_path):
    r = CliRunner().invoke(cocodag_app, ["demo", str(tmp_path / "out"), "--baseline", str(tmp_path / "nope.pt")])
    assert r.exit_code == 1 and "--baseline" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def test_failed_stage_names_a_long_exception_line_whole(tmp_path, monkeypatch):
    """A bug in a stage's CLI ends its log with the exception line; it is quoted whole, not cut at 80 columns."""
    long_dir = tmp_path.joinpath(*[f"a-rather-long-folder-name-{i}" for i in range(4)])
    long_dir.mkdir(parents=True)
    code = ("import cocodag.verify, runpy, sys\n"
            "def boom(*a, **k):\n"
            f"    raise ImportError('cannot import name X from oodscore.io ({long_dir}/io.py)')\n"
            "cocodag.verify.verify_dataset = boom\n"
            f"sys.argv = ['cocodag', 'verify', {str(long_dir)!r}]\n"
            "runpy.run_module('cocodag.cli', run_name='__main__')\n")
    monkeypatch.setenv("COLUMNS", "60")
    log = tmp_path / "v.log"
    with pytest.raises(CocodagError) as e:
        demo._run([sys.executable, "-c", code], log)
    assert str(e.value).endswith(f"ImportError: cannot import name X from oodscore.io ({long_dir}/io.py) "
                                 f"(full log: {log})"), str(e.value)


def test_children_draw_bars_only_where_the_demo_has_a_terminal(monkeypatch):
    """A stage's stderr is a pipe: it is told to draw bars when ours is a terminal, and left alone otherwise (plain
    progress lines in a redirected log)."""
    monkeypatch.delenv("COCODAG_PROGRESS", raising=False)
    monkeypatch.setattr(stage_runner, "use_bars", lambda: True)
    assert stage_runner.child_env(shown=True)["COCODAG_PROGRESS"] == "bar"
    assert "COCODAG_PROGRESS" not in stage_runner.child_env(shown=False)       # its stderr goes to the log only
    monkeypatch.setattr(stage_runner, "use_bars", lambda: False)
    assert "COCODAG_PROGRESS" not in stage_runner.child_env(shown=True)
    monkeypatch.setenv("COCODAG_PROGRESS", "lines")                     # the user's own choice is passed on
    assert stage_runner.child_env(shown=True)["COCODAG_PROGRESS"] == "lines"


def test_the_shipped_baseline_is_package_data_matching_the_default_world(tmp_path):
    assert demo.SHIPPED_BASELINE.is_file() and demo.SHIPPED_BASELINE_INFO.is_file()
    assert demo.baseline_source(demo.DemoConfig(out=tmp_path)) == "shipped"
    assert demo.baseline_source(demo.DemoConfig(out=tmp_path, frames=6)) == "train"     # another world
    assert demo.baseline_source(demo.DemoConfig(out=tmp_path, baseline="train")) == "train"


def test_a_copied_baseline_leaves_no_training_files(tmp_path):
    """The shipped (or a given) checkpoint becomes runs/baseline/model-final.pt; an interrupted training's files there
    go, so only a trained baseline leaves a training log."""
    d = demo._Demo(demo.DemoConfig(out=tmp_path))
    d.base_dir.mkdir(parents=True)
    for name in ("log.jsonl", "checkpoint-last.pt", "config.json"):      # a training killed before its end
        (d.base_dir / name).write_text("x")
    assert d.place_baseline() == "shipped"
    assert d.base_ckpt.read_bytes() == demo.SHIPPED_BASELINE.read_bytes()
    assert sorted(p.name for p in d.base_dir.iterdir()) == ["model-final.pt"]
    assert d.place_baseline() == "shipped"          # resumed demo: the model is there, nothing is copied again
    given = tmp_path / "given.pt"
    given.write_bytes(b"weights")
    d2 = demo._Demo(demo.DemoConfig(out=tmp_path / "b", baseline=str(given)))
    assert d2.place_baseline() == str(given) and d2.base_ckpt.read_bytes() == b"weights"
    d3 = demo._Demo(demo.DemoConfig(out=tmp_path / "c", baseline="train"))
    assert d3.place_baseline() == "train" and not d3.base_dir.exists()


def test_an_interrupted_fit_is_resumed(tmp_path):
    assert demo._resume(tmp_path) == []
    (tmp_path / "checkpoint-last.pt").write_text("x")
    assert demo._resume(tmp_path) == ["--resume"]


def _fake_meta_run(doc):
    """A stand-in for ``_run`` of `oodscore meta-classify`: writes ``doc`` (if any) as OUT/meta.json and fails the
    way the command ends when its classifier cannot be fitted (or, ``doc`` None, before writing anything)."""
    def fake(cmd, log, quiet=True):
        out = Path(cmd[cmd.index("--out") + 1])
        if doc is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "meta.json").write_text(json.dumps(doc))
        raise CocodagError("demo stage `oodscore.cli meta-classify` failed (exit 1): ...")
    return fake


def test_a_meta_classifier_that_cannot_be_fitted_does_not_fail_the_demo(tmp_path, monkeypatch, capsys):
    d = demo._Demo(demo.DemoConfig(out=tmp_path, progress=False))
    ckpt = d.runs / "baseline" / "model-final.pt"
    doc = {"segments": 4, "fp_before": 4, "fn_before": 32, "meta_auroc": None, "fp_after": None,
           "error": "every one of the 4 segment(s) is a false positive"}
    monkeypatch.setattr(demo, "_run", _fake_meta_run(doc))
    assert d.meta_classify(ckpt) == doc
    assert "not fitted: every one of the 4 segment(s)" in capsys.readouterr().err
    assert d.meta_classify(ckpt) == doc                 # resumed: the written counts are the stage's result
    assert "already done" in capsys.readouterr().err
    monkeypatch.setattr(demo, "_run", _fake_meta_run(None))     # any other failure is the demo's failure
    with pytest.raises(CocodagError):
        d.meta_classify(d.runs / "entropy_DAG-s0" / "model-final.pt")


def _metrics(auroc):
    return {"auroc": auroc, "ap": auroc / 2, "fpr95": 1 - auroc, "f1": 0.5, "precision": 0.4, "fpr": 0.01}


def test_results_gain_the_segment_counts_and_the_objectives_table(tmp_path):
    results = {"baseline": [{"entropy": _metrics(0.7), "maxlogit": _metrics(0.7), "pebal": _metrics(0.72)}]}
    for name, _, _ in demo.RUNS:
        results[name] = [{"entropy": _metrics(0.8), "maxlogit": _metrics(0.8)}, {"entropy": _metrics(0.9)}]
    for name, _, dag in demo.OBJECTIVE_RUNS:
        results[name] = [{"pebal": _metrics(0.95 if dag else 0.85)}, {"pebal": _metrics(0.95 if dag else 0.85)}]
    counts = {"segments": 10, "fp_before": 6, "fp_after": 1, "fp_left": 2, "tp_removed": 1, "fn_before": 5,
              "fn_after": 6, "meta_auroc": 0.875}
    meta = {"baseline": [{**counts, "segments": 4, "fp_after": None, "fp_left": None, "tp_removed": None,
                          "fn_after": None, "meta_auroc": None, "error": "one class"}],
            "entropy_noDAG": [counts, {**counts, "segments": 12}],
            "entropy_DAG": [counts, counts]}
    cfg = demo.DemoConfig(out=tmp_path, seeds=2)
    summary = demo.write_results(tmp_path / "report", cfg, results, {"miou": 0.7, "pixel_acc": 0.9, "n_frames": 2},
                                 tmp_path / "runs", meta)
    md = (tmp_path / "report" / "results.md").read_text()
    assert "| FP before | FP after (meta-ood) | FP left | TP removed | FN before | FN after | meta AUROC |" in md
    # the baseline's classifier was not fitted: its counts before, n/a for the rest (one seed: whole numbers)
    assert "| baseline (no MaxEnt) | 50.0 | 40.0 | 1.0 | 4 | 6 | n/a | n/a | n/a | 5 | n/a | n/a |" in md
    assert "| entropy, without DAG | 50.0 ± 0.0 | 40.0 ± 0.0 | 1.0 ± 0.0 | 11.0 ± 1.4 | 6.0 ± 0.0 |" in md
    assert md.count("| 87.5 ± 0.0 |") == 2
    assert "## Training objectives" in md
    assert "| maxent | without | entropy | 85.0 ± 7.1 | 42.5 ± 3.5 | 15.0 ± 7.1 |" in md
    assert "| pebal | with | pebal | 95.0 ± 0.0 | 47.5 ± 0.0 | 5.0 ± 0.0 |" in md
    assert "| balanced-energy | without | pebal | 85.0 ± 0.0 | 42.5 ± 0.0 | 15.0 ± 0.0 |" in md
    assert "| (baseline) | - | pebal | 72.0 | 36.0 | 28.0 |" in md
    assert summary["meta"] == meta
    assert json.loads((tmp_path / "report" / "results.json").read_text())["meta"] == meta
