"""The overlay of ``oodscore meta-classify``: a frame's predicted anomaly segments, kept (red) and removed by the
meta classifier (blue), over the frame (its RGB image, or the normalized entropy map when the logits file holds no
image), with the ground-truth anomaly outlined (cyan). matplotlib and cv2 are imported when a figure is drawn
(:mod:`oodscore.plots`' style: Agg, files only, written atomically).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .plots import _OVERLAY_WIDTH, _pyplot, _resize, save_figure

__all__ = ["KEPT_RGB", "REMOVED_RGB", "save_meta_overlay"]

KEPT_RGB = (255, 40, 40)        # red: a segment the classifier keeps (an anomaly prediction)
REMOVED_RGB = (40, 110, 255)    # blue: a segment it removes (judged a false positive)


def _rgb(background: np.ndarray) -> np.ndarray:
    """An (h, w, 3) uint8 image: RGB as it is, a [0, 1] map (the entropy) in grey."""
    bg = np.asarray(background)
    if bg.ndim == 3:
        return bg.astype(np.uint8)
    g = np.clip(np.nan_to_num(bg.astype(np.float32)), 0, 1) * 255
    return np.repeat(g.astype(np.uint8)[..., None], 3, axis=2)


def save_meta_overlay(path: Path | str, background: np.ndarray, components: np.ndarray, kick: np.ndarray,
                      label: np.ndarray | None = None, *, title: str = "", counts: dict | None = None) -> None:
    """Two panels: the frame, and its segments coloured by the classifier's decision.

    Parameters
    ----------
    background : (h, w, 3) uint8 RGB image, or (H, W) normalized entropy in [0, 1]
    components : (H, W) int, +k / -k on segment k (``oodscore.metaseg.segment_metrics``)
    kick : (n,) the decision of each segment of the frame (1 = removed)
    label : (H, W) uint8 0/1/255, optional: the anomaly (1) is outlined
    counts : the frame's counts (``oodscore.meta.count_segments``), shown under the panels
    """
    plt = _pyplot()
    image = _rgb(background)
    if image.shape[1] > _OVERLAY_WIDTH:
        f = _OVERLAY_WIDTH / image.shape[1]
        image = _resize(image, (max(1, round(image.shape[0] * f)), _OVERLAY_WIDTH))
    hw = image.shape[:2]
    seg = _resize(np.abs(np.asarray(components)).astype(np.int32), hw, nearest=True)
    kick = np.asarray(kick).astype(bool)
    removed = np.zeros(int(seg.max(initial=0)) + 1, dtype=bool)
    removed[1:kick.size + 1] = kick
    shown = image.astype(np.float32) * 0.6
    masks = (((seg > 0) & ~removed[seg], KEPT_RGB), ((seg > 0) & removed[seg], REMOVED_RGB))
    for mask, colour in masks:
        shown[mask] = shown[mask] * 0.3 + np.array(colour) * 0.7
    fig, axes = plt.subplots(1, 2, figsize=(2 * 4.2 * hw[1] / max(hw[0], 1) * 0.55 + 1, 3.6), dpi=110)
    axes[0].imshow(image)
    axes[0].set_title("image" if np.asarray(background).ndim == 3 else "normalized entropy", fontsize=9)
    axes[1].imshow(shown.astype(np.uint8))
    for mask, colour in masks:      # outlined too: small segments stay visible
        if mask.any():
            axes[1].contour(mask, levels=[0.5], colors=[tuple(c / 255 for c in colour)], linewidths=0.9)
    if label is not None:
        lab = _resize(np.asarray(label), hw, nearest=True)
        if (lab == 1).any():
            axes[1].contour(lab == 1, levels=[0.5], colors="cyan", linewidths=0.8)
    axes[1].set_title(f"red: kept ({int((~kick).sum())}), blue: removed ({int(kick.sum())}); cyan: ground truth",
                      fontsize=8)
    for a in axes:
        a.axis("off")
    if counts:
        shown_counts = ("fp_before", "fp_left", "tp_removed", "fn_before", "fn_after")
        text = ", ".join(f"{k} {counts[k]}" for k in shown_counts if counts.get(k) is not None)
        if text:
            fig.text(0.5, 0.01, text, ha="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
