"""`maxent-train` command line: thin typer shells over library functions (fit, export, models, miou).

The installed ``maxent-train`` console script is :func:`cocodag_apps.cli.maxent_main`: these commands plus
``predict``, which lives in the top layer because it uses oodscore's scores. This module never imports that layer;
``python -m maxent_train`` (what ``torchrun -m maxent_train fit ...`` runs) gives these commands alone.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated

import typer

from cocodag.atomic import atomic_write_json
from cocodag.cli_utils import user_errors
from cocodag.outputs import disk_errors, prepare_output

# the choices of the options, from the library's one definition (typer lists and enforces them); cheap: no torch
from .choices import (
    Compression,
    FrozenBN,
    LogitsDtype,
    LogitsResolution,
    LrSchedule,
    McDtype,
    MomentsOf,
    ObjectiveName,
    OptimTarget,
)

HELP = "Fine-tuning (MaxEnt, PEBAL, Balanced Energy) on cocodag shards; logit and MC-dropout export."

#: ``--device`` of every command (a plain string: cocodag.device.resolve_device checks it, one line when wrong)
DEVICE_HELP = "auto (cuda when available), cpu, cuda or cuda:N."
MODEL_KWARGS_HELP = ("Model options passed to its factory: KEY=VALUE[,KEY=VALUE...] (int/float/bool/str, e.g. "
                     "output_stride=16,dropout=0.1) or a JSON object; recorded in the checkpoint's metadata.")
RESOLUTION_HELP = ("native: logits and MC block at the network's output resolution, before its final upsampling "
                   "(the reader upsamples them with the recorded rule); label: upsampled to the label size (the "
                   "version-1 layout).")
MODEL_HELP = ("Model name (`maxent-train models`) when the checkpoint has no metadata (a released file, e.g. "
              "deeplabv3plus_wrn38 for NVIDIA's cityscapes_best.pth), or to override it.")
OBJECTIVE_HELP = ("Training objective (maxent_train.objectives): maxent (meta-ood's; --lambda, --optim-target), "
                  "pebal or balanced-energy (one extra output, the abstention channel, grown from a C-class --init "
                  "as PEBAL does; they train the model's final classifier block by default).")
OBJECTIVE_KWARGS_HELP = ("The objective's parameters: KEY=VALUE[,KEY=VALUE...] (values read as JSON when they parse, "
                         "e.g. pebal: m_out=-5,energy_weight=0.2; balanced-energy: alpha=4,prior=[...]; maxent "
                         "takes --lambda and --optim-target) or a JSON object; recorded in config.json and the "
                         "checkpoint. Unknown names are refused with the valid ones.")
TRAIN_ONLY_HELP = ("Train only the parameters whose names match these globs (repeat the option or separate them by "
                   "commas, e.g. 'final.*'); the others are frozen. Default: the objective's (maxent: all; pebal, "
                   "balanced-energy: the model's final classifier block, final.* for WRN38).")
FROZEN_BN_HELP = ("BatchNorm layers with no trained parameter: train = batch statistics, running statistics keep "
                  "updating (PEBAL's and Balanced Energy's code: the whole network in train mode); eval = frozen "
                  "statistics.")
LR_SCHEDULE_HELP = ("constant, or poly: lr·(1 - i/T)^power with T = epochs x batches per epoch, set after each step "
                    "for the next one and floored at 1e-8, as PEBAL's code does (maxent_train.schedule).")


# CLI parameter name -> FitConfig field (only where they differ)
_FIT_RENAMES = {"lambda_": "lam"}


def fit(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help="cocodag dataset directory (with manifest.json).")] = None,
    model: Annotated[str | None, typer.Option(help="Model name (`maxent-train models`) or pkg.module:factory "
                                                   "(default: the one an --init of ours names).")] = None,
    model_kwargs: Annotated[str | None, typer.Option(help=MODEL_KWARGS_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory: config.json, log.jsonl, checkpoints (locked "
                                                  "while the run goes: OUT/.lock).")] = None,
    init: Annotated[Path | None, typer.Option(help="Initial weights: a released checkpoint as it is (NVIDIA/meta-ood, "
                                                   "SML, VainF, PEBAL; see the README) or one of ours (which names "
                                                   "its --model and --model-kwargs); strict key check.")] = None,
    num_classes: Annotated[int, typer.Option(help="Number of in-distribution classes.")] = 19,
    epochs: Annotated[int, typer.Option(help="Epochs over the original stream (meta-ood: 4).")] = 4,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps in total.")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size per process.")] = 8,
    lr: Annotated[float, typer.Option(help="Adam learning rate (the base rate of --lr-schedule).")] = 1e-5,
    lr_schedule: Annotated[LrSchedule, typer.Option(help=LR_SCHEDULE_HELP)] = "constant",
    lr_power: Annotated[float, typer.Option(help="Exponent of the poly schedule (PEBAL: 0.9).")] = 0.9,
    weight_decay: Annotated[float, typer.Option(help="Adam's weight decay (L2 added to the gradient; PEBAL and "
                                                      "Balanced Energy: 0).")] = 0.0,
    objective: Annotated[ObjectiveName, typer.Option(help=OBJECTIVE_HELP)] = "maxent",
    objective_kwargs: Annotated[str | None, typer.Option(help=OBJECTIVE_KWARGS_HELP)] = None,
    train_only: Annotated[list[str] | None, typer.Option(metavar="PATTERN", help=TRAIN_ONLY_HELP)] = None,
    frozen_bn: Annotated[FrozenBN, typer.Option(help=FROZEN_BN_HELP)] = "train",
    lambda_: Annotated[float, typer.Option("--lambda", help="maxent: λ, the weight of the OOD term (1-λ on ID "
                                                           "pixels).")] = 0.9,
    optim_target: Annotated[OptimTarget, typer.Option(help="maxent: entropy (meta-ood soft targets) or logit (the "
                                                           "seed's).")]
    = "entropy",
    embedding_img_interval: Annotated[int, typer.Option(help="Every k-th batch is a DAG batch (0 = none, 1 = all).")]
    = 0,
    coco_fraction: Annotated[float, typer.Option(help="COCO crops per epoch as a fraction of the Cityscapes count "
                                                      "(meta-ood: 0.1).")] = 0.1,
    block_size: Annotated[int, typer.Option(help="Shuffle unit: runs of this many consecutive crops of a shard "
                                                 "(1 = per-sample shuffle; larger = longer reads).")] = 1,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="float16 autocast + GradScaler (CUDA only; "
                                                               "ignored on CPU).")] = False,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes (results do not depend on it).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of data order, flips and dropout.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue OUT/checkpoint-last.pt at its step.")] = False,
    checkpoint_every: Annotated[int, typer.Option(help="Write checkpoint-last.pt every N steps (and each epoch).")]
    = 500,
    recreate_optimizer_each_epoch: Annotated[bool, typer.Option(
        "--recreate-optimizer-each-epoch/--keep-optimizer",
        help="Fresh Adam at each epoch as meta-ood does (default), or keep its moments.")] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    config: Annotated[Path | None, typer.Option(help="run.toml or an earlier run's config.json; CLI flags "
                                                     "given explicitly override it.")] = None,
) -> None:
    """Fine-tune a segmentation network on cocodag shards with a training objective (MaxEnt by default; PEBAL,
    Balanced Energy) (resumable; DDP under torchrun)."""
    # imported when the command runs: `maxent-train --help` does not load torch
    from .models import parse_model_kwargs
    from .train import FitConfig, load_config_file
    from .train import fit as run_fit

    with user_errors():
        values = dict(ctx.params)
        values.pop("config", None)
        values.pop("resume", None)
        opts = load_config_file(config) if config is not None else {}
        merged = {}
        for name, value in values.items():
            field = _FIT_RENAMES.get(name, name)
            source = ctx.get_parameter_source(name)   # typer vendors click: compare by name
            explicit = source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
            if not explicit and field in opts:
                merged[field] = opts[field]
            else:
                merged[field] = value
        for k in ("data", "out", "init"):
            if merged.get(k) is not None:
                merged[k] = str(merged[k])
        merged["train_only"] = list(merged["train_only"]) if merged.get("train_only") else None  # unset: ()
        merged["model_kwargs"] = parse_model_kwargs(merged.get("model_kwargs"))
        cfg = FitConfig(**{k: v for k, v in merged.items() if k in FitConfig.field_names()})
        summary = run_fit(cfg, resume=resume)
        if summary.get("is_main", True):
            typer.echo(f"{summary['steps']} steps, last loss {summary['last_loss']:.5f}; {summary['final']}",
                       err=True)


def export(
    checkpoint: Annotated[Path, typer.Option(help="Model checkpoint (model-final.pt, checkpoint-last.pt, or a "
                                                  "state_dict with --model).")],
    out: Annotated[Path, typer.Option(help="Output logits.h5 (written via .tmp + rename; locked while the export "
                                           "runs: OUT.lock).")],
    data: Annotated[Path | None, typer.Option(help="A cocodag dataset directory as input.")] = None,
    kinds: Annotated[str, typer.Option(help="Shard kinds to export from --data, comma-separated.")] = "dag",
    images: Annotated[Path | None, typer.Option(help="An evaluation-set root as input (with --preset).")] = None,
    preset: Annotated[str, typer.Option(help="Evaluation-set preset of --images (cocodag.formats.evalsets).")
                      ] = "standard",
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    model_kwargs: Annotated[str | None, typer.Option(help=MODEL_KWARGS_HELP)] = None,
    num_classes: Annotated[int | None, typer.Option(help="Classes when the checkpoint has no metadata.")] = None,
    batch_size: Annotated[int, typer.Option(help="Samples read per shard access (--data only).")] = 4,
    sliding_window: Annotated[bool, typer.Option("--sliding-window", help="Full-resolution inference in windows.")]
    = False,
    window: Annotated[int, typer.Option(help="Sliding-window size (pixels).")] = 1024,
    stride: Annotated[int, typer.Option(help="Sliding-window stride (pixels).")] = 512,
    mc_samples: Annotated[int, typer.Option(help="MC-dropout passes T (0 = no mc/* block; 1 is refused: no "
                                                 "moments). Refused when no dropout reaches the logits.")] = 0,
    mc_dropout: Annotated[float | None, typer.Option(
        help="Insert test-time Dropout2d(P) before the final classifier, for models without dropout on their output "
             "path (e.g. SML's); a deviation from the trained network, recorded in mc/ attrs.")] = None,
    moment_order: Annotated[int, typer.Option(help="Highest central moment K (orders 2..K stored).")] = 4,
    moments_of: Annotated[MomentsOf, typer.Option(help="Moments of logits (paper) or softmax probs (seed code).")]
    = "logits",
    mc_dtype: Annotated[McDtype, typer.Option(help="dtype of the mc/* datasets.")] = "float32",
    logits_resolution: Annotated[LogitsResolution, typer.Option(help=RESOLUTION_HELP)] = "native",
    logits_dtype: Annotated[LogitsDtype, typer.Option(help="dtype of the stored logits.")] = "float16",
    store_images: Annotated[bool, typer.Option("--store-images", help="Keep downsized RGB for overlays.")] = False,
    image_max_side: Annotated[int, typer.Option(help="Longest side of stored images.")] = 512,
    limit: Annotated[int | None, typer.Option(help="Export at most N images.")] = None,
    compression: Annotated[Compression, typer.Option(
        help="HDF5 compression of the big datasets (no lzf: h5py's LZF encoder is not byte-deterministic).")
    ] = "none",
    sml_stats: Annotated[Path | None, typer.Option(help="Also write SML statistics JSON (per predicted class "
                                                        "mean/std/count of the max logit).")] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the MC-dropout masks.")] = 0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Write logits (and optional MC-dropout moments / SML stats) for a dataset or an evaluation set; under
    torchrun the frames are split across the processes (one GPU each) and rank 0 merges them into one file."""
    from .export import ExportOptions, export_logits
    from .models import parse_model_kwargs

    with user_errors():
        opts = ExportOptions(
            checkpoint=str(checkpoint), out=str(out), data=str(data) if data else None,
            kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()), images=str(images) if images else None,
            preset=preset, model=model, num_classes=num_classes, model_kwargs=parse_model_kwargs(model_kwargs),
            batch_size=batch_size, sliding_window=sliding_window, window=window, stride=stride,
            mc_samples=mc_samples, mc_dropout=mc_dropout,
            moment_order=moment_order, moments_of=moments_of, mc_dtype=mc_dtype,
            logits_resolution=logits_resolution, logits_dtype=logits_dtype,
            store_images=store_images, image_max_side=image_max_side, limit=limit, compression=compression,
            sml_stats=str(sml_stats) if sml_stats else None, device=device, seed=seed, progress=progress)
        summary = export_logits(opts)
        if summary.get("is_main", True):
            typer.echo(f"{summary['num_images']} images -> {summary['out']}", err=True)


def models() -> None:
    """List registered model names."""
    from .models import list_models

    for name in list_models():
        typer.echo(name)


def miou(
    checkpoint: Annotated[Path, typer.Option(help="Model checkpoint (model-final.pt or a state_dict with --model).")],
    cityscapes: Annotated[Path, typer.Option(help="Cityscapes-layout root (leftImg8bit/, gtFine/).")],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "val",
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    model_kwargs: Annotated[str | None, typer.Option(help=MODEL_KWARGS_HELP)] = None,
    num_classes: Annotated[int | None, typer.Option(help="Classes when the checkpoint has no metadata.")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the result as JSON here.")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate at most N frames.")] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Closed-set segmentation quality: mIoU and pixel accuracy on a Cityscapes-layout split."""
    from .models import parse_model_kwargs
    from .segeval import evaluate_segmentation

    with user_errors():
        kwargs = parse_model_kwargs(model_kwargs)
        if out is not None:
            prepare_output(out, kind="file", option="--out")
        res = evaluate_segmentation(checkpoint, cityscapes, split=split, device=device, limit=limit,
                                    progress=progress, model=model, model_kwargs=kwargs, num_classes=num_classes)
        if out is not None:
            with disk_errors(out):
                atomic_write_json(out, res)
        typer.echo(f"mIoU {100 * res['miou']:.2f}  pixel acc {100 * res['pixel_acc']:.2f}  ({res['n_frames']} frames)")
        typer.echo(json.dumps({k: round(v, 4) for k, v in res["iou"].items() if v is not None}))


# CLI name -> command function, in the order `--help` lists them.
COMMANDS: dict[str, Callable[..., None]] = {"fit": fit, "export": export, "models": models, "miou": miou}


def create_app(commands: Mapping[str, Callable[..., None]] = COMMANDS) -> typer.Typer:
    """A fresh typer app with ``commands`` (CLI name -> function) registered under their names."""
    app = typer.Typer(help=HELP, no_args_is_help=True, pretty_exceptions_show_locals=False, add_completion=False)
    for name, fn in commands.items():
        app.command(name)(fn)
    return app


app = create_app()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
