"""Street scenes: the layout of one frame (sky, far skyline, ground, façades, objects sorted by depth, ego-vehicle
hood) and the finishing noise; :func:`render_street` and :func:`render_anomaly_frame` are the public entry points."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from ..errors import CocodagError
from ..labels import LABEL_IDS
from ._canvas import CAMERA_HEIGHT, Camera, Canvas, colour, frac, jitter, smooth_noise
from ._objects import (
    ANOMALY_LABEL,
    ANOMALY_SHAPES,
    ANOMALY_TEXTURES,
    draw_anomaly,
    draw_car,
    draw_person,
    draw_pole,
    draw_tree,
)

# what a stretch of façade line holds
_BUILDING, _TREES, _FENCE, _WALL = 0, 1, 2, 3


def _draw_sky(canvas: Canvas, camera: Camera, rng: np.random.Generator) -> None:
    """A vertical gradient (clear, overcast or hazy) with smooth clouds."""
    kind = rng.choice(3, p=[0.55, 0.3, 0.15])
    top = jitter(rng, [(70, 120, 190), (150, 155, 165), (120, 150, 190)][kind], 15)
    horizon = jitter(rng, [(175, 200, 225), (200, 200, 205), (215, 205, 190)][kind], 12)
    t = np.clip(np.arange(canvas.height, dtype=np.float32) / max(camera.horizon_y, 1.0), 0, 1)[:, None, None]
    canvas.rgb[:] = top * (1 - t) + horizon * t
    clouds = smooth_noise(rng, canvas.height, canvas.width, cells=6)
    cover = np.clip((clouds - rng.uniform(-0.2, 0.5)) * 1.5, 0, 1)[..., None] * rng.uniform(0.3, 0.9)
    canvas.rgb[:] = canvas.rgb * (1 - cover) + np.float32(235) * cover
    canvas.label[:] = LABEL_IDS["sky"]
    canvas.grain[:] = 1.0


def _draw_far_skyline(canvas: Canvas, camera: Camera, rng: np.random.Generator, sky_mean: np.ndarray) -> None:
    """A vertical plane at the street's end with blocks of buildings / trees; hazy (mixed with the sky colour)."""
    dx = np.arange(canvas.width, dtype=np.float32) + 0.5 - camera.vanish_x
    x_far = dx * camera.street_end / camera.focal           # world X of each column on the far plane
    lo, hi = float(x_far.min()), float(x_far.max())
    edges = [lo]
    while edges[-1] < hi:
        edges.append(edges[-1] + rng.uniform(6, 25))
    n_blocks = len(edges)
    heights = rng.uniform(4, 28, n_blocks).astype(np.float32)
    is_tree = rng.random(n_blocks) < 0.3
    heights[is_tree] = rng.uniform(5, 12, int(is_tree.sum()))
    colours = np.stack([jitter(rng, (150, 145, 140), 30) for _ in range(n_blocks)])
    block = np.clip(np.searchsorted(np.asarray(edges[1:]), x_far), 0, n_blocks - 1)     # block of each column
    column_height = heights[block] + np.where(is_tree[block], 1.5 * np.sin(x_far * 0.9) + np.sin(x_far * 2.3 + 1.0),
                                              0)
    dy = np.arange(canvas.height, dtype=np.float32)[:, None] + 0.5 - camera.horizon_y
    y_world = CAMERA_HEIGHT - dy * camera.street_end / camera.focal
    visible = (y_world >= -0.5) & (y_world < column_height[None, :])
    tree = visible & is_tree[block][None, :]
    haze = 0.45
    column_colour = colours[block] * (1 - haze) + np.asarray(sky_mean, np.float32) * haze
    tree_colour = jitter(rng, (80, 110, 60), 15) * (1 - haze) + np.asarray(sky_mean, np.float32) * haze
    rgb = np.broadcast_to(column_colour[None], (canvas.height, canvas.width, 3))
    canvas.rgb[visible] = rgb[visible]
    canvas.rgb[tree] = tree_colour
    canvas.label[visible] = LABEL_IDS["building"]
    canvas.label[tree] = LABEL_IDS["vegetation"]
    canvas.grain[visible] = 2.0
    canvas.blotch[tree] = 6.0


def _draw_ground(canvas: Canvas, camera: Camera, rng: np.random.Generator, road: tuple[float, float],
                 sidewalks: tuple[float, float]) -> np.ndarray:
    """Road (lanes ``road`` = (left X, right X)), curbs, sidewalks (widths ``sidewalks``) and terrain on the ground
    plane; returns the boolean road-surface mask (full frame)."""
    road_mask = np.zeros((canvas.height, canvas.width), bool)
    first_row = int(math.ceil(camera.horizon_y + camera.focal * CAMERA_HEIGHT / camera.street_end))
    if first_row >= canvas.height:
        return road_mask
    dy = np.arange(first_row, canvas.height, dtype=np.float32)[:, None] + 0.5 - camera.horizon_y
    dx = np.arange(canvas.width, dtype=np.float32)[None, :] + 0.5 - camera.vanish_x
    z = (camera.focal * CAMERA_HEIGHT) / dy                     # depth of each row, (h', 1)
    x = dx * (CAMERA_HEIGHT / dy)                               # world X of each pixel, (h', w)
    road_left, road_right = road
    walk_left, walk_right = sidewalks
    curb = 0.25
    # materials: 0 road, 1 curb, 2 sidewalk, 3 terrain
    material = np.full(x.shape, 3, np.uint8)
    material[(x >= road_left - walk_left) & (x <= road_right + walk_right)] = 2
    material[(x >= road_left - curb) & (x <= road_right + curb)] = 1
    material[(x >= road_left) & (x <= road_right)] = 0
    asphalt = jitter(rng, np.full(3, rng.uniform(70, 120)) + (0, 0, 4), 6)   # grey, little tint
    curb_colour = jitter(rng, (165, 162, 158), 15)
    sidewalk = jitter(rng, [(140, 138, 135), (160, 125, 115), (120, 122, 128)][rng.integers(3)], 12)
    terrain = jitter(rng, [(105, 135, 65), (130, 115, 80), (115, 140, 90)][rng.integers(3)], 12)
    palette = np.stack([asphalt, curb_colour, sidewalk, terrain])
    rgb = palette[material]
    # sidewalk paving: darker joints on a grid in world coordinates
    tile = rng.uniform(0.4, 0.8)
    joints = (material == 2) & ((frac(x / tile) < 0.06) | (frac(z / tile) < 0.06 * np.ones_like(x)))
    rgb[joints] *= 0.85
    # lane markings: dashed lines between lanes, solid edge lines (world-space widths)
    marks = np.zeros(x.shape, bool)
    lane_width = rng.uniform(2.8, 3.6)
    lane_edge = road_left + lane_width
    while lane_edge < road_right - 1.0:
        marks |= (np.abs(x - lane_edge) < 0.07) & (frac(z / 9.0 + rng.random()) < 0.4)
        lane_edge += lane_width
    if rng.random() < 0.6:
        marks |= (np.abs(x - (road_left + 0.35)) < 0.06) | (np.abs(x - (road_right - 0.35)) < 0.06)
    marks &= material == 0
    rgb[marks] = jitter(rng, (215, 215, 205), 15)
    labels = np.array([LABEL_IDS["road"], LABEL_IDS["sidewalk"], LABEL_IDS["sidewalk"], LABEL_IDS["terrain"]],
                      np.uint8)
    canvas.rgb[first_row:] = rgb
    canvas.label[first_row:] = labels[material]
    canvas.grain[first_row:] = np.array([6.0, 4.0, 4.0, 8.0], np.float32)[material]
    canvas.blotch[first_row:] = np.array([5.0, 2.0, 3.0, 12.0], np.float32)[material]
    road_mask[first_row:] = material == 0
    return road_mask


def _draw_facade_line(canvas: Canvas, camera: Camera, rng: np.random.Generator, x_line: float) -> None:
    """The façade line X = ``x_line`` (left of the camera if negative): stretches of buildings with windows, tree
    lines, fences and low walls."""
    dx = np.arange(canvas.width, dtype=np.float32) + 0.5 - camera.vanish_x
    with np.errstate(divide="ignore"):
        column_depth = np.where(dx * x_line > 0, camera.focal * x_line / dx, np.inf)
    columns = np.nonzero((column_depth > 0.3) & (column_depth < camera.street_end))[0]
    if columns.size == 0:
        return
    first_col, end_col = int(columns.min()), int(columns.max()) + 1
    z = column_depth[first_col:end_col].astype(np.float32)
    # stretches along the street, each with its own kind, height and colours
    ends, kinds, heights, colours, window_pitch, window_colours, floor_heights = [], [], [], [], [], [], []
    position = -rng.uniform(0, 10)
    while position < camera.street_end:
        position += rng.uniform(8, 30)
        ends.append(position)
        kind = rng.choice(4, p=[0.62, 0.2, 0.1, 0.08])
        kinds.append(kind)
        heights.append([rng.uniform(8, 26), rng.uniform(4, 11), rng.uniform(3, 8), rng.uniform(0.8, 2.5)][kind])
        colours.append(jitter(rng, [(175, 165, 150), (150, 150, 155), (165, 110, 90), (205, 200, 190),
                                    (185, 175, 140)][rng.integers(5)], 15))
        window_pitch.append(rng.uniform(1.8, 3.2))
        window_colours.append(jitter(rng, [(55, 65, 80), (120, 140, 160), (40, 40, 45)][rng.integers(3)], 12))
        floor_heights.append(rng.uniform(2.9, 3.6))
    stretch_ends = np.asarray(ends, np.float32)
    stretch = np.clip(np.searchsorted(stretch_ends, z), 0, len(stretch_ends) - 1)     # stretch of each column
    column_kind = np.asarray(kinds)[stretch]
    column_start = np.concatenate([[0.0], stretch_ends[:-1]]).astype(np.float32)[stretch]
    phase = rng.uniform(0, 6.3, 2)
    bumps = 1.2 * np.sin(z * 0.8 + phase[0]) + 0.8 * np.sin(z * 2.1 + phase[1])
    column_height = np.asarray(heights, np.float32)[stretch] + np.where(column_kind == _TREES, bumps, 0)
    fence_height = rng.uniform(1.0, 1.8)
    dy = np.arange(canvas.height, dtype=np.float32)[:, None] + 0.5 - camera.horizon_y
    y_world = CAMERA_HEIGHT - dy * (z / camera.focal)[None, :]     # world height of each pixel on the façade
    visible = (y_world >= 0) & (y_world < column_height[None, :])
    if not visible.any():
        return
    rgb = np.broadcast_to(np.asarray(colours, np.float32)[stretch][None], y_world.shape + (3,)).copy()
    label = np.full(y_world.shape, LABEL_IDS["building"], np.uint8)
    grain = np.full(y_world.shape, 3.0, np.float32)
    blotch = np.full(y_world.shape, 2.0, np.float32)
    kind_2d = column_kind[None, :]
    # windows on buildings: a grid in (Z along the façade, height), shop windows at ground level
    building = (kind_2d == _BUILDING)
    floor_height = np.asarray(floor_heights, np.float32)[stretch][None, :]
    pitch = np.asarray(window_pitch, np.float32)[stretch][None, :]
    u = frac((z[None, :] - column_start[None, :]) / pitch)
    v = frac(y_world / floor_height)
    window = (building & (y_world > floor_height) & (y_world < column_height[None, :] - 1.0) & (u > 0.25) & (u < 0.72)
              & (v > 0.3) & (v < 0.8))
    shop = building & (y_world > 0.3) & (y_world < floor_height * 0.75) & (u > 0.1) & (u < 0.85)
    glass = np.broadcast_to(np.asarray(window_colours, np.float32)[stretch][None], rgb.shape)
    rgb[window | shop] = glass[window | shop]
    ledge = building & (np.abs(y_world - column_height[None, :] + 0.3) < 0.3)
    rgb[ledge] *= 0.8
    # trees / fence+trees / low walls
    trees = (kind_2d == _TREES) | ((kind_2d == _FENCE) & (y_world >= fence_height))
    rgb[trees] = jitter(rng, (75, 105, 50), 15)
    label[trees] = LABEL_IDS["vegetation"]
    grain[trees], blotch[trees] = 10.0, 16.0
    fence = (kind_2d == _FENCE) & (y_world < fence_height)
    post = frac(z / 2.5)[None, :] < 0.08
    mesh = frac(z[None, :] * 4 + y_world * 6) < 0.3
    fence_colour = jitter(rng, (150, 140, 130), 20)
    rgb[fence] = np.where((post | mesh)[fence][:, None], fence_colour,
                          fence_colour * 0.6 + colour((75, 105, 50)) * 0.4)
    label[fence] = LABEL_IDS["fence"]
    wall = np.broadcast_to(kind_2d == _WALL, y_world.shape)
    rgb[wall] = jitter(rng, (150, 145, 135), 15)
    label[wall] = LABEL_IDS["wall"]
    grain[wall] = 5.0
    bricks = wall & (frac(y_world / 0.3) < 0.12)
    rgb[bricks] *= 0.85
    # shading: the façade gets darker towards the ground
    rgb *= (0.85 + 0.15 * np.clip(y_world / 10, 0, 1))[..., None]
    columns_slice = (slice(None), slice(first_col, end_col))
    canvas.rgb[columns_slice][visible] = rgb[visible]
    canvas.label[columns_slice][visible] = label[visible]
    canvas.grain[columns_slice][visible] = grain[visible]
    canvas.blotch[columns_slice][visible] = blotch[visible]


def _draw_ego_hood(canvas: Canvas, rng: np.random.Generator) -> None:
    """Ego-vehicle hood (labelId 1) and an unlabeled strip below it (labelId 0), as in Cityscapes frames."""
    hood = rng.uniform(0.07, 0.13)
    x = np.arange(canvas.width, dtype=np.float32) / canvas.width - 0.5 - rng.uniform(-0.05, 0.05)
    top = canvas.height * (1 - hood + 0.35 * hood * (2 * x) ** 2)
    rows = np.arange(canvas.height, dtype=np.float32)[:, None]
    on_hood = rows >= top[None, :]
    shade = np.clip((rows - top[None, :]) / max(hood * canvas.height, 1), 0, 1)
    paint = jitter(rng, [(30, 30, 35), (200, 200, 205), (60, 30, 30)][rng.integers(3)], 10)
    rgb = paint[None, None, :] * (1.1 - 0.4 * shade[..., None])
    on_hood = np.broadcast_to(on_hood, (canvas.height, canvas.width))
    canvas.rgb[on_hood] = np.broadcast_to(rgb, (canvas.height, canvas.width, 3))[on_hood]
    canvas.label[on_hood] = LABEL_IDS["ego vehicle"]
    canvas.grain[on_hood] = 2.0
    canvas.blotch[on_hood] = 0.0
    strip = max(1, int(round(canvas.height * 0.012)))
    canvas.rgb[-strip:] = 10.0
    canvas.label[-strip:] = LABEL_IDS["unlabeled"]


def _finish(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    """Global lighting, per-class grain/blotch noise and sensor noise -> uint8 RGB."""
    height, width = canvas.height, canvas.width
    light = 1.0 + 0.12 * smooth_noise(rng, height, width, cells=5)
    fine = rng.standard_normal((height, width), dtype=np.float32)
    medium = cv2.resize(rng.standard_normal((max(height // 6, 2), max(width // 6, 2)), dtype=np.float32),
                        (width, height), interpolation=cv2.INTER_LINEAR)
    offset = fine * canvas.grain + medium * canvas.blotch
    rgb = canvas.rgb * light[..., None] + offset[..., None]
    rgb += rng.standard_normal((height, width, 1), dtype=np.float32) * rng.uniform(1.5, 4.0)
    blurred = cv2.GaussianBlur(rgb, (3, 3), 0.6)   # a little optics: no perfectly hard, aliased edges
    return np.clip(blurred + 0.5, 0, 255).astype(np.uint8)


# an object to draw: (depth, drawing function, its arguments after (canvas, camera, rng))
_Sprite = tuple[float, Callable[..., None], tuple[Any, ...]]


def _place_objects(rng: np.random.Generator, road: tuple[float, float], sidewalks: tuple[float, float],
                   terrain: tuple[float, float], n_anomalies: int) -> list[_Sprite]:
    """Cars, poles, trees, persons (and ``n_anomalies`` anomalies on the road), in world coordinates."""
    road_left, road_right = road
    walk_left, walk_right = sidewalks
    terrain_left, terrain_right = terrain
    sprites: list[_Sprite] = []
    for _ in range(int(rng.integers(1, 7))):          # cars: parked at the curbs or driving in a lane
        side = rng.random()
        x = (road_left + 1.1 if side < 0.35 else
             (road_right - 1.1 if side < 0.7 else rng.uniform(road_left + 1.2, road_right - 1.2)))
        z = rng.uniform(5, 60)
        if abs(x) < 1.4 and z < 9:      # not right in front of the camera
            z += 8
        sprites.append((z, draw_car, (x, z)))
    for _ in range(int(rng.integers(1, 6))):          # poles at the curbs
        left = rng.random() < 0.5
        x = (road_left - rng.uniform(0.4, 0.8)) if left else (road_right + rng.uniform(0.4, 0.8))
        z = rng.uniform(4, 70)
        sprites.append((z, draw_pole, (x, z)))
    for _ in range(int(rng.integers(0, 6))):          # trees on the sidewalk's outer edge / terrain
        left = rng.random() < 0.5
        x = ((road_left - walk_left - terrain_left * 0.5 + 0.4) if left else
             (road_right + walk_right + terrain_right * 0.5 - 0.4))
        z = rng.uniform(5, 80)
        sprites.append((z, draw_tree, (x, z)))
    for _ in range(int(rng.integers(0, 5))):          # persons on the sidewalks
        left = rng.random() < 0.5
        x = ((road_left - rng.uniform(0.6, walk_left - 0.3)) if left else
             (road_right + rng.uniform(0.6, walk_right - 0.3)))
        z = rng.uniform(4, 45)
        sprites.append((z, draw_person, (x, z)))
    for _ in range(n_anomalies):
        z = rng.uniform(7, 35)
        x = rng.uniform(road_left + 0.8, road_right - 0.8)
        shape = ANOMALY_SHAPES[rng.integers(len(ANOMALY_SHAPES))]
        texture = ANOMALY_TEXTURES[rng.integers(len(ANOMALY_TEXTURES))]
        sprites.append((z, draw_anomaly, (x, z, shape, texture)))
    return sprites


def draw_scene(rng: np.random.Generator, width: int, height: int,
               n_anomalies: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one street scene; returns (rgb, labelIds with anomaly pixels as ``ANOMALY_LABEL``, road-surface mask)."""
    if width < 16 or height < 16:
        raise CocodagError(f"frame size: expected at least 16x16, got {width}x{height}")
    camera = Camera(width, height, focal=width * rng.uniform(0.95, 1.2), vanish_x=width * rng.uniform(0.42, 0.58),
                    horizon_y=height * rng.uniform(0.4, 0.5), street_end=rng.uniform(60, 160))
    canvas = Canvas(width, height)
    _draw_sky(canvas, camera, rng)
    sky_mean = canvas.rgb[: max(int(camera.horizon_y), 1)].reshape(-1, 3).mean(0)
    _draw_far_skyline(canvas, camera, rng, sky_mean)
    road = (-rng.uniform(1.8, 6.5), rng.uniform(1.8, 8.0))               # X of the road's left and right edges
    sidewalks = (rng.uniform(1.5, 4.0), rng.uniform(1.5, 4.0))           # widths, left and right
    terrain = (rng.uniform(1.0, 4.0) if rng.random() < 0.35 else 0.0,    # strips between sidewalk and façade
               rng.uniform(1.0, 4.0) if rng.random() < 0.35 else 0.0)
    road_mask = _draw_ground(canvas, camera, rng, road, sidewalks)
    _draw_facade_line(canvas, camera, rng, road[0] - sidewalks[0] - terrain[0])
    _draw_facade_line(canvas, camera, rng, road[1] + sidewalks[1] + terrain[1])
    sprites = _place_objects(rng, road, sidewalks, terrain, n_anomalies)
    for _depth, draw, args in sorted(sprites, key=lambda sprite: -sprite[0]):     # far to near
        draw(canvas, camera, rng, *args)
    _draw_ego_hood(canvas, rng)
    rgb = _finish(canvas, rng)
    return rgb, canvas.label, road_mask


def render_street(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one street scene.

    Parameters
    ----------
    rng : numpy Generator, the only source of randomness.
    width, height : frame size in pixels (any size; geometry is relative to it).

    Returns
    -------
    rgb : (H, W, 3) uint8
    label_ids : (H, W) uint8 Cityscapes labelIds (``cocodag.labels.LABEL_IDS``).
    """
    rgb, label_ids, _ = draw_scene(rng, width, height)
    return rgb, label_ids


def render_anomaly_frame(rng: np.random.Generator, width: int, height: int,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A street scene with 1-3 held-out anomalies standing on the road.

    Returns
    -------
    rgb : (H, W, 3) uint8
    label : (H, W) uint8, 0 = in-distribution, 1 = anomaly, 255 = void (ego vehicle, unlabeled)
    roi : (H, W) uint8, 1 = road surface (incl. what stands on it) and the anomalies, 0 elsewhere
    """
    n_anomalies = int(rng.integers(1, 4))
    rgb, label_ids, road = draw_scene(rng, width, height, n_anomalies=n_anomalies)
    anomaly = label_ids == ANOMALY_LABEL
    void = (label_ids == LABEL_IDS["unlabeled"]) | (label_ids == LABEL_IDS["ego vehicle"])
    label = np.zeros(label_ids.shape, np.uint8)
    label[anomaly] = 1
    label[void] = 255
    roi = ((road | anomaly) & ~void).astype(np.uint8)
    return rgb, label, roi
