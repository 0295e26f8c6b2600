"""The figures of a report: ROC / PR curves of every method on one plot, and heat-map overlays of a score map over
its image (with the binary mask at a threshold). matplotlib (Agg: files only, never a window) and cv2 are imported
when a figure is drawn, not with this module.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cocodag.atomic import atomic_write
from cocodag.labels import IGNORE_ID

__all__ = ["normalize_scores", "plot_curves", "save_overlay"]

_OVERLAY_WIDTH = 1024          # overlays are drawn at most this wide (image + heat map + mask side by side)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)        # files only, never a window (works headless)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path | str) -> None:
    """``fig`` laid out and written to ``path`` atomically (parent folders made), then closed."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, keep_suffix=True) as tmp:
        fig.savefig(tmp)
    _pyplot().close(fig)


def plot_curves(out_dir: Path | str, curves: dict[str, dict], results: dict[str, dict] | None = None) -> None:
    """``roc.png`` and ``pr.png`` with every method on one plot each.

    ``curves[method]`` holds ``fpr``, ``tpr``, ``precision``, ``recall`` arrays (as ``PixelMetrics.curves``).
    """
    plt = _pyplot()
    out_dir = Path(out_dir)
    results = results or {}
    for kind, (xk, yk, xl, yl, mk) in {
        "roc": ("fpr", "tpr", "false positive rate", "true positive rate", "auroc"),
        "pr": ("recall", "precision", "recall", "precision", "ap"),
    }.items():
        many = len(curves) > 5   # (e.g. `oodscore compare` of several reports): the legend goes beside the plot
        fig, ax = plt.subplots(figsize=(9.0 if many else 5.5, 5), dpi=120)
        for i, (m, c) in enumerate(curves.items()):
            v = results.get(m, {}).get(mk)
            label = f"{m} ({mk.upper()} {v:.4f})" if v is not None else m
            ls = ("-", "--", "-.", ":")[(i // 10) % 4]   # past the 10 default colours, another line style
            if kind == "pr":
                ax.step(c[xk], c[yk], where="post", label=label, ls=ls)   # AP is the step-wise sum, draw it so
            else:
                ax.plot(c[xk], c[yk], label=label, ls=ls)
        if kind == "roc":
            ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
            ax.axvline(0, c="grey", lw=0)
        ax.set(xlabel=xl, ylabel=yl, xlim=(0, 1), ylim=(0, 1.01), title=kind.upper())
        ax.grid(alpha=0.3)
        if many:
            ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, frameon=False)
        else:
            ax.legend(loc="lower right" if kind == "roc" else "upper right", fontsize=8)
        save_figure(fig, out_dir / f"{kind}.png")


def normalize_scores(score: np.ndarray, valid: np.ndarray | None = None, lo_pct: float = 1.0,
                     hi_pct: float = 99.0) -> tuple[np.ndarray, float, float]:
    """Map a score map to [0, 1] with robust percentiles (so negative or heavy-tailed scores do not look black).

    Returns the normalized map and the score values that map to 0 and 1.
    """
    s = np.asarray(score, dtype=np.float64)
    v = s[np.isfinite(s) & (valid if valid is not None else True)]
    if v.size == 0:
        return np.zeros_like(s, dtype=np.float32), 0.0, 1.0
    lo, hi = np.percentile(v, [lo_pct, hi_pct])
    if not hi > lo:
        lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        return np.zeros_like(s, dtype=np.float32), float(lo), float(lo) + 1.0
    n = np.clip((s - lo) / (hi - lo), 0.0, 1.0)
    return np.nan_to_num(n, nan=0.0).astype(np.float32), float(lo), float(hi)


def _resize(arr: np.ndarray, hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    import cv2

    if arr.shape[:2] == hw:
        return arr
    return cv2.resize(arr, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


def save_overlay(path: Path | str, image: np.ndarray, score: np.ndarray, label: np.ndarray | None = None, *,
                 threshold: float | None = None, threshold_name: str = "", title: str = "",
                 cmap: str = "inferno") -> None:
    """Heat map of one score map over its image, with a colour bar, and the binary mask at ``threshold``.

    Parameters
    ----------
    image : (h, w, 3) uint8 RGB
    score : (H, W) float, higher = more anomalous; normalized to [0, 1] by robust percentiles for display.
    label : (H, W) uint8 0/1/255, optional; the anomaly outline is drawn on the mask panel.
    threshold : float, optional
        Score threshold for the mask panel (e.g. the F1-optimal or TPR-95 one of a validation run).
    """
    plt = _pyplot()
    image = np.asarray(image)
    if image.shape[1] > _OVERLAY_WIDTH:
        f = _OVERLAY_WIDTH / image.shape[1]
        image = _resize(image, (max(1, round(image.shape[0] * f)), _OVERLAY_WIDTH))
    hw = image.shape[:2]
    score_r = _resize(np.asarray(score, dtype=np.float32), hw)
    label_r = _resize(label, hw, nearest=True) if label is not None else None
    valid = label_r != IGNORE_ID if label_r is not None else None
    norm, lo, hi = normalize_scores(score_r, valid)
    panels = 2 if threshold is None else 3
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels * hw[1] / max(hw[0], 1) * 0.55 + 1, 3.4), dpi=110,
                             squeeze=False)
    axes = axes[0]
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(image)
    im = axes[1].imshow(norm, cmap=cmap, vmin=0, vmax=1, alpha=0.55)
    axes[1].set_title(f"score (p1={lo:.3g} -> 0, p99={hi:.3g} -> 1)", fontsize=8)
    cb = fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02)
    cb.set_label("normalized anomaly score", fontsize=7)
    cb.ax.tick_params(labelsize=7)
    if threshold is not None:
        mask = score_r >= threshold          # the metrics' convention: score >= threshold is anomalous
        shown = image.astype(np.float32) * 0.6
        shown[mask] = shown[mask] * 0.3 + np.array([255, 40, 40]) * 0.7
        axes[2].imshow(shown.astype(np.uint8))
        if label_r is not None and (label_r == 1).any():
            axes[2].contour(label_r == 1, levels=[0.5], colors="cyan", linewidths=0.8)
        axes[2].set_title(f"score >= {threshold:.4g} ({threshold_name}); cyan: ground truth", fontsize=8)
    for a in axes:
        a.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
