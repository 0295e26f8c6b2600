"""A batch of scores and labels in: checks, conversion, and the one pass that splits it into key arrays.

Batches are read in one pass of in-cache chunks (labels compared, scores converted to keys: the ID keys kept in
place, zero elsewhere, the anomaly keys compressed out), then each class is sorted once. The one-shot functions cut a
batch into one part per thread (:class:`Pool`; numpy releases the GIL while it sorts and searches).
"""
from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cocodag.arrays import to_numpy

from .. import OodscoreError
from . import _sizes
from ._keys import SIGN32, SIGN64, finite_keys


def _shape(x) -> tuple:
    return tuple(x.shape)


def check_shapes(scores, labels) -> None:
    """Both arrays or tensors, of one shape (one line otherwise)."""
    if not hasattr(scores, "shape") or not hasattr(labels, "shape"):
        raise OodscoreError(f"scores/labels: expected numpy arrays or torch tensors, got "
                            f"{type(scores).__name__} / {type(labels).__name__}")
    if _shape(scores) != _shape(labels):
        raise OodscoreError(f"scores/labels: shape mismatch, scores {_shape(scores)} vs labels {_shape(labels)}")


def split_numpy(scores: np.ndarray, labels: np.ndarray):
    """Valid scores per class as float32 (when exact) or float64 numpy arrays: (neg, pos)."""
    s, y = flat_checked(scores, labels)
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


def as_f32_if_exact(v: np.ndarray) -> np.ndarray:
    """``v`` as float32 when that holds every value exactly, else unchanged."""
    if v.dtype == np.float32:
        return v
    v32 = v.astype(np.float32)
    if np.array_equal(v32.astype(np.float64), v):
        return v32
    return v


def runs_from_torch(scores, labels):
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

def flat_checked(scores, labels):
    """Flat numpy views of a batch, dtypes checked (one line each)."""
    s = to_numpy(scores, "scores").reshape(-1)
    y = to_numpy(labels, "labels").reshape(-1)
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
    assert scratch is not None  # the caller passes one whenever the dtype differs
    out = scratch[:src.size]
    with np.errstate(over="ignore", invalid="ignore"):
        np.copyto(out, src, casting="unsafe")  # float16 -> float32 exactly; float64 -> float32 checked below
    if src.dtype == np.float64 and not wide and (np.not_equal(out, src) & valid).any():
        return None
    return out


def split_pass(s: np.ndarray, y: np.ndarray, wide: bool):
    """``(keys, number of others, anomaly keys)``: ``keys`` holds the keys of the label-0 pixels' scores and 0 for
    the others (0 is below the key of every finite score: after a sort they come first); the label-1 keys are
    compressed out.

    One pass over the batch in ``CHUNK`` steps that stay in cache (zeroing by a product with the mask is
    branch-free: a compression of 90 % random entries costs ~5x more); uint32 keys (uint64 when ``wide``). None
    when float32 cannot hold the scores exactly (see :func:`_chunk_values`).
    """
    n, c = s.size, max(1, min(_sizes.CHUNK, s.size))
    fdt, udt, idt, sign = ((np.float64, np.uint64, np.int64, SIGN64) if wide
                           else (np.float32, np.uint32, np.int32, SIGN32))
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
        kw, mw = k[:w], m[:w]      # the keys of the chunk (as to_key_inplace, into scratch)
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


def split_sorted(s: np.ndarray, y: np.ndarray, threads: int = 1):
    """``(wide, ID parts, anomaly keys)`` of :func:`flat_checked` arrays, every key array sorted.

    The batch is cut into ``threads`` consecutive parts, each split (:func:`split_pass`) and sorted in its own
    thread (numpy releases the GIL while it sorts): each ID part is ``(keys, skip)``, its keys ``keys[skip:]``;
    the anomaly keys of all parts are merged into one sorted array. float16 / float32 scores, and float64 /
    integer scores that float32 holds exactly on every valid pixel, are read as float32 (uint32 keys); other
    scores as float64 (``wide``: uint64 keys). Non-finite scores on valid pixels raise (one line).
    """
    if s.dtype.kind == "f" and s.dtype.itemsize > 8:  # long double: read as float64
        with np.errstate(over="ignore"):
            s = s.astype(np.float64)
    n = s.size
    c = _sizes.CHUNK
    cuts = [min(n, -(-n * i // threads // c) * c) for i in range(threads + 1)] if threads > 1 else [0, n]
    spans = [(a, b) for a, b in itertools.pairwise(cuts) if b > a] or [(0, n)]

    def split(span, wide):
        out = split_pass(s[span[0]:span[1]], y[span[0]:span[1]], wide)
        if out is not None:
            out[0].sort()
            out[2].sort()
        return out

    with Pool(len(spans)) as pool:
        for wide in (False, True):
            parts = list(pool.map(lambda sp, w=wide: split(sp, w), spans))
            if all(p is not None for p in parts):
                break
    kp = parts[0][2] if len(parts) == 1 else np.sort(np.concatenate([p[2] for p in parts]), kind="stable")
    if not (all(finite_keys(k, skip, wide) for k, skip, _ in parts) and finite_keys(kp, 0, wide)):
        split_numpy(s, y)  # raises the general path's message (counts per class)
        raise OodscoreError("scores: non-finite (NaN/inf) values on non-void pixels")
    return wide, [(k, skip) for k, skip, _ in parts], kp


class Pool:
    """A thread pool of ``n`` workers as a context manager, or in-thread ``map`` when ``n`` is 1."""

    def __init__(self, n: int):
        self.n = n
        self._ex: ThreadPoolExecutor | None = None

    def __enter__(self):
        if self.n > 1:
            self._ex = ThreadPoolExecutor(self.n)
        return self

    def map(self, fn, items):
        return list(map(fn, items) if self._ex is None else self._ex.map(fn, items))

    def __exit__(self, *exc):
        if self._ex is not None:
            self._ex.shutdown()


def threads_for(threads, n: int) -> int:
    """Threads for a one-shot batch of ``n`` pixels: ``threads``, or (None) the CPUs this process may use (<= 8)."""
    if threads is None:
        try:
            avail = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            avail = os.cpu_count() or 1
        threads = min(8, avail) if n >= _sizes.PARALLEL_MIN else 1
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise OodscoreError(f"threads: expected None or an integer >= 1, got {threads!r}")
    return int(threads)
