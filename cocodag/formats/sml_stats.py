"""The SML-statistics contract (docs/formats.md §5): the one accumulator and the one JSON reader/writer.

:class:`SMLStats` holds, per **predicted** class, the count, mean and unbiased variance of the max logit (Jung et
al., ICCV 2021; docs/methods.md §4.3). It is a :class:`~cocodag.streaming.StreamingState`, fitted as a stream
(``update`` — sklearn's ``partial_fit`` — once per image or batch; Chan/Welford merge in float64), saved as JSON, and
converts to/from the official repository's ``np.save``'d dicts. Both ``maxent-train export --sml-stats`` (during
export, from the stored logits) and ``oodscore fit-sml`` (from a ``logits.h5``) feed this one class; ``oodscore``'s
SML scorer reads it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write, atomic_write_json
from ..errors import CocodagError
from ..streaming import StreamingState
from .logits import as_logits_tensor, check_size, upsample

SML_STATS_FORMAT = "oodscore-sml-stats"
SML_STATS_VERSION = 1

_NOT_FITTED = "SMLStats is not fitted: call partial_fit() or SMLStats.load(path)"


class SMLStats(StreamingState):
    """Per predicted class statistics of the max logit (SML's mu_c, sigma_c).

    Parameters
    ----------
    num_classes : int, optional
        Number of classes C; default: taken from the first ``partial_fit`` call.
    source : str, optional
        Free text recorded in the saved file (e.g. the logits file the stats come from).

    Attributes
    ----------
    count_ : (C,) int64
        Pixels predicted as each class (0 when unknown, e.g. imported official stats; see ``counts_known_``).
    mean_ : (C,) float64
        Mean max logit per predicted class (NaN for classes never predicted).
    var_ : (C,) float64
        Unbiased variance (NaN for classes predicted fewer than twice).
    std_ : (C,) float64
        ``sqrt(var_)``.
    n_images_, n_pixels_ : int
        Images (first axis entries) and pixels folded in so far.
    counts_known_ : bool
        False for stats imported from the official format, which stores no counts.

    Notes
    -----
    Every pixel counts, void included, grouped by argmax (docs/methods.md §4.3). The official code used only the
    first 50 augmented batches of the training set; here the stats are over whatever logits the user passes, and
    ``n_images_`` / ``n_pixels_`` / ``source`` record it.

    Parallel fitting: each process ``update``s an :meth:`empty_copy` with one image or batch and hands it back; one
    process ``merge``s them in order. A state that has seen one batch keeps that batch's own (count, mean, M2), so
    that merging such states in order is bit-identical to updating with the batches in that order.

    Examples
    --------
    >>> import numpy as np
    >>> st = SMLStats().partial_fit(np.random.default_rng(0).normal(size=(2, 3, 8, 8)))
    >>> int(st.count_.sum())
    128
    """

    def __init__(self, num_classes: int | None = None, source: str | None = None):
        self.num_classes = num_classes
        self.source = source

    # ------------------------------------------------------------------ fitting
    def _init_state(self, num_classes: int) -> None:
        self.count_ = np.zeros(num_classes, dtype=np.int64)
        self.mean_ = np.full(num_classes, np.nan)
        self.var_ = np.full(num_classes, np.nan)
        self.n_images_ = 0
        self.n_pixels_ = 0
        self.counts_known_ = True
        self._batch: tuple | None = None   # the one batch summary folded in, while there is exactly one

    def _is_fitted(self) -> bool:
        return hasattr(self, "mean_")

    def _check_fitted(self) -> None:
        if not self._is_fitted():
            raise CocodagError(_NOT_FITTED)

    def reset(self) -> SMLStats:
        """Forget everything learned."""
        for name in ("count_", "mean_", "var_", "n_images_", "n_pixels_", "counts_known_", "_batch"):
            self.__dict__.pop(name, None)
        return self

    def empty_copy(self) -> SMLStats:
        """An unfitted accumulator with these settings (``num_classes``, ``source``)."""
        return type(self)(num_classes=self.num_classes, source=self.source)

    def update(self, logits, size=None) -> None:
        """Fold one image or batch of logits into the running statistics.

        Parameters
        ----------
        logits : (N, C, H, W) or (C, H, W) float array or tensor (numpy or torch, CPU or CUDA)
        size : (H, W), optional
            Upsample bilinearly to this size first (scores are computed at the label size too).
        """
        self._add(*self._summary(logits, size=size))

    def partial_fit(self, logits, size=None) -> SMLStats:
        """:meth:`update` under scikit-learn's name; returns self."""
        self.update(logits, size=size)
        return self

    def _summary(self, logits, size=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
        """What :meth:`update` folds in for ``logits``: per predicted class ``(count (C,) int64, mean (C,) float64,
        M2 (C,) float64)`` of the max logit, plus the batch's images and pixels."""
        t, batched = as_logits_tensor(logits)
        num_classes = t.shape[1]
        if self.num_classes is not None and int(self.num_classes) != num_classes:
            raise CocodagError(f"logits: expected {self.num_classes} classes (num_classes), got {num_classes}")
        with torch.no_grad():
            lmax, pred = upsample(t, check_size(size)).max(dim=1)   # first index on ties, as argmax
            lmax = lmax.reshape(-1).double()
            pred = pred.reshape(-1)
            # per-class count / mean / M2 of this batch, two-pass in float64 (exact enough for any batch size)
            cnt_b = torch.bincount(pred, minlength=num_classes)
            sum_b = torch.bincount(pred, weights=lmax, minlength=num_classes)
            mean_b = sum_b / cnt_b.clamp(min=1)
            m2_b = torch.bincount(pred, weights=(lmax - mean_b[pred]) ** 2, minlength=num_classes)
        return (cnt_b.cpu().numpy().astype(np.int64), mean_b.cpu().numpy(), m2_b.cpu().numpy(),
                int(t.shape[0]) if batched else 1, int(pred.numel()))

    def _add(self, count, mean, m2, n_images: int, n_pixels: int) -> SMLStats:
        """Fold in one batch summary (Chan merge in float64)."""
        num_classes = len(count)
        first = not self._is_fitted()
        if first:
            self._init_state(num_classes)
        elif self.mean_.shape[0] != num_classes:
            raise CocodagError(f"logits: expected {self.mean_.shape[0]} classes as in the previous partial_fit "
                                f"calls, got {num_classes}")
        if not self.counts_known_:
            raise CocodagError("SMLStats: these stats were imported from the official format, which has no pixel "
                                "counts, so more data cannot be merged into them; fit from scratch instead")
        self._merge(np.asarray(count, np.int64), np.asarray(mean, np.float64), np.asarray(m2, np.float64))
        self.n_images_ += int(n_images)
        self.n_pixels_ += int(n_pixels)
        self._batch = (count, mean, m2, n_images, n_pixels) if first else None
        return self

    def merge(self, other: SMLStats) -> SMLStats:
        """Fold another accumulator's statistics in after this one's; returns self.

        A state that has seen one batch is replayed: bit-identical to updating with that batch. Otherwise Chan's
        parallel merge (float64) from its count, mean and variance: the stats of the union of both data sets, up
        to float64 rounding. An unfitted ``other`` adds nothing.
        """
        if not isinstance(other, SMLStats):
            raise CocodagError(f"SMLStats.merge: expected an SMLStats, got {type(other).__name__}")
        if not other._is_fitted():
            return self
        if not other.counts_known_:
            raise CocodagError("SMLStats.merge: the other stats have no pixel counts (official import)")
        if other._batch is not None:
            return self._add(*other._batch)
        n = other.count_
        mean = np.where(n > 0, other.mean_, 0.0)
        m2 = np.where(n > 1, other.var_ * np.maximum(n - 1.0, 0.0), 0.0)
        return self._add(n, mean, m2, other.n_images_, other.n_pixels_)

    def compute(self) -> dict:
        """The statistics so far, as :meth:`to_dict` gives them (the JSON content)."""
        return self.to_dict()

    def _merge(self, cnt_b: np.ndarray, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        """Chan et al. parallel merge of (count, mean, M2) per class."""
        n_a = self.count_.astype(np.float64)
        n_b = cnt_b.astype(np.float64)
        n = n_a + n_b
        mean_a = np.where(self.count_ > 0, self.mean_, 0.0)
        m2_a = np.where(self.count_ > 1, self.var_ * (n_a - 1.0), 0.0)
        safe_n = np.maximum(n, 1.0)
        delta = mean_b - mean_a
        mean = mean_a + delta * n_b / safe_n
        m2 = m2_a + m2_b + delta * delta * n_a * n_b / safe_n
        self.count_ = self.count_ + cnt_b
        self.mean_ = np.where(self.count_ > 0, mean, np.nan)
        self.var_ = np.where(self.count_ > 1, m2 / np.maximum(n - 1.0, 1.0), np.nan)

    def fit(self, logits, size=None) -> SMLStats:
        """Reset, then ``partial_fit`` on ``logits``: one array/tensor, or an iterable of them (one per image or
        batch, e.g. read in chunks from a ``logits.h5``)."""
        self.reset()
        if isinstance(logits, (np.ndarray, torch.Tensor)):
            return self.partial_fit(logits, size=size)
        for item in logits:
            self.partial_fit(item, size=size)
        if not self._is_fitted():
            raise CocodagError("logits: got an empty iterable, nothing to fit")
        return self

    @property
    def std_(self) -> np.ndarray:
        self._check_fitted()
        return np.sqrt(self.var_)

    @property
    def valid_(self) -> np.ndarray:
        """(C,) bool: classes with a usable mean and a finite, positive standard deviation."""
        self._check_fitted()
        return np.isfinite(self.mean_) & np.isfinite(self.var_) & (self.var_ > 0)

    def global_stats(self) -> tuple[float, float]:
        """Mean and standard deviation of the max logit over all fitted pixels (the fallback for unusable
        classes). Without counts (official import), the classes with stats are weighted equally."""
        self._check_fitted()
        ok = np.isfinite(self.mean_)
        if not ok.any():
            raise CocodagError("SMLStats: no class has statistics (nothing was fitted?)")
        w = self.count_[ok].astype(np.float64) if self.counts_known_ else np.ones(int(ok.sum()))
        mean_c = self.mean_[ok]
        var_c = np.where(np.isfinite(self.var_[ok]), self.var_[ok], 0.0)
        n = w.sum()
        mean = float((w * mean_c).sum() / n)
        if self.counts_known_:
            m2 = ((w - 1.0) * var_c).sum() + (w * (mean_c - mean) ** 2).sum()
            var = m2 / (n - 1.0) if n > 1 else float("nan")
        else:  # equal-weight mixture of the class distributions
            var = float((var_c + (mean_c - mean) ** 2).mean())
        return mean, float(math.sqrt(var)) if var > 0 else float("nan")

    def tables(self) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Per-class (mean, std) used for scoring, with unusable classes replaced by the global stats.

        Returns
        -------
        mean, std : (C,) float64
        fallback : list of int
            Classes that fell back to the global statistics.
        """
        self._check_fitted()
        valid = self.valid_
        mean = self.mean_.copy()
        std = np.sqrt(self.var_)
        fallback = [int(c) for c in np.flatnonzero(~valid)]
        if fallback:
            g_mean, g_std = self.global_stats()
            if not (np.isfinite(g_std) and g_std > 0):
                raise CocodagError("SMLStats: the global max-logit standard deviation is not positive; "
                                    "fit on more (and more varied) logits")
            mean[~valid] = g_mean
            std[~valid] = g_std
        return mean, std, fallback

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        """The JSON-able content: ``classes`` = ``{class: {mean, std, var, count}}`` plus metadata."""
        self._check_fitted()
        classes = {}
        for c in range(self.mean_.shape[0]):
            def num(v):
                return float(v) if np.isfinite(v) else None
            classes[str(c)] = {"mean": num(self.mean_[c]), "std": num(math.sqrt(self.var_[c]))
                               if np.isfinite(self.var_[c]) else None,
                               "var": num(self.var_[c]),
                               "count": int(self.count_[c]) if self.counts_known_ else None}
        return {"format": SML_STATS_FORMAT, "version": SML_STATS_VERSION, "num_classes": int(self.mean_.shape[0]),
                "n_images": int(self.n_images_), "n_pixels": int(self.n_pixels_),
                "source": self.source, "counts_known": bool(self.counts_known_), "classes": classes}

    def save(self, path) -> Path:
        """Write the stats as JSON (atomically: tmp + rename) and return the path.

        Format: ``{"format": "oodscore-sml-stats", "version": 1, "num_classes": C, "n_images": ..., "n_pixels": ...,
        "source": ..., "counts_known": bool, "classes": {"0": {"mean": m, "std": s, "var": v, "count": n}, ...}}``;
        ``null`` for a class never predicted (mean) or predicted fewer than twice (std, var).
        """
        path = Path(path)
        atomic_write_json(path, self.to_dict(), sort_keys=False)
        return path

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "stats") -> SMLStats:
        """Inverse of :meth:`to_dict`. Also accepts the bare ``{class: {mean, std, count}}`` mapping."""
        if not isinstance(d, dict):
            raise CocodagError(f"{where}: expected a JSON object, got {type(d).__name__}")
        if "format" in d and d["format"] != SML_STATS_FORMAT:
            raise CocodagError(f"{where}: format is {d['format']!r}, expected {SML_STATS_FORMAT!r}")
        if "version" in d and d["version"] != SML_STATS_VERSION:
            raise CocodagError(f"{where}: version {d['version']!r} is not supported (expected {SML_STATS_VERSION})")
        classes = d.get("classes", None)
        if classes is None:  # bare mapping {class: {...}}
            classes = {k: v for k, v in d.items() if str(k).lstrip("-").isdigit()}
        if not isinstance(classes, dict) or not classes:
            raise CocodagError(f"{where}: expected per-class entries {{class: {{mean, std, count}}}}, found none")
        try:
            ids = {int(k): v for k, v in classes.items()}
        except ValueError as err:
            raise CocodagError(f"{where}: class keys must be integers, got {sorted(classes)[:5]}") from err
        if min(ids) < 0:
            raise CocodagError(f"{where}: class ids must be >= 0, got {min(ids)}")
        num_classes = int(d.get("num_classes", max(ids) + 1))
        if max(ids) >= num_classes:
            raise CocodagError(f"{where}: class {max(ids)} out of range for num_classes={num_classes}")
        st = cls(num_classes=num_classes, source=d.get("source"))
        st._init_state(num_classes)
        counts_known = bool(d.get("counts_known", True))
        for c, entry in ids.items():
            if not isinstance(entry, dict) or "mean" not in entry:
                raise CocodagError(f"{where}: class {c}: expected {{mean, std, count}}, got {entry!r}")
            try:
                mean = np.nan if entry.get("mean") is None else float(entry["mean"])
                if entry.get("var") is not None:
                    var = float(entry["var"])
                elif entry.get("std") is not None:
                    var = float(entry["std"]) ** 2
                else:
                    var = np.nan
                count = entry.get("count")
            except (TypeError, ValueError) as err:
                raise CocodagError(f"{where}: class {c}: non-numeric mean/std/var: {entry!r}") from err
            if count is None:
                counts_known = False
            elif int(count) < 0:
                raise CocodagError(f"{where}: class {c}: count must be >= 0, got {count}")
            st.mean_[c] = mean
            st.var_[c] = var
            st.count_[c] = 0 if count is None else int(count)
        st.counts_known_ = counts_known
        if not counts_known:
            st.count_[:] = 0
        st.n_images_ = int(d.get("n_images") or 0)
        st.n_pixels_ = int(d.get("n_pixels") or int(st.count_.sum()))
        return st

    @classmethod
    def load(cls, path) -> SMLStats:
        """Read stats written by :meth:`save` (or a bare ``{class: {mean, std, count}}`` JSON)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise CocodagError(f"{path}: SML stats file not found") from e
        except IsADirectoryError:
            raise CocodagError(f"{path}: is a folder, expected an SML stats JSON file (e.g. {path / 'sml.json'})") \
                from None
        except PermissionError:
            raise CocodagError(f"{path}: SML stats file is not readable (permission denied)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CocodagError(f"{path}: not a valid JSON file ({e})") from e
        return cls.from_dict(d, where=str(path))

    # ------------------------------------------------------------------ official format
    @classmethod
    def import_official(cls, mean_npy, var_npy, num_classes: int | None = None) -> SMLStats:
        """Read the official SML repository's statistics: ``np.save`` of dicts ``{trainId: mean}`` and
        ``{trainId: var}``.

        .. warning:: These files are pickled Python objects and are loaded with ``allow_pickle=True``, which can
           execute arbitrary code: only pass files you trust (this is only ever called on paths the user named).

        The variances are taken as stored. The official format has no pixel counts, so the result has
        ``counts_known_ = False`` (it can be used and saved, not extended with ``partial_fit``).
        """
        dicts = []
        for p, what in ((Path(mean_npy), "mean"), (Path(var_npy), "var")):
            try:
                obj = np.load(p, allow_pickle=True)
            except FileNotFoundError as e:
                raise CocodagError(f"{p}: official SML {what} file not found") from e
            except (ValueError, OSError) as e:
                raise CocodagError(f"{p}: not a .npy file ({e})") from e
            if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
                obj = obj.item()
            if not isinstance(obj, dict) or not obj:
                raise CocodagError(f"{p}: expected an np.save'd dict {{trainId: {what}}}, got "
                                    f"{type(obj).__name__}")
            try:
                dicts.append({int(k): float(np.asarray(v).reshape(())) for k, v in obj.items()})
            except (TypeError, ValueError) as e:
                raise CocodagError(f"{p}: expected {{int trainId: float {what}}}, got entries like "
                                    f"{next(iter(obj.items()))!r}") from e
        means, vars_ = dicts
        if set(means) != set(vars_):
            raise CocodagError(f"{var_npy}: class ids {sorted(vars_)} differ from those of {mean_npy} "
                                f"{sorted(means)}")
        if min(means) < 0:
            raise CocodagError(f"{mean_npy}: class ids must be >= 0, got {min(means)}")
        n = int(num_classes) if num_classes is not None else max(means) + 1
        if max(means) >= n:
            raise CocodagError(f"{mean_npy}: class {max(means)} out of range for num_classes={n}")
        st = cls(num_classes=n, source=f"official:{Path(mean_npy)},{Path(var_npy)}")
        st._init_state(n)
        st.counts_known_ = False
        for c in means:
            st.mean_[c] = means[c]
            st.var_[c] = vars_[c]
        return st

    def export_official(self, directory, prefix: str = "cityscapes_") -> tuple[Path, Path]:
        """Write ``<directory>/<prefix>mean.npy`` and ``<prefix>var.npy`` (``np.save`` of ``{trainId: float}``
        dicts, the official repository's format); classes without usable stats are left out."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        valid = self.valid_
        mean_d = {int(c): float(self.mean_[c]) for c in np.flatnonzero(valid)}
        var_d = {int(c): float(self.var_[c]) for c in np.flatnonzero(valid)}
        paths = []
        for name, obj in (("mean", mean_d), ("var", var_d)):
            p = directory / f"{prefix}{name}.npy"
            with atomic_write(p, keep_suffix=True) as tmp:
                np.save(tmp, np.array(obj, dtype=object), allow_pickle=True)
            paths.append(p)
        return paths[0], paths[1]

    def __repr__(self) -> str:
        if not self._is_fitted():
            return "SMLStats(not fitted)"
        return (f"SMLStats(num_classes={self.mean_.shape[0]}, n_images={self.n_images_}, "
                f"n_pixels={self.n_pixels_}, usable_classes={int(self.valid_.sum())})")
