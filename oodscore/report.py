"""Evaluation runs and their reports: metrics.json / metrics.csv, ROC and PR plots, heat-map overlays, thresholds.

Two entry points, both streaming one frame at a time (pass 1: pixel metrics; pass 2, only for component metrics:
recompute the scores and threshold them at the F1-optimal pixel threshold of pass 1):

- :func:`evaluate_logits` — scores computed from a ``logits.h5`` file by the named methods (each scorer is fed the
  input it declares, ``Scorer.requires``: the logits or the file's MC-dropout block);
- :func:`evaluate_score_maps` — any method's saved score maps, matched by frame name to an evaluation set preset.

Both take their settings as one :class:`~oodscore.options.EvalOptions` (or its fields as keywords), checked before
anything is opened. Both are two steps: :func:`evaluate_frames` computes everything (an :class:`Evaluation`, no
files), then :func:`write_report` writes the folder. Every file is written atomically (:mod:`cocodag.atomic`). The
folder is checked before the first frame is scored (:func:`cocodag.outputs.prepare_output`) and held exclusively for
the whole run (:class:`cocodag.lock.OutputLock`, ``<folder>/.lock``): a second evaluation into it is refused with one
line naming this one. Errors about one frame name its file and frame (a label value outside 0/1/255, NaN / inf
logits or scores); a full disk while writing is one line (``No space left on device: <folder>``).

Report folder::

    metrics.json      {method: {metric: value}}; with --meta, METHOD's row also holds meta_auroc, meta_fp_before, ...
    metrics.csv       one row per method
    roc.png, pr.png   every method on one plot
    curves.npz        the plotted curves (what ``oodscore compare`` overlays)
    thresholds.json   per method: the F1-optimal and TPR-95 thresholds of this run (reusable: --threshold-from)
    protocols.md, protocols.csv   with --protocol all: every method x protocol side by side (docs/protocols.md)
    overlays/<frame>__<method>.png   heat map (normalized to [0,1], colour bar) + binary mask at a threshold
    .lock             the lock file (empty once the run is over)

The pieces live beside this module: :mod:`oodscore.sources` (frames from logits or score maps, the scorers),
:mod:`oodscore.writers` (the JSON / CSV / markdown files), :mod:`oodscore.plots` (the figures),
:mod:`oodscore.passes` (the two passes) and :mod:`oodscore.workers` (where frames are computed).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cocodag.formats.evalsets import parse_dataset_spec
from cocodag.formats.logits import LogitsFile
from cocodag.lock import OutputLock
from cocodag.outputs import disk_errors, prepare_output

from . import OodscoreError
from .io import open_score_maps
from .layouts import ScoreSaver
from .meta_summary import MetaSummary, read_meta
from .options import PROTOCOL_CHOICES, THRESHOLD_KINDS, EvalOptions
from .passes import _component_pass, _fixed_threshold_stats, _pixel_pass, _run_thresholds
from .plots import normalize_scores, plot_curves, save_overlay
from .protocols import COMPONENT_RULES
from .scores import METHODS, check_methods
from .sources import _logits_frames, _LogitsSource, _method_of, _score_map_frame, _ScoreMapsSource, build_scorers
from .workers import SerialFrames, WorkerFrames
from .writers import (
    PROTOCOL_TABLE_KEYS,
    THRESHOLDS_FORMAT,
    load_thresholds,
    save_curves,
    save_thresholds,
    write_metrics,
    write_protocols,
)

__all__ = [
    # this module: the evaluation runs
    "EvalOptions", "EvalOutput", "Evaluation", "evaluate_frames", "evaluate_logits", "evaluate_score_maps",
    "write_report",
    # their pieces, importable from here as before (oodscore.options / .sources / .writers / .plots)
    "PROTOCOL_CHOICES", "PROTOCOL_TABLE_KEYS", "THRESHOLDS_FORMAT", "THRESHOLD_KINDS", "build_scorers",
    "load_thresholds", "normalize_scores", "plot_curves", "save_curves", "save_overlay", "save_thresholds",
    "write_metrics", "write_protocols",
]


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
    results : ``{method: {metric: value}}`` (``METRIC_KEYS``, plus ``<metric>@<kind>_given``, ``component_*`` and,
        with ``meta``, the ``meta_*`` numbers of a meta-classify folder in its method's row)
    thresholds : ``{method: {"f1": t, "tpr95": t, "tpr95_exact": bool}}`` of this run
    curves : ``{method: curves}`` as ``PixelMetrics.curves`` returns them (for the ROC / PR plots)
    overlays : ``[(frame name, label, {method: float16 score}, RGB image)]`` for the heat-map overlays
    protocols : ``--protocol all``: ``{protocol: {method: metrics}}`` of every protocol (``results`` is the exact
        one's)
    given_thresholds, threshold_kind : the thresholds of ``--threshold-from`` (``{method: t}``) and their kind; the
        overlay masks use them (else this run's F1-optimal ones)
    """

    results: dict[str, dict]
    thresholds: dict[str, dict]
    curves: dict[str, dict]
    overlays: list[tuple[str, np.ndarray, dict, np.ndarray]] = field(default_factory=list)
    protocols: dict[str, dict[str, dict]] = field(default_factory=dict)
    given_thresholds: dict[str, float] | None = None
    threshold_kind: str = "f1"


def _options(options: EvalOptions | None, overrides: dict[str, Any], **defaults: Any) -> EvalOptions:
    """``options`` (or the defaults) with the keyword ``overrides``, validated."""
    return (options if options is not None else EvalOptions(**defaults)).replace(**overrides).validate()


def _given(options: EvalOptions, methods: Sequence[str]) -> dict[str, float] | None:
    """The thresholds of ``--threshold-from`` for ``methods`` (every one must have one), or None."""
    if options.threshold_from is None:
        return None
    return load_thresholds(options.threshold_from, options.threshold_kind, methods)


def _meta(options: EvalOptions, methods: Sequence[str], num_frames: int,
          names: Sequence[str] | None = None) -> MetaSummary | None:
    """The numbers of ``--meta`` (read and checked against the methods and frames before any scoring), or None."""
    if options.meta is None:
        return None
    return read_meta(options.meta).check(methods, num_frames=num_frames, names=names)


def _overlay_indices(n: int, k: int) -> list[int]:
    """``k`` frames spread evenly over ``n`` (deterministic)."""
    if k <= 0 or n == 0:
        return []
    k = min(k, n)
    return sorted({int(round(i * (n - 1) / max(k - 1, 1))) for i in range(k)})


def _safe_name(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)


# ------------------------------------------------------------------------------------------- evaluation
def evaluate_frames(methods: Sequence[str], frames: Callable[[], Iterable[tuple]], num_frames: int,
                    options: EvalOptions | None = None, *, overlay_at: set[int] | frozenset[int] = frozenset(),
                    describe: Callable[[str], str] | None = None, saver: ScoreSaver | None = None,
                    **overrides: Any) -> Evaluation:
    """Evaluate streamed frames; writes nothing.

    Parameters
    ----------
    methods : names of the score maps each frame carries
    frames : callable returning an iterable of ``(name, label, {method: (H, W) score}, RGB image | None)``;
        called once per pass (twice with component metrics)
    options : :class:`~oodscore.options.EvalOptions`, or its fields as keywords (``overrides``). Used here:
        ``bins``, ``components``, ``component_rule``, ``protocol``, ``threshold_from`` / ``threshold_kind`` (adds
        ``<metric>@<kind>_given``), ``meta`` (checked against ``methods`` and ``num_frames``) and ``progress``
        (default here: off); the others are about files and scorers.
    overlay_at : indices of the frames kept for overlays (only those with an image)
    describe : frame name -> the file it comes from, to name it in error messages
    saver : :class:`oodscore.layouts.ScoreSaver`, optional; writes every frame's maps (pass 1, frame order)

    Raises
    ------
    OodscoreError
        A bad option, a score map of the wrong shape, non-finite scores, a degenerate label set, or
        ``threshold_from`` missing a method.
    """
    options = _options(options, overrides, progress=False)
    return _evaluate(methods, SerialFrames(frames, describe), num_frames, options,
                     given=_given(options, methods), overlay_at=overlay_at, saver=saver,
                     meta=_meta(options, methods, num_frames))


def _evaluate(methods: Sequence[str], runner, num_frames: int, options: EvalOptions, *,
              given: dict[str, float] | None, overlay_at: set[int] | frozenset[int], saver: ScoreSaver | None,
              meta: MetaSummary | None = None) -> Evaluation:
    """:func:`evaluate_frames` with the frames computed by ``runner`` (:mod:`oodscore.workers`) and the given
    thresholds and meta numbers already read."""
    protocols = options.protocols()
    kind = options.threshold_kind
    if given is not None:
        missing = [m for m in methods if m not in given]
        if missing:
            raise OodscoreError(f"--threshold-from has no {kind} threshold for method(s) "
                                f"{', '.join(missing)}; it has {', '.join(sorted(given)) or 'none'}")
    main = protocols[0]
    pm, kept = _pixel_pass(methods, runner, num_frames, bins=options.bins, overlay_at=set(overlay_at),
                           progress=options.progress, protocols=protocols, saver=saver)
    every = {k: acc.compute() for k, acc in pm.items()}
    results = {m: every[(main, m)] for m in methods}
    curves = {m: pm[(main, m)].curves() for m in methods}
    thresholds = {m: _run_thresholds(pm[(main, m)], results[m]) for m in methods}
    if given is not None:
        for m in methods:
            fixed = _fixed_threshold_stats(pm[(main, m)], given[m])
            results[m].update({f"{k}@{kind}_given": v for k, v in fixed.items()})
    if options.components != "none":
        with_components = {k: r for k, r in every.items() if k[0] in COMPONENT_RULES}
        _component_pass(with_components, runner, num_frames, options.components, options.progress,
                        rule=options.component_rule)
    if meta is not None:        # after every metric of this run: the meta_* keys come last in the row
        results[meta.method].update(meta.values)
    by_protocol = {p: {m: every[(p, m)] for m in methods} for p in protocols} if options.protocol == "all" else {}
    return Evaluation(results, thresholds, curves, kept, by_protocol, given, kind)


def write_report(out_dir: Path | str, ev: Evaluation, *, source: str = "") -> list[Path]:
    """Write the report folder of an :class:`Evaluation` (see the module docstring); returns the files written.

    Overlay masks use the evaluation's given thresholds (``--threshold-from``) or else this run's F1-optimal ones.
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
            t: float | None
            if ev.given_thresholds is not None:
                t, tn = ev.given_thresholds[m], f"{ev.threshold_kind}, given"
            else:
                t, tn = ev.thresholds[m].get("f1"), "F1-optimal on this run"   # None: no mask panel
            p = out_dir / "overlays" / f"{_safe_name(name)}__{m}.png"
            save_overlay(p, image, score.astype(np.float32), label, threshold=t, threshold_name=tn,
                         title=f"{name} — {m}")
            files.append(p)
    if ev.protocols:
        files += write_protocols(out_dir, ev.protocols)
    return files


def _run(out_dir: Path, methods: Sequence[str], runner, num_frames: int, options: EvalOptions, *,
         given: dict[str, float] | None, overlay_at: set[int], saver: ScoreSaver | None, source: str,
         meta: MetaSummary | None = None) -> EvalOutput:
    """Evaluate, then write the report: :func:`evaluate_frames` (frames from ``runner``) + :func:`write_report`.

    ``out_dir`` is checked (:func:`cocodag.outputs.prepare_output`) before the first frame is scored and held
    exclusively (:class:`cocodag.lock.OutputLock`) until the report is written: a second job on the same folder is
    refused with one line naming this one; so is every ``--save-scores`` folder (``saver``). A full disk while writing
    is one line too. Worker processes (if any) only read; they are stopped before the report is written.
    """
    out_dir = prepare_output(out_dir, kind="dir", option="--out")
    with OutputLock(out_dir, option="--out"), (saver.locked(held=[out_dir]) if saver else contextlib.nullcontext()):
        with runner:
            ev = _evaluate(methods, runner, num_frames, options, given=given, overlay_at=overlay_at, saver=saver,
                           meta=meta)
        with disk_errors(out_dir, option="--out"):
            files = write_report(out_dir, ev, source=source)
    return EvalOutput(ev.results, ev.thresholds, out_dir, files)


# ------------------------------------------------------------------------------------------- the two inputs
def evaluate_logits(logits_path: Path | str, methods: Sequence[str], out_dir: Path | str,
                    options: EvalOptions | None = None, **overrides: Any) -> EvalOutput:
    """Score every frame of a ``logits.h5`` file with each method and write the report to ``out_dir``.

    Parameters
    ----------
    methods : names from the score registry (``oodscore.scores.METHODS``)
    options : :class:`~oodscore.options.EvalOptions` (the defaults of ``oodscore evaluate`` when None); its
        fields can also be given as keywords (``overrides``), e.g. ``evaluate_logits(p, ["msp"], out,
        components="obstacle", workers=2)``. ``region`` None is ``all`` here; ``road`` voids every pixel outside
        the file's ``roi`` (an error when the file has none). ``save_scores`` writes the smiyc layout with the file's
        ``dataset`` attribute as ``<dataset>``, and fishyscapes' ``_segmentation.npy``. With ``workers`` > 1 each
        process opens the file and loads the scorers itself.
    """
    options = _options(options, overrides)
    if not methods:
        raise OodscoreError("no --method given; choose from " + ", ".join(METHODS))
    methods = check_methods(methods)  # before opening anything: unknown names fail fast
    given = _given(options, methods)
    region = options.region or "all"
    with LogitsFile(logits_path) as lf:
        if region == "road" and not lf.has_roi:
            raise OodscoreError(f"{lf.path}: --region road needs a 'roi' dataset in the logits file "
                                "(export from a road-region preset, e.g. lostandfound)")
        scorers = build_scorers(methods, options, num_classes=lf.num_classes, has_mc=lf.has_mc)
        meta = _meta(options, list(scorers), len(lf), lf.image_ids)
        saver = ScoreSaver.from_specs(options.save_scores, str(lf.attrs.get("dataset") or "dataset"))
        seg = saver is not None and saver.wants_segmentation
        overlay_at = frozenset(_overlay_indices(len(lf), options.max_overlays)) if lf.has_images else frozenset()
        runner: SerialFrames | WorkerFrames
        if options.workers > 1:
            # workers start in this working directory: the paths as given name the same files (and messages)
            runner = WorkerFrames(_LogitsSource(str(lf.path), tuple(scorers), options, region, overlay_at, seg),
                                  options.workers, len(lf))
        else:
            runner = SerialFrames(_logits_frames(lf, scorers, region, overlay_at, seg), lambda _name: str(lf.path))
        return _run(Path(out_dir), list(scorers), runner, len(lf), options, given=given, overlay_at=set(overlay_at),
                    saver=saver, source=str(logits_path), meta=meta)


def evaluate_score_maps(scores_path: Path | str, dataset: str, out_dir: Path | str,
                        options: EvalOptions | None = None, *, name: str | None = None,
                        **overrides: Any) -> EvalOutput:
    """Evaluate any method's saved score maps against an evaluation set given as ``PRESET:ROOT``.

    Parameters
    ----------
    scores_path : directory of ``<name>.npy|.npz|.hdf5`` or one ``scores.h5`` (see :func:`oodscore.io.open_score_maps`)
    dataset : ``"PRESET:ROOT"`` (a bare path = the standard converted layout)
    options : :class:`~oodscore.options.EvalOptions`, or its fields as keywords (``overrides``), as in
        :func:`evaluate_logits`; the scorer options that would change a map are refused. ``region`` None is the
        preset's own region; ``resize_scores`` resizes score maps whose size differs from the label bilinearly (as
        the SegmentMeIfYouCan tooling does; default: a size mismatch is an error); ``save_scores``: smiyc's
        ``<dataset>`` = the preset name, no ``_segmentation.npy`` (there are no logits).
    name : method name in the report (default: the scores path's name)
    """
    options = _options(options, overrides)
    options.check_score_maps()
    preset, root = parse_dataset_spec(dataset)
    region = options.region or preset.region_of(root)
    method = name or _method_of(Path(scores_path))
    given = _given(options, [method])
    items = preset.find(root)
    meta = _meta(options, [method], len(items), [it.name for it in items])
    saver = ScoreSaver.from_specs(options.save_scores, preset.name)
    resize = options.resize_scores
    with open_score_maps(scores_path) as maps:
        extra = maps.match([it.name for it in items])
        overlay_at = frozenset(_overlay_indices(len(items), options.max_overlays))
        runner: SerialFrames | WorkerFrames
        if options.workers > 1:
            runner = WorkerFrames(_ScoreMapsSource(str(scores_path), dataset, method, region, resize, overlay_at),
                                  options.workers, len(items))
        else:
            runner = SerialFrames(lambda: (_score_map_frame(maps, preset, it, region, method, resize,
                                                            i in overlay_at) for i, it in enumerate(items)),
                                  maps.where)
        out = _run(Path(out_dir), [method], runner, len(items), options, given=given, overlay_at=set(overlay_at),
                   saver=saver, source=f"{scores_path} on {dataset}", meta=meta)
    out.extra_names = extra
    return out
