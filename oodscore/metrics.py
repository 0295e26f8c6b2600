"""Exact pixel-level anomaly metrics (DESIGN §4.5): AUROC, AP, FPR95, F1 at a threshold; streaming and mergeable.

Conventions
-----------
- Labels: 0 = in-distribution (negative), 1 = anomaly (positive), anything else is void and ignored.
- Scores: higher = more anomalous. A pixel is *predicted anomalous* at threshold ``t`` iff ``score >= t``.
  Candidate thresholds are the distinct score values (as in sklearn's ``roc_curve`` / ``precision_recall_curve``),
  so the F1-optimal threshold ``t*`` is itself a score value and ``score >= t*`` reproduces its confusion counts.
- AUROC: trapezoid area under the ROC (== ``sklearn.metrics.roc_auc_score``), computed exactly (an integer
  pair count) and rounded once.
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

Batches are read in one pass of in-cache chunks (labels compared, scores converted to keys: the ID keys kept in
place, zero elsewhere, the anomaly keys compressed out), then each class is sorted once and reduced to (key, count)
runs. ``PixelMetrics.summarize`` returns those runs without adding them (``add_summary`` adds them, in order):
worker processes summarize frames for a parent.

Every metric is one pass over the anomaly class's distinct keys only (the ROC and PR curves only turn at them):
for each, the anomaly pixels at or above it (a cumsum) and the ID pixels below and equal to it (searched in the ID
keys, block by block in cache). AUROC is the Mann-Whitney pair count with ties as halves (exactly twice the
trapezoid area), an integer, divided once: correctly rounded. AP's terms are summed by one ``np.sum`` per block of
``_BLOCK`` anomaly keys: the numbers depend on ``_BLOCK`` only, never on the path, chunk sizes or threads.

One-shot functions (``pixel_metrics``, ``auroc``, ...) on numpy arrays cut the batch into one part per thread;
each thread splits its part and sorts its ID keys (numpy releases the GIL while it sorts and searches); the
anomaly keys are merged, and the pass runs its chunks in the same threads, the ID pixels below a key being summed
over the parts. At 10^8 float32 pixels this takes ~1.3-1.4 ``np.sort`` of the same scores on the development
machine's 2 cores (``bench/metrics.py``; numpy's AVX-512 sort; ~1.9 on one thread): of ~1.0 s of CPU, the split
~0.2, the sort ~0.36, the search of 5 x 10^6 anomaly keys ~0.3 (ties included), their arithmetic ~0.05.

Binned mode (``bins=int``) keeps one count per quantile bin (SMIYC-style): edges are quantiles of the first
``edge_samples`` valid scores seen (pooled over both classes), each bin is ``[edge_i, edge_{i+1})`` and acts as one
tied score equal to its lower edge (the last bin is ``[max, inf)``; scores below the first edge join the first bin).
Uniform bins over min..max are never used: they collapse heavy tails into one bin.
"""
from __future__ import annotations

import itertools
import os
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
_SEARCH_BLOCK = 1 << 12   # needles per searchsorted call: their haystack range then stays in cache
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


def _searchsorted_blocked(ka: np.ndarray, kb: np.ndarray, j0: int = 0, j1: int | None = None,
                          side: str = "left") -> np.ndarray:
    """``np.searchsorted(ka, kb[j0:j1], side)`` for sorted ``kb``, block by block on the slice of ``ka`` each
    block spans.

    A plain searchsorted of ~10^7 sorted needles in a ~10^8 haystack misses the cache on every probe; searching
    each block of needles in only its own range of the haystack is faster and gives the same positions.
    """
    j1 = kb.size if j1 is None else j1
    out = np.empty(j1 - j0, np.int64)
    for j in range(j0, j1, _SEARCH_BLOCK):
        b = kb[j:min(j + _SEARCH_BLOCK, j1)]
        lo = int(np.searchsorted(ka, b[0], side="left"))
        hi = int(np.searchsorted(ka, b[-1], side="right"))
        np.add(np.searchsorted(ka[lo:hi], b, side=side), lo, out=out[j - j0:j - j0 + b.size])
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


def _split_pass(s: np.ndarray, y: np.ndarray, wide: bool):
    """``(keys, number of others, anomaly keys)``: ``keys`` holds the keys of the label-0 pixels' scores and 0 for
    the others (0 is below the key of every finite score: after a sort they come first); the label-1 keys are
    compressed out.

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
    wa = wp = 0
    for a in range(0, n, c):
        w = min(c, n - a)
        np.equal(y[a:a + w], 0, out=is0[:w])
        np.equal(y[a:a + w], 1, out=is1[:w])
        if scratch is not None and s.dtype != np.float16:  # only a float64 / integer chunk needs the valid mask
            np.logical_or(is0[:w], is1[:w], out=valid[:w])
        v = _chunk_values(s[a:a + w], scratch, valid[:w], wide)
        if v is None:
            return None
        kw, mw = k[:w], m[:w]      # the keys of the chunk (as _to_key_inplace, into scratch)
        np.add(v, fdt(0.0), out=kw.view(fdt))  # -0.0 -> 0.0
        np.right_shift(kw.view(idt), 8 * kw.itemsize - 1, out=mw.view(idt))
        mw |= sign
        kw ^= mw
        np.multiply(kw, is0[:w], out=out_a[a:a + w])
        kp = np.compress(is1[:w], kw)  # faster than kw[is1] for a few per cent selected
        out_p[wp:wp + kp.size] = kp
        wa, wp = wa + w - int(np.count_nonzero(is0[:w])), wp + kp.size
    out_p.resize(wp, refcheck=False)
    return out_a, wa, out_p


def _finite_keys(k: np.ndarray, skip: int, wide: bool) -> bool:
    """Whether the sorted keys ``k[skip:]`` are all keys of finite scores."""
    lo, hi = (k.dtype.type(v) for v in _FINITE_KEYS[wide])  # typed: a Python int would cast all of ``k``
    # keys of NaN / inf sort to the ends; those of -inf and negative NaNs (one of them is 0) before ``lo``
    return k.size <= skip or (int(np.searchsorted(k, lo, side="right")) == skip and k[-1] < hi)


def _split_sorted(s: np.ndarray, y: np.ndarray, threads: int = 1):
    """``(wide, ID parts, anomaly keys)`` of :func:`_flat_checked` arrays, every key array sorted.

    The batch is cut into ``threads`` consecutive parts, each split (:func:`_split_pass`) and sorted in its own
    thread (numpy releases the GIL while it sorts): each ID part is ``(keys, skip)``, its keys ``keys[skip:]``;
    the anomaly keys of all parts are merged into one sorted array. float16 / float32 scores, and float64 /
    integer scores that float32 holds exactly on every valid pixel, are read as float32 (uint32 keys); other
    scores as float64 (``wide``: uint64 keys). Non-finite scores on valid pixels raise (one line).
    """
    if s.dtype.kind == "f" and s.dtype.itemsize > 8:  # long double: read as float64
        with np.errstate(over="ignore"):
            s = s.astype(np.float64)
    n = s.size
    cuts = [min(n, -(-n * i // threads // _CHUNK) * _CHUNK) for i in range(threads + 1)] if threads > 1 else [0, n]
    spans = [(a, b) for a, b in itertools.pairwise(cuts) if b > a] or [(0, n)]

    def split(span, wide):
        out = _split_pass(s[span[0]:span[1]], y[span[0]:span[1]], wide)
        if out is not None:
            out[0].sort()
            out[2].sort()
        return out

    with _Pool(len(spans)) as pool:
        for wide in (False, True):
            parts = list(pool.map(lambda sp, w=wide: split(sp, w), spans))
            if all(p is not None for p in parts):
                break
    kp = parts[0][2] if len(parts) == 1 else np.sort(np.concatenate([p[2] for p in parts]), kind="stable")
    if not (all(_finite_keys(k, skip, wide) for k, skip, _ in parts) and _finite_keys(kp, 0, wide)):
        _split_numpy(s, y)  # raises the general path's message (counts per class)
        raise OodscoreError("scores: non-finite (NaN/inf) values on non-void pixels")
    return wide, [(k, skip) for k, skip, _ in parts], kp


class _Pool:
    """A thread pool of ``n`` workers as a context manager, or in-thread ``map`` when ``n`` is 1."""

    def __init__(self, n: int):
        self.n = n
        self._ex = None

    def __enter__(self):
        if self.n > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._ex = ThreadPoolExecutor(self.n)
        return self

    def map(self, fn, items):
        return list(map(fn, items) if self._ex is None else self._ex.map(fn, items))

    def __exit__(self, *exc):
        if self._ex is not None:
            self._ex.shutdown()


_PARALLEL_MIN = 1 << 22  # pixels below which the one-shot functions use one thread (a pool costs ~0.1 ms)


def _threads(threads, n: int) -> int:
    """Threads for a one-shot batch of ``n`` pixels: ``threads``, or (None) the CPUs this process may use (<= 8)."""
    if threads is None:
        try:
            avail = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            avail = os.cpu_count() or 1
        threads = min(8, avail) if n >= _PARALLEL_MIN else 1
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise OodscoreError(f"threads: expected None or an integer >= 1, got {threads!r}")
    return int(threads)


# ----------------------------------------------------------------------------- histogram -> metrics
_BLOCK = 1 << 22  # distinct anomaly keys per block of the AP sum (one np.sum each): the numbers depend on it only
_CHUNK = 1 << 15  # entries per in-cache step of the passes over whole arrays (split, unique runs)
_U_EXACT = 1 << 63  # AUROC's pair count is summed exactly (int64) while 2 x anomaly x ID pixels stays below this


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


class _NegRuns:
    """The ID class as sorted distinct keys with counts (a streaming state): for ascending anomaly keys, the ID
    pixels below and equal to each. Calls must come in ascending key order (a running prefix sum is kept)."""

    def __init__(self, kn: np.ndarray, cn: np.ndarray):
        self.kn, self.cn = kn, cn
        self._i, self._run = 0, 0  # kn[:_i] holds _run pixels

    def counts(self, keys: np.ndarray):
        kn, cn = self.kn, self.cn
        idx = _searchsorted_blocked(kn, keys)
        starts = np.concatenate(([self._i], idx))
        seg = np.zeros(idx.size, np.int64)  # ID pixels between consecutive needles
        grow = starts[:-1] < starts[1:]
        if grow.any():  # (the slice starts at _i: reduceat casts all of the array it is given)
            seg[grow] = np.add.reduceat(cn[self._i:int(idx[-1])], starts[:-1][grow] - self._i, dtype=np.int64)
        lt = np.cumsum(seg)
        lt += self._run
        self._i, self._run = int(idx[-1]), int(lt[-1])
        eq = np.zeros(idx.size, np.int64)
        hit = np.flatnonzero(idx < kn.size)
        hit = hit[kn[idx[hit]] == keys[hit]]
        eq[hit] = cn[idx[hit]]
        return lt, eq


class _NegParts:
    """The ID class as sorted key arrays with ties kept (the one-shot path: one per thread that sorted it): for
    ascending anomaly keys, the ID pixels below and equal to each, summed over the parts. Stateless: chunks of
    anomaly keys may be looked up in any order, by several threads."""

    def __init__(self, parts: list):
        self.parts = parts

    def counts(self, keys: np.ndarray):
        lt, eq = np.zeros(keys.size, np.int64), np.zeros(keys.size, np.int64)
        for part in self.parts:
            if not part.size:
                continue
            below = _searchsorted_blocked(part, keys)
            # equal entries follow ``below``: count short runs by stepping (float32 scores tie a few times per
            # value; the first step on every key at once, the next ones on the keys still matching), then search
            # the end of the runs still open
            hit = part[np.minimum(below, part.size - 1)] == keys
            e = hit.astype(np.int64)
            at = np.flatnonzero(hit)
            for j in range(1, 4):
                nxt = below[at] + j
                keep = nxt < part.size
                at = at[keep][part[nxt[keep]] == keys[at[keep]]]
                if not at.size:
                    break
                e[at] += 1
            else:
                if at.size:
                    e[at] = _searchsorted_blocked(part, keys[at], side="right") - below[at]
            lt += below
            eq += e
        return lt, eq


def _pos_chunk(keys, c, below: int, neg, P: int, N: int, target: float, exact_u: bool, terms: np.ndarray):
    """One chunk of :func:`_pos_pass` (``below``: anomaly pixels under its first key); AP terms into ``terms``.

    Returns ``(U, best F1, its key, FPR at the chunk's highest key with TPR >= target or None, interpolated FPR
    or None)``.
    """
    Pf, Nf = float(P), float(N)
    c = c.astype(np.int64)
    lt, eq = neg.counts(keys)
    tp = np.cumsum(c)                   # anomaly pixels >= each key: P - below - (cumsum - c)
    np.subtract(P - below + c, tp, out=tp)
    v = 2 * lt + eq
    u = int(np.dot(c, v)) if exact_u else float(np.dot(c.astype(np.float64), v.astype(np.float64)))
    tf = tp.astype(np.float64)
    sf = (tp + (N - lt)).astype(np.float64)   # TP + FP, exact
    tpr = tf / Pf
    prev = (tp - c).astype(np.float64) / Pf   # TPR of the ROC point just above the key
    np.multiply(tpr - prev, tf / sf, out=terms)
    f1 = tf * 2.0 / (sf + Pf)
    j = f1.size - 1 - int(np.argmax(f1[::-1]))  # the last maximum: the highest key
    fpr_first = interp = None
    m = int(np.count_nonzero(tpr >= target))    # TPR falls as the key rises: the entries meeting it come first
    if m:
        fpr_first = float(N - lt[m - 1]) / Nf
    m = int(np.count_nonzero(tpr > target))
    if m:
        x0, y0 = prev[m - 1], float(N - lt[m - 1] - eq[m - 1]) / Nf
        slope = (float(N - lt[m - 1]) / Nf - y0) / (tpr[m - 1] - x0)
        interp = float(slope * (target - x0) + y0)
    return u, float(f1[j]), keys[j], fpr_first, interp


def _pos_pass(kp: np.ndarray, cp: np.ndarray, neg, n_pos: int, n_neg: int, target: float = 0.95,
              pool: "_Pool | None" = None) -> dict:
    """Every metric from the anomaly class's distinct keys (ascending) and, for each, the ID pixels below / equal.

    The ROC and PR curves only change direction at anomaly keys: a threshold at an ID-only key has the TP of the
    anomaly key above it and more FP, so it is never the F1 optimum (ties go to the higher threshold), adds no AP
    term, and the TPR targets are first met at anomaly keys. So one pass over the distinct anomaly keys, with
    integer counts (exact in float64 below 2^53), gives every number:

    - AUROC = U / (2 P N), ``U = sum_k c_k (2 below_k + equal_k)`` (the Mann-Whitney count with ties as halves,
      which is exactly twice the trapezoid area): an integer summed exactly, divided once (correctly rounded);
    - AP = ``sum (TP_k / P - (TP_k - c_k) / P) * TP_k / (TP_k + FP_k)``, summed by one ``np.sum`` per block of
      ``_BLOCK`` keys from the lowest (the numbers thus depend on ``_BLOCK`` only, the same on every path);
    - FPR at the highest key with TPR >= target, the interpolation between the last ROC point with TPR <= target
      (the point just above the first key past it) and that key, and the F1-optimal key.

    The chunks of a block are independent given the anomaly pixels below each: ``pool`` may run them in threads
    (``neg`` must then be stateless); their results are combined in key order.
    """
    exact_u = 2 * n_pos * n_neg < _U_EXACT
    u, ap, below = 0, 0.0, 0
    fpr_first = interp = best_key = None
    best_f1 = -1.0
    step = max(1, 2 * _CHUNK)
    with (pool or _Pool(1)) as run:
        for b0 in range(0, kp.size, _BLOCK):
            b1 = min(b0 + _BLOCK, kp.size)
            terms = np.empty(b1 - b0)
            starts = np.arange(b0, b1, step)
            under = np.cumsum(np.add.reduceat(cp[b0:b1], starts - b0, dtype=np.int64))
            under = np.concatenate(([below], below + under))
            below = int(under[-1])

            def chunk(i, b0=b0, b1=b1, terms=terms, starts=starts, under=under):
                a, e = int(starts[i]), min(int(starts[i]) + step, b1)
                return _pos_chunk(kp[a:e], cp[a:e], int(under[i]), neg, n_pos, n_neg, target, exact_u,
                                  terms[a - b0:e - b0])

            for cu, f1, key, first, itp in run.map(chunk, range(starts.size)):
                u += cu
                if f1 >= best_f1:   # chunks come in ascending key order: among equal F1 the highest key wins
                    best_f1, best_key = f1, key
                fpr_first = fpr_first if first is None else first
                interp = interp if itp is None else itp
            ap += float(np.sum(terms))
    auroc = u / (2 * n_pos * n_neg) if exact_u else u / (2.0 * n_pos * n_neg)
    return {"auroc": float(auroc), "ap": ap, "fpr95": fpr_first, "fpr95_interp": 1.0 if interp is None else interp,
            "best_key": best_key}


class _Counts:
    """What every metric needs from an exact histogram: the class totals, the anomaly class's distinct keys
    (``kp``, ascending) with counts (``cp``), and the ID pixels below / equal to them (``_pass``), or below any
    key (``_below``)."""

    wide = False

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

    def _pass(self, target: float = 0.95) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _below(self, k) -> tuple[int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

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


class _Hist(_Counts):
    """Exact histogram of both classes: per class, sorted unique keys (ascending) and counts.

    Metrics come from one pass over the anomaly keys (:func:`_pos_pass`); curves from one walk over the union of
    both classes' keys, block by block, which is never materialised whole.
    """

    def __init__(self, kn, cn, kp, cp, wide: bool):
        self.kn, self.cn, self.kp, self.cp, self.wide = kn, cn, kp, cp, wide
        self._totals(int(cn.sum()), int(cp.sum()))

    def _pass(self, target: float = 0.95) -> dict:
        return _pos_pass(self.kp, self.cp, _NegRuns(self.kn, self.cn), self.n_pos, self.n_neg, target)

    def _blocks(self):
        """Yield ascending (keys, pos, neg) for consecutive blocks of the union's distinct keys, the highest first.

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

    def n_distinct(self) -> int:
        return sum(k.size for k, _, _ in self._blocks())

    def curves(self, max_points: int) -> dict:
        """Every ``n / max_points``-th ROC point of the union's distinct keys, from the top (endpoints kept)."""
        n = self.n_distinct() + 1  # + the ROC origin
        idx = np.unique(np.round(np.linspace(0, n - 1, min(n, max_points))).astype(np.int64))
        pick = idx[idx > 0] - 1        # union entries, counted from the top
        keys, tps, fps = [], [0], [0]
        tp = fp = off = 0
        for k, pos, neg in self._blocks():
            k, pos, neg = k[::-1], pos[::-1], neg[::-1]
            lo, hi = np.searchsorted(pick, [off, off + k.size])
            sel = pick[lo:hi] - off
            ct, cf = np.cumsum(pos, dtype=np.int64) + tp, np.cumsum(neg, dtype=np.int64) + fp
            keys.append(k[sel])
            tps.append(ct[sel])
            fps.append(cf[sel])
            tp, fp, off = int(ct[-1]), int(cf[-1]), off + k.size
        keys = np.concatenate(keys)
        tps = np.concatenate([np.ravel(t) for t in tps]).astype(np.float64)
        fps = np.concatenate([np.ravel(f) for f in fps]).astype(np.float64)
        vals = _key_to_f64(keys.astype(np.uint64)) if self.wide else _key_to_f32(keys).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tps + fps > 0, tps / np.maximum(tps + fps, 1), 1.0)
        return {"fpr": fps / self.n_neg, "tpr": tps / self.n_pos, "precision": precision,
                "recall": tps / self.n_pos, "thresholds": np.concatenate(([np.inf], vals))}


class _PartsHist(_Counts):
    """The histogram the one-shot functions build: the ID keys as sorted parts with ties kept (one per thread
    that split and sorted them), and the anomaly class's distinct keys with their counts. Metrics only."""

    def __init__(self, parts: list, pv: np.ndarray, pc: np.ndarray, wide: bool, threads: int):
        self.parts, self.kp, self.cp, self.wide, self.threads = parts, pv, pc, wide, threads
        self._totals(sum(p.size for p in parts), int(pc.sum()))

    def _pass(self, target: float = 0.95) -> dict:
        return _pos_pass(self.kp, self.cp, _NegParts(self.parts), self.n_pos, self.n_neg, target,
                         _Pool(self.threads))

    def _below(self, k) -> tuple[int, int]:
        return (sum(int(np.searchsorted(p, k, side="left")) for p in self.parts),
                int(self.cp[:np.searchsorted(self.kp, k, side="left")].sum()))


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
        wide, [(kn, skip)], kp = _split_sorted(*_flat_checked(scores, labels))
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
def _parts_hist(scores, labels, threads: int | None) -> _PartsHist:
    """The exact histogram of a numpy batch for the one-shot functions: one in-cache pass per thread splits its
    part of the batch into ID and anomaly keys, each part sorted in its thread; the anomaly keys reduced to
    distinct values with their counts."""
    s, y = _flat_checked(scores, labels)
    t = _threads(threads, s.size)
    wide, parts, kp = _split_sorted(s, y, t)
    pv, pc = _compact_runs(kp)
    return _PartsHist([k[skip:] for k, skip in parts], pv, pc, wide, t)


def _numpy_batch(scores, labels):
    """numpy arrays of a batch (torch tensors are moved to the CPU; bfloat16 is read as float32)."""
    if not (_is_torch(scores) or _is_torch(labels)):
        return scores, labels
    import torch

    s, y = torch.as_tensor(scores).detach(), torch.as_tensor(labels).detach()
    return (s.float() if s.dtype == torch.bfloat16 else s).cpu().numpy(), y.cpu().numpy()


def _hist_of(scores, labels, threads: int | None = None) -> _Counts:
    _check_shapes(scores, labels)
    if not (_is_torch(scores) or _is_torch(labels)):
        return _parts_hist(scores, labels, threads)
    _threads(threads, 0)  # checked, unused: tensors go through the accumulator
    m = PixelMetrics()
    m.update(scores, labels)
    return m._state.counts()


def pixel_metrics(scores, labels, threshold: float | None = None, *, threads: int | None = None) -> dict:
    """All pixel metrics at once (exact). See the module docstring for the conventions.

    Parameters
    ----------
    scores : array or tensor
        Anomaly scores, higher = more anomalous.
    labels : array or tensor, same shape
        0 = ID, 1 = anomaly, anything else void.
    threshold : float, optional
        Threshold for F1/precision/recall/FPR (``score >= threshold`` is anomalous); None -> F1-optimal.
    threads : int, optional
        Threads that split and sort numpy input (numpy releases the GIL while it sorts and searches); None: the
        CPUs this process may use, at most 8, from 2^22 pixels on. The numbers do not depend on it.

    Returns
    -------
    dict
        ``auroc, ap, fpr95, fpr95_interp, threshold, f1, precision, recall, fpr, n_pos, n_neg``.
    """
    t = _check_threshold(threshold)
    return _hist_of(scores, labels, threads).metrics(t)


def auroc(scores, labels, *, threads: int | None = None) -> float:
    """Area under the ROC (trapezoid, computed exactly; == ``sklearn.metrics.roc_auc_score``); ``threads`` as in
    :func:`pixel_metrics`."""
    return _hist_of(scores, labels, threads).auroc()


def average_precision(scores, labels, *, threads: int | None = None) -> float:
    """Step-wise average precision (== ``sklearn.metrics.average_precision_score``); ``threads`` as in
    :func:`pixel_metrics`."""
    return _hist_of(scores, labels, threads).ap()


def fpr_at_tpr(scores, labels, tpr: float = 0.95, *, threads: int | None = None) -> float:
    """FPR at the first threshold (scanning scores from high to low) where TPR >= ``tpr``; ``threads`` as in
    :func:`pixel_metrics`."""
    if not 0.0 < float(tpr) <= 1.0:
        raise OodscoreError(f"tpr: expected a value in (0, 1], got {tpr!r}")
    return _hist_of(scores, labels, threads).fpr_at_tpr(float(tpr))
