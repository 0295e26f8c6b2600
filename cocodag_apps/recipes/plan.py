"""The command lines of a recipe run, stage by stage (what ``cocodag recipe run --dry-run`` prints).

Each stage is the package's own command line run as ``python -m MODULE COMMAND`` (as ``cocodag demo`` runs its
stages). A command carries the run's inputs and outputs and the options the recipe (or an override) sets, so the
published values are on the line; an option the recipe leaves alone keeps its command's default.
"""
from __future__ import annotations

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
    run)."""

    out: str = "recipe-out"
    cityscapes: str | None = None
    coco: str | None = None
    init: str | None = None
    evals: list[EvalSet] = field(default_factory=list)
    device: str = "auto"


@dataclass
class Plan:
    """The resolved recipe, its commands in order (``(stage, argv)``), and notes (skipped sets, placeholders)."""

    resolved: dict[str, Any]
    commands: list[tuple[str, list[str]]]
    notes: list[str]


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
    cmds: list[tuple[str, list[str]]] = []
    if "build" in res:
        cmds.append(("build", command("build", "--cityscapes", given(inputs.cityscapes, "--cityscapes"),
                                      "--coco", given(inputs.coco, "--coco"), "--out", shards,
                                      *option_args("build", res["build"], _explicit(doc, texts, "build")))))
    init = given(inputs.init, "--init")
    if "fit" in res:
        cmds.append(("fit", command("fit", "--data", shards, "--init", init, "--out", run,
                                    *option_args("fit", res["fit"], _explicit(doc, texts, "fit")), *dev)))
        ckpt = str(run / "model-final.pt")
    else:
        ckpt = init
    export_args = option_args("export", res.get("export", {}), _explicit(doc, texts, "export"))
    methods = list(res.get("evaluate", {}).get("method") or [])
    extra: list[Any] = []
    if {"sml", "vde"} & set(methods):
        stats = out / "sml.json"
        cmds.append(("sml_stats", command("export", "--checkpoint", ckpt, "--data", shards, "--kinds", "cityscapes",
                                          "--out", out / "train-id.h5", "--sml-stats", stats, *dev)))
        extra += ["--sml-stats", stats]
    if "oodmc" in methods:
        mc = out / "train-dag-mc.h5"
        cmds.append(("oodmc", command("export", "--checkpoint", ckpt, "--data", shards, "--kinds", "dag",
                                      "--out", mc, *export_args, *dev)))
        cmds.append(("oodmc", [sys.executable, "-m", "oodscore.cli", "fit-oodmc", "--logits", str(mc),
                               "--out", str(out / "oodmc.npz")]))
        extra += ["--oodmc-model", out / "oodmc.npz"]
    given_names = {e.name for e in inputs.evals}
    for published in doc.get("eval_sets", []):
        if published.get("name") not in given_names:
            notes.append(f"published set {published.get('name')} ({published.get('preset')}) skipped: no "
                         f"--eval {published.get('name')}={published.get('preset')}:DIR given")
    for ev in inputs.evals:
        logits = out / ev.name / "logits.h5"
        cmds.append(("export", command("export", "--checkpoint", ckpt, "--images", ev.root, "--preset", ev.preset,
                                       "--out", logits, *export_args, *dev)))
        if "evaluate" in res:
            cmds.append(("evaluate", command("evaluate", "--logits", logits, "--out", out / ev.name / "report",
                                             *extra, *option_args("evaluate", res["evaluate"],
                                                                  _explicit(doc, texts, "evaluate")), *dev)))
        if "meta_classify" in res:
            cmds.append(("meta_classify", command("meta_classify", "--logits", logits, "--out",
                                                  out / ev.name / "meta",
                                                  *option_args("meta_classify", res["meta_classify"],
                                                               _explicit(doc, texts, "meta_classify")))))
    if not inputs.evals:
        notes.append("no --eval NAME=PRESET:DIR given: nothing is exported or evaluated")
    return Plan(res, cmds, notes)
