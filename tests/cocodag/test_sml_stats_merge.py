"""SMLStats: one-batch states merged in order equal partial_fit bit for bit; merge(other) is the union's stats."""
import pickle

import numpy as np
import pytest
import torch

from cocodag.errors import CocodagError
from cocodag.formats.sml_stats import SMLStats
from cocodag.streaming import StreamingState


def _batches(n=6, c=4, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(scale=3, size=(c, 9, 11)).astype(np.float32) for _ in range(n)]


def _states(frames, empty):
    """One state per frame, updated from an empty copy and pickled (as the processes of a parallel job do)."""
    out = []
    for f in frames:
        st = empty.empty_copy()
        st.update(f)
        out.append(pickle.loads(pickle.dumps(st)))
    return out


def test_one_batch_states_merged_in_order_equal_partial_fit_exactly():
    frames = _batches()
    direct = SMLStats()
    for f in frames:
        direct.partial_fit(f)
    replay = SMLStats(4)
    for st in _states(frames, SMLStats(4)):
        replay.merge(st)
    np.testing.assert_array_equal(replay.count_, direct.count_)
    np.testing.assert_array_equal(replay.mean_, direct.mean_)
    np.testing.assert_array_equal(replay.var_, direct.var_)
    assert (replay.n_images_, replay.n_pixels_) == (direct.n_images_, direct.n_pixels_) == (6, 6 * 99)
    assert replay.compute() == direct.compute() == direct.to_dict()


def test_the_streaming_protocol():
    frames = _batches(n=3)
    st = SMLStats(4, source="x")
    assert isinstance(st, StreamingState)
    st.update(torch.from_numpy(frames[0]), size=(12, 10))            # update takes partial_fit's arguments
    again = SMLStats(4).partial_fit(frames[0], size=(12, 10))
    np.testing.assert_array_equal(st.mean_, again.mean_)
    empty = st.empty_copy()
    assert (empty.num_classes, empty.source) == (4, "x") and repr(empty) == "SMLStats(not fitted)"
    assert st.merge(empty) is st and st.n_images_ == 1               # an unfitted state adds nothing
    with pytest.raises(CocodagError, match="expected 4 classes"):
        st.merge(SMLStats().partial_fit(np.zeros((5, 3, 3), np.float32)))
    st.reset()
    assert repr(st) == "SMLStats(not fitted)"


def test_merge_is_the_stats_of_the_union():
    frames = _batches()
    whole = SMLStats().fit(frames)
    a, b = SMLStats().fit(frames[:2]), SMLStats().fit(frames[2:])
    a.merge(b)
    np.testing.assert_array_equal(a.count_, whole.count_)
    np.testing.assert_allclose(a.mean_, whole.mean_, rtol=1e-12)
    np.testing.assert_allclose(a.var_, whole.var_, rtol=1e-12)
    assert (a.n_images_, a.n_pixels_) == (whole.n_images_, whole.n_pixels_)
    official = SMLStats.from_dict({"0": {"mean": 1.0, "std": 1.0}, "1": {"mean": 2.0, "std": 1.0}})
    with pytest.raises(CocodagError, match="no pixel counts"):
        SMLStats().fit(frames[:1]).merge(official)
