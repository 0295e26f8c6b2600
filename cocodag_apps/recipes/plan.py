"""The command lines of a recipe run, step by step (what ``cocodag recipe run --dry-run`` prints).

Each step is the package's own command line run as ``python -m MODULE COMMAND``. A command carries the run's inputs
and outputs and the options the recipe (or an override) sets, so the published values are on the line; an option
the recipe leaves alone keeps its command's default.

The steps, in order: ``world`` (the demo's synthetic world, ``cocodag demo-data``) -> ``build`` -> ``baseline``
(the starting model trained from scratch, or the given ``--init`` copied in place, when the recipe has a
``[baseline]``) -> ``miou`` -> one ``fit`` per run and seed -> per model: ``sml_stats`` / ``oodmc_export`` ->
``fit_oodmc`` (when its scores need them), then per evaluation set ``export`` -> ``evaluate`` -> ``meta_classify``
-> ``compare`` (every model's report in one leaderboard, per evaluation set).

Where each output goes is the recipe's ``[layout]`` (:data:`LAYOUT_SINGLE` for a recipe of one run,
:data:`LAYOUT_RUNS` for one with ``[[runs]]``); two steps never write the same path.
"""
from __future__ import annotations

import shlex
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cocodag.formats.evalsets import PRESETS
from cocodag.formats.shards import sha256_file

from . import RUN_STAGES, RecipeError, close_matches, load_recipe
from .resolve import command, explicit_keys, option_args, parse_overrides, resolve

#: where the outputs of a recipe of one run go, relative to --out ({run}: the run's folder name, {set}: the
#: evaluation set's name); the run's folder also holds its sml.json, oodmc.npz and the intermediates
LAYOUT_SINGLE = {"run": "run", "logits": "{set}/logits.h5", "report": "{set}/report", "meta": "{set}/meta",
                 "compare": "report/{set}"}
#: the same for a recipe of several runs (``[[runs]]``): a folder per run and seed, runs/NAME-sK
LAYOUT_RUNS = {"run": "runs/{run}", "logits": "runs/{run}/{set}/logits.h5", "report": "runs/{run}/{set}/report",
               "meta": "runs/{run}/{set}/meta", "compare": "report/{set}"}
#: the run folder of the starting model when the recipe trains it (``[baseline]``)
BASELINE = "baseline"


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
    it was made from (the stage's resolved values as ``STAGE.OPTION`` keys and its inputs as their flags).

    ``copy_from``: the step copies this file to ``done`` (a given starting model) instead of running ``argv``;
    ``cleanup``: intermediates removed once it finished; ``feeds``: the steps that read its output, which is
    removed after them (the step counts as done once they are); ``shown``: its stderr (progress) is shown;
    ``always``: run on every invocation (a cheap summary of the others, e.g. ``compare``, whose inputs grow when a
    resumed run adds seeds)."""

    id: str
    stage: str
    argv: list[str]
    done: Path
    settings: dict[str, Any]
    copy_from: Path | None = None
    cleanup: tuple[Path, ...] = ()
    feeds: tuple[str, ...] = ()
    shown: bool = False
    always: bool = False


@dataclass
class Model:
    """One model the run scores: its run (``[[runs]]`` name), seed, folder and, per evaluation set, its report and
    meta classification folders (what the results are read from)."""

    run: str
    seed: int
    id: str                   # its folder's name in the layout ({run}): NAME, or NAME-sK for a trained run of several
    folder: Path
    reports: dict[str, Path] = field(default_factory=dict)
    metas: dict[str, Path] = field(default_factory=dict)


@dataclass
class Plan:
    """The resolved recipe, its steps in order, notes (skipped sets, placeholders), the models it scores, the
    evaluation sets, and the inputs to check before any step runs: ``(flag, value, what it is, "dir" | "file")``,
    value None when not given; a path inside ``produced`` (a folder a step writes) is not checked."""

    resolved: dict[str, Any]
    steps: list[Step]
    notes: list[str]
    models: list[Model] = field(default_factory=list)
    evals: list[EvalSet] = field(default_factory=list)
    needs: list[tuple[str, str | None, str, str]] = field(default_factory=list)
    produced: list[Path] = field(default_factory=list)
    baseline_dir: Path | None = None

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


def layout_of(doc: Mapping[str, Any]) -> dict[str, str]:
    """The recipe's ``[layout]`` over the default of its kind, each template checked for its placeholders."""
    lay = {**(LAYOUT_RUNS if doc.get("runs") else LAYOUT_SINGLE), **doc.get("layout", {})}
    for key, tmpl in lay.items():
        names = {f[1] for f in string.Formatter().parse(str(tmpl)) if f[1] is not None}
        if not isinstance(tmpl, str) or names - {"run", "set"}:
            raise RecipeError(f"layout.{key} {tmpl!r}: a path relative to --out with {{run}} and {{set}} only")
    return lay


class _Builder:
    """Collects the steps of one plan."""

    def __init__(self, doc: dict[str, Any], texts: dict[str, str], inputs: RunInputs):
        self.doc, self.texts, self.inputs = doc, texts, inputs
        self.res = resolve(doc, texts)
        self.layout = layout_of(doc)
        self.out = Path(inputs.out)
        self.dev = ["--device", inputs.device]
        self.plan = Plan(self.res, [], [])

    def path(self, key: str, run: str = "", set_: str = "") -> Path:
        return self.out / self.layout[key].format(run=run, set=set_)

    def given(self, value: str | None, flag: str, what: str, kind: str = "dir") -> str:
        self.plan.needs.append((flag, value, what, kind))
        if value is None:
            self.plan.notes.append(f"{flag} not given: shown as {flag.upper().lstrip('-')}")
            return flag.upper().lstrip("-")
        return value

    def add(self, id_: str, stage: str, argv: list[str], done: Path, values: Mapping[str, Any] | None = None,
            flags: Mapping[str, Any] | None = None, **kw: Any) -> Step:
        settings = {**flat_settings(stage, values or {}), **{f"--{k}": str(v) for k, v in (flags or {}).items()}}
        step = Step(id_, stage, argv, done, settings, **kw)
        self.plan.steps.append(step)
        return step

    def opts(self, stage: str, values: Mapping[str, Any], run: str | None = None, extra: Sequence[str] = ()
             ) -> list[str]:
        keys = explicit_keys(self.doc, self.texts, stage, run)
        return option_args(stage, values, [*keys, *(k for k in extra if k not in keys)])

    # -------------------------------------------------------------------------------------------------- stages
    def world_and_build(self) -> tuple[str, str]:
        res, inputs = self.res, self.inputs
        cityscapes, coco = inputs.cityscapes, inputs.coco
        if "world" in res:
            world = self.out / "world"
            self.add("world", "world", command("world", world, *self.opts("world", res["world"])),
                     world / "anomaly" / "meta.json", res["world"])
            self.plan.produced.append(world)
            cityscapes = cityscapes or str(world / "cityscapes")
            coco = coco or str(world / "coco")
        if "build" not in res:
            return cityscapes or "CITYSCAPES", coco or "COCO"
        cityscapes = self.given(cityscapes, "--cityscapes", "the Cityscapes root: leftImg8bit/, gtFine/")
        coco = self.given(coco, "--coco", "the COCO root: annotations/, train2017/")
        shards = self.out / "shards"
        self.add("build", "build", command("build", "--cityscapes", cityscapes, "--coco", coco, "--out", shards,
                                           *self.opts("build", res["build"])),
                 shards / "manifest.json", res["build"], {"cityscapes": cityscapes, "coco": coco})
        return cityscapes, coco

    def starting_model(self, cityscapes: str) -> str:
        """The model the runs start from: ``--init``, or (``[baseline]``) the baseline folder's model, trained
        here from scratch or the given ``--init`` copied there."""
        res, inputs = self.res, self.inputs
        if "baseline" not in res:
            init = self.given(inputs.init, "--init", "the released checkpoint the recipe starts from; `cocodag "
                              "recipe show NAME` names it and where to download it", "file") \
                if self._needs_init() else (inputs.init or "INIT")
            miou_out = self.out / "miou.json"
        else:
            base = self.plan.baseline_dir = self.path("run", BASELINE)
            init = str(base / "model-final.pt")
            if inputs.init is not None:
                self.given(inputs.init, "--init", "the starting model's checkpoint", "file")
                sha = sha256_file(inputs.init) if Path(inputs.init).is_file() else "missing"
                self.add("baseline", "baseline", ["cp", inputs.init, init], Path(init),
                         flags={"init-sha256": sha}, copy_from=Path(inputs.init))
            else:
                self.add("baseline", "baseline", _launched(command(
                    "baseline", "--data", self.out / "shards", "--out", base,
                    *self.opts("baseline", res["baseline"]), *self.dev), inputs), Path(init), res["baseline"],
                    shown=True)
            miou_out = base / "miou.json"
        if "miou" in res:
            self.add("miou", "miou", command("miou", "--checkpoint", init, "--cityscapes", cityscapes, "--out",
                                             miou_out, *self.opts("miou", res["miou"]), *self.dev),
                     miou_out, res["miou"], {"checkpoint": init, "cityscapes": cityscapes})
        return init

    def _needs_init(self) -> bool:
        """Whether a step reads the starting model: a fit, a statistics export, or an export of an evaluation set."""
        return any(run.get("fit") or "sml_stats" in run or "oodmc_export" in run
                   or ("export" in run and self.plan.evals) for run in self.runs())

    def runs(self) -> list[dict[str, Any]]:
        """The resolved runs; a recipe without ``[[runs]]`` is one run, ``run``."""
        if "runs" in self.res:
            return list(self.res["runs"])
        return [{"name": "run", "seeds": 1, **{s: self.res[s] for s in RUN_STAGES if s in self.res}}]

    def models(self, init: str) -> list[tuple[dict[str, Any], Model, str]]:
        """``(run, model, its checkpoint)`` per run and seed, with a ``fit`` step for each trained one."""
        out: list[tuple[dict[str, Any], Model, str]] = []
        several = "runs" in self.res
        for run in self.runs():
            fit = run.get("fit")
            for k in range(run["seeds"] if fit else 1):
                rid = f"{run['name']}-s{k}" if fit and several else run["name"]
                folder = self.path("run", rid)
                model = Model(run["name"], k, rid, folder)
                if not fit:
                    out.append((run, model, init))
                    continue
                values = dict(fit)
                values["seed"] = fit["seed"] + k
                argv = _launched(command("fit", "--data", self.out / "shards", "--init", init, "--out", folder,
                                         *self.opts("fit", values, self._run_key(run),
                                                    ("seed",) if run["seeds"] > 1 else ()), *self.dev),
                                 self.inputs)
                self.add(f"fit-{rid}" if several else "fit", "fit", argv, folder / "model-final.pt", values,
                         {"init": init}, shown=True)
                out.append((run, model, str(folder / "model-final.pt")))
        return out

    def _run_key(self, run: Mapping[str, Any]) -> str | None:
        return run["name"] if "runs" in self.res else None

    def score(self, run: dict[str, Any], model: Model, ckpt: str) -> None:
        """The statistics its scores need, then per evaluation set: export -> evaluate -> meta_classify."""
        rk, folder, inputs = self._run_key(run), model.folder, self.inputs
        tag = f"-{model.id}" if "runs" in self.res else ""
        shards = self.out / "shards"
        extra: list[Any] = []
        if "sml_stats" in run:
            stats = folder / "sml.json"
            self.add(f"sml_stats{tag}", "sml_stats", _launched(command(
                "sml_stats", "--checkpoint", ckpt, "--data", shards, "--kinds", "cityscapes",
                "--out", folder / "train-id.h5", "--sml-stats", stats, *self.opts("sml_stats", run["sml_stats"], rk),
                *self.dev), inputs), stats, run["sml_stats"], {"checkpoint": ckpt},
                cleanup=(folder / "train-id.h5",), shown=bool(run["sml_stats"].get("progress")))
            extra += ["--sml-stats", stats]
        if "oodmc_export" in run:
            mc, model_file = folder / "train-dag-mc.h5", folder / "oodmc.npz"
            self.add(f"oodmc_export{tag}", "oodmc_export", _launched(command(
                "oodmc_export", "--checkpoint", ckpt, "--data", shards, "--kinds", "dag", "--out", mc,
                *self.opts("oodmc_export", run["oodmc_export"], rk), *self.dev), inputs), mc,
                run["oodmc_export"], {"checkpoint": ckpt}, feeds=(f"fit_oodmc{tag}",),
                shown=bool(run["oodmc_export"].get("progress")))
            self.add(f"fit_oodmc{tag}", "fit_oodmc", command(
                "fit_oodmc", "--logits", mc, "--out", model_file, *self.opts("fit_oodmc", run["fit_oodmc"], rk)),
                model_file, run["fit_oodmc"], {"logits": mc}, cleanup=(mc,))
            extra += ["--oodmc-model", model_file]
        export = run.get("export", {})
        for ev in self.plan.evals:
            logits = self.path("logits", model.id, ev.name)
            sid = f"{tag}-{ev.name}"
            self.add(f"export{sid}", "export", _launched(command(
                "export", "--checkpoint", ckpt, "--images", ev.root, "--preset", ev.preset, "--out", logits,
                *self.opts("export", export, rk), *self.dev), inputs), logits, export,
                {"checkpoint": ckpt, "images": ev.root, "preset": ev.preset}, shown=bool(export.get("progress", True)))
            if "evaluate" in run:
                report = model.reports[ev.name] = self.path("report", model.id, ev.name)
                self.add(f"evaluate{sid}", "evaluate", command(
                    "evaluate", "--logits", logits, "--out", report, *extra,
                    *self.opts("evaluate", run["evaluate"], rk), *self.dev),
                    report / "metrics.json", run["evaluate"], {"logits": logits})
            if run.get("meta_classify"):
                meta = model.metas[ev.name] = self.path("meta", model.id, ev.name)
                self.add(f"meta_classify{sid}", "meta_classify", command(
                    "meta_classify", "--logits", logits, "--out", meta,
                    *self.opts("meta_classify", run["meta_classify"], rk)), meta / "meta.json",
                    run["meta_classify"], {"logits": logits})

    def compare(self) -> None:
        if "compare" not in self.res:
            return
        for ev in self.plan.evals:
            scored = [m for m in self.plan.models if ev.name in m.reports]
            names = ",".join(m.id for m in scored)
            report = self.path("compare", set_=ev.name)
            self.add(f"compare-{ev.name}", "compare", command(
                "compare", *(m.reports[ev.name] for m in scored), "--names", names, "--out", report,
                *self.opts("compare", self.res["compare"])), report / "leaderboard.md", self.res["compare"],
                {"names": names}, always=True)


def build_plan(recipe: str | Path, overrides: Sequence[str], inputs: RunInputs, until: str | None = None) -> Plan:
    """Every command of the run, in order (see the module docstring). ``until="baseline"``: only the steps up to
    the starting model and its mIoU (``data/make_baseline.py``).

    Raises
    ------
    RecipeError
        A bad override or recipe, two steps writing the same path (the ``[layout]``), a bad ``--launcher``.
    """
    doc = load_recipe(recipe)
    b = _Builder(doc, parse_overrides(overrides), inputs)
    plan = b.plan
    world = b.out / "world"
    given = {e.name for e in inputs.evals}
    if len(given) < len(inputs.evals):
        twice = sorted({e.name for e in inputs.evals if [x.name for x in inputs.evals].count(e.name) > 1})
        raise RecipeError(f"--eval {twice[0]}=...: given twice; give each evaluation set its own name")
    plan.evals = list(inputs.evals)
    for published in doc.get("eval_sets", []):
        name, preset = published.get("name"), published.get("preset")
        if name in given:
            continue
        if published.get("world") and "world" in b.res:     # the demo world's own test set
            plan.evals.append(EvalSet(name, preset, str(world / published["world"])))
        else:
            plan.notes.append(f"published set {name} ({preset}) skipped: no --eval {name}={preset}:DIR given")
    for ev in inputs.evals:
        plan.needs.append((f"--eval {ev.name}={ev.preset}:{ev.root}", ev.root, "an evaluation set", "dir"))
    cityscapes, _ = b.world_and_build()
    init = b.starting_model(cityscapes)
    if until == "baseline":
        return plan
    models = b.models(init)
    plan.models = [m for _, m, _ in models]
    for run, model, ckpt in models:
        b.score(run, model, ckpt)
    b.compare()
    if not plan.evals:
        plan.notes.append("no --eval NAME=PRESET:DIR given: nothing is exported or evaluated")
    seen: dict[Path, str] = {}
    for step in plan.steps:
        if step.done in seen:
            raise RecipeError(f"steps {seen[step.done]} and {step.id} both write {step.done}: give each run and "
                              f"set its own path in [layout] ({{run}}, {{set}})")
        seen[step.done] = step.id
    return plan
