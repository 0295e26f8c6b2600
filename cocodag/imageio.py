"""Image reading, defined once for the project: decode with cv2 (fast), check for truncation, name the file on error.

Conventions
-----------
* Colour images come back as ``(H, W, 3)`` uint8, BGR from :func:`decode_image` (what cv2 drawing code wants) or RGB
  from :func:`read_rgb` (what the networks take). No EXIF rotation is applied (``IMREAD_UNCHANGED``), like PIL's
  ``Image.open`` that the field's reference code uses, so the decoded bytes equal upstream's.
* Label / mask images come back as the stored single-channel values (palette PNGs give their indices).
* :func:`image_size` is ``(width, height)`` read from the header, like PIL's ``Image.size``.
"""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import CocodagError

_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path | str) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk without decoding it; raises :class:`CocodagError` if not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != _PNG_SIG or head[12:16] != b"IHDR":
        raise CocodagError(f"{path}: not a PNG file (bad signature/header); corrupt or truncated")
    w, h = struct.unpack(">II", head[16:24])
    return int(w), int(h)


def _truncated(buf: np.ndarray) -> bool:
    """True when a PNG lacks its IEND chunk or a JPEG lacks its EOI marker near the end (truncated download)."""
    b = buf[:8].tobytes()
    if b.startswith(_PNG_SIG):
        return b"IEND" not in buf[-32:].tobytes()
    if b.startswith(b"\xff\xd8"):
        # Some encoders pad after EOI; look in the tail rather than at the last two bytes only.
        return b"\xff\xd9" not in buf[-1024:].tobytes()
    return False


def decode_image(path: Path | str, *, color: bool = True) -> np.ndarray:
    """Decode an image file once, fast (cv2, ``IMREAD_UNCHANGED``).

    Returns ``(H, W, 3)`` uint8 **BGR** when ``color`` (grey / alpha / 16-bit inputs are converted), else the raw
    single-channel uint8 array. Raises :class:`CocodagError` naming the file when it is missing, corrupt or truncated.
    """
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except (FileNotFoundError, IsADirectoryError):
        raise CocodagError(f"{path}: image file not found") from None
    if buf.size == 0 or _truncated(buf):
        raise CocodagError(f"{path}: corrupt or truncated image file ({buf.size} bytes)")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CocodagError(f"{path}: corrupt image file (cannot be decoded)")
    if img.dtype != np.uint8:
        if img.dtype == np.uint16 and color:
            img = (img.view(np.uint16) >> 8).astype(np.uint8)
        else:
            raise CocodagError(f"{path}: expected 8-bit image, got {img.dtype}")
    if not color:
        if img.ndim != 2:
            raise CocodagError(f"{path}: expected a single-channel label PNG, got shape {img.shape}")
        return img
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    elif img.shape[2] != 3:
        raise CocodagError(f"{path}: expected 1, 3 or 4 channels, got {img.shape[2]}")
    return img


def read_rgb(path: Path | str) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of an image file (see :func:`decode_image` for the checks)."""
    return np.ascontiguousarray(decode_image(path, color=True)[..., ::-1])


def read_label(path: Path | str) -> np.ndarray:
    """Read a single-channel label / mask image unchanged (palette PNGs give their indices, not colours)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise CocodagError(f"{path}: label image has mode {im.mode}; expected a single-channel (L/P) PNG")
            arr = np.asarray(im)
    except FileNotFoundError:
        raise CocodagError(f"{path}: label image not found") from None
    except (OSError, SyntaxError) as e:
        raise CocodagError(f"{path}: cannot read label image ({e})") from None
    if arr.ndim != 2:
        raise CocodagError(f"{path}: label image has shape {arr.shape}; expected (H, W)")
    return arr


def image_size(path: Path | str) -> tuple[int, int]:
    """``(width, height)`` of an image from its header only (no decoding)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise CocodagError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise CocodagError(f"{path}: corrupt image file ({e.__class__.__name__})") from None
    return int(w), int(h)
