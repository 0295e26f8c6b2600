"""`cocodag inspect`: counts per stream, OOD-pixel fraction and a contact sheet with the OOD mask outlined."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .atomic import atomic_write_bytes
from .errors import CocodagError
from .formats.shards import KINDS, open_dataset
from .labels import IGNORE_ID, OOD_ID

_OUTLINE_BGR = (0, 0, 255)   # red in cv2's BGR order
_THUMB = 160


def _outlined(image_rgb: np.ndarray, label: np.ndarray, size: int) -> np.ndarray:
    """Thumbnail (BGR, size x size) of a crop with the OOD region's contour drawn in red."""
    bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    mask = cv2.resize((label == OOD_ID).astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    thumb = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(thumb, contours, -1, _OUTLINE_BGR, 2)
    return thumb


def _pick(n: int, k: int) -> list[int]:
    """k indices spread evenly over 0..n-1 (deterministic: same sheet for the same dataset)."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def inspect_dataset(root: Path | str, *, sheet: Path | str | None = None, per_stream: int = 8,
                    thumb: int = _THUMB) -> dict[str, Any]:
    """Per-stream sample/shard counts, OOD and ignore pixel fractions; optionally write a contact sheet PNG.

    The sheet has one row per stream (label on the left), ``per_stream`` crops spread over the stream.
    """
    ds = open_dataset(root, verify_checksums=False)
    streams: dict[str, dict[str, Any]] = {}
    rows = []
    for kind in KINDS:
        shards = ds.shards_of(kind)
        n = sum(s.num_samples for s in shards)
        ood = ign = tot = 0
        for info in shards:
            with ds.open_shard(info) as sh:
                for a in range(0, info.num_samples, 64):
                    lab = sh.label[a:a + 64]
                    ood += int((lab == OOD_ID).sum())
                    ign += int((lab == IGNORE_ID).sum())
                    tot += lab.size
        streams[kind] = {"samples": n, "shards": len(shards), "ood_fraction": ood / tot if tot else 0.0,
                         "ignore_fraction": ign / tot if tot else 0.0}
        if sheet is not None and n:
            thumbs = []
            offsets = np.cumsum([0] + [s.num_samples for s in shards])
            for gi in _pick(n, per_stream):
                si = int(np.searchsorted(offsets, gi, side="right") - 1)
                with ds.open_shard(shards[si]) as sh:
                    img, lab = sh.read(gi - offsets[si], gi - offsets[si] + 1)
                thumbs.append(_outlined(img[0], lab[0], thumb))
            rows.append((kind, thumbs))
    if sheet is not None:
        if not rows:
            raise CocodagError(f"{root}: dataset holds no samples; nothing to draw")
        _write_sheet(Path(sheet), rows, per_stream, thumb)
    return {"streams": streams, "total": ds.num_samples()}


def _write_sheet(path: Path, rows: list[tuple[str, list[np.ndarray]]], per_stream: int, thumb: int) -> None:
    pad, label_w = 4, 110
    cols = max(per_stream, max(len(t) for _, t in rows))
    H = len(rows) * (thumb + pad) + pad
    W = label_w + cols * (thumb + pad) + pad
    canvas = np.full((H, W, 3), 255, dtype=np.uint8)
    for r, (kind, thumbs) in enumerate(rows):
        y = pad + r * (thumb + pad)
        cv2.putText(canvas, kind, (pad, y + thumb // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        for c, t in enumerate(thumbs):
            x = label_w + pad + c * (thumb + pad)
            canvas[y:y + thumb, x:x + thumb] = t
    # Encoded here, not by the file name: the sheet is a PNG whatever --out is called.
    ok, buf = cv2.imencode(".png", canvas)
    if not ok:
        raise CocodagError(f"--out {path}: cannot encode the contact sheet")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.tobytes())
    except OSError as e:
        raise CocodagError(f"--out {path}: cannot write the contact sheet ({e.strerror or e})") from None
