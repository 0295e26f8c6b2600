"""Published results shipped with the package: the SegmentMeIfYouCan leaderboard, and the recipes' own numbers.

``oodscore/data/published/smiyc_leaderboard.json`` is a byte-for-byte copy of ``assets/leaderboard.json`` of
https://github.com/SegmentMeIfYouCan/segment-me-if-you-can (the website's data); the sidecar
``smiyc_leaderboard.source.json`` records the commit it was copied at, the date and its sha256. Both are package
data (pyproject's ``[tool.setuptools.package-data]``), read through :mod:`importlib.resources`.

Three tables, one per leaderboard (the JSON's keys):

==================  ==================  =====================================================
name                JSON key            evaluation set
==================  ==================  =====================================================
``smiyc-anomaly``   ``anomaly_track``   RoadAnomaly21 (SMIYC anomaly track), test
``smiyc-obstacle``  ``obstacle_track``  RoadObstacle21 (SMIYC obstacle track), test
``smiyc-laf``       ``laf_no_known``    LostAndFound test, without the known (Cityscapes) objects
==================  ==================  =====================================================

The JSON's metrics are fractions in [0, 1], as ours (the website multiplies them by 100); they become our metric
keys: ``PixBinaryClass-area_PRC`` -> ``ap``, ``PixBinaryClass-tpr95_fpr`` -> ``fpr95``, ``SegEval-*-sIoU_gt`` ->
``component_siou``, ``SegEval-*-prec_pred`` -> ``component_ppv``, ``SegEval-*-f1_mean`` -> ``component_mean_f1``
(the SMIYC protocol's, as ``oodscore evaluate --protocol smiyc`` reports them). The leaderboard's ``best_f1`` (the
best F1 over thresholds) is not ours ``f1`` (F1 at the chosen threshold) and is left out.

``papers.json`` holds each recipe's own published numbers where they could be copied from a text source (with the
text verbatim, its address, and what the source says of the split): :func:`paper_results`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal, get_args

from . import OodscoreError

__all__ = ["LEADERBOARDS", "PUBLISHED_METRICS", "Leaderboard", "PaperResult", "PublishedRow", "PublishedTable",
           "leaderboard_source", "load_published", "paper_results"]

Leaderboard = Literal["smiyc-anomaly", "smiyc-obstacle", "smiyc-laf"]
LEADERBOARDS: tuple[str, ...] = get_args(Leaderboard)

_DATA = resources.files("oodscore") / "data" / "published"
_FILE = "smiyc_leaderboard.json"
_SOURCE = "smiyc_leaderboard.source.json"

#: name -> (JSON key, prefix of the pixel metrics' fields, prefix of the component metrics' fields, title)
_TABLES: dict[str, tuple[str, str, str, str]] = {
    "smiyc-anomaly": ("anomaly_track", "AnomalyTrack-test-PixBinaryClass-", "AnomalyTrack-test-SegEval-AnomalyTrack-",
                      "SegmentMeIfYouCan, anomaly track (RoadAnomaly21)"),
    "smiyc-obstacle": ("obstacle_track", "ObstacleTrack-test-PixBinaryClass-",
                       "ObstacleTrack-test-SegEval-ObstacleTrack-",
                       "SegmentMeIfYouCan, obstacle track (RoadObstacle21)"),
    "smiyc-laf": ("laf_no_known", "LostAndFound-testNoKnown-PixBinaryClass-",
                  "LostAndFound-testNoKnown-SegEval-ObstacleTrack-", "SegmentMeIfYouCan, LostAndFound no-known"),
}
#: our metric key -> (which prefix, the JSON field's suffix)
_FIELDS: dict[str, tuple[str, str]] = {
    "ap": ("pixel", "area_PRC"),
    "fpr95": ("pixel", "tpr95_fpr"),
    "component_siou": ("component", "sIoU_gt"),
    "component_ppv": ("component", "prec_pred"),
    "component_mean_f1": ("component", "f1_mean"),
}
#: the metric keys a published row holds
PUBLISHED_METRICS: tuple[str, ...] = tuple(_FIELDS)


@dataclass(frozen=True)
class PublishedRow:
    """One method of a leaderboard.

    ``requires_ood``: the leaderboard's flag (the method uses OOD data in training), ``None`` where it gives none.
    ``values``: our metric keys (:data:`PUBLISHED_METRICS`) -> fraction in [0, 1] (``None``: not published).
    """

    method: str
    values: dict[str, float | None]
    requires_ood: bool | None = None
    paper: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class PublishedTable:
    """A leaderboard: its ``name`` (one of :data:`LEADERBOARDS`), ``title``, rows in the file's order and
    ``source`` (the sidecar: repository, path, commit, date copied)."""

    name: str
    title: str
    rows: tuple[PublishedRow, ...]
    source: dict[str, Any] = field(default_factory=dict)

    def citation(self) -> str:
        """One line: where the numbers come from."""
        s = self.source
        return (f"{self.title}: {s['repository']} `{s['path']}` at commit {str(s['commit'])[:7]} "
                f"(copied {s['copied']})")


def leaderboard_source() -> dict[str, Any]:
    """The sidecar of the shipped leaderboard: ``repository``, ``path``, ``commit``, ``copied``, ``sha256``, ..."""
    return dict(_load_source())


@cache
def _load_source() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((_DATA / _SOURCE).read_text(encoding="utf-8"))
    return doc


@cache
def _load_json() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((_DATA / _FILE).read_text(encoding="utf-8"))
    return doc


def _fraction(name: str, method: str, key: str, v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
        # the shipped file is checked by the tests: a value out of [0, 1] here is a bad update of the data
        raise ValueError(f"{_FILE} [{name}] {method!r}: {key} = {v!r}, expected a fraction in [0, 1]")
    return float(v)


def _str_or_none(v: Any) -> str | None:
    return v.strip() or None if isinstance(v, str) else None


def load_published(name: str) -> PublishedTable:
    """The leaderboard ``name`` (``smiyc-anomaly``, ``smiyc-obstacle`` or ``smiyc-laf``).

    Method names are the leaderboard's, surrounding spaces removed; a method listed twice (e.g. RbA, with and
    without OOD data) stays twice, told apart by ``requires_ood``. An unknown name -> :class:`OodscoreError`.
    """
    if name not in _TABLES:
        raise OodscoreError(f"--published {name!r}: unknown leaderboard; valid: {', '.join(LEADERBOARDS)}")
    key, pixel, component, title = _TABLES[name]
    prefixes = {"pixel": pixel, "component": component}
    rows = []
    for rec in _load_json()[key]:
        method = str(rec["method"]).strip()
        values = {ours: _fraction(name, method, ours, rec.get(prefixes[kind] + suffix))
                  for ours, (kind, suffix) in _FIELDS.items()}
        flag = rec.get("requires_ood")
        rows.append(PublishedRow(method=method, values=values, requires_ood=flag if isinstance(flag, bool) else None,
                                 paper=_str_or_none(rec.get("paper")), code=_str_or_none(rec.get("code"))))
    return PublishedTable(name=name, title=title, rows=tuple(rows), source=leaderboard_source())


# ------------------------------------------------------------------------------------------------------ papers
_PAPERS = "papers.json"


@dataclass(frozen=True)
class PaperResult:
    """One published number set of a recipe's method on one data set (``oodscore/data/published/papers.json``).

    ``preset``: the ``oodscore datasets`` preset of that data set (where the recipe's results put it beside
    yours); ``split``: what the source says of the split (or that it says nothing); ``values``: our metric keys ->
    fraction; ``source`` and ``excerpt``: where it was copied from, the text verbatim.
    """

    recipe: str
    method: str
    dataset: str
    preset: str
    split: str
    values: dict[str, float | None]
    source: str
    excerpt: str


def paper_results(recipe: str | None = None) -> list[PaperResult]:
    """The recorded published results, of one recipe (its name) or all, in the file's order."""
    doc = json.loads((_DATA / _PAPERS).read_text(encoding="utf-8"))
    if doc.get("format") != "cocodag-paper-results" or doc.get("version") != 1:
        raise ValueError(f"{_PAPERS}: not a version-1 cocodag-paper-results file")
    out = []
    for rec in doc["results"]:
        if recipe is not None and rec["recipe"] != recipe:
            continue
        values = {k: _fraction(_PAPERS, rec["method"], k, v) for k, v in rec["values"].items()}
        out.append(PaperResult(recipe=rec["recipe"], method=rec["method"], dataset=rec["dataset"],
                               preset=rec["preset"], split=rec["split"], values=values, source=rec["source"],
                               excerpt=rec["excerpt"]))
    return out
