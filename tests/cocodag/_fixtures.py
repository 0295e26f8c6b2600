"""Tiny Cityscapes / COCO trees in the real on-disk formats, drawn by hand (no cocodag code involved)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

# A few official Cityscapes labelIds (cityscapesScripts labels.py) and their trainIds, written out independently of
# cocodag.labels so tests compare against a separate table.
LABEL_IDS = {"unlabeled": 0, "road": 7, "sidewalk": 8, "building": 11, "pole": 17, "vegetation": 21, "sky": 23,
             "car": 26, "license plate": 255}
TRAIN_IDS = {0: 255, 7: 0, 8: 1, 11: 2, 17: 5, 21: 8, 23: 10, 26: 13, 255: 255}
CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
              {"id": 3, "name": "car", "supercategory": "vehicle"},
              {"id": 17, "name": "cat", "supercategory": "animal"},
              {"id": 23, "name": "bear", "supercategory": "animal"},
              {"id": 63, "name": "couch", "supercategory": "furniture"}]


def draw_label_ids(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    lab = np.full((h, w), LABEL_IDS["sky"], np.uint8)
    hz = h // 3 + int(rng.integers(-h // 10, h // 10 + 1))
    lab[hz:, :] = LABEL_IDS["building"]
    lab[hz:hz + h // 6, : w // 4] = LABEL_IDS["vegetation"]
    road_top = h // 2 + int(rng.integers(0, h // 8))
    lab[road_top:, :] = LABEL_IDS["road"]
    lab[road_top:road_top + h // 10, :] = LABEL_IDS["sidewalk"]
    cx = int(rng.integers(w // 8, w - w // 4))
    lab[road_top:road_top + h // 6, cx:cx + w // 8] = LABEL_IDS["car"]
    lab[h // 4:road_top, w - w // 10: w - w // 10 + 2] = LABEL_IDS["pole"]
    lab[-3:, :] = LABEL_IDS["unlabeled"]
    return lab


def render(lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RGB image: a colour per label plus noise (so crops differ)."""
    colors = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    img = colors[lab].astype(np.int16) + rng.integers(-20, 21, lab.shape + (3,), dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_cityscapes(root: Path, split: str = "train", n: int = 4, size: tuple[int, int] = (256, 128), seed: int = 0,
                    cities: tuple[str, ...] = ("aachen", "bremen"), train_ids: bool = False) -> list[Path]:
    """Write ``n`` frames as leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png + gtFine labelIds (+ trainIds)."""
    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(n):
        city = cities[i % len(cities)]
        stem = f"{city}_{i:06d}_000019"
        idir, gdir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
        idir.mkdir(parents=True, exist_ok=True)
        gdir.mkdir(parents=True, exist_ok=True)
        lab = draw_label_ids(w, h, rng)
        img = render(lab, rng)
        p = idir / f"{stem}_leftImg8bit.png"
        cv2.imwrite(str(p), img[..., ::-1])
        cv2.imwrite(str(gdir / f"{stem}_gtFine_labelIds.png"), lab)
        if train_ids:
            tl = np.vectorize(lambda v: TRAIN_IDS.get(int(v), 255))(lab).astype(np.uint8)
            cv2.imwrite(str(gdir / f"{stem}_gtFine_labelTrainIds.png"), tl)
        paths.append(p)
    return paths


def _poly_rect(x, y, w, h):
    return [float(x), float(y), float(x + w), float(y), float(x + w), float(y + h), float(x), float(y + h)]


def _poly_tri(x, y, s):
    return [float(x), float(y + s), float(x + s / 2), float(y), float(x + s), float(y + s)]


def make_coco(root: Path, split: str = "train2017", n_ok: int = 4, size: tuple[int, int] = (96, 80), seed: int = 0,
              extras: bool = True) -> Path:
    """Write ROOT/annotations/instances_<split>.json + ROOT/<split>/*.jpg with polygon objects.

    ``n_ok`` proxy images (cat/bear/couch polygons, one object of area >= 300 each plus a small one); with ``extras``:
    one image with a person (excluded), one with a car (excluded), one too small (40x40), one crowd-only image.
    """
    rng = np.random.default_rng(seed)
    idir = root / split
    idir.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    aid = 1000

    def add_image(iid, w, h, objs):
        nonlocal aid
        img = np.clip(rng.normal(120, 30, (h, w, 3)), 0, 255).astype(np.uint8)
        for cat, poly, crowd in objs:
            pts = np.array(poly, np.float64).reshape(-1, 2)
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            cv2.fillPoly(img, [np.round(pts).astype(np.int32)], color)
            if crowd:
                seg = {"counts": [w * h], "size": [h, w]}  # uncompressed RLE, all zeros: valid and trivial
                area = 0.0
            else:
                seg = [poly]
                x, y = pts[:, 0], pts[:, 1]
                area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
            anns.append({"id": aid, "image_id": iid, "category_id": cat, "segmentation": seg, "area": float(area),
                         "bbox": [float(pts[:, 0].min()), float(pts[:, 1].min()),
                                  float(np.ptp(pts[:, 0])), float(np.ptp(pts[:, 1]))], "iscrowd": int(crowd)})
            aid += 1
        name = f"{iid:012d}.jpg"
        cv2.imwrite(str(idir / name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({"id": iid, "file_name": name, "width": w, "height": h, "license": 1})

    w, h = size
    for i in range(n_ok):
        s = 24 + 4 * i
        objs = [((17, 23, 63)[i % 3], _poly_rect(10 + i, 12, s, s + 6) if i % 2 else _poly_tri(10 + i, 10, s + 10), 0),
                (23, _poly_rect(w - 20, h - 16, 8, 8), 0)]  # a small one (area 64) for --min-object-area tests
        add_image(100 + i, w, h, objs)
    if extras:
        add_image(200, w, h, [(1, _poly_rect(5, 5, 30, 40), 0), (17, _poly_rect(50, 20, 30, 30), 0)])
        add_image(201, w, h, [(3, _poly_rect(5, 5, 30, 30), 0), (63, _poly_rect(50, 20, 30, 30), 0)])
        add_image(202, 40, 40, [(17, _poly_rect(5, 5, 25, 25), 0)])
        add_image(203, w, h, [(63, None, 1)] if False else [(63, _poly_rect(5, 5, 30, 30), 1)])
    data = {"info": {"description": "cocodag test fixture"}, "licenses": [], "images": images,
            "annotations": anns, "categories": CATEGORIES}
    jp = root / "annotations" / f"instances_{split}.json"
    jp.write_text(json.dumps(data))
    return jp


def make_inputs(tmp: Path, n_frames: int = 4, **kw) -> tuple[Path, Path]:
    cs, co = tmp / "cityscapes", tmp / "coco"
    make_cityscapes(cs, n=n_frames, **kw)
    make_coco(co)
    return cs, co


# Options that fit the fixtures: 256x128 frames, 96x80 COCO images.
SMALL = ["--crop", "64", "--min-object-area", "200", "--shard-size", "8", "--no-progress"]
