"""Exact pixel-level anomaly metrics (DESIGN §4.5): AUROC, AP, FPR95, F1 at a threshold; streaming and mergeable.

Conventions
-----------
- Labels: 0 = in-distribution (negative), 1 = anomaly (positive), anything else is void and ignored.
- Scores: higher = more anomalous. A pixel is *predicted anomalous* at threshold ``t`` iff ``score >= t``.
  Candidate thresholds are the distinct score values (as in sklearn's ``roc_curve`` / ``precision_recall_curve``),
  so the F1-optimal threshold ``t*`` is itself a score value and ``score >= t*`` reproduces its confusion counts.
- AUROC: trapezoid area under the ROC (== ``sklearn.metrics.roc_auc_score``).
- AP: step-wise ``sum_n (R_n - R_{n-1}) P_n`` (== ``sklearn.metrics.average_precision_score``; not trapezoidal).
- FPR95: FPR at the first threshold, scanning scores from high to low, where TPR >= 0.95 (Fishyscapes / SMIYC).
- ``fpr95_interp``: ``np.interp(0.95, tpr, fpr)`` on the full ROC (the point (0, 0) first, then one point per
  distinct score, i.e. sklearn's ``roc_curve(..., drop_intermediate=False)``). This is the interpolating branch of
  ood-metrics' ``fpr_at_95_tpr``; on a TPR plateau at exactly 0.95 numpy's tie rule applies.
- Precision with no predicted positive (threshold above every score) is 0.0, like sklearn's default.
- F1-optimal threshold: the distinct score value maximising ``F1 = 2 TP / (2 TP + FP + FN)`` (float64); among equal
  F1 values the highest threshold wins (fewest predicted positives).

Exact streaming state
---------------------
The state is an exact histogram: for each class (ID / anomaly) the sorted distinct score values with their counts.
Scores are stored as order-preserving unsigned-integer bit patterns (``uint32`` for float16/float32 scores,
``uint64`` for float64 scores that are not exactly float32; integer sorts are several times faster than float sorts).
Counts are ``uint32`` while a class has fewer than 2^32 pixels (no count can then overflow) and switch to ``uint64``
once, exactly, past that. Each batch is sorted and reduced to (key, count) pairs; counts of keys already in the
class's main run are added to it in place, the other keys go to a buffer of small runs (merged LSM-style) that is
merged into the main run, in place, when it reaches a quarter of its size. Memory is ``8 bytes x distinct values per
class`` for float32 (``12`` for float64) plus at most ~1/2 of that while merging, plus the batch, independent of the
number of pixels: float16 scores need at most 2 x 65536 entries; float32 scores at most one entry per distinct value
present. Measured: 10^9 N(0,1) float32 pixels in chunks of 2e7 (1.4e8 entries) peaked at 1.7 GiB RSS (see
``bench/metrics.py``). For continuous float32 scores with ~10^9 distinct values, use ``bins=``.
``-0.0`` and ``0.0`` are one value. NaN / inf scores on non-void pixels raise; on void pixels they are ignored.

Batches are read in one pass of in-cache chunks (labels compared, scores converted, each class's scores compressed
out), then each class is sorted once and reduced to (key, count) runs. ``PixelMetrics.summarize`` returns those runs
without adding them (``add_summary`` adds them, in order): worker processes summarize frames for a parent.

One-shot functions (``pixel_metrics``, ``auroc``, ...) on numpy arrays sort all valid scores once, and the anomaly
scores once; the union of both classes' distinct scores is then walked from the top, chunk by chunk, its distinct
values and per-class counts found on the way, so that nothing of its size is ever held. At 10^8 float32 pixels this
costs ~2.7 ``np.sort`` of the same scores on the development machine (``bench/metrics.py``; numpy's AVX-512 sort):
of ~1.15 s of CPU, the sort takes ~0.36, the in-cache split ~0.2, the runs ~0.26 (half of it placing the anomaly
keys among the distinct keys) and the metric arithmetic ~0.3 (every distinct key's terms: bit-identical sums).

Metrics are one pass over the union of distinct keys in descending order, in blocks of at most ``_BLOCK`` keys per
class (each block's AUROC / AP terms summed by one ``np.sum``), every block evaluated in in-cache chunks with the
operations of a whole-block evaluation: the numbers depend on the block boundaries only, the same for every path.

Binned mode (``bins=int``) keeps one count per quantile bin (SMIYC-style): edges are quantiles of the first
``edge_samples`` valid scores seen (pooled over both classes), each bin is ``[edge_i, edge_{i+1})`` and acts as one
tied score equal to its lower edge (the last bin is ``[max, inf)``; scores below the first edge join the first bin).
Uniform bins over min..max are never used: they collapse heavy tails into one bin.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from oodscore import OodscoreError

__all__ = [
    "PixelMetrics", "BatchSummary", "pixel_metrics", "auroc", "average_precision", "fpr_at_tpr", "METRIC_KEYS",
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


def _compact_runs(v: np.ndarray, start: int = 0):
    """Distinct values of the sorted ``v[start:]`` and their run lengths, ``_CHUNK`` entries at a time (in cache).

    The distinct values are written over the front of ``v``, which is consumed (it must own its data and have no
    other view): it is shrunk to them and returned with the counts (uint32 while they cannot overflow it).
    """
    n, c = v.size, _CHUNK
    cnt = np.empty(n - start, _count_dtype(n - start))
    flag = np.empty(min(c, max(n - start, 1)), bool)
    w = 0
    prev = start  # where the last run found starts (its length is known once the next one starts)
    last = None   # the value before the chunk
    for a in range(start, n, c):
        vc = v[a:a + c]
        f = flag[:vc.size]
        f[0] = a == start or vc[0] != last
        last = vc[-1]
        np.not_equal(vc[1:], vc[:-1], out=f[1:])
        st = np.flatnonzero(f)
        if st.size == 0:
            continue
        if w:
            cnt[w - 1] = a + int(st[0]) - prev
        np.subtract(st[1:], st[:-1], out=cnt[w:w + st.size - 1], casting="unsafe")
        prev = a + int(st[-1])
        v[w:w + st.size] = vc[st]  # w <= a: only values already read are overwritten
        w += st.size
    if w:
        cnt[w - 1] = n - prev
    v.resize(w, refcheck=False)
    cnt.resize(w, refcheck=False)
    return v, cnt


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
    s, y = _flat_checked(scores, labels)
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


# ----------------------------------------------------------------------------- numpy batches -> runs, one pass
_FINITE_KEYS = {False: (0x007FFFFF, 0xFF800000),                  # keys of -inf / +inf (float32)
                True: (0x000FFFFFFFFFFFFF, 0xFFF0000000000000)}   # (float64); NaNs lie beyond them


def _flat_checked(scores, labels):
    """Flat numpy views of a batch, dtypes checked (one line each)."""
    s = np.asarray(scores).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.dtype.kind not in "fiub":
        raise OodscoreError(f"scores: expected a real-valued array, got dtype {s.dtype}")
    if y.dtype.kind not in "fiub":
        raise OodscoreError(f"labels: expected an integer array (0/1/void), got dtype {y.dtype}")
    return s, y


def _chunk_values(src: np.ndarray, scratch: np.ndarray | None, valid: np.ndarray, wide: bool):
    """One chunk of scores as float32 (float64 when ``wide``), converted into ``scratch`` when needed.

    None when float32 was asked for but a valid pixel holds a float64 (or integer) value that float32 cannot hold
    exactly; the caller then reads the batch as float64.
    """
    fdt = np.float64 if wide else np.float32
    if src.dtype.kind in "iub":  # integers are read as float64, as the general path does
        src = src.astype(np.float64)
    if src.dtype == fdt:
        return src
    out = scratch[:src.size]
    with np.errstate(over="ignore", invalid="ignore"):
        np.copyto(out, src, casting="unsafe")  # float16 -> float32 exactly; float64 -> float32 checked below
    if src.dtype == np.float64 and not wide and (np.not_equal(out, src) & valid).any():
        return None
    return out


def _split_pass(s: np.ndarray, y: np.ndarray, first: str, wide: bool):
    """``(keys of every pixel, number of others, keys of the label-1 pixels)``: the first array holds the keys of
    the ``first`` pixels' scores ("valid": labels 0 and 1; "neg": label 0) and 0 for the others (0 is below the key
    of every finite score: after a sort they come first); the label-1 keys are compressed out.

    One pass over the batch in ``_CHUNK`` steps that stay in cache (zeroing by a product with the mask is
    branch-free: a compression of 90 % random entries costs ~5x more); uint32 keys (uint64 when ``wide``). None
    when float32 cannot hold the scores exactly (see :func:`_chunk_values`).
    """
    n, c = s.size, max(1, min(_CHUNK, s.size))
    fdt, udt, idt, sign = ((np.float64, np.uint64, np.int64, _SIGN64) if wide
                           else (np.float32, np.uint32, np.int32, _SIGN32))
    out_a, out_p = np.empty(n, udt), np.empty(n, udt)  # only the pages written are ever touched
    scratch = None if s.dtype == fdt else np.empty(c, fdt)
    k, m = np.empty(c, udt), np.empty(c, udt)
    is0, is1, valid = np.empty(c, bool), np.empty(c, bool), np.empty(c, bool)
    sel = valid if first == "valid" else is0
    wa = wp = 0
    for a in range(0, n, c):
        w = min(c, n - a)
        np.equal(y[a:a + w], 0, out=is0[:w])
        np.equal(y[a:a + w], 1, out=is1[:w])
        np.logical_or(is0[:w], is1[:w], out=valid[:w])
        v = _chunk_values(s[a:a + w], scratch, valid[:w], wide)
        if v is None:
            return None
        kw, mw = k[:w], m[:w]      # the keys of the chunk (as _to_key_inplace, into scratch)
        np.add(v, fdt(0.0), out=kw.view(fdt))  # -0.0 -> 0.0
        np.right_shift(kw.view(idt), 8 * kw.itemsize - 1, out=mw.view(idt))
        mw |= sign
        kw ^= mw
        np.multiply(kw, sel[:w], out=out_a[a:a + w])
        kp = kw[is1[:w]]
        out_p[wp:wp + kp.size] = kp
        wa, wp = wa + w - int(np.count_nonzero(sel[:w])), wp + kp.size
    out_p.resize(wp, refcheck=False)
    return out_a, wa, out_p


def _split_sorted(s: np.ndarray, y: np.ndarray, first: str):
    """``(wide, keys, skip, anomaly keys)`` of :func:`_flat_checked` arrays, both key arrays sorted: the keys of the
    ``first`` scores are ``keys[skip:]`` (see :func:`_split_pass`).

    float16 / float32 scores, and float64 / integer scores that float32 holds exactly on every valid pixel, are
    read as float32 (uint32 keys); other scores as float64 (``wide``: uint64 keys). Non-finite scores on valid
    pixels raise (one line). (Integer keys sort as fast as floats with a SIMD sort, and faster without one.)
    """
    if s.dtype.kind == "f" and s.dtype.itemsize > 8:  # long double: read as float64
        with np.errstate(over="ignore"):
            s = s.astype(np.float64)
    wide = False
    out = _split_pass(s, y, first, wide)
    if out is None:
        wide = True
        out = _split_pass(s, y, first, wide)
    keys, others, kp = out
    lo, hi = (keys.dtype.type(v) for v in _FINITE_KEYS[wide])  # typed: a Python int would cast all of ``k``
    for k, skip in ((keys, others), (kp, 0)):
        k.sort()
        # keys of NaN / inf sort to the ends; those of -inf and negative NaNs (one of them is 0) before ``lo``
        if k.size > skip and (int(np.searchsorted(k, lo, side="right")) != skip or k[-1] >= hi):
            _split_numpy(s, y)  # raises the general path's message (counts per class)
            raise OodscoreError("scores: non-finite (NaN/inf) values on non-void pixels")
    return wide, keys, others, kp


# ----------------------------------------------------------------------------- histogram -> metrics
_BLOCK = 1 << 22  # entries per class per block of the single pass below: shapes the float sums (see _Sweep)
_CHUNK = 1 << 15  # entries per in-cache step of the passes over whole arrays (keys, unique runs, metrics)


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


class _Sweep:
    """The arithmetic of every metric: one walk over the union of both classes' keys in descending order.

    Fed block by block (:meth:`block`: the ascending keys and per-class counts of one block, blocks from the highest
    keys down). A block is evaluated ``_CHUNK`` entries at a time, so every temporary stays in cache, with exactly
    the operations of a whole-block evaluation (integer cumsums, float64 ``tps / P``, ``fps / N``, ...: counts are
    exact in float64 below 2^53); the AUROC and AP terms of a block are summed by one ``np.sum`` over the whole
    block. The numbers thus depend on ``_BLOCK`` (the grouping of the float sums), never on ``_CHUNK``.
    """

    def __init__(self, n_pos: int, n_neg: int, target: float, pick: np.ndarray | None = None):
        self.P, self.N, self.target, self.pick = float(n_pos), float(n_neg), target, pick
        self.tp = self.fp = 0
        self.auc = self.ap = 0.0
        self.fpr_first = self.interp = None
        self.best_f1, self.best_key = -1.0, None
        self.offset = 0
        self.picked: list = []
        c = _CHUNK
        self._ti, self._fi = np.empty(c, np.int64), np.empty(c, np.int64)
        self._tf, self._sf, self._a, self._b = (np.empty(c) for _ in range(4))
        self._tpr, self._fpr = np.zeros(c + 1), np.zeros(c + 1)  # [0]: the previous point (first: the origin)
        self._terms, self._used = np.empty((2, 0)), 0  # the open block's AUROC and AP terms

    def block(self, keys: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> None:
        """Walk one whole block (ascending arrays), from its highest key down."""
        n, c = keys.size, _CHUNK
        self._reserve(n)
        for o in range(0, n, c):
            hi = n - o
            lo = max(hi - c, 0)
            self.feed(keys[lo:hi][::-1], pos[lo:hi][::-1], neg[lo:hi][::-1])
        self.end_block()

    def _reserve(self, n: int) -> None:
        """Room for ``n`` terms of each kind in the open block (kept when the buffer grows)."""
        if self._terms.shape[1] < n:
            grown = np.empty((2, max(n, 2 * self._terms.shape[1])))
            grown[:, :self._used] = self._terms[:, :self._used]
            self._terms = grown

    def feed(self, keys: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> None:
        """The next entries (descending, at most ``_CHUNK``) of the open block."""
        o, n = self._used, keys.size
        self._reserve(o + n)
        self._chunk(keys, pos, neg, self._terms[0, o:o + n], self._terms[1, o:o + n])
        self._used = o + n

    def end_block(self) -> None:
        """Close the open block: its AUROC and AP terms are summed (one ``np.sum`` each over the whole block)."""
        if self._used:
            self.auc += float(np.sum(self._terms[0, :self._used]))
            self.ap += float(np.sum(self._terms[1, :self._used]))
        self._used = 0

    def _chunk(self, keys, pos, neg, auc_out, ap_out) -> None:
        """One chunk (descending): its AUROC / AP terms into ``auc_out`` / ``ap_out``, F1 and the TPR-95 points."""
        n = keys.size
        tps, fps = self._ti[:n], self._fi[:n]
        np.cumsum(pos, dtype=np.int64, out=tps)
        tps += self.tp
        np.cumsum(neg, dtype=np.int64, out=fps)
        fps += self.fp
        tf, sf, a, b = self._tf[:n], self._sf[:n], self._a[:n], self._b[:n]
        tpr, fpr = self._tpr[:n + 1], self._fpr[:n + 1]
        np.copyto(tf, tps)                      # exact: counts < 2^53
        np.copyto(sf, fps)
        np.divide(tf, self.P, out=tpr[1:])      # == tps / P (int64 / int: both cast to float64)
        np.divide(sf, self.N, out=fpr[1:])
        np.subtract(fpr[1:], fpr[:-1], out=a)
        np.add(tpr[1:], tpr[:-1], out=b)
        np.multiply(a, b, out=auc_out)          # (fpr - fpr_prev) * (tpr + tpr_prev)
        sf += tf                                # tps + fps, exact
        np.divide(tf, sf, out=b)                # precision
        np.subtract(tpr[1:], tpr[:-1], out=a)
        np.multiply(a, b, out=ap_out)           # (tpr - tpr_prev) * precision
        self._operating_points(tpr, fpr)
        self._f1(keys, tf, sf)
        if self.pick is not None:
            self._pick(keys, tps, fps)
        self.tp, self.fp = int(tps[-1]), int(fps[-1])
        tpr[0], fpr[0] = tpr[n], fpr[n]
        self.offset += n

    def _operating_points(self, tpr: np.ndarray, fpr: np.ndarray) -> None:
        """FPR at the first TPR >= target, and ``np.interp(target, tpr, fpr)`` (``tpr[0]``: the previous point)."""
        t = self.target
        if self.fpr_first is None and tpr[-1] >= t:
            self.fpr_first = float(fpr[1 + int(np.argmax(tpr[1:] >= t))])
        if self.interp is None and tpr[-1] > t:
            # the segment from the last point with tpr <= target to the next one
            j = int(np.argmax(tpr[1:] > t))
            x0, y0 = tpr[j], fpr[j]
            slope = (fpr[j + 1] - y0) / (tpr[j + 1] - x0)
            self.interp = float(slope * (t - x0) + y0)

    def _f1(self, keys, tf: np.ndarray, sf: np.ndarray) -> None:
        """``F1 = 2 TP / (TP + FP + P)`` (``sf`` = TP + FP); among equal values the first (highest) key wins.

        F1 grows with TP and falls with FP, so no entry of the chunk exceeds F1(last TP, first FP) (correctly
        rounded, the float values keep that order): a chunk whose bound does not beat the best is skipped.
        """
        if 2.0 * tf[-1] / (tf[-1] + (sf[0] - tf[0]) + self.P) <= self.best_f1:
            return
        n = keys.size
        f1, den = self._a[:n], self._b[:n]
        np.multiply(tf, 2.0, out=f1)
        np.add(sf, self.P, out=den)
        np.divide(f1, den, out=f1)
        j = int(np.argmax(f1))
        if f1[j] > self.best_f1:  # strict: among equal F1 the first (highest) threshold wins
            self.best_f1, self.best_key = float(f1[j]), keys[j]

    def _pick(self, keys, tps, fps) -> None:
        lo, hi = np.searchsorted(self.pick, [self.offset, self.offset + keys.size])
        sel = self.pick[lo:hi] - self.offset
        self.picked.append((keys[sel], tps[sel], fps[sel]))

    def result(self) -> dict:
        interp = self.interp if self.interp is not None else float(self._fpr[0])  # target 1: the last FPR
        return {"auroc": self.auc / 2.0, "ap": self.ap, "fpr95": self.fpr_first, "fpr95_interp": interp,
                "best_key": self.best_key, "n_distinct": self.offset, "picked": self.picked}


class _Hist:
    """Exact histogram of both classes: per class, sorted unique keys (ascending) and counts.

    Metrics come from one pass over the union of keys in descending order, block by block (:class:`_Sweep`),
    with running TP/FP offsets; the union is never materialised, so compute() needs little memory beyond the state.
    """

    def __init__(self, kn, cn, kp, cp, wide: bool):
        self.kn, self.cn, self.kp, self.cp, self.wide = kn, cn, kp, cp, wide
        self._totals(int(cn.sum()), int(cp.sum()))

    def _totals(self, n_neg: int, n_pos: int) -> None:
        self.n_neg, self.n_pos = n_neg, n_pos
        if self.n_pos == 0 and self.n_neg == 0:
            raise OodscoreError("labels: no valid pixels (label 0 or 1); cannot compute metrics on empty input")
        if self.n_pos == 0:
            raise OodscoreError(f"labels: no anomaly pixels (label 1) among {self.n_neg} valid pixels; "
                                "AUROC/AP/FPR95 are undefined")
        if self.n_neg == 0:
            raise OodscoreError(f"labels: no in-distribution pixels (label 0) among {self.n_pos} valid pixels; "
                                "AUROC/FPR95 are undefined")

    def _blocks(self):
        """Yield ascending (keys, pos, neg) for consecutive blocks of distinct keys, the highest block first.

        Each class contributes at most ``_BLOCK`` keys to a block (the lower bound is the larger of the two
        classes' ``_BLOCK``-th key from the top), and at least one.
        """
        kn, kp = self.kn, self.kp
        i_n, i_p = kn.size, kp.size
        while i_n > 0 or i_p > 0:
            cands = []
            if i_n > 0:
                cands.append(kn[max(i_n - _BLOCK, 0)])
            if i_p > 0:
                cands.append(kp[max(i_p - _BLOCK, 0)])
            lo = max(cands)
            s_n = int(np.searchsorted(kn[:i_n], lo, side="left"))
            s_p = int(np.searchsorted(kp[:i_p], lo, side="left"))
            keys, neg, pos = _union_counts(kn[s_n:i_n], self.cn[s_n:i_n], kp[s_p:i_p], self.cp[s_p:i_p])
            yield keys, pos, neg
            i_n, i_p = s_n, s_p

    def _below(self, k) -> tuple[int, int]:
        """(ID pixels, anomaly pixels) with a key below ``k``."""
        return (int(self.cn[:np.searchsorted(self.kn, k, side="left")].sum()),
                int(self.cp[:np.searchsorted(self.kp, k, side="left")].sum()))

    def _pass(self, target: float = 0.95, pick=None):
        """One pass: AUROC, AP, FPR at first TPR >= target, interpolated FPR, F1-optimal key; optional picks."""
        sweep = _Sweep(self.n_pos, self.n_neg, target, pick)
        for keys, pos, neg in self._blocks():
            sweep.block(keys, pos, neg)
        return sweep.result()

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
        below_n, below_p = self._below(_threshold_key(threshold, self.wide))
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


def _run_chunks(v: np.ndarray, descending: bool):
    """``(start, stop)`` of consecutive slices of sorted ``v``, about ``_CHUNK`` entries each, that never split a run
    of equal values (a run longer than that is one slice); from the top when ``descending``."""
    n, c = v.size, _CHUNK
    if descending:
        b = n
        while b > 0:
            a = max(b - c, 0)
            if a > 0:
                a += int(np.searchsorted(v[a:b], v[a], side="right"))  # the run through ``a`` may go on below it
                if a == b:
                    a = int(np.searchsorted(v[:b], v[b - 1], side="left"))
            yield a, b
            b = a
    else:
        a = 0
        while a < n:
            b = min(a + c, n)
            if b < n:
                b = a + int(np.searchsorted(v[a:b], v[b - 1], side="left"))  # the run through ``b - 1`` may go on
                if b == a:
                    b = a + int(np.searchsorted(v[a:], v[a], side="right"))
            yield a, b
            a = b


def _chunk_runs(v: np.ndarray, a: int, b: int, pv: np.ndarray, pc: np.ndarray, flag: np.ndarray, pv_range):
    """Ascending distinct values of ``v[a:b]`` (whole runs) with their anomaly and ID counts (int64).

    ``pv`` / ``pc``: the anomaly class's distinct values (all of them values of ``v``) and counts. ``pv_range``:
    ``(None, i1)`` when the chunk's values are those of ``pv[:i1]`` from some point on (walking down), ``(i0, None)``
    when they are those of ``pv[i0:]`` up to some point (walking up); the chunk's ``(i0, i1)`` is returned last.
    """
    vc = v[a:b]
    if vc[0] == vc[-1]:
        st = np.zeros(1, np.int64)
    else:
        f = flag[:vc.size]
        f[0] = True
        np.not_equal(vc[1:], vc[:-1], out=f[1:])
        st = np.flatnonzero(f)
    vals = vc[st]
    neg = np.empty(st.size, np.int64)
    np.subtract(st[1:], st[:-1], out=neg[:-1])
    neg[-1] = vc.size - st[-1]
    i0, i1 = pv_range
    if i0 is None:
        i0 = int(np.searchsorted(pv[:i1], vals[0], side="left"))
    else:
        i1 = i0 + int(np.searchsorted(pv[i0:], vals[-1], side="right"))
    at = np.searchsorted(vals, pv[i0:i1])
    pos = np.zeros(st.size, np.int64)
    pos[at] = pc[i0:i1]
    neg[at] -= pos[at]
    return vals, pos, neg, (i0, i1)


class _BlockScan:
    """Where the blocks of :meth:`_Hist._blocks` end, found while walking the union from the top.

    A block ends at the larger of two candidates: the ID class's ``_BLOCK``-th key from the block's top (its
    lowest key if fewer remain) and the anomaly class's (known from ``pv``); walking down, that is the first of
    them met.
    """

    def __init__(self, pv: np.ndarray, low_neg):
        self.pv, self.low_neg = pv, low_neg   # low_neg: the lowest ID value (None: no ID pixel)
        self._start(pv.size, low_neg is not None)

    def _start(self, i_p: int, has_neg: bool) -> None:
        self.has_neg, self.n_neg = has_neg, 0
        self.p_cand = self.pv[max(i_p - _BLOCK, 0)] if i_p > 0 else None

    def end_in(self, vals: np.ndarray, neg: np.ndarray):
        """Index in ``vals`` (descending) of the open block's last entry, or None when the block goes on."""
        asc = vals[::-1]
        ends = []
        if self.has_neg:
            seen = self.n_neg + int(np.count_nonzero(neg))
            if seen >= _BLOCK:
                ends.append(int(np.searchsorted(np.cumsum(neg > 0) + self.n_neg, _BLOCK)))
            if self.low_neg >= asc[0]:
                ends.append(vals.size - 1 - int(np.searchsorted(asc, self.low_neg)))
            self.n_neg = seen
        if self.p_cand is not None and self.p_cand >= asc[0]:
            ends.append(vals.size - 1 - int(np.searchsorted(asc, self.p_cand)))
        if not ends:
            return None
        end = min(ends)
        last = vals[end]
        self._start(int(np.searchsorted(self.pv, last, side="left")), self.has_neg and last > self.low_neg)
        return end


class _SortedHist(_Hist):
    """The histogram the one-shot functions build: the keys of all valid scores sorted (ties kept), and the
    anomaly class's distinct keys with their counts. The union is walked chunk by chunk from the top, distinct values and counts
    found on the way, in the blocks of :meth:`_Hist._blocks` (so the float sums, and every number, are the same as
    from the per-class form), without ever materialising it.
    """

    def __init__(self, vv: np.ndarray, pv: np.ndarray, pc: np.ndarray, wide: bool):
        self.vv, self.pv, self.pc, self.wide = vv, pv, pc, wide
        n_pos = int(pc.sum())
        self._totals(vv.size - n_pos, n_pos)

    def _runs(self, descending: bool):
        """Ascending (values, anomaly counts, ID counts) of consecutive chunks of the union."""
        flag = np.empty(min(_CHUNK, self.vv.size), bool)
        rng = (None, self.pv.size) if descending else (0, None)
        for a, b in _run_chunks(self.vv, descending):
            vals, pos, neg, (i0, i1) = _chunk_runs(self.vv, a, b, self.pv, self.pc, flag, rng)
            rng = (None, i0) if descending else (i1, None)
            yield vals, pos, neg

    def _lowest_neg(self):
        for vals, _, neg in self._runs(descending=False):
            hit = np.flatnonzero(neg)
            if hit.size:
                return vals[hit[0]]
        return None

    def _pass(self, target: float = 0.95, pick=None):
        sweep = _Sweep(self.n_pos, self.n_neg, target, pick)
        sweep._reserve(min(2 * _BLOCK, self.vv.size))  # a block holds at most _BLOCK keys of each class
        scan = _BlockScan(self.pv, self._lowest_neg())
        for vals, pos, neg in self._runs(descending=True):
            vals, pos, neg = vals[::-1], pos[::-1], neg[::-1]
            while vals.size:
                end = scan.end_in(vals, neg)
                m = vals.size if end is None else end + 1
                sweep.feed(vals[:m], pos[:m], neg[:m])
                if end is not None:
                    sweep.end_block()
                vals, pos, neg = vals[m:], pos[m:], neg[m:]
        sweep.end_block()
        return sweep.result()

    def _below(self, k) -> tuple[int, int]:
        below = int(np.searchsorted(self.vv, k, side="left"))
        below_p = int(self.pc[:np.searchsorted(self.pv, k, side="left")].sum())
        return below - below_p, below_p

    def n_distinct(self) -> int:
        return sum(v.size for v, _, _ in self._runs(descending=False))


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
@dataclass
class BatchSummary:
    """What one batch adds to a :class:`PixelMetrics`: made by :meth:`PixelMetrics.summarize`, folded in by
    :meth:`PixelMetrics.add_summary` (picklable: worker processes summarize frames, the parent adds the summaries in
    frame order and gets exactly the state that ``update`` with the frames would have given).

    ``kind``: ``"exact"`` (``arrays``: per class, the sorted distinct keys and their counts; ``wide``: uint64 keys
    of float64 scores), ``"bins"`` (per class, the count per bin of ``edges``) or ``"raw"`` (a binned accumulator
    whose edges were not fixed yet: the valid scores of each class, float64).
    """

    bins: int | None
    kind: str
    arrays: tuple
    wide: bool = False
    edges: np.ndarray | None = None


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
            self.add_summary(self.summarize(scores, labels))

    def summarize(self, scores: np.ndarray, labels: np.ndarray) -> "BatchSummary":  # pragma: no cover - abstract
        """What ``update`` would add for a numpy batch, without adding it (the state is only read)."""
        raise NotImplementedError

    def add_summary(self, summary: "BatchSummary") -> None:  # pragma: no cover - abstract
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

    def summarize(self, scores: np.ndarray, labels: np.ndarray) -> "BatchSummary":
        """Per class, the batch's sorted distinct keys with their counts (keys made in one in-cache pass)."""
        wide, kn, skip, kp = _split_sorted(*_flat_checked(scores, labels), "neg")
        return BatchSummary(None, "exact", (_compact_runs(kn, skip), _compact_runs(kp)), wide=wide)

    def add_summary(self, summary: "BatchSummary") -> None:
        if summary.kind != "exact":
            raise OodscoreError(f"add_summary: a {summary.kind!r} summary cannot be added to an exact accumulator")
        if summary.wide:
            self._widen()
        for cls, (k, c) in enumerate(summary.arrays):
            if self._wide and k.dtype == np.uint32:
                k = _f64_to_key(_key_to_f32(k).astype(np.float64))
            self._add_run(cls, k, c)

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

    def _bin_count(self, v: np.ndarray) -> np.ndarray:
        if not v.size:
            return np.zeros(self.edges.size, np.int64)
        idx = np.clip(np.searchsorted(self.edges, v.astype(np.float64), side="right") - 1, 0, None)
        return np.bincount(idx, minlength=self.edges.size)

    def _bin_add(self, cls: int, v: np.ndarray) -> None:
        if v.size:
            self._bin_counts[cls] += self._bin_count(v)

    def summarize(self, scores: np.ndarray, labels: np.ndarray) -> "BatchSummary":
        """The counts per bin once the edges are fixed; before that the valid scores themselves (float64)."""
        neg, pos = _split_numpy(scores, labels)
        if self.edges is None:
            return BatchSummary(self.bins, "raw", (neg.astype(np.float64), pos.astype(np.float64)))
        return BatchSummary(self.bins, "bins", (self._bin_count(neg), self._bin_count(pos)), edges=self.edges)

    def add_summary(self, summary: "BatchSummary") -> None:
        if summary.kind == "raw":
            self._update_numpy(*summary.arrays)
            return
        if summary.kind != "bins" or self.edges is None or not np.array_equal(self.edges, summary.edges):
            raise OodscoreError("add_summary: the summary was not binned with this accumulator's quantile edges; "
                                "summarize with this accumulator or its empty_copy()")
        for cls in (0, 1):
            self._bin_counts[cls] += summary.arrays[cls]

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

    def summarize(self, scores, labels) -> BatchSummary:
        """What ``update(scores, labels)`` would add, without adding it; this accumulator is only read.

        Exact mode: per class, the batch's sorted distinct scores with their counts. Binned mode: the counts per bin
        once this accumulator's edges are fixed, else the valid scores (they may fix the edges when added).
        Torch tensors are read on the CPU.
        """
        _check_shapes(scores, labels)
        return self._state.summarize(*_numpy_batch(scores, labels))

    def add_summary(self, summary: BatchSummary) -> "PixelMetrics":
        """Fold in a :meth:`summarize` result (its arrays are taken over); returns self.

        Adding the summaries of batches in the batches' order gives exactly the state ``update`` with each batch
        gives (binned mode: summaries must come from this accumulator or its :meth:`empty_copy` made after its
        edges were fixed, or be ``"raw"``).
        """
        if not isinstance(summary, BatchSummary):
            raise OodscoreError(f"add_summary: expected a BatchSummary, got {type(summary).__name__}")
        if summary.bins != self.bins:
            raise OodscoreError(f"add_summary: bins differ ({self.bins} vs {summary.bins})")
        self._state.add_summary(summary)
        return self

    def empty_copy(self) -> "PixelMetrics":
        """An empty accumulator of this class with this one's settings and (binned mode) its fixed edges, to
        summarize batches for it (e.g. in a worker process)."""
        out = type(self)(bins=self.bins, edge_samples=self.edge_samples, seed=self.seed)
        if self.edges is not None:
            out._state._set_edges(self.edges.copy())
        return out

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
def _sorted_hist(scores, labels) -> _SortedHist:
    """The exact histogram of a numpy batch for the one-shot functions: the valid scores sorted once (one in-cache
    pass picks them and the anomaly scores out), and the anomaly class's distinct scores with their counts."""
    wide, keys, skip, kp = _split_sorted(*_flat_checked(scores, labels), "valid")
    pv, pc = _compact_runs(kp)
    return _SortedHist(keys[skip:], pv, pc, wide)


def _numpy_batch(scores, labels):
    """numpy arrays of a batch (torch tensors are moved to the CPU; bfloat16 is read as float32)."""
    if not (_is_torch(scores) or _is_torch(labels)):
        return scores, labels
    import torch

    s, y = torch.as_tensor(scores).detach(), torch.as_tensor(labels).detach()
    return (s.float() if s.dtype == torch.bfloat16 else s).cpu().numpy(), y.cpu().numpy()


def _hist_of(scores, labels) -> _Hist:
    _check_shapes(scores, labels)
    if not (_is_torch(scores) or _is_torch(labels)):
        return _sorted_hist(scores, labels)
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
