"""The objects placed in a street scene, sized in metres: cars, poles (signs, traffic lights, lamps), trees,
persons, and the held-out anomalies (``ANOMALY_SHAPES`` x ``ANOMALY_TEXTURES``) that stand on the road."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..labels import LABEL_IDS
from ._canvas import CAMERA_HEIGHT, Camera, Canvas, Texture, colour, jitter, smooth_noise

ANOMALY_SHAPES = ("cone", "box", "quadruped", "tire")
ANOMALY_TEXTURES = ("camouflage", "radial", "speckle")
ANOMALY_LABEL = 250      # internal label of anomaly pixels (never written to a labelIds file)

_ANOMALY_PALETTE = ((255, 120, 0), (170, 40, 200), (0, 200, 190), (240, 40, 150), (150, 230, 20), (250, 235, 60),
                    (60, 40, 20), (245, 245, 250))

Point3 = tuple[float, float, float]


def box_faces(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float) -> list[list[Point3]]:
    """The faces of an axis-aligned box the camera sees: the side facing the street's centre line (when the box is
    off-centre), the top (when below the camera) and the near face, in drawing order."""
    faces = []
    if x1 < 0:
        faces.append([(x1, y0, z0), (x1, y0, z1), (x1, y1, z1), (x1, y1, z0)])
    elif x0 > 0:
        faces.append([(x0, y0, z0), (x0, y0, z1), (x0, y1, z1), (x0, y1, z0)])
    if y1 < CAMERA_HEIGHT:
        faces.append([(x0, y1, z0), (x1, y1, z0), (x1, y1, z1), (x0, y1, z1)])
    faces.append([(x0, y0, z0), (x1, y0, z0), (x1, y1, z0), (x0, y1, z0)])
    return faces


def draw_box(canvas: Canvas, camera: Camera, x0: float, x1: float, y0: float, y1: float, z0: float, z1: float,
             base: Any, label: int, **style: Any) -> None:
    """An axis-aligned box, shaded: the side face darker, the top lighter than the near face."""
    base = np.asarray(base, np.float32)
    if x1 < 0:
        canvas.fill_world(camera, [(x1, y0, z0), (x1, y0, z1), (x1, y1, z1), (x1, y1, z0)], base * 0.8, label,
                          **style)
    elif x0 > 0:
        canvas.fill_world(camera, [(x0, y0, z0), (x0, y0, z1), (x0, y1, z1), (x0, y1, z0)], base * 0.8, label,
                          **style)
    if y1 < CAMERA_HEIGHT:
        canvas.fill_world(camera, [(x0, y1, z0), (x1, y1, z0), (x1, y1, z1), (x0, y1, z1)], base * 1.08, label,
                          **style)
    canvas.fill_world(camera, [(x0, y0, z0), (x1, y0, z0), (x1, y1, z0), (x0, y1, z0)], base, label, **style)


def _quad(x0: float, x1: float, y0: float, y1: float, z: float) -> list[Point3]:
    """A rectangle facing the camera at depth ``z``."""
    return [(x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)]


def draw_car(canvas: Canvas, camera: Camera, rng: np.random.Generator, x_centre: float, z_near: float) -> None:
    label = LABEL_IDS["car"]
    body = jitter(rng, [(200, 200, 205), (30, 30, 35), (150, 150, 155), (160, 30, 30), (30, 50, 120),
                        (40, 80, 50), (90, 90, 95)][rng.integers(7)], 12)
    glass = jitter(rng, (45, 55, 65), 10)
    width, length = rng.uniform(1.7, 1.9), rng.uniform(3.9, 4.7)
    body_top, cabin_top = rng.uniform(0.8, 0.95), rng.uniform(1.4, 1.55)
    x0, x1 = x_centre - width / 2, x_centre + width / 2
    z_far = z_near + length
    canvas.fill_world(camera, [(x0 - 0.1, 0, z_near - 0.1), (x1 + 0.1, 0, z_near - 0.1), (x1 + 0.1, 0, z_far),
                               (x0 - 0.1, 0, z_far)], colour((35, 35, 38)), LABEL_IDS["road"], grain=3)   # shadow
    side_x = x1 if x1 < 0 else (x0 if x0 > 0 else None)
    if side_x is not None:      # wheels on the side the camera sees
        for z_wheel in (z_near + 0.8, z_near + length - 0.8):
            canvas.ellipse_world(camera, (side_x, 0.33, z_wheel), 0.33, (20, 20, 22), label, axis="x", n=16)
    for x_wheel in (x0 + 0.05, x1 - 0.3):      # rear wheels below the near face
        canvas.fill_world(camera, [(x_wheel, 0, z_near + 0.2), (x_wheel + 0.25, 0, z_near + 0.2),
                                   (x_wheel + 0.25, 0.35, z_near + 0.2), (x_wheel, 0.35, z_near + 0.2)],
                          (20, 20, 22), label)
    draw_box(canvas, camera, x0, x1, 0.3, body_top, z_near, z_near + length, body, label, grain=2)
    draw_box(canvas, camera, x0 + 0.12, x1 - 0.12, body_top, cabin_top, z_near + 0.9, z_near + length - 0.9, glass,
             label, grain=2)
    # roof over the cabin (thin, body colour) and tail/head lights on the near face
    draw_box(canvas, camera, x0 + 0.15, x1 - 0.15, cabin_top - 0.06, cabin_top, z_near + 1.0, z_near + length - 1.0,
             body, label, grain=2)
    light = colour((200, 30, 30)) if rng.random() < 0.7 else colour((230, 230, 210))
    for x_light in (x0 + 0.08, x1 - 0.33):
        canvas.fill_world(camera, _quad(x_light, x_light + 0.25, 0.62, 0.78, z_near), light, label)
    canvas.fill_world(camera, _quad(x_centre - 0.25, x_centre + 0.25, 0.4, 0.52, z_near), (225, 225, 225), label)


def _traffic_sign(canvas: Canvas, camera: Camera, rng: np.random.Generator, x: float, z: float,
                  pole_height: float) -> None:
    label = LABEL_IDS["traffic sign"]
    y = rng.uniform(2.2, min(pole_height, 3.5))
    size = rng.uniform(0.5, 0.8)
    shape = rng.integers(3)
    rim = colour((200, 30, 35)) if rng.random() < 0.6 else colour((30, 70, 170))
    inner = colour((235, 235, 230)) if rng.random() < 0.6 else colour((240, 200, 30))
    if shape == 0:      # round
        canvas.ellipse_world(camera, (x, y, z - 0.1), size / 2, rim, label, n=18)
        canvas.ellipse_world(camera, (x, y, z - 0.11), size / 2.8, inner, label, n=18)
    elif shape == 1:    # triangle, its inner part shrunk towards the centre
        triangle = [(x - size / 2, y - size / 3, z - 0.1), (x + size / 2, y - size / 3, z - 0.1),
                    (x, y + size / 2, z - 0.1)]
        canvas.fill_world(camera, triangle, rim, label)
        canvas.fill_world(camera, [(px * 0.6 + x * 0.4, (py - y) * 0.6 + y, pz) for px, py, pz in triangle], inner,
                          label)
    else:               # square
        canvas.fill_world(camera, [(x - size / 2, y - size / 2, z - 0.1), (x + size / 2, y - size / 2, z - 0.1),
                                   (x + size / 2, y + size / 2, z - 0.1), (x - size / 2, y + size / 2, z - 0.1)],
                          rim if rng.random() < 0.5 else inner, label)


def _traffic_light(canvas: Canvas, camera: Camera, rng: np.random.Generator, x: float, z: float,
                   pole_height: float) -> None:
    label = LABEL_IDS["traffic light"]
    top = pole_height - 0.2
    canvas.fill_world(camera, [(x - 0.17, top - 0.9, z - 0.15), (x + 0.17, top - 0.9, z - 0.15),
                               (x + 0.17, top, z - 0.15), (x - 0.17, top, z - 0.15)], (35, 38, 35), label)
    lit = rng.integers(3)
    for i, rgb in enumerate([(230, 40, 30), (240, 190, 30), (40, 220, 90)]):
        lamp = colour(rgb) if i == lit else colour(rgb) * 0.3
        canvas.ellipse_world(camera, (x, top - 0.15 - 0.3 * i, z - 0.16), 0.1, lamp, label, n=12)


def draw_pole(canvas: Canvas, camera: Camera, rng: np.random.Generator, x: float, z: float) -> None:
    """A pole at the curb carrying a traffic sign, a traffic light or a street lamp's arm."""
    height = rng.uniform(4.0, 8.0)
    radius = rng.uniform(0.07, 0.12)
    metal = jitter(rng, (120, 120, 115), 20)
    scale = camera.pixels_per_metre(z)
    foot, top = camera.project(np.array([(x, 0, z), (x, height, z)]))
    half_width = max(radius * scale, 0.7)      # at least a visible line
    canvas.fill([(foot[0] - half_width, foot[1]), (foot[0] + half_width, foot[1]), (top[0] + half_width, top[1]),
                 (top[0] - half_width, top[1])], metal, LABEL_IDS["pole"], grain=2)
    kind = rng.choice(3, p=[0.45, 0.3, 0.25])
    if kind == 0:
        _traffic_sign(canvas, camera, rng, x, z, height)
    elif kind == 1:
        _traffic_light(canvas, camera, rng, x, z, height)
    else:   # street lamp: an arm over the road
        reach = 1.6 if x < 0 else -1.6
        canvas.fill_world(camera, [(x, height - 0.1, z), (x + reach, height - 0.1, z), (x + reach, height + 0.05, z),
                                   (x, height + 0.05, z)], metal, LABEL_IDS["pole"])
        canvas.fill_world(camera, [(x + reach - 0.3, height - 0.25, z), (x + reach + 0.3, height - 0.25, z),
                                   (x + reach + 0.3, height - 0.05, z), (x + reach - 0.3, height - 0.05, z)],
                          metal * 0.8, LABEL_IDS["pole"])


def draw_tree(canvas: Canvas, camera: Camera, rng: np.random.Generator, x: float, z: float) -> None:
    """A trunk and 3-5 overlapping leafy ellipses."""
    label = LABEL_IDS["vegetation"]
    trunk_height = rng.uniform(1.8, 3.0)
    canvas.fill_world(camera, [(x - 0.15, 0, z), (x + 0.15, 0, z), (x + 0.12, trunk_height + 0.5, z),
                               (x - 0.12, trunk_height + 0.5, z)], jitter(rng, (85, 70, 55), 10), label, grain=6)
    leaves = jitter(rng, (70, 110, 45), 15)
    crown = rng.uniform(1.3, 2.6)
    for _ in range(int(rng.integers(3, 6))):
        centre = (x + rng.uniform(-0.6, 0.6) * crown, trunk_height + crown * rng.uniform(0.6, 1.2),
                  z - rng.uniform(0, 0.5))
        canvas.ellipse_world(camera, centre, (crown * rng.uniform(0.6, 1.0), crown * rng.uniform(0.5, 0.9)),
                             jitter(rng, leaves, 10), label, n=18, grain=12, blotch=18)


def draw_person(canvas: Canvas, camera: Camera, rng: np.random.Generator, x: float, z: float) -> None:
    """A pedestrian: legs (mid-step), torso, arms and head, scaled to a random height."""
    label = LABEL_IDS["person"]
    height = rng.uniform(1.6, 1.9)
    s = height / 1.75      # proportions are given for a 1.75 m person
    trousers = jitter(rng, [(40, 45, 70), (30, 30, 30), (110, 100, 85)][rng.integers(3)], 15)
    shirt = jitter(rng, [(180, 40, 40), (40, 90, 160), (220, 220, 215), (60, 60, 60), (200, 170, 60)]
                   [rng.integers(5)], 15)
    skin = jitter(rng, [(225, 185, 160), (170, 120, 90), (110, 75, 55)][rng.integers(3)], 10)
    step = rng.uniform(-0.12, 0.12)
    for leg_x in (-0.12, 0.02):
        canvas.fill_world(camera, [(x + leg_x + step, 0, z), (x + leg_x + 0.11 + step, 0, z),
                                   (x + leg_x + 0.11, 0.85 * s, z), (x + leg_x, 0.85 * s, z)], trousers, label)
    canvas.fill_world(camera, [(x - 0.2, 0.82 * s, z), (x + 0.2, 0.82 * s, z), (x + 0.22, 1.45 * s, z),
                               (x - 0.22, 1.45 * s, z)], shirt, label)
    for arm_x in (-0.27, 0.2):
        canvas.fill_world(camera, [(x + arm_x, 0.9 * s, z), (x + arm_x + 0.07, 0.9 * s, z),
                                   (x + arm_x + 0.07, 1.42 * s, z), (x + arm_x, 1.42 * s, z)], shirt * 0.9, label)
    canvas.ellipse_world(camera, (x, 1.58 * s, z), (0.1 * s, 0.13 * s), skin, label, n=14)


def anomaly_texture(rng: np.random.Generator, texture: str) -> Texture:
    """A texture function (height, width) -> (height, width, 3) float32 from the held-out anomaly textures."""
    colours = np.asarray(_ANOMALY_PALETTE, np.float32)[rng.choice(len(_ANOMALY_PALETTE), 3, replace=False)]
    seed = int(rng.integers(2**31))

    def paint(height: int, width: int) -> np.ndarray:
        own_rng = np.random.default_rng(seed)      # every polygon of one anomaly gets the same pattern
        if texture == "camouflage":
            coarse = smooth_noise(own_rng, height, width, cells=4)
            fine = smooth_noise(own_rng, height, width, cells=6)
            index = (coarse > 0.1).astype(np.int64) + (fine > 0.25)
            return colours[np.minimum(index, 2)]
        if texture == "radial":
            yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
            distance = np.sqrt(((xx - width * 0.4) / max(width, 1)) ** 2
                               + ((yy - height * 0.35) / max(height, 1)) ** 2) * 1.6
            t = np.clip(distance, 0, 1)[..., None]
            return colours[0] * (1 - t) + colours[1] * t
        if texture == "speckle":
            pick = own_rng.integers(0, 3, (height, width))
            return colours[pick] * own_rng.uniform(0.7, 1.0, (height, width, 1)).astype(np.float32)
        raise ValueError(texture)  # pragma: no cover
    return paint


def _fill_all(canvas: Canvas, camera: Camera, polygons: Sequence[Any], **style: Any) -> None:
    for polygon in polygons:
        canvas.fill_world(camera, polygon, 0, ANOMALY_LABEL, **style)


def draw_anomaly(canvas: Canvas, camera: Camera, rng: np.random.Generator, x: float, z: float, shape: str,
                 texture: str) -> None:
    """One held-out anomaly standing on the ground at (x, z); sizes in metres."""
    style: dict[str, Any] = dict(grain=2.0, texture=anomaly_texture(rng, texture))
    label = ANOMALY_LABEL
    if shape == "cone":
        height, radius = rng.uniform(0.4, 1.0), rng.uniform(0.2, 0.4)
        _fill_all(canvas, camera, [_trapezoid(x, radius, radius * 0.15, 0, height, z),
                                   _quad(x - radius * 1.2, x + radius * 1.2, 0, 0.06, z)], **style)
    elif shape == "box":
        size_x, size_y, size_z = rng.uniform(0.4, 1.2), rng.uniform(0.3, 1.0), rng.uniform(0.4, 1.2)
        _fill_all(canvas, camera, box_faces(x - size_x / 2, x + size_x / 2, 0, size_y, z, z + size_z), **style)
    elif shape == "quadruped":
        length = rng.uniform(0.6, 1.5)
        leg = length * 0.55
        facing = 1 if rng.random() < 0.5 else -1
        _fill_all(canvas, camera, [_quad(x + leg_x * length, x + leg_x * length + 0.07 * length, 0, leg, z)
                                   for leg_x in (-0.4, -0.25, 0.25, 0.4)], **style)
        canvas.ellipse_world(camera, (x, leg + 0.12 * length, z), (0.5 * length, 0.2 * length), 0, label, n=20,
                             **style)
        neck = [(x + facing * 0.35 * length, leg + 0.1 * length, z),
                (x + facing * 0.5 * length, leg + 0.1 * length, z),
                (x + facing * 0.62 * length, leg + 0.45 * length, z),
                (x + facing * 0.5 * length, leg + 0.5 * length, z)]
        canvas.fill_world(camera, neck, 0, label, **style)
        canvas.ellipse_world(camera, (x + facing * 0.62 * length, leg + 0.5 * length, z),
                             (0.13 * length, 0.09 * length), 0, label, n=14, **style)
    elif shape == "tire":
        radius = rng.uniform(0.3, 0.5)
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        outer = np.stack([x + radius * np.cos(angles), radius + radius * np.sin(angles), np.full_like(angles, z)], 1)
        inner = np.stack([x + 0.5 * radius * np.cos(angles[::-1]), radius + 0.5 * radius * np.sin(angles[::-1]),
                          np.full_like(angles, z)], 1)
        # an annulus as one polygon: outer ring, a bridge to the inner ring, inner ring reversed
        canvas.fill_world(camera, np.concatenate([outer, outer[:1], inner[-1:], inner, inner[-1:]]), 0, label,
                          **style)
    else:  # pragma: no cover - guarded by the tuples
        raise ValueError(shape)


def _trapezoid(x: float, bottom_half: float, top_half: float, y0: float, y1: float, z: float) -> list[Point3]:
    """A trapezoid facing the camera, centred on ``x``: half-widths ``bottom_half`` at ``y0``, ``top_half`` at y1."""
    return [(x - bottom_half, y0, z), (x + bottom_half, y0, z), (x + top_half, y1, z), (x - top_half, y1, z)]
