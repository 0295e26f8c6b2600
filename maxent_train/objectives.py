"""Training objectives chosen by name: ``maxent`` (ours, the default), ``pebal`` and ``balanced-energy``.

Every objective is an object made by :func:`make_objective` (``make_objective("pebal", m_out=-5.0)``) that holds its
parameters (validated once, in ``__init__``) and is called on one batch::

    loss, parts = objective(logits, labels)

- ``logits``: ``(N, C, H, W)`` at label resolution, any float dtype. ``pebal`` / ``balanced-energy`` compute
  float16 / bfloat16 in float32, float32 and float64 in their own dtype (``maxent``: float32, as ``maxent_loss``
  always did); autocast is switched off inside the call (the reward blur is a convolution, which autocast would
  run in half precision).
- ``labels``: ``(N, H, W)``, uint8 or any integer dtype: trainIds ``0..C-1`` are in-distribution (ID), ``254`` is
  OOD (a pasted object), ``255`` and every other value is void.
- ``loss``: a differentiable 0-dim tensor; ``parts``: the detached terms as Python floats, for the log (one
  device sync per call).

The abstention objectives (``pebal``, ``balanced-energy``) need one more output than there are classes: the last
channel is the abstention ("reject") channel, so their logits have ``num_classes + 1`` channels (``abstention`` is
True). Their recipe trains the final classifier block only: ``default_train_only`` holds :data:`CLASSIFIER_BLOCK`,
a token the trainer replaces by the model family's own parameter globs (``final.*`` for WRN38).

Every degenerate batch has a defined, finite loss (the official code returns NaN for some of them): a mean over an
empty set of pixels is 0 (no clean image in the batch, no inlier pixel, an image entirely void), and the OOD terms
vanish when the batch has no OOD pixel.

References: PEBAL = Tian et al., "Pixel-wise Energy-biased Abstention Learning for Anomaly Segmentation on Complex
Urban Driving Scenes", ECCV 2022, official code tianyu0207/PEBAL; Balanced Energy = Choi et al., "Balanced Energy
Regularization Loss for Out-of-distribution Detection", CVPR 2023, official code hyunjunChhoi/Balanced_Energy. Our
own implementation, checked against numbers recorded from the official functions
(``tests/fixtures/official/record_pebal.py``).
"""
from __future__ import annotations

import inspect
import json
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cocodag.filters import gaussian_blur
from cocodag.labels import NUM_CLASSES, OOD_ID

from . import MaxentError
from .choices import OBJECTIVES, OPTIM_TARGETS, ObjectiveName, OptimTarget
from .loss import maxent_loss

__all__ = [
    "CITYSCAPES_PRIOR", "CLASSIFIER_BLOCK", "OBJECTIVES", "BalancedEnergyObjective", "MaxEntObjective", "Objective",
    "ObjectiveName", "PebalObjective", "make_objective", "objective_class", "parse_objective_kwargs",
]

#: The token in ``default_train_only`` that stands for "the model's final classifier block"; the trainer replaces it
#: by the family's parameter globs. It cannot match a parameter name (those never start with ``@``).
CLASSIFIER_BLOCK = "@classifier"

#: Balanced Energy's default class prior: the Cityscapes class frequencies hard-coded in the official code
#: (hyunjunChhoi/Balanced_Energy segmentation/code/losses.py:56, repeated at :123), trainIds 0..18. Only the ratios
#: matter (each power of the prior is normalized to sum 1).
CITYSCAPES_PRIOR: tuple[float, ...] = (
    0.152509041, 0.013298, 0.106703, 0.040058, 0.033866, 0.005256, 0.001065, 0.027989, 0.080249, 0.097971,
    0.002175, 0.153123, 0.029222, 0.087057, 0.119925, 0.016023, 0.007071, 0.017048, 0.009393,
)

# PEBAL clamps each outlier-term probability at 1e-7 before the log (PEBAL code/losses.py:84); we clamp the log
_LOG_OUTLIER_FLOOR = math.log(1e-7)
# torchvision's GaussianBlur(7, sigma=1), as PEBAL builds it (code/losses.py:68) for the reward map
_BLUR_SIZE, _BLUR_SIGMA = 7, 1.0


# ---------------------------------------------------------------------------------------------------------------
# parameter validation: every bad value of one call in one line


class _Checker:
    """Collects the bad parameter values of one objective; :meth:`raise_if_any` reports them all in one line."""

    def __init__(self, objective: str) -> None:
        self.objective = objective
        self.errors: list[str] = []

    def number(self, key: str, value: Any, minimum: float | None = None, maximum: float | None = None) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
            return float(value)
        bounds = [f">= {minimum:g}"] if minimum is not None else []
        bounds += [f"<= {maximum:g}"] if maximum is not None else []
        need = " ".join(["a finite number", " and ".join(bounds)]).strip()
        self.errors.append(f"{key} must be {need}, got {value!r}")
        return 0.0

    def integer(self, key: str, value: Any, minimum: int) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
            return int(value)
        self.errors.append(f"{key} must be an integer >= {minimum}, got {value!r}")
        return minimum

    def choice(self, key: str, value: Any, choices: tuple[str, ...]) -> str:
        if isinstance(value, str) and value in choices:
            return value
        self.errors.append(f"{key} must be one of {', '.join(choices)}, got {value!r}")
        return choices[0]

    def prior(self, value: Any, num_classes: int) -> tuple[float, ...] | None:
        if value is None:
            return None
        need = f"prior must be None (the Cityscapes frequencies) or {num_classes} positive finite numbers"
        if hasattr(value, "tolist"):  # a numpy array or a tensor
            value = value.tolist()
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            self.errors.append(f"{need}, got {value!r}")
            return None
        items = list(value)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in items)
        if len(items) != num_classes or not numbers or not all(math.isfinite(v) and v > 0 for v in items):
            self.errors.append(f"{need}, got {len(items)} values: {items!r}"[:300])
            return None
        return tuple(float(v) for v in items)

    def raise_if_any(self) -> None:
        if self.errors:
            raise MaxentError(f"objective {self.objective!r}: " + "; ".join(self.errors))


# ---------------------------------------------------------------------------------------------------------------
# the base class


class Objective:
    """A training objective: its parameters (``__init__``, stored under their names) and ``__call__``.

    Subclasses set ``name``, ``abstention`` and ``default_train_only`` and implement ``_loss``; the parameter names
    are those of ``__init__`` (scikit-learn's rule), so :meth:`get_params` and the error for an unknown parameter
    need no list of their own.
    """

    #: the registry name (``make_objective(name)``)
    name: ClassVar[str] = ""
    #: True: the network needs one extra output channel, the last one (PEBAL's abstention channel)
    abstention: ClassVar[bool] = False
    #: parameter-name globs trained by default; None: every parameter. :data:`CLASSIFIER_BLOCK` stands for the
    #: model family's final classifier block.
    default_train_only: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        """The parameter names, in ``__init__``'s order."""
        return tuple(p for p in inspect.signature(cls.__init__).parameters if p != "self")

    def get_params(self) -> dict[str, Any]:
        """The parameters as plain JSON values; ``make_objective(obj.name, **obj.get_params())`` rebuilds ``obj``."""
        out: dict[str, Any] = {}
        for key in self.param_names():
            value = getattr(self, key)
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @property
    def num_outputs(self) -> int | None:
        """The number of logit channels the objective needs (None: any)."""
        num_classes = getattr(self, "num_classes", None)
        return None if num_classes is None else num_classes + int(self.abstention)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one batch and its detached parts (see the module docstring for the conventions)."""
        x, lab = self._check_inputs(logits, labels)
        with torch.autocast(device_type=x.device.type, enabled=False):
            loss, parts = self._loss(x, lab)
        with torch.no_grad():
            names = list(parts)
            values = torch.stack([parts[k].detach().to(torch.float64).reshape(()) for k in names]).tolist()
        return loss, dict(zip(names, values, strict=True))

    def _loss(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _check_inputs(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        where = f"objective {self.name!r}"
        if not isinstance(logits, torch.Tensor) or logits.ndim != 4 or not logits.is_floating_point():
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise MaxentError(f"{where}: logits must be a float tensor (N, C, H, W), got {got}")
        n, c, h, w = logits.shape
        need = self.num_outputs
        if need is not None and c != need:
            extra = " (the classes + the abstention channel, last)" if self.abstention else ""
            raise MaxentError(f"{where}: logits must have {need} channels{extra}, got {c}")
        if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (n, h, w):
            got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise MaxentError(f"{where}: labels must be (N, H, W) = {(n, h, w)}, got {got}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise MaxentError(f"{where}: labels must be an integer tensor (uint8 trainIds), got {labels.dtype}")
        if self.abstention and min(h, w) <= _BLUR_SIZE // 2:
            raise MaxentError(f"{where}: the reward blur ({_BLUR_SIZE} taps) needs H, W >= {_BLUR_SIZE // 2 + 1}, "
                              f"got {(h, w)}")
        x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
        return x, labels.to(device=x.device, dtype=torch.long)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask``; 0 (with a zero gradient) where the mask is empty. No host sync."""
    total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    return total / mask.sum().clamp(min=1).to(values.dtype)


# ---------------------------------------------------------------------------------------------------------------
# MaxEnt (ours)


class MaxEntObjective(Objective):
    """meta-ood's MaxEnt fine-tuning loss, :func:`maxent_train.loss.maxent_loss` unchanged (its docstring gives the
    formula): ``(1-λ)·CE`` on ID pixels, ``λ·(-1/C)·Σ_c log p_c`` on OOD pixels, mean over all pixels.

    Parameters
    ----------
    lam : float in [0, 1], default=0.9
        λ, the weight of the OOD term (``fit --lambda``).
    optim_target : {"entropy", "logit"}, default="entropy"
        meta-ood's entropy soft targets, or the seed's logit target.

    Any number of channels; computed in float32 (``maxent_loss`` upcasts). ``parts``: ``id_ce``, ``ood_entropy``,
    ``ood_uniform_ce``, ``n_id``, ``n_ood``.
    """

    name = "maxent"

    def __init__(self, lam: float = 0.9, optim_target: OptimTarget = "entropy") -> None:
        check = _Checker(self.name)
        self.lam = check.number("lam", lam, minimum=0.0, maximum=1.0)
        self.optim_target: OptimTarget = check.choice("optim_target", optim_target, OPTIM_TARGETS)  # type: ignore[assignment]
        check.raise_if_any()

    def _loss(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return maxent_loss(x, labels, lam=self.lam, optim_target=self.optim_target)


# ---------------------------------------------------------------------------------------------------------------
# PEBAL and Balanced Energy


class PebalObjective(Objective):
    r"""PEBAL (Tian et al., ECCV 2022): pixel-wise abstention (the Gambler loss) + an energy loss, as the official
    training loop adds them per batch (PEBAL code/engine/trainer.py:42-53)::

        loss = G(clean images) + G(images with OOD) + energy_weight · L_energy

    An image "has OOD" when any of its pixels is 254 (the official loader's ``is_ood``, code/dataset/
    data_loader.py:706). With ``C = num_classes``, ``p = softmax`` over all ``C + 1`` channels, ``p_a`` the
    abstention (last) channel, ``E = -logsumexp(first C logits)`` and the reward ``r = blur(E²)`` per image
    (torchvision's ``GaussianBlur(7, sigma=1)``, :func:`cocodag.filters.gaussian_blur`; code/losses.py:65-71):

    - clean images (code/losses.py:97-105): ``G = -mean over their ID pixels of log(p_y + p_a/r)``;
    - images with OOD (code/losses.py:75-96), two separate means::

          G = -( mean over their ID pixels of log(p_y + p_a/r)
                 + ood_reg · mean over every (OOD pixel, class k < C) pair of log(max(p_k + p_a/r, 1e-7)) )

    - the energy loss (code/losses.py:24-45), over the whole batch, ``E_in`` on ID pixels, ``E_out`` on OOD pixels::

          L_energy = 0.5 · [mean relu(E_in - m_in)² + mean relu(m_out - E_out)²] + sparsity · ‖E_out‖₂
                     + smoothness · ½ Σ (vertical and horizontal differences of neighbouring E)²

      and, for a batch without any OOD pixel, ``mean relu(E_in - m_in)²`` (**not** halved) + the smoothness term.
      ``‖E_out‖₂`` is the L2 norm of the whole vector of OOD energies (``sparsity`` at code/losses.py:19-21);
      the smoothness term runs over every pixel, void included.

    Void pixels count nowhere but in the reward blur and the smoothness term.

    Parameters (defaults: the official code's)
    ------------------------------------------
    m_in : float, default=-12
        Inlier energy margin (code/losses.py:29).
    m_out : float, default=-6
        Outlier energy margin (code/losses.py:30).
    energy_weight : float >= 0, default=0.1
        Weight of the energy loss in the total (code/engine/trainer.py:53).
    ood_reg : float >= 0, default=0.1
        Weight of the outlier abstention term (``Gambler(ood_reg=.1)``, code/losses.py:49).
    sparsity : float >= 0, default=5e-4
        Weight of ‖E_out‖₂ (code/losses.py:41).
    smoothness : float >= 0, default=3e-6
        Weight of the energy smoothness term (code/losses.py:43).
    num_classes : int, default=19
        The in-distribution classes; the logits have ``num_classes + 1`` channels.

    Where the code departs from the paper, this is the code: the outlier term. The paper's abstention loss (its
    Eq. 3, as the PEBAL repository's issue #18 quotes it) is ``-log(f_y + f_{K+1}/a)``, which on an OOD pixel
    involves the abstention channel; the code instead sums each inlier class probability with the abstention share,
    averages over the (pixel, class) pairs and weights the result by ``ood_reg``. No "paper" variant is offered:
    the paper leaves the OOD pixel's label implicit, and its readings differ (``log(p_a + p_a/r)`` with
    ``y = K+1`` in that issue, or the share ``log(p_a/r)`` alone), so no one form could be called the paper's.

    Departures from the official code, by necessity only: a mean over no pixel is 0 where the official code
    returns NaN (a batch whose every image has OOD, or an image group with no inlier pixel); labels other than
    0..C-1, 254, 255 count as void (the official Gambler would index with them; its energy loss would count them
    as inliers). ``log(p_y + p_a/r)`` is computed from ``log_softmax`` (``logaddexp``), equal to the official
    probability-space form up to rounding and finite where a probability underflows.

    ``parts``: ``gambler`` (= ``gambler_clean + gambler_ood_in + gambler_ood_out``), ``energy`` (unweighted
    ``L_energy``), ``energy_in``, ``energy_out``, ``energy_sparsity``, ``energy_smooth`` (the last three weighted
    as they enter ``L_energy``), ``n_id``, ``n_ood``, ``n_ood_images``.
    """

    name = "pebal"
    abstention = True
    default_train_only = (CLASSIFIER_BLOCK,)

    def __init__(self, m_in: float = -12.0, m_out: float = -6.0, energy_weight: float = 0.1, ood_reg: float = 0.1,
                 sparsity: float = 5e-4, smoothness: float = 3e-6, num_classes: int = NUM_CLASSES) -> None:
        check = _Checker(self.name)
        self._set_common(check, m_in, m_out, energy_weight, ood_reg, sparsity, smoothness, num_classes)
        check.raise_if_any()

    def _set_common(self, check: _Checker, m_in: Any, m_out: Any, energy_weight: Any, ood_reg: Any, sparsity: Any,
                    smoothness: Any, num_classes: Any) -> None:
        self.m_in = check.number("m_in", m_in)
        self.m_out = check.number("m_out", m_out)
        self.energy_weight = check.number("energy_weight", energy_weight, minimum=0.0)
        self.ood_reg = check.number("ood_reg", ood_reg, minimum=0.0)
        self.sparsity = check.number("sparsity", sparsity, minimum=0.0)
        self.smoothness = check.number("smoothness", smoothness, minimum=0.0)
        self.num_classes = check.integer("num_classes", num_classes, minimum=1)

    # -- the pieces ------------------------------------------------------------------------------------------

    def _gambler(self, x: torch.Tensor, lse: torch.Tensor, labels: torch.Tensor, is_id: torch.Tensor,
                 is_ood: torch.Tensor) -> dict[str, torch.Tensor]:
        """The Gambler (abstention) terms of the clean images and of the images with OOD, as three means."""
        c = self.num_classes
        logp = F.log_softmax(x, dim=1)
        reward = gaussian_blur(lse.square(), _BLUR_SIZE, _BLUR_SIGMA)
        # log(p_a / r); r > 0 unless E = 0 on a whole 7x7 window (the clamp keeps that case finite)
        log_share = logp[:, c] - torch.log(reward.clamp(min=torch.finfo(reward.dtype).tiny))
        has_ood = is_ood.flatten(1).any(dim=1)[:, None, None]
        safe = torch.where(is_id, labels, torch.zeros_like(labels))  # gather needs a valid index everywhere
        inlier = torch.logaddexp(logp.gather(1, safe[:, None]).squeeze(1), log_share)  # log(p_y + p_a/r)
        # log(max(p_k + p_a/r, 1e-7)) for k < C; every OOD pixel has C pairs, so the mean over the (pixel, class)
        # pairs is the mean over the OOD pixels of this per-pixel mean
        outlier = torch.logaddexp(logp[:, :c], log_share[:, None]).clamp(min=_LOG_OUTLIER_FLOOR).mean(dim=1)
        return {
            "gambler_clean": -_masked_mean(inlier, is_id & ~has_ood),
            "gambler_ood_in": -_masked_mean(inlier, is_id & has_ood),
            "gambler_ood_out": -self.ood_reg * _masked_mean(outlier, is_ood),
        }

    def _outlier_energy(self, x: torch.Tensor, energy: torch.Tensor,
                        is_ood: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The energies entering the OOD hinge and the sparsity term, the hinge's pixel weights, extra parts."""
        return energy, torch.ones_like(energy), {}

    def _energy(self, x: torch.Tensor, energy: torch.Tensor, is_id: torch.Tensor,
                is_ood: torch.Tensor) -> dict[str, torch.Tensor]:
        """The energy loss's terms, each as it enters ``L_energy`` (the batch's OOD presence picks the weights)."""
        zero = torch.zeros((), dtype=energy.dtype, device=energy.device)
        hinge_in = _masked_mean(F.relu(energy - self.m_in).square(), is_id)
        e_out, weight, extra = self._outlier_energy(x, energy, is_ood)
        weight = torch.where(is_ood, weight, zero)
        hinge_out = (weight * F.relu(self.m_out - e_out).square()).sum() / weight.sum().clamp(
            min=torch.finfo(weight.dtype).tiny)
        norm_out = torch.linalg.vector_norm(torch.where(is_ood, e_out, zero))  # its gradient at 0 is 0
        dv = energy[:, 1:, :] - energy[:, :-1, :]
        dh = energy[:, :, 1:] - energy[:, :, :-1]
        smooth = 0.5 * (dv.square().sum() + dh.square().sum())
        any_ood = is_ood.any()
        return {
            "energy_in": torch.where(any_ood, 0.5 * hinge_in, hinge_in),
            "energy_out": torch.where(any_ood, 0.5 * hinge_out, zero),
            "energy_sparsity": torch.where(any_ood, self.sparsity * norm_out, zero),
            "energy_smooth": self.smoothness * smooth,
            **extra,
        }

    def _loss(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.num_classes
        is_id = (labels >= 0) & (labels < c)
        is_ood = labels == OOD_ID
        lse = torch.logsumexp(x[:, :c], dim=1)  # (N, H, W); the energy is -lse
        g = self._gambler(x, lse, labels, is_id, is_ood)
        e = self._energy(x, -lse, is_id, is_ood)
        gambler = g["gambler_clean"] + g["gambler_ood_in"] + g["gambler_ood_out"]
        energy = e["energy_in"] + e["energy_out"] + e["energy_sparsity"] + e["energy_smooth"]
        loss = gambler + self.energy_weight * energy
        counts = {"n_id": is_id.sum(), "n_ood": is_ood.sum(), "n_ood_images": is_ood.flatten(1).any(dim=1).sum()}
        return loss, {"gambler": gambler, **g, "energy": energy, **e, **counts}


class BalancedEnergyObjective(PebalObjective):
    r"""Balanced Energy (Choi et al., CVPR 2023): PEBAL with the OOD energy terms re-weighted by a class prior
    (official code: Balanced_Energy segmentation/code/losses.py:55-99, ``balanced_energy_loss_with_smooth_sparsity``,
    the one its ``main.py:74`` trains with; the per-batch total is PEBAL's, engine/trainer.py:45-56).

    With ``s = softmax(first C logits)``, the prior ``π`` and ``norm₁(v) = v / Σ v``::

        m = Σ_k s_k · norm₁(π^gamma1)_k        w = Σ_k s_k · norm₁(π^gamma2)_k        E_out' = E_out - alpha · m

    the OOD hinge becomes ``Σ w · relu(m_out - E_out')² / Σ w`` over the OOD pixels and the sparsity term is
    ``‖E_out'‖₂``; everything else (Gambler terms, inlier hinge, smoothness on ``E``, the un-halved inlier hinge of
    a batch without OOD, ``energy_weight``) is PEBAL's (:class:`PebalObjective`).

    Parameters
    ----------
    gamma1 : float, default=3
        Exponent of the prior in the margin ``m`` (config/config.py:75).
    gamma2 : float, default=3
        Exponent of the prior in the hinge weight ``w`` (config/config.py:76).
    alpha : float, default=5
        Scale of the margin shift (config/config.py:77).
    prior : None or a sequence of ``num_classes`` positive numbers, default=None
        None: the official hard-coded Cityscapes class frequencies (:data:`CITYSCAPES_PRIOR`, losses.py:56). Any
        positive scale works (pixel counts too): only the normalized powers enter.
    m_in, m_out, energy_weight, ood_reg, sparsity, smoothness, num_classes
        As for PEBAL, same defaults: the Balanced Energy code keeps PEBAL's (losses.py:67-72, 95-97, 168-225). With
        ``sparsity=0, smoothness=0`` this is the official ``balanced_energy_loss_pure`` (losses.py:122-164).

    The published recipe differs from PEBAL's outside the loss (20 epochs, weight decay 0: config/config.py:46-48);
    that is the trainer's business. ``parts``: PEBAL's, plus ``ood_margin`` and ``ood_weight`` (the means of ``m``
    and ``w`` over the OOD pixels).
    """

    name = "balanced-energy"

    def __init__(self, gamma1: float = 3.0, gamma2: float = 3.0, alpha: float = 5.0,
                 prior: Sequence[float] | None = None, m_in: float = -12.0, m_out: float = -6.0,
                 energy_weight: float = 0.1, ood_reg: float = 0.1, sparsity: float = 5e-4, smoothness: float = 3e-6,
                 num_classes: int = NUM_CLASSES) -> None:
        check = _Checker(self.name)
        self._set_common(check, m_in, m_out, energy_weight, ood_reg, sparsity, smoothness, num_classes)
        self.gamma1 = check.number("gamma1", gamma1)
        self.gamma2 = check.number("gamma2", gamma2)
        self.alpha = check.number("alpha", alpha)
        self.prior = check.prior(prior, self.num_classes)
        if self.prior is None and prior is None and self.num_classes != len(CITYSCAPES_PRIOR):
            check.errors.append(f"prior must be given when num_classes != {len(CITYSCAPES_PRIOR)} (the default "
                                f"is the Cityscapes frequencies), got num_classes={self.num_classes}")
        check.raise_if_any()
        self._margin_w, self._loss_w = self._prior_powers(self.gamma1), self._prior_powers(self.gamma2)

    def _prior_powers(self, gamma: float) -> torch.Tensor:
        """``norm₁(π^gamma)`` in float64, computed in the log domain (a large gamma does not underflow to 0/0)."""
        log_pi = torch.tensor(self.prior if self.prior is not None else CITYSCAPES_PRIOR, dtype=torch.float64).log()
        return torch.softmax(gamma * log_pi, dim=0)

    def _outlier_energy(self, x: torch.Tensor, energy: torch.Tensor,
                        is_ood: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        s = F.softmax(x[:, :self.num_classes], dim=1)
        margin = torch.einsum("nchw,c->nhw", s, self._margin_w.to(dtype=s.dtype, device=s.device))
        weight = torch.einsum("nchw,c->nhw", s, self._loss_w.to(dtype=s.dtype, device=s.device))
        extra = {"ood_margin": _masked_mean(margin.detach(), is_ood),
                 "ood_weight": _masked_mean(weight.detach(), is_ood)}
        return energy - self.alpha * margin, weight, extra


# ---------------------------------------------------------------------------------------------------------------
# the registry


_REGISTRY: dict[str, type[Objective]] = {
    cls.name: cls for cls in (MaxEntObjective, PebalObjective, BalancedEnergyObjective)
}
assert tuple(_REGISTRY) == OBJECTIVES, "maxent_train.choices.OBJECTIVES and the registry must list the same names"


def objective_class(name: str) -> type[Objective]:
    """The class registered under ``name``; a one-line :class:`MaxentError` listing the valid names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise MaxentError(f"unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}") from None


def make_objective(name: str, **params: Any) -> Objective:
    """The objective ``name`` with ``params`` (the rest at their published defaults), validated.

    Raises
    ------
    MaxentError
        An unknown name or parameter (the line lists the valid ones), or bad values (all of them in one line).
    """
    cls = objective_class(name)
    valid = cls.param_names()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise MaxentError(f"objective {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                          f"valid: {', '.join(valid)}")
    return cls(**params)


def parse_objective_kwargs(text: str) -> dict[str, Any]:
    """``"k=v,k=v"`` (``--objective-kwargs``) → a dict; each value is read as JSON when it parses, else kept as a
    string (``m_out=-5,optim_target=logit,prior=[0.2,0.1,...]``: commas inside brackets do not split).

    Only the syntax is checked here; :func:`make_objective` checks the names and values.
    """
    out: dict[str, Any] = {}
    for item in _split_top_level(text):
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise MaxentError(f"--objective-kwargs: expected key=value pairs separated by commas, got {item!r}")
        if key in out:
            raise MaxentError(f"--objective-kwargs: {key!r} given twice")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _split_top_level(text: str) -> list[str]:
    """Split at the commas outside brackets; empty items (a trailing comma, an empty string) are dropped."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [s for s in (t.strip() for t in items) if s]
