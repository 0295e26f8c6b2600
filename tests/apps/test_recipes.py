"""`cocodag recipe`: the shipped recipes, the resolved values, overrides, copy, and the dry run's commands."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cocodag_apps.cli import cocodag_app
from cocodag_apps.recipes import RecipeError, list_recipes
from cocodag_apps.recipes.resolve import resolve

runner = CliRunner()


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
    assert {"cocodag", "meta-ood", "pebal", "balanced-energy", "sml"} <= set(names) == set(list_recipes())


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
