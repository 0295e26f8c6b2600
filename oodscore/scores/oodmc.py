"""OODMC — a classifier on MC-dropout moments (seed paper + its code; docs/methods.md §5.6).

Per pixel the feature is ``[(1-w)*H, w*m1 (C), w*m2 (C), ..., w*mK (C)]`` with H the entropy of the mean softmax,
m1 the C-vector of MC means, mk (k >= 2) the central moments of order k, w = ``moment_weight``. A
``sklearn.pipeline.Pipeline`` standardizes them (``StandardScaler``) and feeds them to a classifier (``estimator``,
``LinearSVC`` by default; :data:`CLASSIFIERS` names the ones of ``oodscore fit-oodmc --classifier``). The score is
the decision function, positive = OOD.

Native resolution (``logits.h5`` version 2, the default of ``maxent-train export``): the MC block is stored at the
network's output resolution (h, w), e.g. 1/4 of the label's (H, W), with the rule that upsamples the logits
(``LogitsFile.mc(i)`` adds ``upsample`` and ``size``). The features are then computed there: the moments are those
of the T *native* samples (before the network's final bilinear upsampling) and H is the entropy of their mean
softmax. Bilinear upsampling is linear, so only the mean commutes with it: the native central moments (k >= 2) and
the entropy are not those of upsampled samples (an upsampled pixel's k-th moment is an interpolation of its
neighbours' moments, not the moment of the interpolated samples). :meth:`OODMC.score` computes the decision map at
(h, w) and upsamples it (bilinear on the score, the same rule) to the label size; :meth:`OODMC.fit` samples the
labelled pixels at the label size and takes their features bilinearly interpolated (same rule) from the native maps,
which, for the affine scaler + linear classifiers (``linear-svc``, ``logistic``, ``sgd``), is exactly what the
upsampled score sees. Files at label resolution (version 1, ``--logits-resolution label``) are used as before.

The model file (:meth:`OODMC.save` / :meth:`OODMC.load`, docs/formats.md §7) is a numpy ``.npz`` archive read with
``allow_pickle=False``: a JSON ``meta`` entry (format, version, parameters, the fitted pipeline's state) and the
arrays it points to. Loading it instantiates only the scikit-learn classes of :data:`_STORABLE` and fills them with
numbers and arrays: it runs no code from the file. Files of version 1 (a joblib pickle) load only with
``allow_pickle=True``.

Differences from the seed's code, on purpose: pixels are sampled once per frame for all moments (the seed drew a
new permutation per MC pass, mixing pixels), labels follow the 0 = ID / 1 = OOD / 255 = void convention (the seed
took 255 as OOD on LostAndFound, where it is background), and moments of logits are the default (the paper; the
code used probabilities — both are supported and recorded).
"""
from __future__ import annotations

import numbers
import zipfile
from pathlib import Path
from typing import Any, Literal, get_args

import joblib
import numpy as np
import sklearn
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from cocodag.arrays import to_numpy
from cocodag.errors import CocodagError
from cocodag.formats.logits import check_upsample_rule, upsample_frame
from oodscore import OodscoreError
from oodscore.archive import read_archive, write_archive
from oodscore.scores.base import Interval, Options, Scorer, check_size

#: the classifier names of ``oodscore fit-oodmc --classifier``
ClassifierName = Literal["linear-svc", "logistic", "rbf-svc", "sgd"]
CLASSIFIER_NAMES: tuple[str, ...] = get_args(ClassifierName)
#: name -> the classifier it stands for, unfitted (:func:`make_classifier` hands out clones); their
#: ``random_state`` is left None so that OODMC's own seeds them
CLASSIFIERS: dict[str, Any] = {
    "linear-svc": LinearSVC(),          # the default: kernel SVMs do not scale to 5e5 training pixels
    "logistic": LogisticRegression(max_iter=1000),
    "rbf-svc": SVC(kernel="rbf"),
    "sgd": SGDClassifier(),
}
#: the classifier of ``estimator=None``
DEFAULT_CLASSIFIER: ClassifierName = "linear-svc"


def make_classifier(name: str) -> Any:
    """A fresh, unfitted classifier for ``name``, one of :data:`CLASSIFIER_NAMES` (e.g. for ``OODMC(estimator=...)``).

    Raises
    ------
    OodscoreError
        An unknown name (the message lists the valid ones).
    """
    if name not in CLASSIFIERS:
        raise OodscoreError(f"classifier: expected one of {', '.join(CLASSIFIER_NAMES)}, got {name!r}")
    return clone(CLASSIFIERS[name])


class _ClassifierObject:
    """An sklearn classifier object: ``get_params``, ``fit`` and ``decision_function`` or ``predict_proba``."""

    def is_satisfied_by(self, v) -> bool:
        return (not isinstance(v, type) and hasattr(v, "get_params") and hasattr(v, "fit")
                and (hasattr(v, "decision_function") or hasattr(v, "predict_proba")))

    def __str__(self) -> str:
        return "an sklearn classifier object (with fit and decision_function or predict_proba)"


def _numeric(x, name: str) -> np.ndarray:
    """``x`` as a numeric numpy array (:func:`cocodag.arrays.to_numpy`); errors are ours, so callers add context."""
    try:
        return to_numpy(x, name, kinds="fiu")
    except CocodagError as e:
        raise OodscoreError(str(e)) from None


def check_mc(mc: dict, where: str = "mc") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate an MC dict ``{"mean": (C,H,W), "central": (K-1,C,H,W), "entropy": (H,W)}`` -> the three arrays."""
    if not isinstance(mc, dict):
        raise OodscoreError(f"{where}: expected a dict with keys mean, central, entropy; got {type(mc).__name__}")
    missing = [k for k in ("mean", "central", "entropy") if k not in mc]
    if missing:
        raise OodscoreError(f"{where}: missing keys {missing} (expected mean, central, entropy)")
    mean = _numeric(mc["mean"], f"{where}['mean']")
    central = _numeric(mc["central"], f"{where}['central']")
    entropy = _numeric(mc["entropy"], f"{where}['entropy']")
    for key, a in (("mean", mean), ("central", central), ("entropy", entropy)):
        if not np.isfinite(a).all():
            raise OodscoreError(f"{where}['{key}']: {int((~np.isfinite(a)).sum())} non-finite values (a float16 "
                                f"overflow of high-order moments? export with --mc-dtype float32)")
    if mean.ndim != 3:
        raise OodscoreError(f"{where}['mean']: expected (C, H, W), got {mean.shape}")
    c, h, w = mean.shape
    if central.ndim == 3 and central.shape[0] == 0:
        central = central.reshape(0, c, h, w)
    if central.ndim != 4 or central.shape[1:] != (c, h, w):
        raise OodscoreError(f"{where}['central']: expected (K-1, {c}, {h}, {w}), got {central.shape}")
    if entropy.shape != (h, w):
        raise OodscoreError(f"{where}['entropy']: expected ({h}, {w}), got {entropy.shape}")
    return mean, central, entropy


def mc_features(mc: dict, moment_weight: float = 0.5, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel OODMC features ``[(1-w)*H, w*m1, w*m2, ..., w*mK]``.

    Parameters
    ----------
    mc : dict
        ``{"mean": (C,H,W), "central": (K-1,C,H,W), "entropy": (H,W)}`` (numpy or torch).
    moment_weight : float
        w.
    mask : (H, W) bool, or (P,) int flat pixel indices, optional
        Pixels to compute; default all.

    Returns
    -------
    (P, 1 + K*C) float32, P = pixels in row-major order (or in ``mask`` order).
    """
    mean, central, entropy = check_mc(mc)
    idx = slice(None) if mask is None else (np.flatnonzero(mask) if np.asarray(mask).dtype == bool else mask)
    return _features(mean, central, entropy, moment_weight, idx)


def _features(mean: np.ndarray, central: np.ndarray, entropy: np.ndarray, moment_weight: float, idx) -> np.ndarray:
    """:func:`mc_features` of checked arrays at flat pixel indices ``idx`` (or a slice)."""
    c = mean.shape[0]
    k = central.shape[0] + 1
    w = np.float32(moment_weight)
    h = entropy.reshape(-1)[idx]
    n = h.shape[0]
    feats = np.empty((n, 1 + k * c), dtype=np.float32)
    feats[:, 0] = (np.float32(1.0) - w) * h.astype(np.float32)
    feats[:, 1:1 + c] = w * mean.reshape(c, -1)[:, idx].T.astype(np.float32)
    for j in range(k - 1):
        feats[:, 1 + (j + 1) * c:1 + (j + 2) * c] = w * central[j].reshape(c, -1)[:, idx].T.astype(np.float32)
    return feats


def _bilinear_taps(dst: np.ndarray, out_n: int, in_n: int, align_corners: bool):
    """Source indices (i0, i1) and the weight of i1 for output pixels ``dst`` of a bilinear resize in_n -> out_n, as
    ``torch.nn.functional.interpolate`` computes them."""
    if align_corners:
        src = dst * ((in_n - 1) / (out_n - 1) if out_n > 1 else 0.0)
    else:
        src = np.maximum((dst + 0.5) * (in_n / out_n) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_n - 1)
    return i0, np.minimum(i0 + 1, in_n - 1), src - i0


def mc_features_at(mc: dict, moment_weight: float, idx: np.ndarray, size: tuple[int, int], rule: dict) -> np.ndarray:
    """OODMC features at label pixels ``idx`` (flat indices in the ``size`` = (H, W) grid) of moment maps stored at a
    smaller (h, w): each feature bilinearly interpolated from the four native neighbours with ``rule`` (bilinear,
    ``align_corners``), i.e. the features of the upsampled moment maps (features are linear in the moments).
    Returns ``(P, 1 + K*C)`` float32."""
    mean, central, entropy = check_mc(mc)
    h, w = mean.shape[1:]
    idx = np.asarray(idx, dtype=np.int64)
    y0, y1, ly = _bilinear_taps(idx // size[1], size[0], h, rule["align_corners"])
    x0, x1, lx = _bilinear_taps(idx % size[1], size[1], w, rule["align_corners"])
    out = np.zeros((idx.size, 1 + mean.shape[0] * (central.shape[0] + 1)), np.float64)
    for yy, wy in ((y0, 1.0 - ly), (y1, ly)):
        for xx, wx in ((x0, 1.0 - lx), (x1, lx)):
            out += (wy * wx)[:, None] * _features(mean, central, entropy, moment_weight, yy * w + xx)
    return out.astype(np.float32)


def _native_rule(mc: dict, size: tuple[int, int], where: str, modes=("bilinear", "bicubic")) -> dict:
    """The upsampling rule an MC dict at native resolution carries (``LogitsFile.mc`` adds it), checked."""
    rule = mc.get("upsample") if isinstance(mc, dict) else None
    if rule is None:
        raise OodscoreError(f"{where}: MC moments are {tuple(np.shape(mc['entropy']))} but the label is {size}, "
                            "and the MC dict names no upsampling rule ('upsample', as LogitsFile.mc gives it)")
    try:
        rule = check_upsample_rule(dict(rule))
    except CocodagError as e:
        raise OodscoreError(f"{where}['upsample']: {e}") from None
    if rule["mode"] not in modes:
        raise OodscoreError(f"{where}['upsample']: mode {rule['mode']!r}: OODMC fits native moments under a "
                            "bilinear rule only")
    return rule


def _keep_smallest(kept, idx: np.ndarray, keys: np.ndarray, quota: int, features):
    """Merge pixels ``idx`` with random ``keys`` into ``kept`` = (keys, features), keeping the ``quota`` smallest keys.

    ``features(idx)`` computes the feature rows of the pixels that may enter (only those: once ``kept`` is full,
    pixels with a key above its largest cannot).
    """
    old_keys, old_feats = kept
    if old_keys.size >= quota and idx.size:
        sel = keys < old_keys.max()
        idx, keys = idx[sel], keys[sel]
    if idx.size == 0:
        return kept
    feats = features(idx)
    if old_feats.shape[0] == 0:
        all_keys, all_feats = keys, feats
    else:
        all_keys = np.concatenate([old_keys, keys])
        all_feats = np.concatenate([old_feats, feats])
    if all_keys.size > quota:
        top = np.argpartition(all_keys, quota - 1)[:quota]
        all_keys, all_feats = all_keys[top], all_feats[top]
    return all_keys, all_feats


class OODMC(Scorer):
    """Classifier on per-pixel MC-dropout moment features; score = decision function, positive = OOD.

    A :class:`~oodscore.scores.base.Scorer` whose input is one frame's MC-dropout dict (``requires = "mc"``), not
    logits. Saved with :meth:`save` and loaded with :meth:`load` (a numpy archive, no pickle; see the module
    docstring).

    Parameters
    ----------
    moment_weight : float, default=0.5
        w in the feature ``[(1-w)*H, w*m1, ..., w*mK]``.
    svm_points_num : int, default=500000
        Training pixels, sampled uniformly without replacement over all frames, half ID and half OOD (a class with
        fewer pixels contributes all it has).
    svm_eval_subsize : int, default=100
        At scoring time a frame's pixels are split into this many chunks (the seed's evaluation split), bounding the
        feature memory to ~1/svm_eval_subsize of a frame.
    estimator : sklearn classifier, default=None
        The classifier after the ``StandardScaler``, cloned by ``fit``; None: ``LinearSVC()``. :data:`CLASSIFIERS`
        holds the named ones (:func:`make_classifier`). Only the classes of :data:`CLASSIFIERS` can be saved.
    moments_of : {"logits", "probs"}, default="logits"
        What the MC moments were taken of (the paper: logits; the seed's code: probabilities). Checked against the
        ``moments_of`` entry of the MC dicts when they carry one, and stored with the model.
    random_state : int, default=0
        Seeds the pixel sampling, and the classifier when its own ``random_state`` is None.

    Attributes
    ----------
    pipeline_ : sklearn.pipeline.Pipeline
        The fitted ``[("scaler", StandardScaler), ("classifier", estimator)]``.
    num_classes_, moment_order_ : int
        C and K the model was fitted on (checked when scoring).
    n_samples_ : dict
        ``{"id": n, "ood": n}`` training pixels used; ``n_available_`` the same for all labelled pixels seen.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> model = OODMC(estimator=LogisticRegression(), svm_points_num=1000)   # then model.fit(frames).score(mc)
    """

    requires = "mc"
    requires_fit = True
    # the fitted state (set by fit or load)
    pipeline_: Pipeline
    moment_order_: int
    num_classes_: int
    n_samples_: dict[str, int]
    n_available_: dict[str, int]
    _parameter_constraints = {
        "moment_weight": [Interval(numbers.Real, 0, 1)],
        "svm_points_num": [Interval(numbers.Integral, 2, None)],   # >= 2: one ID and one OOD pixel
        "svm_eval_subsize": [Interval(numbers.Integral, 1, None)],
        "estimator": [None, _ClassifierObject()],
        "moments_of": [Options("logits", "probs")],
        "random_state": [None, numbers.Integral],
    }

    def __init__(self, moment_weight: float = 0.5, svm_points_num: int = 500000, svm_eval_subsize: int = 100,
                 estimator=None, moments_of: str = "logits", random_state: int | None = 0):
        self.moment_weight = moment_weight
        self.svm_points_num = svm_points_num
        self.svm_eval_subsize = svm_eval_subsize
        self.estimator = estimator
        self.moments_of = moments_of
        self.random_state = random_state

    # ------------------------------------------------------------------ checks
    def _check_moments_of(self, mc: dict, where: str) -> None:
        got = mc.get("moments_of") if isinstance(mc, dict) else None
        if isinstance(got, bytes):
            got = got.decode()
        if got is not None and got != self.moments_of:
            raise OodscoreError(f"{where}: MC moments are of {got!r} but this OODMC uses moments_of="
                                f"{self.moments_of!r}")

    # ------------------------------------------------------------------ fit
    def _make_pipeline(self) -> Pipeline:
        """The unfitted scaler + classifier: a clone of ``estimator`` (default: LinearSVC), seeded by
        ``random_state`` when its own is None."""
        clf = clone(CLASSIFIERS[DEFAULT_CLASSIFIER] if self.estimator is None else self.estimator)
        if clf.get_params(deep=False).get("random_state", False) is None:
            clf.set_params(random_state=self.random_state)
        return Pipeline([("scaler", StandardScaler()), ("classifier", clf)])

    def fit(self, frames) -> OODMC:
        """Fit on ``frames``: an iterable of ``(mc_dict, label)`` with ``label`` ``(H, W)`` 0 = ID, 1 = OOD, other
        values void (ignored).

        Pixels are sampled uniformly without replacement over all frames, up to ``svm_points_num // 2`` per class,
        in one streaming pass (each labelled pixel draws a seeded random key; the smallest keys are kept), so memory
        is bounded by the sample and the result depends only on the data, its order and ``random_state``.
        """
        self._validate_params()
        pipeline = self._make_pipeline()
        parts, available, shape_ck = self._sample(frames)
        x = np.concatenate(parts)
        y = np.concatenate([np.zeros(parts[0].shape[0], np.int64), np.ones(parts[1].shape[0], np.int64)])
        self.pipeline_ = pipeline.fit(x, y)
        self.moment_order_, self.num_classes_ = shape_ck
        self.n_samples_ = {"id": int(parts[0].shape[0]), "ood": int(parts[1].shape[0])}
        self.n_available_ = {"id": int(available[0]), "ood": int(available[1])}
        return self

    def _frame(self, i: int, item, shape_ck):
        """Check one ``(mc_dict, label)`` item; returns ``(features(flat label indices), flat label, (K, C))``; moments
        smaller than the label (native resolution) give features interpolated at the label's pixels."""
        try:
            mc, label = item
        except (TypeError, ValueError) as e:
            raise OodscoreError(f"frames[{i}]: expected (mc_dict, label), got {type(item).__name__}") from e
        where = f"frames[{i}]"
        self._check_moments_of(mc, where)
        mean, central, _ = check_mc(mc, where)
        ck = (central.shape[0] + 1, mean.shape[0])
        if shape_ck is not None and ck != shape_ck:
            raise OodscoreError(f"{where}: moment order/classes (K, C) = {ck} differ from earlier frames {shape_ck}")
        lab = _numeric(label, f"{where} label")
        if lab.ndim != 2:
            raise OodscoreError(f"{where} label: expected shape (H, W), got {lab.shape}")
        if lab.shape == mean.shape[1:]:
            return (lambda sel: mc_features(mc, self.moment_weight, sel)), lab.reshape(-1), ck
        rule = _native_rule(mc, lab.shape, where, modes=("bilinear",))
        return (lambda sel: mc_features_at(mc, self.moment_weight, sel, lab.shape, rule)), lab.reshape(-1), ck

    def _sample(self, frames):
        """The streaming balanced sample: ``([ID features, OOD features], pixels available per class, (K, C))``,
        each class's rows ordered by key (so the sample does not depend on how frames were chunked in memory)."""
        rng = np.random.default_rng(self.random_state)
        quota = int(self.svm_points_num) // 2
        keep = {0: (np.empty(0), np.empty((0, 0), np.float32)), 1: (np.empty(0), np.empty((0, 0), np.float32))}
        available = {0: 0, 1: 0}
        shape_ck = None
        n_frames = 0
        for i, item in enumerate(frames):
            features, lab, shape_ck = self._frame(i, item, shape_ck)
            n_frames += 1
            for cls_id in (0, 1):
                idx = np.flatnonzero(lab == cls_id)
                available[cls_id] += idx.size
                keep[cls_id] = _keep_smallest(keep[cls_id], idx, rng.random(idx.size), quota,
                                              features)
        if n_frames == 0:
            raise OodscoreError("frames: got no frames to fit on")
        for cls_id, what in ((0, "in-distribution (label 0)"), (1, "OOD (label 1)")):
            if keep[cls_id][0].size == 0:
                raise OodscoreError(f"frames: no {what} pixels found; OODMC needs both classes")
        parts = [feats[np.argsort(keys, kind="stable")] for keys, feats in (keep[0], keep[1])]
        return parts, available, shape_ck

    # ------------------------------------------------------------------ score
    def _check_fitted(self) -> None:
        if not hasattr(self, "pipeline_"):
            raise OodscoreError("OODMC is not fitted: call fit(frames) or OODMC.load(path)")

    def _decision(self, x: np.ndarray) -> np.ndarray:
        pipeline = self.pipeline_
        if hasattr(pipeline, "decision_function"):
            d = pipeline.decision_function(x)
        else:  # classifiers without a margin: probability of OOD, centred so that positive = OOD
            d = pipeline.predict_proba(x)[:, list(pipeline.classes_).index(1)] - 0.5
        return np.asarray(d, dtype=np.float32).reshape(-1)

    def score(self, mc: dict, size=None) -> np.ndarray:
        """Decision-function map ``(H, W)`` float32 of one frame's MC dict, positive = OOD.

        Parameters
        ----------
        mc : dict
            ``{"mean": (C,H,W), "central": (K-1,C,H,W), "entropy": (H,W)}`` (numpy or torch), optionally with
            ``moments_of``; as ``LogitsFile.mc(i)`` returns it.
        size : (H, W), optional
            The label size. Moments at another (native) size need the rule ``mc["upsample"]``: the decision map is
            computed at their size and upsampled (bilinear on the score) to ``size``.
        """
        self._validate_params()
        self._check_fitted()
        self._check_moments_of(mc, "mc")
        mean, central, _ = check_mc(mc)
        k, c = central.shape[0] + 1, mean.shape[0]
        if (k, c) != (self.moment_order_, self.num_classes_):
            raise OodscoreError(f"mc: moment order K={k} and classes C={c} differ from the fitted model's "
                                f"K={self.moment_order_}, C={self.num_classes_}")
        size = check_size(size)
        rule = None
        if size is not None and size != mean.shape[1:]:
            rule = _native_rule(mc, size, "mc")
        h, w = mean.shape[1:]
        n = h * w
        out = np.empty(n, dtype=np.float32)
        for chunk in np.array_split(np.arange(n), min(int(self.svm_eval_subsize), n)):
            if chunk.size:
                out[chunk] = self._decision(mc_features(mc, self.moment_weight, chunk))
        return out.reshape(h, w) if rule is None else upsample_frame(out.reshape(h, w), size, rule)

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Write the parameters and the fitted state to ``path`` (atomically; the format of docs/formats.md §7).

        Raises
        ------
        OodscoreError
            The model is not fitted, or its classifier is not one of the classes the file can hold.
        """
        self._check_fitted()
        arrays: dict[str, Any] = {}
        meta = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "sklearn_version": sklearn.__version__,
                "params": {k: _encode(v, arrays) for k, v in self.get_params(deep=False).items()},
                "moment_order": int(self.moment_order_), "num_classes": int(self.num_classes_),
                "n_samples": self.n_samples_, "n_available": self.n_available_,
                "pipeline": _encode(self.pipeline_, arrays)}
        return write_archive(path, meta, arrays)

    @classmethod
    def load(cls, path, *, allow_pickle: bool = False) -> OODMC:
        """Read a model written by :meth:`save`.

        Parameters
        ----------
        allow_pickle : bool, default=False
            Also read version-1 files (joblib pickles, written before the numpy archive). Unpickling can execute
            arbitrary code: only for files you trust (re-save them to convert them).

        Raises
        ------
        OodscoreError
            File missing, not an OODMC model file, an unsupported version, a damaged file, or a pickle without
            ``allow_pickle``.
        """
        path = Path(path)
        if not path.is_file():
            raise OodscoreError(f"{path}: OODMC model file not found")
        if not zipfile.is_zipfile(path):
            if allow_pickle:
                return cls._load_pickle(path)
            raise OodscoreError(f"{path}: not an OODMC model file of version {MODEL_VERSION} (a numpy .npz archive); "
                                "a version-1 file is a joblib pickle, which can run code when loaded: re-fit it with "
                                "`oodscore fit-oodmc`, or if you trust it, load it with "
                                "OODMC.load(path, allow_pickle=True) and save it again")
        meta, arrays = read_archive(path, where=str(path), what="OODMC model", fmt=MODEL_FORMAT,
                                    version=MODEL_VERSION)
        try:
            model = cls(**{k: _decode(v, arrays) for k, v in meta["params"].items()})
            pipeline = _decode(meta["pipeline"], arrays)
            shape_ck = int(meta["moment_order"]), int(meta["num_classes"])
            counts = dict(meta["n_samples"]), dict(meta["n_available"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise OodscoreError(f"{path}: damaged OODMC model file ({type(e).__name__}: {e})") from None
        if not isinstance(pipeline, Pipeline):
            raise OodscoreError(f"{path}: damaged OODMC model file (no fitted pipeline)")
        model.pipeline_ = pipeline
        model.moment_order_, model.num_classes_ = shape_ck
        model.n_samples_, model.n_available_ = counts
        try:
            model._validate_params()
        except OodscoreError as e:
            raise OodscoreError(f"{path}: {e}") from None
        return model

    @classmethod
    def _load_pickle(cls, path: Path) -> OODMC:
        """A version-1 file: the joblib pickle ``{"format", "version": 1, "params", "moments_of", "moment_order",
        "num_classes", "n_samples", "n_available", "scaler", "clf"}``, ``params`` with a ``classifier`` name or
        import path and the classifier's own parameters; the fitted scaler and classifier become the pipeline."""
        try:
            obj = joblib.load(path)
        except Exception as e:  # any unpickling failure is a bad file for the user
            raise OodscoreError(f"{path}: not a readable joblib file ({type(e).__name__}: {e})") from e
        if not isinstance(obj, dict) or obj.get("format") != MODEL_FORMAT:
            raise OodscoreError(f"{path}: not an OODMC model (expected format {MODEL_FORMAT!r})")
        if obj.get("version") != 1:
            raise OodscoreError(f"{path}: OODMC model version {obj.get('version')!r} is not supported in a pickle "
                                f"(expected 1)")
        names = set(cls.param_names()) - {"estimator"}
        model = cls(estimator=clone(obj["clf"]), **{k: v for k, v in dict(obj["params"]).items() if k in names})
        model.pipeline_ = Pipeline([("scaler", obj["scaler"]), ("classifier", obj["clf"])])
        model.moment_order_, model.num_classes_ = int(obj["moment_order"]), int(obj["num_classes"])
        model.n_samples_, model.n_available_ = dict(obj.get("n_samples") or {}), dict(obj.get("n_available") or {})
        return model


# ---------------------------------------------------------------------------------------------- the model file
MODEL_FORMAT = "oodscore-oodmc"
#: 2: the numpy archive; 1: a joblib pickle (read with ``allow_pickle=True`` only)
MODEL_VERSION = 2
#: the classes a model file may hold, by their public import path (nothing else is ever instantiated)
_STORABLE: dict[str, type[Any]] = {
    "sklearn.pipeline:Pipeline": Pipeline, "sklearn.preprocessing:StandardScaler": StandardScaler,
    "sklearn.svm:LinearSVC": LinearSVC, "sklearn.svm:SVC": SVC,
    "sklearn.linear_model:LogisticRegression": LogisticRegression, "sklearn.linear_model:SGDClassifier": SGDClassifier,
}
_STORABLE_NAMES = {c: name for name, c in _STORABLE.items()}
#: state that fit rebuilds and scoring never reads, not stored (SGDClassifier's loss: a compiled object)
_NOT_STORED = frozenset({"_loss_function_"})


def _encode(v, arrays: dict[str, np.ndarray]):
    """``v`` as JSON; numpy arrays and scalars go to ``arrays`` (referred to by key), tuples and dicts get a tag,
    estimators of :data:`_STORABLE` are their class name plus their pickle state (``__getstate__``)."""
    if isinstance(v, (np.ndarray, np.generic)):
        a = np.asarray(v)
        if a.dtype.kind not in "biufcU":
            raise OodscoreError(f"OODMC.save: cannot store an array of dtype {a.dtype}")
        key = f"a{len(arrays)}"
        arrays[key] = a
        return {"__array__" if isinstance(v, np.ndarray) else "__scalar__": key}
    if v is None or type(v) in (bool, int, float, str):
        return v
    if type(v) is list:
        return [_encode(x, arrays) for x in v]
    if type(v) is tuple:
        return {"__tuple__": [_encode(x, arrays) for x in v]}
    if type(v) is dict:
        return {"__dict__": [[_encode(k, arrays), _encode(x, arrays)] for k, x in v.items()]}
    if type(v) in _STORABLE_NAMES:
        state = {k: x for k, x in v.__getstate__().items() if k not in _NOT_STORED}
        return {"__estimator__": _STORABLE_NAMES[type(v)], "state": _encode(state, arrays)}
    raise OodscoreError(f"OODMC.save: cannot store a {type(v).__name__} in an OODMC model file (it holds the "
                        f"classifiers {', '.join(CLASSIFIER_NAMES)}: {', '.join(n.split(':')[1] for n in _STORABLE)}); "
                        "pickle such a model yourself (joblib.dump)")


def _decode(v, arrays: dict[str, np.ndarray]):
    """The inverse of :func:`_encode` (a tag it does not know, or a class outside :data:`_STORABLE`, is a
    ``ValueError``)."""
    if isinstance(v, list):
        return [_decode(x, arrays) for x in v]
    if not isinstance(v, dict):
        return v
    (tag, value), *rest = v.items()
    if tag == "__array__":
        return arrays[value]
    if tag == "__scalar__":
        return arrays[value][()]
    if tag == "__tuple__":
        return tuple(_decode(x, arrays) for x in value)
    if tag == "__dict__":
        return {_decode(k, arrays): _decode(x, arrays) for k, x in value}
    if tag == "__estimator__" and value in _STORABLE and [k for k, _ in rest] == ["state"]:
        cls: Any = _STORABLE[value]
        obj = cls.__new__(cls)                           # as unpickling creates it
        obj.__setstate__(_decode(rest[0][1], arrays))    # sklearn warns when the file's version differs
        return obj
    raise ValueError(f"unknown entry {str(v)[:80]}")
