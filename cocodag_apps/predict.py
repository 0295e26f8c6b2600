"""`maxent-train predict`: anomaly heat map, binary mask and overlay for one image or a folder.

A top-layer app (:mod:`cocodag_apps`): prediction = maxent_train's model inference + oodscore's scorers and
figures, so the two definitions cannot drift apart. It lives here because it needs both packages: maxent_train
(training, export) never imports oodscore, and oodscore never imports maxent_train.

Per image ``<name>`` it writes to ``OUT`` (each file atomically):
  ``<name>_heat.png``     score normalized to [0, 1] (1st..99th percentile of the frame), colour map + colour bar
  ``<name>_mask.png``     binary anomaly mask (255 = anomaly) at the recommended threshold, when one is known
  ``<name>_overlay.png``  image | heat map over the image | mask over the image (one figure)
  ``scores/<name>.npy``   the raw float32 score map (``--save-scores``), readable by ``oodscore evaluate --scores``
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from matplotlib.figure import Figure

from cocodag.arrays import to_numpy
from cocodag.atomic import atomic_write
from cocodag.device import resolve_device
from cocodag.formats.logits import class_logits
from cocodag.imageio import read_rgb
from cocodag.progress import progress_bar
from maxent_train import MaxentError
from maxent_train.data import normalize
from maxent_train.export import load_model_for_export, predict_logits
from oodscore import OodscoreError
from oodscore.options import ThresholdKind
from oodscore.report import load_thresholds, normalize_scores, save_overlay
from oodscore.scores import METHODS, check_methods, get_scorer, scorer_class

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _list_images(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise MaxentError(f"{path}: no images ({', '.join(IMAGE_EXTS)}) in this folder")
        return files
    raise MaxentError(f"{path}: no such image or folder")


def _heat_png(path: Path, norm: np.ndarray, lo: float, hi: float, method: str) -> None:
    """Colour-mapped normalized score with a colour bar (matplotlib's object API: no pyplot, no global backend)."""
    h, w = norm.shape
    fig = Figure(figsize=(6.4 * w / max(h, w) + 1.2, 6.4 * h / max(h, w)), dpi=100)
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="inferno", vmin=0, vmax=1)
    ax.axis("off")
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    cb.set_label(f"{method} score, normalized ({lo:.3g} -> 0, {hi:.3g} -> 1)", fontsize=8)
    fig.tight_layout()
    with atomic_write(path, keep_suffix=True) as tmp:
        fig.savefig(tmp)


def _scorer_and_threshold(method: str, sml_stats: str | Path | None, threshold: float | None,
                          threshold_from: str | Path | None, threshold_kind: str):
    """oodscore's scorer for ``method`` and the mask threshold (given, or read from ``thresholds.json``, or None).

    Any method of oodscore's registry that scores plain logits works; those that need fitted statistics (SML, VDE)
    read them from ``sml_stats``.
    """
    try:
        (method,) = check_methods([method])
    except OodscoreError as e:
        raise MaxentError(f"--method: {e}") from None
    cls = scorer_class(method)
    if cls.requires != "logits":
        usable = ", ".join(m for m in METHODS if scorer_class(m).requires == "logits")
        raise MaxentError(f"--method {method}: needs {cls.requires} inputs (MC-dropout moments from `maxent-train "
                          f"export --mc-samples`), not one forward pass; use `oodscore evaluate` for it, or one of "
                          f"{usable} here")
    if cls.requires_fit:
        if sml_stats is None:
            raise MaxentError(f"--method {method} needs --sml-stats FILE (from `maxent-train export "
                              f"--sml-stats` or `oodscore fit-sml`)")
        scorer = get_scorer(method, stats=str(sml_stats))
    else:
        scorer = get_scorer(method)
    if threshold is None and threshold_from is not None:
        table = load_thresholds(threshold_from, threshold_kind)
        if method not in table:
            raise MaxentError(f"--threshold-from {threshold_from}: no {threshold_kind} threshold for {method!r} "
                              f"(it has {', '.join(sorted(table)) or 'none'})")
        threshold = table[method]
    return scorer, threshold


def _write_outputs(out: Path, name: str, rgb: np.ndarray, score: np.ndarray, *, method: str,
                   threshold: float | None, threshold_name: str, save_scores: bool) -> None:
    """Heat map, mask (when a threshold is known), overlay and optionally the raw scores of one image."""
    norm, lo, hi = normalize_scores(score)
    _heat_png(out / f"{name}_heat.png", norm, lo, hi, method)
    if threshold is not None:
        mask = ((score >= threshold) * 255).astype(np.uint8)   # oodscore's convention: score >= t is anomalous
        with atomic_write(out / f"{name}_mask.png", keep_suffix=True) as tmp:
            if not cv2.imwrite(str(tmp), mask):
                raise MaxentError(f"{out / f'{name}_mask.png'}: cannot write the mask PNG")
    save_overlay(out / f"{name}_overlay.png", rgb, score, threshold=threshold, threshold_name=threshold_name,
                 title=f"{name} — {method}")
    if save_scores:
        (out / "scores").mkdir(exist_ok=True)
        with atomic_write(out / "scores" / f"{name}.npy", keep_suffix=True) as tmp:
            np.save(tmp, score.astype(np.float32))


@dataclass
class PredictOptions:
    """Options of ``maxent-train predict`` (see the CLI help).

    The network is the one the checkpoint's metadata names; ``model`` / ``model_kwargs`` / ``num_classes``
    (``--model``, ...) build it for a released file without metadata, or override it, as in ``maxent-train export``.
    The mask threshold is ``threshold`` if given, else ``threshold_from``'s (a ``thresholds.json`` written by
    ``oodscore evaluate`` on a validation set) for this method and ``threshold_kind`` (``f1`` or ``tpr95``); with
    neither, no mask is written.
    """

    method: str = "entropy"
    sml_stats: str | Path | None = None
    threshold: float | None = None
    threshold_from: str | Path | None = None
    threshold_kind: ThresholdKind = "f1"
    device: str = "auto"
    window: int | None = None
    stride: int | None = None
    save_scores: bool = False
    progress: bool = True
    model: str | None = None
    model_kwargs: dict | None = None
    num_classes: int | None = None


@torch.no_grad()
def predict_images(checkpoint: str | Path, inputs: str | Path, out: str | Path,
                   options: PredictOptions | None = None) -> dict[str, Any]:
    """Score every image of ``inputs`` with ``options.method`` and write heat map, mask and overlay PNGs to ``out``
    (see :class:`PredictOptions`).

    Raises
    ------
    CocodagError
        (``MaxentError``, ``OodscoreError`` or the foundation's own) a missing/undecodable image, a bad option, an
        unreadable checkpoint, statistics or thresholds file.
    """
    o = PredictOptions() if options is None else options
    dev = resolve_device(o.device)
    files = _list_images(Path(inputs))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scorer, threshold = _scorer_and_threshold(o.method, o.sml_stats, o.threshold, o.threshold_from, o.threshold_kind)
    net, meta = load_model_for_export(checkpoint, o.model, o.num_classes, dev, o.model_kwargs)
    threshold_name = f"{o.threshold_kind}" if o.threshold_from else "given"
    written = []
    for f in progress_bar(files, desc="predict", unit="img", disable=not o.progress):
        rgb = read_rgb(f)
        x = normalize(torch.from_numpy(rgb)[None].to(dev))
        logits = predict_logits(net, x, o.window, o.stride)
        # the class channels only: an abstention channel (PEBAL, Balanced Energy) is no class, as in oodscore
        score = scorer.score(to_numpy(class_logits(logits[0], meta["abstention_channel"]), "logits"))
        _write_outputs(out, f.stem, rgb, score, method=o.method, threshold=threshold, threshold_name=threshold_name,
                       save_scores=o.save_scores)
        written.append(f.stem)
    return {"images": written, "out": str(out), "method": o.method, "threshold": threshold,
            "model": str(meta["model"])}
