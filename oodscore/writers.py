"""The files of a report besides its figures: ``metrics.json`` / ``metrics.csv``, ``thresholds.json`` (written and
read back), ``curves.npz`` and ``protocols.md`` / ``protocols.csv``; each written atomically (:mod:`cocodag.atomic`).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cocodag.atomic import atomic_write, atomic_write_text

from . import OodscoreError
from .jsondoc import read_json_doc
from .options import THRESHOLD_KINDS
from .tables import Table

__all__ = ["PROTOCOL_TABLE_KEYS", "THRESHOLDS_FORMAT", "load_thresholds", "save_curves", "save_thresholds",
           "write_metrics", "write_protocols"]

THRESHOLDS_FORMAT = "oodscore-thresholds"
#: the columns of protocols.md / protocols.csv (the component ones only when computed)
PROTOCOL_TABLE_KEYS = ("auroc", "ap", "fpr95", "f1", "threshold", "component_siou", "component_ppv",
                       "component_mean_f1")


def _jsonable(v: Any) -> Any:
    """``v`` as JSON can hold it: numpy scalars as Python numbers, NaN / inf as None, arrays as lists."""
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
    table = Table(["method", *keys], [[m, *(r.get(k) for k in keys)] for m, r in scalars.items()])
    atomic_write_text(out_dir / "metrics.csv", table.csv())


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
    doc = read_json_doc(path, fmt=THRESHOLDS_FORMAT, name="thresholds.json", writer="oodscore evaluate",
                        version_default=1)
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


def save_curves(path: Path | str, curves: dict[str, dict]) -> None:
    """The plotted ROC / PR curves as ``curves.npz`` (arrays ``<method>/fpr``, ``/tpr``, ``/precision``,
    ``/recall``; float64), atomically: what ``oodscore compare`` overlays across reports."""
    arrays = {f"{m}/{k}": np.asarray(c[k], dtype=np.float64) for m, c in curves.items()
              for k in ("fpr", "tpr", "precision", "recall") if k in c}
    with atomic_write(path, keep_suffix=True) as tmp:
        np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle


def write_protocols(out_dir: Path | str, by_protocol: dict[str, dict[str, dict]]) -> list[Path]:
    """``protocols.md`` and ``protocols.csv``: one row per method and protocol, the metrics side by side
    (``--protocol all``); a metric a protocol does not define is empty (csv) / ``-`` (markdown)."""
    out_dir = Path(out_dir)
    rows = [(m, p, r) for p, res in by_protocol.items() for m, r in res.items()]
    rows.sort(key=lambda row: list(by_protocol[row[1]]).index(row[0]))          # methods in order, protocols under
    keys = [k for k in PROTOCOL_TABLE_KEYS if any(k in r for _, _, r in rows)]
    table = Table(["method", "protocol", *keys], [[m, p, *(_jsonable(r.get(k)) for k in keys)] for m, p, r in rows])
    atomic_write_text(out_dir / "protocols.csv", table.csv())
    doc = ("# Every protocol side by side\n\nexact: ours (metrics.json); smiyc: SegmentMeIfYouCan's own code; "
           "fishyscapes: bdl-benchmark's (see docs/protocols.md). `-`: not defined by that protocol.\n\n"
           + table.markdown(".6g") + "\n")
    atomic_write_text(out_dir / "protocols.md", doc)
    return [out_dir / "protocols.md", out_dir / "protocols.csv"]
