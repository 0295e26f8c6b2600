"""Writing the demo world as the real trees: Cityscapes (leftImg8bit + gtFine), COCO (instances JSON + JPEGs), the
anomaly evaluation layout, and a README; frames are drawn in parallel, each from its own seeded generator."""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..atomic import atomic_write_bytes
from ..errors import CocodagError
from ..labels import LABEL_ID_TO_TRAIN_ID
from ..progress import progress_bar
from ._coco import (
    DEFAULT_COCO_IMAGE_SIZE,
    EXCLUDED_CATEGORIES,
    PROXY_CATEGORIES,
    PROXY_SHAPES,
    PROXY_TEXTURES,
    render_coco_image,
)
from ._objects import ANOMALY_SHAPES, ANOMALY_TEXTURES
from ._street import render_anomaly_frame, render_street

STREAM_TRAIN, STREAM_VAL, STREAM_ANOMALY, STREAM_COCO = 0, 1, 2, 3
TRAIN_CITIES = ("demoville", "synthburg")
VAL_CITIES = ("valtown",)

DEFAULT_FRAMES = 60
DEFAULT_VAL_FRAMES = 20
DEFAULT_ANOMALY_FRAMES = 20
DEFAULT_COCO_IMAGES = 80
DEFAULT_FRAME_SIZE = (1024, 512)


def frame_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of one frame/image: derived from (seed, stream, index) only, so workers never matter."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream), int(index)]))


def parse_size(text: str, option: str = "--frame-size", minimum: tuple[int, int] = (64, 32)) -> tuple[int, int]:
    """Parse ``"WxH"`` into ``(W, H)``.

    Raises
    ------
    CocodagError
        One line naming ``option``, the expected form and the value received.
    """
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match:
        raise CocodagError(f"{option}: expected WxH with positive integers (e.g. 1024x512), got {text!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if width < minimum[0] or height < minimum[1]:
        raise CocodagError(f"{option}: expected at least {minimum[0]}x{minimum[1]}, got {width}x{height}")
    return width, height


def cityscapes_stem(city: str, index: int) -> str:
    return f"{city}_{index:06d}_000019"


def anomaly_name(index: int) -> str:
    return f"demo_anomaly_{index:04d}"


def coco_image_id(index: int) -> int:
    return 100000 + index


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)   # readers see the old file or the new one, never half of one


def _write_png(path: Path, array: np.ndarray, rgb: bool = False) -> None:
    pixels = np.ascontiguousarray(array[..., ::-1]) if rgb else array
    ok, buf = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover
        raise CocodagError(f"{path}: PNG encoding failed")
    _write_bytes(path, buf.tobytes())


def _street_job(root: Path, split: str, stream: int, index: int, seed: int, size: tuple[int, int]) -> str:
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    city = cities[index % len(cities)]
    stem = cityscapes_stem(city, index)
    rgb, label_ids = render_street(frame_rng(seed, stream, index), *size)
    _write_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rgb, rgb=True)
    gt = root / "gtFine" / split / city
    _write_png(gt / f"{stem}_gtFine_labelIds.png", label_ids)
    _write_png(gt / f"{stem}_gtFine_labelTrainIds.png", LABEL_ID_TO_TRAIN_ID[label_ids])
    return stem


def _anomaly_job(root: Path, index: int, seed: int, size: tuple[int, int]) -> str:
    name = anomaly_name(index)
    rgb, label, roi = render_anomaly_frame(frame_rng(seed, STREAM_ANOMALY, index), *size)
    _write_png(root / "images" / f"{name}.png", rgb, rgb=True)
    _write_png(root / "labels" / f"{name}.png", label)
    _write_png(root / "roi" / f"{name}.png", roi)
    return name


def _coco_job(root: Path, index: int, seed: int, size: tuple[int, int]) -> tuple[dict[str, Any], list[dict]]:
    """Draw and write one COCO image; its image record and its annotations."""
    bgr, annotations = render_coco_image(frame_rng(seed, STREAM_COCO, index), index, size)
    image_id = coco_image_id(index)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
    _write_bytes(root / "train2017" / f"{image_id:012d}.jpg", buf.tobytes())
    return {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": int(bgr.shape[1]),
            "height": int(bgr.shape[0]), "license": 1, "date_captured": "2017-01-01 00:00:00"}, annotations


def _check_sizes(frame_size: tuple[int, int] | str,
                 coco_image_size: tuple[int, int] | str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(W, H) of street frames and of COCO images, from tuples or ``"WxH"`` strings, checked against the minimums."""
    if isinstance(frame_size, str):
        frame_size = parse_size(frame_size, "--frame-size")
    if isinstance(coco_image_size, str):
        coco_image_size = parse_size(coco_image_size, "--coco-image-size", minimum=(64, 64))
    frame_w, frame_h = (int(frame_size[0]), int(frame_size[1]))
    coco_w, coco_h = (int(coco_image_size[0]), int(coco_image_size[1]))
    if frame_w < 64 or frame_h < 32:
        raise CocodagError(f"--frame-size: expected at least 64x32, got {frame_w}x{frame_h}")
    if coco_w < 64 or coco_h < 64:
        raise CocodagError(f"--coco-image-size: expected at least 64x64, got {coco_w}x{coco_h}")
    return (frame_w, frame_h), (coco_w, coco_h)


def _run_jobs(run: Callable[[Any], Any], jobs: list, workers: int, progress: bool) -> list:
    """``run`` over ``jobs`` in order (joblib processes when ``workers`` > 1), with a progress bar."""
    bar = progress_bar(total=len(jobs), desc="demo world", unit="img", disable=not progress, leave=False)
    if workers == 1:
        results = (run(job) for job in jobs)
    else:
        # joblib costs ~0.1 s to import, and `cocodag --help` imports this package (for its defaults)
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=workers, return_as="generator")(delayed(run)(job) for job in jobs)
    collected = []
    for result in results:
        collected.append(result)
        bar.update()
    bar.close()
    return collected


def _coco_instances(coco_results: list[tuple[dict[str, Any], list[dict]]]) -> dict[str, Any]:
    """The ``instances_train2017.json`` content from the per-image (image record, annotations) results."""
    # every category is listed, used or not (real COCO lists all 80)
    categories = [{"id": c, "name": n, "supercategory": s}
                  for c, n, s in sorted(PROXY_CATEGORIES + EXCLUDED_CATEGORIES)]
    images, annotations = [], []
    for image, image_annotations in coco_results:
        images.append(image)
        for k, annotation in enumerate(image_annotations):
            public = {key: v for key, v in annotation.items() if not key.startswith("_")}
            annotations.append({"id": image["id"] * 100 + k + 1, "image_id": image["id"], **public})
    return {
        "info": {"description": "cocodag demo world (synthetic COCO-format proxies)", "version": "1.0",
                 "year": 2017, "contributor": "cocodag", "date_created": "2017/09/01", "url": ""},
        "licenses": [{"id": 1, "name": "CC0 1.0 (synthetic)",
                      "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "images": images, "annotations": annotations, "categories": categories,
    }


_README = """cocodag demo world (synthetic; generated by `cocodag demo-data`)
================================================================

seed {seed}; street frames {fw}x{fh}: {frames} train, {val} val, {anom} anomaly; {coco} COCO-style images {cw}x{ch}.

cityscapes/   Cityscapes layout: leftImg8bit/{{train,val}}/<city>/<city>_<seq>_<frame>_leftImg8bit.png (RGB) and
              gtFine/{{train,val}}/<city>/<stem>_gtFine_labelIds.png (official labelIds) + _gtFine_labelTrainIds.png.
              Street scenes in perspective: road with lane markings, curbs/sidewalks, terrain, buildings with windows,
              walls, fences, tree lines, sky, cars, poles with signs/lights, trees, persons; ego-vehicle hood
              (labelId 1) and an unlabeled strip (labelId 0) at the bottom.
coco/         COCO layout: annotations/instances_train2017.json (instances format, polygon segmentations, a few
              iscrowd=1 RLE regions) + train2017/<id:012d>.jpg. Objects are textured proxies:
              shapes {proxy_shapes} x textures {proxy_textures}; every 5th image also holds an excluded
              (Cityscapes-overlapping) category; every 10th image is smaller than 480x480.
anomaly/      evaluation layout (docs/formats.md section 2): images/<name>.png, labels/<name>.png
              (0 = in-distribution, 1 = anomaly, 255 = void), roi/<name>.png (1 = road incl. the anomalies), meta.json.
              Anomalies stand on the road and use held-out shapes {anomaly_shapes} x textures {anomaly_textures},
              never used by the COCO proxies.
"""


def generate_demo_world(out_dir: Path | str, *, frames: int = DEFAULT_FRAMES, val_frames: int = DEFAULT_VAL_FRAMES,
                        anomaly_frames: int = DEFAULT_ANOMALY_FRAMES,
                        frame_size: tuple[int, int] | str = DEFAULT_FRAME_SIZE,
                        coco_images: int = DEFAULT_COCO_IMAGES,
                        coco_image_size: tuple[int, int] | str = DEFAULT_COCO_IMAGE_SIZE,
                        seed: int = 0, workers: int = 1, progress: bool = True) -> dict[str, Any]:
    """Write the demo world under ``out_dir`` (layout in :mod:`cocodag.demo_world`).

    Parameters
    ----------
    out_dir : folder to write (created; files already there are overwritten).
    frames, val_frames, anomaly_frames : number of Cityscapes train / val frames and anomaly test frames.
    frame_size : (W, H) of street frames (or ``"WxH"``); coco_image_size : (W, H) of the COCO-style images.
    coco_images : number of COCO-style images.
    seed : the only source of randomness; the bytes never depend on ``workers``.
    workers : joblib processes drawing frames in parallel.
    progress : show a progress bar (:func:`cocodag.progress.progress_bar`) on stderr.

    Returns
    -------
    dict with the written roots and counts.

    Raises
    ------
    CocodagError
        On a bad count or size (naming the option).
    """
    for name, value, lowest in (("frames", frames, 1), ("val_frames", val_frames, 0),
                                ("anomaly_frames", anomaly_frames, 0), ("coco_images", coco_images, 0),
                                ("workers", workers, 1)):
        if not isinstance(value, (int, np.integer)) or value < lowest:
            raise CocodagError(f"--{name.replace('_', '-')}: expected an integer >= {lowest}, got {value!r}")
    (frame_w, frame_h), (coco_w, coco_h) = _check_sizes(frame_size, coco_image_size)
    out = Path(out_dir)
    cityscapes, coco, anomaly = out / "cityscapes", out / "coco", out / "anomaly"
    jobs = ([("street", cityscapes, "train", STREAM_TRAIN, i) for i in range(frames)]
            + [("street", cityscapes, "val", STREAM_VAL, i) for i in range(val_frames)]
            + [("anomaly", anomaly, None, STREAM_ANOMALY, i) for i in range(anomaly_frames)]
            + [("coco", coco, None, STREAM_COCO, i) for i in range(coco_images)])

    def run(job: tuple[str, Path, str, int, int]) -> Any:
        kind, root, split, stream, index = job
        if kind == "street":
            return _street_job(root, split, stream, index, seed, (frame_w, frame_h))
        if kind == "anomaly":
            return _anomaly_job(root, index, seed, (frame_w, frame_h))
        return _coco_job(root, index, seed, (coco_w, coco_h))

    results = _run_jobs(run, jobs, workers, progress)
    anomaly_names = [r for job, r in zip(jobs, results) if job[0] == "anomaly"]
    instances = _coco_instances([r for job, r in zip(jobs, results) if job[0] == "coco"])
    if coco_images:
        _write_bytes(coco / "annotations" / "instances_train2017.json", json.dumps(instances).encode())
    if anomaly_frames:
        meta = {"format": "cocodag-evalset", "version": 1, "preset": "demo", "region": "all",
                "names": anomaly_names, "label_convention": "0/1/255"}
        _write_bytes(anomaly / "meta.json", json.dumps(meta, indent=2).encode())
    readme = _README.format(seed=seed, fw=frame_w, fh=frame_h, frames=frames, val=val_frames, anom=anomaly_frames,
                            coco=coco_images, cw=coco_w, ch=coco_h, proxy_shapes="/".join(PROXY_SHAPES),
                            proxy_textures="/".join(PROXY_TEXTURES), anomaly_shapes="/".join(ANOMALY_SHAPES),
                            anomaly_textures="/".join(ANOMALY_TEXTURES))
    _write_bytes(out / "README.txt", readme.encode())
    return {"out": str(out), "cityscapes": str(cityscapes), "coco": str(coco), "anomaly": str(anomaly),
            "train_frames": frames, "val_frames": val_frames, "anomaly_frames": anomaly_frames,
            "coco_images": coco_images, "coco_annotations": len(instances["annotations"]),
            "frame_size": [frame_w, frame_h]}
