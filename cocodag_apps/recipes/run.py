"""``cocodag recipe run``: a recipe's steps (:mod:`cocodag_apps.recipes.plan`) executed, resumable, then
``OUT/results.md`` / ``results.json``.

Each step is the package's own command line, run in a subprocess (:mod:`cocodag_apps.stage_runner`, as
``cocodag demo`` runs its stages) with its output in ``OUT/logs/<step>.log``; each command is appended to
``OUT/commands.log`` before it runs, so any step can be re-run by hand. A finished step leaves
``OUT/stages/<step>.json``: its command and the settings it was made from (the stage's resolved values as
``STAGE.OPTION`` keys, its inputs by their flags). A later run skips a step whose output exists and whose record
holds the same settings, and refuses, before any step runs, one whose recorded settings differ (one line naming the
keys, as ``maxent-train fit --resume`` does). An interrupted ``fit`` is continued with ``--resume``.

Before any step runs, every input a step needs is checked (``--cityscapes``, ``--coco``, ``--init``, each
``--eval`` folder): a missing one is one line naming its flag, not a failed stage an hour later.

Layout of ``OUT`` (a recipe of one run; one of several runs, as the demo, puts each in ``runs/NAME-sK/`` and its
evaluations there, :data:`cocodag_apps.recipes.plan.LAYOUT_RUNS`, unless its ``[layout]`` says otherwise)::

    recipe.json            the resolved recipe (every value the run uses) and the overrides
    commands.log           every command run, in order (re-runnable by hand)
    stages/<step>.json     what each finished step was made from
    logs/<step>.log        each step's output
    shards/                build's shards
    run/                   fit's run folder (run/model-final.pt), the SML statistics and OODMC model it is scored with
    NAME/logits.h5 NAME/report/ [NAME/meta/]   per evaluation set (--eval NAME=PRESET:DIR)
    results.md results.json

The results are written by the recipe's ``report`` (:data:`RESULT_WRITERS`): this module's :func:`write_results`,
or the demo's tables (:func:`cocodag_apps.demo.write_demo_results`).
"""
from __future__ import annotations

import importlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cocodag.atomic import atomic_write, atomic_write_text
from cocodag.device import resolve_device
from cocodag.errors import CocodagError
from cocodag.lock import OutputLock
from oodscore.compare import DIRECTIONS, read_report
from oodscore.published import load_published, paper_results
from oodscore.tables import Table

from ..stage_runner import run_logged, shown
from . import RecipeError, close_matches
from .plan import Plan, RunInputs, Step, build_plan

#: options that do not change a step's result: a rerun may differ in them (as ``fit --resume`` allows)
NON_RESULT_OPTIONS = frozenset({"workers", "progress", "checkpoint_every", "verify_checksums"})
#: the preset of an evaluation set -> the SegmentMeIfYouCan leaderboard published on that data set, and what differs
SMIYC_PUBLISHED: dict[str, tuple[str, str]] = {
    "smiyc-anomaly": ("smiyc-anomaly", "the leaderboard's numbers are on the hidden test split; yours on the folder "
                                       "given (the preset reads the public validation split)"),
    "smiyc-obstacle": ("smiyc-obstacle", "the leaderboard's numbers are on the hidden test split; yours on the "
                                         "folder given (the preset reads the public validation split)"),
    "lostandfound": ("smiyc-laf", "the leaderboard's LostAndFound numbers leave out the known (Cityscapes) objects; "
                                  "the preset counts every obstacle"),
}
#: the metric columns of results.md, those that some row has
RESULT_METRICS = ("auroc", "ap", "fpr95", "f1", "component_siou", "component_ppv", "component_mean_f1")


# ------------------------------------------------------------------------------------------------------ checks
def check_inputs(plan: Plan) -> None:
    """Every input a step needs exists; else one line naming the flag (before any step runs). A path inside a
    folder that a step writes (the demo world) is not checked."""
    for flag, value, what, kind in plan.needs:
        if value is None:
            raise RecipeError(f"{flag}: needed by the run ({what})")
        path = Path(value)
        if any(path == p or p in path.parents for p in plan.produced):
            continue
        if kind == "file" and not path.is_file():
            raise RecipeError(f"{flag} {value}: checkpoint file not found")
        if kind == "dir" and not path.is_dir():
            raise RecipeError(f"{flag}: folder {value} not found")


def _record_path(out: Path, step: Step) -> Path:
    return out / "stages" / f"{step.id}.json"


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _differing(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(recorded) | set(now))
    return [k for k in keys if k.rpartition(".")[2] not in NON_RESULT_OPTIONS and recorded.get(k) != now.get(k)]


def check_done(plan: Plan, out: Path) -> dict[str, bool]:
    """``{step id: done}``: a step is done when its output exists and its record holds the same settings; a step
    whose output is an intermediate (``feeds``) is done when its record holds the same settings and every step
    that reads it is done.

    Raises
    ------
    RecipeError
        (one line, before any step runs) a done step whose recorded settings differ (naming the keys), or a step
        whose output exists without a record (made outside a recipe run: its settings are unknown).
    """
    done: dict[str, bool] = {}
    changed: list[str] = []
    keys: set[str] = set()
    for step in sorted(plan.steps, key=lambda s: bool(s.feeds)):     # intermediates once their readers are known
        record = _read_record(_record_path(out, step))
        if step.always:
            done[step.id] = False
            continue
        exists = step.done.exists() or (bool(step.feeds) and record is not None
                                        and all(done.get(f) for f in step.feeds))
        if not exists:
            done[step.id] = False
            continue
        if record is None:
            raise RecipeError(f"{step.done} exists but {_record_path(out, step)} does not (made outside a recipe "
                              f"run, its settings unknown): remove it or use another --out")
        diff = _differing(record.get("settings", {}), step.settings)
        if diff:
            changes = "; ".join(f"{k}: run {record['settings'].get(k)!r}, now {step.settings.get(k)!r}"
                                for k in diff)
            changed.append(f"{step.id} ({changes})")
            keys.update(diff)
        done[step.id] = True
    if changed:
        raise RecipeError(f"{out}: settings {sorted(keys)} differ from the finished stages' records: "
                          f"{', '.join(changed)}; run with the same settings or use another --out")
    return done


# ------------------------------------------------------------------------------------------------------ running
#: what writes a recipe's results: its ``report`` key -> ``module:function`` (``function(out, plan, inputs, recipe,
#: timings)``), imported when the run ends (timm-style plug-ins)
RESULT_WRITERS = {"recipe": "cocodag_apps.recipes.run:write_results", "demo": "cocodag_apps.demo:write_demo_results"}
Writer = Callable[[Path, Plan, RunInputs, str, Mapping[str, float]], dict[str, Any]]


def result_writer(plan: Plan) -> Writer:
    """The results writer the recipe names (``report = "demo"``), else :func:`write_results`."""
    kind = plan.resolved.get("report", "recipe")
    if kind not in RESULT_WRITERS:
        raise RecipeError(f"report {kind!r}: unknown{close_matches(str(kind), list(RESULT_WRITERS))}")
    module, _, name = RESULT_WRITERS[kind].partition(":")
    fn: Writer = getattr(importlib.import_module(module), name)
    return fn


def run_plan(plan: Plan, inputs: RunInputs, recipe: str, writer: Writer | None = None) -> dict[str, Any]:
    """Check the inputs and the finished steps, run the others in order, write the results (``writer``, by default
    the recipe's :func:`result_writer`); returns them."""
    resolve_device(inputs.device)            # a bad --device is one line now, not a failed stage later
    check_inputs(plan)
    writer = writer or result_writer(plan)
    out = Path(inputs.out)
    out.mkdir(parents=True, exist_ok=True)
    # two runs on one --out would interleave their steps and records: the second is refused, naming the first
    with OutputLock(out, kind="dir", lock_file=out / ".recipe.lock"):
        return _run_locked(plan, inputs, recipe, writer, out)


def _run_locked(plan: Plan, inputs: RunInputs, recipe: str, writer: Writer, out: Path) -> dict[str, Any]:
    done = check_done(plan, out)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    (out / "stages").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.json", json.dumps({"recipe": recipe, "resolved": plan.resolved,
                                                       "overrides": plan.resolved.get("overrides", {})},
                                                      indent=2) + "\n")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    for step in plan.steps:
        if done[step.id]:
            print(f"[{step.id}] already done ({step.done}), skipped", file=sys.stderr)
            continue
        print(f"[{step.id}]", file=sys.stderr, flush=True)
        argv = list(step.argv)
        if step.stage in ("fit", "baseline") and (step.done.parent / "checkpoint-last.pt").is_file():
            argv.append("--resume")      # an interrupted fit: continued (a fresh fit there is refused)
        with open(out / "commands.log", "a", encoding="utf-8") as fh:
            fh.write(f"# {step.id}\n{shown(argv)}\n")
        t = time.perf_counter()
        _run_step(step, argv, out, recipe)
        timings[step.id] = time.perf_counter() - t
        record = {"step": step.id, "stage": step.stage, "command": shown(argv), "argv": argv,
                  "settings": step.settings, "seconds": round(timings[step.id], 3),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(_record_path(out, step), json.dumps(record, indent=2, default=str) + "\n")
        for path in step.cleanup:       # large intermediates: only their products are kept
            path.unlink(missing_ok=True)
        print(f"[{step.id}] {timings[step.id]:.1f} s (total {time.perf_counter() - t0:.0f} s)", file=sys.stderr,
              flush=True)
    return writer(out, plan, inputs, recipe, timings)


#: what a trained model's folder holds besides model-final.pt (maxent_train.train.RunDir); a copied one holds none
_TRAINING_FILES = ("log.jsonl", "checkpoint-last.pt", "config.json")


def _copy_model(src: Path, dst: Path) -> None:
    """Put the given starting model at ``dst`` (atomically: ``dst`` is the step's done-marker); an interrupted
    training's files there go, so only a trained model leaves a training log."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for name in _TRAINING_FILES:
        (dst.parent / name).unlink(missing_ok=True)
    with atomic_write(dst) as tmp:
        shutil.copyfile(src, tmp)


def _run_step(step: Step, argv: list[str], out: Path, recipe: str) -> None:
    if step.copy_from is not None:
        _copy_model(step.copy_from, step.done)
        print(f"  copied the starting model {step.copy_from} -> {step.done}", file=sys.stderr)
        return
    log = out / "logs" / f"{step.id}.log"
    try:
        run_logged(argv, log, quiet=not step.shown, who=recipe)
    except CocodagError:
        # meta classification of a set with too few segments: the command writes its counts and its reason; the
        # run goes on (as the demo's)
        meta = _read_record(step.done) if step.stage == "meta_classify" else None
        if not meta or "error" not in meta:
            raise
        print(f"  the meta classifier was not fitted: {meta['error']}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------------ results
def _published_rows(preset: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    if preset not in SMIYC_PUBLISHED:
        return [], None
    name, caveat = SMIYC_PUBLISHED[preset]
    table = load_published(name)
    rows = [{"method": p.method, "protocol": "smiyc", "values": dict(p.values), "requires_ood": p.requires_ood,
             "paper": p.paper, "code": p.code} for p in table.rows]
    return rows, {"leaderboard": name, "citation": table.citation(), "caveat": caveat}


def write_results(out: Path, plan: Plan, inputs: RunInputs, recipe: str,
                  timings: Mapping[str, float] | None = None) -> dict[str, Any]:
    """``OUT/results.md`` / ``results.json``: per evaluation set, your numbers per method and protocol (each
    evaluate report) and, where the set is a SegmentMeIfYouCan one, the leaderboard's published rows beside them
    (:data:`SMIYC_PUBLISHED`)."""
    sets: dict[str, Any] = {}
    table_rows: list[list[Any]] = []
    sections: list[str] = []
    several = len(plan.models) > 1          # a recipe of several runs: each row names its model
    for ev in plan.evals:
        mine: list[dict[str, Any]] = []
        for model in plan.models:
            report = model.reports.get(ev.name)
            if report is None or not (report / "metrics.json").is_file():
                continue
            rows = [{"model": model.id, "method": m, "protocol": p, "values": v}
                    for m, p, v in read_report(report)]
            mine += rows
            table_rows += [[ev.name, f"yours: {r['model']}" if several else "yours", r["method"], r["protocol"],
                            None, r["values"]] for r in rows]
        if not mine:
            continue
        published, source = _published_rows(ev.preset)
        papers = [r for r in paper_results(str(plan.resolved.get("name"))) if r.preset == ev.preset]
        reports = [str(m.reports[ev.name]) for m in plan.models if ev.name in m.reports]
        sets[ev.name] = {"preset": ev.preset, "root": ev.root, "report": reports[0] if len(reports) == 1 else reports,
                         "rows": mine, "published": {**source, "rows": published} if source else None,
                         "paper": [{"method": r.method, "dataset": r.dataset, "split": r.split, "values": r.values,
                                    "source": r.source, "excerpt": r.excerpt} for r in papers]}
        table_rows += [[ev.name, "paper", r.method, "paper", None, r.values] for r in papers]
        sections += [f"- `{ev.name}` ({ev.preset}): {r.method} on {r.dataset} as published, from {r.source}; split: "
                     f"{r.split}." for r in papers]
        table_rows += [[ev.name, "published", r["method"], r["protocol"],
                        None if r["requires_ood"] is None else "yes" if r["requires_ood"] else "no", r["values"]]
                       for r in published]
        if source:
            sections.append(f"- `{ev.name}` ({ev.preset}): published rows from {source['citation']}; "
                            f"{source['caveat']}.")
    metrics = [m for m in RESULT_METRICS if any(r[5].get(m) is not None for r in table_rows)]
    table = Table(["set", "source", "method", "protocol", "requires_ood", *metrics],
                  [[*r[:5], *(r[5].get(m) for m in metrics)] for r in table_rows],
                  align="lllll" + "r" * len(metrics))
    skipped = [n for n in plan.notes if n.startswith("published set")]
    dirs = ", ".join(f"{m} {'↑' if DIRECTIONS.get(m, 0) > 0 else '↓'}" for m in metrics)
    md = [f"# {recipe}: results", "",
          f"Recipe `{recipe}` (resolved values and overrides: `recipe.json`; every command: `commands.log`).",
          f"Fractions in [0, 1] ({dirs}); `-`: not reported by that protocol or not published.", ""]
    if table_rows:
        md += [table.markdown(".4f"), ""]
    else:
        md += ["No evaluation set was evaluated (give `--eval NAME=PRESET:DIR`).", ""]
    if sections:
        md += ["Published numbers (`published`: the SegmentMeIfYouCan leaderboard, SMIYC protocol; `paper`: the "
               "recipe's own published results, oodscore/data/published/papers.json), values as published:",
               *sections, ""]
    if skipped:
        md += ["Skipped:", *(f"- {n}" for n in skipped), ""]
    if timings:
        md += ["Step times of this invocation (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()), ""]
    doc = {"recipe": recipe, "overrides": plan.resolved.get("overrides", {}), "sets": sets, "skipped": skipped,
           "metrics": metrics}
    atomic_write_text(out / "results.md", "\n".join(md))
    atomic_write_text(out / "results.json", json.dumps(doc, indent=2) + "\n")
    print("\n".join(md))
    return doc


def run_recipe(recipe: str, overrides: Sequence[str], inputs: RunInputs) -> dict[str, Any]:
    """Plan (:func:`cocodag_apps.recipes.plan.build_plan`) and run ``recipe``; returns the results."""
    plan = build_plan(recipe, overrides, inputs)
    return run_plan(plan, inputs, plan.resolved.get("name", str(recipe)))
