"""`cocodag recipe run` on small real-format inputs: a Cityscapes-layout tree and a COCO instances JSON (the demo
world's), a WRN38 checkpoint in NVIDIA's released layout (random weights) and an anomaly set; resumed without
re-training; a changed setting refused; a missing input one line before any stage."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cocodag.demo_world import generate_demo_world
from cocodag_apps.cli import cocodag_app
from maxent_train.models import create_model

runner = CliRunner()
UPSTREAM = Path(__file__).resolve().parents[1] / "fixtures" / "upstream"
SMALL = ["build.crop=64", "build.min_object_area=200", "build.object_scale=0.5:1", "build.dag_samples=4",
         "build.cityscapes_crops_per_frame=1", "build.workers=1",
         "fit.max_steps=2", "fit.batch_size=2", "fit.workers=0", "fit.progress=false", "export.progress=false",
         "evaluate.progress=false", "evaluate.max_overlays=0"]


def _nvidia_checkpoint(path: Path) -> None:
    """NVIDIA semantic-segmentation's ``cityscapes_best.pth`` layout: ``{'state_dict': module.* (+ the loss's
    weight), 'epoch', 'mean_iu'}`` (random weights)."""
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_wrn38", num_classes=19)
    own = model.state_dict()
    keys = json.loads((UPSTREAM / "wrn38_keys.json").read_text())["keys"]
    sd = {"module." + k: own[k] for k, _, _ in keys}
    sd["module.criterion.nll_loss.weight"] = torch.linspace(1.0, 2.0, 19)
    torch.save({"state_dict": sd, "epoch": 175, "mean_iu": 0.8314}, path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("recipe")
    generate_demo_world(d / "world", frames=3, val_frames=1, anomaly_frames=2, frame_size="256x128", coco_images=10,
                        coco_image_size="160x120", seed=0, progress=False)
    _nvidia_checkpoint(d / "cityscapes_best.pth")
    return {"cityscapes": d / "world" / "cityscapes", "coco": d / "world" / "coco",
            "init": d / "cityscapes_best.pth", "anomaly": d / "world" / "anomaly", "dir": d}


def _run(*args: str | Path) -> tuple[int, str, str]:
    res = runner.invoke(cocodag_app, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def _args(inputs: dict[str, Path], out: Path, *extra: str, coco: bool = True) -> list[str | Path]:
    return ["recipe", "run", "pebal", *SMALL, *extra, "--cityscapes", inputs["cityscapes"],
            *(["--coco", inputs["coco"]] if coco else []), "--init", inputs["init"],
            "--eval", f"demo=demo:{inputs['anomaly']}", "--out", out, "--device", "cpu"]


@pytest.mark.slow
def test_pebal_runs_resumes_and_refuses_changed_settings(inputs, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = _run(*_args(inputs, out))
    assert code == 0, err[-3000:]
    results = json.loads((out / "results.json").read_text())
    rows = results["sets"]["demo"]["rows"]
    assert {r["method"] for r in rows} == {"pebal"} and {r["protocol"] for r in rows} >= {"exact", "smiyc"}
    assert all(0.0 <= r["values"]["auroc"] <= 1.0 for r in rows if r["values"].get("auroc") is not None)
    assert "| demo | yours | pebal |" in (out / "results.md").read_text()
    assert "skipped" in err and "fs-laf" in (out / "results.md").read_text()      # the published sets: a note
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["overrides"]["fit.max_steps"] == "2" and recipe["resolved"]["fit"]["objective"] == "pebal"
    commands = (out / "commands.log").read_text()
    for step in ("build", "fit", "export-demo", "evaluate-demo"):
        assert f"# {step}\n" in commands and (out / "stages" / f"{step}.json").is_file()
    fit_record = json.loads((out / "stages" / "fit.json").read_text())
    assert fit_record["settings"]["fit.lr"] == 1e-5 and "--objective pebal" in fit_record["command"]
    model = out / "run" / "model-final.pt"
    mtime = model.stat().st_mtime_ns

    # the same command again: every stage skipped (fit not re-trained), the results rewritten
    code, _, err = _run(*_args(inputs, out))
    assert code == 0, err[-3000:]
    assert "[fit] already done" in err and model.stat().st_mtime_ns == mtime
    assert (out / "commands.log").read_text() == commands          # nothing ran

    # a changed setting of a finished stage: refused before anything runs, naming the key
    code, _, err = _run(*_args(inputs, out, "fit.lr=1e-3"))
    assert code == 1 and err.strip().count("\n") == 0 and "fit.lr" in err, err
    assert model.stat().st_mtime_ns == mtime


def test_missing_input_is_one_line_before_any_stage(inputs, tmp_path):
    out = tmp_path / "out"
    code, _, err = _run(*_args(inputs, out, coco=False))
    assert code == 1 and err.strip().count("\n") == 0 and "--coco" in err, err
    assert not (out / "stages").exists()
    code, _, err = _run(*_args(inputs, out, coco=False), "--coco", inputs["dir"] / "nope")
    assert code == 1 and "--coco" in err and "not found" in err, err
    args = [a if not str(a).startswith("demo=demo:") else f"demo=demo:{inputs['dir'] / 'none'}"
            for a in _args(inputs, out)]
    code, _, err = _run(*args)
    assert code == 1 and "--eval demo" in err and "not found" in err, err
    assert not (out / "stages").exists()
