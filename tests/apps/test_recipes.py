"""`cocodag recipe`: the shipped recipes, the resolved values, overrides, copy, and the dry run's commands."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cocodag_apps.cli import cocodag_app
from cocodag_apps.recipes import RECIPE_FILES, RecipeError, list_recipes
from cocodag_apps.recipes.resolve import resolve

runner = CliRunner()
RECIPES = RECIPE_FILES


def _run(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(cocodag_app, list(args))
    return res.exit_code, res.stdout, res.stderr


def _show(name: str) -> dict:
    code, out, err = _run("recipe", "show", name, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def test_list_shows_the_five():
    code, out, _ = _run("recipe", "list")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert {"cocodag", "meta-ood", "pebal", "balanced-energy", "sml", "demo"} <= set(names) == set(list_recipes())


def test_published_values():
    pebal = _show("pebal")["fit"]
    assert (pebal["lr"], pebal["lr_power"], pebal["batch_size"], pebal["epochs"]) == (1e-5, 0.9, 8, 40)
    assert pebal["objective"] == "pebal" and pebal["train_only"] == ["final.*"]
    kw = pebal["objective_kwargs"]
    assert (kw["m_in"], kw["m_out"], kw["energy_weight"]) == (-12, -6, 0.1)
    be = _show("balanced-energy")["fit"]
    assert (be["objective_kwargs"]["gamma1"], be["objective_kwargs"]["gamma2"], be["objective_kwargs"]["alpha"]) \
        == (3, 3, 5)
    assert (be["epochs"], be["weight_decay"]) == (20, 0)
    meta = _show("meta-ood")
    assert (meta["fit"]["lr"], meta["fit"]["lambda"], meta["fit"]["batch_size"]) == (1e-5, 0.9, 8)
    assert meta["build"]["crop"] == 480 and meta["fit"]["objective"] == "maxent"
    # defaults are filled in from the option objects, every objective parameter is its own key
    assert pebal["block_size"] == 1 and "smoothness" in kw and "sources" in _show("pebal")


def test_every_recipe_resolves_and_cites_its_values():
    for name in list_recipes():
        res = resolve(name)
        assert res["checkpoint"]["model"] and res["checkpoint"]["file"] and res["sources"]


def test_override_changes_and_is_type_checked():
    res = resolve("pebal", ["fit.batch_size=2", "fit.objective_kwargs.m_in=-10", "build.split=val"])
    assert res["fit"]["batch_size"] == 2 and res["build"]["split"] == "val"
    assert res["fit"]["objective_kwargs"]["m_in"] == -10.0
    with pytest.raises(RecipeError, match=r"fit\.batch_size: expected int, got two"):
        resolve("pebal", ["fit.batch_size=two"])
    with pytest.raises(RecipeError, match="frozen_bn"):
        resolve("pebal", ["fit.frozen_bn=sometimes"])


def test_unknown_recipe_and_key_one_line_with_close_match():
    code, _, err = _run("recipe", "show", "pebl", "--format", "json")
    assert code == 1 and err.strip().count("\n") == 0 and "pebal" in err
    code, _, err = _run("recipe", "run", "pebal", "fit.bach_size=2", "--dry-run")
    assert code == 1 and err.strip().count("\n") == 0 and "batch_size" in err
    code, _, err = _run("recipe", "run", "pebal", "fit.objective_kwargs.m_inn=1", "--dry-run")
    assert code == 1 and "m_in" in err


def test_copy_then_show_round_trips(tmp_path):
    f = tmp_path / "mine.toml"
    assert _run("recipe", "copy", "pebal", str(f))[0] == 0
    assert _show(str(f))["fit"] == _show("pebal")["fit"]
    code, _, err = _run("recipe", "copy", "pebal", str(f))
    assert code == 1 and "exists" in err


def test_dry_run_prints_the_stage_commands():
    code, out, err = _run("recipe", "run", "pebal", "build.crop=64", "fit.max_steps=2", "--cityscapes", "cs",
                          "--coco", "coco", "--init", "cityscapes_best.pth", "--eval", "fs=fishyscapes-laf:fsl",
                          "--out", "o", "--device", "cpu", "--dry-run")
    assert code == 0, err
    lines = [line for line in out.splitlines() if not line.startswith("#")]
    build, fit, export, evaluate = lines
    assert " build " in build and "--crop 64" in build and "--cityscapes cs" in build
    assert " fit " in fit and "--max-steps 2" in fit and "--objective pebal" in fit and "--lr-schedule poly" in fit
    assert "--init cityscapes_best.pth" in fit and "--device cpu" in fit and "--keep-optimizer" in fit
    assert "--preset fishyscapes-laf" in export and "--checkpoint o/run/model-final.pt" in export
    assert "--method pebal" in evaluate
    assert "skipped" in err                # the published sets without a folder: a note, not an error


def test_run_without_its_inputs_is_one_line_before_any_stage(tmp_path):
    code, _, err = _run("recipe", "run", "sml", "--out", str(tmp_path / "o"))
    assert code == 1 and err.strip().count("\n") == 0 and "--cityscapes" in err, err
    assert not (tmp_path / "o").exists()


def _steps(recipe, *overrides, **inputs):
    from cocodag_apps.recipes.plan import RunInputs, build_plan

    return build_plan(recipe, list(overrides), RunInputs(**inputs)).steps


def test_runs_are_resolved_per_run_and_overridden_by_name():
    res = resolve("demo", ["runs.pebal_DAG.fit.lr=2e-4", "fit.lr=3e-4", "seeds=2"])
    runs = {r["name"]: r for r in res["runs"]}
    assert runs["pebal_DAG"]["fit"]["lr"] == 2e-4 and runs["pebal_noDAG"]["fit"]["lr"] == 1e-3   # its own value
    assert runs["entropy_DAG"]["fit"]["lr"] == 3e-4 and runs["logit_noDAG"]["fit"]["lr"] == 3e-4
    assert all(r["seeds"] == 2 for r in res["runs"])
    # the OODMC training export carries the run's MC dropout, then its own options
    oodmc_export = runs["entropy_DAG"]["oodmc_export"]
    assert oodmc_export["mc_samples"] == 16 and oodmc_export["limit"] == 64
    with pytest.raises(RecipeError, match="runs no sml_stats stage"):
        resolve("pebal", ["sml_stats.limit=3"])          # an override that would change nothing
    with pytest.raises(RecipeError, match="run pebal_DAG runs no sml_stats stage"):
        resolve("demo", ["runs.pebal_DAG.sml_stats.limit=3"])
    with pytest.raises(RecipeError, match="pebal_DAG"):
        resolve("demo", ["runs.pebal_DAGG.fit.lr=1"])
    with pytest.raises(RecipeError, match=r"runs\.pebal_DAG\.fit\.lr: expected float"):
        resolve("demo", ["runs.pebal_DAG.fit.lr=fast"])
    with pytest.raises(RecipeError, match="a run's stage is one of"):
        resolve("demo", ["runs.pebal_DAG.build.crop=3"])


def test_seeds_give_a_folder_and_a_seed_each(tmp_path):
    steps = {s.id: s for s in _steps("demo", "seeds=2", out=str(tmp_path))}
    for k in (0, 1):
        fit = steps[f"fit-pebal_DAG-s{k}"]
        assert fit.argv[fit.argv.index("--seed") + 1] == str(1000 + k)
        assert fit.done == tmp_path / "runs" / f"pebal_DAG-s{k}" / "model-final.pt"
    assert "fit-baseline-s0" not in steps and "export-baseline-anomaly" in steps    # fit = false: one model


def test_a_layout_that_writes_one_path_twice_is_refused(tmp_path):
    text = (RECIPES / "demo.toml").read_text().replace('logits = "runs/{run}/test.h5"', 'logits = "test.h5"')
    f = tmp_path / "mine.toml"
    f.write_text(text)
    with pytest.raises(RecipeError, match="both write"):
        _steps(str(f), out=str(tmp_path))
    f.write_text(text.replace('logits = "test.h5"', 'logits = "{model}.h5"'))
    with pytest.raises(RecipeError, match="layout.logits"):
        _steps(str(f), out=str(tmp_path))
    f.write_text(text.replace('name = "logit_DAG"', 'name = "logit_DAG"\nsteps = 3'))
    with pytest.raises(RecipeError, match="unknown key runs.logit_DAG.steps"):
        _steps(str(f), out=str(tmp_path))


def test_the_demo_recipe_needs_no_inputs_and_checks_none_inside_its_world(tmp_path):
    from cocodag_apps.recipes.plan import RunInputs, build_plan
    from cocodag_apps.recipes.run import check_inputs

    plan = build_plan("demo", [], RunInputs(out=str(tmp_path)))
    check_inputs(plan)                     # --cityscapes / --coco / the anomaly set: the world step writes them
    assert [s.id for s in plan.steps[:4]] == ["world", "build", "baseline", "miou"]
    assert plan.steps[-1].id == "compare-anomaly" and plan.steps[-1].always
    code, out, err = _run("recipe", "run", "demo", "--out", str(tmp_path), "--dry-run")
    assert code == 0 and "demo-data" in out and "skipped" not in err, err


def test_results_put_the_recipes_own_published_numbers_beside_yours(tmp_path, monkeypatch):
    from cocodag_apps.recipes import run as recipe_run
    from cocodag_apps.recipes.plan import EvalSet, RunInputs, build_plan

    inputs = RunInputs(out=str(tmp_path), init="ckpt.pth", evals=[EvalSet("ra", "road-anomaly", str(tmp_path)),
                                                                  EvalSet("mine", "standard", str(tmp_path))])
    plan = build_plan("pebal", [], inputs)
    for model in plan.models:
        for report in model.reports.values():
            report.mkdir(parents=True)
            (report / "metrics.json").write_text("{}")
    monkeypatch.setattr(recipe_run, "read_report", lambda report: [("pebal", "standard", {"ap": 0.3, "fpr95": 0.5})])
    doc = recipe_run.write_results(tmp_path, plan, inputs, "pebal")
    md = (tmp_path / "results.md").read_text()
    assert "| ra | yours | pebal | standard | - | 0.3000 | 0.5000 |" in md
    assert "| ra | paper | PEBAL | paper | - | 0.4510 | 0.4458 |" in md
    assert "| mine | paper" not in md                 # a set it was not published on: yours only
    assert doc["sets"]["ra"]["paper"][0]["source"].startswith("https://paperswithcode.com/")
    assert "split: the data set's only split" in md
