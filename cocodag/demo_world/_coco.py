"""COCO-style proxy images: textured shapes (``PROXY_SHAPES`` x ``PROXY_TEXTURES``) on an indoor or outdoor
background, annotated as COCO instances (polygons, a few ``iscrowd=1`` RLE regions)."""
from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from ._canvas import frac, jitter, smooth_noise

PROXY_SHAPES = ("blob", "star", "ellipse")
PROXY_TEXTURES = ("stripes", "checker", "dots")

# Real COCO category ids / names / supercategories.
PROXY_CATEGORIES = (
    (17, "cat", "animal"), (18, "dog", "animal"), (28, "umbrella", "accessory"), (33, "suitcase", "accessory"),
    (38, "kite", "sports"), (44, "bottle", "kitchen"), (62, "chair", "furniture"), (88, "teddy bear", "indoor"),
)
# The categories that overlap Cityscapes classes: images holding any of them are excluded by the builder (meta-ood).
EXCLUDED_CATEGORIES = (
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (4, "motorcycle", "vehicle"),
    (6, "bus", "vehicle"), (8, "truck", "vehicle"), (10, "traffic light", "outdoor"), (13, "stop sign", "outdoor"),
)
DEFAULT_COCO_IMAGE_SIZE = (640, 480)

_PROXY_PALETTE = ((200, 60, 50), (50, 110, 200), (230, 200, 60), (60, 160, 80), (240, 240, 235), (30, 30, 30),
                  (150, 90, 50), (120, 200, 230))


def _proxy_polygon(rng: np.random.Generator, shape: str, cx: float, cy: float, radius: float) -> np.ndarray:
    """(N, 2) outline of a proxy shape of size ``radius`` centred on (cx, cy)."""
    if shape == "blob":     # a circle with a few smooth radial harmonics
        n = int(rng.integers(24, 40))
        angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
        radii = np.ones(n)
        for k in (2, 3, 5):
            radii += rng.uniform(0, 0.25 / k * 2) * np.sin(k * angles + rng.uniform(0, 6.3))
        radii *= radius
    elif shape == "star":
        points = int(rng.integers(5, 9))
        angles = np.linspace(0, 2 * np.pi, 2 * points, endpoint=False) + rng.uniform(0, 6.3)
        radii = np.where(np.arange(2 * points) % 2 == 0, radius, radius * rng.uniform(0.4, 0.6))
    elif shape == "ellipse":
        angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        a, b, tilt = radius, radius * rng.uniform(0.45, 0.9), rng.uniform(0, np.pi)
        x, y = a * np.cos(angles), b * np.sin(angles)
        return np.stack([cx + x * np.cos(tilt) - y * np.sin(tilt), cy + x * np.sin(tilt) + y * np.cos(tilt)], 1)
    else:  # pragma: no cover
        raise ValueError(shape)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)


def _proxy_texture(rng: np.random.Generator, texture: str, height: int, width: int, x0: int,
                   y0: int) -> np.ndarray:
    """Two palette colours in a rotated pattern over the box at (x0, y0) (image coordinates, so the pattern does
    not depend on where the box starts)."""
    two = np.asarray(_PROXY_PALETTE, np.float32)[rng.choice(len(_PROXY_PALETTE), 2, replace=False)]
    yy, xx = np.mgrid[y0:y0 + height, x0:x0 + width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    period = rng.uniform(6, 22)
    if texture == "stripes":
        first = frac(u / period) < 0.5
    elif texture == "checker":
        first = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    elif texture == "dots":
        first = (frac(u / period) - 0.5) ** 2 + (frac(v / period) - 0.5) ** 2 < 0.09
    else:  # pragma: no cover
        raise ValueError(texture)
    return np.where(first[..., None], two[0], two[1])


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(height, width, 3) float32: a wall over a wooden floor, or grass / sand under a pale sky."""
    if rng.random() < 0.5:   # indoor: wall over floor
        split = int(height * rng.uniform(0.45, 0.7))
        img = np.empty((height, width, 3), np.float32)
        img[:split] = jitter(rng, (200, 190, 170), 30)
        img[split:] = jitter(rng, (140, 100, 70), 30)
        planks = frac(np.arange(width, dtype=np.float32) / rng.uniform(30, 60)) < 0.04
        img[split:, planks] *= 0.8
    else:                    # outdoor: grass / sand under a pale sky
        split = int(height * rng.uniform(0.3, 0.55))
        img = np.empty((height, width, 3), np.float32)
        img[:split] = jitter(rng, (160, 190, 225), 20)
        img[split:] = jitter(rng, [(100, 150, 70), (210, 190, 140)][rng.integers(2)], 20)
    img *= (1 + 0.1 * smooth_noise(rng, height, width, cells=4))[..., None]
    return img


def _polygon_area(polygon: np.ndarray) -> float:
    """Shoelace area of an (N, 2) polygon (how COCO's own polygon areas are computed)."""
    x, y = polygon[:, 0], polygon[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (as used by iscrowd=1 annotations): run lengths in column-major order, zeros first."""
    flat = np.asarray(mask, np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _draw_crowd(rng: np.random.Generator, img: np.ndarray) -> dict[str, Any]:
    """Many small objects as one ``iscrowd=1`` RLE region (drawn first: objects may cover it)."""
    height, width = img.shape[:2]
    category = PROXY_CATEGORIES[rng.integers(len(PROXY_CATEGORIES))]
    mask = np.zeros((height, width), np.uint8)
    bx, by = rng.uniform(0.05, 0.6) * width, rng.uniform(0.05, 0.6) * height
    for _ in range(int(rng.integers(6, 14))):
        cv2.circle(mask, (int(bx + rng.uniform(0, 0.3) * width), int(by + rng.uniform(0, 0.3) * height)),
                   int(rng.integers(3, 9)), 1, -1)
    img[mask.view(bool)] = jitter(rng, (90, 60, 160), 30)
    ys, xs = np.nonzero(mask)
    return {"category_id": category[0], "iscrowd": 1, "segmentation": _rle_uncompressed(mask),
            "area": int(mask.sum()),
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
            "_shape": "crowd", "_texture": "solid"}


def _apart(x: float, y: float, radius: float, placed: list[tuple[float, float, float]]) -> bool:
    """Whether a disc at (x, y) keeps clear of every ``placed`` disc (with some margin)."""
    return all((x - px) ** 2 + (y - py) ** 2 > (radius + pr) ** 2 * 1.3 for px, py, pr in placed)


def _draw_object(rng: np.random.Generator, img: np.ndarray, category: tuple[int, str, str],
                 placed: list[tuple[float, float, float]]) -> dict[str, Any] | None:
    """One textured proxy object, kept apart from the ``placed`` ones (so its visible mask equals its polygons);
    its annotation, or None when no free spot was found."""
    height, width = img.shape[:2]
    for _attempt in range(20):
        radius = rng.uniform(0.1, 0.25) * min(width, height)
        cx, cy = rng.uniform(radius * 1.05, width - radius * 1.05), rng.uniform(radius * 1.05, height - radius * 1.05)
        if _apart(cx, cy, radius, placed):
            break
    else:
        return None
    placed.append((cx, cy, radius))
    shape = PROXY_SHAPES[rng.integers(len(PROXY_SHAPES))]
    texture = PROXY_TEXTURES[rng.integers(len(PROXY_TEXTURES))]
    polygons = [_proxy_polygon(rng, shape, cx, cy, radius)]
    if rng.random() < 0.15:   # a second, detached part (multi-polygon segmentations occur in COCO)
        part_radius = radius * 0.25
        angle = rng.uniform(0, 2 * np.pi)
        px, py = cx + np.cos(angle) * radius * 1.6, cy + np.sin(angle) * radius * 1.6
        if (part_radius < px < width - part_radius and part_radius < py < height - part_radius
                and _apart(px, py, part_radius, placed[:-1])):
            polygons.append(_proxy_polygon(rng, "ellipse", px, py, part_radius))
    outline = np.concatenate(polygons)
    x0, y0 = max(int(outline[:, 0].min()), 0), max(int(outline[:, 1].min()), 0)
    x1 = min(int(math.ceil(outline[:, 0].max())) + 1, width)
    y1 = min(int(math.ceil(outline[:, 1].max())) + 1, height)
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    polygons = [np.round(p, 2) for p in polygons]      # what the JSON stores is what gets drawn
    cv2.fillPoly(mask, [np.round((p - (x0, y0)) * 16).astype(np.int32) for p in polygons], 1, cv2.LINE_8, 4)
    pattern = _proxy_texture(rng, texture, y1 - y0, x1 - x0, x0, y0)
    inside = mask.view(bool)
    img[y0:y1, x0:x1][inside] = pattern[inside]
    stored = np.concatenate(polygons)
    bx0, by0 = float(stored[:, 0].min()), float(stored[:, 1].min())
    return {
        "category_id": category[0], "iscrowd": 0,
        "segmentation": [[float(v) for v in p.reshape(-1)] for p in polygons],
        "area": round(sum(_polygon_area(p) for p in polygons), 2),
        "bbox": [round(bx0, 2), round(by0, 2), round(float(stored[:, 0].max()) - bx0, 2),
                 round(float(stored[:, 1].max()) - by0, 2)],
        "_shape": shape, "_texture": texture,
    }


def render_coco_image(rng: np.random.Generator, index: int, image_size: tuple[int, int] = DEFAULT_COCO_IMAGE_SIZE,
                      ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One COCO-style image (BGR uint8 for cv2) and its annotation dicts (``image_id``/``id`` filled by the caller;
    keys starting with ``_`` say which shape and texture were drawn, and are dropped from the JSON).

    Deterministic roles by index (so small runs exercise every filter): ``index % 5 == 2`` adds an excluded
    (Cityscapes-overlapping) category, ``index % 8 == 3`` adds an ``iscrowd=1`` RLE annotation, ``index % 10 == 7``
    makes the image smaller than 480x480.
    """
    width, height = image_size
    if index % 10 == 7:
        width, height = max(int(width * 0.6), 32), max(int(height * 0.6), 32)
        width, height = min(width, 470), min(height, 470)
    img = _background(rng, width, height)
    annotations = []
    if index % 8 == 3:
        annotations.append(_draw_crowd(rng, img))
    n = int(rng.integers(1, 5))
    categories = [PROXY_CATEGORIES[rng.integers(len(PROXY_CATEGORIES))] for _ in range(n)]
    if index % 5 == 2:
        categories[rng.integers(n)] = EXCLUDED_CATEGORIES[rng.integers(len(EXCLUDED_CATEGORIES))]
    placed: list[tuple[float, float, float]] = []
    for category in categories:
        annotation = _draw_object(rng, img, category, placed)
        if annotation is not None:
            annotations.append(annotation)
    img += rng.standard_normal((height, width, 1), dtype=np.float32) * 3.0
    bgr = np.clip(img + 0.5, 0, 255).astype(np.uint8)[..., ::-1]
    return np.ascontiguousarray(bgr), annotations
