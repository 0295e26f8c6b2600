"""Baseline scores against direct float64 numpy formulas; the scorer registry."""
import math

import numpy as np
import pytest
import torch

from oodscore import OodscoreError
from oodscore.scores import (
    GEN,
    MSP,
    MSPT,
    OODMC,
    SCORERS,
    SML,
    VDE,
    Energy,
    Entropy,
    MaxLogit,
    MCEntropy,
    SMLStats,
    definitions,
    get_scorer,
)

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
    assert list(SCORERS) == ["msp", "maxlogit", "entropy", "sml", "vde", "oodmc", "energy", "msp-t", "gen",
                             "mc-entropy", "pebal"]
    assert SCORERS["energy"] is Energy and SCORERS["msp-t"] is MSPT and SCORERS["gen"] is GEN
    assert SCORERS["mc-entropy"] is MCEntropy
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
    assert OODMC.requires == MCEntropy.requires == "mc"
    assert MSP.requires == SML.requires == VDE.requires == Energy.requires == MSPT.requires == GEN.requires == "logits"
    assert OODMC.param_names() == ["moment_weight", "svm_points_num", "svm_eval_subsize", "estimator",
                                   "moments_of", "random_state"]


def _same_params(a, b) -> bool:
    """Same parameter names and values; estimator-valued parameters compare by their own parameters."""
    pa, pb = a.get_params(deep=False), b.get_params(deep=False)
    if list(pa) != list(pb):
        return False
    for k, v in pa.items():
        w = pb[k]
        if hasattr(v, "get_params"):
            if type(v) is not type(w) or not _same_params(v, w):
                return False
        elif isinstance(v, SMLStats):
            if v.to_dict() != w.to_dict():
                return False
        elif v != w:
            return False
    return True


def test_every_registered_scorer_is_an_sklearn_estimator(tmp_path):
    """get_params / set_params / clone work on every scorer of the registry, with every parameter set."""
    from sklearn.base import BaseEstimator, clone
    from sklearn.linear_model import LogisticRegression

    st = SMLStats().partial_fit(np.random.default_rng(0).normal(size=(1, 3, 5, 5)))
    st.save(tmp_path / "sml.json")
    changed = {"device": "cpu", "temperature": 2.5, "gamma": 0.3, "top_m": 4, "boundary_iters": 2,
               "smoothing": False, "border": "official-2021", "boundary_width": 4, "threshold": 0.5, "margin": 2.0,
               "road_class": 1, "moment_weight": 0.3, "svm_points_num": 1000, "svm_eval_subsize": 7,
               "estimator": LogisticRegression(C=0.5), "moments_of": "probs", "random_state": 4}
    for name, cls in SCORERS.items():
        for stats in (st, str(tmp_path / "sml.json")):
            params = {k: v for k, v in changed.items() if k in cls.param_names()}
            if "stats" in cls.param_names():
                params["stats"] = stats
            scorer = get_scorer(name, **params)
            assert isinstance(scorer, BaseEstimator), name
            assert set(scorer.get_params(deep=False)) == set(cls.param_names()), name
            for s in (scorer, get_scorer(name, **({"stats": stats} if "stats" in params else {}))):
                twin = clone(s)
                assert type(twin) is cls and twin is not s and _same_params(twin, s), name
                assert twin.set_params(**s.get_params(deep=False)) is twin, name
    oodmc = clone(OODMC(estimator=LogisticRegression(C=0.5)))
    assert oodmc.set_params(estimator__C=2.0).estimator.C == 2.0        # nested parameters, as in sklearn
    assert repr(MSPT(temperature=2.5)) == "MSPT(temperature=2.5)"


def test_bfloat16_inputs_are_read_as_float32(logits, tmp_path):
    """No raw TypeError from numpy's missing bfloat16: logits and MC dicts in bfloat16 score like their float32."""
    st = SMLStats().partial_fit(logits)
    z = torch.from_numpy(logits).bfloat16()
    for name, cls in SCORERS.items():
        if cls.requires != "logits":
            continue
        scorer = get_scorer(name, **({"stats": st} if "stats" in cls.param_names() else {}))
        np.testing.assert_array_equal(scorer.score(z), scorer.score(z.float()), err_msg=name)
    mc, _ = _mc_dict(_mc_samples(np.random.default_rng(4), 4, 5, 6, 7), "logits")
    bf = {k: torch.from_numpy(v).bfloat16() if isinstance(v, np.ndarray) else v for k, v in mc.items()}
    f32 = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in bf.items()}
    np.testing.assert_array_equal(MCEntropy().score(bf), MCEntropy().score(f32))


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


# ------------------------------------------------------------------------------------------ more post-hoc scores
def _logsumexp64(z, axis=1):
    z = z.astype(np.float64)
    m = z.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _probs_and_complements64(z):
    """float64 softmax p and 1 - p, the latter summed over the other classes (no cancellation near p = 1)."""
    p = _softmax64(z)
    q = np.stack([np.delete(p, k, axis=1).sum(axis=1) for k in range(p.shape[1])], axis=1)
    return p, q


@pytest.mark.parametrize("temperature", [1.0, 0.5, 7.3])
def test_energy(logits, temperature):
    ref = -temperature * _logsumexp64(logits / np.float64(temperature))
    out = Energy(temperature=temperature).score(logits)
    assert out.dtype == np.float32 and out.shape == (3, 9, 11)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    if temperature == 1.0:  # the check: energy == -logsumexp(logits), the default T
        np.testing.assert_allclose(Energy().score(logits), -_logsumexp64(logits), rtol=1e-6, atol=1e-6)
    z = np.zeros((1, 4, 2, 2), np.float32)  # higher = more anomalous: a flat pixel beats a confident one
    z[0, 0, 0, 0] = 20.0
    e = Energy().score(z)[0]
    assert e[0, 1] == pytest.approx(-math.log(4)) and e[0, 0] < e[0, 1]


@pytest.mark.parametrize("temperature", [1.0, 3.0, 1000.0])
def test_msp_t(logits, temperature):
    _, q = _probs_and_complements64(logits / np.float64(temperature))
    ref = np.take_along_axis(q, logits.argmax(axis=1)[:, None], axis=1)[:, 0]     # 1 - max softmax(z/T)
    out = MSPT(temperature=temperature).score(logits)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=0)   # relative: no cancellation near p_max = 1
    assert MSPT().temperature == 1000.0
    np.testing.assert_allclose(MSPT().score(logits), MSPT(temperature=1000.0).score(logits), rtol=0, atol=0)
    if temperature == 1.0:
        np.testing.assert_allclose(out, MSP().score(logits), atol=1e-6)


def test_msp_t_keeps_confident_pixels_apart():
    z = np.zeros((3, 1, 2), np.float32)
    z[0, 0] = [30.0, 31.0]
    out = MSPT(temperature=1.0).score(z)
    ref = 2 * np.exp(-np.array([30.0, 31.0]))   # 1 - p_max = 2 e^-z / (1 + 2 e^-z)
    np.testing.assert_allclose(out[0], ref / (1 + ref), rtol=1e-6)
    assert MSP().score(z)[0, 0] == MSP().score(z)[0, 1] == 0.0   # float32 1 - p ties them


@pytest.mark.parametrize("gamma,top_m", [(0.1, 100), (0.5, 3), (1.0, 1)])
def test_gen(logits, gamma, top_m):
    p, q = _probs_and_complements64(logits)
    terms = p ** gamma * q ** gamma
    order = np.argsort(-p, axis=1, kind="stable")[:, :min(top_m, p.shape[1])]
    ref = np.take_along_axis(terms, order, axis=1).sum(axis=1)
    out = GEN(gamma=gamma, top_m=top_m).score(logits)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def _mc_samples(rng, t, c, h, w):
    base = rng.normal(scale=3.0, size=(c, h, w))
    return base + rng.normal(scale=1.0, size=(t, c, h, w))   # (T, C, h, w) float64 logits of T passes


def _mc_dict(samples, moments_of):
    """The MC block as maxent-train export stores it (float32), from explicit samples (float64)."""
    e = np.exp(samples - samples.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    p_mean = probs.mean(axis=0)
    x = samples if moments_of == "logits" else probs
    mean = x.mean(axis=0)
    central = np.stack([((x - mean) ** k).mean(axis=0) for k in (2, 3)])
    entropy = -(p_mean * np.log(p_mean)).sum(axis=0)
    return ({"mean": mean.astype(np.float32), "central": central.astype(np.float32),
             "entropy": entropy.astype(np.float32), "moments_of": moments_of}, p_mean)


@pytest.mark.parametrize("moments_of", ["logits", "probs"])
def test_mc_entropy(moments_of):
    samples = _mc_samples(np.random.default_rng(4), 16, 5, 6, 7)
    mc, p_mean = _mc_dict(samples, moments_of)
    ref = -(p_mean * np.log(p_mean)).sum(axis=0) / np.log(5)
    out = MCEntropy().score(mc)
    assert out.dtype == np.float32 and out.shape == (6, 7)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)
    assert get_scorer("mc-entropy").score({**mc, "entropy": torch.from_numpy(mc["entropy"])}).shape == (6, 7)


def test_mc_entropy_of_the_exporter_is_that_of_the_mean_softmax():
    """maxent-train's MC block: with moments_of="probs", the stored entropy is H(mean) (so MCEntropy may use it)."""
    from maxent_train.mc import mc_moments

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Dropout(0.5))
    x = torch.randn(1, 3, 5, 6)
    got = mc_moments(model, x, samples=8, order=2, moments_of="probs", head_only=False, seed=1)
    p = got["mean"][0].double().numpy()
    ref = -(p * np.log(p)).sum(axis=0) / np.log(4)
    mc = {"mean": got["mean"][0], "central": got["central"][0], "entropy": got["entropy"][0]}
    np.testing.assert_allclose(MCEntropy().score(mc), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("align_corners", [False, True])
def test_mc_entropy_native_resolution(align_corners):
    mc, _ = _mc_dict(_mc_samples(np.random.default_rng(5), 8, 4, 5, 6), "logits")
    rule = {"mode": "bilinear", "align_corners": align_corners}
    out = MCEntropy().score({**mc, "upsample": rule, "size": (11, 13)}, size=(11, 13))
    ref = torch.nn.functional.interpolate(torch.from_numpy(mc["entropy"] / np.float32(np.log(4)))[None, None],
                                          size=(11, 13), mode="bilinear", align_corners=align_corners)[0, 0].numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)
    with pytest.raises(OodscoreError, match="names no upsampling rule"):
        MCEntropy().score(mc, size=(11, 13))


def test_definitions_one_line_each():
    defs = definitions()
    assert list(defs) == list(SCORERS)
    for name, text in defs.items():
        assert text and "\n" not in text, name
    for name in ("msp", "maxlogit", "entropy", "sml", "energy", "msp-t", "gen", "mc-entropy", "pebal"):
        assert SCORERS[name].definition == defs[name]
        assert any(str(y) in defs[name] for y in range(2014, 2025)), name   # cites its reference


def test_new_score_parameters():
    assert get_scorer("energy", temperature=None).temperature == 1.0
    assert get_scorer("msp-t", temperature=2.5).temperature == 2.5
    assert get_scorer("gen").get_params() == {"gamma": 0.1, "top_m": 100, "device": None}
    z = np.zeros((3, 4, 4), np.float32)
    mc = {"mean": np.zeros((3, 2, 2), np.float32), "central": np.zeros((1, 3, 2, 2), np.float32),
          "entropy": np.zeros((2, 2), np.float32)}
    cases = [
        (lambda: Energy(temperature=0).score(z), "Energy temperature: expected a finite number > 0, got 0"),
        (lambda: Energy(temperature=True).score(z), "Energy temperature: expected a finite number > 0, got True"),
        (lambda: MSPT(temperature=-1.0).score(z), "MSPT temperature: expected a finite number > 0, got -1.0"),
        (lambda: MSPT(temperature=float("inf")).score(z), "MSPT temperature: expected a finite number > 0"),
        (lambda: GEN(gamma=0).score(z), "GEN gamma: expected a finite number in (0, 1], got 0"),
        (lambda: GEN(gamma=1.5).score(z), "GEN gamma: expected a finite number in (0, 1], got 1.5"),
        (lambda: GEN(top_m=0).score(z), "GEN top_m: expected an int >= 1, got 0"),
        (lambda: MCEntropy().score(z), "mc: expected a dict with keys mean, central, entropy; got ndarray"),
        (lambda: MCEntropy().score({"mean": mc["mean"]}), "mc: missing key 'entropy'"),
        (lambda: MCEntropy().score({**mc, "entropy": np.zeros((3, 3))}), "mc: expected mean (C >= 2, h, w)"),
        (lambda: MCEntropy().score({**mc, "entropy": np.full((2, 2), np.nan)}), "mc['entropy']: 4 non-finite"),
        (lambda: MCEntropy().score({**mc, "upsample": {"mode": "area"}}, size=(4, 4)), "mc['upsample']: "),
    ]
    for call, msg in cases:
        with pytest.raises(OodscoreError) as e:
            call()
        assert msg in str(e.value) and "\n" not in str(e.value), (msg, str(e.value))


def _mirror_blur64(m):
    """PEBAL's blur in float64 with SciPy (an independent implementation): 7 taps exp(-x^2/2), mirror padding."""
    import scipy.ndimage as ndi

    k = np.exp(-0.5 * np.arange(-3, 4, dtype=np.float64) ** 2)
    k /= k.sum()
    return ndi.correlate1d(ndi.correlate1d(m, k, axis=-1, mode="mirror"), k, axis=-2, mode="mirror")


def test_pebal_is_the_blurred_free_energy_at_the_label_size(logits):
    from oodscore.scores import PEBAL

    out = get_scorer("pebal").score(logits)
    assert isinstance(get_scorer("pebal"), PEBAL) and out.dtype == np.float32 and out.shape == (3, 9, 11)
    np.testing.assert_allclose(out, _mirror_blur64(-_logsumexp64(logits)), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(get_scorer("pebal").score(logits[1]), out[1])      # one frame, no batch axis
    # upsampled first, then blurred (PEBAL blurs the map of the network's output upsampled to the input size)
    up = torch.nn.functional.interpolate(torch.from_numpy(logits), size=(18, 22), mode="bilinear",
                                         align_corners=False).double().numpy()
    np.testing.assert_allclose(PEBAL().score(logits, size=(18, 22)), _mirror_blur64(-_logsumexp64(up)),
                               rtol=1e-5, atol=1e-5)
    # the energy's blur option is the same map (T = 1); without it the energy is unchanged
    np.testing.assert_array_equal(Energy(blur=True).score(logits), out)
    assert Energy().get_params() == {"temperature": 1.0, "blur": False, "device": None}
    with pytest.raises(OodscoreError, match="Energy blur: expected a bool, got 1"):
        Energy(blur=1).score(logits)
    with pytest.raises(OodscoreError, match="the 7x7 blur needs maps of at least 4x4 pixels, got 3x11"):
        PEBAL().score(logits[:, :, :3])
