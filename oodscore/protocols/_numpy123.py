"""What the SMIYC code's pinned numpy (1.23.3, its ``requirements.txt``) does where newer numpy does otherwise.

Two behaviours of numpy 1.x change the SMIYC numbers and are gone from numpy >= 1.25 / 2.0, so they are reproduced
here explicitly (the rest of ``smiyc.py`` makes the same numpy calls as the official code, which give the same
results on every numpy we support):

* **Argsort tie order.** ``aggregate_dynamic_bins`` sorts all frames' bin edges with ``np.argsort(thresholds)[::-1]``
  (default kind). numpy 1.23 runs its introsort (``npysort/quicksort.cpp``, ``aquicksort_``); numpy >= 1.25 runs
  SIMD sorting networks (x86-simd-sort, AVX-512 / AVX2) whose order of equal keys differs and depends on the CPU.
  Only the first entry of the descending order matters (``curves_from_cmats`` keeps index 0 even inside a run of
  equal thresholds), i.e. the index that ``np.argsort`` puts *last*: :func:`argsort_last` replays numpy 1.23's
  introsort on the partitions that hold the last position (median-of-3 pivot, Hoare partition, insertion sort
  up to 16 elements, heapsort past ``2 * floor(log2 n)`` levels), vectorised, in O(n).
* **Value-based casting.** ``anomaly_p > thresh_p`` with a float16 map and the ``np.float64`` threshold read back
  from HDF5 compares in float16 under numpy 1.x (the threshold rounded to the nearest float16, since its value fits
  ``np.min_scalar_type``) but in float64 under numpy 2 (NEP 50); likewise ``vrange * 1e-2`` with a float16 scalar
  is float64 under numpy 1.x and float16 under numpy 2. :func:`legacy_threshold` gives the threshold in the dtype
  numpy 1.23 compares in.
"""
from __future__ import annotations

import numpy as np

_SMALL_QUICKSORT = 15  # npysort/npysort_common.h: SMALL_QUICKSORT


def legacy_threshold(t) -> np.ndarray:
    """``t`` (a float64 scalar) as the 0-d array numpy 1.23 compares a float16 array with.

    numpy 1.x value-based casting: ``np.result_type(float16_array, np.float64(t))`` is
    ``promote_types(float16, min_scalar_type(t))``: float16 for ``|t| < 65000`` (and inf / NaN), float32 up to
    ~3.4e38. The cast rounds to nearest, as numpy does.
    """
    t = np.float64(t)
    return np.asarray(t).astype(np.promote_types(np.float16, np.min_scalar_type(t)))


def _swap(idx: np.ndarray, a: int, b: int) -> None:
    idx[a], idx[b] = idx[b], idx[a]


def _partition(idx: np.ndarray, v: np.ndarray, pl: int, pr: int) -> int:
    """One partition step of numpy 1.23's ``aquicksort_`` on ``idx[pl:pr + 1]`` (in place); returns the pivot's
    final position ``pi``.

    The Hoare loop ``do ++pi while v < vp; do --pj while vp < v; if pi >= pj break; swap`` pairs the k-th
    position from the left holding a value >= vp with the k-th from the right holding a value <= vp, and swaps
    the pairs until they cross: positions between the two pointers are never touched before the pointers reach
    them, so the pairs follow from the values as they were before the loop.
    """
    pm = pl + ((pr - pl) >> 1)
    if v[idx[pm]] < v[idx[pl]]:
        _swap(idx, pm, pl)
    if v[idx[pr]] < v[idx[pm]]:
        _swap(idx, pr, pm)
    if v[idx[pm]] < v[idx[pl]]:
        _swap(idx, pm, pl)
    vp = v[idx[pm]]
    _swap(idx, pm, pr - 1)
    w = v[idx[pl + 1:pr - 1]]
    left = np.append(pl + 1 + np.flatnonzero(w >= vp), pr - 1)           # stops of ++pi (pr - 1 holds vp)
    right = np.append((pl + 1 + np.flatnonzero(w <= vp))[::-1], pl)      # stops of --pj (v[pl] <= vp)
    m = min(left.size, right.size)
    k = int(np.argmax(left[:m] >= right[:m]))                             # the first pair that crosses
    pi = int(left[k]) if k == 0 else int(min(left[k], right[k - 1]))      # past right[k-1]: a swapped-in value
    a, b = left[:k], right[:k]
    idx[a], idx[b] = idx[b], idx[a].copy()
    _swap(idx, pi, pr - 1)
    return pi


def _heap_last(v: np.ndarray, seg: np.ndarray) -> int:
    """The element numpy's ``aheapsort_`` puts last in ``seg``: the heap's root once built (the first extraction
    moves it to the end, which no later step touches)."""
    vals = v[seg].tolist()
    a = [0, *range(len(seg))]               # 1-based heap of positions into seg
    n = len(seg)
    for top in range(n >> 1, 0, -1):
        tmp, i, j = a[top], top, top << 1
        while j <= n:
            if j < n and vals[a[j]] < vals[a[j + 1]]:
                j += 1
            if vals[tmp] < vals[a[j]]:
                a[i], i, j = a[j], j, j + j
            else:
                break
        a[i] = tmp
    return int(seg[a[1]])


def argsort_last(v) -> int:
    """The index that numpy 1.23's ``np.argsort(v)`` (default kind, float64, no NaN) puts last.

    Follows only the segments holding the last position: after each partition that is the right part, which the
    C code either keeps partitioning (the smaller part; no depth check) or pushes on its stack and pops later
    (the larger part; heapsort if its depth budget went negative).
    """
    v = np.ascontiguousarray(v, np.float64)
    n = v.size
    if n == 0:
        raise ValueError("argsort_last: empty array")
    idx = np.arange(n)
    pl, pr = 0, n - 1
    depth = 2 * (n.bit_length() - 1)        # npy_get_msb(num) * 2
    popped = True
    while True:
        if popped and depth < 0:
            return _heap_last(v, idx[pl:pr + 1])
        if pr - pl <= _SMALL_QUICKSORT:     # insertion sort: stable, the last of the maxima stays last
            seg = idx[pl:pr + 1]
            w = v[seg]
            return int(seg[np.flatnonzero(w == w.max())[-1]])
        pi = _partition(idx, v, pl, pr)
        depth -= 1
        popped = (pi - pl) < (pr - pi)      # right part larger: pushed, checked when popped
        pl = pi + 1
