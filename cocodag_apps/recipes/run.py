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

Layout of ``OUT``::

    recipe.json            the resolved recipe (every value the run uses) and the overrides
    commands.log           every command run, in order (re-runnable by hand)
    stages/<step>.json     what each finished step was made from
    logs/<step>.log        each step's output
    shards/  run/          build's shards, fit's run folder (run/model-final.pt)
    NAME/logits.h5 NAME/report/ [NAME/meta/]   per evaluation set (--eval NAME=PRESET:DIR)
    results.md results.json
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cocodag.atomic import atomic_write_text
from cocodag.device import resolve_device
from cocodag.errors import CocodagError
from oodscore.compare import DIRECTIONS, read_report
from oodscore.published import load_published
from oodscore.tables import Table

from ..stage_runner import run_logged, shown
from . import RecipeError
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
def check_inputs(plan: Plan, inputs: RunInputs) -> None:
    """Every input a step needs exists; else one line naming the flag (before any step runs)."""
    ids = {s.id for s in plan.steps}
    needs_init = any(s.stage in ("fit", "export", "sml_stats") for s in plan.steps)
    if "build" in ids:
        for flag, value, what in (("--cityscapes", inputs.cityscapes, "the Cityscapes root: leftImg8bit/, gtFine/"),
                                  ("--coco", inputs.coco, "the COCO root: annotations/, train2017/")):
            if value is None:
                raise RecipeError(f"{flag}: needed by the build stage ({what})")
            if not Path(value).is_dir():
                raise RecipeError(f"{flag} {value}: folder not found")
    if needs_init:
        if inputs.init is None:
            raise RecipeError("--init: needed by the fit / export stages (the released checkpoint the recipe starts "
                              "from; `cocodag recipe show NAME` names it and where to download it)")
        if not Path(inputs.init).is_file():
            raise RecipeError(f"--init {inputs.init}: checkpoint file not found")
    for ev in inputs.evals:
        if not Path(ev.root).is_dir():
            raise RecipeError(f"--eval {ev.name}={ev.preset}:{ev.root}: folder {ev.root} not found")


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
    """``{step id: done}``: a step is done when its output exists and its record holds the same settings.

    Raises
    ------
    RecipeError
        (one line, before any step runs) a done step whose recorded settings differ (naming the keys), or a step
        whose output exists without a record (made outside a recipe run: its settings are unknown).
    """
    done: dict[str, bool] = {}
    changed: list[str] = []
    keys: set[str] = set()
    for step in plan.steps:
        record = _read_record(_record_path(out, step))
        if not step.done.exists():
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
def _show_stderr(step: Step) -> bool:
    """The long steps (training, exports) show their progress; the others only write their log."""
    return step.stage in ("fit", "export", "sml_stats")


def run_plan(plan: Plan, inputs: RunInputs, recipe: str) -> dict[str, Any]:
    """Check the inputs and the finished steps, run the others in order, write ``results.md`` /
    ``results.json``; returns the results (see :func:`write_results`)."""
    resolve_device(inputs.device)            # a bad --device is one line now, not a failed stage later
    check_inputs(plan, inputs)
    out = Path(inputs.out)
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
        if step.stage == "fit" and (step.done.parent / "checkpoint-last.pt").is_file():
            argv.append("--resume")      # an interrupted fit: continued (a fresh fit there is refused)
        with open(out / "commands.log", "a", encoding="utf-8") as fh:
            fh.write(f"# {step.id}\n{shown(argv)}\n")
        t = time.perf_counter()
        _run_step(step, argv, out)
        timings[step.id] = time.perf_counter() - t
        record = {"step": step.id, "stage": step.stage, "command": shown(argv), "argv": argv,
                  "settings": step.settings, "seconds": round(timings[step.id], 3),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(_record_path(out, step), json.dumps(record, indent=2, default=str) + "\n")
        print(f"[{step.id}] {timings[step.id]:.1f} s (total {time.perf_counter() - t0:.0f} s)", file=sys.stderr,
              flush=True)
    return write_results(out, plan, inputs, recipe, timings)


def _run_step(step: Step, argv: list[str], out: Path) -> None:
    log = out / "logs" / f"{step.id}.log"
    try:
        run_logged(argv, log, quiet=not _show_stderr(step), who="recipe")
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
    for ev in inputs.evals:
        report = out / ev.name / "report"
        if not (report / "metrics.json").is_file():
            continue
        mine = [{"method": m, "protocol": p, "values": v} for m, p, v in read_report(report)]
        published, source = _published_rows(ev.preset)
        sets[ev.name] = {"preset": ev.preset, "root": ev.root, "report": str(report), "rows": mine,
                         "published": {**source, "rows": published} if source else None}
        table_rows += [[ev.name, "yours", r["method"], r["protocol"], None, r["values"]] for r in mine]
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
        md += ["Published numbers (SegmentMeIfYouCan leaderboard, SMIYC protocol, values as published):", *sections,
               ""]
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
