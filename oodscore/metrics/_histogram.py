"""From a histogram to every metric, in one pass over the anomaly class's distinct keys.

The ROC and PR curves only turn at anomaly keys: for each, the anomaly pixels at or above it (a cumsum) and the ID
pixels below and equal to it (searched in the ID keys, block by block in cache). AUROC is the Mann-Whitney pair
count with ties as halves (exactly twice the trapezoid area), an integer, divided once: correctly rounded. AP's
terms are summed by one ``np.sum`` per block of ``BLOCK`` anomaly keys (:mod:`._sizes`): the numbers depend on
``BLOCK`` only, never on the path, chunk sizes or threads.

A histogram is a :class:`Hist` (both classes as runs, from a streaming state) or a :class:`PartsHist` (the ID class
as sorted parts with ties kept, from the one-shot functions); both are :class:`Counts`.
"""
from __future__ import annotations

import numpy as np

from .. import OodscoreError
from . import _sizes
from ._batch import Pool
from ._keys import key_to_f32, key_to_f64, key_value, threshold_key
from ._runs import searchsorted_blocked, union_counts

#: the keys of a metrics dict (``PixelMetrics.compute``, ``pixel_metrics``), in order
METRIC_KEYS = ("auroc", "ap", "fpr95", "fpr95_interp", "threshold", "f1", "precision", "recall", "fpr",
               "n_pos", "n_neg")


class NegRuns:
    """The ID class as sorted distinct keys with counts, read with a cursor: for ascending anomaly keys, the ID
    pixels below and equal to each. Calls must come in ascending key order (a running prefix sum is kept)."""

    def __init__(self, kn: np.ndarray, cn: np.ndarray):
        self.kn, self.cn = kn, cn
        self._i, self._run = 0, 0  # kn[:_i] holds _run pixels

    def counts(self, keys: np.ndarray):
        kn, cn = self.kn, self.cn
        idx = searchsorted_blocked(kn, keys)
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


class NegParts:
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
            below = searchsorted_blocked(part, keys)
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
                    e[at] = searchsorted_blocked(part, keys[at], side="right") - below[at]
            lt += below
            eq += e
        return lt, eq


def _pos_chunk(keys, c, below: int, neg, P: int, N: int, target: float, exact_u: bool, terms: np.ndarray):
    """One chunk of :func:`pos_pass` (``below``: anomaly pixels under its first key); AP terms into ``terms``.

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


def pos_pass(kp: np.ndarray, cp: np.ndarray, neg, n_pos: int, n_neg: int, target: float = 0.95,
              pool: Pool | None = None) -> dict:
    """Every metric from the anomaly class's distinct keys (ascending) and, for each, the ID pixels below / equal.

    The ROC and PR curves only change direction at anomaly keys: a threshold at an ID-only key has the TP of the
    anomaly key above it and more FP, so it is never the F1 optimum (ties go to the higher threshold), adds no AP
    term, and the TPR targets are first met at anomaly keys. So one pass over the distinct anomaly keys, with
    integer counts (exact in float64 below 2^53), gives every number:

    - AUROC = U / (2 P N), ``U = sum_k c_k (2 below_k + equal_k)`` (the Mann-Whitney count with ties as halves,
      which is exactly twice the trapezoid area): an integer summed exactly, divided once (correctly rounded);
    - AP = ``sum (TP_k / P - (TP_k - c_k) / P) * TP_k / (TP_k + FP_k)``, summed by one ``np.sum`` per block of
      ``BLOCK`` keys from the lowest (the numbers thus depend on ``BLOCK`` only, the same on every path);
    - FPR at the highest key with TPR >= target, the interpolation between the last ROC point with TPR <= target
      (the point just above the first key past it) and that key, and the F1-optimal key.

    The chunks of a block are independent given the anomaly pixels below each: ``pool`` may run them in threads
    (``neg`` must then be stateless); their results are combined in key order.
    """
    exact_u = 2 * n_pos * n_neg < _sizes.U_EXACT
    u, ap, below = 0, 0.0, 0
    fpr_first = interp = best_key = None
    best_f1 = -1.0
    step = max(1, 2 * _sizes.CHUNK)
    with (pool or Pool(1)) as run:
        for b0 in range(0, kp.size, _sizes.BLOCK):
            b1 = min(b0 + _sizes.BLOCK, kp.size)
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


class Counts:
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
        below_n, below_p = self._below(threshold_key(threshold, self.wide))
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
            threshold = key_value(r["best_key"], self.wide)
        out = {k: r[k] for k in ("auroc", "ap", "fpr95", "fpr95_interp")}
        out.update(self.at_threshold(threshold))
        out["n_pos"] = self.n_pos
        out["n_neg"] = self.n_neg
        return {k: out[k] for k in METRIC_KEYS}


class Hist(Counts):
    """Exact histogram of both classes: per class, sorted unique keys (ascending) and counts.

    Metrics come from one pass over the anomaly keys (:func:`pos_pass`); curves from one walk over the union of
    both classes' keys, block by block, which is never materialised whole.
    """

    def __init__(self, kn, cn, kp, cp, wide: bool):
        self.kn, self.cn, self.kp, self.cp, self.wide = kn, cn, kp, cp, wide
        self._totals(int(cn.sum()), int(cp.sum()))

    def _pass(self, target: float = 0.95) -> dict:
        return pos_pass(self.kp, self.cp, NegRuns(self.kn, self.cn), self.n_pos, self.n_neg, target)

    def _blocks(self):
        """Yield ascending (keys, pos, neg) for consecutive blocks of the union's distinct keys, the highest first.

        Each class contributes at most ``BLOCK`` keys to a block (the lower bound is the larger of the two
        classes' ``BLOCK``-th key from the top), and at least one.
        """
        kn, kp = self.kn, self.kp
        i_n, i_p = kn.size, kp.size
        while i_n > 0 or i_p > 0:
            cands = []
            if i_n > 0:
                cands.append(kn[max(i_n - _sizes.BLOCK, 0)])
            if i_p > 0:
                cands.append(kp[max(i_p - _sizes.BLOCK, 0)])
            lo = max(cands)
            s_n = int(np.searchsorted(kn[:i_n], lo, side="left"))
            s_p = int(np.searchsorted(kp[:i_p], lo, side="left"))
            keys, neg, pos = union_counts(kn[s_n:i_n], self.cn[s_n:i_n], kp[s_p:i_p], self.cp[s_p:i_p])
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
        key_parts: list[np.ndarray] = []
        tp_parts: list[np.ndarray] = [np.zeros(1, np.int64)]   # the ROC origin
        fp_parts: list[np.ndarray] = [np.zeros(1, np.int64)]
        tp = fp = off = 0
        for k, pos, neg in self._blocks():
            k, pos, neg = k[::-1], pos[::-1], neg[::-1]
            lo, hi = np.searchsorted(pick, [off, off + k.size])
            sel = pick[lo:hi] - off
            ct, cf = np.cumsum(pos, dtype=np.int64) + tp, np.cumsum(neg, dtype=np.int64) + fp
            key_parts.append(k[sel])
            tp_parts.append(ct[sel])
            fp_parts.append(cf[sel])
            tp, fp, off = int(ct[-1]), int(cf[-1]), off + k.size
        keys = np.concatenate(key_parts)
        tps = np.concatenate(tp_parts).astype(np.float64)
        fps = np.concatenate(fp_parts).astype(np.float64)
        vals = key_to_f64(keys.astype(np.uint64)) if self.wide else key_to_f32(keys).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tps + fps > 0, tps / np.maximum(tps + fps, 1), 1.0)
        return {"fpr": fps / self.n_neg, "tpr": tps / self.n_pos, "precision": precision,
                "recall": tps / self.n_pos, "thresholds": np.concatenate(([np.inf], vals))}


class PartsHist(Counts):
    """The histogram the one-shot functions build: the ID keys as sorted parts with ties kept (one per thread
    that split and sorted them), and the anomaly class's distinct keys with their counts. Metrics only."""

    def __init__(self, parts: list, pv: np.ndarray, pc: np.ndarray, wide: bool, threads: int):
        self.parts, self.kp, self.cp, self.wide, self.threads = parts, pv, pc, wide, threads
        self._totals(sum(p.size for p in parts), int(pc.sum()))

    def _pass(self, target: float = 0.95) -> dict:
        return pos_pass(self.kp, self.cp, NegParts(self.parts), self.n_pos, self.n_neg, target,
                         Pool(self.threads))

    def _below(self, k) -> tuple[int, int]:
        return (sum(int(np.searchsorted(p, k, side="left")) for p in self.parts),
                int(self.cp[:np.searchsorted(self.kp, k, side="left")].sum()))


def check_threshold(threshold) -> float | None:
    """``threshold`` as a finite float, or None (one line otherwise)."""
    if threshold is None:
        return None
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise OodscoreError(f"threshold: expected a real number or None, got {threshold!r}") from None
    if not np.isfinite(t):
        raise OodscoreError(f"threshold: expected a finite number, got {t}")
    return t
