"""Evaluation protocols: the same score maps measured the way each benchmark's own code measures them.

``exact`` (the default) is ours: exact pixel metrics (:mod:`oodscore.metrics`, equal to sklearn) and component
metrics with ``score >= threshold`` at the exact F1-optimal threshold. ``smiyc`` reproduces the SegmentMeIfYouCan
tooling (:mod:`oodscore.protocols.smiyc`: float16 maps, per-frame percentile bins, its curve and ``>`` rule, its
instancer's quirks); ``fishyscapes`` the Fishyscapes / bdl-benchmark function (:mod:`oodscore.protocols.fishyscapes`:
float32 cast, exact sort). ``docs/protocols.md`` lists every quirk with the official file and function.

Results use the keys of ``metrics.json`` entries (:data:`oodscore.metrics.METRIC_KEYS`; a key the protocol does not
define is None), ``"protocol"``, and with components the ``component_*`` keys of today's reports.

For the CLI / report (one accumulator per method, frames streamed in data set order)::

    pix = pixel_accumulator(protocol)            # .update(score, label) per frame; .compute(); .curves()
    res = pix.compute()                          # adds "protocol"
    comp = component_accumulator(protocol, res["threshold"], track, rule)   # second pass, same frames
    res.update(component_results(comp.compute()))

or at once: ``protocol_metrics(protocol, frames, components="anomaly")``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from oodscore import OodscoreError
from oodscore.components import TRACKS, ComponentMetrics, check_rule
from oodscore.metrics import PixelMetrics
from oodscore.options import (
    COMPONENT_RULES,
    PROTOCOL_NAMES,
    check_protocol,
    default_component_rule,
    protocol_with_components,
)
from oodscore.protocols.fishyscapes import FishyscapesPixels
from oodscore.protocols.smiyc import SmiycComponents, SmiycPixels

__all__ = [
    "COMPONENT_RULES",
    "DEFAULT_PROTOCOL",
    "PROTOCOLS",
    "check_protocol",
    "component_accumulator",
    "component_results",
    "default_component_rule",
    "pixel_accumulator",
    "protocol_metrics",
]

#: protocol name -> what it reproduces (the names, and each protocol's component rule, are defined with the
#: evaluation's other choices in :mod:`oodscore.options`: the command line offers them without importing this)
_DESCRIPTIONS = {
    "exact": "ours: exact pixel metrics (== sklearn); components with score >= the exact F1-optimal threshold",
    "smiyc": "SegmentMeIfYouCan road-anomaly-benchmark (PixBinaryClass + SegEval-AnomalyTrack/-ObstacleTrack): "
             "float16 maps, 768 percentile bins per frame, score > the binned best-F1 threshold",
    "fishyscapes": "Fishyscapes bdl-benchmark calculate_metrics_perpixAP: float32 scores, exact sort; "
                   "AUROC, AP, FPR95 only",
}
PROTOCOLS = {name: _DESCRIPTIONS[name] for name in PROTOCOL_NAMES}
DEFAULT_PROTOCOL = "exact"


class _ExactPixels(PixelMetrics):
    """Today's exact :class:`PixelMetrics`, with ``"protocol"`` in its results."""

    def compute(self, threshold: float | None = None) -> dict:
        return {**super().compute(threshold), "protocol": "exact"}


def pixel_accumulator(protocol: str = DEFAULT_PROTOCOL) -> PixelMetrics | SmiycPixels | FishyscapesPixels:
    """A streaming pixel-metric accumulator for ``protocol`` (a :class:`~cocodag.streaming.StreamingState`):
    ``update(score, label)`` per frame (in data set order), ``compute()`` -> the ``metrics.json`` keys +
    ``"protocol"``, ``curves(max_points)`` for the plots, ``merge(other)``, ``empty_copy()``. ``exact`` gives a
    :class:`PixelMetrics` (its ``compute`` adds ``"protocol"``)."""
    check_protocol(protocol)
    if protocol == "exact":
        return _ExactPixels()
    if protocol == "smiyc":
        return SmiycPixels()
    return FishyscapesPixels()


def component_accumulator(protocol: str, threshold: float, track: str = "anomaly",
                          rule: str | None = None) -> ComponentMetrics | SmiycComponents:
    """A streaming component-metric accumulator for ``protocol`` at ``threshold`` (that protocol's pixel
    ``threshold``; a :class:`~cocodag.streaming.StreamingState`): ``update(score, label)`` per frame, ``compute()``
    as :meth:`ComponentMetrics.compute` (plus ``track`` and ``rule``). ``rule`` None -> the protocol's own
    (:data:`COMPONENT_RULES`)."""
    rule = check_rule(rule) if rule is not None else default_component_rule(protocol)
    if track not in TRACKS:
        raise OodscoreError(f"components {track!r}: expected one of {', '.join(TRACKS)}")
    if protocol_with_components(protocol) == "smiyc":
        return SmiycComponents(threshold, track=track, rule=rule)
    return _ExactComponents(threshold, track=track, rule=rule)


class _ExactComponents(ComponentMetrics):
    """Today's :class:`ComponentMetrics`, with ``track`` and ``rule`` in its results."""

    def compute(self) -> dict:
        return {**super().compute(), "track": self.track, "rule": self.rule}


def component_results(result: dict) -> dict:
    """A component accumulator's ``compute()`` as ``metrics.json`` keys: ``component_<key>`` for each scalar."""
    return {f"component_{k}": v for k, v in result.items() if np.isscalar(v)}


def _passes(frames) -> Callable[[], Iterable]:
    if callable(frames):
        return frames
    if iter(frames) is frames:
        cached = frames

        def once():
            nonlocal cached
            if cached is None:
                raise OodscoreError("frames: component metrics need two passes over the frames; pass a sequence "
                                    "or a callable that returns a new iterator")
            out, cached = cached, None
            return out
        return once
    return lambda: frames


def protocol_metrics(protocol: str, frames, components: str | None = None, component_rule: str | None = None) -> dict:
    """One ``metrics.json`` entry for ``frames`` under ``protocol``.

    ``frames``: ``(score, label)`` pairs in data set order -- a sequence, or a callable returning an iterable (a
    one-shot iterator is enough without components). ``components``: None, ``"anomaly"`` or ``"obstacle"``:
    a second pass at the protocol's pixel threshold with its rule (``component_rule`` overrides it).
    """
    check_protocol(protocol)
    if components is not None:
        protocol_with_components(protocol)
        if components not in TRACKS:
            raise OodscoreError(f"components {components!r}: expected one of {', '.join(TRACKS)} or None")
    passes = _passes(frames)
    pix = pixel_accumulator(protocol)
    for score, label in passes():
        pix.update(score, label)
    out = pix.compute()
    if components is not None:
        comp = component_accumulator(protocol, out["threshold"], components, component_rule)
        for score, label in passes():
            comp.update(score, label)
        out.update(component_results(comp.compute()))
    return out
