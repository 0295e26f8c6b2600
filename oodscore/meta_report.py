"""``oodscore meta-classify``: meta-ood's segment-wise meta classification of a ``logits.h5`` file, end to end.

Per frame (streaming; in this process or ``workers`` processes, :mod:`oodscore.workers`): the softmax of the C class
channels (an abstention channel is no class), the OOD mask (normalized entropy >= the threshold, void removed),
its segments and their MetaSeg metrics and the ground-truth segments they touch: each frame comes back as a
:class:`oodscore.metaseg.SegmentMetrics` state (a :class:`cocodag.streaming.StreamingState`), merged in frame order
(so ``--workers N`` gives the numbers of one process). Then the meta classifier (:mod:`oodscore.meta`):
cross-validated (``cv``) or a fitted model applied (``model``).

Report folder::

    meta.json      segments, meta_auroc, meta_auprc, meta_accuracy, fp_before, fp_after (meta-ood's arithmetic),
                   fn_before, fn_after, fp_left, fp_removed, tp_removed, kicked, gt_segments; the settings
    frames.csv     the counts of every frame
    segments.csv   every segment: frame, index in its frame, size, centre, iou, iou0, P(false positive), kick
    overlays/<frame>.png   kept (red) and removed (blue) segments over the frame, the ground truth outlined
    .lock          the lock file (empty once the run is over)

A frame whose label is void everywhere has no ground truth (what ``maxent-train export`` writes for unlabelled
images): its void is not removed from the mask, its segments have no iou, and only ``--model`` can classify them.
When the classifier cannot be fitted (no segment, every segment of one class, a segment covering a whole frame:
meta-ood stops there too) the counts before are written (the others null, ``error`` says why) and the run ends
with that one line.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cocodag.atomic import atomic_write_text
from cocodag.formats.logits import LogitsFile, class_logits
from cocodag.labels import IGNORE_ID
from cocodag.lock import OutputLock
from cocodag.outputs import disk_errors, prepare_output
from cocodag.progress import progress_bar

from . import OodscoreError
from .meta import (
    COUNT_KEYS,
    MetaClassifier,
    MetaResult,
    check_cv,
    check_threshold,
    classify_segments,
    count_segments,
    total_counts,
)
from .meta_plots import save_meta_overlay
from .meta_summary import META_FORMAT
from .metaseg import DEFAULT_THRESHOLD, SegmentMetrics, SegmentTable, entropy_mask, segment_metrics
from .tables import Table
from .workers import SerialFrames, WorkerFrames, check_workers

__all__ = ["META_FORMAT", "MetaOptions", "MetaOutput", "classify_frames", "meta_classify", "softmax"]

_SEGMENT_COLUMNS = ("S", "mean_x", "mean_y", "iou", "iou0")


@dataclass(frozen=True)
class MetaOptions:
    """Options of ``oodscore meta-classify`` besides its input and output (field names = the options).

    ``entropy_threshold`` (None: 0.7, or the model's own with ``model``), ``cv`` (``"loo"``, the default, or K
    folds grouped by frame), ``model`` (a fitted classifier file to apply instead of cross-validation),
    ``save_model`` (write the classifier fitted on every segment), ``workers`` (frames in this many processes,
    and the folds in as many threads: the numbers are those of one), ``progress``, ``max_overlays``.
    """

    entropy_threshold: float | None = None
    cv: str | int | None = None
    model: Path | str | None = None
    save_model: Path | str | None = None
    workers: int = 1
    progress: bool = True
    max_overlays: int = 4

    def validate(self) -> MetaOptions:
        """Check every option; returns a copy with ``cv`` normalized. One line per bad value."""
        if self.entropy_threshold is not None:
            check_threshold(self.entropy_threshold)
        check_workers(self.workers)
        if isinstance(self.max_overlays, bool) or not isinstance(self.max_overlays, int) or self.max_overlays < 0:
            raise OodscoreError(f"--max-overlays {self.max_overlays!r}: expected an integer >= 0")
        if self.model is not None and self.save_model is not None:
            raise OodscoreError("--save-model writes the classifier fitted here; with --model nothing is fitted "
                                "(copy the model file instead)")
        if self.model is not None and self.cv is not None:
            raise OodscoreError("--cv is for cross-validation; --model applies a fitted classifier (give one)")
        return dataclasses.replace(self, cv=None if self.model is not None else check_cv(self.cv or "loo"))


@dataclass
class MetaOutput:
    """What a run produced: the result, the summary written to meta.json, the files."""

    result: MetaResult | None
    summary: dict[str, Any]
    out_dir: Path
    files: list[Path] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------- per frame
def softmax(logits: np.ndarray) -> np.ndarray:
    """(C, H, W) float32 softmax over the channel axis (max subtracted)."""
    x = np.asarray(logits, dtype=np.float32)
    x = x - x.max(axis=0, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=0, keepdims=True)
    return x


@dataclass(frozen=True)
class _Overlay:
    """What an overlay of one frame needs (the kicks come after the classifier)."""

    index: int
    name: str
    background: np.ndarray       # RGB image, or the normalized entropy when the file has no image
    components: np.ndarray       # int32, +k / -k on segment k
    label: np.ndarray | None


def _normalized_entropy(probs: np.ndarray) -> np.ndarray:
    p = probs.astype(np.float64)
    return (-(p * np.log(np.maximum(p, 1e-30))).sum(0) / np.log(p.shape[0])).astype(np.float16)


@dataclass(frozen=True)
class _MetaTask:
    """One frame, in this process or a worker: its :class:`~oodscore.metaseg.SegmentMetrics` state (an
    ``empty_copy`` updated with it) and, for an overlay frame, what the overlay needs."""

    state: SegmentMetrics
    keep: bool

    def run(self, item: tuple, describe: Callable[[str], str] | None) -> tuple[SegmentMetrics, str, _Overlay | None]:
        i, name, logits, label, image = item
        probs = softmax(logits)
        labels = None if (label == IGNORE_ID).all() else label    # void everywhere: an unlabelled frame
        mask = entropy_mask(probs, self.state.threshold, labels)
        state = self.state.empty_copy()
        try:
            state.update(probs, labels, ood_mask=mask)
        except OodscoreError as e:      # say which file and frame: the metrics only see arrays
            where = f"{describe(name)}: frame {name!r}" if describe is not None else f"frame {name!r}"
            raise OodscoreError(f"{where}: {e}") from None
        overlay = None
        if self.keep:
            components = segment_metrics(probs, mask, labels)[1]
            bg = image if image is not None else _normalized_entropy(probs)
            overlay = _Overlay(i, name, bg, components.astype(np.int32), labels)
        return state, name, overlay


def _read_frame(lf: LogitsFile, i: int, overlay_at: frozenset[int]) -> tuple:
    fr = lf.frame(i, image=i in overlay_at)
    return i, fr.image_id, class_logits(fr.logits, lf.abstention_channel), fr.label, fr.image


@dataclass(frozen=True)
class _MetaSource:
    """What a worker process needs to read frames of a logits file itself (see :mod:`oodscore.workers`)."""

    path: str
    overlay_at: frozenset

    def open(self, stack):
        lf = stack.enter_context(LogitsFile(self.path))
        return (lambda i: _read_frame(lf, i, self.overlay_at)), (lambda _n: str(lf.path))


def _overlay_indices(n: int, k: int) -> frozenset[int]:
    """``k`` frames spread evenly over ``n`` (deterministic; those of ``oodscore evaluate``)."""
    if k <= 0 or n == 0:
        return frozenset()
    k = min(k, n)
    return frozenset(int(round(i * (n - 1) / max(k - 1, 1))) for i in range(k))


def _segment_pass(runner, num_frames: int, threshold: float, overlay_at: frozenset[int], progress: bool
                  ) -> tuple[SegmentTable, list[str], list[_Overlay]]:
    """Every frame's segments, merged in frame order; the frames' names; the overlay frames."""
    state = SegmentMetrics(threshold)
    names: list[str] = []
    kept: list[_Overlay] = []
    for one, name, overlay in progress_bar(runner.results(lambda i: _MetaTask(state, i in overlay_at), num_frames),
                                           total=num_frames, desc="segments", unit="frame", disable=not progress):
        state.merge(one)
        names.append(name)
        if overlay is not None:
            kept.append(overlay)
    return state.compute(), names, kept


# ------------------------------------------------------------------------------------------------- the files
def _csv(header: list[str], rows: list[list]) -> str:
    return Table(header, rows).csv()


def _segments_csv(names: list[str], table: SegmentTable, result: MetaResult | None) -> str:
    """One row per segment: its frame, its number there (its ``components`` value), a few metrics, the decision."""
    m = table.metrics
    cols = [c for c in _SEGMENT_COLUMNS if c in m]
    values = {c: m[c].tolist() for c in cols}
    if "iou0" in m:     # unlabelled frames: no iou (meta-ood's -1)
        for c in ("iou", "iou0"):
            values[c] = [None if v < 0 else v for v in values[c]]
    p = result.proba[:, 1].tolist() if result is not None else [None] * len(table.frame)
    k = result.kick.tolist() if result is not None else [None] * len(table.frame)
    rows = [[names[f], s, *(values[c][j] for c in cols), p[j], k[j]]
            for j, (f, s) in enumerate(zip(table.frame.tolist(), table.segment.tolist()))]
    return _csv(["frame", "segment", *cols, "p_false_positive", "kick"], rows)


def _summary(source: str, names: list[str], settings: dict, totals: dict, scores: dict, error: str | None) -> dict:
    doc: dict[str, Any] = {"format": META_FORMAT, "version": 1, "source": source, "frames": len(names)}
    doc.update(scores)
    doc.update(totals)
    doc["settings"] = settings
    doc["notes"] = {
        "fp_after": "meta-ood's count, sum(kick) - sum(iou0[kick]): the true positives removed, not the false "
                    "positives left (those are fp_left)",
        "fn_after": "ground-truth segments touched by no kept segment (can exceed fn_before)",
    }
    if error is not None:
        doc["error"] = error
    return doc


def _write(out_dir: Path, summary: dict, names: list[str], rows: list[dict], seg_csv: str) -> list[Path]:
    atomic_write_text(out_dir / "meta.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out_dir / "frames.csv", _csv(["frame", *COUNT_KEYS],
                                                   [[n, *(r[k] for k in COUNT_KEYS)] for n, r in zip(names, rows)]))
    atomic_write_text(out_dir / "segments.csv", seg_csv)
    return [out_dir / f for f in ("meta.json", "frames.csv", "segments.csv")]


def _safe_name(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)


# ------------------------------------------------------------------------------------------------- the run
def _resolve(options: MetaOptions | None, overrides: dict) -> MetaOptions:
    opts = options if options is not None else MetaOptions()
    return (dataclasses.replace(opts, **overrides) if overrides else opts).validate()


def _load_model(options: MetaOptions, num_classes: int) -> MetaClassifier | None:
    if options.model is None:
        return None
    model = MetaClassifier.load(options.model)
    fitted = sum(n.startswith("cprob") for n in model.feature_names_)
    if fitted and fitted != num_classes:
        raise OodscoreError(f"--model {options.model}: fitted on segments of {fitted} classes, the logits have "
                            f"{num_classes}; fit it on logits of the same model")
    return model


def _threshold(options: MetaOptions, model: MetaClassifier | None) -> float:
    """``--entropy-threshold``, else the model's own (``--model``), else meta-ood's 0.7."""
    if options.entropy_threshold is not None:
        return float(options.entropy_threshold)
    return model.entropy_threshold if model is not None else DEFAULT_THRESHOLD


def _prepare(out_dir: Path | str, options: MetaOptions) -> Path:
    """The output folder (and the model file's place) checked before any work."""
    out = prepare_output(out_dir, kind="dir", option="--out")
    if options.save_model is not None:
        prepare_output(options.save_model, kind="file", option="--save-model")
    return out


def meta_classify(logits_path: Path | str, out_dir: Path | str, options: MetaOptions | None = None,
                  **overrides: Any) -> MetaOutput:
    """Segment search, metrics and meta classification of every frame of a ``logits.h5`` file; writes the report.

    Parameters
    ----------
    options : :class:`MetaOptions` (the command's defaults when None), or its fields as keywords (``overrides``).

    Raises
    ------
    OodscoreError
        A bad option or input file, cross-validation without ground truth, or a classifier that cannot be fitted
        (after the counts before are written).
    """
    options = _resolve(options, overrides)
    out = _prepare(out_dir, options)
    with LogitsFile(logits_path) as lf:
        model = _load_model(options, lf.num_classes)
        if model is None and all((lf.label(i) == IGNORE_ID).all() for i in range(len(lf))):
            raise OodscoreError(f"{lf.path}: every label pixel is void (no ground truth): cross-validation needs "
                                "labels; apply a fitted classifier with --model FILE instead")
        overlay_at = _overlay_indices(len(lf), options.max_overlays)
        runner: SerialFrames | WorkerFrames
        if options.workers > 1:
            runner = WorkerFrames(_MetaSource(str(lf.path), overlay_at), options.workers, len(lf))
        else:
            runner = SerialFrames(lambda: (_read_frame(lf, i, overlay_at) for i in range(len(lf))),
                                  lambda _n: str(lf.path))
        return _run(out, str(logits_path), runner, len(lf), model, options, overlay_at)


def classify_frames(frames: Callable[[], Iterable[tuple]], num_frames: int, out_dir: Path | str,
                    options: MetaOptions | None = None, *, source: str = "", **overrides: Any) -> MetaOutput:
    """:func:`meta_classify` of frames held in memory: ``frames()`` yields ``(name, logits (C, H, W) of the
    classes, label (H, W) 0/1/255, RGB image | None)``; computed in this process (``workers`` only fits the
    folds in threads). Writes the same report."""
    options = _resolve(options, overrides)
    out = _prepare(out_dir, options)
    model = None if options.model is None else MetaClassifier.load(options.model)
    overlay_at = _overlay_indices(num_frames, options.max_overlays)
    runner = SerialFrames(lambda: ((i, *item) for i, item in enumerate(frames())))
    return _run(out, source, runner, num_frames, model, options, overlay_at)


def _run(out: Path, source: str, runner, num_frames: int, model: MetaClassifier | None, options: MetaOptions,
         overlay_at: frozenset[int]) -> MetaOutput:
    """The pass over the frames and the report, ``out`` held exclusively (a second job on it is refused with one
    line naming this one); worker processes are stopped before the classifier runs."""
    threshold = _threshold(options, model)
    with OutputLock(out, option="--out"):
        with runner:
            table, names, kept = _segment_pass(runner, num_frames, threshold, overlay_at, options.progress)
        return _classify_and_write(out, source, table, names, kept, model, options, threshold)


def _classify_and_write(out: Path, source: str, table: SegmentTable, names: list[str], kept: list[_Overlay],
                        model: MetaClassifier | None, options: MetaOptions, threshold: float) -> MetaOutput:
    metrics, frame, gt = table.metrics, table.frame, table.gt
    settings: dict[str, Any] = {"entropy_threshold": threshold, "cv": options.cv if model is None else None,
                                "model": str(options.model) if options.model is not None else None,
                                "classifier": "LogisticRegression(solver='liblinear')"}
    try:
        result = classify_segments(metrics, frame, gt, cv=options.cv or "loo", model=model,
                                   entropy_threshold=threshold, workers=options.workers, progress=options.progress,
                                   frame_names=names)
    except OodscoreError as e:      # cannot be fitted: the counts before are still written, then the one line
        rows = count_segments(metrics.get("iou0"), None, frame, gt)
        summary = _summary(source, names, settings, total_counts(rows),
                           dict.fromkeys(("meta_auroc", "meta_auprc", "meta_accuracy")), str(e))
        with disk_errors(out, option="--out"):
            _write(out, summary, names, rows, _segments_csv(names, table, None))
        raise
    settings.update(result.settings, entropy_threshold=threshold)
    if model is None and result.model is not None:
        settings["features"] = len(result.model.feature_names_)
    summary = _summary(source, names, settings, result.totals, result.scores, None)
    with disk_errors(out, option="--out"):
        files = _write(out, summary, names, result.frames, _segments_csv(names, table, result))
        files += _draw_overlays(out, kept, result, frame)
    if options.save_model is not None and result.model is not None:
        with disk_errors(options.save_model, option="--save-model"):
            files.append(result.model.save(options.save_model))
    return MetaOutput(result, summary, out, files)


def _draw_overlays(out: Path, kept: list[_Overlay], result: MetaResult, frame: np.ndarray) -> list[Path]:
    files = []
    for ov in kept:
        kick = result.kick[frame == ov.index]
        row = result.frames[ov.index]
        p = out / "overlays" / f"{_safe_name(ov.name)}.png"
        save_meta_overlay(p, ov.background, ov.components, kick, ov.label, title=ov.name, counts=row)
        files.append(p)
    return files
