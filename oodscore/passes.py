"""The two passes of an evaluation over its frames, on the streaming-state protocol (:mod:`cocodag.streaming`).

Pass 1 (:func:`_pixel_pass`): each frame's pixel-metric state per (protocol, method), merged in frame order; pass 2
(:func:`_component_pass`, only for component metrics): the frames again, thresholded at each method's F1-optimal
pixel threshold of pass 1. A *task* (:class:`_PixelTask`, :class:`_ComponentTask`) turns one frame into what the
parent needs, in this process or a worker (:mod:`oodscore.workers`): for each accumulator, an ``empty_copy``
updated with that frame (small and picklable: a frame's distinct scores and counts, never its score map), which
the parent ``merge``s in frame order.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cocodag.progress import progress_bar

from . import OodscoreError
from .components import ComponentMetrics
from .metrics import PixelMetrics
from .protocols import component_accumulator, pixel_accumulator

_TPR95_POINTS = 100_000      # curve points used to find the TPR-95 threshold (exact below this many distinct scores)


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


def _where(describe: Callable[[str], str] | None, name: str) -> str:
    """``"<file>: frame 'x'"`` (or ``"frame 'x'"`` without a describer) for an error about one frame."""
    return f"{describe(name)}: frame {name!r}" if describe is not None else f"frame {name!r}"


@dataclass(frozen=True)
class _PixelTask:
    """Pass 1 for one frame (in this process or a worker): each accumulator's state of this frame, and the frame
    itself when it is kept for an overlay. ``accs``: empty copies of the run's accumulators (their mode, binned
    edges)."""

    accs: dict             # (protocol, method) -> accumulator
    keep: bool
    save: bool = False     # --save-scores: hand the frame's maps back to the parent, which writes them in order

    def run(self, item: tuple, describe: Callable[[str], str] | None) -> tuple[dict, tuple | None, tuple | None]:
        name, label, scores, image = item
        out = {}
        for key, empty in self.accs.items():
            m = key[1]
            s = scores[m]
            if s.shape != label.shape:
                raise OodscoreError(f"{_where(describe, name)}: {m} score map has shape {s.shape}, "
                                    f"label {label.shape}")
            acc = empty.empty_copy()
            try:
                acc.update(s, label)
            except OodscoreError as e:      # say which file, frame and method, the metric only sees arrays
                raise OodscoreError(f"{_where(describe, name)}, {m}: {e}") from None
            out[key] = acc
        kept = None
        if self.keep and image is not None:
            kept = (name, label, {m: scores[m].astype(np.float16) for m in dict.fromkeys(k[1] for k in self.accs)},
                    image)
        return out, kept, ((name, scores) if self.save else None)


@dataclass(frozen=True)
class _ComponentTask:
    """Pass 2 for one frame: each accumulator's state of this frame. ``cms``: empty copies of the run's
    accumulators."""

    cms: dict

    def run(self, item: tuple, describe: Callable[[str], str] | None) -> dict:
        _, label, scores, _ = item
        out = {}
        for key, empty in self.cms.items():
            acc = empty.empty_copy()
            acc.update(scores[key[1]], label)
            out[key] = acc
        return out


def _pixel_accumulator(protocol: str, bins: int | None):
    """``exact``: today's ``PixelMetrics`` (its results unchanged, no ``"protocol"`` key); else the protocol's."""
    return PixelMetrics(bins=bins) if protocol == "exact" else pixel_accumulator(protocol)


def _pixel_pass(methods: Sequence[str], runner, num_frames: int, *, bins: int | None, overlay_at: set[int],
                progress: bool, protocols: Sequence[str] = ("exact",), saver=None) -> tuple[dict, list]:
    """Pass 1: every frame's states, merged in frame order into one accumulator per (protocol, method) (what
    ``update`` with each frame gives); the overlay frames are kept. ``saver`` (:class:`oodscore.layouts.ScoreSaver`):
    each frame's maps are written, in frame order, as they come back."""
    keys = [(p, m) for p in protocols for m in methods]
    pm = {k: _pixel_accumulator(k[0], bins) for k in keys}
    kept: list[tuple[str, np.ndarray, dict, np.ndarray]] = []   # only the few overlay frames are kept

    def task(i: int) -> _PixelTask:  # made when frame i is submitted: binned edges as fixed by then
        return _PixelTask({k: pm[k].empty_copy() for k in keys}, i in overlay_at, saver is not None)

    for states, overlay, maps in progress_bar(runner.results(task, num_frames), total=num_frames, desc="evaluate",
                                              unit="frame", disable=not progress):
        for k in keys:
            pm[k].merge(states[k])
        if overlay is not None:
            kept.append(overlay)
        if maps is not None:
            saver.write(*maps)
    return pm, kept


def _run_thresholds(pm, result: dict) -> dict:
    """The F1-optimal and TPR-95 thresholds of one method's run.

    TPR-95: from the full curve when it has at most ``_TPR95_POINTS`` points (exact); beyond that from a curve
    subsampled to ``_TPR95_POINTS`` points: still TPR >= 0.95, at most n/_TPR95_POINTS distinct scores higher.
    """
    n_points = pm.n_distinct + 2
    c = pm.curves(max_points=min(n_points, _TPR95_POINTS))
    out = {"f1": result.get("threshold"), "tpr95": tpr95_threshold(c), "tpr95_exact": n_points <= _TPR95_POINTS}
    if result.get("protocol") not in (None, "exact"):   # a protocol's thresholds: say whose, leave out undefined
        out = {k: v for k, v in out.items() if v is not None}
        out["protocol"] = result["protocol"]
    return out


def _fixed_threshold_stats(pm, threshold: float) -> dict:
    """F1 / precision / recall / FPR of a streamed metric at a given threshold (``score >= threshold``)."""
    r = pm.compute(threshold=threshold)
    return {k: r[k] for k in ("threshold", "f1", "precision", "recall", "fpr") if k in r}


def _component_accumulator(protocol: str, threshold, track: str, rule: str | None):
    """``exact``: today's ``ComponentMetrics`` (``rule`` None = ``ge``); else the protocol's own accumulator."""
    if protocol == "exact":
        return ComponentMetrics(threshold=threshold, track=track, rule=rule)
    return component_accumulator(protocol, threshold, track, rule)


def _component_pass(results: dict, runner, num_frames: int, track: str, progress: bool, rule: str | None = None
                    ) -> None:
    """Pass 2: component metrics at each method's F1-optimal pixel threshold (of its protocol), added to
    ``results`` (``{(protocol, method): result}``) in place."""
    cms = {k: _component_accumulator(k[0], r["threshold"], track, rule) for k, r in results.items()}
    task = _ComponentTask({k: cm.empty_copy() for k, cm in cms.items()})
    for states in progress_bar(runner.results(lambda i: task, num_frames), total=num_frames, desc="components",
                               unit="frame", disable=not progress):
        for k, cm in cms.items():
            cm.merge(states[k])
    for (p, m), cm in cms.items():
        results[(p, m)].update({f"component_{k}" if not k.startswith("component") else k: v
                                for k, v in cm.compute().items() if np.isscalar(v)})
        if p == "exact" and rule == "gt":    # not today's rule: say so (the default output stays as it was)
            results[(p, m)]["component_rule"] = "gt"
