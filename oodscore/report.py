"""Evaluation runs and their reports: metrics.json / metrics.csv, ROC and PR plots, heat-map overlays, thresholds.

Two entry points, both streaming one frame at a time (pass 1: pixel metrics; pass 2, only for component metrics:
recompute the scores and threshold them at the F1-optimal pixel threshold of pass 1):

- :func:`evaluate_logits` — scores computed from a ``logits.h5`` file by the named methods (each scorer is fed the
  input it declares, ``Scorer.requires``: the logits or the file's MC-dropout block);
- :func:`evaluate_score_maps` — any method's saved score maps, matched by frame name to an evaluation set preset.

Both are two steps: :func:`evaluate_frames` computes everything (an :class:`Evaluation`, no files), then
:func:`write_report` writes the folder. Every file is written atomically (:mod:`cocodag.atomic`). The folder is
checked before the first frame is scored (:func:`cocodag.outputs.prepare_output`) and held exclusively for the whole
run (:class:`cocodag.lock.OutputLock`, ``<folder>/.lock``): a second evaluation into it is refused with one line
naming this one. Errors about one frame name its file and frame (a label value outside 0/1/255, NaN / inf logits or
scores); a full disk while writing is one line (``No space left on device: <folder>``).

Report folder::

    metrics.json      {method: {metric: value}}
    metrics.csv       one row per method
    roc.png, pr.png   every method on one plot
    thresholds.json   per method: the F1-optimal and TPR-95 thresholds of this run (reusable: --threshold-from)
    protocols.md, protocols.csv   with --protocol all: every method x protocol side by side (docs/protocols.md)
    overlays/<frame>__<method>.png   heat map (normalized to [0,1], colour bar) + binary mask at a threshold
    .lock             the lock file (empty once the run is over)
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from cocodag.atomic import atomic_write, atomic_write_text
from cocodag.errors import CocodagError
from cocodag.labels import IGNORE_ID
from cocodag.lock import OutputLock
from cocodag.outputs import disk_errors, prepare_output

from . import OodscoreError
from .scores import METHODS  # the registry's names (cheap: no scorer is imported)
from .layouts import ScoreSaver
from .passes import _component_pass, _fixed_threshold_stats, _pixel_pass, _run_thresholds
from .workers import SerialFrames, WorkerFrames, check_workers

THRESHOLDS_FORMAT = "oodscore-thresholds"
THRESHOLD_KINDS = ("f1", "tpr95")
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
    with atomic_write(out_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", *keys])
        for m, r in scalars.items():
            w.writerow([m, *("" if r.get(k) is None else repr(r[k]) if isinstance(r[k], float) else r[k]
                             for k in keys)])


def save_thresholds(path: Path | str, thresholds: dict[str, dict[str, float]], *, source: str = "") -> None:
    """Save per-method thresholds ``{method: {"f1": t, "tpr95": t}}`` (found on a validation run) as JSON."""
    doc = {"format": THRESHOLDS_FORMAT, "version": 1, "source": source, "methods": _jsonable(thresholds)}
    atomic_write_text(Path(path), json.dumps(doc, indent=2) + "\n")


def _read_thresholds_doc(path: Path) -> dict:
    """The parsed ``thresholds.json``, its format and shape checked (one line naming the file otherwise)."""
    if path.is_dir():
        raise OodscoreError(f"{path}: is a folder, expected a thresholds.json file (written by oodscore evaluate)")
    if not path.is_file():
        raise OodscoreError(f"{path}: thresholds file not found")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OodscoreError(f"{path}: not valid JSON ({e}); write it again with `oodscore evaluate`") from None
    except OSError as e:
        raise OodscoreError(f"{path}: cannot read the thresholds file ({e.strerror or e})") from None
    if not isinstance(doc, dict) or doc.get("format") != THRESHOLDS_FORMAT:
        raise OodscoreError(f"{path}: format {doc.get('format') if isinstance(doc, dict) else None!r}, "
                            f"expected {THRESHOLDS_FORMAT!r} (a thresholds.json written by oodscore evaluate)")
    if doc.get("version", 1) != 1:
        raise OodscoreError(f"{path}: version {doc.get('version')!r} is not supported (expected 1)")
    if not isinstance(doc.get("methods", {}), dict):
        raise OodscoreError(f"{path}: 'methods' is a {type(doc['methods']).__name__}, expected an object "
                            '{method: {"f1": t, "tpr95": t}}')
    return doc


def load_thresholds(path: Path | str, kind: str = "f1", methods: Sequence[str] | None = None) -> dict[str, float]:
    """Read a ``thresholds.json`` and return ``{method: threshold}`` of the given kind (``"f1"`` or ``"tpr95"``).

    A method whose threshold of that kind is ``null`` (e.g. TPR 0.95 never reached) is left out. With ``methods``,
    every one of them must have a threshold.

    Raises
    ------
    OodscoreError
        One line naming the file: missing, a folder, not JSON (or truncated), another format, a method entry that
        is not an object, a threshold that is not a finite number (naming the method and the value), or a method of
        ``methods`` without a threshold.
    """
    path = Path(path)
    if kind not in THRESHOLD_KINDS:
        raise OodscoreError(f"--threshold-kind {kind!r}: expected one of {', '.join(THRESHOLD_KINDS)}")
    out = {}
    for m, t in _read_thresholds_doc(path).get("methods", {}).items():
        if not isinstance(t, dict):
            raise OodscoreError(f"{path}: method {m!r}: expected an object {{\"f1\": t, \"tpr95\": t}}, found {t!r}")
        v = t.get(kind)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise OodscoreError(f"{path}: method {m!r}: {kind} threshold {v!r} is not a finite number; fix it or "
                                "write the file again with `oodscore evaluate`")
        out[m] = float(v)
    missing = [m for m in (methods or ()) if m not in out]
    if missing:
        raise OodscoreError(f"{path}: no {kind} threshold for method(s) {', '.join(missing)}; it has "
                            f"{', '.join(sorted(out)) or 'none'} (evaluate these methods on the validation run, or "
                            "choose another --threshold-kind)")
    return out


# ------------------------------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)        # files only, never a window (works headless)
    import matplotlib.pyplot as plt

    return plt


def save_curves(path: Path | str, curves: dict[str, dict]) -> None:
    """The plotted ROC / PR curves as ``curves.npz`` (arrays ``<method>/fpr``, ``/tpr``, ``/precision``,
    ``/recall``; float64), atomically: what ``oodscore compare`` overlays across reports."""
    arrays = {f"{m}/{k}": np.asarray(c[k], dtype=np.float64) for m, c in curves.items()
              for k in ("fpr", "tpr", "precision", "recall") if k in c}
    with atomic_write(path, keep_suffix=True) as tmp:
        np.savez_compressed(tmp, **arrays)


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
        fig.tight_layout()
        with atomic_write(out_dir / f"{kind}.png", keep_suffix=True) as tmp:
            fig.savefig(tmp)
        plt.close(fig)


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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, keep_suffix=True) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- evaluation
def _safe_name(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)


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
    return np.where(roi != 0, label, np.uint8(IGNORE_ID)).astype(np.uint8)


@dataclass
class EvalOutput:
    """What an evaluation run produced: metrics per method, thresholds, written files."""

    results: dict[str, dict]
    thresholds: dict[str, dict]
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    extra_names: list[str] = field(default_factory=list)


@dataclass
class Evaluation:
    """What :func:`evaluate_frames` computed, before anything is written.

    Attributes
    ----------
    results : ``{method: {metric: value}}`` (``METRIC_KEYS``, plus ``<metric>@<kind>_given`` and ``component_*``)
    thresholds : ``{method: {"f1": t, "tpr95": t, "tpr95_exact": bool}}`` of this run
    curves : ``{method: curves}`` as ``PixelMetrics.curves`` returns them (for the ROC / PR plots)
    overlays : ``[(frame name, label, {method: float16 score}, RGB image)]`` for the heat-map overlays
    """

    results: dict[str, dict]
    thresholds: dict[str, dict]
    curves: dict[str, dict]
    overlays: list[tuple[str, np.ndarray, dict, np.ndarray]] = field(default_factory=list)
    #: ``--protocol all``: ``{protocol: {method: metrics}}`` of every protocol (``results`` is the exact one's)
    protocols: dict[str, dict[str, dict]] = field(default_factory=dict)


#: ``--protocol`` values: each protocol of :data:`oodscore.protocols.PROTOCOLS`, or ``all`` of them side by side
PROTOCOL_CHOICES = ("exact", "smiyc", "fishyscapes", "all")


def check_protocol_options(protocol: str = "exact", *, components: str = "none", component_rule: str | None = None,
                           bins: int | None = None, threshold_from=None) -> list[str]:
    """The protocols an evaluation computes (the first one gives ``metrics.json``); one line for a bad combination.

    ``all``: every protocol, exact first; components then under those that define them (exact, smiyc).
    """
    from .components import check_rule
    from .protocols import PROTOCOLS, default_component_rule

    if protocol not in PROTOCOL_CHOICES:
        raise OodscoreError(f"--protocol {protocol!r}: expected one of {', '.join(PROTOCOL_CHOICES)}")
    if component_rule is not None:
        if component_rule not in ("gt", "ge"):
            raise OodscoreError(f"--component-rule {component_rule!r}: expected gt (score > t) or ge (score >= t)")
        check_rule(component_rule)
        if components == "none":
            raise OodscoreError("--component-rule needs --components anomaly|obstacle")
    if protocol == "exact":
        return ["exact"]
    if bins is not None:
        raise OodscoreError(f"--bins is a binning of the exact protocol; --protocol {protocol} computes its own "
                            "(leave --bins out)")
    if threshold_from is not None:
        raise OodscoreError(f"--threshold-from works with --protocol exact only (the given thresholds are scored "
                            f"with score >= t on exact counts), not with --protocol {protocol}")
    if protocol == "all":
        return ["exact", *(p for p in PROTOCOLS if p != "exact")]
    if components != "none":
        try:
            default_component_rule(protocol)
        except OodscoreError as e:
            raise OodscoreError(f"--components {components} --protocol {protocol}: {e}") from None
    return [protocol]


def evaluate_frames(methods: Sequence[str], frames: Callable[[], Iterable[tuple]], num_frames: int, *,
                    bins: int | None = None, components: str = "none", threshold_from: dict[str, float] | None = None,
                    threshold_kind: str = "f1", overlay_at: set[int] = frozenset(), progress: bool = False,
                    describe: Callable[[str], str] | None = None, protocol: str = "exact",
                    component_rule: str | None = None, saver=None) -> Evaluation:
    """Evaluate streamed frames; writes nothing.

    Parameters
    ----------
    methods : names of the score maps each frame carries
    frames : callable returning an iterable of ``(name, label, {method: (H, W) score}, RGB image | None)``;
        called once per pass (twice with component metrics)
    bins, components : as in :func:`evaluate_logits`
    threshold_from : ``{method: threshold}`` (from :func:`load_thresholds`); adds ``<metric>@<kind>_given``
    overlay_at : indices of the frames kept for overlays (only those with an image)
    describe : frame name -> the file it comes from, to name it in error messages
    protocol : ``exact`` (default), ``smiyc``, ``fishyscapes`` (:mod:`oodscore.protocols`) or ``all`` (every
        protocol in :attr:`Evaluation.protocols`, ``results`` the exact one's)
    component_rule : ``gt`` / ``ge``; None = the protocol's own (exact: ge, smiyc: gt)
    saver : :class:`oodscore.layouts.ScoreSaver`, optional; writes every frame's maps (pass 1, frame order)

    Raises
    ------
    OodscoreError
        A score map of the wrong shape, non-finite scores, a degenerate label set, or ``threshold_from`` missing a
        method.
    """
    return _evaluate(methods, SerialFrames(frames, describe), num_frames, bins=bins, components=components,
                     threshold_from=threshold_from, threshold_kind=threshold_kind, overlay_at=overlay_at,
                     progress=progress, protocol=protocol, component_rule=component_rule, saver=saver)


def _evaluate(methods: Sequence[str], runner, num_frames: int, *, bins: int | None, components: str,
              threshold_from: dict[str, float] | None, threshold_kind: str, overlay_at: set[int], progress: bool,
              protocol: str = "exact", component_rule: str | None = None, saver=None) -> Evaluation:
    """:func:`evaluate_frames` with the frames computed by ``runner`` (:mod:`oodscore.workers`)."""
    from .protocols import COMPONENT_RULES

    protocols = check_protocol_options(protocol, components=components, component_rule=component_rule, bins=bins,
                                       threshold_from=threshold_from)
    if threshold_from is not None:
        missing = [m for m in methods if m not in threshold_from]
        if missing:
            raise OodscoreError(f"--threshold-from has no {threshold_kind} threshold for method(s) "
                                f"{', '.join(missing)}; it has {', '.join(sorted(threshold_from)) or 'none'}")
    main = protocols[0]
    pm, kept = _pixel_pass(methods, runner, num_frames, bins=bins, overlay_at=overlay_at, progress=progress,
                           protocols=protocols, saver=saver)
    every = {k: acc.compute() for k, acc in pm.items()}
    results = {m: every[(main, m)] for m in methods}
    curves = {m: pm[(main, m)].curves() for m in methods}
    thresholds = {m: _run_thresholds(pm[(main, m)], results[m]) for m in methods}
    if threshold_from is not None:
        for m in methods:
            fixed = _fixed_threshold_stats(pm[(main, m)], threshold_from[m])
            results[m].update({f"{k}@{threshold_kind}_given": v for k, v in fixed.items()})
    if components != "none":
        with_components = {k: r for k, r in every.items() if k[0] in COMPONENT_RULES}
        _component_pass(with_components, runner, num_frames, components, progress, rule=component_rule)
    by_protocol = {p: {m: every[(p, m)] for m in methods} for p in protocols} if protocol == "all" else {}
    return Evaluation(results, thresholds, curves, kept, by_protocol)


def write_report(out_dir: Path | str, ev: Evaluation, *, threshold_from: dict[str, float] | None = None,
                 threshold_kind: str = "f1", source: str = "") -> list[Path]:
    """Write the report folder of an :class:`Evaluation` (see the module docstring); returns the files written.

    Overlay masks use the given thresholds (``threshold_from``) or else this run's F1-optimal ones.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(out_dir, ev.results)
    plot_curves(out_dir, ev.curves, ev.results)
    save_curves(out_dir / "curves.npz", ev.curves)
    save_thresholds(out_dir / "thresholds.json", ev.thresholds, source=source)
    files = [out_dir / f for f in ("metrics.json", "metrics.csv", "roc.png", "pr.png", "curves.npz",
                                   "thresholds.json")]
    for name, label, scores, image in ev.overlays:
        for m, score in scores.items():
            if threshold_from is not None:
                t, tn = threshold_from[m], f"{threshold_kind}, given"
            else:
                t, tn = ev.thresholds[m].get("f1"), "F1-optimal on this run"   # None: no mask panel
            p = out_dir / "overlays" / f"{_safe_name(name)}__{m}.png"
            save_overlay(p, image, score.astype(np.float32), label, threshold=t, threshold_name=tn,
                         title=f"{name} — {m}")
            files.append(p)
    if ev.protocols:
        files += write_protocols(out_dir, ev.protocols)
    return files


#: the columns of protocols.md / protocols.csv (the component ones only when computed)
PROTOCOL_TABLE_KEYS = ("auroc", "ap", "fpr95", "f1", "threshold", "component_siou", "component_ppv",
                       "component_mean_f1")


def write_protocols(out_dir: Path | str, by_protocol: dict[str, dict[str, dict]]) -> list[Path]:
    """``protocols.md`` and ``protocols.csv``: one row per method and protocol, the metrics side by side
    (``--protocol all``); a metric a protocol does not define is empty (csv) / ``-`` (markdown)."""
    out_dir = Path(out_dir)
    rows = [(m, p, r) for p, res in by_protocol.items() for m, r in res.items()]
    rows.sort(key=lambda row: list(by_protocol[row[1]]).index(row[0]))          # methods in order, protocols under
    keys = [k for k in PROTOCOL_TABLE_KEYS if any(k in r for _, _, r in rows)]
    vals = [[_jsonable(r.get(k)) for k in keys] for _, _, r in rows]
    with atomic_write(out_dir / "protocols.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "protocol", *keys])
        for (m, p, _), v in zip(rows, vals):
            w.writerow([m, p, *("" if x is None else repr(x) if isinstance(x, float) else x for x in v)])
    lines = ["| method | protocol | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for (m, p, _), v in zip(rows, vals):
        cells = ["-" if x is None else f"{x:.6g}" if isinstance(x, float) else str(x) for x in v]
        lines.append(f"| {m} | {p} | " + " | ".join(cells) + " |")
    doc = ("# Every protocol side by side\n\nexact: ours (metrics.json); smiyc: SegmentMeIfYouCan's own code; "
           "fishyscapes: bdl-benchmark's (see docs/protocols.md). `-`: not defined by that protocol.\n\n"
           + "\n".join(lines) + "\n")
    atomic_write_text(out_dir / "protocols.md", doc)
    return [out_dir / "protocols.md", out_dir / "protocols.csv"]


def _run(out_dir: Path, methods: Sequence[str], runner, num_frames: int, *, bins: int | None, components: str,
         threshold_from: dict[str, float] | None, threshold_kind: str, overlay_at: set[int], progress: bool,
         source: str, protocol: str = "exact", component_rule: str | None = None, saver=None) -> EvalOutput:
    """Evaluate, then write the report: :func:`evaluate_frames` (frames from ``runner``) + :func:`write_report`.

    ``out_dir`` is checked (:func:`cocodag.outputs.prepare_output`) before the first frame is scored and held
    exclusively (:class:`cocodag.lock.OutputLock`) until the report is written: a second job on the same folder is
    refused with one line naming this one; so is every ``--save-scores`` folder (``saver``). A full disk while writing
    is one line too. Worker processes (if any) only read; they are stopped before the report is written.
    """
    out_dir = prepare_output(out_dir, kind="dir", option="--out")
    with OutputLock(out_dir, option="--out"), (saver.locked(held=[out_dir]) if saver else contextlib.nullcontext()):
        with runner:
            ev = _evaluate(methods, runner, num_frames, bins=bins, components=components,
                           threshold_from=threshold_from, threshold_kind=threshold_kind, overlay_at=overlay_at,
                           progress=progress, protocol=protocol, component_rule=component_rule, saver=saver)
        with disk_errors(out_dir, option="--out"):
            files = write_report(out_dir, ev, threshold_from=threshold_from, threshold_kind=threshold_kind,
                                 source=source)
    return EvalOutput(ev.results, ev.thresholds, out_dir, files)


# ------------------------------------------------------------------------------------------- evaluate_logits
def _load_sml_stats(path: Path | None, num_classes: int, methods: Sequence[str]):
    """The ``stats`` parameter of the scorers that take one, read once from ``--sml-stats``."""
    from .scores import SMLStats

    if path is None:
        raise OodscoreError(f"method(s) {', '.join(methods)}: need --sml-stats FILE (from `oodscore fit-sml`)")
    if Path(path).is_dir():
        raise OodscoreError(f"--sml-stats {path}: is a folder, expected the JSON file of `oodscore fit-sml`")
    if not Path(path).is_file():
        raise OodscoreError(f"--sml-stats {path}: file not found")
    stats = SMLStats.load(path)
    stats_classes = int(np.asarray(stats.mean_).shape[0]) if hasattr(stats, "mean_") else num_classes
    if stats_classes != num_classes:
        raise OodscoreError(f"--sml-stats {path}: stats have {stats_classes} classes, the logits have {num_classes}")
    return stats


def _load_model_file(method: str, cls, path: Path | None):
    """A scorer fitted and saved on its own (OODMC), from ``--<method>-model`` (written by ``fit-<method>``)."""
    if path is None:
        raise OodscoreError(f"method {method} needs --{method}-model FILE (from `oodscore fit-{method}`)")
    if not Path(path).is_file():
        raise OodscoreError(f"--{method}-model {path}: file not found")
    return cls.load(path)


def _check_model_classes(method: str, scorer, path: Path, num_classes: int) -> None:
    """A model fitted on logits of another class count would fail on every frame: refuse it up front."""
    fitted = getattr(scorer, "num_classes_", None)
    if fitted is not None and int(fitted) != num_classes:
        raise OodscoreError(f"--{method}-model {path}: fitted on {int(fitted)} classes, the logits have "
                            f"{num_classes}; fit it on logits of the same model (`oodscore fit-{method}`)")


def build_scorers(methods: Sequence[str], *, num_classes: int, has_mc: bool, sml_stats: Path | None = None,
                  boundary_iters: int = 4, smoothing: bool = True, vde_threshold: float | None = None,
                  oodmc_model: Path | None = None, device: str | None = None, border: str | None = None,
                  boundary_width: int | None = None, temperature: float | None = None) -> dict:
    """Instantiate each method's scorer, checking at once what it needs (stats file, model, MC data).

    What a method needs is asked of its scorer class: ``requires`` (its per-frame input; ``"mc"`` needs the
    file's mc/* block), its ``__init__`` parameters (filled by name from ``device``, ``boundary_iters``,
    ``smoothing``, ``border``, ``boundary_width`` (sml, vde), ``temperature`` (energy, msp-t), ``threshold`` =
    ``vde_threshold`` and ``stats`` = the ``sml_stats`` file); methods with a model
    file of their own (``oodmc_model``) are loaded from it. ``None`` options leave the scorer's defaults.
    """
    from .scores import check_methods, get_scorer, scorer_class

    classes = {m: scorer_class(m) for m in check_methods(methods)}
    for m, cls in classes.items():
        if cls.requires == "mc" and not has_mc:
            raise OodscoreError(f"method {m} needs MC-dropout data (mc/*) in the logits file; "
                                "export with --mc-samples T --moment-order K")
    model_files = {"oodmc": oodmc_model}
    with_stats = [m for m, cls in classes.items() if "stats" in cls.param_names()]
    options = {"device": device, "boundary_iters": boundary_iters, "smoothing": smoothing,
               "threshold": vde_threshold, "border": border, "boundary_width": boundary_width,
               "temperature": temperature,
               "stats": _load_sml_stats(sml_stats, num_classes, with_stats) if with_stats else None}
    if border is not None:
        from .scores.sml import BORDERS

        if border not in BORDERS:
            raise OodscoreError(f"--sml-border {border!r}: expected one of {', '.join(BORDERS)}")
    for opt, flag in (("border", "--sml-border"), ("boundary_width", "--boundary-width"),
                      ("temperature", "--temperature")):
        if options[opt] is not None and not any(opt in cls.param_names() for cls in classes.values()):
            raise OodscoreError(f"{flag}: none of the methods {', '.join(classes)} takes it")
    scorers = {}
    for m, cls in classes.items():
        if m in model_files:
            scorers[m] = _load_model_file(m, cls, model_files[m])
            _check_model_classes(m, scorers[m], model_files[m], num_classes)
        else:
            scorers[m] = get_scorer(m, **{k: v for k, v in options.items() if k in cls.param_names()})
    return scorers


#: how :func:`evaluate_logits` reads each kind of scorer input (``Scorer.requires``) of frame ``i``
_INPUT_READERS = {
    "logits": lambda lf, i, frame: frame.logits,
    "mc": lambda lf, i, frame: lf.mc(i),
}


def _score_frame(lf, i: int, image_id: str, scorers: dict, inputs: dict, size: tuple[int, int]) -> dict:
    """Every method's score map of frame ``i``; a scorer's error (NaN / inf logits, ...) names the file and frame."""
    scores = {}
    for m, sc in scorers.items():
        try:
            scores[m] = np.asarray(sc.score(inputs[sc.requires], size=size), dtype=np.float32)
        except CocodagError as e:
            raise OodscoreError(f"{lf.path}: frame {i} ({image_id!r}), {m}: {e}") from None
    return scores


def _logits_frame(lf, scorers: dict, region: str, overlay_at: set[int], i: int, segmentation: bool = False
                  ) -> tuple:
    """Frame ``i`` of a ``LogitsFile`` as :func:`evaluate_frames` takes it, every method's scores computed
    (``segmentation``: plus the argmax trainIds under ``layouts.SEGMENTATION_KEY``, for --save-scores)."""
    kinds = {sc.requires for sc in scorers.values()}
    fr = lf.frame(i, image=i in overlay_at)
    label = _apply_region(fr.label, fr.roi, region, fr.image_id)
    inputs = {k: _INPUT_READERS[k](lf, i, fr) for k in kinds}
    scores = _score_frame(lf, i, fr.image_id, scorers, inputs, label.shape)
    if segmentation:
        from .layouts import SEGMENTATION_KEY

        scores[SEGMENTATION_KEY] = np.argmax(fr.logits, axis=0).astype(np.uint8)
    return fr.image_id, label, scores, fr.image


def _logits_frames(lf, scorers: dict, region: str, overlay_at: set[int], segmentation: bool = False
                   ) -> Callable[[], Iterable[tuple]]:
    """The ``frames()`` callable of :func:`evaluate_frames` for a ``LogitsFile``: scores every frame on the fly."""
    def frames():
        for i in range(len(lf)):
            yield _logits_frame(lf, scorers, region, overlay_at, i, segmentation)

    return frames


@dataclass(frozen=True)
class _LogitsSource:
    """What a worker process needs to score frames of a logits file itself (see :mod:`oodscore.workers`)."""

    path: str
    methods: tuple
    options: dict          # build_scorers' keyword arguments besides the file's own num_classes / has_mc
    region: str
    overlay_at: frozenset
    segmentation: bool = False

    def open(self, stack):
        from cocodag.formats.logits import LogitsFile

        lf = stack.enter_context(LogitsFile(self.path))
        scorers = build_scorers(self.methods, num_classes=lf.num_classes, has_mc=lf.has_mc, **self.options)
        return ((lambda i: _logits_frame(lf, scorers, self.region, self.overlay_at, i, self.segmentation)),
                (lambda _n: str(lf.path)))


def evaluate_logits(logits_path: Path | str, methods: Sequence[str], out_dir: Path | str, *,
                    sml_stats: Path | str | None = None, boundary_iters: int = 4, smoothing: bool = True,
                    vde_threshold: float | None = None, oodmc_model: Path | str | None = None,
                    components: str = "none", region: str = "all", bins: int | None = None, max_overlays: int = 4,
                    threshold_from: Path | str | None = None, threshold_kind: str = "f1",
                    device: str | None = None, progress: bool = True, workers: int = 1, protocol: str = "exact",
                    component_rule: str | None = None, border: str | None = None,
                    boundary_width: int | None = None, temperature: float | None = None,
                    save_scores: Sequence[str] = ()) -> EvalOutput:
    """Score every frame of a ``logits.h5`` file with each method and write the report to ``out_dir``.

    Parameters
    ----------
    methods : names from the score registry (``oodscore.scores.METHODS``)
    components : {"none", "anomaly", "obstacle"}
        SegmentMeIfYouCan component metrics (second pass) with that track's size filters.
    region : {"all", "road"}
        ``road`` voids every pixel outside the file's ``roi`` (an error when the file has none).
    bins : int, optional
        None = exact metrics; an int = quantile-binned streaming metrics.
    threshold_from, threshold_kind
        A ``thresholds.json`` of a validation run: its thresholds draw the overlay masks and give
        F1/precision/recall/FPR at that fixed threshold (``<metric>@<kind>_given``).
    workers : int
        Frames scored in this many processes (each opens the file and loads the scorers itself); the numbers and
        files are those of ``workers=1``, bit for bit.
    protocol, component_rule
        As in :func:`evaluate_frames` (``exact`` / ``smiyc`` / ``fishyscapes`` / ``all``; ``gt`` / ``ge``).
    border, boundary_width, temperature
        Scorer options, given to the methods that take them (sml / vde: ``border``, ``boundary_width``;
        energy / msp-t: ``temperature``); None keeps each scorer's default.
    save_scores : ``["LAYOUT:DIR", ...]``
        Also write every method's maps in these layouts (:mod:`oodscore.layouts`: ``smiyc`` with the file's
        ``dataset`` attribute as ``<dataset>``, ``fishyscapes`` with ``_segmentation.npy``, ``npy``).
    """
    from cocodag.formats.logits import LogitsFile

    from .scores import check_methods

    if not methods:
        raise OodscoreError("no --method given; choose from " + ", ".join(METHODS))
    methods = check_methods(methods)  # before opening anything: unknown names fail fast
    _check_choices(components, region)
    check_workers(workers)
    check_protocol_options(protocol, components=components, component_rule=component_rule, bins=bins,
                           threshold_from=threshold_from)
    given = load_thresholds(threshold_from, threshold_kind, methods) if threshold_from is not None else None
    options = {"sml_stats": Path(sml_stats) if sml_stats else None, "boundary_iters": boundary_iters,
               "smoothing": smoothing, "vde_threshold": vde_threshold,
               "oodmc_model": Path(oodmc_model) if oodmc_model else None, "device": device,
               "border": border, "boundary_width": boundary_width, "temperature": temperature}
    with LogitsFile(logits_path) as lf:
        if region == "road" and not lf.has_roi:
            raise OodscoreError(f"{lf.path}: --region road needs a 'roi' dataset in the logits file "
                                "(export from a road-region preset, e.g. lostandfound)")
        scorers = build_scorers(methods, num_classes=lf.num_classes, has_mc=lf.has_mc, **options)
        saver = ScoreSaver.from_specs(save_scores, str(lf.attrs.get("dataset") or "dataset"))
        seg = saver is not None and saver.wants_segmentation
        overlay_at = set(_overlay_indices(len(lf), max_overlays)) if lf.has_images else set()
        if workers > 1:
            # workers start in this working directory: the paths as given name the same files (and messages)
            runner = WorkerFrames(_LogitsSource(str(lf.path), tuple(scorers), options, region, frozenset(overlay_at),
                                                seg), workers, len(lf))
        else:
            runner = SerialFrames(_logits_frames(lf, scorers, region, overlay_at, seg), lambda _name: str(lf.path))
        return _run(Path(out_dir), list(scorers), runner, len(lf), bins=bins, components=components,
                    threshold_from=given, threshold_kind=threshold_kind, overlay_at=overlay_at, progress=progress,
                    source=str(logits_path), protocol=protocol, component_rule=component_rule, saver=saver)


def _check_choices(components: str, region: str) -> None:
    if components not in ("none", "anomaly", "obstacle"):
        raise OodscoreError(f"--components {components!r}: expected anomaly, obstacle or none")
    if region not in ("all", "road"):
        raise OodscoreError(f"--region {region!r}: expected all or road")


# ------------------------------------------------------------------------------------------- evaluate_score_maps
def _overlay_image(path: Path) -> np.ndarray | None:
    """The RGB image under an overlay, or None when it cannot be read (the frame is then drawn without one)."""
    from cocodag.imageio import read_rgb

    try:
        return read_rgb(path)
    except CocodagError:
        return None


def _score_map_frame(maps, preset, it, region: str, method: str, resize: bool, with_image: bool) -> tuple:
    """One frame of an evaluation set with its saved score map, as :func:`evaluate_frames` takes it."""
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
    image = _overlay_image(it.image_path) if with_image else None
    return it.name, label, {method: s}, image


def _method_of(path: Path) -> str:
    """The default method name of saved maps: ``<method>`` of a SMIYC ``anomaly_p/<method>/<dataset>`` folder, else
    the path's name."""
    if path.parent.parent.name == "anomaly_p" and path.parent.name:
        return path.parent.name
    return path.stem or "scores"


@dataclass(frozen=True)
class _ScoreMapsSource:
    """What a worker process needs to read frames and score maps itself (see :mod:`oodscore.workers`)."""

    scores_path: str
    dataset: str
    method: str
    region: str
    resize: bool
    overlay_at: frozenset

    def open(self, stack):
        from cocodag.formats.evalsets import parse_dataset_spec

        from .io import open_score_maps

        preset, root = parse_dataset_spec(self.dataset)
        items = preset.find(root)
        maps = stack.enter_context(open_score_maps(self.scores_path))
        return (lambda i: _score_map_frame(maps, preset, items[i], self.region, self.method, self.resize,
                                           i in self.overlay_at)), maps.where


def evaluate_score_maps(scores_path: Path | str, dataset: str, out_dir: Path | str, *, name: str | None = None,
                        components: str = "none", region: str | None = None, bins: int | None = None,
                        max_overlays: int = 4, threshold_from: Path | str | None = None, threshold_kind: str = "f1",
                        resize: bool = False, progress: bool = True, workers: int = 1, protocol: str = "exact",
                        component_rule: str | None = None, save_scores: Sequence[str] = ()) -> EvalOutput:
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
    workers : int
        Frames read in this many processes; the numbers and files are those of ``workers=1``, bit for bit.
    protocol, component_rule : as in :func:`evaluate_frames`
    save_scores : ``["LAYOUT:DIR", ...]``: also write the maps in these layouts (:mod:`oodscore.layouts`; smiyc's
        ``<dataset>`` = the preset name; no ``_segmentation.npy``: there are no logits)
    """
    from cocodag.formats.evalsets import parse_dataset_spec

    from .io import open_score_maps

    preset, root = parse_dataset_spec(dataset)
    region = region or preset.region_of(root)
    _check_choices(components, region)
    check_workers(workers)
    check_protocol_options(protocol, components=components, component_rule=component_rule, bins=bins,
                           threshold_from=threshold_from)
    method = name or _method_of(Path(scores_path))
    given = load_thresholds(threshold_from, threshold_kind, [method]) if threshold_from is not None else None
    items = preset.find(root)
    saver = ScoreSaver.from_specs(save_scores, preset.name)
    with open_score_maps(scores_path) as maps:
        extra = maps.match([it.name for it in items])
        overlay_at = set(_overlay_indices(len(items), max_overlays))
        if workers > 1:
            runner = WorkerFrames(_ScoreMapsSource(str(scores_path), dataset, method, region, resize,
                                                   frozenset(overlay_at)), workers, len(items))
        else:
            runner = SerialFrames(lambda: (_score_map_frame(maps, preset, it, region, method, resize,
                                                            i in overlay_at) for i, it in enumerate(items)),
                                  maps.where)
        out = _run(Path(out_dir), [method], runner, len(items), bins=bins, components=components,
                   threshold_from=given, threshold_kind=threshold_kind, overlay_at=overlay_at, progress=progress,
                   source=f"{scores_path} on {dataset}", protocol=protocol, component_rule=component_rule,
                   saver=saver)
    out.extra_names = extra
    return out
