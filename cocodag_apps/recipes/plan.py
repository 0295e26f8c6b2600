"""The command lines of a recipe run, stage by stage (what ``cocodag recipe run --dry-run`` prints).

Each stage is the package's own command line run as ``python -m MODULE COMMAND`` (as ``cocodag demo`` runs its
stages). A command carries the run's inputs and outputs and the options the recipe (or an override) sets, so the
published values are on the line; an option the recipe leaves alone keeps its command's default.
"""
from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cocodag.formats.evalsets import PRESETS

from . import RecipeError, close_matches, load_recipe
from .resolve import command, option_args, parse_overrides, resolve


@dataclass(frozen=True)
class EvalSet:
    """``--eval NAME=PRESET:DIR``: an evaluation set the run evaluates on."""

    name: str
    preset: str
    root: str


def parse_eval(spec: str) -> EvalSet:
    """``NAME=PRESET:DIR`` (any name; a preset of ``oodscore datasets list``)."""
    name, sep, rest = spec.partition("=")
    preset, sep2, root = rest.partition(":")
    if not (sep and sep2 and name and preset and root):
        raise RecipeError(f"--eval {spec}: expected NAME=PRESET:DIR (e.g. fs-laf=fishyscapes-laf:/data/fs_laf)")
    if preset not in PRESETS:
        raise RecipeError(f"--eval {spec}: unknown preset {preset!r}{close_matches(preset, list(PRESETS))}")
    return EvalSet(name, preset, root)


@dataclass
class RunInputs:
    """The run's folders and devices (``cocodag recipe run`` options); None: not given (a placeholder in a dry
    run). ``launcher``: how ``fit`` and the exports are started: ``python`` (one process), ``torchrun`` (``nproc``
    processes, ``python -m torch.distributed.run --nproc-per-node N``), or a command prefix (``"srun -n 4 python"``)
    to which ``-m MODULE COMMAND ...`` is appended."""

    out: str = "recipe-out"
    cityscapes: str | None = None
    coco: str | None = None
    init: str | None = None
    evals: list[EvalSet] = field(default_factory=list)
    device: str = "auto"
    launcher: str = "python"
    nproc: int | None = None


@dataclass
class Step:
    """One command of the run: ``id`` (unique: ``build``, ``fit``, ``export-NAME``, ...), the recipe ``stage`` whose
    settings it uses, its command line, ``done``: the output that exists once it finished, and ``settings``: what
    it was made from (the stage's resolved values as ``STAGE.OPTION`` keys and its inputs as their flags)."""

    id: str
    stage: str
    argv: list[str]
    done: Path
    settings: dict[str, Any]


@dataclass
class Plan:
    """The resolved recipe, its steps in order, and notes (skipped sets, placeholders)."""

    resolved: dict[str, Any]
    steps: list[Step]
    notes: list[str]

    @property
    def commands(self) -> list[tuple[str, list[str]]]:
        """``(stage, argv)`` of every step, in order."""
        return [(s.stage, s.argv) for s in self.steps]


def flat_settings(stage: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"fit.lr": 1e-5, "fit.objective_kwargs.m_in": -12.0, ...}``: a resolved stage as override keys."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key == "objective_kwargs" and isinstance(value, dict):
            out.update({f"{stage}.objective_kwargs.{k}": v for k, v in value.items()})
        else:
            out[f"{stage}.{key}"] = value
    return out


def _explicit(doc: Mapping[str, Any], overrides: Mapping[str, str], stage: str) -> list[str]:
    """The options of ``stage`` that the recipe or an override sets (objective parameters as objective_kwargs)."""
    keys = [k for k in doc.get(stage, {}) if k != "objective_kwargs"]
    for key in overrides:
        s, _, option = key.partition(".")
        if s == stage and not option.startswith("objective_kwargs") and option not in keys:
            keys.append(option)
    if stage == "fit":
        keys.append("objective_kwargs")
    return keys


def _launched(cmd: list[str], inputs: RunInputs) -> list[str]:
    """``cmd`` (``python -m MODULE ...``) started by ``inputs.launcher``."""
    if inputs.launcher == "python":
        if inputs.nproc not in (None, 1):
            raise RecipeError(f"--nproc {inputs.nproc}: needs --launcher torchrun (or a launcher prefix)")
        return cmd
    if inputs.launcher == "torchrun":
        return [cmd[0], "-m", "torch.distributed.run", "--nproc-per-node", str(inputs.nproc or 1), *cmd[1:]]
    prefix = shlex.split(inputs.launcher)
    if not prefix:
        raise RecipeError("--launcher: empty; give python, torchrun or a command prefix")
    if inputs.nproc not in (None, 1):
        raise RecipeError(f"--nproc {inputs.nproc}: only with --launcher torchrun (a prefix sets its own count)")
    return [*prefix, *cmd[1:]]


def build_plan(recipe: str | Path, overrides: Sequence[str], inputs: RunInputs) -> Plan:
    """Every command of the run, in order: build -> fit -> (per evaluation set) export -> evaluate ->
    meta_classify, with the SML statistics / OODMC fits that the evaluated scores need."""
    doc = load_recipe(recipe)
    texts = parse_overrides(overrides)
    res = resolve(doc, texts)
    notes: list[str] = []

    def given(value: str | None, flag: str) -> str:
        if value is None:
            notes.append(f"{flag} not given: shown as {flag.upper().lstrip('-')}")
            return flag.upper().lstrip("-")
        return value

    out = Path(inputs.out)
    shards, run = out / "shards", out / "run"
    dev = ["--device", inputs.device]
    steps: list[Step] = []

    def add(id_: str, stage: str, argv: list[str], done: Path, **flags: Any) -> None:
        values = flat_settings(stage, res[stage]) if stage in res else {}
        steps.append(Step(id_, stage, argv, done, {**values, **{f"--{k}": str(v) for k, v in flags.items()}}))

    if "build" in res:
        cityscapes, coco = given(inputs.cityscapes, "--cityscapes"), given(inputs.coco, "--coco")
        add("build", "build", command("build", "--cityscapes", cityscapes, "--coco", coco, "--out", shards,
                                      *option_args("build", res["build"], _explicit(doc, texts, "build"))),
            shards / "manifest.json", cityscapes=cityscapes, coco=coco)
    init = given(inputs.init, "--init")
    if "fit" in res:
        add("fit", "fit", _launched(command("fit", "--data", shards, "--init", init, "--out", run,
                                            *option_args("fit", res["fit"], _explicit(doc, texts, "fit")), *dev),
                                    inputs), run / "model-final.pt", init=init)
        ckpt = str(run / "model-final.pt")
    else:
        ckpt = init
    export_args = option_args("export", res.get("export", {}), _explicit(doc, texts, "export"))
    methods = list(res.get("evaluate", {}).get("method") or [])
    extra: list[Any] = []
    if {"sml", "vde"} & set(methods):
        stats = out / "sml.json"
        add("sml_stats", "sml_stats", _launched(command(
            "export", "--checkpoint", ckpt, "--data", shards, "--kinds", "cityscapes", "--out", out / "train-id.h5",
            "--sml-stats", stats, *dev), inputs), stats, checkpoint=ckpt)
        extra += ["--sml-stats", stats]
    if "oodmc" in methods:
        mc = out / "train-dag-mc.h5"
        add("oodmc_export", "export", _launched(command(
            "export", "--checkpoint", ckpt, "--data", shards, "--kinds", "dag", "--out", mc, *export_args, *dev),
            inputs), mc, checkpoint=ckpt)
        add("oodmc", "oodmc", [sys.executable, "-m", "oodscore.cli", "fit-oodmc", "--logits", str(mc),
                               "--out", str(out / "oodmc.npz")], out / "oodmc.npz", logits=mc)
        extra += ["--oodmc-model", out / "oodmc.npz"]
    given_names = {e.name for e in inputs.evals}
    for published in doc.get("eval_sets", []):
        if published.get("name") not in given_names:
            notes.append(f"published set {published.get('name')} ({published.get('preset')}) skipped: no "
                         f"--eval {published.get('name')}={published.get('preset')}:DIR given")
    for ev in inputs.evals:
        logits = out / ev.name / "logits.h5"
        add(f"export-{ev.name}", "export", _launched(command(
            "export", "--checkpoint", ckpt, "--images", ev.root, "--preset", ev.preset, "--out", logits,
            *export_args, *dev), inputs), logits, checkpoint=ckpt, images=ev.root, preset=ev.preset)
        if "evaluate" in res:
            report = out / ev.name / "report"
            add(f"evaluate-{ev.name}", "evaluate", command(
                "evaluate", "--logits", logits, "--out", report, *extra,
                *option_args("evaluate", res["evaluate"], _explicit(doc, texts, "evaluate")), *dev),
                report / "metrics.json", logits=logits)
        if "meta_classify" in res:
            meta = out / ev.name / "meta"
            add(f"meta_classify-{ev.name}", "meta_classify", command(
                "meta_classify", "--logits", logits, "--out", meta,
                *option_args("meta_classify", res["meta_classify"], _explicit(doc, texts, "meta_classify"))),
                meta / "meta.json", logits=logits)
    if not inputs.evals:
        notes.append("no --eval NAME=PRESET:DIR given: nothing is exported or evaluated")
    return Plan(res, steps, notes)
