"""OODMC — a classifier on MC-dropout moments (seed paper + its code; DESIGN §4.4).

Per pixel the feature is ``[(1-w)*H, w*m1 (C), w*m2 (C), ..., w*mK (C)]`` with H the entropy of the mean softmax,
m1 the C-vector of MC means, mk (k >= 2) the central moments of order k, w = ``moment_weight``. Features are
standardized (``StandardScaler``) and fed to an sklearn classifier (``LinearSVC`` by default). The score is the
decision function, positive = OOD.

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

Differences from the seed's code, on purpose: pixels are sampled once per frame for all moments (the seed drew a
new permutation per MC pass, mixing pixels), labels follow the 0 = ID / 1 = OOD / 255 = void convention (the seed
took 255 as OOD on LostAndFound, where it is background), and moments of logits are the default (the paper; the
code used probabilities — both are supported and recorded).
"""
from __future__ import annotations

import importlib
import numbers

import numpy as np

from cocodag.errors import CocodagError
from cocodag.formats.logits import check_upsample_rule, upsample_frame
from oodscore import OodscoreError
from oodscore.scores.base import Interval, Options, Scorer, check_size

#: short classifier names -> (import path, default params)
CLASSIFIERS = {
    "linear-svc": ("sklearn.svm:LinearSVC", {}),
    "logistic": ("sklearn.linear_model:LogisticRegression", {"max_iter": 1000}),
    "rbf-svc": ("sklearn.svm:SVC", {"kernel": "rbf"}),
    "sgd": ("sklearn.linear_model:SGDClassifier", {}),
}
_RANDOM_STATE_CLASSIFIERS = ("LinearSVC", "LogisticRegression", "SVC", "SGDClassifier")


def _to_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise OodscoreError(f"{name}: expected a numeric array, got dtype {a.dtype}")
    return a


def check_mc(mc: dict, where: str = "mc") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate an MC dict ``{"mean": (C,H,W), "central": (K-1,C,H,W), "entropy": (H,W)}`` -> the three arrays."""
    if not isinstance(mc, dict):
        raise OodscoreError(f"{where}: expected a dict with keys mean, central, entropy; got {type(mc).__name__}")
    missing = [k for k in ("mean", "central", "entropy") if k not in mc]
    if missing:
        raise OodscoreError(f"{where}: missing keys {missing} (expected mean, central, entropy)")
    mean = _to_numpy(mc["mean"], f"{where}['mean']")
    central = _to_numpy(mc["central"], f"{where}['central']")
    entropy = _to_numpy(mc["entropy"], f"{where}['entropy']")
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


def _resolve_classifier(name: str):
    """Short name (``linear-svc``, ``logistic``, ``rbf-svc``, ``sgd``) or import path ``pkg.mod:Class`` /
    ``pkg.mod.Class`` -> (class, default params)."""
    if name in CLASSIFIERS:
        path, defaults = CLASSIFIERS[name]
    else:
        path, defaults = name, {}
    if ":" in path:
        mod_name, _, attr = path.partition(":")
    else:
        mod_name, _, attr = path.rpartition(".")
    if not mod_name or not attr:
        raise OodscoreError(f"classifier: expected one of {sorted(CLASSIFIERS)} or an import path like "
                            f"'sklearn.svm:LinearSVC', got {name!r}")
    try:
        cls = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise OodscoreError(f"classifier: cannot import {path!r} ({e}); short names: {sorted(CLASSIFIERS)}") from e
    if not (hasattr(cls, "fit") and (hasattr(cls, "decision_function") or hasattr(cls, "predict_proba"))):
        raise OodscoreError(f"classifier: {path!r} is not a classifier with fit and decision_function/predict_proba")
    return cls, dict(defaults)


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
    logits. Saved and loaded with :func:`oodscore.io.save_oodmc` / :func:`oodscore.io.load_oodmc` (joblib, a pickle:
    only load files you trust); :meth:`save` / :meth:`load` are shortcuts to them.

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
    classifier : str, default="linear-svc"
        ``linear-svc``, ``logistic``, ``rbf-svc``, ``sgd`` or an import path ``pkg.mod:Class``.
    moments_of : {"logits", "probs"}, default="logits"
        What the MC moments were taken of (the paper: logits; the seed's code: probabilities). Checked against the
        ``moments_of`` entry of the MC dicts when they carry one, and stored with the model.
    random_state : int, default=0
        Seeds the pixel sampling (and the classifier when it takes ``random_state``).
    **clf_params
        Passed to the classifier (override its defaults).

    Attributes
    ----------
    scaler_ : sklearn.preprocessing.StandardScaler
    clf_ : the fitted classifier
    num_classes_, moment_order_ : int
        C and K the model was fitted on (checked when scoring).
    n_samples_ : dict
        ``{"id": n, "ood": n}`` training pixels used; ``n_available_`` the same for all labelled pixels seen.
    """

    requires = "mc"
    requires_fit = True
    _parameter_constraints = {
        "moment_weight": [Interval(numbers.Real, 0, 1)],
        "svm_points_num": [Interval(numbers.Integral, 2, None)],   # >= 2: one ID and one OOD pixel
        "svm_eval_subsize": [Interval(numbers.Integral, 1, None)],
        "classifier": [str],
        "moments_of": [Options("logits", "probs")],
        "random_state": [None, numbers.Integral],
    }

    def __init__(self, moment_weight: float = 0.5, svm_points_num: int = 500000, svm_eval_subsize: int = 100,
                 classifier: str = "linear-svc", moments_of: str = "logits", random_state: int = 0, **clf_params):
        self.moment_weight = moment_weight
        self.svm_points_num = svm_points_num
        self.svm_eval_subsize = svm_eval_subsize
        self.classifier = classifier
        self.moments_of = moments_of
        self.random_state = random_state
        self.clf_params = clf_params

    def get_params(self) -> dict:
        """The named parameters plus the classifier's own (``**clf_params``)."""
        return {**super().get_params(), **self.clf_params}

    # ------------------------------------------------------------------ checks
    def _check_moments_of(self, mc: dict, where: str) -> None:
        got = mc.get("moments_of") if isinstance(mc, dict) else None
        if isinstance(got, bytes):
            got = got.decode()
        if got is not None and got != self.moments_of:
            raise OodscoreError(f"{where}: MC moments are of {got!r} but this OODMC uses moments_of="
                                f"{self.moments_of!r}")

    # ------------------------------------------------------------------ fit
    def fit(self, frames) -> OODMC:
        """Fit on ``frames``: an iterable of ``(mc_dict, label)`` with ``label`` ``(H, W)`` 0 = ID, 1 = OOD, other
        values void (ignored).

        Pixels are sampled uniformly without replacement over all frames, up to ``svm_points_num // 2`` per class,
        in one streaming pass (each labelled pixel draws a seeded random key; the smallest keys are kept), so memory
        is bounded by the sample and the result depends only on the data, its order and ``random_state``.
        """
        from sklearn.preprocessing import StandardScaler

        self._validate_params()
        cls, defaults = _resolve_classifier(self.classifier)
        parts, available, shape_ck = self._sample(frames)
        x = np.concatenate(parts)
        y = np.concatenate([np.zeros(parts[0].shape[0], np.int64), np.ones(parts[1].shape[0], np.int64)])
        params = {**defaults, **self.clf_params}
        if cls.__name__ in _RANDOM_STATE_CLASSIFIERS and "random_state" not in params:
            params["random_state"] = self.random_state
        try:
            clf = cls(**params)
        except TypeError as e:
            raise OodscoreError(f"classifier: bad parameters for {self.classifier!r}: {e}") from e
        self.scaler_ = StandardScaler().fit(x)
        clf.fit(self.scaler_.transform(x), y)
        self.clf_ = clf
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
        lab = _to_numpy(label, f"{where} label")
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
        if not hasattr(self, "clf_"):
            raise OodscoreError("OODMC is not fitted: call fit(frames) or OODMC.load(path)")

    def _decision(self, x: np.ndarray) -> np.ndarray:
        x = self.scaler_.transform(x)
        if hasattr(self.clf_, "decision_function"):
            d = self.clf_.decision_function(x)
        else:  # classifiers without a margin: probability of OOD, centred so that positive = OOD
            d = self.clf_.predict_proba(x)[:, list(self.clf_.classes_).index(1)] - 0.5
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
    def save(self, path):
        """Save params + fitted state (atomically); shortcut to :func:`oodscore.io.save_oodmc`. Returns the path."""
        from oodscore.io import save_oodmc

        return save_oodmc(self, path)

    @classmethod
    def load(cls, path) -> OODMC:
        """Load a model written by :meth:`save`; shortcut to :func:`oodscore.io.load_oodmc`.

        .. warning:: joblib files are pickles; loading one can execute arbitrary code. Only load files you trust.
        """
        from oodscore.io import load_oodmc

        return load_oodmc(path)
