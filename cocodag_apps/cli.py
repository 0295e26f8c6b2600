"""The installed console scripts ``cocodag`` and ``maxent-train``: each lower package's commands plus its top-layer app.

* ``cocodag``      = :data:`cocodag.cli.COMMANDS` (demo-data, build, verify, inspect) + ``demo`` + ``recipe``
  (:mod:`cocodag_apps.cli_recipe`)
* ``maxent-train`` = :data:`maxent_train.cli.COMMANDS` (fit, export, models, miou) + ``predict``

Both commands here are thin typer shells over :func:`cocodag_apps.demo.run_demo` (a light module: its stages run in
subprocesses) and :func:`cocodag_apps.predict.predict_images`, imported when ``predict`` runs (it loads torch and
oodscore's scorers; ``maxent-train fit`` does not). Every choice comes from the library's own ``Literal``
(:mod:`maxent_train.choices`, :mod:`oodscore.options`); ``--device`` is a plain string that
:func:`cocodag.device.resolve_device` checks.
``python -m cocodag_apps cocodag|maxent-train ...`` runs the same apps without the console scripts.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated

import typer

from cocodag import cli as cocodag_cli
from cocodag.cli_utils import user_errors
from maxent_train import cli as maxent_cli
from oodscore.options import ThresholdKind

from . import cli_recipe, demo
from .demo import DemoConfig


def demo_cmd(
    out: Annotated[Path, typer.Argument(help="Output folder (world, shards, runs, report).")] = Path("demo-out"),
    frames: Annotated[int, typer.Option(help="Train frames of the demo world.")] = DemoConfig.frames,
    anomaly_frames: Annotated[int, typer.Option(help="Frames in the anomaly test set.")] = DemoConfig.anomaly_frames,
    frame_size: Annotated[str, typer.Option(help="Demo world frame size WxH.")] = DemoConfig.frame_size,
    steps: Annotated[int, typer.Option(help="MaxEnt fine-tuning steps per run.")] = DemoConfig.steps,
    seeds: Annotated[int, typer.Option(help="Fine-tuning seeds per configuration (3: mean ± std).")] = DemoConfig.seeds,
    baseline: Annotated[str, typer.Option(help="auto (shipped checkpoint when it matches the world, else train), "
                                               "train, or a checkpoint path.")] = "auto",
    baseline_steps: Annotated[int, typer.Option(help="Steps when the baseline is trained here.")
                              ] = DemoConfig.baseline_steps,
    mc_samples: Annotated[int, typer.Option(help="MC-dropout passes T for OODMC.")] = DemoConfig.mc_samples,
    lr: Annotated[float, typer.Option(help="Fine-tuning learning rate (Adam).")] = DemoConfig.lr,
    embedding_img_interval: Annotated[int, typer.Option(help="DAG runs: every k-th batch is a DAG batch.")
                                      ] = DemoConfig.embedding_img_interval,
    device: Annotated[str, typer.Option(help=maxent_cli.DEVICE_HELP)] = "auto",
    workers: Annotated[int, typer.Option(help="Worker processes for data generation and build.")] = DemoConfig.workers,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars of training.")] = True,
) -> None:
    """Run the whole method on the embedded demo world and print the seed's tables (resumes if interrupted)."""
    cfg = DemoConfig(out=out, frames=frames, anomaly_frames=anomaly_frames, frame_size=frame_size, steps=steps,
                     seeds=seeds, baseline=baseline, baseline_steps=baseline_steps, mc_samples=mc_samples, lr=lr,
                     embedding_img_interval=embedding_img_interval, device=device, workers=workers, progress=progress)
    with user_errors():
        t = time.perf_counter()
        demo.run_demo(cfg)
        print(f"demo finished in {time.perf_counter() - t:.0f} s; report: {Path(out) / 'report' / 'results.md'}",
              file=sys.stderr)


def predict(
    inputs: Annotated[Path, typer.Argument(help="An image file or a folder of images.")],
    checkpoint: Annotated[Path, typer.Option(help="Model checkpoint (model-final.pt, or a released file with "
                                                  "--model).")],
    out: Annotated[Path, typer.Option(help="Output folder for heat maps, masks and overlays.")],
    model: Annotated[str | None, typer.Option(help=maxent_cli.MODEL_HELP)] = None,
    model_kwargs: Annotated[str | None, typer.Option(help=maxent_cli.MODEL_KWARGS_HELP)] = None,
    num_classes: Annotated[int | None, typer.Option(help="Classes when the checkpoint has no metadata.")] = None,
    method: Annotated[str, typer.Option(help="Score: any method of `oodscore evaluate` that works on logits "
                                             "(entropy, msp, maxlogit, sml, vde, ...).")] = "entropy",
    sml_stats: Annotated[Path | None, typer.Option(help="SML statistics JSON (needed by sml and vde).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Mask threshold (score >= t is anomalous).")] = None,
    threshold_from: Annotated[Path | None, typer.Option(
        help="thresholds.json written by `oodscore evaluate` on a validation set (recommended threshold).")] = None,
    threshold_kind: Annotated[ThresholdKind, typer.Option(help="Which saved threshold: f1 (F1-optimal) or tpr95.")
                              ] = "f1",
    window: Annotated[int | None, typer.Option(
        help="Sliding-window size for large images (default: whole image).")] = None,
    stride: Annotated[int | None, typer.Option(help="Sliding-window stride.")] = None,
    save_scores: Annotated[bool, typer.Option(
        "--save-scores", help="Also save raw score maps as scores/<name>.npy.")] = False,
    device: Annotated[str, typer.Option(help=maxent_cli.DEVICE_HELP)] = "auto",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Anomaly heat map (with colour bar), binary mask at the recommended threshold, and overlay per image."""
    from maxent_train.models import parse_model_kwargs

    from .predict import PredictOptions, predict_images

    with user_errors():
        opts = PredictOptions(method=method, sml_stats=sml_stats, threshold=threshold, threshold_from=threshold_from,
                              threshold_kind=threshold_kind, device=device, window=window, stride=stride,
                              save_scores=save_scores, progress=progress, model=model,
                              model_kwargs=parse_model_kwargs(model_kwargs), num_classes=num_classes)
        res = predict_images(checkpoint, inputs, out, opts)
        if res["threshold"] is None:
            typer.echo("note: no threshold given (--threshold or --threshold-from): masks were not written", err=True)
        typer.echo(f"{len(res['images'])} images -> {res['out']}", err=True)


def _insert_after(commands: Mapping[str, Callable[..., None]], after: str, name: str,
                  fn: Callable[..., None]) -> dict[str, Callable[..., None]]:
    """``commands`` with ``name: fn`` placed right after ``after`` (at the end when ``after`` is absent)."""
    out: dict[str, Callable[..., None]] = {}
    for key, value in commands.items():
        out[key] = value
        if key == after:
            out[name] = fn
    out.setdefault(name, fn)
    return out


# `cocodag --help` lists demo right after demo-data, as it always has.
cocodag_app = cocodag_cli.create_app(_insert_after(cocodag_cli.COMMANDS, "demo-data", "demo", demo_cmd))
cocodag_app.add_typer(cli_recipe.app, name="recipe")     # recipe list | show | copy | run
maxent_app = maxent_cli.create_app({**maxent_cli.COMMANDS, "predict": predict})

APPS = {"cocodag": cocodag_app, "maxent-train": maxent_app}


def cocodag_main() -> None:
    """Entry point of the ``cocodag`` console script."""
    cocodag_app(prog_name="cocodag")


def maxent_main() -> None:
    """Entry point of the ``maxent-train`` console script."""
    maxent_app(prog_name="maxent-train")
