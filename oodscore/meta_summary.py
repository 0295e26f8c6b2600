"""The numbers of an ``oodscore meta-classify`` report, read back for ``oodscore evaluate --meta``.

``meta-classify`` writes ``DIR/meta.json`` (:mod:`oodscore.meta_report`); ``evaluate --meta [METHOD=]DIR`` reads
it here, checks it (format, version, every number a number or null, the same frames as the evaluation) and puts its
numbers into the row of ``METHOD`` in ``metrics.json`` / ``metrics.csv`` under the keys of :data:`REPORT_KEYS` —
``meta_auroc``, ``meta_auprc``, ``meta_accuracy`` and the segment counts prefixed ``meta_`` (``meta_fp_before``,
``meta_fp_left``, ...; ``meta_fp_after`` is meta-ood's arithmetic, the true positives removed: see
:mod:`oodscore.meta`) — and ``meta_entropy_threshold``. The row is ``entropy`` unless named: the segments are those
of the normalized softmax entropy map, so their numbers belong to the entropy score.

No numpy, sklearn nor h5py here: ``evaluate`` reads the file before scoring anything.
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import OodscoreError
from .jsondoc import read_json_doc

__all__ = ["COUNT_KEYS", "DEFAULT_META_METHOD", "META_FORMAT", "REPORT_KEYS", "MetaSummary", "parse_meta_spec",
           "read_meta"]

META_FORMAT = "oodscore-meta"
#: the per-frame and total counts of meta-classify, in their CSV / JSON order (:func:`oodscore.meta.count_segments`)
COUNT_KEYS = ("segments", "kicked", "fp_before", "fp_after", "fp_left", "fp_removed", "tp_removed", "gt_segments",
              "fn_before", "fn_after")
#: meta.json key -> the key in metrics.json / metrics.csv, in this order (the threshold comes from ``settings``)
REPORT_KEYS: dict[str, str] = {
    "meta_auroc": "meta_auroc", "meta_auprc": "meta_auprc", "meta_accuracy": "meta_accuracy",
    **{k: f"meta_{k}" for k in COUNT_KEYS},
    "entropy_threshold": "meta_entropy_threshold",
}
#: the method whose row takes the numbers when ``--meta`` names none
DEFAULT_META_METHOD = "entropy"


def parse_meta_spec(spec: Path | str) -> tuple[str, Path]:
    """``[METHOD=]DIR`` -> ``(METHOD or "entropy", DIR)``; one line for an empty part.

    A ``=`` counts only before the first path separator (``runs/a=b/meta`` is a folder).
    """
    text = os.fspath(spec)
    head, sep, tail = text.partition("=")
    if sep and os.sep not in head and "/" not in head:
        method, path = head.strip(), tail
        if not method:
            raise OodscoreError(f"--meta {text!r}: empty method name; expected [METHOD=]DIR")
    else:
        method, path = DEFAULT_META_METHOD, text
    if not path:
        raise OodscoreError(f"--meta {text!r}: no folder given; expected [METHOD=]DIR (a meta-classify --out folder)")
    return method, Path(path)


@dataclass(frozen=True)
class MetaSummary:
    """The numbers of one ``meta.json`` for a report row.

    Attributes
    ----------
    method : the report row that takes them
    path : the meta.json read
    values : ``{metrics.json key: number or None}`` in :data:`REPORT_KEYS` order
    frames : the number of frames meta-classify saw
    names : their names in order (from ``frames.csv``), None when the folder has none
    error : meta.json's ``error`` (the classifier could not be fitted: only the counts before are numbers), or None
    """

    method: str
    path: Path
    values: dict[str, float | int | None]
    frames: int
    names: tuple[str, ...] | None
    error: str | None = None

    def check(self, methods: Sequence[str], *, num_frames: int, names: Sequence[str] | None = None) -> MetaSummary:
        """One line unless the evaluation scores :attr:`method` and has the same frames (names, when both have
        them); returns ``self``."""
        if self.method not in methods:
            hint = (f"add --method {self.method}" if self.method == DEFAULT_META_METHOD
                    else "name another row")
            raise OodscoreError(f"--meta {self.path.parent}: its numbers go to method {self.method!r}, which this "
                                f"evaluation does not score ({', '.join(methods) or 'none'}); {hint}, or give "
                                "--meta METHOD=DIR")
        if self.frames != num_frames:
            raise OodscoreError(f"--meta {self.path}: meta-classify saw {self.frames} frame(s), this evaluation has "
                                f"{num_frames}; run meta-classify on the same logits file")
        if names is not None and self.names is not None and tuple(names) != self.names:
            i = next((i for i, (a, b) in enumerate(zip(names, self.names)) if a != b), 0)
            raise OodscoreError(f"--meta {self.path.parent}: frame {i} is {self.names[i]!r} there (frames.csv) and "
                                f"{names[i]!r} here; run meta-classify on the same logits file")
        return self


def _number(path: Path, key: str, v: Any) -> float | int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise OodscoreError(f"{path}: {key} is {v!r}, expected a number or null (a meta.json of oodscore "
                            "meta-classify)")
    return v


def _read_names(path: Path) -> tuple[str, ...] | None:
    if not path.is_file():
        return None
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise OodscoreError(f"{path}: cannot read the frames table ({e})") from None
    if rows and "frame" not in rows[0]:
        raise OodscoreError(f"{path}: no 'frame' column (a frames.csv of oodscore meta-classify)")
    return tuple(r["frame"] for r in rows)


def read_meta(spec: Path | str) -> MetaSummary:
    """Read and check ``DIR/meta.json`` (or the given ``meta.json`` file) of ``[METHOD=]DIR``.

    Raises
    ------
    OodscoreError
        One line naming the file: missing, not JSON, another format or version, a value that is not a number or
        null, a frames.csv that does not match.
    """
    method, where = parse_meta_spec(spec)
    path = where if where.suffix == ".json" and not where.is_dir() else where / "meta.json"
    if not path.is_file():
        what = "not found" if not where.exists() else "no meta.json there"
        raise OodscoreError(f"--meta {where}: {what}; give the --out folder of `oodscore meta-classify`")
    doc = read_json_doc(path, fmt=META_FORMAT, name="meta.json", writer="oodscore meta-classify")
    frames = doc.get("frames")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 0:
        raise OodscoreError(f"{path}: frames is {frames!r}, expected a count")
    settings = doc.get("settings")
    if not isinstance(settings, dict):
        raise OodscoreError(f"{path}: no settings object (a meta.json of oodscore meta-classify)")
    values: dict[str, float | int | None] = {}
    for key, name in REPORT_KEYS.items():
        src = settings if key == "entropy_threshold" else doc
        if key not in src:
            raise OodscoreError(f"{path}: no {key!r} (a meta.json of oodscore meta-classify, version 1)")
        values[name] = _number(path, key, src[key])
    error = doc.get("error")
    return MetaSummary(method, path, values, frames, _read_names(path.parent / "frames.csv"),
                       error if isinstance(error, str) else None)
