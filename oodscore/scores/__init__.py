"""Anomaly scores (docs/methods.md §5) as scikit-learn estimators; higher score = more anomalous.

The registry below is THE list of score methods: the CLI's ``--method`` choices, the report's checks and every
other method list derive from it. ``SCORERS`` maps each name to its class, :func:`get_scorer` builds one by name::

    get_scorer("msp").score(logits)                       # (N, C, h, w) -> (N, H, W) float32
    get_scorer("sml", stats=SMLStats.load("sml.json"), boundary_iters=0, smoothing=False)
    get_scorer("oodmc").fit(frames).score(mc_dict)        # MC-dropout moments, not logits
    sklearn.base.clone(get_scorer("msp-t", temperature=2.0))   # every scorer is an sklearn BaseEstimator

Every scorer follows the :class:`~oodscore.scores.base.Scorer` protocol; ``SCORERS[name].requires`` says which
per-frame input its ``score`` takes (``"logits"`` or ``"mc"``), ``SCORERS[name].definition`` its formula and
reference in one line (:func:`definitions` lists them all, e.g. for ``oodscore methods``).

The scorer classes (and torch) are imported on first use, so that reading :data:`METHODS` (e.g. for
``oodscore --help``) stays cheap.
"""
from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from oodscore import OodscoreError

#: method name -> "module:Class" under oodscore.scores; the order is the display order
_REGISTRY = {
    "msp": "baseline:MSP",            # 1 - max softmax
    "maxlogit": "baseline:MaxLogit",  # -max logit
    "entropy": "baseline:Entropy",    # softmax entropy / log C
    "sml": "sml:SML",                 # standardized max logit, boundary-suppressed + smoothed
    "vde": "vde:VDE",                 # SML restricted to the drivable region
    "oodmc": "oodmc:OODMC",           # classifier on MC-dropout moments
    "energy": "baseline:Energy",      # -T logsumexp(z/T)
    "msp-t": "baseline:MSPT",         # 1 - max softmax(z/T)
    "gen": "baseline:GEN",            # generalized entropy of the top-M probabilities
    "mc-entropy": "baseline:MCEntropy",  # entropy of the MC-dropout mean softmax / log C
    "pebal": "baseline:PEBAL",        # blur(-logsumexp(z)) at the label size
}
#: the registered method names, in display order
METHODS: tuple[str, ...] = tuple(_REGISTRY)

#: other public names, imported on first access: name -> module under oodscore.scores
_LAZY = {
    "Scorer": "base", "INPUT_KINDS": "base",
    "MSP": "baseline", "MaxLogit": "baseline", "Entropy": "baseline", "Energy": "baseline", "MSPT": "baseline",
    "GEN": "baseline", "MCEntropy": "baseline", "PEBAL": "baseline",
    "SML": "sml", "SMLStats": "sml",
    "VDE": "vde", "drivable_region": "vde",
    "OODMC": "oodmc", "mc_features": "oodmc", "make_classifier": "oodmc",
}

if TYPE_CHECKING:  # the names __getattr__ provides, for linters and type checkers
    from oodscore.scores.base import INPUT_KINDS, Scorer
    from oodscore.scores.baseline import GEN, MSP, MSPT, PEBAL, Energy, Entropy, MaxLogit, MCEntropy
    from oodscore.scores.oodmc import OODMC, make_classifier, mc_features
    from oodscore.scores.sml import SML, SMLStats
    from oodscore.scores.vde import VDE, drivable_region

    SCORERS: dict[str, type[Scorer]]


def _unknown(name) -> OodscoreError:
    close = difflib.get_close_matches(str(name).strip().lower(), METHODS, n=2)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return OodscoreError(f"unknown method {name!r}{hint}; valid: {', '.join(METHODS)}")


def check_methods(names: Iterable[str]) -> list[str]:
    """Registry names of ``names`` (case-insensitive), in the given order.

    Raises
    ------
    OodscoreError
        An unknown name (the message lists the valid names and close matches) or a name given twice.
    """
    out: list[str] = []
    for name in names:
        key = str(name).strip().lower()
        if key not in _REGISTRY:
            raise _unknown(name)
        if key in out:
            raise OodscoreError(f"method {key!r} given twice")
        out.append(key)
    return out


def scorer_class(name: str) -> type[Scorer]:
    """The class registered as ``name`` (case-insensitive); raises :class:`OodscoreError` for an unknown name."""
    (key,) = check_methods([name])
    module, _, attr = _REGISTRY[key].partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), attr)


def get_scorer(name: str, **params) -> Scorer:
    """Build the scorer registered as ``name`` with ``params`` (``None`` values are dropped so defaults stay).

    Raises
    ------
    OodscoreError
        Unknown name (the message lists the valid names and close matches) or bad parameters.
    """
    cls = scorer_class(name)
    kwargs = {k: v for k, v in params.items() if v is not None}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise OodscoreError(f"method {str(name).strip().lower()!r}: bad parameters {sorted(kwargs)}: {e}") from e


def definitions() -> dict[str, str]:
    """``{method: one-line definition with its reference}`` in registry order (imports the scorer classes).

    A class without its own ``definition`` falls back to the first line of its docstring.
    """
    out = {}
    for m in METHODS:
        cls = scorer_class(m)
        text = cls.definition or (cls.__doc__ or "").strip().split("\n")[0]
        out[m] = " ".join(text.split())
    return out


def __getattr__(name: str):
    if name == "SCORERS":
        value = {m: scorer_class(m) for m in METHODS}
    elif name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = ["METHODS", "SCORERS", "check_methods", "scorer_class", "get_scorer", "definitions", "Scorer",
           "INPUT_KINDS", "MSP", "MaxLogit", "Entropy", "Energy", "MSPT", "GEN", "MCEntropy", "PEBAL", "SML",
           "SMLStats", "VDE", "OODMC", "drivable_region", "mc_features", "make_classifier"]
