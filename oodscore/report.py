"""Evaluation runs and their reports: metrics.json / metrics.csv, ROC and PR plots, heat-map overlays, thresholds.

Two entry points, both streaming one frame at a time (pass 1: pixel metrics; pass 2, only for component metrics:
recompute the scores and threshold them at the F1-optimal pixel threshold of pass 1):

- :func:`evaluate_logits` — scores computed from a ``logits.h5`` file by the named methods;
- :func:`evaluate_score_maps` — any method's saved score maps, matched by frame name to an evaluation set preset.

Report folder::

    metrics.json      {method: {metric: value}}
    metrics.csv       one row per method
    roc.png, pr.png   every method on one plot
    thresholds.json   per method: the F1-optimal and TPR-95 thresholds of this run (reusable: --threshold-from)
    overlays/<frame>__<method>.png   heat map (normalized to [0,1], colour bar) + binary mask at a threshold
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from cocodag.atomic import atomic_write_text

from . import OodscoreError

THRESHOLDS_FORMAT = "oodscore-thresholds"
THRESHOLD_KINDS = ("f1", "tpr95")
METHODS = ("msp", "maxlogit", "entropy", "sml", "vde", "oodmc")
_TPR95_POINTS = 100_000      # curve points used to find the TPR-95 threshold (exact below this many distinct scores)
_OVERLAY_WIDTH = 1024          # overlays are drawn at most this wide (image + heat map + mask side by side)


# ------------------------------------------------------------------------------------------------- files
def _jsonable(v):
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in v]
    return v


def write_metrics(out_dir: Path | str, results: dict[str, dict]) -> None:
    """Write ``metrics.json`` (``{method: {metric: value}}``) and ``metrics.csv`` (one row per method)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scalars = {m: {k: _jsonable(v) for k, v in r.items() if np.isscalar(v) or v is None} for m, r in results.items()}
    atomic_write_text(out_dir / "metrics.json", json.dumps(scalars, indent=2) + "\n")
    keys: list[str] = []
    for r in scalars.values():
        keys += [k for k in r if k not in keys]
    tmp = out_dir / "metrics.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", *keys])
        for m, r in scalars.items():
            w.writerow([m, *("" if r.get(k) is None else repr(r[k]) if isinstance(r[k], float) else r[k]
                             for k in keys)])
    os.replace(tmp, out_dir / "metrics.csv")


def save_thresholds(path: Path | str, thresholds: dict[str, dict[str, float]], *, source: str = "") -> None:
    """Save per-method thresholds ``{method: {"f1": t, "tpr95": t}}`` (found on a validation run) as JSON."""
    doc = {"format": THRESHOLDS_FORMAT, "version": 1, "source": source, "methods": _jsonable(thresholds)}
    atomic_write_text(Path(path), json.dumps(doc, indent=2) + "\n")


def load_thresholds(path: Path | str, kind: str = "f1") -> dict[str, float]:
    """Read a ``thresholds.json`` and return ``{method: threshold}`` of the given kind (``"f1"`` or ``"tpr95"``)."""
    path = Path(path)
    if kind not in THRESHOLD_KINDS:
        raise OodscoreError(f"--threshold-kind {kind!r}: expected one of {', '.join(THRESHOLD_KINDS)}")
    if not path.is_file():
        raise OodscoreError(f"{path}: thresholds file not found")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise OodscoreError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != THRESHOLDS_FORMAT:
        raise OodscoreError(f"{path}: format {doc.get('format') if isinstance(doc, dict) else None!r}, "
                            f"expected {THRESHOLDS_FORMAT!r} (a thresholds.json written by oodscore evaluate)")
    out = {}
    for m, t in doc.get("methods", {}).items():
        if isinstance(t, dict) and t.get(kind) is not None:
            out[m] = float(t[kind])
    return out


# ------------------------------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)        # files only, never a window (works headless)
    import matplotlib.pyplot as plt

    return plt


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
        fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
        for m, c in curves.items():
            v = results.get(m, {}).get(mk)
            label = f"{m} ({mk.upper()} {v:.4f})" if v is not None else m
            if kind == "pr":
                ax.step(c[xk], c[yk], where="post", label=label)   # AP is the step-wise sum, draw it so
            else:
                ax.plot(c[xk], c[yk], label=label)
        if kind == "roc":
            ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
            ax.axvline(0, c="grey", lw=0)
        ax.set(xlabel=xl, ylabel=yl, xlim=(0, 1), ylim=(0, 1.01), title=kind.upper())
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if kind == "roc" else "upper right", fontsize=8)
        fig.tight_layout()
        tmp = out_dir / f"{kind}.tmp.png"
        fig.savefig(tmp)
        plt.close(fig)
        os.replace(tmp, out_dir / f"{kind}.png")


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
    valid = label_r != 255 if label_r is not None else None
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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------- evaluation
def _safe_name(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)


def tpr95_threshold(curves: dict) -> float | None:
    """The score threshold of the FPR95 operating point: the first threshold (descending) with TPR >= 0.95."""
    tpr = np.asarray(curves["tpr"])
    thr = np.asarray(curves["thresholds"])
    n = min(len(tpr), len(thr))
    hits = np.flatnonzero(tpr[:n] >= 0.95)
    if not hits.size:
        return None
    # curves are ordered by threshold; pick the highest threshold that reaches TPR 0.95
    return float(np.max(thr[:n][hits]))


def _overlay_indices(n: int, k: int) -> list[int]:
    """``k`` frames spread evenly over ``n`` (deterministic)."""
    if k <= 0 or n == 0:
        return []
    k = min(k, n)
    return sorted({int(round(i * (n - 1) / max(k - 1, 1))) for i in range(k)})


def _apply_region(label: np.ndarray, roi: np.ndarray | None, region: str, name: str) -> np.ndarray:
    if region == "all":
        return label
    if roi is None:
        raise OodscoreError(f"frame {name!r}: --region road needs a roi mask, but none is available")
    return np.where(roi != 0, label, np.uint8(255)).astype(np.uint8)


@dataclass
class EvalOutput:
    """What an evaluation run produced: metrics per method, thresholds, written files."""

    results: dict[str, dict]
    thresholds: dict[str, dict]
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    extra_names: list[str] = field(default_factory=list)


def _run(out_dir: Path, methods: Sequence[str], frames: Callable[[], Iterable[tuple]], num_frames: int, *,
         bins: int | None, components: str, threshold_from: dict[str, float] | None, threshold_kind: str,
         overlay_at: set[int], progress: bool, source: str) -> EvalOutput:
    """Shared two-pass loop. ``frames()`` yields ``(name, label, {method: score}, image | None)`` per frame."""
    from tqdm import tqdm

    from .metrics import PixelMetrics

    out_dir.mkdir(parents=True, exist_ok=True)
    pm = {m: PixelMetrics(bins=bins) for m in methods}
    kept: list[tuple[str, np.ndarray, dict, np.ndarray]] = []   # only the few overlay frames are kept
    for i, (name, label, scores, image) in enumerate(tqdm(frames(), total=num_frames, desc="evaluate",
                                                          unit="frame", disable=not progress)):
        for m in methods:
            s = scores[m]
            if s.shape != label.shape:
                raise OodscoreError(f"frame {name!r}: {m} score map has shape {s.shape}, label {label.shape}")
            try:
                pm[m].update(s, label)
            except OodscoreError as e:      # say which frame and method, the metric only sees arrays
                raise OodscoreError(f"frame {name!r}, {m}: {e}") from None
        if i in overlay_at and image is not None:
            kept.append((name, label, {m: scores[m].astype(np.float16) for m in methods}, image))
    results = {m: pm[m].compute() for m in methods}
    curves = {m: pm[m].curves() for m in methods}
    # TPR-95 threshold: from the full curve when it has at most _TPR95_POINTS points (exact); beyond that from a
    # curve subsampled to _TPR95_POINTS points: still TPR >= 0.95, at most n/_TPR95_POINTS distinct scores higher
    thresholds = {}
    for m in methods:
        n_points = pm[m].n_distinct + 2
        c = pm[m].curves(max_points=min(n_points, _TPR95_POINTS))
        thresholds[m] = {"f1": results[m].get("threshold"), "tpr95": tpr95_threshold(c),
                         "tpr95_exact": n_points <= _TPR95_POINTS}
    if threshold_from is not None:
        missing = [m for m in methods if m not in threshold_from]
        if missing:
            raise OodscoreError(f"--threshold-from has no {threshold_kind} threshold for method(s) "
                                f"{', '.join(missing)}; it has {', '.join(sorted(threshold_from)) or 'none'}")
        for m in methods:
            fixed = _fixed_threshold_stats(pm[m], threshold_from[m])
            results[m].update({f"{k}@{threshold_kind}_given": v for k, v in fixed.items()})
    if components != "none":
        from .components import ComponentMetrics

        cms = {m: ComponentMetrics(threshold=results[m]["threshold"], track=components) for m in methods}
        for name, label, scores, _ in tqdm(frames(), total=num_frames, desc="components", unit="frame",
                                           disable=not progress):
            for m in methods:
                cms[m].update(scores[m], label)
        for m in methods:
            results[m].update({f"component_{k}" if not k.startswith("component") else k: v
                               for k, v in cms[m].compute().items() if np.isscalar(v)})
    files = []
    write_metrics(out_dir, results)
    files += [out_dir / "metrics.json", out_dir / "metrics.csv"]
    plot_curves(out_dir, curves, results)
    files += [out_dir / "roc.png", out_dir / "pr.png"]
    save_thresholds(out_dir / "thresholds.json", thresholds, source=source)
    files.append(out_dir / "thresholds.json")
    for name, label, scores, image in kept:
        for m in methods:
            if threshold_from is not None:
                t, tn = threshold_from[m], f"{threshold_kind}, given"
            else:
                t, tn = thresholds[m]["f1"], "F1-optimal on this run"
            p = out_dir / "overlays" / f"{_safe_name(name)}__{m}.png"
            save_overlay(p, image, scores[m].astype(np.float32), label, threshold=t, threshold_name=tn,
                         title=f"{name} — {m}")
            files.append(p)
    return EvalOutput(results, thresholds, out_dir, files)


def _fixed_threshold_stats(pm, threshold: float) -> dict:
    """F1 / precision / recall / FPR of a streamed metric at a given threshold (``score >= threshold``)."""
    r = pm.compute(threshold=threshold)
    return {k: r[k] for k in ("threshold", "f1", "precision", "recall", "fpr") if k in r}


def build_scorers(methods: Sequence[str], *, num_classes: int, has_mc: bool, sml_stats: Path | None = None,
                  boundary_iters: int = 4, smoothing: bool = True, vde_threshold: float | None = None,
                  oodmc_model: Path | None = None, device: str | None = None) -> dict:
    """Instantiate each method's scorer, checking at once what it needs (stats file, model, MC data)."""
    from .scores import get_scorer

    seen = []
    for m in methods:
        if m not in METHODS:
            raise OodscoreError(f"unknown method {m!r}; known: {', '.join(METHODS)}")
        if m in seen:
            raise OodscoreError(f"method {m!r} given twice")
        seen.append(m)
    scorers = {}
    stats = None
    if {"sml", "vde"} & set(methods):
        if sml_stats is None:
            raise OodscoreError("methods sml/vde need --sml-stats FILE (from `oodscore fit-sml`)")
        from .scores import SMLStats

        if not Path(sml_stats).is_file():
            raise OodscoreError(f"--sml-stats {sml_stats}: file not found")
        stats = SMLStats.load(sml_stats)
        stats_classes = int(np.asarray(stats.mean_).shape[0]) if hasattr(stats, "mean_") else num_classes
        if stats_classes != num_classes:
            raise OodscoreError(f"--sml-stats {sml_stats}: stats have {stats_classes} classes, "
                                f"the logits have {num_classes}")
    for m in methods:
        if m in ("msp", "maxlogit", "entropy"):
            scorers[m] = get_scorer(m, device=device)
        elif m == "sml":
            scorers[m] = get_scorer(m, stats=stats, boundary_iters=boundary_iters, smoothing=smoothing, device=device)
        elif m == "vde":
            kw = {} if vde_threshold is None else {"threshold": vde_threshold}
            scorers[m] = get_scorer(m, stats=stats, boundary_iters=boundary_iters, smoothing=smoothing,
                                    device=device, **kw)
        elif m == "oodmc":
            if oodmc_model is None:
                raise OodscoreError("method oodmc needs --oodmc-model FILE (from `oodscore fit-oodmc`)")
            if not has_mc:
                raise OodscoreError("method oodmc needs MC-dropout data (mc/*) in the logits file; "
                                    "export with --mc-samples T --moment-order K")
            if not Path(oodmc_model).is_file():
                raise OodscoreError(f"--oodmc-model {oodmc_model}: file not found")
            from .scores import OODMC

            scorers[m] = OODMC.load(oodmc_model)
    return scorers


def evaluate_logits(logits_path: Path | str, methods: Sequence[str], out_dir: Path | str, *,
                    sml_stats: Path | str | None = None, boundary_iters: int = 4, smoothing: bool = True,
                    vde_threshold: float | None = None, oodmc_model: Path | str | None = None,
                    components: str = "none", region: str = "all", bins: int | None = None, max_overlays: int = 4,
                    threshold_from: Path | str | None = None, threshold_kind: str = "f1",
                    device: str | None = None, progress: bool = True) -> EvalOutput:
    """Score every frame of a ``logits.h5`` file with each method and write the report to ``out_dir``.

    Parameters
    ----------
    methods : names from ``METHODS``
    components : {"none", "anomaly", "obstacle"}
        SegmentMeIfYouCan component metrics (second pass) with that track's size filters.
    region : {"all", "road"}
        ``road`` voids every pixel outside the file's ``roi`` (an error when the file has none).
    bins : int, optional
        None = exact metrics; an int = quantile-binned streaming metrics.
    threshold_from, threshold_kind
        A ``thresholds.json`` of a validation run: its thresholds draw the overlay masks and give
        F1/precision/recall/FPR at that fixed threshold (``<metric>@<kind>_given``).
    """
    from cocodag.formats.logits import LogitsFile

    if not methods:
        raise OodscoreError("no --method given; choose from " + ", ".join(METHODS))
    _check_choices(components, region)
    given = load_thresholds(threshold_from, threshold_kind) if threshold_from is not None else None
    lf = LogitsFile(logits_path)
    try:
        if region == "road" and not lf.has_roi:
            raise OodscoreError(f"{lf.path}: --region road needs a 'roi' dataset in the logits file "
                                "(export from a road-region preset, e.g. lostandfound)")
        scorers = build_scorers(methods, num_classes=lf.num_classes, has_mc=lf.has_mc,
                                sml_stats=Path(sml_stats) if sml_stats else None, boundary_iters=boundary_iters,
                                smoothing=smoothing, vde_threshold=vde_threshold,
                                oodmc_model=Path(oodmc_model) if oodmc_model else None, device=device)
        overlay_at = set(_overlay_indices(len(lf), max_overlays)) if lf.has_images else set()

        def frames():
            for i in range(len(lf)):
                fr = lf.frame(i, image=i in overlay_at)
                label = _apply_region(fr.label, fr.roi, region, fr.image_id)
                mc = lf.mc(i) if "oodmc" in scorers else None
                scores = {}
                for m, sc in scorers.items():
                    s = sc.score(mc) if m == "oodmc" else sc.score(fr.logits, size=label.shape)
                    scores[m] = np.asarray(s, dtype=np.float32)
                yield fr.image_id, label, scores, fr.image

        return _run(Path(out_dir), list(scorers), frames, len(lf), bins=bins, components=components,
                    threshold_from=given, threshold_kind=threshold_kind, overlay_at=overlay_at, progress=progress,
                    source=str(logits_path))
    finally:
        lf.close()


def _check_choices(components: str, region: str) -> None:
    if components not in ("none", "anomaly", "obstacle"):
        raise OodscoreError(f"--components {components!r}: expected anomaly, obstacle or none")
    if region not in ("all", "road"):
        raise OodscoreError(f"--region {region!r}: expected all or road")


def _read_rgb(path: Path) -> np.ndarray | None:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def evaluate_score_maps(scores_path: Path | str, dataset: str, out_dir: Path | str, *, name: str | None = None,
                        components: str = "none", region: str | None = None, bins: int | None = None,
                        max_overlays: int = 4, threshold_from: Path | str | None = None, threshold_kind: str = "f1",
                        resize: bool = False, progress: bool = True) -> EvalOutput:
    """Evaluate any method's saved score maps against an evaluation set given as ``PRESET:ROOT``.

    Parameters
    ----------
    scores_path : directory of ``<name>.npy|.npz|.hdf5`` or one ``scores.h5`` (see :func:`oodscore.io.open_score_maps`)
    dataset : ``"PRESET:ROOT"`` (a bare path = the standard converted layout)
    name : method name in the report (default: the scores path's name)
    region : {"all", "road"}, optional; default: the preset's own region
    resize : bool
        Resize score maps whose size differs from the label bilinearly (as the SegmentMeIfYouCan tooling does);
        default False: a size mismatch is an error.
    """
    from cocodag.formats.evalsets import parse_dataset_spec

    from .io import open_score_maps

    preset, root = parse_dataset_spec(dataset)
    region = region or preset.region_of(root)
    _check_choices(components, region)
    given = load_thresholds(threshold_from, threshold_kind) if threshold_from is not None else None
    items = preset.find(root)
    method = name or Path(scores_path).stem or "scores"
    with open_score_maps(scores_path) as maps:
        extra = maps.match([it.name for it in items])
        overlay_at = set(_overlay_indices(len(items), max_overlays))

        def frames():
            for i, it in enumerate(items):
                label = preset.load_label(it.label_path)
                roi = preset.load_roi(it) if region == "road" else None
                label = _apply_region(label, roi, region, it.name)
                s = maps.get(it.name)
                if s.shape != label.shape:
                    if not resize:
                        raise OodscoreError(f"{maps.path}: score map of {it.name!r} is {s.shape[0]}x{s.shape[1]}, "
                                            f"label is {label.shape[0]}x{label.shape[1]} (pass --resize-scores to "
                                            "resize bilinearly)")
                    s = _resize(s, label.shape)
                image = _read_rgb(it.image_path) if i in overlay_at else None
                yield it.name, label, {method: s}, image

        out = _run(Path(out_dir), [method], frames, len(items), bins=bins, components=components,
                   threshold_from=given, threshold_kind=threshold_kind, overlay_at=overlay_at, progress=progress,
                   source=f"{scores_path} on {dataset}")
    out.extra_names = extra
    return out
