"""Typer commands `cocodag build | verify | inspect` (registered by :mod:`cocodag.cli`). Thin shells only."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# Only the choice types at import time (no h5py, no pycocotools): `cocodag --help` stays quick. The commands import
# the library where they run.
from .cityscapes import LabelSource
from .cli_utils import user_errors
from .formats.choices import Compression
from .labels import CocoBackground

_COMPRESSION_HELP = "HDF5 compression of image/label (gzip: level 1). Default measured by bench/build.py."


def build(
    out: Annotated[Path, typer.Option(
        help="Output dataset directory (shards + manifest.json); required. One build at a time holds it (a second "
             "one is refused, naming the holder); a rerun of the same command resumes and repairs it.")],
    cityscapes: Annotated[Path | None, typer.Option(
        help="Cityscapes root (holds leftImg8bit/ and gtFine/).")] = None,
    coco: Annotated[Path | None, typer.Option(
        help="COCO root (annotations/instances_<split>.json + <split>/).")] = None,
    split: Annotated[str, typer.Option(help="Cityscapes split to read frames from.")] = "train",
    coco_split: Annotated[str, typer.Option(
        help="COCO split: reads annotations/instances_<split>.json, images <split>/.")] = "train2017",
    coco_json: Annotated[Path | None, typer.Option(
        help="Explicit COCO JSON (overrides the --coco layout; a bare list of annotations is accepted).")] = None,
    coco_images: Annotated[Path | None, typer.Option(
        help="Explicit COCO image folder (overrides the --coco layout).")] = None,
    crop: Annotated[int, typer.Option(help="Crop size S of every sample (S x S).")] = 480,
    shard_size: Annotated[int, typer.Option(help="Target number of crops per shard.")] = 128,
    workers: Annotated[int, typer.Option(help="Worker processes (joblib/loky); output bytes do not depend on it.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed; sample i depends only on (seed, stream, i).")] = 0,
    object_scale: Annotated[str, typer.Option(
        help="Object scale range MIN:MAX (1:1 = original COCO scale, the seed's).")] = "1:1",
    min_object_area: Annotated[float, typer.Option(
        help="Minimum COCO annotation area (px) of a pasteable object.")] = 1000.0,
    min_proxy_size: Annotated[int | None, typer.Option(
        help="Minimum proxy image width and height (default: --crop).")] = None,
    dag_samples: Annotated[int | None, typer.Option(
        help="Number of pasted frames (each gives up to 4 crops); default one per Cityscapes frame.")] = None,
    cityscapes_crops_per_frame: Annotated[int, typer.Option(
        help="Random crops (with flip) per Cityscapes frame in the cityscapes stream.")] = 1,
    coco_samples: Annotated[int | None, typer.Option(
        help="Crops in the coco stream; default one per proxy image.")] = None,
    streams: Annotated[str, typer.Option(
        help="Comma list of streams to build: dag,cityscapes,coco.")] = "dag,cityscapes,coco",
    coco_background: Annotated[CocoBackground, typer.Option(
        help="Label of COCO background: ignore (255, ours) or road (0, meta-ood).")] = "ignore",
    compression: Annotated[Compression, typer.Option(help=_COMPRESSION_HELP)] = "none",
    feather: Annotated[float, typer.Option(
        help="Gaussian sigma (px) of a feathered paste edge; 0 = hard paste (ours, off).")] = 0.0,
    paste_window: Annotated[str, typer.Option(
        help="Centroid window R0:R1:C0:C1 on a 1024x2048 frame, scaled to the frame size.")] = "250:774:250:1798",
    label_source: Annotated[LabelSource, typer.Option(
        help="Cityscapes labels: auto (labelTrainIds if present), labelIds, labelTrainIds.")] = "auto",
    shard_range: Annotated[str | None, typer.Option(
        help="Build only shard tasks A..B-1 (A:B) and write manifest.part-A-B.json. Range jobs may fill one --out at "
             "once (each locks the tasks it builds and waits for those another job holds); manifest.json is written "
             "by a run without --shard-range (the merge step), or by the last range job.")] = None,
    skip_bad: Annotated[bool, typer.Option(
        help="Skip corrupt/truncated/missing input files and COCO annotations that give no mask (degenerate "
             "polygons, polygons outside the image), and list them in the manifest.")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Replace a dataset in --out built with another config (not with --shard-range).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Build the COCO-DAG dataset: pasted crops (dag), Cityscapes crops, COCO proxy crops -> HDF5 shards."""
    from .build import BuildConfig, build_dataset, parse_range, parse_window

    with user_errors():
        cfg = BuildConfig(
            split=split, coco_split=coco_split, crop=crop, shard_size=shard_size, seed=seed,
            object_scale=parse_range(object_scale, "--object-scale"), min_object_area=min_object_area,
            min_proxy_size=min_proxy_size, dag_samples=dag_samples,
            cityscapes_crops_per_frame=cityscapes_crops_per_frame, coco_samples=coco_samples,
            streams=tuple(s.strip() for s in streams.split(",") if s.strip()), coco_background=coco_background,
            compression=compression, skip_bad=skip_bad, feather=feather, paste_window=parse_window(paste_window),
            label_source=label_source)
        res = build_dataset(cityscapes, coco, out, cfg, workers=workers, shard_range=shard_range,
                            overwrite=overwrite, progress=progress, coco_json=coco_json, coco_images=coco_images)
    counts = ", ".join(f"{k} {v}" for k, v in res.counts.items())
    state = "complete" if res.manifest is not None else "partial (other shard ranges pending)"
    typer.echo(f"{res.manifest_path}: {state}; {counts}; tasks built {res.built_tasks}, kept {res.kept_tasks}, "
               f"total {res.total_tasks}")
    if res.manifest is not None:
        d = res.manifest.get("dropped", {})
        if any(d.values()):
            typer.echo("dropped: " + ", ".join(f"{k} {v}" for k, v in d.items() if v))
        if res.manifest.get("skipped"):
            typer.echo(f"skipped bad files: {len(res.manifest['skipped'])} (listed in the manifest)")


def verify(
    dataset: Annotated[Path, typer.Argument(help="Dataset directory written by `cocodag build`.")],
) -> None:
    """Check a dataset: checksums, shapes, dtypes, label values, OOD+ID pixels in every DAG crop."""
    from .verify import verify_dataset

    with user_errors():
        summary = verify_dataset(dataset)
    typer.echo(f"{dataset}: OK; " + ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
               + f"; {summary['shards']} shards checked")


def inspect_cmd(
    dataset: Annotated[Path, typer.Argument(help="Dataset directory written by `cocodag build`.")],
    out: Annotated[Path | None, typer.Option(
        help="Write a contact sheet PNG of crops with the OOD mask outlined.")] = None,
    per_stream: Annotated[int, typer.Option(help="Crops per stream on the contact sheet.")] = 8,
) -> None:
    """Counts per stream, OOD-pixel fraction, and an optional contact sheet."""
    from .inspect import inspect_dataset

    with user_errors():
        info = inspect_dataset(dataset, sheet=out, per_stream=per_stream)
    for kind, s in info["streams"].items():
        typer.echo(f"{kind:11s} {s['samples']:7d} samples  {s['shards']:4d} shards  "
                   f"OOD pixels {s['ood_fraction']:.4f}  ignore {s['ignore_fraction']:.4f}")
    if out is not None:
        typer.echo(f"contact sheet: {out}")
