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
from cocodag.cli_demo import demo_data as demo_data_command
from maxent_train import cli as maxent_cli
from maxent_train.config import FitConfig
from maxent_train.export import ExportOptions
from maxent_train.objectives import make_objective
from oodscore import cli as oodscore_cli
from oodscore.meta_report import MetaOptions
from oodscore.options import EvalOptions

from ..stage_runner import shown  # noqa: F401 - re-exported: the dry run prints with it
from . import RUN_STAGES, STAGES, RecipeError, close_matches, load_recipe

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
    options: type | None              # the library's option object (defaults and types); None: the command's
    inputs: frozenset[str]            # options the run fills in (paths), not keys of the recipe
    renames: Mapping[str, str] = field(default_factory=dict)     # option -> field of ``options``


_FIT_INPUTS = frozenset({"data", "out", "init", "config", "resume", "objective_kwargs", "device"})
_EXPORT_INPUTS = frozenset({"checkpoint", "out", "data", "images", "preset", "sml_stats", "device"})
STAGE_SPECS: dict[str, Stage] = {s.name: s for s in (
    Stage("world", "cocodag.cli", "demo-data", demo_data_command, None, frozenset({"out"})),
    Stage("build", "cocodag.cli", "build", build_command, BuildConfig,
          frozenset({"out", "cityscapes", "coco", "coco_json", "coco_images", "shard_range"})),
    # the model the runs start from, trained from scratch when no --init is given
    Stage("baseline", "maxent_train", "fit", maxent_cli.fit, FitConfig, _FIT_INPUTS, {"lambda": "lam"}),
    Stage("miou", "maxent_train", "miou", maxent_cli.miou, None,
          frozenset({"checkpoint", "cityscapes", "out", "device"})),
    Stage("fit", "maxent_train", "fit", maxent_cli.fit, FitConfig, _FIT_INPUTS, {"lambda": "lam"}),
    # the SML statistics (scores sml, vde): an export of the in-distribution crops with --sml-stats
    Stage("sml_stats", "maxent_train", "export", maxent_cli.export, ExportOptions, _EXPORT_INPUTS | {"kinds"}),
    # the OODMC classifier's training logits (MC-dropout moments of the DAG crops), then its fit
    Stage("oodmc_export", "maxent_train", "export", maxent_cli.export, ExportOptions, _EXPORT_INPUTS | {"kinds"}),
    Stage("fit_oodmc", "oodscore.cli", "fit-oodmc", oodscore_cli.fit_oodmc, None, frozenset({"logits", "out"})),
    Stage("export", "maxent_train", "export", maxent_cli.export, ExportOptions, _EXPORT_INPUTS),
    Stage("evaluate", "oodscore.cli", "evaluate", oodscore_cli.evaluate, EvalOptions,
          frozenset({"out", "logits", "scores", "dataset", "name", "sml_stats", "oodmc_model", "threshold_from",
                     "meta", "device"})),
    Stage("meta_classify", "oodscore.cli", "meta-classify", oodscore_cli.meta_classify, MetaOptions,
          frozenset({"logits", "out", "model", "save_model"})),
    Stage("compare", "oodscore.cli", "compare", oodscore_cli.compare, None,
          frozenset({"reports", "out", "names", "published"})),
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
    fields = {f.name: f for f in dataclasses.fields(stage.options)} if stage.options else {}
    hints = typing.get_type_hints(stage.options) if stage.options else {}
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
    parameter of the objective. The statistics and classifier fits that the evaluated scores need (``sml_stats``
    for sml / vde, ``oodmc_export`` and ``fit_oodmc`` for oodmc) are resolved too, from their defaults when the
    recipe does not set them.

    A recipe with ``[[runs]]`` (several trained models, as the demo's) resolves its run stages (:data:`RUN_STAGES`)
    per run, under ``runs``: the recipe's table of the stage, its ``STAGE.OPTION`` overrides, then the run's own
    table, then its ``runs.NAME.STAGE.OPTION`` overrides, the later winning.

    ``overrides``: ``STAGE.OPTION=VALUE`` / ``runs.NAME.STAGE.OPTION=VALUE`` items (or a mapping of key to value
    text); values are read as JSON when they parse, and checked against the option's type.

    Raises
    ------
    RecipeError
        An unknown key (with close matches) in the recipe or an override, a value of the wrong type.
    """
    doc = copy.deepcopy(dict(recipe)) if isinstance(recipe, Mapping) else load_recipe(recipe)
    texts = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
    runs = doc.get("runs", [])
    stages = [s for s in STAGES if s in doc or s in RUN_STAGES]
    top: dict[str, dict[str, tuple[Any, str | None]]] = {
        s: {k: (v, None) for k, v in doc.get(s, {}).items()} for s in STAGES}
    per_run: dict[str, dict[str, dict[str, tuple[Any, str | None]]]] = {r["name"]: {} for r in runs}
    for key, text in texts.items():
        if key == "seeds":          # the recipe's own key, not a stage's option
            doc["seeds"] = _parse_text(text)
        elif key.startswith("runs."):
            name, stage, option = _split_run_key(key, list(per_run))
            per_run[name].setdefault(stage, {})[option] = (_parse_text(text), text)
        else:
            stage, option = _split_key(key, stages)
            top[stage][option] = (_parse_text(text), text)
    out: dict[str, Any] = {k: doc[k] for k in doc if k not in STAGES and k != "runs"}
    overridden = {k.partition(".")[0] for k in texts if k != "seeds" and not k.startswith("runs.")}
    if runs:
        for stage in (s for s in stages if s in doc and s not in RUN_STAGES):
            out[stage] = _resolve_stage(stage, top[stage])
        out["runs"] = [_resolve_run(run, doc, top, per_run[run["name"]], overridden) for run in runs]
        used = {s for entry in out["runs"] for s in entry}
    else:
        entry = _resolve_run({"name": "run"}, doc, top, {}, overridden, single=True)
        for stage in STAGES:
            if stage in RUN_STAGES and stage in entry:
                out[stage] = entry[stage]
            elif stage in doc and stage not in RUN_STAGES:
                out[stage] = _resolve_stage(stage, top[stage])
        used = set(entry)
    for key in texts:
        stage = key.partition(".")[0]
        if stage in RUN_STAGES and stage not in used:        # an override that would change nothing: say so
            raise RecipeError(f"{key}: this recipe runs no {stage} stage (its scores do not need it, or every run "
                              f"sets {stage} = false)")
    out["overrides"] = texts
    return out


#: the stages a score needs before ``evaluate`` (fitted on the training shards)
SCORE_NEEDS = {"sml": ("sml_stats",), "vde": ("sml_stats",), "oodmc": ("oodmc_export", "fit_oodmc")}
#: a stage whose options start from another's: the OODMC training export carries the run's MC-dropout settings
INHERITS = {"oodmc_export": "export"}
_NEEDED_ONLY = frozenset(s for stages in SCORE_NEEDS.values() for s in stages)


def _resolve_run(run: Mapping[str, Any], doc: Mapping[str, Any], top: Mapping[str, Mapping[str, Any]],
                 over: Mapping[str, Mapping[str, Any]], overridden: set[str], single: bool = False
                 ) -> dict[str, Any]:
    """One run's stages (absent: not run, e.g. ``fit = false``); a stage runs when the recipe, the run or an
    override (``overridden``: the stages of the ``STAGE.OPTION`` overrides) sets it, or (sml_stats, oodmc_export,
    fit_oodmc) when the run's scores need it. ``single``: the recipe has no ``[[runs]]``."""
    name = run["name"]
    where = "" if single else f"runs.{name}."
    entry: dict[str, Any] = {"name": name, "seeds": run.get("seeds", doc.get("seeds", 1))}
    if not isinstance(entry["seeds"], int) or isinstance(entry["seeds"], bool) or entry["seeds"] < 1:
        raise RecipeError(f"{where}seeds: expected an integer >= 1, got {json.dumps(entry['seeds'])}")
    needed: set[str] = set()
    for stage in ("fit", "export", "evaluate", "meta_classify", "sml_stats", "oodmc_export", "fit_oodmc"):
        own = run.get(stage)
        if own is False or (stage in _NEEDED_ONLY and stage not in needed):
            continue
        if stage not in doc and own is None and stage not in over and stage not in overridden | needed:
            continue
        given = _given(stage, run, top, over)
        if stage in INHERITS:       # the OODMC training export: the run's export options (MC dropout), then its own
            given = {**_given(INHERITS[stage], run, top, over), **given}
        entry[stage] = _resolve_stage(stage, given, where)
        if stage == "evaluate":
            for method in entry[stage].get("method") or []:
                needed.update(SCORE_NEEDS.get(method, ()))
    for stage in over:
        if stage not in entry:
            raise RecipeError(f"runs.{name}.{stage}: run {name} runs no {stage} stage")
    return entry


def _given(stage: str, run: Mapping[str, Any], top: Mapping[str, Mapping[str, Any]],
           over: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[Any, str | None]]:
    """What sets the options of a run's ``stage``: the recipe's table and overrides, then the run's own."""
    own = run.get(stage)
    return {**top.get(stage, {}), **{k: (v, None) for k, v in (own if isinstance(own, dict) else {}).items()},
            **over.get(stage, {})}


def _split_run_key(key: str, names: Sequence[str]) -> tuple[str, str, str]:
    """``runs.NAME.STAGE.OPTION`` -> ``(NAME, STAGE, OPTION)``."""
    parts = key.split(".", 3)
    if len(parts) < 4:
        raise RecipeError(f"unknown key {key!r}: expected runs.NAME.STAGE.OPTION")
    _, name, stage, option = parts
    if name not in names:
        raise RecipeError(f"unknown run {name!r} in {key!r}{close_matches(name, list(names))}")
    if stage not in RUN_STAGES:
        raise RecipeError(f"unknown key {key!r}: a run's stage is one of {', '.join(RUN_STAGES)}"
                          f"{close_matches(stage, RUN_STAGES)}")
    return name, stage, option


def explicit_keys(doc: Mapping[str, Any], overrides: Mapping[str, str], stage: str, run: str | None = None
                  ) -> list[str]:
    """The options of ``stage`` (of run ``run``) that the recipe or an override sets: those a command line writes
    (objective parameters as ``objective_kwargs``); an option left alone keeps its command's default."""
    tables = [doc.get(stage, {})]
    prefixes = [f"{stage}."]
    if run is not None:
        own = next((r.get(stage) for r in doc.get("runs", []) if r["name"] == run), None)
        tables.append(own if isinstance(own, dict) else {})
        prefixes.append(f"runs.{run}.{stage}.")
    keys: list[str] = []
    for table in tables:
        keys += [k for k in table if k != "objective_kwargs" and k not in keys]
    for key in overrides:
        for prefix in prefixes:
            option = key[len(prefix):] if key.startswith(prefix) else None
            if option and not option.startswith("objective_kwargs") and option not in keys:
                keys.append(option)
    if stage in INHERITS:
        keys += [k for k in explicit_keys(doc, overrides, INHERITS[stage], run) if k not in keys]
    # the objective's parameters go on the line (all of them) once the recipe or an override sets one
    sets_kwargs = any("objective_kwargs" in table for table in tables) or any(
        key.startswith(f"{prefix}objective_kwargs") for key in overrides for prefix in prefixes)
    if stage in ("fit", "baseline") and sets_kwargs:
        keys.append("objective_kwargs")
    return keys


def _resolve_stage(stage: str, given: Mapping[str, tuple[Any, str | None]], where: str = "") -> dict[str, Any]:
    options = stage_options(STAGE_SPECS[stage])
    values = {k: o.default for k, o in options.items()}
    kwargs_given: dict[str, tuple[Any, str | None]] = {}
    fits = stage in ("fit", "baseline")
    for key, (value, raw) in given.items():
        if fits and key == "objective_kwargs" and isinstance(value, dict):
            kwargs_given.update({k: (v, None) for k, v in value.items()})
        elif fits and key.startswith("objective_kwargs."):
            kwargs_given[key[len("objective_kwargs."):]] = (value, raw)
        elif key not in options:
            names = [*options, *(["objective_kwargs"] if fits else [])]
            raise RecipeError(f"unknown key {where}{stage}.{key}{close_matches(key, names)}")
        else:
            values[key] = _jsonable(_checked(f"{where}{stage}.{key}", value, options[key].type, raw))
    if fits:
        defaults = _objective_defaults(values["objective"])
        kwargs = dict(defaults)
        for key, (value, raw) in kwargs_given.items():
            if key not in defaults:
                raise RecipeError(f"unknown key {where}{stage}.objective_kwargs.{key} (objective "
                                  f"{values['objective']}){close_matches(key, list(defaults))}")
            default = defaults[key]
            typ = float if isinstance(default, float) else (type(default) if default is not None else None)
            kwargs[key] = _checked(f"{where}{stage}.objective_kwargs.{key}", value, typ, raw)
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

