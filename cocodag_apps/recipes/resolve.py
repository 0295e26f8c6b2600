"""A recipe resolved: every value a run would use, defaults included, and the command line of each stage.

The keys of a stage are the options of its command (``cocodag build``, ``maxent-train fit``, ``maxent-train
export``, ``oodscore evaluate``, ``oodscore meta-classify``), read from the typer command itself, dashes as
underscores (``fit.lambda``, ``build.object_scale``). A key's default and type come from the library's option
object where it has the field (:class:`cocodag.build.BuildConfig`, :class:`maxent_train.config.FitConfig`,
:class:`maxent_train.export.ExportOptions`, :class:`oodscore.options.EvalOptions`,
:class:`oodscore.meta_report.MetaOptions`), else from the command. The inputs and outputs of a stage (``--data``,
``--out``, ``--checkpoint``, ..., and ``--device``, which the run gives every stage) are the run's to fill, not
keys. The objective's parameters are keys of their own, ``fit.objective_kwargs.NAME``, their defaults
``make_objective(name).get_params()``.

This module loads torch (through ``maxent_train.config``): the CLI imports it only for ``show`` and ``run``.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cocodag.build import BuildConfig
from cocodag.cli_build import build as build_command
from maxent_train import cli as maxent_cli
from maxent_train.config import FitConfig
from maxent_train.export import ExportOptions
from maxent_train.objectives import make_objective
from oodscore import cli as oodscore_cli
from oodscore.meta_report import MetaOptions
from oodscore.options import EvalOptions

from ..stage_runner import shown  # noqa: F401 - re-exported: the dry run prints with it
from . import STAGES, RecipeError, close_matches, load_recipe

#: objective parameters that another option of ``fit`` sets (``--lambda``, ``--optim-target``, ``--num-classes``)
_SET_ELSEWHERE = ("lam", "optim_target", "num_classes")
#: how a list value is written on the command line when the option takes one string (else: the option repeated)
_JOINED = {"object_scale": ":", "paste_window": ":", "streams": ",", "kinds": ","}


@dataclass(frozen=True)
class Stage:
    """One stage: the command it runs and where its keys' defaults come from."""

    name: str
    module: str                       # python -m MODULE COMMAND ...
    command: str
    function: Callable[..., None]     # the typer command: its options are the stage's keys
    options: type                     # the library's option object (defaults and types)
    inputs: frozenset[str]            # options the run fills in (paths), not keys of the recipe
    renames: Mapping[str, str] = field(default_factory=dict)     # option -> field of ``options``


STAGE_SPECS: dict[str, Stage] = {s.name: s for s in (
    Stage("build", "cocodag.cli", "build", build_command, BuildConfig,
          frozenset({"out", "cityscapes", "coco", "coco_json", "coco_images", "shard_range"})),
    Stage("fit", "maxent_train", "fit", maxent_cli.fit, FitConfig,
          frozenset({"data", "out", "init", "config", "resume", "objective_kwargs", "device"}), {"lambda": "lam"}),
    Stage("export", "maxent_train", "export", maxent_cli.export, ExportOptions,
          frozenset({"checkpoint", "out", "data", "images", "preset", "sml_stats", "device"})),
    Stage("evaluate", "oodscore.cli", "evaluate", oodscore_cli.evaluate, EvalOptions,
          frozenset({"out", "logits", "scores", "dataset", "name", "sml_stats", "oodmc_model", "threshold_from",
                     "meta", "device"})),
    Stage("meta_classify", "oodscore.cli", "meta-classify", oodscore_cli.meta_classify, MetaOptions,
          frozenset({"logits", "out", "model", "save_model"})),
)}


@dataclass(frozen=True)
class Option:
    """One key of a stage: its command-line spelling, default and type."""

    flag: str                 # --lambda
    off_flag: str | None      # the False spelling of a boolean flag (--no-progress, --keep-optimizer)
    default: Any
    type: Any                 # an annotation: the option object's, else the command's


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def stage_options(stage: Stage) -> dict[str, Option]:
    """The keys of ``stage`` (its command's options less its inputs), in the command's order."""
    fields = {f.name: f for f in dataclasses.fields(stage.options)}
    hints = typing.get_type_hints(stage.options)
    sig = inspect.signature(stage.function, eval_str=True)
    out: dict[str, Option] = {}
    for pname, param in sig.parameters.items():
        info = next((m for m in getattr(param.annotation, "__metadata__", ()) if hasattr(m, "param_decls")), None)
        if info is None:
            continue                  # typer.Context
        # in an Annotated option, typer keeps the first declaration (``typer.Option("--lambda")``) as its default
        first = [info.default] if isinstance(info.default, str) and info.default.startswith("--") else []
        decls = [d for decl in (*first, *(info.param_decls or ())) for d in decl.split("/")]
        flag = decls[0] if decls else "--" + pname.replace("_", "-")
        key = flag[2:].replace("-", "_")
        if key in stage.inputs:
            continue
        f = fields.get(stage.renames.get(key, key))
        if f is not None and f.default is not dataclasses.MISSING:
            default, typ = f.default, hints[f.name]
        elif f is not None and f.default_factory is not dataclasses.MISSING:
            default, typ = f.default_factory(), hints[f.name]
        else:
            default, typ = param.default, typing.get_args(param.annotation)[0]
        off = decls[1] if len(decls) > 1 else (f"--no-{flag[2:]}" if _base(typ) is bool and default else None)
        out[key] = Option(flag, off, _jsonable(default), typ)
    return out


# ------------------------------------------------------------------------------------------------------ types
def _base(typ: Any) -> Any:
    """``typ`` without ``None`` in a union (``int | None`` -> ``int``)."""
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if typing.get_origin(typ) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return typ


def _type_name(typ: Any) -> str:
    if typ is None:
        return "any value"
    if typing.get_origin(typ) is Literal:
        return " | ".join(str(a) for a in typing.get_args(typ))
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(typ))
    origin = typing.get_origin(typ)
    if origin in (list, tuple):
        return "a list"
    if origin is dict or typ is dict:
        return "a table"
    return getattr(typ, "__name__", str(typ))


def _coerce(value: Any, typ: Any, raw: str | None) -> tuple[bool, Any]:
    """``(ok, value)``: ``value`` (parsed from JSON; ``raw``: the text of an override) as ``typ``."""
    if typ is None or typ is Any:
        return True, value
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(typ):
            return True, None
        for arg in typing.get_args(typ):
            if arg is not type(None):
                ok, v = _coerce(value, arg, raw)
                if ok:
                    return True, v
        return False, value
    if origin is Literal:
        text = raw if raw is not None else value
        return (text in typing.get_args(typ)), text
    if typ is bool:
        return isinstance(value, bool), value
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if typ is float:
        return isinstance(value, int | float) and not isinstance(value, bool), float(value) if isinstance(
            value, int | float) else value
    if typ in (str, Path):
        if raw is not None:
            return True, raw
        return isinstance(value, str), value
    if origin in (list, tuple):
        if isinstance(value, str) or raw is not None and not isinstance(value, list):
            value = [v for v in (raw or value).replace(":", ",").split(",") if v]
        if not isinstance(value, list):
            return False, value
        elems = typing.get_args(typ)
        elem = elems[0] if elems else None
        # the elements of a split text (``0.5:1``) are text too: read each as JSON, as a whole override's value
        done = [_coerce(v, elem, v) if elem in (str, Path) and isinstance(v, str)
                else _coerce(_parse_text(v) if raw is not None and isinstance(v, str) else v, elem, None)
                for v in value]
        return all(ok for ok, _ in done), [v for _, v in done]
    if origin is dict or typ is dict:
        return isinstance(value, dict), value
    return True, value


def _parse_text(text: str) -> Any:
    """An override's value: JSON when it parses (numbers, true, null, [...], {...}), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _checked(key: str, value: Any, typ: Any, raw: str | None = None) -> Any:
    ok, v = _coerce(value, typ, raw)
    if not ok:
        raise RecipeError(f"{key}: expected {_type_name(typ)}, got {raw if raw is not None else json.dumps(value)}")
    return v


# ------------------------------------------------------------------------------------------------------ resolve
def _objective_defaults(objective: str) -> dict[str, Any]:
    """The parameters of ``objective`` that ``fit.objective_kwargs`` holds, with their defaults."""
    params = make_objective(objective).get_params()
    return {k: _jsonable(v) for k, v in params.items() if k not in _SET_ELSEWHERE}


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """``["fit.lr=1e-4", ...]`` -> ``{"fit.lr": "1e-4"}`` (values still text)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override {item!r}: expected STAGE.OPTION=VALUE (e.g. fit.batch_size=2)")
        out[key.strip()] = value.strip()
    return out


def _split_key(key: str, stages: Sequence[str]) -> tuple[str, str]:
    stage, dot, option = key.partition(".")
    if not dot or stage not in stages:
        raise RecipeError(f"unknown key {key!r}: expected STAGE.OPTION with STAGE one of {', '.join(stages)}"
                          f"{close_matches(stage, list(stages)) if stage not in stages else ''}")
    return stage, option


def resolve(recipe: Mapping[str, Any] | str | Path, overrides: Mapping[str, str] | Sequence[str] = ()
            ) -> dict[str, Any]:
    """Every value the run would use: the recipe's metadata, then each of its stages with every option of the
    stage's command (the recipe's value, an override, or the default) and ``fit.objective_kwargs`` with every
    parameter of the objective.

    ``overrides``: ``STAGE.OPTION=VALUE`` items (or a mapping of key to value text); values are read as JSON when
    they parse, and checked against the option's type.

    Raises
    ------
    RecipeError
        An unknown key (with close matches) in the recipe or an override, a value of the wrong type.
    """
    doc = copy.deepcopy(dict(recipe)) if isinstance(recipe, Mapping) else load_recipe(recipe)
    texts = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
    stages = [s for s in STAGES if s in doc]
    pending: dict[str, dict[str, tuple[Any, str | None]]] = {s: {} for s in stages}
    for stage in stages:
        for key, value in doc[stage].items():
            pending[stage][key] = (value, None)
    for key, text in texts.items():
        stage, option = _split_key(key, stages)
        pending[stage][option] = (_parse_text(text), text)
    out: dict[str, Any] = {k: doc[k] for k in doc if k not in STAGES}
    for stage in stages:
        out[stage] = _resolve_stage(stage, pending[stage])
    out["overrides"] = texts
    return out


def _resolve_stage(stage: str, given: Mapping[str, tuple[Any, str | None]]) -> dict[str, Any]:
    options = stage_options(STAGE_SPECS[stage])
    values = {k: o.default for k, o in options.items()}
    kwargs_given: dict[str, tuple[Any, str | None]] = {}
    for key, (value, raw) in given.items():
        if stage == "fit" and key == "objective_kwargs" and isinstance(value, dict):
            kwargs_given.update({k: (v, None) for k, v in value.items()})
        elif stage == "fit" and key.startswith("objective_kwargs."):
            kwargs_given[key[len("objective_kwargs."):]] = (value, raw)
        elif key not in options:
            names = [*options, *(["objective_kwargs"] if stage == "fit" else [])]
            raise RecipeError(f"unknown key {stage}.{key}{close_matches(key, names)}")
        else:
            values[key] = _jsonable(_checked(f"{stage}.{key}", value, options[key].type, raw))
    if stage == "fit":
        defaults = _objective_defaults(values["objective"])
        kwargs = dict(defaults)
        for key, (value, raw) in kwargs_given.items():
            if key not in defaults:
                raise RecipeError(f"unknown key fit.objective_kwargs.{key} (objective {values['objective']})"
                                  f"{close_matches(key, list(defaults))}")
            default = defaults[key]
            typ = float if isinstance(default, float) else (type(default) if default is not None else None)
            kwargs[key] = _checked(f"fit.objective_kwargs.{key}", value, typ, raw)
        values["objective_kwargs"] = kwargs
    return values


# ------------------------------------------------------------------------------------------------------ commands
def option_args(stage: str, values: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """The command-line arguments of ``keys`` of a resolved ``stage`` (a key at its default is still written:
    the command shows the recipe's values)."""
    options = stage_options(STAGE_SPECS[stage])
    args: list[str] = []
    for key in keys:
        if key == "objective_kwargs":
            kw = values[key]
            if kw:
                args += ["--objective-kwargs", json.dumps(kw, separators=(",", ":"))]
            continue
        opt, value = options[key], values[key]
        if value is None:
            continue
        if isinstance(value, bool) or _base(opt.type) is bool:
            if value:
                args.append(opt.flag)
            elif opt.off_flag:
                args.append(opt.off_flag)
        elif isinstance(value, list) and key in _JOINED:
            args += [opt.flag, _JOINED[key].join(str(v) for v in value)]
        elif isinstance(value, list):
            for v in value:
                args += [opt.flag, str(v)]
        elif isinstance(value, dict):
            args += [opt.flag, json.dumps(value, separators=(",", ":"))]
        else:
            args += [opt.flag, str(value)]
    return args


def command(stage: str, *args: Any) -> list[str]:
    """``python -m MODULE COMMAND ARGS`` of ``stage`` (as the demo runs its stages)."""
    spec = STAGE_SPECS[stage]
    return [sys.executable, "-m", spec.module, spec.command, *[str(a) for a in args]]

