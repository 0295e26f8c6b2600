"""Meta classification (meta-ood's second half): a logistic regression on the MetaSeg segment metrics that
removes false-positive anomaly segments, and the segment counts before and after.

The definitions are meta-ood's code (``meta_classification.py``, ``evaluation.py`` ``oodd_metrics_segment``,
``src/helper.py``), reproduced number for number:

- **features**: every metric of :func:`oodscore.metaseg.segment_metrics` except ``iou``, ``iou0`` (and ``prc``), in
  sorted name order, each standardized over *all* segments of the set — population standard deviation + 1e-10, the
  left-out segment of a cross-validation fold included (``metrics_to_nparray``);
- **target**: ``iou0`` (1: the segment touches no anomaly pixel, a false positive);
- **classifier**: ``LogisticRegression(solver="liblinear")`` with its default C;
- **cross-validation**: leave-one-out (``"loo"``, meta-ood's), or K folds grouped by frame
  (``GroupKFold``: a frame's segments never train the model that judges them — the honest estimate, and K fits
  instead of one per segment). A training fold holding one class only (meta-ood's code stops there) predicts that
  class with probability 1; such folds are counted (``single_class_folds``);
- **kick** = ``argmax(predict_proba)`` (a tie keeps the segment); kicked segments are removed.

The counts, per frame and in total (:func:`count_segments`): ``fp_before`` (segments with ``iou0`` = 1),
``fn_before`` (ground-truth segments that no predicted segment touches), ``fn_after`` (those that no *kept*
segment touches, as meta-ood's ``remove()`` counts them: a frame whose ground truth covers every pixel counts none —
``np.unique(...)[1:]`` drops its one segment), and meta-ood's ``fp_after`` = ``sum(kick) - sum(iou0[kick])``:
the number of *true* positives removed, not the false positives left (with nothing kicked it is 0 while every false
positive remains). It keeps that name for comparability with meta-ood's tables; the honest counts have their own
keys: ``fp_left`` (false positives kept), ``fp_removed``, ``tp_removed`` (= meta-ood's ``fp_after``). ``fn_after``
can exceed ``fn_before``: removing a true positive uncovers a ground-truth segment.

A fitted :class:`MetaClassifier` is saved as a numpy archive of plain arrays and a JSON header (no pickle; like
:meth:`oodscore.scores.oodmc.OODMC.save`) and applied to another set with the standardization of the set it was
fitted on (its mean and scale are part of the model).
"""
from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from joblib import Parallel, delayed
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score
from sklearn.model_selection import GroupKFold

from cocodag.progress import progress_bar

from . import OodscoreError
from .archive import read_archive, write_archive
from .meta_summary import COUNT_KEYS  # the counts' names and order (read back by evaluate --meta)
from .metaseg import DEFAULT_THRESHOLD, GtOverlap

__all__ = [
    "COUNT_KEYS", "EXCLUDED_METRICS", "MODEL_FORMAT", "MODEL_VERSION", "MetaClassifier", "MetaResult", "check_cv",
    "check_threshold", "classify_segments", "count_segments", "cross_val_proba", "feature_matrix", "feature_names",
    "meta_scores", "standardize", "total_counts",
]

#: the metrics that are no features: the targets (``iou``, ``iou0``) and the unused ``prc`` (``metrics_to_dataset``)
EXCLUDED_METRICS = ("iou", "iou0", "prc")
#: meta-ood's standardization: ``(x - mean) / (std + 1e-10)``
STD_EPS = 1e-10
MODEL_FORMAT = "oodscore-meta-classifier"
MODEL_VERSION = 1


# ------------------------------------------------------------------------------------------------- settings
def check_threshold(t) -> float:
    """The entropy threshold as a float in (0, 1] (one line otherwise)."""
    if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)) or not 0 < float(t) <= 1:
        raise OodscoreError(f"--entropy-threshold {t!r}: expected a number in (0, 1] (normalized entropy; "
                            f"meta-ood uses {DEFAULT_THRESHOLD})")
    return float(t)


def check_cv(cv) -> str | int:
    """``"loo"`` or a fold count K >= 2 (``"5"`` as given on a command line is 5); one line otherwise."""
    if isinstance(cv, str) and cv.strip().lower() == "loo":
        return "loo"
    k: Any = cv
    if isinstance(cv, str):
        try:
            k = int(cv.strip())
        except ValueError:
            k = None
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise OodscoreError(f"--cv {cv!r}: expected loo (leave-one-out, meta-ood's) or a number of folds K >= 2 "
                            "(grouped by frame)")
    return int(k)


# ------------------------------------------------------------------------------------------------- features
def feature_names(metrics: Mapping[str, Any]) -> list[str]:
    """The feature names of a metrics dict: every name but :data:`EXCLUDED_METRICS`, sorted (meta-ood's order)."""
    return sorted(m for m in metrics if m not in EXCLUDED_METRICS)


def feature_matrix(metrics: Mapping[str, Any], names: Sequence[str]) -> np.ndarray:
    """``(n_segments, len(names))`` float64, the columns in ``names`` order (one line when a name is missing)."""
    missing = [m for m in names if m not in metrics]
    if missing:
        raise OodscoreError(f"segment metrics lack {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    cols = [np.asarray(metrics[m], dtype=np.float64).reshape(-1) for m in names]
    n = {c.size for c in cols}
    if len(n) > 1:
        raise OodscoreError(f"segment metrics have different lengths: {sorted(n)}")
    return np.stack(cols, axis=1) if cols else np.zeros((0, 0))


def _check_finite(metrics: Mapping[str, Any], names: Sequence[str], frame: np.ndarray | None = None,
                  frame_names: Sequence[str] | None = None) -> np.ndarray:
    """The feature matrix; one line when a segment has a non-finite feature (meta-ood stops there with a division
    by zero: a segment without boundary pixel, i.e. covering the whole frame, has no ``S_rel`` nor ``_bd`` mean)."""
    X = feature_matrix(metrics, names)
    bad = ~np.isfinite(X)
    if not bad.any():
        return X
    rows = np.flatnonzero(bad.any(axis=1))
    j = int(rows[0])
    where = f"segment {j + 1}"
    if frame is not None and len(frame) > j:
        f = int(frame[j])
        where = f"frame {frame_names[f]!r}" if frame_names is not None and f < len(frame_names) else f"frame #{f}"
    cols = [n for n, b in zip(names, bad[j]) if b]
    shown = ", ".join(cols[:3]) + (", ..." if len(cols) > 3 else "")
    raise OodscoreError(f"{where}: a segment has non-finite features ({shown}): it has no boundary pixel, it covers "
                        f"the whole frame (meta-ood stops there with a division by zero); {rows.size} such "
                        "segment(s) in the set")


def standardize(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """meta-ood's standardization of each column: ``(x - mean) / (std + 1e-10)`` over all rows (population std).

    Returns ``(Z, mean, scale)`` with ``scale = std + 1e-10``. Each column's mean and std are taken over a
    contiguous copy of it, as ``metrics_to_nparray`` does over its rows (same summation order, same numbers).
    """
    X = np.asarray(X, dtype=np.float64)
    mean = np.empty(X.shape[1])
    scale = np.empty(X.shape[1])
    for j in range(X.shape[1]):
        col = np.ascontiguousarray(X[:, j])
        mean[j], scale[j] = np.mean(col), np.std(col) + STD_EPS
    return _apply_standardization(X, mean, scale), mean, scale


def _apply_standardization(X: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    Z = np.empty_like(X, dtype=np.float64)
    for j in range(X.shape[1]):     # column by column, as meta-ood does (bit-identical)
        Z[:, j] = (X[:, j] - mean[j]) / scale[j]
    return Z


def _target(metrics: Mapping[str, Any]) -> np.ndarray:
    """``iou0`` as 0/1 int (one line when absent or not 0/1: segments of unlabelled frames)."""
    if "iou0" not in metrics:
        raise OodscoreError("segment metrics lack iou0: cross-validation needs ground truth")
    y = np.asarray(metrics["iou0"], dtype=np.float64).reshape(-1)
    if not np.isin(y, (0.0, 1.0)).all():
        raise OodscoreError(f"{int((~np.isin(y, (0.0, 1.0))).sum())} segment(s) have no ground truth (iou0 not "
                            "0/1: unlabelled frames); cross-validation needs labels, apply a fitted classifier with "
                            "--model instead")
    return y.astype(np.int64)


def _new_model() -> LogisticRegression:
    return LogisticRegression(solver="liblinear")   # meta-ood's, default C


# ------------------------------------------------------------------------------------------------- the model
class MetaClassifier:
    """meta-ood's meta classifier: standardized segment metrics -> P(false positive) by a logistic regression.

    Parameters
    ----------
    entropy_threshold : float, default=0.7
        The threshold of the segments it is fitted on (recorded; applying it at another threshold is allowed).

    Attributes (after :meth:`fit` or :meth:`load`)
    ----------------------------------------------
    feature_names_ : the metric names it reads, in column order
    mean_, scale_ : the standardization of the fitting set (``scale_`` = std + 1e-10)
    model_ : the fitted ``LogisticRegression`` (``coef_``, ``intercept_``, ``classes_`` = [0, 1])
    n_segments_ : segments it was fitted on
    """

    def __init__(self, entropy_threshold: float = DEFAULT_THRESHOLD):
        self.entropy_threshold = entropy_threshold

    @staticmethod
    def check_fittable(y: np.ndarray) -> None:
        """One line when ``y`` (iou0) cannot train a classifier: fewer than 2 segments or one class only."""
        y = np.asarray(y)
        if y.size == 0:
            raise OodscoreError("no segment to classify: nothing reaches the entropy threshold (lower "
                                "--entropy-threshold, or check the logits)")
        if np.unique(y).size < 2:
            what = "true positive (each touches the anomaly)" if y[0] == 0 else \
                "false positive (none touches an anomaly pixel)"
            raise OodscoreError(f"every one of the {y.size} segment(s) is a {what}: the meta classifier cannot be "
                                "fitted on one class")

    def fit(self, metrics: Mapping[str, Any]) -> MetaClassifier:
        """Fit on a metrics dict (every segment, ``iou0`` the target); the standardization is this set's."""
        names = feature_names(metrics)
        y = _target(metrics)
        self.check_fittable(y)
        Z, mean, scale = standardize(_check_finite(metrics, names))
        return self._fit_standardized(Z, y, names, mean, scale)

    def _fit_standardized(self, Z: np.ndarray, y: np.ndarray, names: Sequence[str], mean: np.ndarray,
                          scale: np.ndarray) -> MetaClassifier:
        """Fit on features already standardized with ``mean`` and ``scale`` (kept for :meth:`transform`)."""
        self.feature_names_, self.mean_, self.scale_ = list(names), mean, scale
        self.model_ = _new_model().fit(Z, y)
        self.n_segments_ = int(y.size)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise OodscoreError("the meta classifier is not fitted: call fit() or load a model file")

    def transform(self, metrics: Mapping[str, Any], frame: np.ndarray | None = None,
                  frame_names: Sequence[str] | None = None) -> np.ndarray:
        """The standardized feature matrix of ``metrics`` (this model's features, mean and scale); ``frame`` /
        ``frame_names`` name the frame of a segment with a non-finite feature in the error."""
        self._check_fitted()
        fitted = set(self.feature_names_)
        have = set(feature_names(metrics))
        if have != fitted:
            extra, missing = sorted(have - fitted), sorted(fitted - have)
            raise OodscoreError(
                f"the meta classifier was fitted on {len(fitted)} features, these segments have {len(have)}"
                + (f"; missing {', '.join(missing[:4])}" if missing else "")
                + (f"; unknown {', '.join(extra[:4])}" if extra else "")
                + " (fitted on logits of another class count?)")
        X = _check_finite(metrics, self.feature_names_, frame, frame_names)
        return _apply_standardization(X, self.mean_, self.scale_)

    def predict_proba(self, metrics: Mapping[str, Any], frame: np.ndarray | None = None,
                      frame_names: Sequence[str] | None = None) -> np.ndarray:
        """``(n, 2)``: P(true positive), P(false positive) of every segment."""
        Z = self.transform(metrics, frame, frame_names)
        return self.model_.predict_proba(Z) if len(Z) else np.zeros((0, 2))

    def predict(self, metrics: Mapping[str, Any]) -> np.ndarray:
        """The kick decision of every segment: ``argmax(predict_proba)`` (1 = removed; a tie keeps it)."""
        return np.argmax(self.predict_proba(metrics), axis=-1)

    # --------------------------------------------------------------------------------------------- file
    def save(self, path: Path | str) -> Path:
        """Write the fitted model to ``path`` atomically: a numpy archive of plain arrays + a JSON header."""
        self._check_fitted()
        meta = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "sklearn_version": sklearn.__version__,
                "classifier": "LogisticRegression(solver='liblinear')", "entropy_threshold": self.entropy_threshold,
                "feature_names": self.feature_names_, "n_segments": self.n_segments_}
        arrays = {"mean": self.mean_, "scale": self.scale_, "coef": self.model_.coef_,
                  "intercept": self.model_.intercept_, "classes": self.model_.classes_}
        return write_archive(path, meta, arrays)

    @classmethod
    def load(cls, path: Path | str) -> MetaClassifier:
        """Read a model written by :meth:`save` (``allow_pickle=False``: the file runs no code).

        Raises
        ------
        OodscoreError
            One line: file missing, not a meta-classifier file, another version, or damaged.
        """
        path = Path(path)
        if path.is_dir():
            raise OodscoreError(f"--model {path}: is a folder, expected a meta-classifier file "
                                "(from `oodscore meta-classify --save-model`)")
        if not path.is_file():
            raise OodscoreError(f"--model {path}: meta-classifier file not found")
        if not zipfile.is_zipfile(path):
            raise OodscoreError(f"--model {path}: not a meta-classifier file (expected the numpy archive written by "
                                "`oodscore meta-classify --save-model`)")
        meta, arrays = read_archive(path, where=f"--model {path}", what="meta-classifier", fmt=MODEL_FORMAT,
                                    version=MODEL_VERSION)
        try:
            return cls._from_file(meta, arrays)
        except (KeyError, TypeError, ValueError) as e:
            raise OodscoreError(f"--model {path}: damaged meta-classifier file ({type(e).__name__}: "
                                f"{(str(e).splitlines() or [''])[0]})") from None

    @classmethod
    def _from_file(cls, meta: dict, arrays: dict) -> MetaClassifier:
        names = [str(n) for n in meta["feature_names"]]
        d = len(names)
        mean, scale = (np.asarray(arrays[k], dtype=np.float64) for k in ("mean", "scale"))
        coef = np.asarray(arrays["coef"], dtype=np.float64)
        intercept = np.asarray(arrays["intercept"], dtype=np.float64)
        classes = np.asarray(arrays["classes"])
        if mean.shape != (d,) or scale.shape != (d,) or coef.shape != (1, d) or intercept.shape != (1,) \
                or classes.shape != (2,) or not np.all(np.isfinite(coef)) or not np.all(scale > 0):
            raise ValueError(f"arrays do not fit {d} features")
        self = cls(entropy_threshold=check_threshold(meta["entropy_threshold"]))
        model = _new_model()
        model.coef_, model.intercept_, model.classes_ = coef, intercept, classes
        model.n_features_in_ = d
        self.feature_names_, self.mean_, self.scale_, self.model_ = names, mean, scale, model
        self.n_segments_ = int(meta.get("n_segments", 0))
        return self

    def __repr__(self) -> str:
        fitted = f", features={len(self.feature_names_)}, n_segments={self.n_segments_}" \
            if hasattr(self, "model_") else ""
        return f"MetaClassifier(entropy_threshold={self.entropy_threshold}{fitted})"


# ------------------------------------------------------------------------------------------------- cross-validation
def _folds(cv: str | int, n: int, groups: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    if cv == "loo":
        every = np.arange(n)
        return [(np.delete(every, i), np.array([i])) for i in range(n)]
    k = int(cv)
    n_groups = np.unique(groups).size
    if k > n_groups:
        raise OodscoreError(f"--cv {k}: {k} folds grouped by frame need at least {k} frames with segments, "
                            f"there are {n_groups}; use fewer folds or --cv loo")
    return list(GroupKFold(n_splits=k).split(np.zeros((n, 1)), groups=groups))


def _fold_proba(Z: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, bool]:
    """``predict_proba`` of one fold's test rows; a one-class training fold predicts that class with p = 1."""
    yt = y[train]
    if np.unique(yt).size < 2:
        out = np.zeros((test.size, 2))
        out[:, int(yt[0])] = 1.0
        return out, True
    return _new_model().fit(Z[train], yt).predict_proba(Z[test]), False


def cross_val_proba(Z: np.ndarray, y: np.ndarray, cv: str | int = "loo", groups: np.ndarray | None = None, *,
                    workers: int = 1, progress: bool = False) -> tuple[np.ndarray, int]:
    """Out-of-fold ``predict_proba`` of every segment: ``(proba (n, 2), single_class_folds)``.

    ``Z``: standardized features (:func:`standardize`, over every segment as meta-ood does); ``y``: iou0;
    ``cv``: ``"loo"`` or K (``GroupKFold`` on ``groups``, the frame index of each segment). ``workers`` > 1 fits
    the folds in that many threads (liblinear releases the GIL; each fold is the same fit, so the same numbers).
    """
    cv = check_cv(cv)
    y = np.asarray(y)
    groups = np.zeros(len(y), dtype=np.int64) if groups is None else np.asarray(groups)
    folds = _folds(cv, len(y), groups)
    proba = np.zeros((len(y), 2))
    single = 0
    bar = progress_bar(total=len(folds), desc=f"meta classifier ({'leave-one-out' if cv == 'loo' else f'{cv}-fold'})",
                       unit="fold", disable=not progress)
    try:
        if workers > 1 and len(folds) > 1:
            chunks = [folds[i:i + 64] for i in range(0, len(folds), 64)]
            run = Parallel(n_jobs=workers, prefer="threads", return_as="generator")
            for chunk, res in zip(chunks, run(delayed(_chunk_proba)(Z, y, c) for c in chunks)):
                for (_, test), (p, one) in zip(chunk, res):
                    proba[test], single = p, single + one
                bar.update(len(chunk))
        else:
            for train, test in folds:
                proba[test], one = _fold_proba(Z, y, train, test)
                single += one
                bar.update(1)
    finally:
        bar.close()
    return proba, single


def _chunk_proba(Z: np.ndarray, y: np.ndarray, folds: list) -> list[tuple[np.ndarray, bool]]:
    return [_fold_proba(Z, y, train, test) for train, test in folds]


def meta_scores(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """``meta_auroc``, ``meta_auprc`` (false positives the positive class) and ``meta_accuracy`` of the kicks."""
    y = np.asarray(y)
    return {"meta_auroc": float(roc_auc_score(y, proba[:, 1])),
            "meta_auprc": float(average_precision_score(y, proba[:, 1])),
            "meta_accuracy": float(accuracy_score(y, np.argmax(proba, axis=-1)))}


# ------------------------------------------------------------------------------------------------- counts
def _fn(gt: GtOverlap, kept: np.ndarray | None) -> int:
    """Ground-truth segments touched by no (kept) predicted segment; ``kept``: bool per predicted segment, None =
    every one (before)."""
    g, p = gt.pairs[:, 0], gt.pairs[:, 1]
    if kept is not None:
        g = g[kept[p - 1]] if g.size else g
    return gt.n_gt - int(np.unique(g).size)


def count_segments(iou0: np.ndarray | None, kick: np.ndarray | None, frame: np.ndarray,
                   gt: Sequence[GtOverlap | None]) -> list[dict[str, int | None]]:
    """The counts of every frame (see the module doc), in :data:`COUNT_KEYS` order.

    ``iou0`` (per segment, None = no ground truth), ``kick`` (per segment, 1 = removed; None = no classifier: the
    counts after are None), ``frame`` (per segment, its frame's index) and ``gt`` (per frame, None = unlabelled). A
    count that needs ground truth is None in a frame without it.
    """
    frame = np.asarray(frame)
    kicks = None if kick is None else np.asarray(kick).astype(bool)
    rows: list[dict[str, int | None]] = []
    for f, g in enumerate(gt):
        sel = frame == f
        row: dict[str, int | None] = dict.fromkeys(COUNT_KEYS)
        row["segments"] = int(sel.sum())
        k = None if kicks is None else kicks[sel]
        if k is not None:
            row["kicked"] = int(k.sum())
        if iou0 is None or g is None:
            rows.append(row)
            continue
        fp = np.asarray(iou0)[sel] == 1
        row["fp_before"], row["gt_segments"], row["fn_before"] = int(fp.sum()), g.n_gt, _fn(g, None)
        if k is not None:
            row["fp_after"] = int(k.sum()) - int(fp[k].sum())      # meta-ood's arithmetic (= tp_removed)
            row["fp_left"] = int((fp & ~k).sum())
            row["fp_removed"] = int((fp & k).sum())
            row["tp_removed"] = int((k & ~fp).sum())
            row["fn_after"] = 0 if g.covers_frame else _fn(g, ~k)
        rows.append(row)
    return rows


def total_counts(rows: Sequence[Mapping[str, int | None]]) -> dict[str, int | None]:
    """The sum of every count over the frames (None when a frame lacks it)."""
    out: dict[str, int | None] = {}
    for key in COUNT_KEYS:
        vals = [r[key] for r in rows]
        out[key] = None if any(v is None for v in vals) else int(sum(v for v in vals if v is not None))
    return out


# ------------------------------------------------------------------------------------------------- one call
@dataclass
class MetaResult:
    """What :func:`classify_segments` computed.

    Attributes
    ----------
    proba : (n, 2) P(true positive), P(false positive) per segment (out of fold with cross-validation)
    kick : (n,) int, 1 = removed
    scores : ``meta_auroc``, ``meta_auprc``, ``meta_accuracy`` (None without ground truth)
    frames : per frame, the counts of :func:`count_segments`
    totals : their sums
    model : the classifier fitted on every segment (cross-validation) or the one applied (``model``)
    settings : cv, single_class_folds, ...
    """

    proba: np.ndarray
    kick: np.ndarray
    scores: dict[str, float | None]
    frames: list[dict[str, int | None]]
    totals: dict[str, int | None]
    model: MetaClassifier | None
    settings: dict[str, Any] = field(default_factory=dict)


def classify_segments(metrics: Mapping[str, Any], frame: np.ndarray, gt: Sequence[GtOverlap | None], *,
                      cv: str | int = "loo", model: MetaClassifier | None = None,
                      entropy_threshold: float = DEFAULT_THRESHOLD, workers: int = 1, progress: bool = False,
                      frame_names: Sequence[str] | None = None) -> MetaResult:
    """Meta classification of a set of segments: cross-validated (``cv``) or by a fitted ``model``.

    Parameters
    ----------
    metrics : MetaSeg name -> (n,) values over every segment of the set, frame after frame
    frame : (n,) the frame index of each segment
    gt : per frame, its :class:`GtOverlap` (None: the frame has no ground truth)
    cv : ``"loo"`` or K (folds grouped by frame); ignored with ``model``
    model : a fitted :class:`MetaClassifier` to apply instead (ground truth then only for the counts)
    frame_names : the frames' names, for error messages

    Raises
    ------
    OodscoreError
        Cross-validation without ground truth, with no segment, or with one class only (``check_fittable``); a
        segment with non-finite features (one covering the whole frame).
    """
    frame = np.asarray(frame, dtype=np.int64)
    labelled = all(g is not None for g in gt)
    iou0 = _target(metrics) if labelled and "iou0" in metrics else None
    settings: dict[str, Any] = {"entropy_threshold": entropy_threshold}
    if model is not None:
        proba = model.predict_proba(metrics, frame, frame_names)
        settings.update(cv=None, model_entropy_threshold=model.entropy_threshold)
    else:
        cv = check_cv(cv)
        if not labelled:
            raise OodscoreError("cross-validation needs ground truth, and some frames have none (every label pixel "
                                "void); apply a fitted classifier with --model FILE instead")
        y = _target(metrics)
        MetaClassifier.check_fittable(y)
        names = feature_names(metrics)
        Z, mean, scale = standardize(_check_finite(metrics, names, frame, frame_names))
        proba, single = cross_val_proba(Z, y, cv, frame, workers=workers, progress=progress)
        model = MetaClassifier(entropy_threshold)._fit_standardized(Z, y, names, mean, scale)
        settings.update(cv=cv, single_class_folds=single)
    kick = np.argmax(proba, axis=-1) if len(proba) else np.zeros(0, np.int64)
    scores: dict[str, float | None] = dict.fromkeys(("meta_auroc", "meta_auprc", "meta_accuracy"))
    if iou0 is not None and np.unique(iou0).size == 2:
        scores.update(meta_scores(iou0, proba))
    # per-frame counts wherever a frame has ground truth (its segments' iou0 are 0/1 there)
    rows = count_segments(np.asarray(metrics["iou0"]) if "iou0" in metrics else None, kick, frame, gt)
    return MetaResult(proba, kick, scores, rows, total_counts(rows), model, settings)
