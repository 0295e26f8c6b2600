"""The installed apps' options: every choice comes from the library's own definition, and ``--device`` is a plain
string resolved by :func:`cocodag.device.resolve_device` (a CUDA device on a machine without CUDA is our one-line
error, exit 1, never a usage error)."""
from __future__ import annotations

import re
from typing import get_args

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cocodag.formats.logits import RESOLUTIONS
from cocodag_apps.cli import cocodag_app, maxent_app
from maxent_train import choices
from maxent_train.export import ExportOptions
from maxent_train.train import FitConfig

runner = CliRunner()

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")


def _one_line_error(res, *needles: str) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and "Usage" not in res.output, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("option, alias", [
    ("--compression", choices.Compression), ("--moments-of", choices.MomentsOf), ("--mc-dtype", choices.McDtype),
    ("--logits-resolution", choices.LogitsResolution), ("--logits-dtype", choices.LogitsDtype),
])
def test_export_help_offers_exactly_the_library_choices(option, alias):
    res = runner.invoke(maxent_app, ["export", "--help"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    shown = re.search(rf"{option}\s+<([a-z0-9|]+)>", res.output)
    assert shown is not None, res.output
    assert tuple(shown.group(1).split("|")) == get_args(alias)


def test_export_refuses_lzf_before_anything_runs(tmp_path):
    res = runner.invoke(maxent_app, ["export", "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "o.h5"),
                                     "--data", str(tmp_path), "--compression", "lzf"])
    assert res.exit_code == 2 and "lzf" in res.output, res.output       # typer's usage error: not a choice
    assert "lzf" not in choices.COMPRESSIONS
    with pytest.raises(Exception, match="--compression lzf: lzf is no longer written"):
        ExportOptions(checkpoint="c.pt", out="o.h5", data="d", compression="lzf").validate()   # type: ignore[arg-type]


def test_fit_help_offers_the_loss_targets():
    res = runner.invoke(maxent_app, ["fit", "--help"], env={"COLUMNS": "250"})
    assert re.search(r"--optim-target\s+<entropy\|logit>", res.output), res.output
    assert choices.OPTIM_TARGETS == ("entropy", "logit")


def test_the_file_format_and_export_agree_on_resolutions():
    assert set(choices.LOGITS_RESOLUTIONS) == set(RESOLUTIONS)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    return path


@no_cuda
@pytest.mark.parametrize("command", ["fit", "export", "miou", "predict", "demo"])
def test_device_cuda_1_without_cuda_is_one_line(command, tmp_path, image):
    argv = {
        "fit": ["fit", "--data", str(tmp_path), "--model", "tiny_segnet", "--out", str(tmp_path / "run")],
        "export": ["export", "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "o.h5"),
                   "--data", str(tmp_path)],
        "miou": ["miou", "--checkpoint", str(tmp_path / "c.pt"), "--cityscapes", str(tmp_path)],
        "predict": ["predict", str(image), "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "p")],
        "demo": ["demo", str(tmp_path / "demo")],
    }[command]
    app = cocodag_app if command == "demo" else maxent_app
    res = runner.invoke(app, [*argv, "--device", "cuda:1"])
    _one_line_error(res, "--device cuda:1", "CUDA is not available")
    assert not (tmp_path / "demo").exists() and not (tmp_path / "p").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["fit", "export", "predict"])
def test_an_unknown_device_name_is_our_error_not_a_usage_error(command, tmp_path, image):
    argv = {
        "fit": ["fit", "--data", str(tmp_path), "--model", "tiny_segnet", "--out", str(tmp_path / "run")],
        "export": ["export", "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "o.h5"),
                   "--data", str(tmp_path)],
        "predict": ["predict", str(image), "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "p")],
    }[command]
    _one_line_error(runner.invoke(maxent_app, [*argv, "--device", "gpu"]), "--device 'gpu'", "cuda:N")


def test_fit_config_checks_its_device():
    cfg = FitConfig(data="d", model="tiny_segnet", out="o", device="tpu")
    with pytest.raises(Exception, match="--device 'tpu': expected auto, cpu, cuda or cuda:N"):
        cfg.validate()
