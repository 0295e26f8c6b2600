"""`cocodag demo`: the whole method end to end on the embedded demo world, in one command: the recipe ``demo``.

demo-data -> build -> baseline segmentation model -> MaxEnt fine-tunes {entropy, logit} x {no DAG, DAG} x seeds,
and the other training objectives {pebal, balanced-energy} x {no DAG, DAG} x seeds -> export (logits, MC-dropout
moments) -> SML stats / OODMC fit -> evaluate every score -> meta classification of the entropy models' segments
(``oodscore meta-classify``) -> ``REPORT/results.md``.

The demo is a recipe run (:mod:`cocodag_apps.recipes`, the shipped ``demo.toml``): one orchestrator runs it and
every published method's recipe. Each option of :class:`DemoConfig` is an override of that recipe
(:data:`FIELD_KEYS`), so ``cocodag demo --steps 30`` and ``cocodag recipe run demo fit.max_steps=30`` run the same
commands; the demo adds only the choice of its starting model (the shipped baseline when the world matches) and its
tables (:func:`write_demo_results`). Each stage is the packages' command line in a subprocess, exactly as a user
would type it (printed, and kept in ``OUT/commands.log``); a finished stage is skipped on the next invocation, and
one made from other settings is refused (``OUT/stages/``), so an interrupted demo resumes.

The PEBAL and Balanced Energy fine-tunes follow their official recipe where it carries over to the demo's
``tiny_segnet``: the abstention channel is grown from the baseline's classifier by ``fit``, only the model's final
classifier block is trained (the objectives' default ``--train-only``: ``fuse.*`` and ``classifier.*`` for
``tiny_segnet``), one Adam for the whole run (``--keep-optimizer``, as PEBAL's code keeps it), weight decay 0, the
frozen layers' BatchNorm in train mode (their code's choice), the same steps, batch size and seeds as the MaxEnt
runs. Two departures, both for the demo's budget of a few hundred steps on a 0.5 M-parameter model: the learning
rate is :attr:`DemoConfig.objective_lr` = 1e-3, and it is constant. PEBAL's published Adam 1e-5 with a poly schedule
is for WideResNet38 over 40 epochs; in the demo's 300 steps even 1e-4 (the MaxEnt runs' rate) leaves the classifier
block short of what it learns (measured on the default world, PEBAL with DAG: AUROC 93.8 / AP 19.6 at 1e-4 against
95.6 / 47.0 at 1e-3; without DAG 79.8 / 4.0 against 84.1 / 15.3), and a poly schedule would only lower the rate.
Their models are exported without MC dropout and scored with their own score (``pebal``) only, so they need no SML
statistics.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from cocodag.atomic import atomic_write, atomic_write_text
from cocodag.errors import CocodagError

# The shipped baseline is package data (pyproject's [tool.setuptools.package-data]): read through importlib.resources,
# it is found in a wheel install as in a source checkout. `data/make_baseline.py` (in the repository) remakes it.
SHIPPED_DATA = resources.files("cocodag_apps") / "data"
SHIPPED_BASELINE = SHIPPED_DATA / "demo_baseline.pt"
SHIPPED_BASELINE_INFO = SHIPPED_DATA / "demo_baseline.json"
#: the recipe the demo runs (cocodag_apps/recipes/demo.toml)
RECIPE = "demo"


@dataclass
class DemoConfig:
    """Every knob of the demo; the defaults fit a 2-core CPU in well under 15 minutes. They are the values of the
    ``demo`` recipe (a test keeps the two equal); :data:`FIELD_KEYS` names the recipe keys each one sets."""

    out: Path
    frames: int = 80               # Cityscapes-like train frames of the demo world
    val_frames: int = 16
    anomaly_frames: int = 20
    coco_images: int = 100
    frame_size: str = "512x256"
    coco_image_size: str = "320x240"
    crop: int = 128
    object_scale: str = "0.5:1"
    crops_per_frame: int = 4
    dag_samples: int = 240         # pasted frames (each gives up to 4 crops)
    model: str = "tiny_segnet"
    baseline: str = "auto"         # auto: the shipped checkpoint if it matches this world, else train; a path; "train"
    baseline_steps: int = 1500
    baseline_lr: float = 2e-3
    steps: int = 300               # fine-tuning steps per run (every objective)
    lr: float = 1e-4               # MaxEnt fine-tunes
    objective_lr: float = 1e-3     # PEBAL / Balanced Energy fine-tunes (the classifier block only; see the docstring)
    lam: float = 0.9
    batch_size: int = 8
    embedding_img_interval: int = 2
    seeds: int = 1
    mc_samples: int = 16
    moment_order: int = 4
    oodmc_train_crops: int = 64
    sml_train_crops: int = 160
    vde_threshold: float | None = None
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    overlays: int = 3
    meta_threshold: float = 0.7    # meta classification: segments = normalized entropy >= this (meta-ood's 0.7)
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)

    def world_key(self) -> dict[str, Any]:
        """What the demo world (and therefore a shipped baseline) depends on."""
        return {"frames": self.frames, "val_frames": self.val_frames, "frame_size": self.frame_size,
                "seed": self.seed, "crop": self.crop, "crops_per_frame": self.crops_per_frame, "model": self.model}

    def overrides(self) -> list[str]:
        """This configuration as overrides of the ``demo`` recipe (``KEY=VALUE``, every field of
        :data:`FIELD_KEYS`; a None is left out)."""
        out: list[str] = []
        for name, keys in FIELD_KEYS.items():
            value = getattr(self, name)
            if value is None:
                continue
            text = value if isinstance(value, str) else json.dumps(value)
            out += [f"{key}={text}" for key in keys]
        return out

    @classmethod
    def from_resolved(cls, resolved: Mapping[str, Any], out: Path | str) -> DemoConfig:
        """The configuration a resolved ``demo`` recipe runs (``cocodag recipe run demo`` with overrides): each
        field read from the first of its keys; a run stage's key (``fit.lr``) from the run ``entropy_DAG``, which
        has every stage and sets none of those keys itself."""
        runs = {r["name"]: r for r in resolved.get("runs", [])}
        values: dict[str, Any] = {}
        for name, keys in FIELD_KEYS.items():
            parts = keys[0].split(".")
            if parts[0] == "runs":
                value = runs[parts[1]][parts[2]][parts[3]]
            elif parts[0] == "seeds":
                value = runs[REFERENCE_RUN]["seeds"]
            elif parts[0] in resolved:
                value = resolved[parts[0]][parts[1]]
            else:
                value = runs[REFERENCE_RUN][parts[0]][parts[1]]
            values[name] = ":".join(f"{v:g}" for v in value) if isinstance(value, list) else value
        return cls(out=Path(out), **values)


#: the evaluation set of the demo's tables: the world's anomaly set (the recipe's ``[[eval_sets]]`` ``anomaly``)
WORLD_SET = "anomaly"
#: the run a run stage's key is read back from (:meth:`DemoConfig.from_resolved`)
REFERENCE_RUN = "entropy_DAG"
RUNS = (  # (name, optim_target, uses DAG): the MaxEnt fine-tunes
    ("entropy_noDAG", "entropy", False),
    ("entropy_DAG", "entropy", True),
    ("logit_noDAG", "logit", False),
    ("logit_DAG", "logit", True),
)
OBJECTIVE_RUNS = (  # (name, objective, uses DAG): the other training objectives (maxent_train.objectives)
    ("pebal_noDAG", "pebal", False),
    ("pebal_DAG", "pebal", True),
    ("balanced-energy_noDAG", "balanced-energy", False),
    ("balanced-energy_DAG", "balanced-energy", True),
)
#: each objective scored by its own score: MaxEnt (entropy target) by entropy, the abstention objectives by PEBAL's
OWN_SCORE = {"maxent": "entropy", "pebal": "pebal", "balanced-energy": "pebal"}
#: the models whose segments are meta-classified (meta-ood's second step follows entropy maximization)
META_RUNS = ("baseline", "entropy_noDAG", "entropy_DAG")
#: the runs that get SML statistics (the scores sml and vde) and MC-dropout moments (OODMC): the Table 3 ones
SML_RUNS = ("baseline", "entropy_DAG")

#: each field of :class:`DemoConfig` -> the keys of the ``demo`` recipe it sets (``out``, ``baseline`` and ``device``
#: are the run's inputs, ``timings`` its result)
FIELD_KEYS: dict[str, tuple[str, ...]] = {
    "frames": ("world.frames",), "val_frames": ("world.val_frames",), "anomaly_frames": ("world.anomaly_frames",),
    "coco_images": ("world.coco_images",), "frame_size": ("world.frame_size",),
    "coco_image_size": ("world.coco_image_size",), "crop": ("build.crop",), "object_scale": ("build.object_scale",),
    "crops_per_frame": ("build.cityscapes_crops_per_frame",), "dag_samples": ("build.dag_samples",),
    "model": ("baseline.model", "fit.model"), "baseline_steps": ("baseline.max_steps",),
    "baseline_lr": ("baseline.lr",), "steps": ("fit.max_steps",), "lr": ("fit.lr",),
    "objective_lr": tuple(f"runs.{name}.fit.lr" for name, _, _ in OBJECTIVE_RUNS),
    "lam": tuple(f"runs.{name}.fit.lambda" for name, _, _ in RUNS),
    "batch_size": ("baseline.batch_size", "fit.batch_size"), "embedding_img_interval": ("fit.embedding_img_interval",),
    "seeds": ("seeds",), "mc_samples": tuple(f"runs.{name}.export.mc_samples" for name in SML_RUNS),
    "moment_order": tuple(f"runs.{name}.export.moment_order" for name in SML_RUNS),
    "oodmc_train_crops": ("oodmc_export.limit",), "sml_train_crops": ("sml_stats.limit",),
    "vde_threshold": ("evaluate.vde_threshold",), "workers": ("world.workers", "build.workers"),
    "seed": ("world.seed", "build.seed", "baseline.seed", "export.seed", "fit_oodmc.seed"),
    "overlays": ("evaluate.max_overlays", "meta_classify.max_overlays"),
    "meta_threshold": ("meta_classify.entropy_threshold",), "progress": ("baseline.progress", "fit.progress"),
}


def _baseline_matches(cfg: DemoConfig) -> bool:
    """Whether the shipped baseline was trained on the world ``cfg`` generates."""
    if not (SHIPPED_BASELINE.is_file() and SHIPPED_BASELINE_INFO.is_file()):
        return False
    info = json.loads(SHIPPED_BASELINE_INFO.read_text())
    return info.get("world") == cfg.world_key()


def baseline_source(cfg: DemoConfig) -> str:
    """Where the demo's baseline comes from: ``"shipped"`` (``--baseline auto`` on the world the shipped checkpoint
    was trained on), ``"train"`` (trained here), or the path of a given checkpoint."""
    if cfg.baseline == "auto":
        return "shipped" if _baseline_matches(cfg) else "train"
    return str(cfg.baseline)


def run_demo(cfg: DemoConfig, until: str | None = None) -> dict[str, Any]:
    """Run the ``demo`` recipe with ``cfg`` (skipping finished stages) and write ``OUT/report/results.md``; return
    the summary dict.

    ``until="baseline"`` stops after the baseline model and its mIoU (used by ``data/make_baseline.py``) and returns
    ``{"baseline": its checkpoint, "miou": its miou.json}``.
    """
    from .recipes.plan import RunInputs, build_plan
    from .recipes.run import run_plan

    if cfg.baseline not in ("auto", "train") and not Path(cfg.baseline).is_file():
        raise CocodagError(f"--baseline {cfg.baseline}: not 'auto', 'train' or an existing checkpoint file")
    source = baseline_source(cfg)
    with resources.as_file(SHIPPED_BASELINE) as shipped:
        init = {"train": None, "shipped": str(shipped)}.get(source, source)
        inputs = RunInputs(out=str(cfg.out), init=init, device=cfg.device)
        plan = build_plan(RECIPE, cfg.overrides(), inputs, until=until)
        if until == "baseline":
            assert plan.baseline_dir is not None
            base = plan.baseline_dir

            def baseline_only(*_: Any) -> dict[str, Any]:
                return {"baseline": str(base / "model-final.pt"),
                        "miou": json.loads((base / "miou.json").read_text())}

            return run_plan(plan, inputs, RECIPE, writer=baseline_only)
        return run_plan(plan, inputs, RECIPE,
                        writer=lambda out, p, i, r, t: write_demo_results(out, p, i, r, t, cfg=cfg))


def write_demo_results(out: Path, plan: Any, inputs: Any, recipe: str, timings: Mapping[str, float],
                       cfg: DemoConfig | None = None) -> dict[str, Any]:
    """The results writer of the ``demo`` recipe (``report = "demo"``): each model's metrics.json and meta.json on
    the world's anomaly set, the baseline's mIoU, into :func:`write_results` (``OUT/report/``). ``cfg``: the
    demo's configuration (by default read back from the resolved recipe)."""
    cfg = cfg or DemoConfig.from_resolved(plan.resolved, out)
    cfg.timings = dict(timings)
    results: dict[str, list[dict]] = {}
    meta: dict[str, list[dict]] = {}
    names = [ev.name for ev in plan.evals]
    name = WORLD_SET if WORLD_SET in names else names[0]
    for model in plan.models:
        if name in model.reports:
            results.setdefault(model.run, []).append(json.loads((model.reports[name] / "metrics.json").read_text()))
        if name in model.metas:
            meta.setdefault(model.run, []).append(json.loads((model.metas[name] / "meta.json").read_text()))
    miou = json.loads((plan.baseline_dir / "miou.json").read_text())
    return write_results(Path(out) / "report", cfg, results, miou, Path(out) / "runs", meta)


# ------------------------------------------------------------------------------------------------------ report
def _agg(values: Sequence[float | None]) -> tuple[float, float]:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _fmt(values: Sequence[float | None], pct: bool = True) -> str:
    m, s = _agg(values)
    k = 100.0 if pct else 1.0
    if np.isnan(m):
        return "n/a"
    return f"{m * k:.1f} ± {s * k:.1f}" if len(values) > 1 else f"{m * k:.1f}"


def _col(results: dict[str, list[dict]], run: str, method: str, metric: str) -> list[float | None]:
    return [r.get(method, {}).get(metric) for r in results.get(run, [])]


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _fmt_count(values: Sequence[float | None]) -> str:
    """A count: the integer for one seed, mean ± std over several; n/a where the command could not give it."""
    m, sd = _agg(values)
    if np.isnan(m):
        return "n/a"
    return f"{m:.1f} ± {sd:.1f}" if len(values) > 1 else f"{m:.0f}"


#: the segment counts of meta classification in Table 1: (column, meta.json key, is a count)
META_COLUMNS = (("segments", "segments", True), ("FP before", "fp_before", True),
                ("FP after (meta-ood)", "fp_after", True), ("FP left", "fp_left", True),
                ("TP removed", "tp_removed", True), ("FN before", "fn_before", True), ("FN after", "fn_after", True),
                ("meta AUROC", "meta_auroc", False))


def _table1(results: dict[str, list[dict]], meta: dict[str, list[dict]]) -> str:
    """The seed's Table 1 shape and, per model, meta-ood's segment counts before / after meta classification."""
    rows = []
    for label, run in (("baseline (no MaxEnt)", "baseline"), ("entropy, without DAG", "entropy_noDAG"),
                       ("entropy, with DAG", "entropy_DAG")):
        docs = meta.get(run, [])
        counts = [(_fmt_count if is_count else _fmt)([d.get(key) for d in docs]) if docs else "n/a"
                  for _, key, is_count in META_COLUMNS]
        rows.append([label, _fmt(_col(results, run, "entropy", "f1")), _fmt(_col(results, run, "entropy", "precision")),
                     _fmt(_col(results, run, "entropy", "fpr")), *counts])
    return _table(["model (entropy score)", "F1", "precision", "FP rate", *(c for c, _, _ in META_COLUMNS)], rows)


def _objectives_table(results: dict[str, list[dict]]) -> str:
    """objective x {without, with} DAG, each scored by its own score (:data:`OWN_SCORE`); the baseline for
    reference."""
    runs = [("maxent", name, dag) for name, target, dag in RUNS if target == "entropy"]
    runs += [(objective, name, dag) for name, objective, dag in OBJECTIVE_RUNS]
    rows = [[objective, "with" if dag else "without", OWN_SCORE[objective],
             *(_fmt(_col(results, run, OWN_SCORE[objective], k)) for k in ("auroc", "ap", "fpr95"))]
            for objective, run, dag in runs]
    for score in sorted(set(OWN_SCORE.values())):
        if any(score in r for r in results.get("baseline", [])):
            rows.append(["(baseline)", "-", score,
                         *(_fmt(_col(results, "baseline", score, k)) for k in ("auroc", "ap", "fpr95"))])
    return _table(["objective", "DAG", "score", "AUROC", "AP", "FPR95"], rows)


def _tables(results: dict[str, list[dict]]) -> tuple[str, str, str]:
    """Tables 2-4 of results.md (seed's Tables 2-3 shapes, then every model and score)."""
    # each target scored by what it optimizes: the entropy target by entropy, the seed's logit target by max logit
    natural = {"entropy": "entropy", "logit": "maxlogit"}
    rows2 = [[target, "with" if dag else "without", natural[target],
              _fmt(_col(results, run, natural[target], "auroc")), _fmt(_col(results, run, natural[target], "fpr95")),
              _fmt(_col(results, run, natural[target], "ap"))] for run, target, dag in RUNS]
    rows2 += [["(baseline)", "-", m, _fmt(_col(results, "baseline", m, "auroc")),
               _fmt(_col(results, "baseline", m, "fpr95")), _fmt(_col(results, "baseline", m, "ap"))]
              for m in ("entropy", "maxlogit")]
    t2 = _table(["optim target", "DAG", "score", "AUROC", "FPR95", "AUPRC"], rows2)
    rows3 = []
    for run in ("baseline", "entropy_DAG"):
        for method in ("sml", "vde", "entropy", "oodmc"):
            if not any(method in r for r in results.get(run, [])):
                continue
            rows3.append([run, method, _fmt(_col(results, run, method, "ap")),
                          _fmt(_col(results, run, method, "auroc")), _fmt(_col(results, run, method, "fpr95"))])
    t3 = _table(["model", "score", "AP", "AUROC", "FPR95"], rows3)
    rows4 = []
    for run in results:
        for method in ("msp", "maxlogit", "entropy", "sml", "vde", "oodmc", "pebal"):
            if not any(method in r for r in results[run]):
                continue
            rows4.append([run, method, _fmt(_col(results, run, method, "auroc")),
                          _fmt(_col(results, run, method, "ap")), _fmt(_col(results, run, method, "fpr95")),
                          _fmt(_col(results, run, method, "component_siou")),
                          _fmt(_col(results, run, method, "component_ppv")),
                          _fmt(_col(results, run, method, "component_mean_f1"))])
    t4 = _table(["model", "score", "AUROC", "AP", "FPR95", "sIoU", "PPV", "mean F1"], rows4)
    return t2, t3, t4


def write_results(report: Path, cfg: DemoConfig, results: dict[str, list[dict]], miou: dict,
                  runs: Path, meta: dict[str, list[dict]] | None = None) -> dict[str, Any]:
    """Write results.md (tables in the shape of the seed's Tables 1-3, the objectives table), results.json and a
    heat-map sheet. ``meta``: the meta.json of each meta-classified model (:data:`META_RUNS`) per seed."""
    report.mkdir(parents=True, exist_ok=True)
    meta = meta or {}
    n = cfg.seeds
    note = f"(mean ± std over {n} seeds)" if n > 1 else "(one seed; `--seeds 3` gives mean ± std)"
    t1 = _table1(results, meta)
    t2, t3, t4 = _tables(results)
    t_obj = _objectives_table(results)
    timings = "\n".join(f"| {k} | {v:.1f} |" for k, v in cfg.timings.items())
    sheet = _heatmap_sheet(report / "heatmaps.png", runs, cfg)
    miou_line = (f"Baseline segmentation on the demo val split ({miou.get('n_frames')} frames): "
                 f"**mIoU {100 * miou['miou']:.1f}**, pixel accuracy {100 * miou['pixel_acc']:.1f}.")
    md = f"""# cocodag demo results

World: {cfg.frames} train / {cfg.val_frames} val frames at {cfg.frame_size}, {cfg.anomaly_frames} anomaly frames
(held-out shapes/textures), crops {cfg.crop}; model `{cfg.model}`; fine-tuning {cfg.steps} steps, lr {cfg.lr},
λ = {cfg.lam}, DAG every {cfg.embedding_img_interval}-th batch; MC dropout T = {cfg.mc_samples}, K = {cfg.moment_order}.
All numbers in % {note}; pixel-level metrics on the anomaly set (0 = ID, 1 = anomaly, 255 void).

{miou_line}

## Table 1 shape: entropy target without / with DAG (entropy score, F1-optimal threshold)
Then meta-ood's second step, meta classification (`oodscore meta-classify`, leave-one-out): segments = normalized
entropy >= {cfg.meta_threshold}; FP / FN = false-positive predicted / missed ground-truth segments before and after
the classifier removes segments. "FP after (meta-ood)" is meta-ood's own count, which is the number of true positives
removed (`tp_removed`), not the false positives left (`FP left`); n/a where the classifier could not be fitted (see
`runs/<model>/meta/meta.json`).
{t1}

## Table 2 shape: {{logit, entropy}} x {{without, with}} DAG (each target scored by what it optimizes)
{t2}

## Table 3 shape: SML vs VDE, and OODMC vs entropy
{t3}

## Training objectives: {{maxent, pebal, balanced-energy}} x {{without, with}} DAG (each scored by its own score)
Same baseline, steps, batch size and seeds; maxent = the entropy target (lr {cfg.lr}, every parameter); pebal and
balanced-energy: the abstention channel grown from the baseline, only the classifier block trained, Adam lr
{cfg.objective_lr} kept for the whole run.
{t_obj}

## Every model and score, with component-level metrics (SegmentMeIfYouCan anomaly track)
{t4}

## Leaderboard
Every model and score side by side, best per column marked (`oodscore compare`): `leaderboard.md`, `leaderboard.csv`,
`leaderboard.tex`.

## Plots
ROC / PR curves per model: `runs/<model>/report/roc.png`, `pr.png`; score heat maps: `{sheet.name if sheet else 'n/a'}`.

## Stage times (s)
| stage | seconds |
|---|---|
{timings}
| **total** | **{sum(cfg.timings.values()):.1f}** |
"""
    atomic_write_text(report / "results.md", md)
    summary = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
               "miou": miou, "results": results, "meta": meta}
    atomic_write_text(report / "results.json", json.dumps(summary, indent=2, default=str))
    print(md)
    return summary


def _heatmap_sheet(path: Path, runs: Path, cfg: DemoConfig) -> Path | None:
    """Tile the evaluate overlays (a few frames x a few model/score pairs) into one PNG."""
    import cv2  # here, not at the top: the console scripts import this module at start-up

    picks = [("baseline", "entropy"), ("baseline", "sml"), ("baseline", "vde"), ("entropy_noDAG-s0", "entropy"),
             ("entropy_DAG-s0", "entropy"), ("entropy_DAG-s0", "oodmc"), ("pebal_DAG-s0", "pebal"),
             ("balanced-energy_DAG-s0", "pebal")]
    rows: list[np.ndarray] = []
    for run, method in picks:
        files = sorted((runs / run / "report" / "overlays").glob(f"*__{method}.png"))
        read = [cv2.imread(str(f)) for f in files[: cfg.overlays]]
        imgs = [cv2.resize(i, (720, int(i.shape[0] * 720 / i.shape[1]))) for i in read if i is not None]
        if imgs:
            tag = np.full((imgs[0].shape[0], 180, 3), 255, np.uint8)
            for j, text in enumerate((run.replace("-s0", ""), method)):
                cv2.putText(tag, text, (6, 30 + 26 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
            imgs = [tag] + imgs
            h = max(i.shape[0] for i in imgs)
            imgs = [cv2.copyMakeBorder(i, 0, h - i.shape[0], 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255))
                    for i in imgs]
            rows.append(np.concatenate(imgs, 1))
    if not rows:
        return None
    w = max(r.shape[1] for r in rows)
    rows = [cv2.copyMakeBorder(r, 0, 0, 0, w - r.shape[1], cv2.BORDER_CONSTANT, value=(255, 255, 255)) for r in rows]
    with atomic_write(path, keep_suffix=True) as tmp:
        if not cv2.imwrite(str(tmp), np.concatenate(rows, 0)):
            raise CocodagError(f"{path}: cannot write the heat-map sheet")
    return path
