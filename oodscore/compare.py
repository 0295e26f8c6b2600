"""``oodscore compare``: one leaderboard over several report folders (runs x methods x protocols).

Reads what ``oodscore evaluate`` wrote in each report folder:

    metrics.json      {method: {metric: value}} (its protocol: the ``"protocol"`` key, ``exact`` when absent;
                      ``meta_*``: the meta classification of ``evaluate --meta``)
    protocols.csv     (``--protocol all``) every method x protocol: the other protocols' rows
    curves.json / curves.npz   (optional) per-method ROC / PR curves, for the overlaid plots

and writes, atomically, into ``out``:

    leaderboard.md    markdown table, the best value of each column in **bold**
    leaderboard.csv   same rows, plain numbers, a ``best`` column naming the metrics where the row is best
    leaderboard.tex   LaTeX ``tabular``, the best in ``\\textbf{}``
    roc.png, pr.png   every run/method overlaid, only when the reports hold curve data

``published=`` (``--published smiyc-anomaly|smiyc-obstacle|smiyc-laf``) adds the methods of that SegmentMeIfYouCan
leaderboard (:mod:`oodscore.published`, shipped with the package) as rows of the same table: run = the leaderboard's
name, protocol ``smiyc``, a ``source`` column (``report`` / ``published``) and the leaderboard's ``requires_ood``
flag (``yes`` / ``no``, ``-`` where it gives none); their values are fractions as ours, in the same precision. The
best of a column is then taken over all rows, the published ones included, and the markdown says so.

Curve files (``evaluate`` writes ``curves.npz``; ``curves.json`` is read too): ``curves.json``
``{method: {"fpr": [...], "tpr": [...], "precision": [...], "recall": [...]}}`` or ``curves.npz`` with arrays named
``<method>/fpr`` etc.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cocodag.atomic import atomic_write_text
from cocodag.outputs import disk_errors, prepare_output

from . import OodscoreError
from .meta_summary import COUNT_KEYS
from .plots import plot_curves
from .published import Leaderboard, load_published
from .tables import Table

#: metric -> +1 (higher is better), -1 (lower is better) or 0 (no best: e.g. a threshold)
DIRECTIONS: dict[str, int] = {
    "auroc": 1, "ap": 1, "fpr95": -1, "f1": 1, "precision": 1, "recall": 1, "fpr": -1, "threshold": 0,
    "component_siou": 1, "component_ppv": 1, "component_mean_f1": 1,
    # evaluate --meta (oodscore.meta_summary): the meta classifier, then the segment counts. meta_fp_after is
    # meta-ood's arithmetic (the true positives removed); the false positives left are meta_fp_left
    "meta_auroc": 1, "meta_auprc": 1, "meta_accuracy": 1, "meta_segments": 0, "meta_kicked": 0,
    "meta_fp_before": -1, "meta_fp_after": -1, "meta_fp_left": -1, "meta_fp_removed": 0, "meta_tp_removed": -1,
    "meta_gt_segments": 0, "meta_fn_before": -1, "meta_fn_after": -1,
}
#: short names accepted by ``--metric``
ALIASES = {"siou": "component_siou", "ppv": "component_ppv", "mean_f1": "component_mean_f1"}
#: the columns when ``--metric`` is not given (those that some row has): meta-ood's segment table is FP / FN
#: before and after, with the honest false positives left
DEFAULT_METRICS = ("auroc", "ap", "fpr95", "f1", "component_siou", "component_ppv", "component_mean_f1",
                   "meta_auroc", "meta_fp_before", "meta_fp_left", "meta_fn_before", "meta_fn_after")
_CURVE_KEYS = ("fpr", "tpr", "precision", "recall")
#: the columns that are counts (segments): shown as integers
_COUNTS = frozenset(f"meta_{k}" for k in COUNT_KEYS)


def parse_metrics(metrics: str | Sequence[str] | None) -> list[str] | None:
    """``"auroc,ap"`` or a list -> canonical metric names; one line listing the valid ones for an unknown name."""
    if metrics is None:
        return None
    items = metrics.split(",") if isinstance(metrics, str) else [x for m in metrics for x in m.split(",")]
    out: list[str] = []
    for raw in items:
        m = raw.strip().lower()
        if not m:
            continue
        m = ALIASES.get(m, m)
        if m not in DIRECTIONS:
            valid = ", ".join([*DIRECTIONS, *ALIASES])
            raise OodscoreError(f"--metric {raw.strip()!r}: unknown metric; valid: {valid}")
        if m not in out:
            out.append(m)
    if not out:
        raise OodscoreError("--metric: no metric given")
    return out


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, str) and v.strip():
        try:
            f = float(v)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def _value(key: str, v: Any) -> float | int | None:
    """A cell of column ``key``: :func:`_num`, counts as ``int``."""
    n = _num(v)
    return int(n) if key in _COUNTS and n is not None and n.is_integer() else n


def _read_report(path: Path) -> list[tuple[str, str, dict[str, float | int | None]]]:
    """``[(method, protocol, {metric: value})]`` of one report folder."""
    if not path.is_dir():
        raise OodscoreError(f"{path}: not a report folder (" + ("is a file" if path.exists() else "not found")
                            + "); give folders written by `oodscore evaluate --out`")
    mj = path / "metrics.json"
    if not mj.is_file():
        raise OodscoreError(f"{path}: not a report folder (no metrics.json); give folders written by "
                            "`oodscore evaluate --out`")
    try:
        doc = json.loads(mj.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OodscoreError(f"{mj}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not all(isinstance(r, dict) for r in doc.values()):
        raise OodscoreError(f"{mj}: expected {{method: {{metric: value}}}} (a metrics.json of oodscore evaluate)")
    rows: list[tuple[str, str, dict]] = []
    for m, r in doc.items():
        rows.append((str(m), str(r.get("protocol") or "exact"),
                     {k: _value(k, v) for k, v in r.items() if k in DIRECTIONS}))
    pc = path / "protocols.csv"
    if pc.is_file():
        index = {(m, p): vals for m, p, vals in rows}
        with open(pc, newline="") as f:
            for rec in csv.DictReader(f):
                m, p = rec.get("method"), rec.get("protocol")
                if not m or not p:
                    continue
                vals = {k: _value(k, v) for k, v in rec.items() if k in DIRECTIONS}
                if (m, p) in index:      # the metrics.json protocol: fill what it lacks, keep its values
                    for k, v in vals.items():
                        index[(m, p)].setdefault(k, v)
                else:
                    index[(m, p)] = vals
                    rows.append((m, p, vals))
    return rows


#: public: ``cocodag recipe run`` reads its reports with it (``[(method, protocol, {metric: value})]``)
read_report = _read_report


def _read_curves(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per-method curves of a report folder, ``{}`` when it holds none."""
    out: dict[str, dict[str, np.ndarray]] = {}
    cj, cz = path / "curves.json", path / "curves.npz"
    if cj.is_file():
        try:
            doc = json.loads(cj.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise OodscoreError(f"{cj}: not valid JSON ({e})") from None
        for m, c in (doc.items() if isinstance(doc, dict) else []):
            if isinstance(c, dict) and all(k in c for k in _CURVE_KEYS):
                out[str(m)] = {k: np.asarray(c[k], dtype=np.float64) for k in _CURVE_KEYS}
    elif cz.is_file():
        with np.load(cz, allow_pickle=False) as z:
            methods = {n.rsplit("/", 1)[0] for n in z.files if "/" in n}
            for m in sorted(methods):
                if all(f"{m}/{k}" in z.files for k in _CURVE_KEYS):
                    out[m] = {k: np.asarray(z[f"{m}/{k}"], dtype=np.float64) for k in _CURVE_KEYS}
    return out


def _run_names(paths: list[Path], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        names = [n.strip() for n in names]
        if len(names) != len(paths):
            raise OodscoreError(f"--names: {len(names)} name(s) for {len(paths)} report folder(s); give one per folder")
        if len(set(names)) != len(names) or not all(names):
            raise OodscoreError("--names: names must be non-empty and distinct")
        return list(names)
    out = [p.resolve().name or str(p) for p in paths]
    if len(set(out)) != len(out):                        # e.g. runs/a/report, runs/b/report
        out = [f"{p.resolve().parent.name}/{p.resolve().name}" for p in paths]
    if len(set(out)) != len(out):
        raise OodscoreError("two report folders have the same name; give --names a,b,...")
    return out


def _best(rows: list[dict], metrics: list[str]) -> dict[str, set[int]]:
    best: dict[str, set[int]] = {}
    for m in metrics:
        d = DIRECTIONS[m]
        vals = [(i, r["values"].get(m)) for i, r in enumerate(rows)]
        vals = [(i, v) for i, v in vals if v is not None]
        if d == 0 or not vals:
            best[m] = set()
            continue
        target = max(v for _, v in vals) if d > 0 else min(v for _, v in vals)
        best[m] = {i for i, v in vals if v == target}
    return best


def _marks(row: dict) -> list[Any]:
    """The ``source`` and ``requires_ood`` cells of a row (with ``published=``)."""
    if row.get("source") != "published":
        return ["report", None]
    flag = row.get("requires_ood")
    return ["published", None if flag is None else "yes" if flag else "no"]


def compare_reports(paths: Sequence[Path | str], out: Path | str, metrics: str | Sequence[str] | None = None,
                    names: Sequence[str] | None = None, published: Leaderboard | None = None) -> dict[str, Any]:
    """Write ``leaderboard.md/.csv/.tex`` (and ``roc.png``/``pr.png`` when the reports hold curves) into ``out``.

    Parameters
    ----------
    paths : report folders of ``oodscore evaluate`` (each with a ``metrics.json``).
    out : output folder (created).
    metrics : columns, e.g. ``"auroc,ap,fpr95"`` (aliases ``siou``, ``ppv``, ``mean_f1``; every ``meta_*`` key of
        ``evaluate --meta``); default: the usual ones that some row has.
    names : one run name per folder (default: the folder names).
    published : ``"smiyc-anomaly"``, ``"smiyc-obstacle"`` or ``"smiyc-laf"``: that leaderboard's methods as rows
        too, after the reports' (their row dicts also hold ``"source": "published"``, ``"requires_ood"``,
        ``"paper"``, ``"code"``); best is then over all rows.

    Returns
    -------
    ``{"rows": [{"run", "method", "protocol", "values"}], "metrics": [...], "best": {metric: [row index]},
    "files": [Path], "plotted": bool, "notes": [str]}``
    """
    folders = [Path(p) for p in paths]
    if not folders:
        raise OodscoreError("no report folders given; give one or more folders written by `oodscore evaluate`")
    wanted = parse_metrics(metrics)
    run_names = _run_names(folders, names)
    rows: list[dict] = []
    curves: dict[str, dict] = {}
    labels: dict[str, dict] = {}
    for run, p in zip(run_names, folders):
        for m, proto, vals in _read_report(p):
            rows.append({"run": run, "method": m, "protocol": proto, "values": vals})
        for m, c in _read_curves(p).items():
            curves[f"{run}/{m}"] = c
    if not rows:
        raise OodscoreError("the report folders hold no methods (empty metrics.json)")
    table = load_published(published) if published is not None else None
    if table is not None:
        rows += [{"run": table.name, "method": p.method, "protocol": "smiyc", "values": dict(p.values),
                  "source": "published", "requires_ood": p.requires_ood, "paper": p.paper, "code": p.code}
                 for p in table.rows]
    if wanted is None:
        wanted = [k for k in DEFAULT_METRICS if any(r["values"].get(k) is not None for r in rows)]
        if not wanted:
            raise OodscoreError("the reports hold none of the metrics " + ", ".join(DEFAULT_METRICS))
    protos = {r["protocol"] for r in rows}
    show_proto = len(protos) > 1 or protos != {"exact"}
    best = _best(rows, wanted)
    marked = ["source", "requires_ood"] if table is not None else []
    head = ["run", "method", *(["protocol"] if show_proto else []), *marked]
    keys: list[list[Any]] = [[r["run"], r["method"], *([r["protocol"]] if show_proto else []),
                              *(_marks(r) if marked else [])] for r in rows]
    values: list[list[Any]] = [[r["values"].get(m) for m in wanted] for r in rows]
    shown = Table([*head, *wanted], [k + v for k, v in zip(keys, values)], align="l" * len(head) + "r" * len(wanted),
                  bold=frozenset((i, len(head) + j) for j, m in enumerate(wanted) for i in best[m]))
    dirs = ", ".join(f"{m} {'↑' if DIRECTIONS[m] > 0 else '↓' if DIRECTIONS[m] < 0 else '(no best)'}" for m in wanted)
    if table is None:
        intro = f"Best per column in **bold** ({dirs}); `-`: not in that report."
    else:
        intro = (f"Best per column in **bold** over all rows, the published ones included ({dirs}); `-`: not in "
                 f"that report or not published.\n\nPublished rows (source `published`, run `{table.name}`): "
                 f"{table.citation()}; SMIYC protocol, values as published (fractions, as ours). `requires_ood`: "
                 "the leaderboard's flag, the method trains with OOD data (`-`: not given).")
    md = ("# Leaderboard\n\nReports: " + ", ".join(f"{n} = `{p}`" for n, p in zip(run_names, folders))
          + f"\n\n{intro}\n\n" + shown.markdown(".4f") + "\n")
    listed = Table([*head, *wanted, "best"], [k + v + [";".join(m for m in wanted if i in best[m])]
                                              for i, (k, v) in enumerate(zip(keys, values))])

    out = prepare_output(out, kind="dir", option="--out")
    files = [out / "leaderboard.md", out / "leaderboard.csv", out / "leaderboard.tex"]
    notes: list[str] = []
    with disk_errors(out, option="--out"):
        atomic_write_text(files[0], md)
        atomic_write_text(files[1], listed.csv(lineterminator="\n"))
        atomic_write_text(files[2], shown.latex(".4f") + "\n")
        if curves:
            for r in rows:
                if r.get("source") == "published":       # no curves: nothing to label
                    continue
                if r["protocol"] == "exact" or not show_proto:
                    labels.setdefault(f"{r['run']}/{r['method']}", {k: v for k, v in r["values"].items()
                                                                     if v is not None})
            plot_curves(out, curves, labels)
            files += [out / "roc.png", out / "pr.png"]
        else:
            notes.append("no curve data (curves.json / curves.npz) in the reports: roc.png / pr.png not written")
    if table is not None:
        notes.append(f"{len(table.rows)} published rows from {table.citation()}")
    return {"rows": rows, "metrics": wanted, "best": {m: sorted(v) for m, v in best.items()},
            "files": files, "plotted": bool(curves), "notes": notes}
