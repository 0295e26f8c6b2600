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
from cocodag_apps.recipes import plan as recipe_plan
from cocodag_apps.recipes import run as recipe_run
from cocodag_apps.recipes.resolve import resolve

_run, _cmd = stage_runner.run_logged, stage_runner.module_cmd


def test_failed_stage_is_one_line_with_the_error_and_the_log(tmp_path):
    log = tmp_path / "logs" / "verify.log"
    missing = tmp_path / "no-such-dataset"
    with pytest.raises(CocodagError) as e:
        _run(_cmd("cocodag.cli", "verify", missing), log)
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
            _run([sys.executable, "-c", code], log, quiet=quiet)
        msg = str(e.value)
        assert "\n" not in msg and msg.endswith(f"KeyError: 'k' (full log: {log})"), msg
    assert log.read_text().splitlines().count("progress 50%") == 2


def test_cli_prints_a_stage_failure_whole(tmp_path, monkeypatch):
    long_dir = tmp_path.joinpath(*[f"a-rather-long-folder-name-{i}" for i in range(6)])

    def fake_run_demo(cfg):
        _run(_cmd("cocodag.cli", "verify", long_dir / "shards"), long_dir / "logs" / "verify.log")

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
        _run([sys.executable, "-c", code], log)
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


def _demo_plan(cfg):
    init = {"train": None, "shipped": str(demo.SHIPPED_BASELINE)}.get(demo.baseline_source(cfg),
                                                                   demo.baseline_source(cfg))
    inputs = recipe_plan.RunInputs(out=str(cfg.out), init=init, device="cpu")
    return recipe_plan.build_plan("demo", cfg.overrides(), inputs), inputs


def test_the_demo_is_the_demo_recipe_with_its_options_as_overrides(tmp_path):
    """DemoConfig's defaults are the recipe's values (cocodag demo = cocodag recipe run demo), and every option
    goes to the recipe keys it names and reads back from them."""
    plain, with_defaults = resolve("demo"), resolve("demo", demo.DemoConfig(out=tmp_path).overrides())
    plain.pop("overrides"), with_defaults.pop("overrides")
    assert plain == with_defaults
    assert demo.DemoConfig.from_resolved(plain, tmp_path) == demo.DemoConfig(out=tmp_path)
    cfg = demo.DemoConfig(out=tmp_path, steps=7, seeds=2, lr=0.5, objective_lr=0.25, lam=0.3, mc_samples=2,
                          object_scale="0.25:0.5", vde_threshold=0.3, progress=False, seed=4, overlays=1)
    assert demo.DemoConfig.from_resolved(resolve("demo", cfg.overrides()), tmp_path) == cfg
    res = resolve("demo", cfg.overrides())
    runs = {r["name"]: r for r in res["runs"]}
    assert [r["name"] for r in res["runs"]] == ["baseline", *(n for n, _, _ in demo.RUNS + demo.OBJECTIVE_RUNS)]
    assert runs["pebal_DAG"]["fit"]["lr"] == 0.25 and runs["entropy_DAG"]["fit"]["lr"] == 0.5
    assert runs["logit_noDAG"]["fit"]["lambda"] == 0.3 and runs["entropy_noDAG"]["fit"]["embedding_img_interval"] == 0
    assert "fit" not in runs["baseline"]            # fit = false: the starting model itself
    # the runs the report's tables read: SML / OODMC and meta classification where the tables expect them
    assert {n for n, r in runs.items() if "sml_stats" in r} == set(demo.SML_RUNS)
    assert {n for n, r in runs.items() if "fit_oodmc" in r} == set(demo.SML_RUNS)
    assert {n for n, r in runs.items() if r.get("meta_classify")} == set(demo.META_RUNS)


def test_the_demo_keeps_its_folder_layout(tmp_path):
    plan, _ = _demo_plan(demo.DemoConfig(out=tmp_path))
    done = {s.id: s.done.relative_to(tmp_path).as_posix() for s in plan.steps}
    assert done["baseline"] == "runs/baseline/model-final.pt" and done["miou"] == "runs/baseline/miou.json"
    assert done["fit-entropy_DAG-s0"] == "runs/entropy_DAG-s0/model-final.pt"
    assert done["export-baseline-anomaly"] == "runs/baseline/test.h5"
    assert done["evaluate-entropy_DAG-s0-anomaly"] == "runs/entropy_DAG-s0/report/metrics.json"
    assert done["meta_classify-entropy_noDAG-s0-anomaly"] == "runs/entropy_noDAG-s0/meta/meta.json"
    assert done["compare-anomaly"] == "report/leaderboard.md"
    assert done["world"] == "world/anomaly/meta.json" and done["build"] == "shards/manifest.json"
    assert [s.id for s in plan.steps if s.stage == "fit"] == [f"fit-{n}-s0" for n, _, _ in demo.RUNS
                                                              + demo.OBJECTIVE_RUNS]


def test_a_copied_baseline_leaves_no_training_files(tmp_path):
    """The shipped (or a given) checkpoint becomes runs/baseline/model-final.pt; an interrupted training's files there
    go, so only a trained baseline leaves a training log."""
    plan, _ = _demo_plan(demo.DemoConfig(out=tmp_path))
    step = next(s for s in plan.steps if s.id == "baseline")
    assert step.copy_from == demo.SHIPPED_BASELINE and step.argv[0] == "cp"
    base = step.done.parent
    base.mkdir(parents=True)
    for name in ("log.jsonl", "checkpoint-last.pt", "config.json"):      # a training killed before its end
        (base / name).write_text("x")
    recipe_run._run_step(step, step.argv, tmp_path, "demo")
    assert step.done.read_bytes() == demo.SHIPPED_BASELINE.read_bytes()
    assert sorted(p.name for p in base.iterdir()) == ["model-final.pt"]
    given = tmp_path / "given.pt"
    given.write_bytes(b"weights")
    plan2, _ = _demo_plan(demo.DemoConfig(out=tmp_path / "b", baseline=str(given)))
    step2 = next(s for s in plan2.steps if s.id == "baseline")
    assert step2.copy_from == given and step2.settings["--init-sha256"] != step.settings["--init-sha256"]
    plan3, _ = _demo_plan(demo.DemoConfig(out=tmp_path / "c", baseline="train"))
    step3 = next(s for s in plan3.steps if s.id == "baseline")
    assert step3.copy_from is None and step3.argv[2:4] == ["maxent_train", "fit"] and "--init" not in step3.argv


def _fake_steps(calls, meta_doc=None, meta_fails=False):
    """A stand-in for ``run_logged``: records each command and writes its done-marker (``--out`` / the model), or
    fails the way `oodscore meta-classify` does when its classifier cannot be fitted."""
    def fake(cmd, log, quiet=True, who="demo"):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1]) if "--out" in cmd else None
        if "meta-classify" in cmd:
            if meta_doc is not None:
                out.mkdir(parents=True, exist_ok=True)
                (out / "meta.json").write_text(json.dumps(meta_doc))
            if meta_fails:
                raise CocodagError("demo stage `oodscore.cli meta-classify` failed (exit 1): ...")
    return fake


def test_an_interrupted_fit_is_resumed_and_a_failed_meta_classifier_does_not_fail_the_run(tmp_path, monkeypatch,
                                                                                          capsys):
    plan, inputs = _demo_plan(demo.DemoConfig(out=tmp_path, baseline="train"))
    keep = {"baseline", "fit-entropy_DAG-s0", "meta_classify-baseline-anomaly"}
    plan.steps = [s for s in plan.steps if s.id in keep]
    calls = []
    doc = {"segments": 4, "fp_before": 4, "fn_before": 32, "meta_auroc": None, "fp_after": None,
           "error": "every one of the 4 segment(s) is a false positive"}
    monkeypatch.setattr(recipe_run, "run_logged", _fake_steps(calls, doc, meta_fails=True))
    run_dir = tmp_path / "runs" / "entropy_DAG-s0"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint-last.pt").write_text("x")        # a fit killed before its end
    for step in plan.steps:                                  # the fits' outputs, as a finished fit leaves them
        if step.stage in ("fit", "baseline"):
            step.done.parent.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(recipe_run, "check_inputs", lambda plan: None)
    recipe_run.run_plan(plan, inputs, "demo", writer=lambda *a: {})
    fit_cmds = [c for c in calls if "fit" in c]
    assert "--resume" in fit_cmds[1] and "--resume" not in fit_cmds[0]
    assert "not fitted: every one of the 4 segment(s)" in capsys.readouterr().err
    monkeypatch.setattr(recipe_run, "run_logged", _fake_steps(calls, None, meta_fails=True))
    (tmp_path / "runs" / "baseline" / "meta" / "meta.json").unlink()
    (tmp_path / "stages" / "meta_classify-baseline-anomaly.json").unlink()
    with pytest.raises(CocodagError):                       # any other failure is the run's failure
        recipe_run.run_plan(plan, inputs, "demo", writer=lambda *a: {})


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
