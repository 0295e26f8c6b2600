"""Scores as order-preserving unsigned-integer keys: ``uint32`` for float16 / float32 scores, ``uint64`` for float64
scores that float32 cannot hold exactly (integer sorts are several times faster than float sorts).

Negative floats have all their bits flipped, positive ones their sign bit set, so that the keys sort as the values;
``-0.0`` and ``0.0`` get one key.
"""
from __future__ import annotations

import numpy as np

SIGN32 = np.uint32(0x80000000)
SIGN64 = np.uint64(0x8000000000000000)


def f32_to_key(v: np.ndarray) -> np.ndarray:
    """float32 -> uint32 with the same order (negative floats: all bits flipped; positive: sign bit set)."""
    b = (v + np.float32(0.0)).view(np.uint32)  # +0.0 turns -0.0 into 0.0 so they share one key
    return b ^ ((b.view(np.int32) >> 31).view(np.uint32) | SIGN32)


def key_to_f32(k: np.ndarray) -> np.ndarray:
    """Inverse of :func:`f32_to_key`."""
    pos = k >= SIGN32
    return np.where(pos, k ^ SIGN32, ~k).astype(np.uint32).view(np.float32)


def f64_to_key(v: np.ndarray) -> np.ndarray:
    """float64 -> uint64 with the same order (as :func:`f32_to_key`)."""
    b = (v + 0.0).view(np.uint64)
    return b ^ ((b.view(np.int64) >> 63).view(np.uint64) | SIGN64)


def key_to_f64(k: np.ndarray) -> np.ndarray:
    """Inverse of :func:`f64_to_key`."""
    pos = k >= SIGN64
    return np.where(pos, k ^ SIGN64, ~k).astype(np.uint64).view(np.float64)


def to_key_inplace(v: np.ndarray) -> np.ndarray:
    """Like ``f32_to_key`` / ``f64_to_key`` but overwriting ``v`` (saves one allocation per batch)."""
    v += v.dtype.type(0.0)  # -0.0 -> 0.0
    u, i, sign = (np.uint32, np.int32, SIGN32) if v.dtype == np.float32 else (np.uint64, np.int64, SIGN64)
    b = v.view(u)
    m = (b.view(i) >> (8 * v.itemsize - 1)).view(u)
    m |= sign
    b ^= m
    return b


FINITE_KEYS = {False: (0x007FFFFF, 0xFF800000),                  # keys of -inf / +inf (float32)
                True: (0x000FFFFFFFFFFFFF, 0xFFF0000000000000)}   # (float64); NaNs lie beyond them


def finite_keys(k: np.ndarray, skip: int, wide: bool) -> bool:
    """Whether the sorted keys ``k[skip:]`` are all keys of finite scores."""
    lo, hi = (k.dtype.type(v) for v in FINITE_KEYS[wide])  # typed: a Python int would cast all of ``k``
    # keys of NaN / inf sort to the ends; those of -inf and negative NaNs (one of them is 0) before ``lo``
    return k.size <= skip or (int(np.searchsorted(k, lo, side="right")) == skip and k[-1] < hi)


def threshold_key(t: float, wide: bool):
    """Key of the smallest stored-precision value >= t, so that ``key >= k  <=>  score >= t`` exactly."""
    if wide:
        return f64_to_key(np.array([t], np.float64))[0]
    t32 = np.float32(t)
    if float(t32) < t:
        t32 = np.nextafter(t32, np.float32(np.inf))
    return f32_to_key(np.array([t32], np.float32))[0]


def key_value(k, wide: bool) -> float:
    """The score value of one key (uint64 when ``wide``, else uint32)."""
    arr = np.array([k], np.uint64 if wide else np.uint32)
    return float(key_to_f64(arr)[0] if wide else key_to_f32(arr)[0])

