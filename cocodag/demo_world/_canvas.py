"""Drawing primitives of the demo world: the pin-hole camera, the canvas (colour + labels + noise amplitudes) and
the small colour / noise helpers every drawing uses."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

CAMERA_HEIGHT = 1.3     # metres above the flat ground plane; world units are metres

#: ``texture(height, width) -> (height, width, 3)`` float32 colours of a bounding box
Texture = Callable[[int, int], np.ndarray]


@dataclass
class Camera:
    """A pin-hole camera ``CAMERA_HEIGHT`` above the ground, looking down the street (Z forward)."""

    width: int
    height: int
    focal: float        # focal length in pixels
    vanish_x: float     # column of the vanishing point
    horizon_y: float    # row of the horizon
    street_end: float   # depth (metres) where the street ends; the far skyline stands there

    def project(self, points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """(N, 3) world points (X right, Y up, Z forward) -> (N, 2) pixel coordinates."""
        points = np.asarray(points, dtype=np.float64)
        depth = np.maximum(points[:, 2], 0.05)
        return np.stack([self.vanish_x + self.focal * points[:, 0] / depth,
                         self.horizon_y + self.focal * (CAMERA_HEIGHT - points[:, 1]) / depth], 1)

    def pixels_per_metre(self, depth: float) -> float:
        return self.focal / max(depth, 0.05)


class Canvas:
    """RGB (float32) + labelIds + per-pixel noise amplitudes (fine grain, medium-scale blotches)."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.rgb = np.zeros((height, width, 3), np.float32)
        self.label = np.zeros((height, width), np.uint8)
        self.grain = np.zeros((height, width), np.float32)
        self.blotch = np.zeros((height, width), np.float32)

    def fill(self, points: np.ndarray | Sequence[Sequence[float]], colour: Any, label: int, grain: float = 3.0,
             blotch: float = 0.0, texture: Texture | None = None) -> None:
        """Fill a polygon ((N, 2) pixel coordinates); ``texture`` paints its bounding box instead of ``colour``."""
        points = np.asarray(points, np.float64)
        x0 = max(int(math.floor(points[:, 0].min())), 0)
        y0 = max(int(math.floor(points[:, 1].min())), 0)
        x1 = min(int(math.ceil(points[:, 0].max())) + 1, self.width)
        y1 = min(int(math.ceil(points[:, 1].max())) + 1, self.height)
        if x1 <= x0 or y1 <= y0:
            return
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        local = np.clip((points - (x0, y0)) * 16.0, -2**26, 2**26)   # 4 fractional bits: sub-pixel edges
        cv2.fillPoly(mask, [np.round(local).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        inside = mask.view(bool)
        if not inside.any():
            return
        box = self.rgb[y0:y1, x0:x1]
        box[inside] = texture(y1 - y0, x1 - x0)[inside] if texture is not None else np.asarray(colour, np.float32)
        self.label[y0:y1, x0:x1][inside] = label
        self.grain[y0:y1, x0:x1][inside] = grain
        self.blotch[y0:y1, x0:x1][inside] = blotch

    def fill_world(self, camera: Camera, points: np.ndarray | Sequence[Sequence[float]], colour: Any, label: int,
                   **style: Any) -> None:
        """Fill a polygon given in world coordinates ((N, 3) metres)."""
        self.fill(camera.project(np.asarray(points, np.float64)), colour, label, **style)

    def ellipse_world(self, camera: Camera, centre: Sequence[float], radius: float | tuple[float, float],
                      colour: Any, label: int, axis: str = "z", n: int = 20, **style: Any) -> None:
        """An ellipse of ``radius`` metres (one value, or (horizontal, vertical)) in the plane facing the camera
        (``axis="z"``) or in a side plane (``axis="x"``)."""
        angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
        cx, cy, cz = centre
        rx, ry = radius if isinstance(radius, tuple) else (radius, radius)
        if axis == "z":
            points = np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles), np.full_like(angles, cz)], 1)
        else:
            points = np.stack([np.full_like(angles, cx), cy + ry * np.sin(angles), cz + rx * np.cos(angles)], 1)
        self.fill_world(camera, points, colour, label, **style)


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int = 8) -> np.ndarray:
    """Smooth noise in [-1, 1] of shape (height, width): a coarse random grid upsampled bicubically."""
    grid_h, grid_w = max(2, cells * height // max(width, 1) + 2), cells + 2
    grid = rng.uniform(-1, 1, (grid_h, grid_w)).astype(np.float32)
    return np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), -1, 1)


def jitter(rng: np.random.Generator, base: Any, amount: float = 12.0) -> np.ndarray:
    """``base`` RGB colour with each channel moved by up to ``amount``, as float32."""
    return np.clip(np.asarray(base, np.float32) + rng.uniform(-amount, amount, 3), 0, 255).astype(np.float32)


def frac(values: Any) -> Any:
    """The fractional part (``values - floor(values)``), for periodic patterns."""
    return values - np.floor(values)


def colour(rgb: tuple[float, float, float]) -> np.ndarray:
    """A fixed RGB colour as a float32 array."""
    return np.asarray(rgb, np.float32)
