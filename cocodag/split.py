"""Split a pasted frame by the object's centroid into four S×S quadrant crops (DESIGN §4.1.3). Pure functions."""
from __future__ import annotations

from .errors import CocodagError

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
