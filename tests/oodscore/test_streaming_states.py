"""Every per-frame accumulator of oodscore is a ``cocodag.streaming.StreamingState``, and merging per-frame states
in frame order is bit-identical to updating with the frames in that order (what ``evaluate --workers`` relies on).

Oracle: the same accumulator updated with the frames in order, in one process.
"""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from cocodag.formats.sml_stats import SMLStats
from cocodag.streaming import StreamingState
from oodscore.components import ComponentMetrics
from oodscore.metrics import PixelMetrics
from oodscore.metrics.states import BinnedState, ExactState
from oodscore.protocols import _ExactComponents, _ExactPixels, component_accumulator, pixel_accumulator
from oodscore.protocols.fishyscapes import FishyscapesPixels
from oodscore.protocols.smiyc import SmiycComponents, SmiycPixels

H, W = 48, 64


def _frames(n: int = 7, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Frames with an anomaly blob, void rows and ties, in several score dtypes (float64 ones not float32-exact)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        lab = np.zeros((H, W), np.uint8)
        r, c = rng.integers(2, H - 20), rng.integers(2, W - 24)
        lab[r:r + 16, c:c + 20] = 1
        lab[:2] = 255
        s = rng.normal(size=(H, W)) + 1.5 * (lab == 1)
        s = np.round(s, 2) if i % 2 else s
        s[3, :8] = s[4, :8]
        dtype = [np.float32, np.float16, np.float64][i % 3]
        s = s.astype(dtype) if dtype is not np.float64 else s + 1e-12 * rng.normal(size=s.shape)
        out.append((s, lab))
    return out


def _same(a, b) -> bool:
    """Equal results, NaN equal to NaN, arrays element for element."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b, equal_nan=True)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


def _pixel_accumulators():
    return {"exact": PixelMetrics(), "binned": PixelMetrics(bins=32, edge_samples=5000),
            "binned_early": PixelMetrics(bins=32, edge_samples=2000),     # a frame alone fixes the edges
            "protocol_exact": pixel_accumulator("exact"), "smiyc": pixel_accumulator("smiyc"),
            "fishyscapes": pixel_accumulator("fishyscapes")}


def _component_accumulators():
    return {"exact": ComponentMetrics(0.9, track="obstacle"), "exact_gt": ComponentMetrics(0.9, rule="gt"),
            "protocol_exact": component_accumulator("exact", 0.9, "obstacle"),
            "smiyc": component_accumulator("smiyc", 0.9, "obstacle")}


def _merged(acc, frames, lag: int = 0):
    """``acc`` fed by merging one state per frame (made from an empty copy of ``acc`` and pickled, as a worker
    returns it) in frame order; copies are made ``lag`` frames ahead of their merge, as workers run ahead."""
    pending = []
    for s, y in frames:
        state = acc.empty_copy()
        state.update(s, y)
        pending.append(pickle.loads(pickle.dumps(state)))
        if len(pending) > lag:
            acc.merge(pending.pop(0))
    for state in pending:
        acc.merge(state)
    return acc


@pytest.mark.parametrize("lag", [0, 3])
@pytest.mark.parametrize("name", list(_pixel_accumulators()))
def test_pixel_frame_states_merged_in_order_equal_updates(name, lag):
    frames = _frames()
    ref = _pixel_accumulators()[name]
    for s, y in frames:
        ref.update(s, y)
    got = _merged(_pixel_accumulators()[name], frames, lag)
    assert _same(got.compute(), ref.compute())
    assert _same(got.curves(max_points=97), ref.curves(max_points=97))
    assert got.n_distinct == ref.n_distinct
    if getattr(ref, "edges", None) is not None:
        assert np.array_equal(got.edges, ref.edges)


@pytest.mark.parametrize("name", list(_component_accumulators()))
def test_component_frame_states_merged_in_order_equal_updates(name):
    frames = _frames()
    ref = _component_accumulators()[name]
    for s, y in frames:
        ref.update(s, y)
    got = _merged(_component_accumulators()[name], frames)
    assert _same(got.compute(), ref.compute()) and got.compute()["n_gt"] > 0


def test_state_states_merged_in_order_equal_updates():
    """The two states a PixelMetrics holds, used on their own."""
    frames = _frames()
    for make in (ExactState, lambda: BinnedState(16, 3000, 0)):
        ref, got = make(), make()
        for s, y in frames:
            ref.update(s, y)
            state = got.empty_copy()
            state.update(s, y)
            got.merge(state)
        assert ref.compute().metrics() == got.compute().metrics()


def test_sml_one_batch_states_merged_in_order_equal_updates():
    rng = np.random.default_rng(3)
    batches = [rng.normal(scale=2, size=(1 + i % 2, 6, 7, 9)).astype(np.float32) for i in range(5)]
    ref, got = SMLStats(), SMLStats()
    for b in batches:
        ref.update(b)
        state = got.empty_copy()
        state.update(b)
        got.merge(pickle.loads(pickle.dumps(state)))
    assert _same(ref.compute(), got.compute())
    for k in ("count_", "mean_", "var_"):
        assert np.array_equal(getattr(ref, k), getattr(got, k), equal_nan=True)


@pytest.mark.parametrize("cls", [PixelMetrics, ExactState, BinnedState, ComponentMetrics, SmiycPixels,
                                 SmiycComponents, FishyscapesPixels, _ExactPixels, _ExactComponents, SMLStats])
def test_every_accumulator_is_a_streaming_state(cls):
    assert issubclass(cls, StreamingState)
    for name in ("update", "merge", "compute", "reset", "empty_copy"):
        assert name in cls.__dict__ or any(name in c.__dict__ for c in cls.__mro__[1:] if c is not StreamingState)
    for name in ("summarize", "add_summary", "frame", "add_frame", "batch_summary", "add_batch"):
        assert not hasattr(cls, name), f"{cls.__name__}.{name}: the old dialects are gone"


def test_reset_and_empty_copy_keep_settings_and_forget_data():
    frames = _frames(3)
    for acc in [*_pixel_accumulators().values(), *_component_accumulators().values()]:
        for s, y in frames:
            acc.update(s, y)
        first = acc.compute()
        copy = acc.empty_copy()
        assert type(copy) is type(acc)
        for s, y in frames:
            copy.update(s, y)
        assert _same(copy.compute(), first)
        acc.reset()
        for s, y in frames:
            acc.update(s, y)
        assert _same(acc.compute(), first)


def test_frame_states_are_small():
    """A frame's exact state holds the frame's distinct scores and counts, never its score map; a binned one its
    counts per bin once the edges are fixed (before that, its valid scores: they may still fix the edges)."""
    rng = np.random.default_rng(1)
    lab = np.zeros((256, 512), np.uint8)
    lab[100:140, 200:260] = 1
    tied = np.round(rng.normal(size=lab.shape), 1).astype(np.float32)     # ~80 distinct values
    for acc in _pixel_accumulators().values():
        acc.update(tied, lab)
        state = acc.empty_copy()
        state.update(tied, lab)
        assert len(pickle.dumps(state)) < 20_000 < tied.nbytes // 20
    state = PixelMetrics().empty_copy()
    free = rng.normal(size=lab.shape).astype(np.float32)                  # every value distinct
    state.update(free, lab)
    # 4-byte keys and 4-byte counts per distinct value and class, plus a fixed overhead
    assert len(pickle.dumps(state)) < 8 * free.size + 2_000
