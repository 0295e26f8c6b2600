"""`cocodag demo-data`: a thin typer shell over :func:`cocodag.demo_world.generate_demo_world`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import demo_world as dw
from .cli_utils import user_errors


def demo_data(
    out: Annotated[Path, typer.Argument(help="Output folder (created); gets cityscapes/, coco/, anomaly/, README.txt.",
                                        file_okay=False)],
    frames: Annotated[int, typer.Option(help="Number of Cityscapes train frames.")] = dw.DEFAULT_FRAMES,
    val_frames: Annotated[int, typer.Option(help="Number of Cityscapes val frames.")] = dw.DEFAULT_VAL_FRAMES,
    anomaly_frames: Annotated[int, typer.Option(help="Number of anomaly test frames (anomaly/, 0/1/255 labels).")
                              ] = dw.DEFAULT_ANOMALY_FRAMES,
    coco_images: Annotated[int, typer.Option(help="Number of COCO-style proxy images.")] = dw.DEFAULT_COCO_IMAGES,
    frame_size: Annotated[str, typer.Option(help="Street frame size WxH (Cityscapes itself is 2048x1024).")
                          ] = "{}x{}".format(*dw.DEFAULT_FRAME_SIZE),
    coco_image_size: Annotated[str, typer.Option(help="COCO image size WxH (every 10th image is made < 480x480).")
                               ] = "{}x{}".format(*dw.DEFAULT_COCO_IMAGE_SIZE),
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")] = 0,
    workers: Annotated[int, typer.Option(help="Parallel worker processes (output does not depend on it).")] = 1,
) -> None:
    """Write the synthetic demo world in real formats: Cityscapes tree, COCO instances JSON, anomaly test set."""
    with user_errors():
        size = dw.parse_size(frame_size, "--frame-size")
        csize = dw.parse_size(coco_image_size, "--coco-image-size", minimum=(64, 64))
        info = dw.generate_demo_world(out, frames=frames, val_frames=val_frames, anomaly_frames=anomaly_frames,
                                      frame_size=size, coco_images=coco_images, coco_image_size=csize, seed=seed,
                                      workers=workers, progress=True)
    typer.echo(f"demo world in {out}: {info['train_frames']} train + {info['val_frames']} val frames "
               f"({size[0]}x{size[1]}), {info['anomaly_frames']} anomaly frames, {info['coco_images']} COCO images "
               f"({info['coco_annotations']} annotations)")
