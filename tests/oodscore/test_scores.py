"""Baseline scores against direct float64 numpy formulas; the scorer registry."""
import numpy as np
import pytest
import torch

from oodscore import OodscoreError
from oodscore.scores import SCORERS, SML, VDE, Entropy, MaxLogit, MSP, OODMC, SMLStats, get_scorer

torch.set_num_threads(1)


def _softmax64(z):
    z = z.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def logits():
    rng = np.random.default_rng(3)
    z = rng.normal(scale=4.0, size=(3, 7, 9, 11)).astype(np.float32)
    z[0, :, 0, 0] = [80.0, -80.0, 0, 0, 0, 0, 0]  # extreme logits: softmax underflows to exactly 0
    return z


def test_msp(logits):
    ref = 1.0 - _softmax64(logits).max(axis=1)
    out = MSP().score(logits)
    assert out.dtype == np.float32 and out.shape == (3, 9, 11)
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_maxlogit(logits):
    out = MaxLogit().score(logits)
    np.testing.assert_array_equal(out, -logits.max(axis=1))


def test_entropy(logits):
    p = _softmax64(logits)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    ref = -plogp.sum(axis=1) / np.log(logits.shape[1])
    out = Entropy().score(logits)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6


def test_single_image_torch_and_float16(logits):
    z = torch.from_numpy(logits[1]).half()
    out = MaxLogit().score(z)
    assert out.shape == (9, 11)
    np.testing.assert_array_equal(out, -z.float().numpy().max(axis=0))


def test_bad_logits():
    with pytest.raises(OodscoreError, match="expected shape"):
        MSP().score(np.zeros((4, 4)))
    with pytest.raises(OodscoreError, match="NaN or inf"):
        MSP().score(np.full((2, 3, 3), np.nan, dtype=np.float32))
    with pytest.raises(OodscoreError, match="at least 2 classes"):
        MSP().score(np.zeros((1, 1, 3, 3)))
    with pytest.raises(OodscoreError, match="size"):
        MSP().score(np.zeros((2, 3, 3)), size=(0, 4))


def test_registry():
    assert list(SCORERS) == ["msp", "maxlogit", "entropy", "sml", "vde", "oodmc"]
    assert SCORERS["sml"] is SML and SCORERS["vde"] is VDE and SCORERS["oodmc"] is OODMC
    assert isinstance(get_scorer("MSP"), MSP)
    st = SMLStats().partial_fit(np.random.default_rng(0).normal(size=(1, 3, 5, 5)))
    sml = get_scorer("sml", stats=st, boundary_iters=None, smoothing=False)
    assert sml.boundary_iters == 4 and sml.smoothing is False  # None dropped -> default kept
    assert get_scorer("oodmc", moment_weight=0.3).moment_weight == 0.3
    with pytest.raises(OodscoreError) as e:
        get_scorer("smll")
    msg = str(e.value)
    assert "did you mean sml" in msg and all(n in msg for n in SCORERS)
    with pytest.raises(OodscoreError, match="bad parameters"):
        get_scorer("msp", nonsense=1)


def test_upsampling_matches_torch_interpolate(logits):
    up = torch.nn.functional.interpolate(torch.from_numpy(logits), size=(18, 22), mode="bilinear",
                                         align_corners=False)
    np.testing.assert_array_equal(MaxLogit().score(logits, size=(18, 22)), -up.amax(dim=1).numpy())
