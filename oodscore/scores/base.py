"""The ``Scorer`` protocol every anomaly score follows, its parameter checks, and shared logits plumbing.

Every scorer maps one kind of per-frame input to an anomaly map, **higher = more anomalous** (docs/methods.md §5),
returned as a float32 numpy array: ``(N, H, W)`` for ``(N, C, h, w)`` logits or ``(H, W)`` for ``(C, h, w)`` logits
(and for one frame's MC-dropout dict).

The protocol (a scikit-learn estimator)
---------------------------------------
- :class:`Scorer` is an ``sklearn.base.BaseEstimator``: ``get_params``, ``set_params`` and ``sklearn.base.clone``
  work on every scorer. ``__init__`` only stores each parameter on an attribute of the same name; nothing is checked
  there.
- ``_parameter_constraints`` (class-level table, named as in scikit-learn) lists the allowed values of each
  parameter; :meth:`Scorer._validate_params` checks them all when ``fit`` / ``score`` runs, and an error (our
  :class:`~oodscore.OodscoreError`, one line) names the class, the parameter, what was expected and what was given.
  A ``device`` parameter is parsed by :func:`resolve_device`.
- ``requires`` (class attribute) names the input ``score`` takes, one of :data:`INPUT_KINDS`: ``"logits"``
  (``(N, C, h, w)`` / ``(C, h, w)`` logits) or ``"mc"`` (one frame's MC-dropout moment dict, as
  ``cocodag.formats.logits.LogitsFile.mc(i)`` returns it). Callers ask the scorer what to feed it.
- ``definition`` (class attribute): the score's formula and reference in one line (``oodscore methods`` lists it).
- ``requires_fit`` (class attribute): whether fitted state (``fit``, or state loaded from a file) is needed first.
  Learned state lives in attributes ending with ``_``.
- ``score(x, size=None)``: ``size`` = (H, W) label size; logits are upsampled bilinearly to it.
"""
from __future__ import annotations

import inspect
import math
import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator

from cocodag.arrays import to_numpy
from cocodag.device import resolve_device as _resolve_device
from cocodag.errors import CocodagError
from cocodag.formats.logits import as_logits_tensor as _as_logits_tensor
from cocodag.formats.logits import check_size as _check_size
from cocodag.formats.logits import upsample as upsample_rule
from oodscore import OodscoreError

#: the per-frame inputs a scorer can require (``Scorer.requires``)
INPUT_KINDS = ("logits", "mc")


def resolve_device(device) -> torch.device | None:
    """``None`` -> None (follow the input's device); anything else -> :func:`cocodag.device.resolve_device`
    (``"auto"``, ``"cpu"``, ``"cuda[:i]"`` or a ``torch.device``; CUDA must be available).

    Raises
    ------
    OodscoreError
        An unparsable device or CUDA asked for without CUDA (the message names the ``device`` parameter).
    """
    if device is None:
        return None
    try:
        return _resolve_device(device, option="device")
    except CocodagError as e:
        raise OodscoreError(str(e)) from None


# ------------------------------------------------------------------------------------------ parameter checks
class Interval:
    """Finite numbers of ``kind`` (``numbers.Integral`` or ``numbers.Real``) in ``[left, right]``; None = unbounded.

    Booleans never match (``True`` is not a count).
    """

    def __init__(self, kind: type, left=None, right=None):
        self.kind, self.left, self.right = kind, left, right

    def is_satisfied_by(self, v) -> bool:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, self.kind):
            return False
        if not isinstance(v, numbers.Integral) and not (isinstance(v, numbers.Real) and math.isfinite(v)):
            return False
        return (self.left is None or v >= self.left) and (self.right is None or v <= self.right)

    def __str__(self) -> str:
        what = "an int" if self.kind is numbers.Integral else "a finite number"
        if self.left is not None and self.right is not None:
            return f"{what} in [{self.left}, {self.right}]"
        if self.left is not None:
            return f"{what} >= {self.left}"
        if self.right is not None:
            return f"{what} <= {self.right}"
        return what


class Options:
    """One of a fixed set of values (of the same type: ``1`` does not match ``"1"`` or ``True``)."""

    def __init__(self, *values):
        self.values = values

    def is_satisfied_by(self, v) -> bool:
        return any(type(v) is type(x) and v == x for x in self.values)

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


class _Boolean:
    def is_satisfied_by(self, v) -> bool:
        return isinstance(v, (bool, np.bool_))

    def __str__(self) -> str:
        return "a bool"


#: a boolean flag (``bool`` or ``numpy.bool_``)
BOOLEAN = _Boolean()
#: a device: None (follow the input), ``"auto"``, ``"cpu"``, ``"cuda[:i]"`` or a ``torch.device``
DEVICE = [None, str, torch.device]


def _satisfies(constraint, v) -> bool:
    if constraint is None:
        return v is None
    if isinstance(constraint, type):
        return isinstance(v, constraint)
    return constraint.is_satisfied_by(v)


def _describe(constraint) -> str:
    if constraint is None:
        return "None"
    if isinstance(constraint, type):
        return f"a {constraint.__name__}"
    return str(constraint)


def validate_params(constraints: dict, params: dict, owner: str) -> None:
    """Check ``params`` against ``constraints`` (``{name: [allowed, ...]}``; a value passes if one allows it).

    An allowed entry is None (the value None), a type (``isinstance``), an :class:`Interval`, :class:`Options` or
    :data:`BOOLEAN` (:data:`DEVICE` is the list for a device). A ``device`` parameter is then parsed by
    :func:`resolve_device`.

    Raises
    ------
    OodscoreError
        ``"<owner> <name>: expected <allowed>, got <value>"`` for the first parameter that fails.
    """
    for name, allowed in constraints.items():
        v = params[name]
        if not any(_satisfies(c, v) for c in allowed):
            expected = " or ".join(_describe(c) for c in allowed)
            raise OodscoreError(f"{owner} {name}: expected {expected}, got {v!r}")
    if "device" in constraints:
        resolve_device(params["device"])


# ------------------------------------------------------------------------------------------ the protocol
class Scorer(BaseEstimator):
    """Base class of every score in the registry (see the module docstring for the protocol).

    Subclasses set ``requires``, ``requires_fit`` and ``_parameter_constraints``, store their parameters in
    ``__init__`` and implement ``score(x, size=None)``; stateful ones override ``fit``.
    """

    #: the per-frame input ``score`` takes: one of ``INPUT_KINDS``
    requires = "logits"
    #: whether ``fit`` must be called (or state loaded) before ``score``
    requires_fit = False
    #: the score's formula and reference, one line (empty: the registry falls back to the docstring's first line)
    definition = ""
    #: ``{param: [allowed, ...]}``, checked by ``_validate_params`` (see :func:`validate_params`)
    _parameter_constraints: dict = {}

    @classmethod
    def param_names(cls) -> list[str]:
        """Names of the ``__init__`` parameters, in signature order (``get_params`` has them sorted)."""
        return [n for n, p in inspect.signature(cls.__init__).parameters.items()
                if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]

    def _validate_params(self) -> None:
        """Check every parameter against ``_parameter_constraints`` with our table (not scikit-learn's, whose errors
        are not ours); errors name the class and the parameter."""
        validate_params(self._parameter_constraints, self.get_params(deep=False), type(self).__name__)

    def fit(self, *args, **kwargs):
        """No-op for stateless scorers (parameters are still checked); returns self."""
        self._validate_params()
        return self

    def score(self, x, size=None) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


# ------------------------------------------------------------------------------------------ logits plumbing
def as_logits_tensor(logits, *, name: str = "logits", device=None, check_finite: bool = True
                     ) -> tuple[torch.Tensor, bool]:
    """Validate logits and return them as a float32 ``(N, C, h, w)`` tensor plus whether a batch axis was given.

    Parameters
    ----------
    logits : (N, C, h, w) or (C, h, w) array-like, numpy or torch, any float dtype (float16 is widened)
    name : str
        Argument name used in error messages.
    device : str or torch.device, optional
        Where to compute; default: the tensor's own device (CPU for numpy).
    check_finite : bool
        Refuse NaN / inf values (they would silently poison every downstream statistic).

    Raises
    ------
    OodscoreError
        Wrong number of dimensions, fewer than 2 classes, non-numeric dtype or non-finite values.
    """
    return _as_logits_tensor(logits, name=name, device=resolve_device(device), check_finite=check_finite,
                             error=OodscoreError)


def check_size(size) -> tuple[int, int] | None:
    """Validate an output ``(H, W)`` size (the label size)."""
    return _check_size(size, error=OodscoreError)


def upsample(t: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of ``(N, C, h, w)`` to ``size`` = (H, W) (``align_corners=False``; note that the SML code's
    ``network/mynn.py`` ``Upsample`` uses ``align_corners=True``, the rule sml-r101 logits files record and
    ``LogitsFile`` applies before a scorer sees them); no-op when ``size`` is None or already equal."""
    return upsample_rule(t, check_size(size))


def to_output(t: torch.Tensor, batched: bool) -> np.ndarray:
    """``(N, H, W)`` tensor -> float32 numpy, dropping the batch axis when the input had none."""
    out = to_numpy(t.to(torch.float32), "scores")
    return out if batched else out[0]
