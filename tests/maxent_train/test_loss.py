"""maxent_loss vs an independent numpy computation of meta-ood's soft-target formula (and the seed's logit target)."""
import numpy as np
import pytest
import torch

from maxent_train import MaxentError
from maxent_train.loss import maxent_loss

C = 5


def _case(seed=0, n=2, h=7, w=9, dtype=torch.float32):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, C, h, w))
    # ID trainIds, OOD (254), void (255) and stray values (≥ C, e.g. 19, 200) which count as void
    labels = rng.choice([0, 1, 2, 3, 4, 254, 254, 255, 19, 200], size=(n, h, w)).astype(np.uint8)
    return logits, labels, torch.tensor(logits, dtype=dtype), torch.from_numpy(labels)


def _np_log_softmax(x):
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def _np_meta_ood(logits, labels, lam):
    """meta-ood literally: soft-target tensor (N, C, H, W), then mean(target * -log_softmax) over every element."""
    n, c, h, w = logits.shape
    target = np.zeros((n, c, h, w))
    for i in range(n):
        for y in range(h):
            for x in range(w):
                v = labels[i, y, x]
                if v < c:
                    target[i, v, y, x] = 1 - lam
                elif v == 254:
                    target[i, :, y, x] = lam / c
    return np.mean(target * -_np_log_softmax(logits))


def _np_logit_target(logits, labels, lam):
    y = np.where(labels < logits.shape[1], 1 - lam, np.where(labels == 254, -lam, 0.0))
    return -np.mean(logits.max(axis=1) * y)


@pytest.mark.parametrize("lam", [0.9, 0.5, 0.0, 1.0])
def test_entropy_target_matches_numpy_meta_ood(lam):
    logits_np, labels_np, logits, labels = _case(seed=int(lam * 10))
    loss, parts = maxent_loss(logits, labels, lam=lam, optim_target="entropy")
    # our reduction is the mean over pixels; meta-ood's also divides by C
    np.testing.assert_allclose(loss.item() / C, _np_meta_ood(logits_np, labels_np, lam), rtol=1e-5, atol=1e-7)
    # reduction="sum" and "none" are consistent with the same definition
    s, _ = maxent_loss(logits, labels, lam=lam, reduction="sum")
    np.testing.assert_allclose(s.item(), _np_meta_ood(logits_np, labels_np, lam) * logits_np.size, rtol=1e-5)
    pix, _ = maxent_loss(logits, labels, lam=lam, reduction="none")
    assert pix.shape == labels.shape
    assert torch.all(pix[(labels == 255) | (labels == 19) | (labels == 200)] == 0)


def test_parts_match_numpy():
    logits_np, labels_np, logits, labels = _case(seed=3)
    _, parts = maxent_loss(logits, labels)
    lp = _np_log_softmax(logits_np)
    is_id, is_ood = labels_np < C, labels_np == 254
    lab = np.where(is_id, labels_np, 0)
    ce = -np.take_along_axis(lp, lab[:, None], axis=1)[:, 0]
    ent = -(np.exp(lp) * lp).sum(1)
    assert parts["n_id"].item() == is_id.sum() and parts["n_ood"].item() == is_ood.sum()
    np.testing.assert_allclose(parts["id_ce"].item(), ce[is_id].mean(), rtol=1e-5)
    np.testing.assert_allclose(parts["ood_entropy"].item(), ent[is_ood].mean(), rtol=1e-5)
    np.testing.assert_allclose(parts["ood_uniform_ce"].item(), -lp.mean(1)[is_ood].mean(), rtol=1e-5)


@pytest.mark.parametrize("lam", [0.9, 0.3])
def test_logit_target_matches_numpy(lam):
    logits_np, labels_np, logits, labels = _case(seed=5)
    loss, _ = maxent_loss(logits, labels.long(), lam=lam, optim_target="logit")
    np.testing.assert_allclose(loss.item(), _np_logit_target(logits_np, labels_np, lam), rtol=1e-5, atol=1e-7)


def test_gradients_match_literal_soft_target_in_torch():
    """Autograd of our gather/mean form equals that of the literal one-hot soft-target form."""
    _, labels_np, logits, labels = _case(seed=7)
    a = logits.clone().requires_grad_(True)
    maxent_loss(a, labels, lam=0.9)[0].backward()
    b = logits.clone().requires_grad_(True)
    t = torch.zeros_like(b)
    lab = labels.long()
    for k in range(C):
        t[:, k][lab == k] = 0.1
    t.permute(0, 2, 3, 1)[lab == 254] = 0.9 / C
    (t * -torch.log_softmax(b, 1)).sum(1).mean().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_half_precision_logits_are_stable():
    logits_np, labels_np, _, labels = _case(seed=9)
    big = torch.tensor(logits_np * 3000, dtype=torch.float16)  # overflows if exp'd in fp16
    loss, parts = maxent_loss(big, labels)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())
    assert loss.dtype == torch.float32
    ref = _np_meta_ood(big.float().numpy().astype(np.float64), labels_np, 0.9) * C
    np.testing.assert_allclose(loss.item(), ref, rtol=1e-4)


def test_all_void_batch_gives_zero():
    logits = torch.randn(1, C, 4, 4)
    loss, parts = maxent_loss(logits, torch.full((1, 4, 4), 255, dtype=torch.uint8))
    assert loss.item() == 0 and parts["id_ce"].item() == 0 and parts["n_id"].item() == 0


def test_bad_arguments():
    logits, labels = torch.randn(1, C, 4, 4), torch.zeros(1, 4, 4, dtype=torch.uint8)
    with pytest.raises(MaxentError, match="optim_target"):
        maxent_loss(logits, labels, optim_target="kl")
    with pytest.raises(MaxentError, match="labels shape"):
        maxent_loss(logits, labels[:, :3])
    with pytest.raises(MaxentError, match="num_classes=19"):
        maxent_loss(logits, labels, num_classes=19)
    with pytest.raises(MaxentError, match="lambda"):
        maxent_loss(logits, labels, lam=1.5)
    with pytest.raises(MaxentError, match="integer"):
        maxent_loss(logits, labels.float())
