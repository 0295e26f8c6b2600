"""Anomaly scores (DESIGN §4.4) as small sklearn-style objects; higher score = more anomalous.

``SCORERS`` maps each method name to its class; :func:`get_scorer` builds one by name::

    get_scorer("msp").score(logits)                       # (N, C, h, w) -> (N, H, W) float32
    get_scorer("sml", stats=SMLStats.load("sml.json"), boundary_iters=0, smoothing=False)
    get_scorer("oodmc").fit(frames).score(mc_dict)        # MC-dropout moments, not logits
"""
from __future__ import annotations

import difflib

from oodscore import OodscoreError
from oodscore.scores.base import Scorer
from oodscore.scores.baseline import MSP, Entropy, MaxLogit
from oodscore.scores.oodmc import OODMC, mc_features
from oodscore.scores.sml import SML, SMLStats
from oodscore.scores.vde import VDE, drivable_region

SCORERS: dict[str, type] = {
    "msp": MSP,
    "maxlogit": MaxLogit,
    "entropy": Entropy,
    "sml": SML,
    "vde": VDE,
    "oodmc": OODMC,
}


def get_scorer(name: str, **params):
    """Build the scorer registered as ``name`` with ``params`` (``None`` values are dropped so defaults stay).

    Raises
    ------
    OodscoreError
        Unknown name (the message lists the valid names and close matches) or bad parameters.
    """
    key = str(name).strip().lower()
    if key not in SCORERS:
        close = difflib.get_close_matches(key, list(SCORERS), n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise OodscoreError(f"unknown score method {name!r}{hint}; valid: {', '.join(SCORERS)}")
    kwargs = {k: v for k, v in params.items() if v is not None}
    try:
        return SCORERS[key](**kwargs)
    except TypeError as e:
        raise OodscoreError(f"method {key!r}: bad parameters {sorted(kwargs)}: {e}") from e


__all__ = ["SCORERS", "get_scorer", "Scorer", "MSP", "MaxLogit", "Entropy", "SML", "SMLStats", "VDE", "OODMC",
           "drivable_region", "mc_features"]
