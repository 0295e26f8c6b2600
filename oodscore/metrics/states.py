"""The two states a :class:`~oodscore.metrics.PixelMetrics` holds: exact (:class:`ExactState`) or quantile-binned
(:class:`BinnedState`), both :class:`~cocodag.streaming.StreamingState`.

Exact: for each class (ID / anomaly) the sorted distinct score keys (:mod:`._keys`) with their counts. Each batch is
sorted and reduced to (key, count) runs; counts of keys already in the class's main run are added to it in place,
the other keys go to a buffer of small runs (merged LSM-style) that is merged into the main run, in place, when it
reaches a quarter of its size. Memory is ``8 bytes x distinct values per class`` for float32 (``12`` for float64)
plus at most ~1/2 of that while merging, plus the batch, independent of the number of pixels: float16 scores need at
most 2 x 65536 entries; float32 scores at most one entry per distinct value present. Measured: 10^9 N(0,1) float32
pixels in chunks of 2e7 (1.4e8 entries) peaked at 1.7 GiB RSS (``bench/metrics.py``). For continuous float32 scores
with ~10^9 distinct values, use ``bins=``. A state that has seen one frame holds only that frame's distinct keys and
counts: what a worker process hands back.

Binned: one count per quantile bin and class; the edges are quantiles of the first ``edge_samples`` valid scores
seen (half of them per class), each bin is ``[edge_i, edge_{i+1})`` and acts as one tied score equal to its lower
edge (the last bin is ``[max, inf)``; scores below the first edge join the first bin). Uniform bins over min..max
are never used: they collapse heavy tails into one bin.
"""
from __future__ import annotations

import numpy as np

from cocodag.arrays import is_torch
from cocodag.streaming import StreamingState

from .. import OodscoreError
from ._batch import as_f32_if_exact, flat_checked, runs_from_torch, split_numpy, split_sorted
from ._histogram import Hist
from ._keys import f32_to_key, f64_to_key, key_to_f32, to_key_inplace
from ._runs import add_matching, compact_runs, count_dtype, insert_disjoint, merge_runs, unique_counts_sorted

__all__ = ["BinnedState", "ExactState", "PixelState"]


class PixelState(StreamingState):
    """What a :class:`~oodscore.metrics.PixelMetrics` accumulates (shapes are checked by it).

    ``update(scores, labels)`` folds a batch in (numpy arrays, or torch tensors on any device), ``merge(other)``
    folds in another state of the same kind after this one's data, ``compute()`` returns the per-class histogram
    (a :class:`~oodscore.metrics._histogram.Hist`) every metric is computed from, ``n_distinct`` counts the stored
    entries. ``approximate`` says whether counts at an arbitrary threshold are approximated (inside a bin).
    """

    approximate = False

    def update(self, scores, labels) -> None:
        """Add a batch: numpy arrays, or torch tensors on any device."""
        if is_torch(scores) or is_torch(labels):
            import torch

            self._update_torch(torch.as_tensor(scores), torch.as_tensor(labels))
        else:
            self._update_numpy(scores, labels)

    def _update_numpy(self, scores, labels) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _update_torch(self, scores, labels) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def n_distinct(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


class ExactState(PixelState):
    """Exact histogram over distinct score values (see the module docstring for the layout and memory bound)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every batch."""
        self._wide = False            # False -> uint32 keys (float32 scores), True -> uint64 (float64)
        self._big: list = [None, None]  # per class, the main run (sorted unique keys, counts)
        self._buf: tuple[list, list] = ([], [])  # per class, small runs of keys the main run lacked when added
        self._total = [0, 0]          # pixels per class (counts are uint32 while this fits in uint32)

    def empty_copy(self) -> ExactState:
        """A new, empty exact state."""
        return type(self)()

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
        self._map_runs(lambda k, c: (f64_to_key(key_to_f32(k).astype(np.float64)), c))
        self._wide = True

    def _keys_of_state(self, keys: np.ndarray) -> np.ndarray:
        """uint32 keys of a run as this state stores them (uint64 once it is wide)."""
        if self._wide and keys.dtype == np.uint32:
            return f64_to_key(key_to_f32(keys).astype(np.float64))
        return keys

    def _add_run(self, cls: int, keys: np.ndarray, counts: np.ndarray) -> None:
        """Add a (sorted unique keys, counts) run that this object now owns.

        Counts of keys the main run already holds are added to it in place; the other keys go to a buffer of small
        runs, merged LSM-style among themselves and into the main run (in place, see ``insert_disjoint``) once
        they reach a quarter of its size. Peak memory is thus ~1.25x the state plus one batch, and the main run
        is rewritten O(log) times. Buffered keys are absent from the main run, which only changes at a flush.
        """
        if keys.size == 0:
            return
        total = self._total[cls] + int(counts.sum())
        if count_dtype(total) != count_dtype(self._total[cls]):  # past 2^32 - 1 pixels: widen counts, once
            self._map_runs(lambda k, c: (k, c.astype(np.uint64)))
        self._total[cls] = total
        counts = counts.astype(count_dtype(total), copy=False)
        big = self._big[cls]
        if big is None or big[0].size == 0:
            self._big[cls] = (keys, counts)
            return
        new = add_matching(big[0], big[1], keys, counts)
        if not new.any():
            return
        if not new.all():
            keys, counts = keys[new], counts[new]
        buf = self._buf[cls]
        buf.append((keys, counts))
        while len(buf) > 1 and buf[-1][0].size * 2 >= buf[-2][0].size:
            b = buf.pop()
            a = buf.pop()
            buf.append(merge_runs(a, b))
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
            buf.append(merge_runs(a, b))
        k, c = buf.pop()
        big = self._big[cls]
        self._big[cls] = None  # drop our reference while the arrays are grown in place
        self._big[cls] = insert_disjoint(big[0], big[1], k, c)

    # -- update
    def _update_numpy(self, scores, labels) -> None:
        """Per class, the batch's sorted distinct keys with their counts (keys made in one in-cache pass), added."""
        wide, [(kn, skip)], kp = split_sorted(*flat_checked(scores, labels))
        if wide:
            self._widen()
        for cls, (k, c) in enumerate((compact_runs(kn, skip), compact_runs(kp))):
            self._add_run(cls, self._keys_of_state(k), c)

    def _add_values(self, cls: int, v: np.ndarray) -> None:
        v = as_f32_if_exact(v)
        if v.dtype == np.float64:
            self._widen()
        if self._wide and v.dtype == np.float32:
            v = v.astype(np.float64)
        keys = to_key_inplace(v)  # v is always our own copy (boolean indexing copies): reuse its memory
        del v
        keys.sort()
        run = unique_counts_sorted(keys)
        del keys
        self._add_run(cls, *run)

    def _add_unique(self, cls: int, vals: np.ndarray, counts: np.ndarray) -> None:
        vals = vals.astype(np.float64) if vals.dtype != np.float32 else vals
        vals = as_f32_if_exact(vals)
        if vals.dtype == np.float64:
            self._widen()
        if self._wide:
            keys = f64_to_key(vals.astype(np.float64))
        else:
            keys = f32_to_key(vals)
        counts = np.asarray(counts)
        if counts.size and (counts.dtype.kind not in "iu" or int(counts.min()) < 0):
            raise OodscoreError(f"counts: expected non-negative integers, got dtype {counts.dtype}")
        # torch.unique merges -0.0/0.0 already; keys are monotone in the values, so still sorted
        self._add_run(cls, *unique_counts_sorted(keys, counts))

    def _update_torch(self, scores, labels) -> None:
        for cls, (kind, payload) in enumerate(runs_from_torch(scores, labels)):
            if kind == "raw":
                self._add_values(cls, payload)
            else:
                self._add_unique(cls, *payload)

    # -- merge / result
    def merge(self, other: ExactState) -> ExactState:
        """Add ``other``'s runs, in their order (as the batches they came from would be added); returns self."""
        if not isinstance(other, ExactState):
            raise OodscoreError(f"merge: expected an exact state, got {type(other).__name__}")
        if other._wide:
            self._widen()
        for cls in (0, 1):
            runs = [(k.copy(), c.copy()) for k, c in other._runs(cls)]  # ours from now on (other may be self)
            for k, c in runs:
                self._add_run(cls, self._keys_of_state(k), c)
        return self

    def compute(self) -> Hist:
        """The histogram of both classes (the buffered runs are merged into the main runs first)."""
        merged = []
        dtype = np.uint64 if self._wide else np.uint32
        for cls in (0, 1):
            self._flush(cls)
            big = self._big[cls]
            merged.append(big if big is not None else (np.zeros(0, dtype), np.zeros(0, np.uint32)))
        (kn, cn), (kp, cp) = merged
        return Hist(kn.astype(dtype, copy=False), cn, kp.astype(dtype, copy=False), cp, self._wide)

    @property
    def n_distinct(self) -> int:
        return int(sum(k.size for cls in (0, 1) for k, _ in self._runs(cls)))


class BinnedState(PixelState):
    """One count per quantile bin and class; the edges are fixed from the first ``edge_samples`` valid scores.

    Until the edges are fixed the valid scores are buffered (float64). A state that fixed its edges from its own
    buffer keeps that buffer as its *seed* until it sees more data: merged into a state without those edges, the
    seed is replayed as updates, so that merging frame states in frame order fixes the edges where updating with
    the frames would have, from the same scores.
    """

    approximate = True

    def __init__(self, bins: int, edge_samples: int, seed: int):
        self.bins, self.edge_samples, self.seed = bins, edge_samples, seed
        self.reset()

    def reset(self) -> None:
        """Forget every batch and the edges."""
        self.edges: np.ndarray | None = None  # lower edges (float64, ascending) once fixed
        self._bin_counts: list[np.ndarray] = []  # (neg counts, pos counts) once the edges are fixed
        self._buffer: tuple[list, list] = ([], [])  # valid scores (neg, pos) buffered until the edges are fixed
        self._buffered = 0
        self._seed: tuple[list, list] | None = None  # the buffer the edges were fixed from, while nothing followed

    def empty_copy(self) -> BinnedState:
        """A new state with these settings and these edges (if fixed), without data."""
        out = type(self)(self.bins, self.edge_samples, self.seed)
        if self.edges is not None:
            out._set_edges(self.edges.copy())
        return out

    def _fix_edges(self) -> None:
        buffer = self._buffer
        neg = np.concatenate(buffer[0]) if buffer[0] else np.zeros(0)
        pos = np.concatenate(buffer[1]) if buffer[1] else np.zeros(0)
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
        self._seed = buffer

    def _set_edges(self, edges: np.ndarray) -> None:
        """Fix the edges and bin the buffered scores."""
        buf = self._buffer
        self.edges = edges
        self._bin_counts = [np.zeros(edges.size, np.int64), np.zeros(edges.size, np.int64)]
        self._buffer, self._buffered, self._seed = ([], []), 0, None
        for cls in (0, 1):
            for v in buf[cls]:
                self._bin_add(cls, v)

    def _bin_add(self, cls: int, v: np.ndarray) -> None:
        if v.size:
            edges = self.edges
            assert edges is not None
            idx = np.clip(np.searchsorted(edges, v.astype(np.float64), side="right") - 1, 0, None)
            self._bin_counts[cls] += np.bincount(idx, minlength=edges.size)

    def _bin_add_torch(self, cls: int, v) -> None:
        import torch

        edges = self.edges
        assert edges is not None
        e = torch.as_tensor(edges, device=v.device, dtype=torch.float64)
        idx = (torch.searchsorted(e, v.double(), right=True) - 1).clamp_(min=0)
        self._bin_counts[cls] += torch.bincount(idx, minlength=edges.size).cpu().numpy()

    def _update_numpy(self, scores, labels) -> None:
        self._add_values(*split_numpy(scores, labels))

    def _add_values(self, neg: np.ndarray, pos: np.ndarray) -> None:
        """Bin the valid scores of a batch once the edges are fixed; before that buffer them (they may fix them)."""
        if self.edges is not None:
            self._seed = None
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
            self._add_values(s[y == 0].double().cpu().numpy(), s[y == 1].double().cpu().numpy())
            return
        self._seed = None
        for cls in (0, 1):
            v = s[y == cls]
            if v.numel() and not bool(torch.isfinite(v).all()):
                raise OodscoreError(f"scores: non-finite (NaN/inf) values on non-void pixels (label {cls})")
            if v.numel():
                self._bin_add_torch(cls, v)

    def merge(self, other: BinnedState) -> BinnedState:
        """Fold in ``other``'s data after this state's; returns self.

        Scores ``other`` holds unbinned (no edges yet, or its seed when this state has other edges) are added as
        the updates they came from; counts binned with this state's edges are added; a state without edges adopts
        ``other``'s (its buffered scores are binned with them). Other edges are refused (one line).
        """
        if not isinstance(other, BinnedState):
            raise OodscoreError(f"merge: expected a binned state, got {type(other).__name__}")
        if other.edges is None:
            self._replay(other._buffer)
            return self
        if self.edges is not None and np.array_equal(self.edges, other.edges):
            self._seed = None
            for cls in (0, 1):
                self._bin_counts[cls] += other._bin_counts[cls]
            return self
        if other._seed is not None:
            self._replay(other._seed)
            return self
        if self.edges is not None:
            raise OodscoreError("merge: binned accumulators have different quantile edges; "
                                "fix the edges on one and pass them to the others (or use exact mode)")
        self._set_edges(other.edges.copy())  # adopt the other's edges, bin what we buffered
        for cls in (0, 1):
            self._bin_counts[cls] += other._bin_counts[cls]
        return self

    def _replay(self, buffer: tuple[list, list]) -> None:
        """Add buffered (neg, pos) batches as ``update`` added them, in order."""
        for neg, pos in list(zip(*buffer)):  # a snapshot: buffer may be our own
            self._add_values(neg, pos)

    def compute(self) -> Hist:
        """The histogram of the bins (edges fixed from the buffer first if they were not yet)."""
        if self.edges is None:
            self._fix_edges()
        if self.edges is None:
            raise OodscoreError("labels: no valid pixels (label 0 or 1); cannot compute metrics on empty input")
        neg, pos = self._bin_counts
        keys = f64_to_key(self.edges)  # a bin acts as one tied score equal to its lower edge
        keep_n, keep_p = neg > 0, pos > 0
        return Hist(keys[keep_n], neg[keep_n], keys[keep_p], pos[keep_p], wide=True)

    @property
    def n_distinct(self) -> int:
        return 0 if self.edges is None else int(self.edges.size)
