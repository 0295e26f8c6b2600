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


# ------------------------------------------------------------------------------------------ the Scorer protocol
def test_every_registered_scorer_follows_the_protocol():
    from oodscore.scores import INPUT_KINDS, METHODS, Scorer

    assert METHODS == tuple(SCORERS)
    for name, cls in SCORERS.items():
        assert issubclass(cls, Scorer), name
        assert cls.requires in INPUT_KINDS, name
        assert set(cls._parameter_constraints) <= set(cls.param_names()), name
    assert OODMC.requires == "mc" and MSP.requires == SML.requires == VDE.requires == "logits"
    assert OODMC.param_names() == ["moment_weight", "svm_points_num", "svm_eval_subsize", "classifier",
                                   "moments_of", "random_state"]


def test_parameter_errors_name_class_and_parameter():
    st = SMLStats().partial_fit(np.random.default_rng(0).normal(size=(1, 3, 5, 5)))
    z = np.zeros((3, 4, 4), np.float32)
    cases = [
        (lambda: SML(st, boundary_iters=True).score(z), "SML boundary_iters: expected an int in [0, 4], got True"),
        (lambda: SML(st, smoothing="yes").score(z), "SML smoothing: expected a bool, got 'yes'"),
        (lambda: VDE(st, road_class=-1).score(z), "VDE road_class: expected an int >= 0, got -1"),
        (lambda: OODMC(svm_points_num=1).fit([]), "OODMC svm_points_num: expected an int >= 2, got 1"),
        (lambda: OODMC(moments_of="features").fit([]), "OODMC moments_of: expected one of 'logits', 'probs'"),
        (lambda: MSP(device=3).score(z), "MSP device: expected None or a str or a device, got 3"),
    ]
    for call, msg in cases:
        with pytest.raises(OodscoreError) as e:
            call()
        assert msg in str(e.value)


def test_device_parsing_is_cocodag_s():
    from oodscore.scores.base import resolve_device

    assert resolve_device(None) is None                       # None: follow the input's device
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(OodscoreError, match="device 'nonsense'"):
        resolve_device("nonsense")
    with pytest.raises(OodscoreError, match="device 'nonsense'"):
        MSP(device="nonsense").score(np.zeros((2, 3, 3), np.float32))
    if not torch.cuda.is_available():
        with pytest.raises(OodscoreError, match="CUDA is not available"):
            MaxLogit(device="cuda").score(np.zeros((2, 3, 3), np.float32))


def test_method_names_come_from_the_registry_without_importing_scorers():
    import subprocess
    import sys

    code = ("import sys; from oodscore.scores import METHODS, check_methods; import oodscore.cli; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert check_methods(['MSP', 'oodmc']) == ['msp', 'oodmc']; print(','.join(METHODS))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ",".join(SCORERS)
    from oodscore.scores import check_methods

    with pytest.raises(OodscoreError, match="method 'sml' given twice"):
        check_methods(["sml", "SML"])
