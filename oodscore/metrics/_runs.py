"""Runs: sorted unique keys with their counts, the exact state's storage, and the operations on them.

Every function here keeps the keys sorted and unique. Counts are ``uint32`` while a class has fewer than 2^32 pixels
(no count can then overflow) and ``uint64`` past that. Merges grow the larger run's arrays in place
(:func:`insert_disjoint`), so that a merge never holds two copies of a large run.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from . import _sizes

U32_MAX = (1 << 32) - 1  # counts stay uint32 while a class has at most this many pixels (no count can exceed it)




def count_dtype(total: int) -> type[np.unsignedinteger]:
    """The count dtype of a class of ``total`` pixels: uint32 while no count can overflow it, else uint64."""
    return np.uint32 if total <= U32_MAX else np.uint64


def unique_counts_sorted(sorted_keys: np.ndarray, counts: np.ndarray | None = None):
    """Distinct values of a sorted array with their (summed) counts (uint32 when they cannot overflow it)."""
    n = sorted_keys.size
    total = n if counts is None else int(counts.sum())
    if n == 0:
        return sorted_keys, np.zeros(0, count_dtype(total))
    flag = np.empty(n, bool)  # 1 byte per key instead of two int64 index temporaries
    flag[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=flag[1:])
    starts = np.flatnonzero(flag)
    del flag
    if counts is None:
        c = np.empty(starts.size, count_dtype(total))  # run lengths, written straight into the count dtype
        np.subtract(starts[1:], starts[:-1], out=c[:-1], casting="unsafe")
        c[-1] = n - starts[-1]
    else:
        c = np.add.reduceat(counts.astype(np.uint64, copy=False), starts).astype(count_dtype(total))
    return sorted_keys[starts], c


def compact_runs(v: np.ndarray, start: int = 0):
    """Distinct values of the sorted ``v[start:]`` and their run lengths, ``CHUNK`` entries at a time (in cache).

    The distinct values are written over the front of ``v``, which is consumed (it must own its data and have no
    other view): it is shrunk to them and returned with the counts (uint32 while they cannot overflow it).
    """
    n, c = v.size, _sizes.CHUNK
    cnt = np.empty(n - start, count_dtype(n - start))
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


def searchsorted_blocked(ka: np.ndarray, kb: np.ndarray, j0: int = 0, j1: int | None = None,
                          side: Literal["left", "right"] = "left") -> np.ndarray:
    """``np.searchsorted(ka, kb[j0:j1], side)`` for sorted ``kb``, block by block on the slice of ``ka`` each
    block spans.

    A plain searchsorted of ~10^7 sorted needles in a ~10^8 haystack misses the cache on every probe; searching
    each block of needles in only its own range of the haystack is faster and gives the same positions.
    """
    j1 = kb.size if j1 is None else j1
    out = np.empty(j1 - j0, np.int64)
    for j in range(j0, j1, _sizes.SEARCH_BLOCK):
        b = kb[j:min(j + _sizes.SEARCH_BLOCK, j1)]
        lo = int(np.searchsorted(ka, b[0], side="left"))
        hi = int(np.searchsorted(ka, b[-1], side="right"))
        np.add(np.searchsorted(ka[lo:hi], b, side=side), lo, out=out[j - j0:j - j0 + b.size])
    return out


def add_matching(ka, ca, kb, cb) -> np.ndarray:
    """Add the counts of the keys of ``kb`` that ``ka`` holds into ``ca`` in place; return the mask of the others.

    Both key arrays are sorted and unique. No count can overflow ``ca``'s dtype: the caller keeps counts uint32
    only while the class total fits in uint32.
    """
    new = np.ones(kb.size, bool)
    if ka.size == 0:
        return new
    for j in range(0, kb.size, _sizes.SEARCH_BLOCK):
        j1 = min(j + _sizes.SEARCH_BLOCK, kb.size)
        ins = searchsorted_blocked(ka, kb, j, j1)
        hit = ins < ka.size
        hit[hit] = ka[ins[hit]] == kb[j:j1][hit]
        ca[ins[hit]] += cb[j:j1][hit]  # keys are unique, so the fancy-index += never sees one slot twice
        new[j:j1] = ~hit
    return new


def owned(a: np.ndarray) -> np.ndarray:
    """``a`` itself when it owns its buffer (so it can be grown in place with ``resize``), else a copy."""
    return a if a.flags.owndata and a.base is None and a.flags.c_contiguous else a.copy()


def insert_disjoint(ka, ca, kb, cb):
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
    pos = searchsorted_blocked(ka, kb)
    for j in range(0, b_n, _sizes.MOVE_BLOCK):  # output position of b's entry j: its insertion point + j
        pos[j:j + _sizes.MOVE_BLOCK] += np.arange(j, min(j + _sizes.MOVE_BLOCK, b_n))
    ka, ca = owned(ka), owned(ca)
    ka.resize(a_n + b_n, refcheck=False)
    ca.resize(a_n + b_n, refcheck=False)
    hi, j_hi = a_n + b_n, b_n
    while j_hi > 0:  # once no entry of b is left below hi, a[:hi] is already in place
        lo = max(hi - _sizes.MOVE_BLOCK, 0)
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


def merge_runs(a, b):
    """Merge two (sorted unique keys, counts) runs into one (the larger one's arrays are reused and grown)."""
    (ka, ca), (kb, cb) = (a, b) if a[0].size >= b[0].size else (b, a)
    if kb.size == 0:
        return ka, ca
    new = add_matching(ka, ca, kb, cb)
    if not new.all():
        kb, cb = kb[new], cb[new]
    return insert_disjoint(ka, ca, kb, cb)


def union_counts(ka, ca, kb, cb):
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

