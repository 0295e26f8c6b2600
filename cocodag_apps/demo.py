"""`cocodag demo`: the whole method end to end on the embedded demo world, in one command.

demo-data -> build -> baseline segmentation model -> MaxEnt fine-tunes {entropy, logit} x {no DAG, DAG} x seeds,
and the other training objectives {pebal, balanced-energy} x {no DAG, DAG} x seeds -> export (logits, MC-dropout
moments) -> SML stats / OODMC fit -> evaluate every score -> meta classification of the entropy models' segments
(``oodscore meta-classify``) -> ``REPORT/results.md``.

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

A top-layer app (:mod:`cocodag_apps`; the ``demo`` command is registered by :mod:`cocodag_apps.cli`). Each stage
runs the packages' command lines in subprocesses (``python -m cocodag.cli``, ``python -m maxent_train``,
``python -m oodscore.cli``), exactly as a user would type them (they are printed), so a stage's failure, memory and
threads stay in its own process. Every stage skips itself when its output exists, so an interrupted demo resumes.
"""
from __future__ import annotations

import functools
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from cocodag.atomic import atomic_write, atomic_write_text
from cocodag.device import resolve_device
from cocodag.errors import CocodagError

from .stage_runner import module_cmd, run_logged

# The shipped baseline is package data (pyproject's [tool.setuptools.package-data]): read through importlib.resources,
# it is found in a wheel install as in a source checkout. `data/make_baseline.py` (in the repository) remakes it.
SHIPPED_DATA = resources.files("cocodag_apps") / "data"
SHIPPED_BASELINE = SHIPPED_DATA / "demo_baseline.pt"
SHIPPED_BASELINE_INFO = SHIPPED_DATA / "demo_baseline.json"
#: what a trained baseline leaves beside its model-final.pt (maxent_train.train.RunDir); a copied one leaves none
_TRAINING_FILES = ("log.jsonl", "checkpoint-last.pt", "config.json")


@dataclass
class DemoConfig:
    """Every knob of the demo; the defaults fit a 2-core CPU in well under 15 minutes."""

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
#: the runs that get SML statistics (the scores sml and vde): those of the SML / VDE table
SML_RUNS = ("baseline", "entropy_DAG")


# ------------------------------------------------------------------------------------------------------ running
_cmd = module_cmd


def _run(cmd: list[str], log: Path, quiet: bool = True) -> None:
    """Run one stage command, its output appended to ``log`` (``quiet=False``: stderr shown too); a failure is one
    line (:func:`cocodag_apps.stage_runner.run_logged`)."""
    run_logged(cmd, log, quiet=quiet, who="demo")


def _copy_atomic(src: Path | str, dst: Path) -> None:
    """Copy ``src`` to ``dst`` so that ``dst`` (a stage's done-marker) exists only once complete."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(dst) as tmp:
        shutil.copyfile(src, tmp)


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


def _read_json(path: Path) -> dict[str, Any]:
    """``path``'s JSON object, or {} when there is none (a stage that failed before writing it)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _resume(run_dir: Path) -> list[str]:
    """``--resume`` when an interrupted ``fit`` left its checkpoint in ``run_dir`` (a fresh fit there is refused)."""
    return ["--resume"] if (run_dir / "checkpoint-last.pt").is_file() else []


class _Demo:
    """The demo's stages on one output folder; each stage skips itself when its output (done-marker) exists."""

    OODMC_MODEL = "entropy_DAG"      # the fine-tune that also gets MC-dropout moments and an OODMC classifier

    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        out = Path(cfg.out)
        self.logs, self.world, self.shards = out / "logs", out / "world", out / "shards"
        self.runs, self.report = out / "runs", out / "report"
        self.base_dir = self.runs / "baseline"
        self.base_ckpt = self.base_dir / "model-final.pt"
        self.dev = ["--device", cfg.device]
        self.prog = [] if cfg.progress else ["--no-progress"]
        self.t0 = time.perf_counter()

    def stage(self, name: str, done: Path, fn: Callable[[], None]) -> None:
        if done.exists():
            print(f"[{name}] already done ({done}), skipped", file=sys.stderr)
            return
        print(f"[{name}]", file=sys.stderr, flush=True)
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        self.cfg.timings[name] = self.cfg.timings.get(name, 0.0) + dt
        print(f"[{name}] {dt:.1f} s (total {time.perf_counter() - self.t0:.0f} s)", file=sys.stderr, flush=True)

    def make_data(self) -> None:
        """demo-data (the synthetic world) and build (its shards)."""
        cfg, world, shards = self.cfg, self.world, self.shards
        self.stage("demo-data", world / "anomaly" / "meta.json", lambda: _run(_cmd(
            "cocodag.cli", "demo-data", world, "--frames", cfg.frames, "--val-frames", cfg.val_frames,
            "--anomaly-frames", cfg.anomaly_frames, "--coco-images", cfg.coco_images, "--frame-size", cfg.frame_size,
            "--coco-image-size", cfg.coco_image_size, "--seed", cfg.seed, "--workers", cfg.workers),
            self.logs / "world.log"))
        self.stage("build", shards / "manifest.json", lambda: _run(_cmd(
            "cocodag.cli", "build", "--cityscapes", world / "cityscapes", "--coco", world / "coco", "--out", shards,
            "--crop", cfg.crop, "--object-scale", cfg.object_scale, "--min-object-area", 200,
            "--cityscapes-crops-per-frame", cfg.crops_per_frame, "--dag-samples", cfg.dag_samples,
            "--workers", cfg.workers, "--seed", cfg.seed, "--no-progress"), self.logs / "build.log"))

    def place_baseline(self) -> str:
        """Put a shipped or given baseline at ``runs/baseline/model-final.pt`` (unless one is there); returns
        :func:`baseline_source` (``"train"``: the baseline stage trains it)."""
        source = baseline_source(self.cfg)
        if source == "train":
            return source
        if self.base_ckpt.exists():
            print(f"[baseline] already done ({self.base_ckpt}), skipped", file=sys.stderr)
            return source
        for name in _TRAINING_FILES:       # an interrupted training's files: they do not describe a copied model
            (self.base_dir / name).unlink(missing_ok=True)
        if source == "shipped":
            with resources.as_file(SHIPPED_BASELINE) as src:
                _copy_atomic(src, self.base_ckpt)
            print(f"[baseline] using the shipped checkpoint {SHIPPED_BASELINE} (trained by data/make_baseline.py)",
                  file=sys.stderr)
        else:
            _copy_atomic(source, self.base_ckpt)
        return source

    def baseline(self) -> dict[str, Any]:
        """A segmentation model of the world's in-distribution classes (no OOD training) and its val mIoU."""
        cfg, base_dir, base_ckpt = self.cfg, self.base_dir, self.base_ckpt
        if self.place_baseline() == "train":       # else the shipped or given checkpoint is in place
            self.stage("baseline", base_ckpt, lambda: _run(_cmd(
                "maxent_train", "fit", "--data", self.shards, "--model", cfg.model, "--out", base_dir,
                "--lambda", 0.0, "--coco-fraction", 0.0, "--embedding-img-interval", 0, "--lr", cfg.baseline_lr,
                "--max-steps", cfg.baseline_steps, "--epochs", 10000, "--batch-size", cfg.batch_size,
                "--seed", cfg.seed, "--keep-optimizer", *self.dev, *self.prog, *_resume(base_dir)),
                self.logs / "baseline.log", quiet=False))
        self.stage("baseline-miou", base_dir / "miou.json", lambda: _run(_cmd(
            "maxent_train", "miou", "--checkpoint", base_ckpt, "--cityscapes", self.world / "cityscapes",
            "--split", "val", "--out", base_dir / "miou.json", *self.dev), self.logs / "miou.log"))
        return json.loads((base_dir / "miou.json").read_text())

    def finetune(self) -> dict[str, list[Path]]:
        """The fine-tunes of the baseline x seeds: MaxEnt for every (optim target, DAG or not) of :data:`RUNS`, then
        every (objective, DAG or not) of :data:`OBJECTIVE_RUNS`."""
        models: dict[str, list[Path]] = {}
        runs = [(name, ["--objective", "maxent", "--optim-target", target, "--lambda", self.cfg.lam,
                        "--lr", self.cfg.lr], dag) for name, target, dag in RUNS]
        # the objective's own recipe: its default --train-only (the classifier block), the abstention channel grown
        # by fit, one Adam for the whole run as PEBAL's code keeps it (see the module docstring for the lr)
        runs += [(name, ["--objective", objective, "--lr", self.cfg.objective_lr, "--keep-optimizer"], dag)
                 for name, objective, dag in OBJECTIVE_RUNS]
        for name, args, dag in runs:
            models[name] = []
            for s in range(self.cfg.seeds):
                rdir = self.runs / f"{name}-s{s}"
                self.stage(f"fit {name} seed {s}", rdir / "model-final.pt",
                           functools.partial(self._fit, name, rdir, args, dag, s))
                models[name].append(rdir / "model-final.pt")
        return models

    def _fit(self, name: str, rdir: Path, args: list[Any], dag: bool, s: int) -> None:
        cfg = self.cfg
        _run(_cmd("maxent_train", "fit", "--data", self.shards, "--init", self.base_ckpt, "--model", cfg.model,
                  "--out", rdir, *args, "--embedding-img-interval", cfg.embedding_img_interval if dag else 0,
                  "--max-steps", cfg.steps, "--epochs", 10000, "--batch-size", cfg.batch_size,
                  "--seed", 1000 + s, *self.dev, *self.prog, *_resume(rdir)), self.logs / f"fit-{name}-s{s}.log",
             quiet=False)

    def score(self, name: str, ckpt: Path) -> dict[str, Any]:
        """Export the anomaly set's logits, fit SML (and OODMC) where used, evaluate the model's scores; return
        metrics.json. A model of another objective (:data:`OBJECTIVE_RUNS`) is scored by its own score only."""
        cfg, rdir, log = self.cfg, ckpt.parent, self.logs / f"export-{ckpt.parent.name}.log"
        mc = name in ("baseline", self.OODMC_MODEL)
        mc_args = ["--mc-samples", cfg.mc_samples, "--moment-order", cfg.moment_order, "--mc-dtype", "float32"]
        self.stage(f"export {rdir.name}", rdir / "test.h5", lambda: _run(_cmd(
            "maxent_train", "export", "--checkpoint", ckpt, "--images", self.world / "anomaly", "--preset", "standard",
            "--out", rdir / "test.h5", "--store-images", *(mc_args if mc else []), "--seed", cfg.seed, *self.dev,
            "--no-progress"), log))
        objective = dict((n, o) for n, o, _ in OBJECTIVE_RUNS).get(name)
        methods = [OWN_SCORE[objective]] if objective else ["msp", "maxlogit", "entropy"]
        extra: list[Any] = []
        if name == "baseline":          # the reference for the objectives table
            methods.append(OWN_SCORE["pebal"])
        if name in SML_RUNS:
            self.stage(f"sml-stats {rdir.name}", rdir / "sml.json", lambda: _run(_cmd(
                "maxent_train", "export", "--checkpoint", ckpt, "--data", self.shards, "--kinds", "cityscapes",
                "--limit", cfg.sml_train_crops, "--out", rdir / "train-id.h5", "--sml-stats", rdir / "sml.json",
                *self.dev, "--no-progress"), self.logs / f"sml-{rdir.name}.log"))
            methods += ["sml", "vde"]
            extra += ["--sml-stats", rdir / "sml.json"]
            if cfg.vde_threshold is not None:
                extra += ["--vde-threshold", cfg.vde_threshold]
        if mc:
            self.stage(f"oodmc-fit {rdir.name}", rdir / "oodmc.npz", lambda: self._fit_oodmc(ckpt, mc_args))
            methods.append("oodmc")
            extra += ["--oodmc-model", rdir / "oodmc.npz"]
        meth = [a for m in methods for a in ("--method", m)]
        self.stage(f"evaluate {rdir.name}", rdir / "report" / "metrics.json", lambda: _run(_cmd(
            "oodscore.cli", "evaluate", "--logits", rdir / "test.h5", *meth, *extra, "--components", "anomaly",
            "--max-overlays", cfg.overlays, "--out", rdir / "report", "--no-progress"),
            self.logs / f"evaluate-{rdir.name}.log"))
        for big in ("train-id.h5", "train-dag-mc.h5"):   # large intermediates: only their products are kept
            (rdir / big).unlink(missing_ok=True)
        return json.loads((rdir / "report" / "metrics.json").read_text())

    def meta_classify(self, ckpt: Path) -> dict[str, Any]:
        """meta-ood's meta classification of the model's entropy segments on the anomaly set (leave-one-out, as
        meta-ood); returns meta.json. A set whose classifier cannot be fitted (too few segments, or all of one
        kind) is no failure of the demo: the command writes its counts (the meta numbers null) and its reason."""
        rdir = ckpt.parent
        meta_dir, log = rdir / "meta", self.logs / f"meta-{rdir.name}.log"

        def run() -> None:
            try:
                _run(_cmd("oodscore.cli", "meta-classify", "--logits", rdir / "test.h5", "--out", meta_dir,
                          "--entropy-threshold", self.cfg.meta_threshold, "--cv", "loo",
                          "--max-overlays", self.cfg.overlays, "--no-progress"), log)
            except CocodagError:
                if "error" not in _read_json(meta_dir / "meta.json"):
                    raise
                print(f"  the meta classifier was not fitted: {_read_json(meta_dir / 'meta.json')['error']}",
                      file=sys.stderr)

        self.stage(f"meta-classify {rdir.name}", meta_dir / "meta.json", run)
        return json.loads((meta_dir / "meta.json").read_text())

    def _fit_oodmc(self, ckpt: Path, mc_args: list[Any]) -> None:
        cfg, rdir = self.cfg, ckpt.parent
        log = self.logs / f"oodmc-{rdir.name}.log"
        _run(_cmd("maxent_train", "export", "--checkpoint", ckpt, "--data", self.shards, "--kinds", "dag",
                  "--limit", cfg.oodmc_train_crops, "--out", rdir / "train-dag-mc.h5", *mc_args,
                  "--seed", cfg.seed, *self.dev, "--no-progress"), log)
        _run(_cmd("oodscore.cli", "fit-oodmc", "--logits", rdir / "train-dag-mc.h5",
                  "--out", rdir / "oodmc.npz", "--seed", cfg.seed), log)


def run_demo(cfg: DemoConfig, until: str | None = None) -> dict[str, Any]:
    """Run every stage (skipping finished ones) and write ``OUT/report/results.md``; return the summary dict.

    ``until="baseline"`` stops after the baseline model and its mIoU (used by ``data/make_baseline.py``).
    """
    if cfg.baseline not in ("auto", "train") and not Path(cfg.baseline).is_file():
        raise CocodagError(f"--baseline {cfg.baseline}: not 'auto', 'train' or an existing checkpoint file")
    resolve_device(cfg.device)       # a bad --device is one line now, not a failed stage later
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    demo = _Demo(cfg)
    demo.make_data()
    miou = demo.baseline()
    if until == "baseline":
        return {"baseline": str(demo.base_ckpt), "miou": miou}
    models = {"baseline": [demo.base_ckpt], **demo.finetune()}
    results = {name: [demo.score(name, ckpt) for ckpt in ckpts] for name, ckpts in models.items()}
    meta = {name: [demo.meta_classify(ckpt) for ckpt in models[name]] for name in META_RUNS}
    rdirs = [ckpt.parent for ckpts in models.values() for ckpt in ckpts]
    demo.report.mkdir(parents=True, exist_ok=True)     # every run x score in one table (cheap: always rewritten)
    _run(_cmd("oodscore.cli", "compare", *(d / "report" for d in rdirs), "--names", ",".join(d.name for d in rdirs),
              "--out", demo.report), demo.logs / "compare.log")
    return write_results(demo.report, cfg, results, miou, demo.runs, meta)


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
