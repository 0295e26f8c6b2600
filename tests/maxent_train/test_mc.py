"""MC-dropout moments vs brute force over T explicit stochastic passes (float64 numpy), BatchNorm frozen."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from maxent_train import MaxentError
from maxent_train.mc import PowerSums, enable_mc_dropout, mc_dropout_mode, mc_moments
from maxent_train.models import create_model

torch.set_num_threads(1)


def _model(dropout=0.5, num_classes=4):
    torch.manual_seed(1)
    m = create_model("tiny_segnet", num_classes=num_classes, dropout=dropout, width=8)
    # non-trivial BatchNorm running stats so that train-mode BN would visibly differ
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m


def _brute_force(model, x, T, K, seed, moments_of):
    """T plain model(x) calls in MC mode after torch.manual_seed(seed); moments in float64 numpy."""
    model.eval()
    for mod in model.modules():
        if isinstance(mod, nn.Dropout2d):
            mod.train()
    torch.manual_seed(seed)
    with torch.no_grad():
        outs = np.stack([model(x).double().numpy() for _ in range(T)])  # (T, N, C, H, W)
    e = np.exp(outs - outs.max(axis=2, keepdims=True))
    probs = e / e.sum(axis=2, keepdims=True)
    vals = outs if moments_of == "logits" else probs
    mean = vals.mean(0)
    central = np.stack([((vals - mean) ** k).mean(0) for k in range(2, K + 1)], axis=1)  # (N, K-1, C, H, W)
    pm = probs.mean(0)
    entropy = -(pm * np.log(pm)).sum(1)
    return mean, central, entropy


@pytest.mark.parametrize("moments_of", ["logits", "probs"])
@pytest.mark.parametrize("head_only", [True, False])
def test_mc_moments_equal_brute_force(moments_of, head_only):
    model = _model()
    x = torch.randn(2, 3, 24, 32)
    T, K, seed = 12, 4, 7
    got = mc_moments(model, x, samples=T, order=K, moments_of=moments_of, head_only=head_only, seed=seed)
    mean, central, entropy = _brute_force(model, x, T, K, seed, moments_of)
    assert got["head_only"] is head_only
    assert got["mean"].shape == (2, 4, 24, 32) and got["central"].shape == (2, K - 1, 4, 24, 32)
    assert got["entropy"].shape == (2, 24, 32)
    assert central[:, 0].max() > 1e-3  # dropout really is active: the test would catch frozen passes
    np.testing.assert_allclose(got["mean"].numpy(), mean, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got["central"].numpy(), central, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got["entropy"].numpy(), entropy, atol=1e-4, rtol=0)


@pytest.mark.parametrize("head_only", [True, False])
def test_native_moments_are_those_of_the_native_samples(head_only):
    """native=True samples forward_native (head-only: forward_head(feats, None)) with the same masks: moments of the
    logits before the final upsampling (memory independent of the input size); only the mean commutes with that
    upsampling, the central moments and the entropy do not."""
    import torch.nn.functional as F

    model = _model()
    x = torch.randn(1, 3, 24, 32)
    T, K, seed = 8, 3, 5
    got = mc_moments(model, x, samples=T, order=K, head_only=head_only, seed=seed, native=True)
    assert got["mean"].shape == (1, 4, 6, 8) and got["central"].shape == (1, K - 1, 4, 6, 8)
    assert got["entropy"].shape == (1, 6, 8) and got["head_only"] is head_only
    enable_mc_dropout(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        outs = torch.stack([model.forward_native(x)[0] for _ in range(T)]).double()
    model.eval()
    mu = outs.mean(0)
    np.testing.assert_allclose(got["mean"][0].numpy(), mu.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["central"][0, 1].numpy(), ((outs - mu) ** 3).mean(0).numpy(), atol=1e-4)
    pm = torch.softmax(outs, 1).mean(0)
    np.testing.assert_allclose(got["entropy"][0].numpy(), -(pm * pm.log()).sum(0).numpy(), atol=1e-5)
    full = mc_moments(model, x, samples=T, order=K, head_only=head_only, seed=seed)      # at the input size
    up = F.interpolate(got["mean"], size=(24, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, full["mean"], atol=1e-5, rtol=1e-5)                  # the mean commutes
    up2 = F.interpolate(got["central"][:, 0], size=(24, 32), mode="bilinear", align_corners=False)
    assert (up2 - full["central"][:, 0]).abs().max() > 1e-3                            # the variance does not
    with pytest.raises(MaxentError, match="has no forward_native"):
        mc_moments(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Dropout2d(0.5)), x, samples=2, native=True)


def test_head_only_equals_full_and_is_seeded():
    model = _model()
    x = torch.randn(1, 3, 16, 16)
    a = mc_moments(model, x, samples=6, order=3, head_only=True, seed=3)
    b = mc_moments(model, x, samples=6, order=3, head_only=False, seed=3)
    c = mc_moments(model, x, samples=6, order=3, head_only=True, seed=4)
    torch.testing.assert_close(a["central"], b["central"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a["central"], c["central"])
    # batched passes: deterministic for a given sample_batch, and equal to brute force over the same masks
    d1 = mc_moments(model, x, samples=6, order=3, seed=3, sample_batch=4)
    d2 = mc_moments(model, x, samples=6, order=3, seed=3, sample_batch=4)
    assert torch.equal(d1["central"], d2["central"])


def test_batched_samples_equal_brute_force_over_repeated_batch():
    """sample_batch=b runs model on x repeated b times; brute-force that literally."""
    model = _model()
    x = torch.randn(1, 3, 16, 16)
    got = mc_moments(model, x, samples=6, order=4, seed=2, sample_batch=3, head_only=True)
    enable_mc_dropout(model)
    torch.manual_seed(2)
    with torch.no_grad():
        outs = torch.cat([model(x.repeat(3, 1, 1, 1)) for _ in range(2)]).double().numpy()  # (6, C, H, W)
    mean = outs.mean(0)
    np.testing.assert_allclose(got["mean"][0].numpy(), mean, atol=1e-4)
    np.testing.assert_allclose(got["central"][0, 2].numpy(), ((outs - mean) ** 4).mean(0), atol=1e-4, rtol=1e-4)


def test_batchnorm_stays_in_eval():
    model = _model(dropout=0.3)
    model.train()
    with mc_dropout_mode(model) as n:
        assert n == 1
        assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        assert model.dropout.training
    assert model.training and all(m.training for m in model.modules())  # previous flags restored
    # with p=0 the MC mean of one image does not depend on the batch it is in (it would with train-mode BN)
    model = _model(dropout=0.0)
    x = torch.randn(3, 3, 16, 16)
    one = mc_moments(model, x[:1], samples=2, order=2)
    three = mc_moments(model, x, samples=2, order=2)
    torch.testing.assert_close(one["mean"][0], three["mean"][0], atol=1e-5, rtol=1e-5)
    assert one["central"].abs().max() < 1e-6


def test_caller_rng_untouched():
    model, x = _model(), torch.randn(1, 3, 8, 8)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    mc_moments(model, x, samples=3, order=2)
    assert torch.equal(torch.rand(3), expected)


def test_powersums_float32_shifted_vs_float64():
    rng = np.random.default_rng(0)
    # large offset + small spread: raw power sums in float32 would lose everything, shifted sums must not
    data = 1000.0 + rng.gamma(2.0, 0.01, size=(64, 5, 3))
    ps = PowerSums(4)
    for i in range(0, 64, 16):  # batches plus single updates
        ps.update_batch(torch.tensor(data[i:i + 15], dtype=torch.float32))
        ps.update(torch.tensor(data[i + 15], dtype=torch.float32))
    x32 = data.astype(np.float32).astype(np.float64)  # the inputs as float32 saw them
    mu = x32.mean(0)
    assert ps.count == 64
    np.testing.assert_allclose(ps.mean().numpy(), mu, rtol=1e-6)
    for k in range(2, 5):
        ref = ((x32 - mu) ** k).mean(0)
        scale = (x32.std(0) ** k)
        np.testing.assert_allclose(ps.central()[k - 2].numpy() / scale, ref / scale, atol=2e-3)
    with pytest.raises(MaxentError, match="sample shape"):
        ps.update(torch.zeros(2, 2))
    with pytest.raises(MaxentError, match="empty"):
        PowerSums(2).mean()
    assert PowerSums(1).order == 1


@pytest.mark.parametrize("order", [1, 2, 3, 5, 6])
def test_powersums_orders(order):
    rng = np.random.default_rng(order)
    data = rng.normal(3.0, 2.0, size=(20, 4)) ** 2
    ps = PowerSums(order, dtype=torch.float64)
    ps.update_batch(torch.tensor(data[:7]))
    ps.update_batch(torch.tensor(data[7:]))
    mu = data.mean(0)
    np.testing.assert_allclose(ps.mean().numpy(), mu, rtol=1e-12)
    ref = np.stack([((data - mu) ** k).mean(0) for k in range(2, order + 1)]) if order > 1 else np.zeros((0, 4))
    assert ps.central().shape == (order - 1, 4)
    np.testing.assert_allclose(ps.central().numpy(), ref, rtol=1e-9)


def test_model_without_head_split_or_dropout():
    class Plain(nn.Module):
        def __init__(self, with_dropout=True):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.drop = nn.Dropout(0.5) if with_dropout else nn.Identity()

        def forward(self, x):
            return self.drop(self.conv(x))

    torch.manual_seed(0)
    m = Plain()
    x = torch.randn(1, 3, 5, 5)
    got = mc_moments(m, x, samples=5, order=2, seed=1)
    assert got["head_only"] is False
    m.train()
    torch.manual_seed(1)
    with torch.no_grad():
        outs = torch.stack([m(x) for _ in range(5)]).double()
    torch.testing.assert_close(got["mean"].double(), outs.mean(0), atol=1e-5, rtol=0)
    with pytest.raises(MaxentError, match="no dropout"):
        mc_moments(Plain(with_dropout=False), x, samples=2)
    with pytest.raises(MaxentError, match="moments_of"):
        mc_moments(m, x, moments_of="features")


# ------------------------------------------------------------------------ dropout that reaches the output (issue 12)
class _SMLLike(nn.Module):
    """SML's shape: dropout only in an auxiliary ``dsn`` head off the output path (``run_dsn``: computed in forward
    and discarded, so a hook alone would see it fire)."""

    def __init__(self, num_classes=4, run_dsn=False, with_attr=False):
        super().__init__()
        self.num_classes = num_classes
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.final = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 1))
        self.dsn = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Dropout2d(0.5), nn.Conv2d(8, num_classes, 1))
        self.run_dsn = run_dsn
        if with_attr:
            self.final_classifier = "final.2"

    def forward_features(self, x):
        return self.final[1](self.final[0](self.trunk(x)))

    def forward_head(self, feats, size):
        return nn.functional.interpolate(self.final[2](feats), size=tuple(size), mode="bilinear")

    def forward(self, x):
        feats = self.trunk(x)
        out = self.forward_head(self.final[1](self.final[0](feats)), x.shape[-2:])
        if self.run_dsn:
            self.dsn(feats)                 # an auxiliary output nobody uses, computed after the main one
        return out


@pytest.mark.parametrize("run_dsn", [False, True])
@pytest.mark.parametrize("with_attr", [False, True])
def test_dropout_off_the_output_path_is_refused_and_mc_dropout_inserts_one(run_dsn, with_attr):
    from maxent_train.mc import dropout_on_output_path, prepare_mc_dropout

    torch.manual_seed(0)
    m = _SMLLike(run_dsn=run_dsn, with_attr=with_attr).eval()
    x = torch.randn(1, 3, 12, 16)
    with torch.no_grad():
        plain = m(x)
    assert dropout_on_output_path(m, x) == []
    # what the check prevents: sampling gives all-zero central moments
    assert mc_moments(m, x, samples=4, order=2)["central"].abs().max() == 0
    with pytest.raises(MaxentError) as ei:
        prepare_mc_dropout(m, x, name="sml_like")
    msg = str(ei.value)
    assert "model sml_like" in msg and "--mc-dropout P" in msg and "dsn.1" in msg and "\n" not in msg
    keys = list(m.state_dict())
    where = prepare_mc_dropout(m, x, p=0.2, name="sml_like")
    assert where == "Dropout2d(p=0.2) on the input of final.2"     # the output path's classifier, never dsn.2
    assert dropout_on_output_path(m, x) == ["final.2.mc_dropout"]
    assert list(m.state_dict()) == keys                             # no new state: checkpoints unaffected
    with torch.no_grad():
        assert torch.equal(m.eval()(x), plain)                      # identity in eval mode: plain logits unchanged
    got = mc_moments(m, x, samples=6, order=3, seed=1)
    assert got["head_only"] is True and got["central"][:, 0].max() > 1e-3
    with pytest.raises(MaxentError, match="already has dropout on its output path"):
        prepare_mc_dropout(m, x, p=0.2, name="sml_like")


def test_mc_dropout_check_on_models_with_their_own_dropout():
    from maxent_train.mc import prepare_mc_dropout

    x = torch.randn(1, 3, 16, 16)
    assert prepare_mc_dropout(_model(dropout=0.3), x, name="tiny_segnet") is None
    with pytest.raises(MaxentError, match=r"--mc-dropout 0.1: model tiny_segnet already has dropout on its output "
                                          r"path \(dropout\)"):
        prepare_mc_dropout(_model(dropout=0.3), x, p=0.1, name="tiny_segnet")
    with pytest.raises(MaxentError, match=r"its dropout layers \(dropout\) have p = 0"):
        prepare_mc_dropout(_model(dropout=0.0), x, name="tiny_segnet")
    m = _model(dropout=0.0)                                         # p = 0 is no dropout: insertion allowed
    assert prepare_mc_dropout(m, x, p=0.1) == "Dropout2d(p=0.1) on the input of classifier"

    class Plain(nn.Module):
        num_classes = 4

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(MaxentError, match="it has no dropout layer"):
        prepare_mc_dropout(Plain(), x, name="plain")


def test_a_model_may_insert_its_own_mc_dropout():
    from maxent_train.mc import prepare_mc_dropout

    class Own(_SMLLike):
        def insert_mc_dropout(self, p):
            self.final[1] = nn.Sequential(nn.ReLU(), nn.Dropout(p))
            return f"Dropout({p}) after final.1"

    m = Own()
    assert prepare_mc_dropout(m, torch.randn(1, 3, 8, 8), p=0.3) == "Dropout(0.3) after final.1"

    class Broken(_SMLLike):
        def insert_mc_dropout(self, p):
            self.dsn[1].p = p          # stays off the output path: the check after the insertion catches it
            return "dsn"

    with pytest.raises(MaxentError, match="does not reach model broken's logits"):
        prepare_mc_dropout(Broken(), torch.randn(1, 3, 8, 8), p=0.3, name="broken")


def test_dropout_that_runs_but_is_discarded_is_not_on_the_output_path():
    """No head split: full passes, and the dsn dropout really runs in forward (a forward hook fires) yet changes
    nothing in the logits: still refused; the inserted dropout goes before the last classifier that matters."""
    from maxent_train.mc import dropout_on_output_path, output_depends_on, prepare_mc_dropout

    class NoSplit(nn.Module):
        num_classes = 4

        def __init__(self):
            super().__init__()
            self.inner = _SMLLike(run_dsn=True)

        def forward(self, x):
            return self.inner(x)

    torch.manual_seed(0)
    m, x = NoSplit(), torch.randn(1, 3, 12, 12)
    fired, changed = output_depends_on(m, x, {"inner.dsn.1": m.inner.dsn[1]})
    assert fired == ["inner.dsn.1"] and not changed
    assert dropout_on_output_path(m, x) == []
    with pytest.raises(MaxentError, match=r"its dropout \(inner.dsn.1\) is off the path to the logits"):
        prepare_mc_dropout(m, x, name="nosplit")
    assert prepare_mc_dropout(m, x, p=0.5) == "Dropout2d(p=0.5) on the input of inner.final.2"
    got = mc_moments(m, x, samples=4, order=2, seed=0)
    assert got["head_only"] is False and got["central"].abs().max() > 1e-3
