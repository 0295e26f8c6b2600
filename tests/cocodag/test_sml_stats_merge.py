"""SMLStats: batch summaries replayed in order equal partial_fit bit for bit; merge(other) is the union's stats."""
import numpy as np
import pytest

from cocodag.errors import CocodagError
from cocodag.formats.sml_stats import SMLStats


def _batches(n=6, c=4, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(scale=3, size=(c, 9, 11)).astype(np.float32) for _ in range(n)]


def test_replayed_batch_summaries_equal_partial_fit_exactly():
    frames = _batches()
    direct = SMLStats()
    for f in frames:
        direct.partial_fit(f)
    summaries = [SMLStats(4).batch_summary(f) for f in frames]      # e.g. computed by several processes
    replay = SMLStats(4)
    for s in summaries:
        replay.add_batch(*s)
    np.testing.assert_array_equal(replay.count_, direct.count_)
    np.testing.assert_array_equal(replay.mean_, direct.mean_)
    np.testing.assert_array_equal(replay.var_, direct.var_)
    assert (replay.n_images_, replay.n_pixels_) == (direct.n_images_, direct.n_pixels_) == (6, 6 * 99)


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
