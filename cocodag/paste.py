"""Paste one COCO object into a Cityscapes frame (docs/methods.md §2.2). Pure: inputs are never modified."""
from __future__ import annotations

import cv2
import numpy as np

from .errors import CocodagError
from .labels import OOD_ID


def crop_to_mask(obj_rgb: np.ndarray, obj_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut an object image and its 0/1 mask to the mask's bounding box (views, no copy)."""
    ys = np.flatnonzero(obj_mask.any(axis=1))
    xs = np.flatnonzero(obj_mask.any(axis=0))
    if ys.size == 0:
        raise CocodagError("object mask is empty")
    return obj_rgb[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1], obj_mask[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]


def scale_object(obj_rgb: np.ndarray, obj_mask: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Resize an object (bilinear) and its mask (nearest) by ``scale`` (1.0 = original COCO scale, no resampling)."""
    if scale == 1.0:
        return obj_rgb, obj_mask
    h, w = obj_mask.shape
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    return (cv2.resize(obj_rgb, (nw, nh), interpolation=cv2.INTER_LINEAR),
            cv2.resize(obj_mask, (nw, nh), interpolation=cv2.INTER_NEAREST))


def paste_object(frame_rgb: np.ndarray, frame_label: np.ndarray, obj_rgb: np.ndarray, obj_mask: np.ndarray,
                 centroid: tuple[int, int], scale: float = 1.0, feather: float = 0.0, *, return_box: bool = False,
                 inplace: bool = False):
    """Composite an object into a frame so that the object mask's centroid lands on ``centroid`` = (x, y).

    Parameters
    ----------
    frame_rgb : (H, W, 3) uint8 (any channel order, used as is); frame_label : (H, W) uint8 trainIds.
    obj_rgb : (h, w, 3) uint8, same channel order; obj_mask : (h, w) 0/1 (cut to its bounding box here).
    centroid : target (x, y) of the object's mask centroid, in frame pixels; parts outside the frame are clipped.
    scale : object resize factor (1.0 = the seed's: original COCO scale).
    feather : *ours*; Gaussian sigma (px) of an inward-feathered alpha edge; 0 = hard paste (the seed's).
    return_box : also return the pasted region ``(x0, y0, x1, y1)`` in frame coordinates (empty when clipped away).
    inplace : write into ``frame_rgb`` / ``frame_label`` instead of copies (the builder's fast path: a 2048x1024
        frame copy costs more than the paste itself). Default ``False``: the function is pure.

    Returns
    -------
    composite : (H, W, 3) uint8 copy of the frame with the object pasted where mask = 1.
    label : (H, W) uint8 copy of ``frame_label`` with ``OOD_ID`` (254) at the pasted mask, trainIds elsewhere.
    """
    if obj_mask.shape != obj_rgb.shape[:2]:
        raise CocodagError(f"object mask {obj_mask.shape} and image {obj_rgb.shape[:2]} differ in size")
    obj_rgb, obj_mask = crop_to_mask(obj_rgb, obj_mask.astype(np.uint8, copy=False))
    obj_rgb, obj_mask = scale_object(obj_rgb, obj_mask, float(scale))
    H, W = frame_label.shape
    h, w = obj_mask.shape
    ys, xs = np.nonzero(obj_mask)
    comp, lab = (frame_rgb, frame_label) if inplace else (frame_rgb.copy(), frame_label.copy())
    if ys.size == 0:
        return (comp, lab, (0, 0, 0, 0)) if return_box else (comp, lab)
    # Top-left of the object so that its mask centroid lands on the target point.
    ox = int(round(centroid[0] - xs.mean()))
    oy = int(round(centroid[1] - ys.mean()))
    x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + w, W), min(oy + h, H)
    if x1 <= x0 or y1 <= y0:
        return (comp, lab, (0, 0, 0, 0)) if return_box else (comp, lab)
    m = obj_mask[y0 - oy:y1 - oy, x0 - ox:x1 - ox].astype(bool)
    src = obj_rgb[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    dst = comp[y0:y1, x0:x1]
    if feather > 0:
        # Inward feather: alpha = blur(mask) inside the mask, 0 outside, so no COCO background leaks in.
        a = cv2.GaussianBlur(obj_mask.astype(np.float32), (0, 0), float(feather), borderType=cv2.BORDER_CONSTANT)
        a = (a[y0 - oy:y1 - oy, x0 - ox:x1 - ox] * m)[..., None]
        dst[...] = np.clip(a * src + (1.0 - a) * dst + 0.5, 0, 255).astype(np.uint8)
    else:
        dst[m] = src[m]
    lab[y0:y1, x0:x1][m] = OOD_ID
    if not m.any():
        x0 = y0 = x1 = y1 = 0
    return (comp, lab, (x0, y0, x1, y1)) if return_box else (comp, lab)
