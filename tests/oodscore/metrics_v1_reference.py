"""Frozen copy of oodscore/metrics.py before the one-shot fast path (issue 10, item 5): the "old result" oracle.

Tests load it by path (it is not collected) and require the current code to give exactly its numbers.
"""
from __future__ import annotations

import warnings

import numpy as np

from oodscore import OodscoreError

__all__ = [
    "PixelMetrics", "pixel_metrics", "auroc", "average_precision", "fpr_at_tpr", "METRIC_KEYS",
]

METRIC_KEYS = ("auroc", "ap", "fpr95", "fpr95_interp", "threshold", "f1", "precision", "recall", "fpr",
               "n_pos", "n_neg")

_SIGN32 = np.uint32(0x80000000)
_SIGN64 = np.uint64(0x8000000000000000)


# ----------------------------------------------------------------------------- keys (order-preserving bit patterns)
def _f32_to_key(v: np.ndarray) -> np.ndarray:
    """float32 -> uint32 with the same order (negative floats: all bits flipped; positive: sign bit set)."""
    b = (v + np.float32(0.0)).view(np.uint32)  # +0.0 turns -0.0 into 0.0 so they share one key
    return b ^ ((b.view(np.int32) >> 31).view(np.uint32) | _SIGN32)


def _key_to_f32(k: np.ndarray) -> np.ndarray:
    pos = k >= _SIGN32
    return np.where(pos, k ^ _SIGN32, ~k).astype(np.uint32).view(np.float32)


def _f64_to_key(v: np.ndarray) -> np.ndarray:
    b = (v + 0.0).view(np.uint64)
    return b ^ ((b.view(np.int64) >> 63).view(np.uint64) | _SIGN64)


def _key_to_f64(k: np.ndarray) -> np.ndarray:
    pos = k >= _SIGN64
    return np.where(pos, k ^ _SIGN64, ~k).astype(np.uint64).view(np.float64)


def _to_key_inplace(v: np.ndarray) -> np.ndarray:
    """Like ``_f32_to_key`` / ``_f64_to_key`` but overwriting ``v`` (saves one allocation per batch)."""
    v += v.dtype.type(0.0)  # -0.0 -> 0.0
    u, i, sign = (np.uint32, np.int32, _SIGN32) if v.dtype == np.float32 else (np.uint64, np.int64, _SIGN64)
    b = v.view(u)
    m = (b.view(i) >> (8 * v.itemsize - 1)).view(u)
    m |= sign
    b ^= m
    return b


_U32_MAX = (1 << 32) - 1  # counts stay uint32 while a class has at most this many pixels (no count can exceed it)
_SEARCH_BLOCK = 1 << 15   # needles per searchsorted call: their haystack range then stays in cache
_MOVE_BLOCK = 1 << 21     # entries per block of the in-place insertion (bounds its temporaries to ~10 MB)


def _count_dtype(total: int):
    return np.uint32 if total <= _U32_MAX else np.uint64


def _unique_counts_sorted(sorted_keys: np.ndarray, counts: np.ndarray | None = None):
    """Distinct values of a sorted array with their (summed) counts (uint32 when they cannot overflow it)."""
    n = sorted_keys.size
    total = n if counts is None else int(counts.sum())
    if n == 0:
        return sorted_keys, np.zeros(0, _count_dtype(total))
    flag = np.empty(n, bool)  # 1 byte per key instead of two int64 index temporaries
    flag[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=flag[1:])
    starts = np.flatnonzero(flag)
    del flag
    if counts is None:
        c = np.empty(starts.size, _count_dtype(total))  # run lengths, written straight into the count dtype
        np.subtract(starts[1:], starts[:-1], out=c[:-1], casting="unsafe")
        c[-1] = n - starts[-1]
    else:
        c = np.add.reduceat(counts.astype(np.uint64, copy=False), starts).astype(_count_dtype(total))
    return sorted_keys[starts], c


def _searchsorted_blocked(ka: np.ndarray, kb: np.ndarray, j0: int = 0, j1: int | None = None) -> np.ndarray:
    """``np.searchsorted(ka, kb[j0:j1])`` for sorted ``kb``, block by block on the slice of ``ka`` each block spans.

    A plain searchsorted of ~10^7 sorted needles in a ~10^8 haystack misses the cache on every probe; searching
    each block of needles in only its own range of the haystack is faster and gives the same positions.
    """
    j1 = kb.size if j1 is None else j1
    out = np.empty(j1 - j0, np.int64)
    for j in range(j0, j1, _SEARCH_BLOCK):
        b = kb[j:min(j + _SEARCH_BLOCK, j1)]
        lo = int(np.searchsorted(ka, b[0], side="left"))
        hi = int(np.searchsorted(ka, b[-1], side="right"))
        np.add(np.searchsorted(ka[lo:hi], b, side="left"), lo, out=out[j - j0:j - j0 + b.size])
    return out


def _add_matching(ka, ca, kb, cb) -> np.ndarray:
    """Add the counts of the keys of ``kb`` that ``ka`` holds into ``ca`` in place; return the mask of the others.

    Both key arrays are sorted and unique. No count can overflow ``ca``'s dtype: the caller keeps counts uint32
    only while the class total fits in uint32.
    """
    new = np.ones(kb.size, bool)
    if ka.size == 0:
        return new
    for j in range(0, kb.size, _SEARCH_BLOCK):
        j1 = min(j + _SEARCH_BLOCK, kb.size)
        ins = _searchsorted_blocked(ka, kb, j, j1)
        hit = ins < ka.size
        hit[hit] = ka[ins[hit]] == kb[j:j1][hit]
        ca[ins[hit]] += cb[j:j1][hit]  # keys are unique, so the fancy-index += never sees one slot twice
        new[j:j1] = ~hit
    return new


def _owned(a: np.ndarray) -> np.ndarray:
    """``a`` itself when it owns its buffer (so it can be grown in place with ``resize``), else a copy."""
    return a if a.flags.owndata and a.base is None and a.flags.c_contiguous else a.copy()


def _insert_disjoint(ka, ca, kb, cb):
    """Merge run b into run a when they share no key, growing a's arrays in place; returns the grown (keys, counts).

    ``resize`` reallocates (for large arrays glibc remaps the pages instead of copying), then the output is written
    from the back, block by block: an entry of a only ever moves to a higher index, so the entries still to be read
    lie below the block being written. Extra memory: the output positions of b plus one block, never a second copy
    of a. ``ka``/``ca`` must not have live views (they are internal state arrays).
    """
    a_n, b_n = ka.size, kb.size
    if b_n == 0:
        return ka, ca
    if a_n == 0:
        return kb, cb
    pos = _searchsorted_blocked(ka, kb)
    for j in range(0, b_n, _MOVE_BLOCK):  # output position of b's entry j: its insertion point + j
        pos[j:j + _MOVE_BLOCK] += np.arange(j, min(j + _MOVE_BLOCK, b_n))
    ka, ca = _owned(ka), _owned(ca)
    ka.resize(a_n + b_n, refcheck=False)
    ca.resize(a_n + b_n, refcheck=False)
    hi, j_hi = a_n + b_n, b_n
    while j_hi > 0:  # once no entry of b is left below hi, a[:hi] is already in place
        lo = max(hi - _MOVE_BLOCK, 0)
        j_lo = int(np.searchsorted(pos[:j_hi], lo, side="left"))  # entries of b whose output position is < lo
        at_b = pos[j_lo:j_hi] - lo
        from_a = np.ones(hi - lo, bool)
        from_a[at_b] = False
        for arr, src in ((ka, kb), (ca, cb)):
            tmp = np.empty(hi - lo, arr.dtype)
            tmp[from_a] = arr[lo - j_lo:hi - j_hi]
            tmp[at_b] = src[j_lo:j_hi]
            arr[lo:hi] = tmp
        hi, j_hi = lo, j_lo
    return ka, ca


def _merge_runs(a, b):
    """Merge two (sorted unique keys, counts) runs into one (the larger one's arrays are reused and grown)."""
    (ka, ca), (kb, cb) = (a, b) if a[0].size >= b[0].size else (b, a)
    if kb.size == 0:
        return ka, ca
    new = _add_matching(ka, ca, kb, cb)
    if not new.all():
        kb, cb = kb[new], cb[new]
    return _insert_disjoint(ka, ca, kb, cb)


def _union_counts(ka, ca, kb, cb):
    """Union of two sorted unique key arrays with both count arrays aligned to it (zeros where absent).

    The smaller array is searched in the larger one and inserted (linear), which is several times faster than
    sorting the concatenation and then searching both.
    """
    swap = ka.size < kb.size
    if swap:
        ka, ca, kb, cb = kb, cb, ka, ca
    ins = np.searchsorted(ka, kb, side="left")
    dup = ins < ka.size
    dup[dup] = ka[ins[dup]] == kb[dup]
    new = ~dup
    keys = np.insert(ka, ins[new], kb[new])
    cnt_a = np.insert(ca.astype(np.int64), ins[new], 0)  # one block: int64 here keeps the pass's sums in int64
    cnt_b = np.zeros(keys.size, np.int64)
    cnt_b[ins + np.cumsum(new) - new] = cb  # position in the union: own slot + new keys inserted before it
    return (keys, cnt_b, cnt_a) if swap else (keys, cnt_a, cnt_b)


# ----------------------------------------------------------------------------- input handling
def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _shape(x):
    return tuple(x.shape)


def _check_shapes(scores, labels):
    if not hasattr(scores, "shape") or not hasattr(labels, "shape"):
        raise OodscoreError(f"scores/labels: expected numpy arrays or torch tensors, got "
                            f"{type(scores).__name__} / {type(labels).__name__}")
    if _shape(scores) != _shape(labels):
        raise OodscoreError(f"scores/labels: shape mismatch, scores {_shape(scores)} vs labels {_shape(labels)}")


def _split_numpy(scores: np.ndarray, labels: np.ndarray):
    """Valid scores per class as float32 (when exact) or float64 numpy arrays: (neg, pos)."""
    s = np.asarray(scores).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.dtype.kind not in "fiub":
        raise OodscoreError(f"scores: expected a real-valued array, got dtype {s.dtype}")
    if y.dtype.kind not in "fiub":
        raise OodscoreError(f"labels: expected an integer array (0/1/void), got dtype {y.dtype}")
    if s.dtype == np.float16:
        s = s.astype(np.float32)
    elif s.dtype.kind in "iub":
        s = s.astype(np.float64)
    out = []
    for cls in (0, 1):
        v = s[y == cls]
        if not np.isfinite(v).all():
            bad = int(v.size - np.isfinite(v).sum())
            raise OodscoreError(f"scores: {bad} non-finite (NaN/inf) values on non-void pixels (label {cls})")
        out.append(v)
    return out


def _as_f32_if_exact(v: np.ndarray) -> np.ndarray:
    if v.dtype == np.float32:
        return v
    v32 = v.astype(np.float32)
    if np.array_equal(v32.astype(np.float64), v):
        return v32
    return v


def _runs_from_torch(scores, labels):
    """Per-class sorted unique values + counts, computed on the tensors' device (only the counts leave a GPU)."""
    import torch

    s = scores.detach().reshape(-1)
    y = labels.detach().reshape(-1).to(s.device)
    if s.dtype in (torch.float16, torch.bfloat16) or not s.is_floating_point():
        s = s.float() if s.is_floating_point() else s.double()
    out = []
    for cls in (0, 1):
        v = s[y == cls]
        if v.numel() and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise OodscoreError(f"scores: {bad} non-finite (NaN/inf) values on non-void pixels (label {cls})")
        if s.device.type == "cpu":
            out.append(("raw", v.numpy()))
        else:
            vals, counts = torch.unique(v, sorted=True, return_counts=True)
            out.append(("uniq", (vals.cpu().numpy(), counts.cpu().numpy().astype(np.int64))))
    return out


# ----------------------------------------------------------------------------- histogram -> metrics
_BLOCK = 1 << 22  # entries per block of the single pass below: bounds compute()'s extra memory to ~100 MB


def _threshold_key(t: float, wide: bool):
    """Key of the smallest stored-precision value >= t, so that ``key >= k  <=>  score >= t`` exactly."""
    if wide:
        return _f64_to_key(np.array([t], np.float64))[0]
    t32 = np.float32(t)
    if float(t32) < t:
        t32 = np.nextafter(t32, np.float32(np.inf))
    return _f32_to_key(np.array([t32], np.float32))[0]


def _key_value(k, wide: bool) -> float:
    arr = np.array([k], np.uint64 if wide else np.uint32)
    return float(_key_to_f64(arr)[0] if wide else _key_to_f32(arr)[0])


class _Hist:
    """Exact histogram of both classes: per class, sorted unique keys (ascending) and counts.

    Metrics come from one pass over the union of keys in descending order, block by block, with running TP/FP
    offsets; the union is never materialised, so compute() needs little memory beyond the state itself.
    """

    def __init__(self, kn, cn, kp, cp, wide: bool):
        self.kn, self.cn, self.kp, self.cp, self.wide = kn, cn, kp, cp, wide
        self.n_neg = int(cn.sum())
        self.n_pos = int(cp.sum())
        if self.n_pos == 0 and self.n_neg == 0:
            raise OodscoreError("labels: no valid pixels (label 0 or 1); cannot compute metrics on empty input")
        if self.n_pos == 0:
            raise OodscoreError(f"labels: no anomaly pixels (label 1) among {self.n_neg} valid pixels; "
                                "AUROC/AP/FPR95 are undefined")
        if self.n_neg == 0:
            raise OodscoreError(f"labels: no in-distribution pixels (label 0) among {self.n_pos} valid pixels; "
                                "AUROC/FPR95 are undefined")

    def _blocks(self):
        """Yield (keys, pos, neg) for consecutive blocks of distinct keys in descending order."""
        kn, kp = self.kn, self.kp
        i_n, i_p = kn.size, kp.size
        while i_n > 0 or i_p > 0:
            cands = []
            if i_n > 0:
                cands.append(kn[max(i_n - _BLOCK, 0)])
            if i_p > 0:
                cands.append(kp[max(i_p - _BLOCK, 0)])
            lo = max(cands)  # each class contributes at most _BLOCK keys >= lo, and at least one key is >= lo
            s_n = int(np.searchsorted(kn[:i_n], lo, side="left"))
            s_p = int(np.searchsorted(kp[:i_p], lo, side="left"))
            keys, neg, pos = _union_counts(kn[s_n:i_n], self.cn[s_n:i_n], kp[s_p:i_p], self.cp[s_p:i_p])
            yield keys[::-1], pos[::-1], neg[::-1]
            i_n, i_p = s_n, s_p

    def _pass(self, target: float = 0.95, pick=None):
        """One pass: AUROC, AP, FPR at first TPR >= target, interpolated FPR, F1-optimal key; optional picks."""
        P, N = self.n_pos, self.n_neg
        tp0 = fp0 = 0
        tpr_prev = fpr_prev = 0.0
        auc = ap = 0.0
        fpr_first = None
        interp = None
        best_f1, best_key = -1.0, None
        offset = 0
        picked = []
        for keys, pos, neg in self._blocks():
            tps = tp0 + np.cumsum(pos)
            fps = fp0 + np.cumsum(neg)
            tpr = tps / P
            fpr = fps / N
            tpr_p = np.concatenate(([tpr_prev], tpr[:-1]))
            fpr_p = np.concatenate(([fpr_prev], fpr[:-1]))
            auc += float(np.sum((fpr - fpr_p) * (tpr + tpr_p)))
            ap += float(np.sum((tpr - tpr_p) * (tps / (tps + fps))))
            if fpr_first is None:
                hit = np.flatnonzero(tpr >= target)
                if hit.size:
                    fpr_first = float(fpr[hit[0]])
            if interp is None:
                # np.interp(target, tpr, fpr): segment from the last point with tpr <= target to the next one
                above = np.flatnonzero(tpr > target)
                if above.size:
                    j = above[0]
                    x0, y0 = (tpr_p[j], fpr_p[j])
                    slope = (fpr[j] - y0) / (tpr[j] - x0)
                    interp = float(slope * (target - x0) + y0)
            f1 = 2.0 * tps / (tps + fps + P)
            j = int(np.argmax(f1))
            if f1[j] > best_f1:  # strict: among equal F1 the first (highest) threshold wins
                best_f1, best_key = float(f1[j]), keys[j]
            if pick is not None:
                sel = pick[(pick >= offset) & (pick < offset + keys.size)] - offset
                picked.append((keys[sel], tps[sel], fps[sel]))
            offset += keys.size
            tp0, fp0 = int(tps[-1]), int(fps[-1])
            tpr_prev, fpr_prev = float(tpr[-1]), float(fpr[-1])
        if interp is None:  # target > every tpr < 1 cannot happen (tpr ends at 1) unless target == 1
            interp = fpr_prev
        return {"auroc": auc / 2.0, "ap": ap, "fpr95": fpr_first, "fpr95_interp": interp,
                "best_key": best_key, "n_distinct": offset, "picked": picked}

    def n_distinct(self) -> int:
        return sum(k.size for k, _, _ in self._blocks())

    def auroc(self) -> float:
        return self._pass()["auroc"]

    def ap(self) -> float:
        return self._pass()["ap"]

    def fpr_at_tpr(self, target: float = 0.95) -> float:
        return self._pass(target)["fpr95"]

    def counts_at(self, threshold: float):
        """(TP, FP) for ``score >= threshold``."""
        k = _threshold_key(threshold, self.wide)
        below_n = int(self.cn[:np.searchsorted(self.kn, k, side="left")].sum())
        below_p = int(self.cp[:np.searchsorted(self.kp, k, side="left")].sum())
        return self.n_pos - below_p, self.n_neg - below_n

    def at_threshold(self, threshold: float) -> dict:
        tp, fp = self.counts_at(threshold)
        fn = self.n_pos - tp
        return {
            "threshold": float(threshold),
            "f1": 2.0 * tp / (2 * tp + fp + fn),
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / self.n_pos,
            "fpr": fp / self.n_neg,
        }

    def metrics(self, threshold: float | None = None) -> dict:
        r = self._pass(0.95)
        if threshold is None:
            threshold = _key_value(r["best_key"], self.wide)
        out = {k: r[k] for k in ("auroc", "ap", "fpr95", "fpr95_interp")}
        out.update(self.at_threshold(threshold))
        out["n_pos"] = self.n_pos
        out["n_neg"] = self.n_neg
        return {k: out[k] for k in METRIC_KEYS}

    def curves(self, max_points: int) -> dict:
        n = self.n_distinct() + 1  # + the ROC origin
        idx = np.unique(np.round(np.linspace(0, n - 1, min(n, max_points))).astype(np.int64))
        picked = self._pass(pick=idx[idx > 0] - 1)["picked"]
        keys = np.concatenate([p[0] for p in picked])
        tps = np.concatenate([[0], *[p[1] for p in picked]]).astype(np.float64)
        fps = np.concatenate([[0], *[p[2] for p in picked]]).astype(np.float64)
        vals = _key_to_f64(keys.astype(np.uint64)) if self.wide else _key_to_f32(keys).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tps + fps > 0, tps / np.maximum(tps + fps, 1), 1.0)
        return {"fpr": fps / self.n_neg, "tpr": tps / self.n_pos, "precision": precision,
                "recall": tps / self.n_pos, "thresholds": np.concatenate(([np.inf], vals))}


def _check_threshold(threshold):
    if threshold is None:
        return None
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise OodscoreError(f"threshold: expected a real number or None, got {threshold!r}") from None
    if not np.isfinite(t):
        raise OodscoreError(f"threshold: expected a finite number, got {t}")
    return t


# ----------------------------------------------------------------------------- streaming states
class _State:
    """What a :class:`PixelMetrics` accumulates: exact (:class:`_ExactState`) or binned (:class:`_BinnedState`).

    Both share one interface: ``update(scores, labels)`` folds a batch in, ``merge(other)`` adds another state of
    the same kind, ``counts()`` returns the per-class histogram (a :class:`_Hist`) that every metric is computed
    from, ``reset()`` forgets everything, ``n_distinct`` counts the stored entries. ``approximate`` says whether
    counts at an arbitrary threshold are approximated (a threshold inside a bin).
    """

    approximate = False

    def update(self, scores, labels) -> None:
        """Add a batch (shapes already checked): numpy arrays, or torch tensors on any device."""
        if _is_torch(scores) or _is_torch(labels):
            import torch

            self._update_torch(torch.as_tensor(scores), torch.as_tensor(labels))
        else:
            self._update_numpy(*_split_numpy(scores, labels))

    def _update_numpy(self, neg: np.ndarray, pos: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _update_torch(self, scores, labels) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class _ExactState(_State):
    """Exact histogram over distinct score values (see the module docstring for the layout and memory bound)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._wide = False            # False -> uint32 keys (float32 scores), True -> uint64 (float64)
        self._big = [None, None]      # per class, the main run (sorted unique keys, counts)
        self._buf = ([], [])          # per class, small runs of keys the main run lacked when added
        self._total = [0, 0]          # pixels per class (counts are uint32 while this fits in uint32)

    # -- runs
    def _runs(self, cls: int) -> list:
        big = self._big[cls]
        return ([] if big is None else [big]) + list(self._buf[cls])

    def _map_runs(self, fn) -> None:
        """Replace every run (k, c) of both classes by ``fn(k, c)``."""
        for cls in (0, 1):
            if self._big[cls] is not None:
                self._big[cls] = fn(*self._big[cls])
            self._buf[cls][:] = [fn(k, c) for k, c in self._buf[cls]]

    def _widen(self) -> None:
        if self._wide:
            return
        self._map_runs(lambda k, c: (_f64_to_key(_key_to_f32(k).astype(np.float64)), c))
        self._wide = True

    def _add_run(self, cls: int, keys: np.ndarray, counts: np.ndarray) -> None:
        """Add a (sorted unique keys, counts) run that this object now owns.

        Counts of keys the main run already holds are added to it in place; the other keys go to a buffer of small
        runs, merged LSM-style among themselves and into the main run (in place, see ``_insert_disjoint``) once
        they reach a quarter of its size. Peak memory is thus ~1.25x the state plus one batch, and the main run
        is rewritten O(log) times. Buffered keys are absent from the main run, which only changes at a flush.
        """
        if keys.size == 0:
            return
        total = self._total[cls] + int(counts.sum())
        if _count_dtype(total) != _count_dtype(self._total[cls]):  # past 2^32 - 1 pixels: widen counts, once
            self._map_runs(lambda k, c: (k, c.astype(np.uint64)))
        self._total[cls] = total
        counts = counts.astype(_count_dtype(total), copy=False)
        big = self._big[cls]
        if big is None or big[0].size == 0:
            self._big[cls] = (keys, counts)
            return
        new = _add_matching(big[0], big[1], keys, counts)
        if not new.any():
            return
        if not new.all():
            keys, counts = keys[new], counts[new]
        buf = self._buf[cls]
        buf.append((keys, counts))
        while len(buf) > 1 and buf[-1][0].size * 2 >= buf[-2][0].size:
            b = buf.pop()
            a = buf.pop()
            buf.append(_merge_runs(a, b))
        if sum(k.size for k, _ in buf) * 4 > big[0].size:
            self._flush(cls)

    def _flush(self, cls: int) -> None:
        """Merge the buffered runs of a class into its main run."""
        buf = self._buf[cls]
        if not buf:
            return
        while len(buf) > 1:
            b = buf.pop()
            a = buf.pop()
            buf.append(_merge_runs(a, b))
        k, c = buf.pop()
        big = self._big[cls]
        self._big[cls] = None  # drop our reference while the arrays are grown in place
        self._big[cls] = _insert_disjoint(big[0], big[1], k, c)

    # -- update
    def _add_values(self, cls: int, v: np.ndarray) -> None:
        v = _as_f32_if_exact(v)
        if v.dtype == np.float64:
            self._widen()
        if self._wide and v.dtype == np.float32:
            v = v.astype(np.float64)
        keys = _to_key_inplace(v)  # v is always our own copy (boolean indexing copies): reuse its memory
        del v
        keys.sort()
        run = _unique_counts_sorted(keys)
        del keys
        self._add_run(cls, *run)

    def _add_unique(self, cls: int, vals: np.ndarray, counts: np.ndarray) -> None:
        vals = vals.astype(np.float64) if vals.dtype != np.float32 else vals
        vals = _as_f32_if_exact(vals)
        if vals.dtype == np.float64:
            self._widen()
        if self._wide:
            keys = _f64_to_key(vals.astype(np.float64))
        else:
            keys = _f32_to_key(vals)
        counts = np.asarray(counts)
        if counts.size and (counts.dtype.kind not in "iu" or int(counts.min()) < 0):
            raise OodscoreError(f"counts: expected non-negative integers, got dtype {counts.dtype}")
        # torch.unique merges -0.0/0.0 already; keys are monotone in the values, so still sorted
        self._add_run(cls, *_unique_counts_sorted(keys, counts))

    def _update_numpy(self, neg: np.ndarray, pos: np.ndarray) -> None:
        self._add_values(0, neg)
        self._add_values(1, pos)

    def _update_torch(self, scores, labels) -> None:
        for cls, (kind, payload) in enumerate(_runs_from_torch(scores, labels)):
            if kind == "raw":
                self._add_values(cls, payload)
            else:
                self._add_unique(cls, *payload)

    # -- merge / result
    def merge(self, other: "_ExactState") -> None:
        if other._wide:
            self._widen()
        for cls in (0, 1):
            runs = [(k.copy(), c.copy()) for k, c in other._runs(cls)]  # snapshot: other may be self
            for k, c in runs:
                if self._wide and k.dtype == np.uint32:
                    k = _f64_to_key(_key_to_f32(k).astype(np.float64))
                self._add_run(cls, k, c)

    def counts(self) -> _Hist:
        merged = []
        dtype = np.uint64 if self._wide else np.uint32
        for cls in (0, 1):
            self._flush(cls)
            big = self._big[cls]
            merged.append(big if big is not None else (np.zeros(0, dtype), np.zeros(0, np.uint32)))
        (kn, cn), (kp, cp) = merged
        return _Hist(kn.astype(dtype, copy=False), cn, kp.astype(dtype, copy=False), cp, self._wide)

    @property
    def n_distinct(self) -> int:
        return int(sum(k.size for cls in (0, 1) for k, _ in self._runs(cls)))


class _BinnedState(_State):
    """One count per quantile bin and class; the edges are fixed from the first ``edge_samples`` valid scores."""

    approximate = True

    def __init__(self, bins: int, edge_samples: int, seed: int):
        self.bins, self.edge_samples, self.seed = bins, edge_samples, seed
        self.reset()

    def reset(self) -> None:
        self.edges = None             # lower edges (float64, ascending) once fixed
        self._bin_counts = None       # (neg counts, pos counts)
        self._buffer = ([], [])       # valid scores buffered until the edges are fixed
        self._buffered = 0

    def _fix_edges(self) -> None:
        neg = np.concatenate(self._buffer[0]) if self._buffer[0] else np.zeros(0)
        pos = np.concatenate(self._buffer[1]) if self._buffer[1] else np.zeros(0)
        if neg.size + pos.size == 0:
            return
        # Half of the edges at quantiles of each class: the anomaly pixels are a small minority that sits in the
        # score tail, so pooled quantiles alone would leave them a handful of bins (AP error ~3e-3 on heavy tails).
        rng = np.random.default_rng(self.seed)
        present = [v for v in (neg, pos) if v.size]
        qs = []
        for i, v in enumerate(present):
            k = self.bins // len(present) + (self.bins % len(present) if i == 0 else 0)
            if v.size > self.edge_samples:
                v = v[rng.integers(0, v.size, self.edge_samples)]
            # 'inverted_cdf' returns data values, so a heavily tied value gets an edge equal to itself
            qs.append(np.quantile(v.astype(np.float64), np.linspace(0.0, 1.0, k), method="inverted_cdf"))
        self._set_edges(np.unique(np.concatenate(qs)))

    def _set_edges(self, edges: np.ndarray) -> None:
        """Fix the edges and bin the buffered scores."""
        buf = self._buffer
        self.edges = edges
        self._bin_counts = [np.zeros(edges.size, np.int64), np.zeros(edges.size, np.int64)]
        self._buffer, self._buffered = ([], []), 0
        for cls in (0, 1):
            for v in buf[cls]:
                self._bin_add(cls, v)

    def _bin_add(self, cls: int, v: np.ndarray) -> None:
        if v.size:
            idx = np.clip(np.searchsorted(self.edges, v.astype(np.float64), side="right") - 1, 0, None)
            self._bin_counts[cls] += np.bincount(idx, minlength=self.edges.size)

    def _bin_add_torch(self, cls: int, v) -> None:
        import torch

        e = torch.as_tensor(self.edges, device=v.device, dtype=torch.float64)
        idx = (torch.searchsorted(e, v.double(), right=True) - 1).clamp_(min=0)
        self._bin_counts[cls] += torch.bincount(idx, minlength=self.edges.size).cpu().numpy()

    def _update_numpy(self, neg: np.ndarray, pos: np.ndarray) -> None:
        if self.edges is not None:
            self._bin_add(0, neg)
            self._bin_add(1, pos)
            return
        self._buffer[0].append(neg.astype(np.float64))
        self._buffer[1].append(pos.astype(np.float64))
        self._buffered += neg.size + pos.size
        if self._buffered >= self.edge_samples:
            self._fix_edges()

    def _update_torch(self, scores, labels) -> None:
        import torch

        s = scores.detach().reshape(-1)
        y = labels.detach().reshape(-1).to(s.device)
        if self.edges is None:
            valid = (y == 0) | (y == 1)
            if bool(valid.any()) and not bool(torch.isfinite(s[valid]).all()):
                raise OodscoreError("scores: non-finite (NaN/inf) values on non-void pixels")
            self._update_numpy(s[y == 0].double().cpu().numpy(), s[y == 1].double().cpu().numpy())
            return
        for cls in (0, 1):
            v = s[y == cls]
            if v.numel() and not bool(torch.isfinite(v).all()):
                raise OodscoreError(f"scores: non-finite (NaN/inf) values on non-void pixels (label {cls})")
            if v.numel():
                self._bin_add_torch(cls, v)

    def merge(self, other: "_BinnedState") -> None:
        if other.edges is None:
            for cls in (0, 1):
                for v in list(other._buffer[cls]):  # snapshot: other may be self
                    self._update_numpy(*((v, np.zeros(0)) if cls == 0 else (np.zeros(0), v)))
            return
        if self.edges is None:
            self._set_edges(other.edges.copy())  # adopt the other's edges, bin what we buffered
        elif not np.array_equal(self.edges, other.edges):
            raise OodscoreError("merge: binned accumulators have different quantile edges; "
                                "fix the edges on one and pass them to the others (or use exact mode)")
        for cls in (0, 1):
            self._bin_counts[cls] += other._bin_counts[cls]

    def counts(self) -> _Hist:
        if self.edges is None:
            self._fix_edges()
        if self.edges is None:
            raise OodscoreError("labels: no valid pixels (label 0 or 1); cannot compute metrics on empty input")
        neg, pos = self._bin_counts
        keys = _f64_to_key(self.edges)  # a bin acts as one tied score equal to its lower edge
        keep_n, keep_p = neg > 0, pos > 0
        return _Hist(keys[keep_n], neg[keep_n], keys[keep_p], pos[keep_p], wide=True)

    @property
    def n_distinct(self) -> int:
        return 0 if self.edges is None else int(self.edges.size)


# ----------------------------------------------------------------------------- streaming accumulator
class PixelMetrics:
    """Streaming pixel metrics: ``update(scores, labels)`` per batch, ``compute()`` at the end; state merges by addition.

    The mode is fixed at construction: an exact or a binned state object holds the counts, and ``update``,
    ``merge``, ``compute``, ``curves`` and ``reset`` delegate to it (torchmetrics' ``thresholds=None`` vs binned).

    Parameters
    ----------
    bins : int or None
        None (default): exact (histogram over distinct score values; see the module docstring for the memory bound).
        int: quantile-binned with at most ``bins`` bins (constant memory; AP error ~1e-4 at 768 bins).
    edge_samples : int
        Binned mode only: number of valid scores buffered from the first update(s) to place the quantile edges.
    seed : int
        Binned mode only: seed of the subsample used for the edges when more than ``edge_samples`` are buffered.

    Raises
    ------
    OodscoreError
        A bad ``bins`` or ``edge_samples``.

    Examples
    --------
    >>> m = PixelMetrics()
    >>> for s, y in batches:           # y in {0, 1, 255}; 255 ignored
    ...     m.update(s, y)
    >>> m.compute()["auroc"]
    """

    def __init__(self, bins: int | None = None, edge_samples: int = 1_000_000, seed: int = 0):
        if bins is not None and (isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2):
            raise OodscoreError(f"bins: expected None (exact) or an integer >= 2, got {bins!r}")
        if int(edge_samples) < 2:
            raise OodscoreError(f"edge_samples: expected an integer >= 2, got {edge_samples!r}")
        self.bins = None if bins is None else int(bins)
        self.edge_samples = int(edge_samples)
        self.seed = int(seed)
        self._state: _State = (_ExactState() if self.bins is None
                               else _BinnedState(self.bins, self.edge_samples, self.seed))

    def reset(self) -> None:
        """Forget every update."""
        self._state.reset()

    def update(self, scores, labels) -> None:
        """Add a batch: ``scores`` and ``labels`` of the same shape (numpy arrays or torch tensors, CPU or CUDA)."""
        _check_shapes(scores, labels)
        self._state.update(scores, labels)

    def merge(self, other: "PixelMetrics") -> "PixelMetrics":
        """Fold another accumulator's state into this one (e.g. from another worker / rank); returns self."""
        if not isinstance(other, PixelMetrics):
            raise OodscoreError(f"merge: expected a PixelMetrics, got {type(other).__name__}")
        if other.bins != self.bins:
            raise OodscoreError(f"merge: bins differ ({self.bins} vs {other.bins})")
        self._state.merge(other._state)
        return self

    def compute(self, threshold: float | None = None) -> dict:
        """Metrics dict (keys ``METRIC_KEYS``); ``threshold=None`` -> the F1-optimal threshold."""
        t = _check_threshold(threshold)
        hist = self._state.counts()
        if self._state.approximate and t is not None:
            warnings.warn("binned PixelMetrics: counts at a given threshold are approximated by the bin "
                          "containing it", stacklevel=2)
        return hist.metrics(t)

    def curves(self, max_points: int = 2000) -> dict:
        """ROC and PR curves for plotting, subsampled to at most ``max_points`` points (endpoints kept).

        All arrays have the same length; point 0 is the ROC origin (threshold +inf, fpr = tpr = recall = 0,
        precision = 1 as in sklearn's PR curve end point); point i > 0 is ``score >= thresholds[i]``.
        """
        if int(max_points) < 2:
            raise OodscoreError(f"max_points: expected an integer >= 2, got {max_points!r}")
        return self._state.counts().curves(int(max_points))

    @property
    def edges(self) -> np.ndarray | None:
        """Binned mode: the quantile lower edges (float64, ascending) once fixed; None before that and in exact mode."""
        return getattr(self._state, "edges", None)

    @property
    def n_distinct(self) -> int:
        """Number of stored histogram entries (both classes): the exact mode's memory is ~8-16 bytes each."""
        return self._state.n_distinct


# ----------------------------------------------------------------------------- one-shot functions
def _hist_of(scores, labels) -> _Hist:
    m = PixelMetrics()
    m.update(scores, labels)
    return m._state.counts()


def pixel_metrics(scores, labels, threshold: float | None = None) -> dict:
    """All pixel metrics at once (exact). See the module docstring for the conventions.

    Parameters
    ----------
    scores : array or tensor
        Anomaly scores, higher = more anomalous.
    labels : array or tensor, same shape
        0 = ID, 1 = anomaly, anything else void.
    threshold : float, optional
        Threshold for F1/precision/recall/FPR (``score >= threshold`` is anomalous); None -> F1-optimal.

    Returns
    -------
    dict
        ``auroc, ap, fpr95, fpr95_interp, threshold, f1, precision, recall, fpr, n_pos, n_neg``.
    """
    t = _check_threshold(threshold)
    return _hist_of(scores, labels).metrics(t)


def auroc(scores, labels) -> float:
    """Area under the ROC (trapezoid; == ``sklearn.metrics.roc_auc_score``)."""
    return _hist_of(scores, labels).auroc()


def average_precision(scores, labels) -> float:
    """Step-wise average precision (== ``sklearn.metrics.average_precision_score``)."""
    return _hist_of(scores, labels).ap()


def fpr_at_tpr(scores, labels, tpr: float = 0.95) -> float:
    """FPR at the first threshold (scanning scores from high to low) where TPR >= ``tpr``."""
    if not 0.0 < float(tpr) <= 1.0:
        raise OodscoreError(f"tpr: expected a value in (0, 1], got {tpr!r}")
    return _hist_of(scores, labels).fpr_at_tpr(float(tpr))
