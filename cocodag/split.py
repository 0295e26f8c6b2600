"""Split a pasted frame by the object's centroid into four S×S quadrant crops (docs/methods.md §2.3). Pure functions."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import CocodagError
from .labels import NUM_CLASSES, OOD_ID

QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


def quadrant_boxes(cx: int, cy: int, size: int, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """The four ``size``×``size`` boxes ``(x0, y0, x1, y1)`` that meet at the centroid ``(cx, cy)``.

    Order: top-left ``[cx-S, cy-S, cx, cy]``, top-right ``[cx, cy-S, cx+S, cy]``, bottom-left ``[cx-S, cy, cx, cy+S]``,
    bottom-right ``[cx, cy, cx+S, cy+S]``. A box crossing the frame border is shifted (not shrunk) to lie inside the
    ``width``×``height`` frame; boxes away from the border are returned unchanged.
    """
    s = int(size)
    if s <= 0:
        raise CocodagError(f"--crop must be > 0, got {size}")
    if s > width or s > height:
        raise CocodagError(f"--crop {s} is larger than the frame ({width}x{height})")
    out = []
    for x0, y0 in ((cx - s, cy - s), (cx, cy - s), (cx - s, cy), (cx, cy)):
        x0 = min(max(int(x0), 0), width - s)
        y0 = min(max(int(y0), 0), height - s)
        out.append((x0, y0, x0 + s, y0 + s))
    return out


@dataclass(frozen=True)
class QuadrantCrop:
    """One emitted crop: quadrant index (order of :data:`QUADRANTS`), final box and views into the frame."""

    quadrant: int
    box: tuple[int, int, int, int]     # x0, y0, x1, y1 in frame coordinates
    image: np.ndarray                  # (S, S, C) view of the frame
    label: np.ndarray                  # (S, S) view of the label


@dataclass(frozen=True)
class CentroidSplit:
    """What :func:`split_by_centroid` made of one pasted frame."""

    centroid: tuple[int, int] | None   # (x, y) of the OOD mask; None when the frame holds no OOD pixel
    crops: tuple[QuadrantCrop, ...]    # the quadrants kept (each holds OOD and ID pixels)
    no_ood: int = 0                    # quadrants dropped: no OOD pixel left
    no_id: int = 0                     # quadrants dropped: no in-distribution (0..18) pixel


def mask_centroid(mask: np.ndarray, origin: tuple[int, int] = (0, 0)) -> tuple[int, int] | None:
    """Rounded ``(x, y)`` mean of the nonzero pixels of ``mask``, shifted by ``origin`` (when ``mask`` is a cut-out
    of a larger frame), or ``None`` when there is none."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return int(round(origin[0] + xs.mean())), int(round(origin[1] + ys.mean()))


def split_by_centroid(image: np.ndarray, label: np.ndarray, size: int, *,
                      within: tuple[int, int, int, int] | None = None) -> CentroidSplit:
    """Cut a pasted frame into the four ``size``×``size`` quadrants meeting at the centroid of its OOD pixels.

    Parameters
    ----------
    image : (H, W, C) uint8 frame (any channel order); label : (H, W) uint8 with ``OOD_ID`` (254) at the object.
    size : crop size S.
    within : box ``(x0, y0, x1, y1)`` holding every OOD pixel (e.g. the paste box), to find the centroid cheaply.

    Returns
    -------
    CentroidSplit
        The centroid and the kept quadrants (views, in quadrant order). A quadrant without OOD pixels, or without
        in-distribution pixels, is dropped and counted (``no_ood`` / ``no_id``), never emitted.
    """
    H, W = label.shape
    # Only the search box is compared: on a 2048x1024 frame a full compare costs more than the paste itself.
    bx0, by0, bx1, by1 = within if within is not None else (0, 0, W, H)
    centroid = mask_centroid(label[by0:by1, bx0:bx1] == OOD_ID, origin=(bx0, by0))
    if centroid is None:
        return CentroidSplit(None, ())
    crops, no_ood, no_id = [], 0, 0
    for q, (x0, y0, x1, y1) in enumerate(quadrant_boxes(*centroid, size, W, H)):
        cl = label[y0:y1, x0:x1]
        if not (cl == OOD_ID).any():
            no_ood += 1
        elif not (cl < NUM_CLASSES).any():
            no_id += 1
        else:
            crops.append(QuadrantCrop(q, (x0, y0, x1, y1), image[y0:y1, x0:x1], cl))
    return CentroidSplit(centroid, tuple(crops), no_ood, no_id)

