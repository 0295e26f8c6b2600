"""The training objectives (maxent_train.objectives): against the official code's recorded numbers, against an
independent float64 re-derivation written here, bad input, degenerate batches, the registry.

The fixture ``tests/fixtures/official/pebal_objectives.npz`` was recorded once by running the official PEBAL and
Balanced Energy functions (``tests/fixtures/official/record_pebal.py``, see its docstring); the tests compare our
objectives with those numbers, never with our own code.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from maxent_train import MaxentError
from maxent_train.choices import OBJECTIVES, ObjectiveName
from maxent_train.loss import maxent_loss
from maxent_train.objectives import (
    CITYSCAPES_PRIOR,
    CLASSIFIER_BLOCK,
    BalancedEnergyObjective,
    MaxEntObjective,
    Objective,
    PebalObjective,
    make_objective,
    objective_class,
    parse_objective_kwargs,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "pebal_objectives.npz"
ABSTENTION = ("pebal", "balanced-energy")


# ------------------------------------------------------------------------------------ (1) the official code's numbers


def _fixture():
    if not FIXTURE.exists():  # only while the fixture is being recorded; it is committed
        pytest.skip(f"{FIXTURE.name} not recorded yet (tests/fixtures/official/record_pebal.py writes it)")
    return np.load(FIXTURE, allow_pickle=False)


# what the official code fixes outside our parameters: pinned here against the recorded values
_OFFICIAL_CONSTANTS = {"clamp_min": 1e-7, "ood_index": 254, "void_index": 255, "reward_blur_kernel": 7,
                       "reward_blur_sigma": 1.0, "temperature": 1.0}


def _fixture_cases():
    if not FIXTURE.exists():
        return ["(fixture absent)"]
    return [str(c) for c in np.load(FIXTURE, allow_pickle=False)["cases"]]


@pytest.mark.parametrize("key", ["pebal", "balanced_energy"])
def test_our_defaults_are_the_recorded_official_values(key):
    recorded = json.loads(str(_fixture()["params_json"]))[key]
    objective = make_objective(key.replace("_", "-"))
    ours = objective.get_params()
    if "prior" in ours:
        assert ours["prior"] is None  # None = the official hard-coded frequencies
        ours["prior"] = list(CITYSCAPES_PRIOR)
    shared = {k: v for k, v in recorded.items() if k in ours}
    assert shared == {k: ours[k] for k in shared}
    # every recorded value is either one of our parameters or a constant we reproduce; the one exception is the
    # official fallback reward of an empty image group, a case where the official loss is NaN and ours is 0
    rest = {k: v for k, v in recorded.items() if k not in ours and k != "empty_group_reward"}
    assert rest == _OFFICIAL_CONSTANTS
    assert set(ours) - set(recorded) == set()


@pytest.mark.parametrize("key", ["pebal", "balanced_energy"])
@pytest.mark.parametrize("case", _fixture_cases())
def test_matches_the_official_code(case, key):
    fx = _fixture()
    objective = make_objective(key.replace("_", "-"))  # the defaults: the official values (test above)
    logits = torch.from_numpy(fx[f"{case}/logits"]).requires_grad_(True)
    labels = torch.from_numpy(fx[f"{case}/labels"])
    loss, parts = objective(logits, labels)
    loss.backward()
    assert loss.dtype == logits.dtype
    want = float(fx[f"{case}/{key}/loss"])
    assert abs(loss.item() - want) <= 1e-5 * abs(want), (loss.item(), want)
    grad = fx[f"{case}/{key}/grad"]
    assert np.abs(logits.grad.numpy() - grad).max() <= 1e-5 * np.abs(grad).max()
    # the recorded pieces: the Gambler of each image group, the (unweighted) energy loss, its smoothness term
    pieces = {"gambler_in": parts["gambler_clean"], "gambler_out": parts["gambler_ood_in"] + parts["gambler_ood_out"],
              "energy": parts["energy"], "energy_smooth": parts["energy_smooth"]}
    for piece, value in pieces.items():
        if f"{case}/{key}/{piece}" in fx:
            assert value == pytest.approx(float(fx[f"{case}/{key}/{piece}"]), rel=1e-5, abs=1e-9), piece
        else:  # the official code computes no Gambler for an empty image group
            assert piece == "gambler_out" and value == 0.0
    assert parts["gambler"] + objective.energy_weight * parts["energy"] == pytest.approx(loss.item(), rel=1e-6)


def test_fixture_covers_the_issue_cases():
    fx = _fixture()
    cases = [str(c) for c in fx["cases"]]
    dtypes = {fx[f"{c}/logits"].dtype for c in cases}
    assert dtypes == {np.dtype(np.float32), np.dtype(np.float64)}
    some_clean = some_ood = some_void = no_ood_case = False
    for c in cases:
        logits, labels = fx[f"{c}/logits"], fx[f"{c}/labels"]
        assert logits.shape[1] == 20 and logits.shape[0] >= 3 and labels.dtype == np.uint8
        has = (labels == 254).reshape(len(labels), -1).any(axis=1)
        some_clean |= bool((~has).any())
        some_ood |= bool(has.any() and (~has).any())
        some_void |= bool((labels == 255).any())
        no_ood_case |= not has.any()
    assert some_clean and some_ood and some_void and no_ood_case


# ------------------------------------------------------------------ (2) an independent float64 re-derivation, per term


def _np_lse(v):
    m = v.max()
    return m + math.log(np.exp(v - m).sum())


def _np_blur(img):
    """torchvision's GaussianBlur(7, sigma=1): normalized exp(-x²/2), x = -3..3, mirror padding (no edge repeat).
    torchvision builds the kernel in float32 whatever the image's dtype, so the float64 reward carries its rounding."""
    k = np.exp(-0.5 * np.arange(-3, 4, dtype=np.float32) ** 2)
    k = (k / k.sum()).astype(np.float64)
    pad = np.pad(img, 3, mode="reflect")  # numpy's "reflect" does not repeat the edge
    h, w = img.shape
    out = np.zeros_like(img)
    for y in range(h):
        for x in range(w):
            out[y, x] = sum(k[i] * k[j] * pad[y + i, x + j] for i in range(7) for j in range(7))
    return out


def _np_terms(logits, labels, c, *, m_in=-12.0, m_out=-6.0, energy_weight=0.1, ood_reg=0.1, sparsity=5e-4,
              smoothness=3e-6, prior=None, gamma1=3.0, gamma2=3.0, alpha=5.0):
    """Every term, pixel by pixel in float64, from the formulas of the issue / the official code (a mean over no
    element is 0: the convention for the degenerate batches)."""
    n, _, h, w = logits.shape
    clean, ood_in, outlier, e_in, e_out, w_out, margins = [], [], [], [], [], [], []
    energy = np.zeros((n, h, w))
    if prior is not None:
        p1 = np.asarray(prior, float) ** gamma1 / np.sum(np.asarray(prior, float) ** gamma1)
        p2 = np.asarray(prior, float) ** gamma2 / np.sum(np.asarray(prior, float) ** gamma2)
    for i in range(n):
        has_ood = bool((labels[i] == 254).any())
        lse = np.array([[_np_lse(logits[i, :c, y, x]) for x in range(w)] for y in range(h)])
        energy[i] = -lse
        reward = _np_blur(lse ** 2)
        for y in range(h):
            for x in range(w):
                z = logits[i, :, y, x]
                p = np.exp(z - _np_lse(z))
                share = p[c] / reward[y, x]
                lab = int(labels[i, y, x])
                e = -lse[y, x]
                if lab < c:
                    (ood_in if has_ood else clean).append(math.log(p[lab] + share))
                    e_in.append(e)
                elif lab == 254:
                    outlier.extend(math.log(max(p[k] + share, 1e-7)) for k in range(c))
                    wt = 1.0
                    if prior is not None:
                        s = np.exp(z[:c] - _np_lse(z[:c]))
                        margins.append(s @ p1)
                        wt = s @ p2
                        e = e - alpha * (s @ p1)
                    e_out.append(e)
                    w_out.append(wt)

    def mean(v):
        return float(np.mean(v)) if len(v) else 0.0

    hinge_in = mean([max(e - m_in, 0.0) ** 2 for e in e_in])
    smooth = 0.5 * (np.sum(np.diff(energy, axis=1) ** 2) + np.sum(np.diff(energy, axis=2) ** 2))
    terms = {"gambler_clean": -mean(clean), "gambler_ood_in": -mean(ood_in),
             "gambler_ood_out": -ood_reg * mean(outlier), "energy_smooth": smoothness * smooth}
    if e_out:
        hinge_out = sum(wt * max(m_out - e, 0.0) ** 2 for e, wt in zip(e_out, w_out)) / sum(w_out)
        terms.update(energy_in=0.5 * hinge_in, energy_out=0.5 * hinge_out,
                     energy_sparsity=sparsity * math.sqrt(sum(e * e for e in e_out)))
    else:  # no OOD pixel in the batch: the inlier hinge is not halved
        terms.update(energy_in=hinge_in, energy_out=0.0, energy_sparsity=0.0)
    gambler = terms["gambler_clean"] + terms["gambler_ood_in"] + terms["gambler_ood_out"]
    energy = terms["energy_in"] + terms["energy_out"] + terms["energy_sparsity"] + terms["energy_smooth"]
    terms.update(gambler=gambler, energy=energy, total=gambler + energy_weight * energy)
    if prior is not None:
        terms["ood_margin"] = mean(margins)
        terms["ood_weight"] = mean(w_out) if e_out else 0.0
    return terms


# a tiny hand-made batch: 3 classes + abstention, 3 images of 4x5: a clean one (with void and a stray value 7,
# void too), one with OOD pixels, one that is half OOD
TINY_LABELS = np.array([
    [[0, 1, 2, 255, 0], [1, 1, 2, 2, 7], [0, 0, 255, 1, 2], [2, 1, 0, 0, 1]],
    [[0, 254, 254, 1, 2], [0, 254, 254, 1, 255], [2, 2, 1, 0, 0], [255, 255, 1, 1, 0]],
    [[254, 254, 254, 254, 254], [254, 254, 254, 254, 254], [0, 1, 2, 0, 1], [255, 2, 2, 1, 0]],
], dtype=np.uint8)


def _tiny_logits(scale, seed=0):
    return np.random.default_rng(seed).normal(0.0, scale, size=(3, 4, 4, 5))


# margins chosen so that both hinges are active on some pixels and inactive on others
TINY_PARAMS = [
    dict(m_in=-3.0, m_out=-1.5, ood_reg=0.3, sparsity=1e-2, smoothness=1e-2),
    dict(m_in=-2.5, m_out=-2.0, ood_reg=1.0, sparsity=0.0, smoothness=0.0, energy_weight=0.5),
    dict(),  # the published defaults (logits scaled up so that E reaches the margins)
]


def _check_terms(objective, logits, labels, want):
    x = torch.tensor(logits, dtype=torch.float64)
    loss, parts = objective(x, torch.from_numpy(labels))
    total = want.pop("total")
    for key, value in want.items():
        assert parts[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert loss.item() == pytest.approx(total, rel=1e-9)
    # the gradient is autograd's: check it against finite differences of the same function
    xg = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: objective(t, torch.from_numpy(labels))[0], (xg,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("params", TINY_PARAMS)
def test_pebal_terms_match_a_float64_rederivation(params):
    logits = _tiny_logits(1.5 if params else 8.0)
    objective = make_objective("pebal", num_classes=3, **params)
    want = _np_terms(logits, TINY_LABELS, 3, **params)
    assert want["energy_out"] > 0 and want["energy_in"] > 0  # both hinges active
    _check_terms(objective, logits, TINY_LABELS, want)


@pytest.mark.parametrize("params", TINY_PARAMS)
def test_balanced_energy_terms_match_a_float64_rederivation(params):
    logits = _tiny_logits(1.5 if params else 8.0, seed=1)
    prior = [0.5, 0.1, 0.4]
    be = dict(prior=prior, gamma1=2.0, gamma2=1.5, alpha=0.7)
    objective = make_objective("balanced-energy", num_classes=3, **be, **params)
    want = _np_terms(logits, TINY_LABELS, 3, **be, **params)
    assert want["energy_out"] > 0
    _check_terms(objective, logits, TINY_LABELS, want)


def test_balanced_energy_with_gamma_alpha_zero_is_pebal():
    x = torch.tensor(_tiny_logits(1.5), dtype=torch.float64)
    y = torch.from_numpy(TINY_LABELS)
    params = dict(num_classes=3, m_in=-3.0, m_out=-1.5)
    be, _ = make_objective("balanced-energy", gamma1=0, gamma2=0, alpha=0, prior=[1, 2, 3], **params)(x, y)
    pe, _ = make_objective("pebal", **params)(x, y)
    assert be.item() == pytest.approx(pe.item(), rel=1e-12)


def test_default_prior_is_the_official_cityscapes_frequencies():
    assert len(CITYSCAPES_PRIOR) == 19 and CITYSCAPES_PRIOR[0] == 0.152509041 and CITYSCAPES_PRIOR[-1] == 0.009393
    x = torch.randn(2, 20, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 4
    y = torch.randint(0, 19, (2, 6, 6), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    y[0, 1:4, 1:4] = 254
    a, _ = make_objective("balanced-energy")(x, y)
    # any positive scale of the same prior is the same objective (only normalized powers enter)
    b, _ = make_objective("balanced-energy", prior=[v * 1000 for v in CITYSCAPES_PRIOR])(x, y)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_maxent_objective_is_maxent_loss_unchanged():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 19, 6, 7, generator=gen)
    y = torch.randint(0, 19, (2, 6, 7), generator=gen).to(torch.uint8)
    y[0, :2] = 254
    y[1, -1] = 255
    for lam, target in [(0.9, "entropy"), (0.3, "logit")]:
        loss, parts = make_objective("maxent", lam=lam, optim_target=target)(x, y)
        ref, ref_parts = maxent_loss(x, y, lam=lam, optim_target=target)
        assert torch.equal(loss, ref)
        assert parts == {k: float(v) for k, v in ref_parts.items()}


# ---------------------------------------------------------------------------------------------------- (3) bad input


def test_unknown_objective_lists_the_valid_ones():
    with pytest.raises(MaxentError, match=r"unknown objective 'gambler'; valid: maxent, pebal, balanced-energy$"):
        make_objective("gambler")


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(MaxentError) as err:
        make_objective("pebal", m_inn=-12)
    msg = str(err.value)
    assert "\n" not in msg and "'m_inn'" in msg
    assert msg.endswith("valid: m_in, m_out, energy_weight, ood_reg, sparsity, smoothness, num_classes")
    with pytest.raises(MaxentError, match=r"objective 'maxent' has no parameter 'alpha'; valid: lam, optim_target"):
        make_objective("maxent", alpha=1)


@pytest.mark.parametrize("name, params, fragment", [
    ("pebal", dict(m_in="a"), "m_in must be a finite number, got 'a'"),
    ("pebal", dict(m_out=float("nan")), "m_out must be a finite number"),
    ("pebal", dict(ood_reg=-0.1), "ood_reg must be a finite number >= 0, got -0.1"),
    ("pebal", dict(energy_weight=True), "energy_weight must be a finite number >= 0, got True"),
    ("pebal", dict(num_classes=0), "num_classes must be an integer >= 1, got 0"),
    ("pebal", dict(num_classes=19.0), "num_classes must be an integer >= 1"),
    ("balanced-energy", dict(prior=[0.5, 0.5]), "prior must be None (the Cityscapes frequencies) or 19 positive"),
    ("balanced-energy", dict(prior=[0.0] + [0.1] * 18), "prior must be None"),
    ("balanced-energy", dict(prior="uniform"), "prior must be None"),
    ("balanced-energy", dict(num_classes=3), "prior must be given when num_classes != 19"),
    ("balanced-energy", dict(alpha=float("inf")), "alpha must be a finite number"),
    ("maxent", dict(lam=1.5), "lam must be a finite number >= 0 and <= 1, got 1.5"),
    ("maxent", dict(optim_target="kl"), "optim_target must be one of entropy, logit, got 'kl'"),
])
def test_bad_values_one_line(name, params, fragment):
    with pytest.raises(MaxentError) as err:
        make_objective(name, **params)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"objective {name!r}: ") and fragment in msg, msg


def test_every_bad_value_in_one_line():
    with pytest.raises(MaxentError) as err:
        make_objective("balanced-energy", m_in="x", sparsity=-1, gamma1=None)
    msg = str(err.value)
    assert "\n" not in msg and "m_in" in msg and "sparsity" in msg and "gamma1" in msg


@pytest.mark.parametrize("shape, labels_shape, dtype, fragment", [
    ((2, 19, 8, 8), (2, 8, 8), torch.uint8, "logits must have 20 channels (the classes + the abstention channel"),
    ((2, 20, 8, 8), (2, 8, 9), torch.uint8, "labels must be (N, H, W) = (2, 8, 8), got (2, 8, 9)"),
    ((2, 20, 8, 8), (2, 8, 8), torch.float32, "labels must be an integer tensor"),
    ((2, 20, 3, 8), (2, 3, 8), torch.uint8, "the reward blur (7 taps) needs H, W >= 4"),
    ((20, 8, 8), (2, 8, 8), torch.uint8, "logits must be a float tensor (N, C, H, W)"),
])
def test_bad_batches_one_line(shape, labels_shape, dtype, fragment):
    with pytest.raises(MaxentError) as err:
        make_objective("pebal")(torch.zeros(shape), torch.zeros(labels_shape, dtype=dtype))
    assert "\n" not in str(err.value) and fragment in str(err.value), str(err.value)


def test_parse_objective_kwargs():
    text = "m_out=-5, optim_target=logit,prior=[1, 2.5, 3],gamma1=2"
    assert parse_objective_kwargs(text) == {"m_out": -5, "optim_target": "logit", "prior": [1, 2.5, 3], "gamma1": 2}
    assert parse_objective_kwargs("") == {}
    assert parse_objective_kwargs("prior=null,") == {"prior": None}
    objective = make_objective("balanced-energy", **parse_objective_kwargs("num_classes=3,prior=[1,2,3],alpha=1"))
    assert objective.prior == (1.0, 2.0, 3.0) and objective.alpha == 1.0
    for bad in ("m_out", "=3", "a=1,a=2"):
        with pytest.raises(MaxentError, match="--objective-kwargs"):
            parse_objective_kwargs(bad)


# ------------------------------------------------------------------------------------- (4) degenerate batches: no NaN


def _random_batch(seed=0, n=3, h=8, w=9, scale=3.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, 20, h, w, generator=gen, dtype=torch.float64) * scale).to(dtype)
    y = torch.randint(0, 19, (n, h, w), generator=gen).to(torch.uint8)
    return x, y


def _degenerate(kind):
    x, y = _random_batch()
    if kind == "every_image_has_ood":  # no clean image: the official code's clean-group mean is NaN
        y[:, 0, 0] = 254
    elif kind == "no_ood":
        pass
    elif kind == "an_image_entirely_void":
        y[1] = 255
        y[0, 2:5, 2:5] = 254
    elif kind == "all_void":
        y[:] = 255
    elif kind == "all_ood":  # no in-distribution pixel at all
        y[:] = 254
    elif kind == "ood_and_void_only":
        y[:] = 255
        y[:, :3] = 254
    elif kind == "huge_logits":  # softmax probabilities underflow in float32
        x = x * 300
        y[0, 1:3, 1:3] = 254
    return x, y


DEGENERATE = ["every_image_has_ood", "no_ood", "an_image_entirely_void", "all_void", "all_ood", "ood_and_void_only",
              "huge_logits"]


@pytest.mark.parametrize("name", OBJECTIVES)
@pytest.mark.parametrize("kind", DEGENERATE)
def test_degenerate_batches_give_a_finite_loss_and_gradient(name, kind):
    x, y = _degenerate(kind)
    objective = make_objective(name)
    if not objective.abstention:
        x = x[:, :19]
    x = x.clone().requires_grad_(True)
    loss, parts = objective(x, y)
    loss.backward()
    assert torch.isfinite(loss), (kind, loss)
    assert torch.isfinite(x.grad).all(), kind
    assert all(math.isfinite(v) for v in parts.values()), parts


def test_degenerate_conventions():
    """A mean over no pixel is 0: the terms of an absent group vanish, the rest is the usual formula."""
    pebal = make_objective("pebal")
    x, y = _degenerate("every_image_has_ood")
    _, parts = pebal(x, y)
    assert parts["gambler_clean"] == 0.0 and parts["gambler_ood_in"] > 0 and parts["n_ood_images"] == 3
    x, y = _degenerate("all_void")
    loss, parts = pebal(x, y)
    assert parts["gambler"] == 0.0 and parts["energy_in"] == 0.0 and parts["energy_out"] == 0.0
    assert loss.item() == pytest.approx(0.1 * parts["energy_smooth"])  # only the smoothness runs over void
    x, y = _degenerate("no_ood")
    _, parts = pebal(x, y)
    assert parts["energy_out"] == 0.0 and parts["energy_sparsity"] == 0.0 and parts["gambler_ood_out"] == 0.0


@pytest.mark.parametrize("name", ABSTENTION)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(name, dtype):
    x, y = _random_batch()
    y[0, 1:4, 1:4] = 254
    half = x.to(dtype)
    objective = make_objective(name)
    loss, parts = objective(half, y)
    ref, ref_parts = objective(half.float(), y)
    assert loss.dtype == torch.float32 and loss.item() == ref.item() and parts == ref_parts
    h = half.clone().requires_grad_(True)
    objective(h, y)[0].backward()
    assert h.grad.dtype == dtype and torch.isfinite(h.grad.float()).all()


@pytest.mark.parametrize("name", ABSTENTION)
def test_autocast_around_the_call_changes_nothing(name):
    x, y = _random_batch()
    y[2, 4:7, 1:3] = 254
    objective = make_objective(name)
    ref, _ = objective(x, y)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss, _ = objective(x, y)
    assert loss.dtype == torch.float32 and loss.item() == ref.item()


def test_int64_labels_and_float64_logits():
    x, y = _random_batch(dtype=torch.float64)
    y[1, 2:6, 2:6] = 254
    a, _ = make_objective("pebal")(x, y)
    b, _ = make_objective("pebal")(x, y.long())
    assert a.dtype == torch.float64 and a.item() == b.item()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", OBJECTIVES)
def test_cuda_equals_cpu(name):
    x, y = _random_batch(dtype=torch.float64)
    y[0, 2:5, 2:5] = 254
    y[1, 0] = 255
    objective = make_objective(name)
    if not objective.abstention:
        x = x[:, :19].contiguous()
    xc = x.clone().requires_grad_(True)
    xg = x.cuda().requires_grad_(True)
    lc, pc = objective(xc, y)
    lg, pg = objective(xg, y.cuda())
    lc.backward()
    lg.backward()
    assert lg.device.type == "cuda"
    assert lg.item() == pytest.approx(lc.item(), rel=1e-10)
    assert torch.allclose(xg.grad.cpu(), xc.grad, rtol=1e-8, atol=1e-12)
    assert pg == pytest.approx(pc, rel=1e-8, abs=1e-12)


# ---------------------------------------------------------------------------------------------- (5) the registry


def test_registry_matches_the_choices():
    assert OBJECTIVES == ("maxent", "pebal", "balanced-energy")
    assert ObjectiveName.__args__ == OBJECTIVES
    assert [objective_class(n) for n in OBJECTIVES] == [MaxEntObjective, PebalObjective, BalancedEnergyObjective]
    for name in OBJECTIVES:
        objective = make_objective(name)
        assert isinstance(objective, Objective) and objective.name == name
        assert objective.abstention == (name in ABSTENTION)
        assert objective.default_train_only == ((CLASSIFIER_BLOCK,) if name in ABSTENTION else None)
    assert make_objective("pebal").num_outputs == 20 and make_objective("maxent").num_outputs is None
    assert make_objective("pebal", num_classes=3).num_outputs == 4


def test_published_defaults():
    assert make_objective("maxent").get_params() == {"lam": 0.9, "optim_target": "entropy"}
    pebal = {"m_in": -12.0, "m_out": -6.0, "energy_weight": 0.1, "ood_reg": 0.1, "sparsity": 5e-4,
             "smoothness": 3e-6, "num_classes": 19}
    assert make_objective("pebal").get_params() == pebal
    assert make_objective("balanced-energy").get_params() == {"gamma1": 3.0, "gamma2": 3.0, "alpha": 5.0,
                                                              "prior": None, **pebal}


@pytest.mark.parametrize("name, params", [
    ("maxent", {}), ("maxent", dict(lam=0.5, optim_target="logit")),
    ("pebal", {}), ("pebal", dict(m_in=-10, m_out=-4.5, ood_reg=0, num_classes=3)),
    ("balanced-energy", {}), ("balanced-energy", dict(prior=np.arange(1, 20) / 10, gamma1=1, alpha=2)),
    ("balanced-energy", dict(prior=torch.tensor([1.0, 2.0, 3.0]), num_classes=3)),
])
def test_params_round_trip_through_json(name, params):
    objective = make_objective(name, **params)
    got = objective.get_params()
    again = make_objective(name, **json.loads(json.dumps(got)))
    assert type(again) is type(objective) and again.get_params() == got
    assert repr(again) == repr(objective) and repr(objective).startswith(type(objective).__name__ + "(")
