"""The embedded demo world (DESIGN §6): synthetic street scenes, COCO-style proxies and an anomaly set in real formats.

``generate_demo_world(out)`` writes, so that the real loaders read it unchanged::

    OUT/cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png     RGB
    OUT/cityscapes/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png                          Cityscapes labelIds
    OUT/cityscapes/gtFine/{train,val}/<city>/<stem>_gtFine_labelTrainIds.png                     trainIds (255 void)
    OUT/coco/annotations/instances_train2017.json                                                COCO instances
    OUT/coco/train2017/<id:012d>.jpg
    OUT/anomaly/{images,labels,roi}/<name>.png + meta.json        evaluation layout of docs/formats.md §2
    OUT/README.txt

**Street scenes** (:func:`render_street`) are drawn with a pin-hole camera 1.3 m above a flat ground plane: a road
with lane markings converging to a vanishing point, curbs and sidewalks, terrain strips, façades of buildings with
windows (walls, fences and tree lines in the gaps), a far skyline, a sky gradient with clouds, and sprites placed in the
world and sorted by depth (cars with wheels and windows, poles with traffic signs / lights / lamps, trees, persons),
then the ego-vehicle hood (labelId 1) with an unlabeled strip (labelId 0) below it. Everything is drawn in relative
coordinates, so any frame size works. Per-class colours are jittered per frame and each class gets its own grain and
blotch noise, plus global lighting and sensor noise: classes are separable by shape, context and texture, not by a
single colour.

**Held-out split of shapes and textures.** The COCO proxies (the OOD *training* signal) and the anomalies of the test
set never share a shape or a texture:

- proxies: shapes :data:`PROXY_SHAPES` (``blob``, ``star``, ``ellipse``) filled with :data:`PROXY_TEXTURES`
  (``stripes``, ``checker``, ``dots``);
- anomalies: shapes :data:`ANOMALY_SHAPES` (``cone``, ``box``, ``quadruped``, ``tire``) filled with
  :data:`ANOMALY_TEXTURES` (``camouflage``, ``radial``, ``speckle``), standing on the road like lost cargo, sized in
  metres and projected with the scene's perspective.

The two pairs of tuples are disjoint (a test checks it), so a model can only flag the anomalies by having learned
"unlike every street class", which is what MaxEnt training on proxies is meant to teach.

**Randomness.** Every frame/image draws from ``numpy.random.default_rng(SeedSequence([seed, stream, index]))``
(:func:`frame_rng`), so the bytes depend on the seed only, never on ``workers`` or scheduling.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .atomic import atomic_write_bytes
from .errors import CocodagError
from .labels import LABEL_ID_TO_TRAIN_ID, LABEL_IDS

PROXY_SHAPES = ("blob", "star", "ellipse")
PROXY_TEXTURES = ("stripes", "checker", "dots")
ANOMALY_SHAPES = ("cone", "box", "quadruped", "tire")
ANOMALY_TEXTURES = ("camouflage", "radial", "speckle")

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

STREAM_TRAIN, STREAM_VAL, STREAM_ANOMALY, STREAM_COCO = 0, 1, 2, 3
TRAIN_CITIES = ("demoville", "synthburg")
VAL_CITIES = ("valtown",)

DEFAULT_FRAMES = 60
DEFAULT_VAL_FRAMES = 20
DEFAULT_ANOMALY_FRAMES = 20
DEFAULT_COCO_IMAGES = 80
DEFAULT_FRAME_SIZE = (1024, 512)
DEFAULT_COCO_IMAGE_SIZE = (640, 480)

_CAM_HEIGHT = 1.3            # metres; world units are metres
_ANOMALY_INTERNAL = 250      # internal label of anomaly pixels (never written to a labelIds file)
_L = LABEL_IDS


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
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m:
        raise CocodagError(f"{option}: expected WxH with positive integers (e.g. 1024x512), got {text!r}")
    w, h = int(m.group(1)), int(m.group(2))
    if w < minimum[0] or h < minimum[1]:
        raise CocodagError(f"{option}: expected at least {minimum[0]}x{minimum[1]}, got {w}x{h}")
    return w, h


# --------------------------------------------------------------------------------------------------------------------
# drawing primitives


@dataclass
class _Camera:
    width: int
    height: int
    f: float        # focal length in pixels
    xv: float       # vanishing point column
    yh: float       # horizon row
    zmax: float     # end of the street (the far skyline stands there)

    def project(self, pts3: np.ndarray) -> np.ndarray:
        """(N, 3) world points (X right, Y up, Z forward) -> (N, 2) pixel coordinates."""
        pts3 = np.asarray(pts3, dtype=np.float64)
        z = np.maximum(pts3[:, 2], 0.05)
        return np.stack([self.xv + self.f * pts3[:, 0] / z, self.yh + self.f * (_CAM_HEIGHT - pts3[:, 1]) / z], 1)

    def scale(self, z: float) -> float:
        """Pixels per metre at depth z."""
        return self.f / max(z, 0.05)


class _Canvas:
    """RGB (float32) + labelIds + per-pixel noise amplitudes (fine grain, medium blotches)."""

    def __init__(self, width: int, height: int):
        self.w, self.h = width, height
        self.rgb = np.zeros((height, width, 3), np.float32)
        self.label = np.zeros((height, width), np.uint8)
        self.grain = np.zeros((height, width), np.float32)
        self.blotch = np.zeros((height, width), np.float32)

    def fill(self, pts: np.ndarray, colour, label: int, grain: float = 3.0, blotch: float = 0.0,
             texture=None) -> None:
        """Fill a polygon ((N, 2) pixel coords). ``texture(h, w) -> (h, w, 3)`` paints its bounding box instead."""
        pts = np.asarray(pts, np.float64)
        x0 = max(int(math.floor(pts[:, 0].min())), 0)
        y0 = max(int(math.floor(pts[:, 1].min())), 0)
        x1 = min(int(math.ceil(pts[:, 0].max())) + 1, self.w)
        y1 = min(int(math.ceil(pts[:, 1].max())) + 1, self.h)
        if x1 <= x0 or y1 <= y0:
            return
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        local = np.clip((pts - (x0, y0)) * 16.0, -2**26, 2**26)   # 4 fractional bits: sub-pixel edges
        cv2.fillPoly(mask, [np.round(local).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        m = mask.view(bool)
        if not m.any():
            return
        sub = self.rgb[y0:y1, x0:x1]
        sub[m] = texture(y1 - y0, x1 - x0)[m] if texture is not None else np.asarray(colour, np.float32)
        self.label[y0:y1, x0:x1][m] = label
        self.grain[y0:y1, x0:x1][m] = grain
        self.blotch[y0:y1, x0:x1][m] = blotch

    def fill_world(self, cam: _Camera, pts3, colour, label: int, **kw) -> None:
        self.fill(cam.project(np.asarray(pts3, np.float64)), colour, label, **kw)

    def ellipse_world(self, cam: _Camera, centre, radius, colour, label: int, axis: str = "z", n: int = 20,
                      **kw) -> None:
        """A circle of ``radius`` metres in the plane facing the camera (axis='z') or a side plane (axis='x')."""
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        cx, cy, cz = centre
        rx, ry = (radius, radius) if np.isscalar(radius) else radius
        if axis == "z":
            pts = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t), np.full_like(t, cz)], 1)
        else:
            pts = np.stack([np.full_like(t, cx), cy + ry * np.sin(t), cz + rx * np.cos(t)], 1)
        self.fill_world(cam, pts, colour, label, **kw)


def _lowfreq(rng: np.random.Generator, h: int, w: int, cells: int = 8) -> np.ndarray:
    """Smooth noise in [-1, 1] of shape (h, w): a coarse random grid upsampled bicubically."""
    gh, gw = max(2, cells * h // max(w, 1) + 2), cells + 2
    g = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return np.clip(cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC), -1, 1)


def _jit(rng: np.random.Generator, base, amount: float = 12.0) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.uniform(-amount, amount, 3), 0, 255).astype(np.float32)


def _frac(a):
    return a - np.floor(a)


# --------------------------------------------------------------------------------------------------------------------
# street scene


def _sky(cv: _Canvas, cam: _Camera, rng) -> None:
    kind = rng.choice(3, p=[0.55, 0.3, 0.15])
    top = _jit(rng, [(70, 120, 190), (150, 155, 165), (120, 150, 190)][kind], 15)
    hor = _jit(rng, [(175, 200, 225), (200, 200, 205), (215, 205, 190)][kind], 12)
    t = np.clip(np.arange(cv.h, dtype=np.float32) / max(cam.yh, 1.0), 0, 1)[:, None, None]
    cv.rgb[:] = top * (1 - t) + hor * t
    clouds = _lowfreq(rng, cv.h, cv.w, cells=6)
    amount = np.clip((clouds - rng.uniform(-0.2, 0.5)) * 1.5, 0, 1)[..., None] * rng.uniform(0.3, 0.9)
    cv.rgb[:] = cv.rgb * (1 - amount) + np.float32(235) * amount
    cv.label[:] = _L["sky"]
    cv.grain[:] = 1.0


def _far_skyline(cv: _Canvas, cam: _Camera, rng, sky_mean) -> None:
    """A vertical plane at zmax with blocks of buildings / trees; hazy (mixed with the sky colour)."""
    dx = np.arange(cv.w, dtype=np.float32) + 0.5 - cam.xv
    xf = dx * cam.zmax / cam.f                    # world X of each column on the far plane
    lo, hi = float(xf.min()), float(xf.max())
    edges = [lo]
    while edges[-1] < hi:
        edges.append(edges[-1] + rng.uniform(6, 25))
    nb = len(edges)
    heights = rng.uniform(4, 28, nb).astype(np.float32)
    is_tree = rng.random(nb) < 0.3
    heights[is_tree] = rng.uniform(5, 12, int(is_tree.sum()))
    colours = np.stack([_jit(rng, (150, 145, 140), 30) for _ in range(nb)])
    bi = np.clip(np.searchsorted(np.asarray(edges[1:]), xf), 0, nb - 1)
    hcol = heights[bi] + np.where(is_tree[bi], 1.5 * np.sin(xf * 0.9) + np.sin(xf * 2.3 + 1.0), 0)
    dy = np.arange(cv.h, dtype=np.float32)[:, None] + 0.5 - cam.yh
    y_world = _CAM_HEIGHT - dy * cam.zmax / cam.f
    vis = (y_world >= -0.5) & (y_world < hcol[None, :])
    tree = vis & is_tree[bi][None, :]
    haze = 0.45
    col = colours[bi] * (1 - haze) + np.asarray(sky_mean, np.float32) * haze
    tree_col = _jit(rng, (80, 110, 60), 15) * (1 - haze) + np.asarray(sky_mean, np.float32) * haze
    rgb = np.broadcast_to(col[None], (cv.h, cv.w, 3))
    cv.rgb[vis] = rgb[vis]
    cv.rgb[tree] = tree_col
    cv.label[vis] = _L["building"]
    cv.label[tree] = _L["vegetation"]
    cv.grain[vis] = 2.0
    cv.blotch[tree] = 6.0


def _ground(cv: _Canvas, cam: _Camera, rng, geo: dict) -> np.ndarray:
    """Road, curbs, sidewalks and terrain on the ground plane; returns the boolean road-surface mask (full frame)."""
    road_mask = np.zeros((cv.h, cv.w), bool)
    r0 = int(math.ceil(cam.yh + cam.f * _CAM_HEIGHT / cam.zmax))
    if r0 >= cv.h:
        return road_mask
    dy = np.arange(r0, cv.h, dtype=np.float32)[:, None] + 0.5 - cam.yh
    dx = np.arange(cv.w, dtype=np.float32)[None, :] + 0.5 - cam.xv
    z = (cam.f * _CAM_HEIGHT) / dy                               # (h', 1)
    x = dx * (_CAM_HEIGHT / dy)                                  # (h', w)
    xl, xr = geo["road"]
    sl, sr = geo["sidewalk"]
    curb = 0.25
    # materials: 0 road, 1 curb, 2 sidewalk, 3 terrain
    mat = np.full(x.shape, 3, np.uint8)
    mat[(x >= xl - sl) & (x <= xr + sr)] = 2
    mat[(x >= xl - curb) & (x <= xr + curb)] = 1
    mat[(x >= xl) & (x <= xr)] = 0
    road_c = _jit(rng, np.full(3, rng.uniform(70, 120)) + (0, 0, 4), 6)   # asphalt: grey, little tint
    curb_c = _jit(rng, (165, 162, 158), 15)
    side_c = _jit(rng, [(140, 138, 135), (160, 125, 115), (120, 122, 128)][rng.integers(3)], 12)
    terr_c = _jit(rng, [(105, 135, 65), (130, 115, 80), (115, 140, 90)][rng.integers(3)], 12)
    palette = np.stack([road_c, curb_c, side_c, terr_c])
    rgb = palette[mat]
    # sidewalk paving: darker joints on a grid in world coordinates
    tile = rng.uniform(0.4, 0.8)
    joints = (mat == 2) & ((_frac(x / tile) < 0.06) | (_frac(z / tile) < 0.06 * np.ones_like(x)))
    rgb[joints] *= 0.85
    # lane markings: dashed lines between lanes, solid edge lines (world-space widths)
    marks = np.zeros(x.shape, bool)
    lane_w = rng.uniform(2.8, 3.6)
    k = xl + lane_w
    while k < xr - 1.0:
        marks |= (np.abs(x - k) < 0.07) & (_frac(z / 9.0 + rng.random()) < 0.4)
        k += lane_w
    if rng.random() < 0.6:
        marks |= (np.abs(x - (xl + 0.35)) < 0.06) | (np.abs(x - (xr - 0.35)) < 0.06)
    marks &= mat == 0
    rgb[marks] = _jit(rng, (215, 215, 205), 15)
    lab = np.array([_L["road"], _L["sidewalk"], _L["sidewalk"], _L["terrain"]], np.uint8)[mat]
    grain = np.array([6.0, 4.0, 4.0, 8.0], np.float32)[mat]
    blotch = np.array([5.0, 2.0, 3.0, 12.0], np.float32)[mat]
    cv.rgb[r0:] = rgb
    cv.label[r0:] = lab
    cv.grain[r0:] = grain
    cv.blotch[r0:] = blotch
    road_mask[r0:] = mat == 0
    return road_mask


_SEG_BUILDING, _SEG_TREES, _SEG_FENCE, _SEG_WALL = 0, 1, 2, 3


def _side(cv: _Canvas, cam: _Camera, rng, xw: float) -> None:
    """The façade line x = xw (left if negative): buildings with windows, tree lines, fences, low walls, gaps."""
    dx = np.arange(cv.w, dtype=np.float32) + 0.5 - cam.xv
    with np.errstate(divide="ignore"):
        zc = np.where(dx * xw > 0, cam.f * xw / dx, np.inf)
    cols = np.nonzero((zc > 0.3) & (zc < cam.zmax))[0]
    if cols.size == 0:
        return
    c0, c1 = int(cols.min()), int(cols.max()) + 1
    z = zc[c0:c1].astype(np.float32)
    # segments along the street
    ends, types, heights, colours, wins, win_c, floor_h = [], [], [], [], [], [], []
    s = -rng.uniform(0, 10)
    while s < cam.zmax:
        s += rng.uniform(8, 30)
        ends.append(s)
        t = rng.choice(4, p=[0.62, 0.2, 0.1, 0.08])
        types.append(t)
        heights.append([rng.uniform(8, 26), rng.uniform(4, 11), rng.uniform(3, 8), rng.uniform(0.8, 2.5)][t])
        colours.append(_jit(rng, [(175, 165, 150), (150, 150, 155), (165, 110, 90), (205, 200, 190),
                                  (185, 175, 140)][rng.integers(5)], 15))
        wins.append(rng.uniform(1.8, 3.2))
        win_c.append(_jit(rng, [(55, 65, 80), (120, 140, 160), (40, 40, 45)][rng.integers(3)], 12))
        floor_h.append(rng.uniform(2.9, 3.6))
    ends = np.asarray(ends, np.float32)
    si = np.clip(np.searchsorted(ends, z), 0, len(ends) - 1)
    types = np.asarray(types)[si]
    starts = np.concatenate([[0.0], ends[:-1]]).astype(np.float32)[si]
    phase = rng.uniform(0, 6.3, 2)
    bumps = 1.2 * np.sin(z * 0.8 + phase[0]) + 0.8 * np.sin(z * 2.1 + phase[1])
    hcol = np.asarray(heights, np.float32)[si] + np.where(types == _SEG_TREES, bumps, 0)
    fence_h = rng.uniform(1.0, 1.8)
    dy = np.arange(cv.h, dtype=np.float32)[:, None] + 0.5 - cam.yh
    yw = _CAM_HEIGHT - dy * (z / cam.f)[None, :]                # world height of each pixel on the façade
    vis = (yw >= 0) & (yw < hcol[None, :])
    if not vis.any():
        return
    col = np.asarray(colours, np.float32)[si]
    rgb = np.broadcast_to(col[None], yw.shape + (3,)).copy()
    lab = np.full(yw.shape, _L["building"], np.uint8)
    grain = np.full(yw.shape, 3.0, np.float32)
    blotch = np.full(yw.shape, 2.0, np.float32)
    t2 = types[None, :]
    # windows on buildings: a grid in (Z along the façade, height), shop windows at ground level
    b = (t2 == _SEG_BUILDING)
    fh = np.asarray(floor_h, np.float32)[si][None, :]
    ww = np.asarray(wins, np.float32)[si][None, :]
    u = _frac((z[None, :] - starts[None, :]) / ww)
    v = _frac(yw / fh)
    win = b & (yw > fh) & (yw < hcol[None, :] - 1.0) & (u > 0.25) & (u < 0.72) & (v > 0.3) & (v < 0.8)
    shop = b & (yw > 0.3) & (yw < fh * 0.75) & (u > 0.1) & (u < 0.85)
    wc = np.asarray(win_c, np.float32)[si]
    wcb = np.broadcast_to(wc[None], rgb.shape)
    rgb[win | shop] = wcb[win | shop]
    ledge = b & (np.abs(yw - hcol[None, :] + 0.3) < 0.3)
    rgb[ledge] *= 0.8
    # trees / fence+trees / low walls
    tr = (t2 == _SEG_TREES) | ((t2 == _SEG_FENCE) & (yw >= fence_h))
    rgb[tr] = _jit(rng, (75, 105, 50), 15)
    lab[tr] = _L["vegetation"]
    grain[tr], blotch[tr] = 10.0, 16.0
    fe = (t2 == _SEG_FENCE) & (yw < fence_h)
    post = _frac(z / 2.5)[None, :] < 0.08
    mesh = _frac((z[None, :] * 4 + yw * 6)) < 0.3
    fence_c = _jit(rng, (150, 140, 130), 20)
    rgb[fe] = np.where((post | mesh)[fe][:, None], fence_c, fence_c * 0.6 + np.float32((75, 105, 50)) * 0.4)
    lab[fe] = _L["fence"]
    wl = np.broadcast_to(t2 == _SEG_WALL, yw.shape)
    wall_c = _jit(rng, (150, 145, 135), 15)
    rgb[wl] = wall_c
    lab[wl] = _L["wall"]
    grain[wl] = 5.0
    brick = wl & (_frac(yw / 0.3) < 0.12)
    rgb[brick] *= 0.85
    # shading: the façade gets darker towards the ground
    rgb *= (0.85 + 0.15 * np.clip(yw / 10, 0, 1))[..., None]
    sub = (slice(None), slice(c0, c1))
    cv.rgb[sub][vis] = rgb[vis]
    cv.label[sub][vis] = lab[vis]
    cv.grain[sub][vis] = grain[vis]
    cv.blotch[sub][vis] = blotch[vis]


def _box(cv: _Canvas, cam: _Camera, x0, x1, y0, y1, z0, z1, colour, label, **kw) -> None:
    """An axis-aligned box: the visible side face, the top face (below the camera) and the near face."""
    colour = np.asarray(colour, np.float32)
    if x1 < 0:
        cv.fill_world(cam, [(x1, y0, z0), (x1, y0, z1), (x1, y1, z1), (x1, y1, z0)], colour * 0.8, label, **kw)
    elif x0 > 0:
        cv.fill_world(cam, [(x0, y0, z0), (x0, y0, z1), (x0, y1, z1), (x0, y1, z0)], colour * 0.8, label, **kw)
    if y1 < _CAM_HEIGHT:
        cv.fill_world(cam, [(x0, y1, z0), (x1, y1, z0), (x1, y1, z1), (x0, y1, z1)], colour * 1.08, label, **kw)
    cv.fill_world(cam, [(x0, y0, z0), (x1, y0, z0), (x1, y1, z0), (x0, y1, z0)], colour, label, **kw)


def _car(cv, cam, rng, xc, z0) -> None:
    lab = _L["car"]
    body_c = _jit(rng, [(200, 200, 205), (30, 30, 35), (150, 150, 155), (160, 30, 30), (30, 50, 120),
                        (40, 80, 50), (90, 90, 95)][rng.integers(7)], 12)
    glass = _jit(rng, (45, 55, 65), 10)
    w, ln, hb, ht = rng.uniform(1.7, 1.9), rng.uniform(3.9, 4.7), rng.uniform(0.8, 0.95), rng.uniform(1.4, 1.55)
    x0, x1 = xc - w / 2, xc + w / 2
    shadow = np.float32((35, 35, 38))
    cv.fill_world(cam, [(x0 - 0.1, 0, z0 - 0.1), (x1 + 0.1, 0, z0 - 0.1), (x1 + 0.1, 0, z0 + ln),
                        (x0 - 0.1, 0, z0 + ln)], shadow, _L["road"], grain=3)
    side_x = x1 if x1 < 0 else (x0 if x0 > 0 else None)
    if side_x is not None:
        for zw in (z0 + 0.8, z0 + ln - 0.8):
            cv.ellipse_world(cam, (side_x, 0.33, zw), 0.33, (20, 20, 22), lab, axis="x", n=16)
    for wx in (x0 + 0.05, x1 - 0.3):
        cv.fill_world(cam, [(wx, 0, z0 + 0.2), (wx + 0.25, 0, z0 + 0.2), (wx + 0.25, 0.35, z0 + 0.2),
                            (wx, 0.35, z0 + 0.2)], (20, 20, 22), lab)
    _box(cv, cam, x0, x1, 0.3, hb, z0, z0 + ln, body_c, lab, grain=2)
    _box(cv, cam, x0 + 0.12, x1 - 0.12, hb, ht, z0 + 0.9, z0 + ln - 0.9, glass, lab, grain=2)
    # roof over the cabin (thin, body colour) and tail/head lights on the near face
    _box(cv, cam, x0 + 0.15, x1 - 0.15, ht - 0.06, ht, z0 + 1.0, z0 + ln - 1.0, body_c, lab, grain=2)
    light = np.float32((200, 30, 30)) if rng.random() < 0.7 else np.float32((230, 230, 210))
    for lx in (x0 + 0.08, x1 - 0.33):
        cv.fill_world(cam, [(lx, 0.62, z0), (lx + 0.25, 0.62, z0), (lx + 0.25, 0.78, z0), (lx, 0.78, z0)],
                      light, lab)
    cv.fill_world(cam, [(xc - 0.25, 0.4, z0), (xc + 0.25, 0.4, z0), (xc + 0.25, 0.52, z0), (xc - 0.25, 0.52, z0)],
                  (225, 225, 225), lab)


def _pole(cv, cam, rng, xp, z) -> None:
    h = rng.uniform(4.0, 8.0)
    r = rng.uniform(0.07, 0.12)
    c = _jit(rng, (120, 120, 115), 20)
    s = cam.scale(z)
    px = cam.project(np.array([(xp, 0, z), (xp, h, z)]))
    hw = max(r * s, 0.7)
    cv.fill([(px[0, 0] - hw, px[0, 1]), (px[0, 0] + hw, px[0, 1]), (px[1, 0] + hw, px[1, 1]),
             (px[1, 0] - hw, px[1, 1])], c, _L["pole"], grain=2)
    kind = rng.choice(3, p=[0.45, 0.3, 0.25])
    if kind == 0:  # traffic sign
        ys = rng.uniform(2.2, min(h, 3.5))
        size = rng.uniform(0.5, 0.8)
        shape = rng.integers(3)
        rim = np.float32((200, 30, 35)) if rng.random() < 0.6 else np.float32((30, 70, 170))
        inner = np.float32((235, 235, 230)) if rng.random() < 0.6 else np.float32((240, 200, 30))
        if shape == 0:
            cv.ellipse_world(cam, (xp, ys, z - 0.1), size / 2, rim, _L["traffic sign"], n=18)
            cv.ellipse_world(cam, (xp, ys, z - 0.11), size / 2.8, inner, _L["traffic sign"], n=18)
        elif shape == 1:
            tri = [(xp - size / 2, ys - size / 3, z - 0.1), (xp + size / 2, ys - size / 3, z - 0.1),
                   (xp, ys + size / 2, z - 0.1)]
            cv.fill_world(cam, tri, rim, _L["traffic sign"])
            cv.fill_world(cam, [(a * 0.6 + xp * 0.4, (b - ys) * 0.6 + ys, c_) for a, b, c_ in tri], inner,
                          _L["traffic sign"])
        else:
            cv.fill_world(cam, [(xp - size / 2, ys - size / 2, z - 0.1), (xp + size / 2, ys - size / 2, z - 0.1),
                                (xp + size / 2, ys + size / 2, z - 0.1), (xp - size / 2, ys + size / 2, z - 0.1)],
                          rim if rng.random() < 0.5 else inner, _L["traffic sign"])
    elif kind == 1:  # traffic light
        yl = h - 0.2
        cv.fill_world(cam, [(xp - 0.17, yl - 0.9, z - 0.15), (xp + 0.17, yl - 0.9, z - 0.15),
                            (xp + 0.17, yl, z - 0.15), (xp - 0.17, yl, z - 0.15)], (35, 38, 35),
                      _L["traffic light"])
        lit = rng.integers(3)
        for i, c_on in enumerate([(230, 40, 30), (240, 190, 30), (40, 220, 90)]):
            cc = np.float32(c_on) if i == lit else np.float32(c_on) * 0.3
            cv.ellipse_world(cam, (xp, yl - 0.15 - 0.3 * i, z - 0.16), 0.1, cc, _L["traffic light"], n=12)
    else:  # street lamp: an arm over the road
        d = 1.6 if xp < 0 else -1.6
        cv.fill_world(cam, [(xp, h - 0.1, z), (xp + d, h - 0.1, z), (xp + d, h + 0.05, z), (xp, h + 0.05, z)],
                      c, _L["pole"])
        cv.fill_world(cam, [(xp + d - 0.3, h - 0.25, z), (xp + d + 0.3, h - 0.25, z), (xp + d + 0.3, h - 0.05, z),
                            (xp + d - 0.3, h - 0.05, z)], c * 0.8, _L["pole"])


def _tree(cv, cam, rng, xt, z) -> None:
    lab = _L["vegetation"]
    trunk_h = rng.uniform(1.8, 3.0)
    cv.fill_world(cam, [(xt - 0.15, 0, z), (xt + 0.15, 0, z), (xt + 0.12, trunk_h + 0.5, z),
                        (xt - 0.12, trunk_h + 0.5, z)], _jit(rng, (85, 70, 55), 10), lab, grain=6)
    base = _jit(rng, (70, 110, 45), 15)
    r = rng.uniform(1.3, 2.6)
    for _ in range(int(rng.integers(3, 6))):
        c = (xt + rng.uniform(-0.6, 0.6) * r, trunk_h + r * rng.uniform(0.6, 1.2), z - rng.uniform(0, 0.5))
        cv.ellipse_world(cam, c, (r * rng.uniform(0.6, 1.0), r * rng.uniform(0.5, 0.9)), _jit(rng, base, 10), lab,
                         n=18, grain=12, blotch=18)


def _person(cv, cam, rng, xp, z) -> None:
    lab = _L["person"]
    h = rng.uniform(1.6, 1.9)
    s = h / 1.75
    trousers = _jit(rng, [(40, 45, 70), (30, 30, 30), (110, 100, 85)][rng.integers(3)], 15)
    shirt = _jit(rng, [(180, 40, 40), (40, 90, 160), (220, 220, 215), (60, 60, 60), (200, 170, 60)]
                 [rng.integers(5)], 15)
    skin = _jit(rng, [(225, 185, 160), (170, 120, 90), (110, 75, 55)][rng.integers(3)], 10)
    step = rng.uniform(-0.12, 0.12)
    for lx in (-0.12, 0.02):
        cv.fill_world(cam, [(xp + lx + step, 0, z), (xp + lx + 0.11 + step, 0, z), (xp + lx + 0.11, 0.85 * s, z),
                            (xp + lx, 0.85 * s, z)], trousers, lab)
    cv.fill_world(cam, [(xp - 0.2, 0.82 * s, z), (xp + 0.2, 0.82 * s, z), (xp + 0.22, 1.45 * s, z),
                        (xp - 0.22, 1.45 * s, z)], shirt, lab)
    for ax in (-0.27, 0.2):
        cv.fill_world(cam, [(xp + ax, 0.9 * s, z), (xp + ax + 0.07, 0.9 * s, z), (xp + ax + 0.07, 1.42 * s, z),
                            (xp + ax, 1.42 * s, z)], shirt * 0.9, lab)
    cv.ellipse_world(cam, (xp, 1.58 * s, z), (0.1 * s, 0.13 * s), skin, lab, n=14)


def _ego(cv: _Canvas, rng) -> None:
    """Ego-vehicle hood (labelId 1) and an unlabeled strip below it (labelId 0), as in Cityscapes frames."""
    hood = rng.uniform(0.07, 0.13)
    x = np.arange(cv.w, dtype=np.float32) / cv.w - 0.5 - rng.uniform(-0.05, 0.05)
    top = cv.h * (1 - hood + 0.35 * hood * (2 * x) ** 2)
    rows = np.arange(cv.h, dtype=np.float32)[:, None]
    m = rows >= top[None, :]
    shade = np.clip((rows - top[None, :]) / max(hood * cv.h, 1), 0, 1)
    c = _jit(rng, [(30, 30, 35), (200, 200, 205), (60, 30, 30)][rng.integers(3)], 10)
    rgb = c[None, None, :] * (1.1 - 0.4 * shade[..., None])
    mb = np.broadcast_to(m, (cv.h, cv.w))
    cv.rgb[mb] = np.broadcast_to(rgb, (cv.h, cv.w, 3))[mb]
    cv.label[mb] = _L["ego vehicle"]
    cv.grain[mb] = 2.0
    cv.blotch[mb] = 0.0
    strip = max(1, int(round(cv.h * 0.012)))
    cv.rgb[-strip:] = 10.0
    cv.label[-strip:] = _L["unlabeled"]


def _finish(cv: _Canvas, rng) -> np.ndarray:
    """Global lighting, per-class grain/blotch noise and sensor noise -> uint8 RGB."""
    light = 1.0 + 0.12 * _lowfreq(rng, cv.h, cv.w, cells=5)
    fine = rng.standard_normal((cv.h, cv.w), dtype=np.float32)
    mid = cv2.resize(rng.standard_normal((max(cv.h // 6, 2), max(cv.w // 6, 2)), dtype=np.float32),
                     (cv.w, cv.h), interpolation=cv2.INTER_LINEAR)
    offset = fine * cv.grain + mid * cv.blotch
    rgb = cv.rgb * light[..., None] + offset[..., None]
    rgb += rng.standard_normal((cv.h, cv.w, 1), dtype=np.float32) * rng.uniform(1.5, 4.0)
    rgb = cv2.GaussianBlur(rgb, (3, 3), 0.6)   # a little optics: no perfectly hard, aliased edges
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _draw_anomaly(cv: _Canvas, cam: _Camera, rng, x: float, z: float, shape: str, texture: str) -> None:
    """One held-out anomaly standing on the ground at (x, z); sizes in metres."""
    tex = _anomaly_texture(rng, texture)
    kw = dict(grain=2.0, texture=tex)
    lab = _ANOMALY_INTERNAL
    if shape == "cone":
        h, r = rng.uniform(0.4, 1.0), rng.uniform(0.2, 0.4)
        cv.fill_world(cam, [(x - r, 0, z), (x + r, 0, z), (x + r * 0.15, h, z), (x - r * 0.15, h, z)], 0, lab, **kw)
        cv.fill_world(cam, [(x - r * 1.2, 0, z), (x + r * 1.2, 0, z), (x + r * 1.2, 0.06, z), (x - r * 1.2, 0.06, z)],
                      0, lab, **kw)
    elif shape == "box":
        sx, sy, sz = rng.uniform(0.4, 1.2), rng.uniform(0.3, 1.0), rng.uniform(0.4, 1.2)
        for face in _box_faces(x - sx / 2, x + sx / 2, 0, sy, z, z + sz):
            cv.fill_world(cam, face, 0, lab, **kw)
    elif shape == "quadruped":
        ln = rng.uniform(0.6, 1.5)
        hh = ln * 0.55
        d = 1 if rng.random() < 0.5 else -1
        for lx in (-0.4, -0.25, 0.25, 0.4):
            cv.fill_world(cam, [(x + lx * ln, 0, z), (x + lx * ln + 0.07 * ln, 0, z),
                                (x + lx * ln + 0.07 * ln, hh, z), (x + lx * ln, hh, z)], 0, lab, **kw)
        cv.ellipse_world(cam, (x, hh + 0.12 * ln, z), (0.5 * ln, 0.2 * ln), 0, lab, n=20, **kw)
        cv.fill_world(cam, [(x + d * 0.35 * ln, hh + 0.1 * ln, z), (x + d * 0.5 * ln, hh + 0.1 * ln, z),
                            (x + d * 0.62 * ln, hh + 0.45 * ln, z), (x + d * 0.5 * ln, hh + 0.5 * ln, z)],
                      0, lab, **kw)
        cv.ellipse_world(cam, (x + d * 0.62 * ln, hh + 0.5 * ln, z), (0.13 * ln, 0.09 * ln), 0, lab, n=14, **kw)
    elif shape == "tire":
        r = rng.uniform(0.3, 0.5)
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        outer = np.stack([x + r * np.cos(t), r + r * np.sin(t), np.full_like(t, z)], 1)
        inner = np.stack([x + 0.5 * r * np.cos(t[::-1]), r + 0.5 * r * np.sin(t[::-1]), np.full_like(t, z)], 1)
        # an annulus as one polygon: outer ring, a bridge to the inner ring, inner ring reversed
        pts = np.concatenate([outer, outer[:1], inner[-1:], inner, inner[-1:]])
        cv.fill_world(cam, pts, 0, lab, **kw)
    else:  # pragma: no cover - guarded by the tuples
        raise ValueError(shape)


def _box_faces(x0, x1, y0, y1, z0, z1):
    faces = []
    if x1 < 0:
        faces.append([(x1, y0, z0), (x1, y0, z1), (x1, y1, z1), (x1, y1, z0)])
    elif x0 > 0:
        faces.append([(x0, y0, z0), (x0, y0, z1), (x0, y1, z1), (x0, y1, z0)])
    if y1 < _CAM_HEIGHT:
        faces.append([(x0, y1, z0), (x1, y1, z0), (x1, y1, z1), (x0, y1, z1)])
    faces.append([(x0, y0, z0), (x1, y0, z0), (x1, y1, z0), (x0, y1, z0)])
    return faces


_ANOMALY_PALETTE = ((255, 120, 0), (170, 40, 200), (0, 200, 190), (240, 40, 150), (150, 230, 20), (250, 235, 60),
                    (60, 40, 20), (245, 245, 250))


def _anomaly_texture(rng, texture: str):
    """A texture function (h, w) -> (h, w, 3) float32 from the held-out anomaly textures."""
    cols = np.asarray(_ANOMALY_PALETTE, np.float32)[rng.choice(len(_ANOMALY_PALETTE), 3, replace=False)]
    seed = int(rng.integers(2**31))

    def fn(h, w):
        r = np.random.default_rng(seed)
        if texture == "camouflage":
            a = _lowfreq(r, h, w, cells=4)
            b = _lowfreq(r, h, w, cells=6)
            idx = (a > 0.1).astype(np.int64) + (b > 0.25)
            return cols[np.minimum(idx, 2)]
        if texture == "radial":
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            d = np.sqrt(((xx - w * 0.4) / max(w, 1)) ** 2 + ((yy - h * 0.35) / max(h, 1)) ** 2) * 1.6
            t = np.clip(d, 0, 1)[..., None]
            return cols[0] * (1 - t) + cols[1] * t
        if texture == "speckle":
            pick = r.integers(0, 3, (h, w))
            return cols[pick] * r.uniform(0.7, 1.0, (h, w, 1)).astype(np.float32)
        raise ValueError(texture)  # pragma: no cover
    return fn


def _scene(rng: np.random.Generator, width: int, height: int, n_anomalies: int = 0):
    """Draw one street scene; returns (rgb, label_ids with anomalies as 250, road-surface mask)."""
    if width < 16 or height < 16:
        raise CocodagError(f"frame size: expected at least 16x16, got {width}x{height}")
    cam = _Camera(width, height, f=width * rng.uniform(0.95, 1.2), xv=width * rng.uniform(0.42, 0.58),
                  yh=height * rng.uniform(0.4, 0.5), zmax=rng.uniform(60, 160))
    cv = _Canvas(width, height)
    _sky(cv, cam, rng)
    sky_mean = cv.rgb[: max(int(cam.yh), 1)].reshape(-1, 3).mean(0)
    _far_skyline(cv, cam, rng, sky_mean)
    xl, xr = -rng.uniform(1.8, 6.5), rng.uniform(1.8, 8.0)
    sl, sr = rng.uniform(1.5, 4.0), rng.uniform(1.5, 4.0)
    tl = rng.uniform(1.0, 4.0) if rng.random() < 0.35 else 0.0
    tr = rng.uniform(1.0, 4.0) if rng.random() < 0.35 else 0.0
    geo = {"road": (xl, xr), "sidewalk": (sl, sr)}
    road = _ground(cv, cam, rng, geo)
    _side(cv, cam, rng, xl - sl - tl)
    _side(cv, cam, rng, xr + sr + tr)
    # sprites, drawn far to near
    sprites = []
    for _ in range(int(rng.integers(1, 7))):          # cars: parked at the curbs or driving in a lane
        side = rng.random()
        xc = xl + 1.1 if side < 0.35 else (xr - 1.1 if side < 0.7 else rng.uniform(xl + 1.2, xr - 1.2))
        z0 = rng.uniform(5, 60)
        if abs(xc) < 1.4 and z0 < 9:
            z0 += 8
        sprites.append((z0, _car, (xc, z0)))
    for _ in range(int(rng.integers(1, 6))):          # poles at the curbs
        left = rng.random() < 0.5
        xp = (xl - rng.uniform(0.4, 0.8)) if left else (xr + rng.uniform(0.4, 0.8))
        z = rng.uniform(4, 70)
        sprites.append((z, _pole, (xp, z)))
    for _ in range(int(rng.integers(0, 6))):          # trees on the sidewalk's outer edge / terrain
        left = rng.random() < 0.5
        xt = (xl - sl - tl * 0.5 + 0.4) if left else (xr + sr + tr * 0.5 - 0.4)
        z = rng.uniform(5, 80)
        sprites.append((z, _tree, (xt, z)))
    for _ in range(int(rng.integers(0, 5))):          # persons on the sidewalks
        left = rng.random() < 0.5
        xp = (xl - rng.uniform(0.6, sl - 0.3)) if left else (xr + rng.uniform(0.6, sr - 0.3))
        z = rng.uniform(4, 45)
        sprites.append((z, _person, (xp, z)))
    anomaly_sprites = []
    for _ in range(n_anomalies):
        z = rng.uniform(7, 35)
        x = rng.uniform(xl + 0.8, xr - 0.8)
        shape = ANOMALY_SHAPES[rng.integers(len(ANOMALY_SHAPES))]
        texture = ANOMALY_TEXTURES[rng.integers(len(ANOMALY_TEXTURES))]
        anomaly_sprites.append((z, _draw_anomaly, (x, z, shape, texture)))
    sprites += anomaly_sprites
    for z, fn, args in sorted(sprites, key=lambda s: -s[0]):
        fn(cv, cam, rng, *args)
    _ego(cv, rng)
    rgb = _finish(cv, rng)
    return rgb, cv.label, road


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
    rgb, lab, _ = _scene(rng, width, height)
    return rgb, lab


def render_anomaly_frame(rng: np.random.Generator, width: int, height: int,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A street scene with 1-3 held-out anomalies standing on the road.

    Returns
    -------
    rgb : (H, W, 3) uint8
    label : (H, W) uint8, 0 = in-distribution, 1 = anomaly, 255 = void (ego vehicle, unlabeled)
    roi : (H, W) uint8, 1 = road surface (incl. what stands on it) and the anomalies, 0 elsewhere
    """
    n = int(rng.integers(1, 4))
    rgb, lab, road = _scene(rng, width, height, n_anomalies=n)
    anomaly = lab == _ANOMALY_INTERNAL
    void = (lab == _L["unlabeled"]) | (lab == _L["ego vehicle"])
    label = np.zeros(lab.shape, np.uint8)
    label[anomaly] = 1
    label[void] = 255
    roi = ((road | anomaly) & ~void).astype(np.uint8)
    return rgb, label, roi


# --------------------------------------------------------------------------------------------------------------------
# COCO-style proxy images


def _proxy_polygon(rng, shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    if shape == "blob":
        n = int(rng.integers(24, 40))
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        rad = np.ones(n)
        for k in (2, 3, 5):
            rad += rng.uniform(0, 0.25 / k * 2) * np.sin(k * t + rng.uniform(0, 6.3))
        rad *= r
    elif shape == "star":
        k = int(rng.integers(5, 9))
        t = np.linspace(0, 2 * np.pi, 2 * k, endpoint=False) + rng.uniform(0, 6.3)
        rad = np.where(np.arange(2 * k) % 2 == 0, r, r * rng.uniform(0.4, 0.6))
    elif shape == "ellipse":
        n = 32
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        a, b, th = r, r * rng.uniform(0.45, 0.9), rng.uniform(0, np.pi)
        x, y = a * np.cos(t), b * np.sin(t)
        return np.stack([cx + x * np.cos(th) - y * np.sin(th), cy + x * np.sin(th) + y * np.cos(th)], 1)
    else:  # pragma: no cover
        raise ValueError(shape)
    return np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], 1)


_PROXY_PALETTE = ((200, 60, 50), (50, 110, 200), (230, 200, 60), (60, 160, 80), (240, 240, 235), (30, 30, 30),
                  (150, 90, 50), (120, 200, 230))


def _proxy_texture(rng, texture: str, h: int, w: int, x0: int, y0: int) -> np.ndarray:
    c = np.asarray(_PROXY_PALETTE, np.float32)[rng.choice(len(_PROXY_PALETTE), 2, replace=False)]
    yy, xx = np.mgrid[y0:y0 + h, x0:x0 + w].astype(np.float32)
    th = rng.uniform(0, np.pi)
    u = xx * np.cos(th) + yy * np.sin(th)
    v = -xx * np.sin(th) + yy * np.cos(th)
    p = rng.uniform(6, 22)
    if texture == "stripes":
        sel = _frac(u / p) < 0.5
    elif texture == "checker":
        sel = (np.floor(u / p) + np.floor(v / p)) % 2 == 0
    elif texture == "dots":
        sel = (_frac(u / p) - 0.5) ** 2 + (_frac(v / p) - 0.5) ** 2 < 0.09
    else:  # pragma: no cover
        raise ValueError(texture)
    return np.where(sel[..., None], c[0], c[1])


def _coco_background(rng, w: int, h: int) -> np.ndarray:
    if rng.random() < 0.5:   # indoor: wall over floor
        split = int(h * rng.uniform(0.45, 0.7))
        img = np.empty((h, w, 3), np.float32)
        img[:split] = _jit(rng, (200, 190, 170), 30)
        img[split:] = _jit(rng, (140, 100, 70), 30)
        planks = _frac(np.arange(w, dtype=np.float32) / rng.uniform(30, 60)) < 0.04
        img[split:, planks] *= 0.8
    else:                    # outdoor: grass / sand under a pale sky
        split = int(h * rng.uniform(0.3, 0.55))
        img = np.empty((h, w, 3), np.float32)
        img[:split] = _jit(rng, (160, 190, 225), 20)
        img[split:] = _jit(rng, [(100, 150, 70), (210, 190, 140)][rng.integers(2)], 20)
    img *= (1 + 0.1 * _lowfreq(rng, h, w, cells=4))[..., None]
    return img


def _polygon_area(poly: np.ndarray) -> float:
    """Shoelace area of an (N, 2) polygon (how COCO's own polygon areas are computed)."""
    x, y = poly[:, 0], poly[:, 1]
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


def render_coco_image(rng: np.random.Generator, index: int, image_size=DEFAULT_COCO_IMAGE_SIZE):
    """One COCO-style image (BGR uint8 for cv2) and its annotation dicts (``image_id``/``id`` filled by the caller).

    Deterministic roles by index (so small runs exercise every filter): ``index % 5 == 2`` adds an excluded
    (Cityscapes-overlapping) category, ``index % 8 == 3`` adds an ``iscrowd=1`` RLE annotation, ``index % 10 == 7``
    makes the image smaller than 480x480.
    """
    w, h = image_size
    if index % 10 == 7:
        w, h = max(int(w * 0.6), 32), max(int(h * 0.6), 32)
        w, h = min(w, 470), min(h, 470)
    img = _coco_background(rng, w, h)
    anns = []
    if index % 8 == 3:   # a crowd region first (objects may cover it): many small objects as one RLE
        cat = PROXY_CATEGORIES[rng.integers(len(PROXY_CATEGORIES))]
        mask = np.zeros((h, w), np.uint8)
        bx, by = rng.uniform(0.05, 0.6) * w, rng.uniform(0.05, 0.6) * h
        for _ in range(int(rng.integers(6, 14))):
            cv2.circle(mask, (int(bx + rng.uniform(0, 0.3) * w), int(by + rng.uniform(0, 0.3) * h)),
                       int(rng.integers(3, 9)), 1, -1)
        img[mask.view(bool)] = _jit(rng, (90, 60, 160), 30)
        ys, xs = np.nonzero(mask)
        anns.append({"category_id": cat[0], "iscrowd": 1, "segmentation": _rle_uncompressed(mask),
                     "area": int(mask.sum()),
                     "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                     "_shape": "crowd", "_texture": "solid"})
    n = int(rng.integers(1, 5))
    cats = [PROXY_CATEGORIES[rng.integers(len(PROXY_CATEGORIES))] for _ in range(n)]
    if index % 5 == 2:
        cats[rng.integers(n)] = EXCLUDED_CATEGORIES[rng.integers(len(EXCLUDED_CATEGORIES))]
    placed = []
    for cat in cats:
        for _try in range(20):   # keep objects apart so their visible masks equal their polygons
            r = rng.uniform(0.1, 0.25) * min(w, h)
            cx, cy = rng.uniform(r * 1.05, w - r * 1.05), rng.uniform(r * 1.05, h - r * 1.05)
            if all((cx - px) ** 2 + (cy - py) ** 2 > (r + pr) ** 2 * 1.3 for px, py, pr in placed):
                break
        else:
            continue
        placed.append((cx, cy, r))
        shape = PROXY_SHAPES[rng.integers(len(PROXY_SHAPES))]
        texture = PROXY_TEXTURES[rng.integers(len(PROXY_TEXTURES))]
        polys = [_proxy_polygon(rng, shape, cx, cy, r)]
        if rng.random() < 0.15:   # a second, detached part (multi-polygon segmentations occur in COCO)
            pr = r * 0.25
            ang = rng.uniform(0, 2 * np.pi)
            px, py = cx + np.cos(ang) * r * 1.6, cy + np.sin(ang) * r * 1.6
            if pr < px < w - pr and pr < py < h - pr and all(
                    (px - qx) ** 2 + (py - qy) ** 2 > (pr + qr) ** 2 * 1.3 for qx, qy, qr in placed[:-1]):
                polys.append(_proxy_polygon(rng, "ellipse", px, py, pr))
        allp = np.concatenate(polys)
        x0, y0 = max(int(allp[:, 0].min()), 0), max(int(allp[:, 1].min()), 0)
        x1, y1 = min(int(math.ceil(allp[:, 0].max())) + 1, w), min(int(math.ceil(allp[:, 1].max())) + 1, h)
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        polys = [np.round(p, 2) for p in polys]
        cv2.fillPoly(mask, [np.round((p - (x0, y0)) * 16).astype(np.int32) for p in polys], 1, cv2.LINE_8, 4)
        tex = _proxy_texture(rng, texture, y1 - y0, x1 - x0, x0, y0)
        m = mask.view(bool)
        img[y0:y1, x0:x1][m] = tex[m]
        px_all = np.concatenate(polys)
        bx0, by0 = float(px_all[:, 0].min()), float(px_all[:, 1].min())
        anns.append({
            "category_id": cat[0], "iscrowd": 0,
            "segmentation": [[float(v) for v in p.reshape(-1)] for p in polys],
            "area": round(sum(_polygon_area(p) for p in polys), 2),
            "bbox": [round(bx0, 2), round(by0, 2), round(float(px_all[:, 0].max()) - bx0, 2),
                     round(float(px_all[:, 1].max()) - by0, 2)],
            "_shape": shape, "_texture": texture,
        })
    img += rng.standard_normal((h, w, 1), dtype=np.float32) * 3.0
    bgr = np.clip(img + 0.5, 0, 255).astype(np.uint8)[..., ::-1]
    return np.ascontiguousarray(bgr), anns


# --------------------------------------------------------------------------------------------------------------------
# writing the world


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)   # readers see the old file or the new one, never half of one


def _write_png(path: Path, array: np.ndarray, rgb: bool = False) -> None:
    arr = np.ascontiguousarray(array[..., ::-1]) if rgb else array
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover
        raise CocodagError(f"{path}: PNG encoding failed")
    _write_bytes(path, buf.tobytes())


def cityscapes_stem(city: str, index: int) -> str:
    return f"{city}_{index:06d}_000019"


def _street_job(root: Path, split: str, stream: int, index: int, seed: int, size) -> str:
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    city = cities[index % len(cities)]
    stem = cityscapes_stem(city, index)
    rgb, lab = render_street(frame_rng(seed, stream, index), *size)
    _write_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rgb, rgb=True)
    gt = root / "gtFine" / split / city
    _write_png(gt / f"{stem}_gtFine_labelIds.png", lab)
    _write_png(gt / f"{stem}_gtFine_labelTrainIds.png", LABEL_ID_TO_TRAIN_ID[lab])
    return stem


def anomaly_name(index: int) -> str:
    return f"demo_anomaly_{index:04d}"


def _anomaly_job(root: Path, index: int, seed: int, size) -> str:
    name = anomaly_name(index)
    rgb, label, roi = render_anomaly_frame(frame_rng(seed, STREAM_ANOMALY, index), *size)
    _write_png(root / "images" / f"{name}.png", rgb, rgb=True)
    _write_png(root / "labels" / f"{name}.png", label)
    _write_png(root / "roi" / f"{name}.png", roi)
    return name


def coco_image_id(index: int) -> int:
    return 100000 + index


def _coco_job(root: Path, index: int, seed: int, size):
    bgr, anns = render_coco_image(frame_rng(seed, STREAM_COCO, index), index, size)
    image_id = coco_image_id(index)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
    _write_bytes(root / "train2017" / f"{image_id:012d}.jpg", buf.tobytes())
    return {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": int(bgr.shape[1]),
            "height": int(bgr.shape[0]), "license": 1, "date_captured": "2017-01-01 00:00:00"}, anns


def _check_sizes(frame_size, coco_image_size) -> tuple[tuple[int, int], tuple[int, int]]:
    """(W, H) of street frames and of COCO images, from tuples or ``"WxH"`` strings, checked against the minimums."""
    if isinstance(frame_size, str):
        frame_size = parse_size(frame_size, "--frame-size")
    if isinstance(coco_image_size, str):
        coco_image_size = parse_size(coco_image_size, "--coco-image-size", minimum=(64, 64))
    fw, fh = (int(frame_size[0]), int(frame_size[1]))
    cw, ch = (int(coco_image_size[0]), int(coco_image_size[1]))
    if fw < 64 or fh < 32:
        raise CocodagError(f"--frame-size: expected at least 64x32, got {fw}x{fh}")
    if cw < 64 or ch < 64:
        raise CocodagError(f"--coco-image-size: expected at least 64x64, got {cw}x{ch}")
    return (fw, fh), (cw, ch)


def _run_jobs(run, jobs: list, workers: int, progress: bool) -> list:
    """``run`` over ``jobs`` in order (joblib processes when ``workers`` > 1), with a progress bar."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="demo world", unit="img", disable=not progress, leave=False)
    if workers == 1:
        gen = (run(job) for job in jobs)
    else:
        from joblib import Parallel, delayed

        gen = Parallel(n_jobs=workers, return_as="generator")(delayed(run)(j) for j in jobs)
    results = []
    for r in gen:
        results.append(r)
        bar.update()
    bar.close()
    return results


def _coco_instances(coco_results: list) -> dict:
    """The ``instances_train2017.json`` content from the per-image (image record, annotations) results."""
    # every category is listed, used or not (real COCO lists all 80)
    categories = [{"id": c, "name": n, "supercategory": s}
                  for c, n, s in sorted(PROXY_CATEGORIES + EXCLUDED_CATEGORIES)]
    images, annotations = [], []
    for image, anns in coco_results:
        images.append(image)
        for k, a in enumerate(anns):
            a = {key: v for key, v in a.items() if not key.startswith("_")}
            annotations.append({"id": image["id"] * 100 + k + 1, "image_id": image["id"], **a})
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


def generate_demo_world(out_dir, *, frames: int = DEFAULT_FRAMES, val_frames: int = DEFAULT_VAL_FRAMES,
                        anomaly_frames: int = DEFAULT_ANOMALY_FRAMES, frame_size=DEFAULT_FRAME_SIZE,
                        coco_images: int = DEFAULT_COCO_IMAGES, coco_image_size=DEFAULT_COCO_IMAGE_SIZE,
                        seed: int = 0, workers: int = 1, progress: bool = True) -> dict:
    """Write the demo world under ``out_dir`` (layout in the module docstring).

    Parameters
    ----------
    out_dir : folder to write (created; files already there are overwritten).
    frames, val_frames, anomaly_frames : number of Cityscapes train / val frames and anomaly test frames.
    frame_size : (W, H) of street frames (or ``"WxH"``); coco_image_size : (W, H) of the COCO-style images.
    coco_images : number of COCO-style images.
    seed : the only source of randomness; the bytes never depend on ``workers``.
    workers : joblib processes drawing frames in parallel.

    Returns
    -------
    dict with the written roots and counts.

    Raises
    ------
    CocodagError
        On a bad count or size (naming the option).
    """
    for name, v, lo in (("frames", frames, 1), ("val_frames", val_frames, 0), ("anomaly_frames", anomaly_frames, 0),
                        ("coco_images", coco_images, 0), ("workers", workers, 1)):
        if not isinstance(v, (int, np.integer)) or v < lo:
            raise CocodagError(f"--{name.replace('_', '-')}: expected an integer >= {lo}, got {v!r}")
    (fw, fh), (cw, ch) = _check_sizes(frame_size, coco_image_size)
    out = Path(out_dir)
    cs, coco, anom = out / "cityscapes", out / "coco", out / "anomaly"
    jobs = ([("street", cs, "train", STREAM_TRAIN, i) for i in range(frames)]
            + [("street", cs, "val", STREAM_VAL, i) for i in range(val_frames)]
            + [("anomaly", anom, None, STREAM_ANOMALY, i) for i in range(anomaly_frames)]
            + [("coco", coco, None, STREAM_COCO, i) for i in range(coco_images)])

    def run(job):
        kind, root, split, stream, i = job
        if kind == "street":
            return _street_job(root, split, stream, i, seed, (fw, fh))
        if kind == "anomaly":
            return _anomaly_job(root, i, seed, (fw, fh))
        return _coco_job(root, i, seed, (cw, ch))

    results = _run_jobs(run, jobs, workers, progress)
    anomaly_names = [r for j, r in zip(jobs, results) if j[0] == "anomaly"]
    instances = _coco_instances([r for j, r in zip(jobs, results) if j[0] == "coco"])
    if coco_images:
        _write_bytes(coco / "annotations" / "instances_train2017.json", json.dumps(instances).encode())
    if anomaly_frames:
        meta = {"format": "cocodag-evalset", "version": 1, "preset": "demo", "region": "all",
                "names": anomaly_names, "label_convention": "0/1/255"}
        _write_bytes(anom / "meta.json", json.dumps(meta, indent=2).encode())
    readme = _README.format(seed=seed, fw=fw, fh=fh, frames=frames, val=val_frames, anom=anomaly_frames,
                            coco=coco_images, cw=cw, ch=ch, proxy_shapes="/".join(PROXY_SHAPES),
                            proxy_textures="/".join(PROXY_TEXTURES), anomaly_shapes="/".join(ANOMALY_SHAPES),
                            anomaly_textures="/".join(ANOMALY_TEXTURES))
    _write_bytes(out / "README.txt", readme.encode())
    return {"out": str(out), "cityscapes": str(cs), "coco": str(coco), "anomaly": str(anom),
            "train_frames": frames, "val_frames": val_frames, "anomaly_frames": anomaly_frames,
            "coco_images": coco_images, "coco_annotations": len(instances["annotations"]), "frame_size": [fw, fh]}
