"""Model registry: ``@register_model`` records a factory by name; ``create_model`` builds one (timm-style).

A name of the form ``"pkg.module:factory"`` is a plug-in: the module is imported and ``factory(num_classes=..., **kw)``
must return an ``nn.Module`` whose ``forward(x)`` gives logits ``(N, C, H, W)`` at input resolution. Plug-ins that also
define ``forward_features(x)`` / ``forward_head(feats, size)`` get head-only MC dropout (see ``maxent_train.mc``).
``create_model`` sets ``model.registry_name`` (the name it was built from) and ``model.num_classes`` when missing.

Native-resolution output (what ``maxent-train export`` stores by default)
-----------------------------------------------------------------------
A model whose ``forward`` ends in an upsampling of its logits to the input size exposes what comes before it:
``forward_native(x)`` -> logits at the network's output resolution, and ``output_upsample = {"mode": "bilinear",
"align_corners": bool}``, such that ``forward(x) == F.interpolate(forward_native(x), size=x.shape[-2:],
**output_upsample)`` exactly. A split model's ``forward_head(feats, size=None)`` returns the native logits when
``size`` is None (MC dropout samples them there). Every registered model has the hook (DeepLabV3+ ours, VainF,
tiny_segnet: ``align_corners=False``; SML, WRN38: ``True``); a plug-in without it is exported at the label
resolution (with a one-line note). :func:`native_output_rule` reads and checks the hook.

Model options (``--model-kwargs``): the factory's keyword arguments, parsed by :func:`parse_model_kwargs` from
``output_stride=16,dropout=0.1`` or a JSON object and recorded in checkpoint metadata (``model_kwargs``).

MC-dropout protocol (what ``maxent-train export --mc-samples T [--mc-dropout P]`` relies on)
-------------------------------------------------------------------------------------------
* **Dropout layers** are ``nn.Dropout`` / ``nn.Dropout2d`` / ... (subclasses of ``nn.modules.dropout._DropoutNd``):
  MC mode switches exactly those to train mode and keeps everything else (BatchNorm) in eval.
* **Head split** (optional): ``forward_features(x)`` deterministic and ``forward_head(feats, size)`` holding every
  dropout on the output path -> the trunk runs once per frame and only the head T times. A model whose dropout sits
  in its trunk (WRN38) either omits the split or is detected (a dropout firing in ``forward_features``): T full passes.
* **Before sampling** export checks that a dropout layer with ``p > 0`` is on the path to the output (zeroing the
  dropout layers' outputs must change the logits); if none is (SML: its only dropout is in the unused ``dsn`` head),
  it refuses in one line, naming the model and ``--mc-dropout P``.
* ``--mc-dropout P`` inserts test-time dropout, ``nn.Dropout2d(P)`` (channel dropout, as in our DeepLabV3+ heads),
  on the **input of the final classifier**; identity in eval mode, so plain logits do not change. A deviation: the
  network was not trained with it there (logits.h5 records ``mc_dropout`` and ``mc_dropout_at``). Where it goes:

  1. ``model.insert_mc_dropout(p) -> str``, when the model defines it: the model adds a ``_DropoutNd`` module on its
     output path itself and returns where (e.g. ``"Dropout2d(0.1) before final2.0"``);
  2. else ``model.final_classifier`` (alias ``final_classifier_name``): the dotted ``named_modules()`` name of the
     module that produces the logits (e.g. ``"classifier"``, ``"final2.0"``); the dropout becomes its child
     ``mc_dropout`` applied by a forward pre-hook (no state_dict key changes);
  3. else the last ``nn.Conv2d`` with ``num_classes`` output channels that runs in ``forward`` and whose output
     reaches the logits.

  ``--mc-dropout`` is refused for a model that already has dropout on its output path.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from cocodag.errors import CocodagError
from cocodag.formats.logits import check_upsample_rule

from .. import MaxentError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_MODULE_OF: dict[str, str] = {}
#: name -> checkpoint_filter(state_dict, model) -> state_dict: a family's own unwrapping / renaming of the keys of
#: its upstream release before a strict load (timm's ``checkpoint_filter_fn``)
_FILTERS: dict[str, Callable[[dict, nn.Module], dict]] = {}


@dataclass(frozen=True)
class ClassifierBlock:
    """A family's final classifier block, as the outlier-exposure objectives use it.

    Parameters
    ----------
    params : tuple of str
        Parameter-name globs (``fnmatch``) of the block: what ``fit --train-only`` trains by default for an objective
        that fine-tunes the classifier only (PEBAL trains ``final.*`` of NVIDIA's WRN38).
    convs : tuple of str
        The ``named_modules()`` names of the ``Conv2d`` layers with one output channel per class (the logits, plus an
        auxiliary head's when the state_dict holds one): each gains one output for an abstention channel, so that
        ``create_model(name, num_classes=C + 1)`` loads the grown network.
    """

    params: tuple[str, ...]
    convs: tuple[str, ...]


_CLASSIFIERS: dict[str, ClassifierBlock] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *,
                   checkpoint_filter: Callable[[dict, nn.Module], dict] | None = None,
                   classifier: ClassifierBlock | None = None):
    """Decorator: register ``fn`` under its own ``__name__`` (the variant name) and return it unchanged.

    ``@register_model`` or ``@register_model(checkpoint_filter=f, classifier=ClassifierBlock(...))``:
    ``f(state_dict, model)`` receives the state_dict of a released upstream file (wrappers and the ``module.`` prefix
    already removed) and returns it with this model's key names, so that the load that follows can stay strict;
    ``classifier`` declares the family's final classifier block (every family of ours declares one).
    """
    def deco(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        if name in _MODELS and _MODELS[name] is not f:
            raise MaxentError(f"model name {name!r} registered twice ({_MODULE_OF[name]} and {f.__module__})")
        _MODELS[name] = f
        _MODULE_OF[name] = f.__module__
        if checkpoint_filter is not None:
            _FILTERS[name] = checkpoint_filter
        if classifier is not None:
            _CLASSIFIERS[name] = classifier
        return f

    return deco(fn) if fn is not None else deco


def checkpoint_filter_for(name: str) -> Callable[[dict, nn.Module], dict] | None:
    """The registered checkpoint filter of model ``name`` (None for plug-ins and models without one)."""
    return _FILTERS.get(name)


def classifier_block_for(name: str) -> ClassifierBlock | None:
    """The final classifier block model ``name`` declared when it was registered (None for plug-ins)."""
    return _CLASSIFIERS.get(name)


def native_output_rule(model: nn.Module) -> dict | None:
    """``model.output_upsample`` as ``{"mode", "align_corners"}`` when the model has the native-output hook
    (``forward_native`` and ``output_upsample``), else None.

    Raises
    ------
    MaxentError
        ``output_upsample`` is not a valid rule (one line naming the model).
    """
    rule = getattr(model, "output_upsample", None)
    if rule is None or not callable(getattr(model, "forward_native", None)):
        return None
    try:
        return check_upsample_rule(dict(rule) if isinstance(rule, dict) else rule)
    except CocodagError as e:
        raise MaxentError(f"model {type(model).__name__}: output_upsample: {e}") from None


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered names matching the shell-style ``pattern`` (e.g. ``"deeplab*"``)."""
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def is_model(name: str) -> bool:
    """True if ``name`` is a registered model (plug-in names are not checked here)."""
    return name in _MODELS


def _resolve_plugin(name: str) -> Callable[..., nn.Module]:
    mod_name, _, attr = name.partition(":")
    if not mod_name or not attr:
        raise MaxentError(f"model plug-in {name!r}: expected 'pkg.module:factory'")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise MaxentError(f"model plug-in {name!r}: cannot import module {mod_name!r} ({e})") from None
    obj = module
    for part in attr.split("."):  # allow "module:Class.builder"
        if not hasattr(obj, part):
            raise MaxentError(f"model plug-in {name!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise MaxentError(f"model plug-in {name!r}: {attr!r} is not callable")
    return obj


def create_model(name: str, num_classes: int = 19, **kwargs) -> nn.Module:
    """Build a registered model (or a ``"pkg.module:factory"`` plug-in).

    Parameters
    ----------
    name : str
        Registered name (see ``list_models()``) or ``"pkg.module:factory"``.
    num_classes : int, default=19
        Output channels (Cityscapes trainIds).
    **kwargs
        Passed to the factory; ``None`` values are dropped so the model's own defaults stay
        (a CLI can forward unset options as ``None``).

    Returns
    -------
    torch.nn.Module
        Its ``forward(x)`` returns logits ``(N, num_classes, H, W)`` at input resolution.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if ":" in name:
        factory = _resolve_plugin(name)
    else:
        if name not in _MODELS:
            close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(list_models())}"
            raise MaxentError(f"unknown model {name!r}{hint} (or give a plug-in as 'pkg.module:factory')")
        factory = _MODELS[name]
    try:
        model = factory(num_classes=num_classes, **kwargs)
    except TypeError as e:  # a bad keyword for this model: say which model and which keywords
        raise MaxentError(f"model {name!r}: bad arguments {sorted(kwargs)} ({e})") from None
    if not isinstance(model, nn.Module):
        raise MaxentError(f"model {name!r}: factory returned {type(model).__name__}, expected torch.nn.Module")
    tagged: Any = model     # plain attributes on the module (nn.Module's setattr is typed for tensors and modules)
    if not hasattr(model, "num_classes"):
        tagged.num_classes = num_classes  # plug-ins may not set it; our code reads it
    tagged.registry_name = name   # load_checkpoint finds the model's checkpoint_filter by it (the outermost name wins)
    return model


def _parse_value(text: str):
    """``16`` -> int, ``0.1`` / ``1e-3`` -> float, ``true``/``false`` -> bool, ``none``/``null`` -> None, else str
    (surrounding quotes removed)."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    return t


def parse_kwargs(value: Any, option: str, usage: str, parse_pairs: Callable[[str], dict]) -> dict:
    """Keyword options from the command line or a config file, as a dict: ``None`` / ``""`` -> ``{}``; a JSON object
    string is parsed; a dict (a config file's table) is checked (identifier keys); any other string goes to
    ``parse_pairs`` (the option's own ``KEY=VALUE,...`` reader). Used by ``--model-kwargs`` and
    ``--objective-kwargs``.

    Raises
    ------
    MaxentError
        One line naming ``option``, what it got and the expected syntax (``usage``).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise MaxentError(f"{option} {value!r}: not valid JSON ({str(e).splitlines()[0]}); {usage}") from None
    if isinstance(value, dict):
        bad = [k for k in value if not (isinstance(k, str) and k.isidentifier())]
        if bad:
            raise MaxentError(f"{option}: option names must be identifiers, got {bad}; {usage}")
        return dict(value)
    if not isinstance(value, str):
        raise MaxentError(f"{option}: expected a string or a table of options, got {type(value).__name__}; {usage}")
    return parse_pairs(value)


_MODEL_USAGE = "expected KEY=VALUE[,KEY=VALUE...] (e.g. output_stride=16,dropout=0.1) or a JSON object"


def parse_model_kwargs(value, option: str = "--model-kwargs") -> dict:
    """Model options as a dict (:func:`parse_kwargs`); a string is ``KEY=VALUE[,KEY=VALUE...]`` with values int,
    float, bool, none or str."""

    def pairs(text: str) -> dict:
        out = {}
        for item in text.split(","):
            key, eq, val = item.partition("=")
            key = key.strip()
            if not eq or not key.isidentifier():
                raise MaxentError(f"{option} {text!r}: cannot parse {item.strip()!r}; {_MODEL_USAGE}")
            if key in out:
                raise MaxentError(f"{option} {text!r}: {key} given twice")
            out[key] = _parse_value(val)
        return out

    return parse_kwargs(value, option, _MODEL_USAGE, pairs)
