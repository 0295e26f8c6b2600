"""MaxEnt fine-tuning loop with atomic, exactly-resumable checkpoints (DESIGN §4.2).

``fit(FitConfig(...))`` writes into ``out``:

* ``config.json`` – every option, seed, library versions, the data manifest hash and the git commit (if any). Passing
  it back as ``--config`` reproduces the run.
* ``log.jsonl`` – one line per step: step, epoch, batch, loss, id_ce, ood_entropy, n_id, n_ood, lr, samples_per_s, dag.
* ``checkpoint-last.pt`` – model, optimizer, AMP scaler, RNG states, data position ``(epoch, batch)`` and step,
  written atomically (:func:`cocodag.atomic.atomic_write`) every ``checkpoint_every`` steps and at the end of each
  epoch.
* ``model-final.pt`` – ``{"state_dict": ..., "metadata": {"model", "num_classes", ...}}`` (what ``export`` reads).

Determinism: the batch order, flips and dropout masks are functions of ``(seed, epoch, batch, rank)`` (dropout: the
torch RNG is reseeded from them before every step), so ``resume`` from a checkpoint continues with the same batches
and, on CPU, bit-identical losses. Everything is loaded with ``torch.load(weights_only=True)``: RNG states are stored
as tensors and lists.

meta-ood re-creates its Adam optimizer at every epoch; ``recreate_optimizer_each_epoch=True`` (the default) does the
same, ``False`` keeps Adam's moments across epochs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import numpy as np
import torch

from cocodag.atomic import atomic_write, atomic_write_text
from cocodag.device import resolve_device
from cocodag.labels import NUM_CLASSES
from cocodag.versions import library_versions

from . import MaxentError, __version__
from .data import DeviceAugment, MixPlan, ShardLoader, derive_seed, open_training_data

CHECKPOINT_LAST = "checkpoint-last.pt"
MODEL_FINAL = "model-final.pt"
CONFIG_NAME = "config.json"
LOG_NAME = "log.jsonl"
CONFIG_FORMAT = "maxent-train-run"


@dataclass
class FitConfig:
    """All options of ``maxent-train fit`` (names = CLI option names with ``_``)."""

    data: str = ""
    model: str = ""
    out: str = ""
    init: str | None = None
    num_classes: int = NUM_CLASSES
    epochs: int = 4
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-5
    lam: float = 0.9
    optim_target: str = "entropy"
    embedding_img_interval: int = 0
    coco_fraction: float = 0.1
    block_size: int = 1
    flip_p: float = 0.5
    device: str = "auto"
    amp: bool = False
    workers: int = 0
    seed: int = 0
    checkpoint_every: int = 500
    recreate_optimizer_each_epoch: bool = True
    verify_checksums: bool = True
    progress: bool = True

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def validate(self) -> None:
        if not self.data:
            raise MaxentError("--data is required (a cocodag dataset directory)")
        if not self.model:
            raise MaxentError("--model is required (see `maxent-train models`)")
        if not self.out:
            raise MaxentError("--out is required (the run directory)")
        if self.optim_target not in ("entropy", "logit"):
            raise MaxentError(f"--optim-target: expected entropy or logit, got {self.optim_target!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise MaxentError(f"--device: expected auto, cpu or cuda, got {self.device!r}")
        for name in ("epochs", "batch_size", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise MaxentError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise MaxentError(f"--max-steps must be > 0, got {self.max_steps}")
        if not self.lr > 0:
            raise MaxentError(f"--lr must be > 0, got {self.lr}")
        if not 0.0 <= self.lam <= 1.0:
            raise MaxentError(f"--lambda must be in [0, 1], got {self.lam}")


# Options that do not change the result: a resumed/reproduced run may differ in them.
_NON_RESULT_OPTIONS = {"out", "workers", "progress", "checkpoint_every", "verify_checksums", "max_steps"}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read ``run.toml`` or an earlier run's ``config.json`` into a dict of FitConfig fields.

    Unknown keys are refused (a typo would otherwise silently fall back to a default).
    """
    path = Path(path)
    if not path.is_file():
        raise MaxentError(f"--config {path}: file does not exist")
    try:
        if path.suffix == ".toml":
            import tomllib

            raw = tomllib.loads(path.read_text())
        else:
            raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise MaxentError(f"--config {path}: cannot parse ({str(e).splitlines()[0]})") from None
    if isinstance(raw, dict) and raw.get("format") == CONFIG_FORMAT:
        raw = raw["options"]
    elif isinstance(raw, dict) and isinstance(raw.get("fit"), dict):   # run.toml with a [fit] table
        raw = raw["fit"]
    if not isinstance(raw, dict):
        raise MaxentError(f"--config {path}: expected a table/object of options, got {type(raw).__name__}")
    opts = {k.replace("-", "_"): v for k, v in raw.items()}
    if "lambda" in opts:
        opts["lam"] = opts.pop("lambda")
    unknown = sorted(set(opts) - set(FitConfig.field_names()))
    if unknown:
        raise MaxentError(f"--config {path}: unknown option(s) {unknown}; known: {FitConfig.field_names()}")
    return opts


def git_commit() -> str | None:
    """The source tree's git commit (with ``+dirty`` when modified), or None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def rng_state() -> dict[str, Any]:
    """RNG states in forms ``torch.load(weights_only=True)`` accepts (tensors, lists, ints, strings)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` (a last line cut by a kill is dropped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:    # a line cut by kill -9: drop it
                break
    return out


# --------------------------------------------------------------------------------------------------------- processes
@dataclass(frozen=True)
class DistContext:
    """Where this process trains: its rank among ``world_size`` processes (torchrun) and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files."""
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` wrapped in DDP when distributed (gradients all-reduced), else ``model`` itself."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


def setup_distributed(device: str) -> DistContext:
    """Read torchrun's environment (one process without it), resolve ``device`` and join the process group.

    Under torchrun (``WORLD_SIZE > 1``) CUDA processes take ``cuda:LOCAL_RANK`` and use nccl, CPU ones gloo.
    """
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device)
    if world > 1:
        import torch.distributed as dist

        if dev.type == "cuda":
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


# --------------------------------------------------------------------------------------------------------- run dir
class RunDir:
    """A run directory (``--out``): ``config.json``, ``log.jsonl``, ``checkpoint-last.pt``, ``model-final.pt``.

    Owns the rules for starting a run in it (refused when it already holds one) and for resuming one (refused when a
    result-changing option or the data differ from what the run started with).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / CONFIG_NAME
        self.log = self.path / LOG_NAME
        self.checkpoint = self.path / CHECKPOINT_LAST
        self.final = self.path / MODEL_FINAL

    def check_fresh(self) -> None:
        """Raise if the directory already holds a run."""
        if self.checkpoint.is_file():
            raise MaxentError(f"{self.path}: already holds a run ({CHECKPOINT_LAST}); use --resume to continue it "
                              f"or choose a new --out")

    def check_resume(self, options: dict[str, Any], manifest_hash: str, data: str) -> dict[str, Any]:
        """Check that the run can be resumed with ``options`` on this data; return its training checkpoint."""
        if not self.checkpoint.is_file():
            raise MaxentError(f"--resume: {self.checkpoint} does not exist (nothing to resume; drop --resume)")
        old = json.loads(self.config.read_text()) if self.config.is_file() else None
        if old is not None:
            diff = {k for k, v in old.get("options", {}).items()
                    if k not in _NON_RESULT_OPTIONS and options.get(k) != v}
            if diff:
                raise MaxentError(f"--resume: options {sorted(diff)} differ from {self.config}; resume with "
                                  f"the same options (or --config {self.config})")
            if old.get("data_manifest_hash") != manifest_hash:
                raise MaxentError(f"--resume: data manifest of {data} differs from the one the run started with")
        return _load_training_checkpoint(self.checkpoint)

    def start(self, record: dict[str, Any], step: int, resume: bool) -> None:
        """Write ``config.json`` and cut ``log.jsonl`` back to ``step`` (a fresh run starts an empty log)."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config, json.dumps({**record, "resumed_from_step": step if resume else None},
                                                  indent=2, sort_keys=True, default=str))
        # Drop log lines written after the checkpoint (the killed run's tail): the resumed run rewrites them.
        log = [r for r in read_log(self.log) if r.get("step", 0) <= step] if resume else []
        atomic_write_text(self.log, "".join(json.dumps(r) + "\n" for r in log))

    @contextmanager
    def log_writer(self, enabled: bool) -> Iterator[TextIO | None]:
        """``log.jsonl`` opened for appending (None when ``enabled`` is false: ranks other than 0)."""
        if not enabled:
            yield None
            return
        with open(self.log, "a") as f:
            yield f

    @staticmethod
    def save(obj: Any, path: Path) -> None:
        """``torch.save`` atomically: a kill leaves the old file or the new one."""
        with atomic_write(path) as tmp:
            torch.save(obj, tmp)


# --------------------------------------------------------------------------------------------------------- training
def _build_model(cfg: FitConfig) -> torch.nn.Module:
    from .models import create_model, load_checkpoint

    model = create_model(cfg.model, num_classes=cfg.num_classes)
    if cfg.init:
        load_checkpoint(model, cfg.init, strict=True)
    return model


def _make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=lr)


@dataclass
class _Training:
    """What a checkpoint holds: model, optimizer, AMP scaler and the data position ``(epoch, batch)`` + step."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    use_amp: bool
    step: int = 0
    epoch: int = 0
    batch: int = 0

    @classmethod
    def create(cls, cfg: FitConfig, device: torch.device, use_amp: bool) -> _Training:
        torch.manual_seed(derive_seed(cfg.seed, "init"))   # same seed -> same initial weights (heads without --init)
        model = _build_model(cfg).to(device)
        return cls(model, _make_optimizer(model, cfg.lr), torch.amp.GradScaler("cuda", enabled=use_amp), use_amp)

    def restore(self, ck: dict[str, Any]) -> None:
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck["rng"])
        self.step, self.epoch, self.batch = int(ck["step"]), int(ck["data"]["epoch"]), int(ck["data"]["batch"])

    def checkpoint(self, metadata: dict[str, Any]) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.use_amp else {}, "rng": rng_state(),
                "data": {"epoch": self.epoch, "batch": self.batch}, "step": self.step, "metadata": metadata}


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               x: torch.Tensor, y: torch.Tensor, *, lam: float, optim_target: str, use_amp: bool,
               where: str = "") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step of the MaxEnt loss on a batch (autocast + GradScaler when ``use_amp``).

    Parameters
    ----------
    x : (B, 3, S, S) float32 normalized images; y : (B, S, S) int64 labels
    where : the step's position, for the error message

    Returns
    -------
    loss, parts : see :func:`maxent_train.loss.maxent_loss`

    Raises
    ------
    MaxentError
        A non-finite loss (checked before the weights are touched).
    """
    from .loss import maxent_loss

    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=x.device.type, dtype=torch.float16, enabled=use_amp):
        logits = model(x)
    loss, parts = maxent_loss(logits.float(), y, lam=lam, optim_target=optim_target)
    if not torch.isfinite(loss):
        raise MaxentError(f"loss is {loss.item()} at {where}; lower --lr or disable --amp")
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, parts


def _log_record(tr: _Training, b: int, loss: torch.Tensor, parts: dict, is_dag: bool, samples: int,
                seconds: float) -> dict[str, Any]:
    return {"step": tr.step, "epoch": tr.epoch, "batch": b, "loss": float(loss.item()),
            "id_ce": _f(parts.get("id_ce")), "ood_entropy": _f(parts.get("ood_entropy")),
            "n_id": int(_f(parts.get("n_id"))), "n_ood": int(_f(parts.get("n_ood"))),
            "lr": tr.optimizer.param_groups[0]["lr"], "dag": is_dag,
            "samples_per_s": round(samples / max(seconds, 1e-9), 2)}


def _train_loop(tr: _Training, cfg: FitConfig, ctx: DistContext, loader: ShardLoader, train_model: torch.nn.Module,
                per_epoch: int, total_steps: int, save: Callable[[], None], emit: Callable[[dict], None]) -> float:
    """Train from ``tr``'s position to ``total_steps``; ``save`` writes a checkpoint, ``emit`` gets each log record.

    Returns the last loss (NaN when no step ran).
    """
    augment = DeviceAugment(seed=cfg.seed, flip_p=cfg.flip_p)
    last_loss = math.nan
    tr.model.train()
    while tr.step < total_steps and tr.epoch < cfg.epochs:
        if cfg.recreate_optimizer_each_epoch and tr.batch == 0 and tr.epoch > 0:
            tr.optimizer = _make_optimizer(tr.model, cfg.lr)   # meta-ood: a fresh Adam every epoch
        t_last = time.perf_counter()
        for b, images, labels, is_dag in loader.epoch_batches(tr.epoch, tr.batch):
            if tr.step >= total_steps:
                break
            # Dropout masks depend only on the position, not on the RNG history (resume-exact).
            torch.manual_seed(derive_seed(cfg.seed, "step", tr.epoch, b, ctx.rank))
            x, y = augment(images, labels, epoch=tr.epoch, batch=b, rank=ctx.rank)
            loss, parts = train_step(train_model, tr.optimizer, tr.scaler, x, y, lam=cfg.lam,
                                     optim_target=cfg.optim_target, use_amp=tr.use_amp,
                                     where=f"step {tr.step} (epoch {tr.epoch}, batch {b})")
            tr.step += 1
            tr.batch = b + 1
            now = time.perf_counter()
            rec = _log_record(tr, b, loss, parts, is_dag, cfg.batch_size * ctx.world_size, now - t_last)
            t_last = now
            last_loss = rec["loss"]
            emit(rec)
            if tr.step % cfg.checkpoint_every == 0 and tr.batch < per_epoch:
                save()
        if tr.batch >= per_epoch:
            tr.epoch, tr.batch = tr.epoch + 1, 0
            save()                  # end of epoch
        elif tr.step >= total_steps:
            save()                  # --max-steps reached mid-epoch
    return last_loss


# --------------------------------------------------------------------------------------------------------- fit
def fit(cfg: FitConfig, *, resume: bool = False, on_step: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run (or resume) MaxEnt fine-tuning; returns a summary dict (steps, final loss, paths).

    Under ``torchrun`` (``WORLD_SIZE > 1``) it joins the process group (gloo on CPU, nccl on CUDA), wraps the model
    in DDP and splits each global batch across ranks; only rank 0 writes files.

    Raises
    ------
    MaxentError / CocodagError
        Bad options, data dir, checkpoint; resuming a run whose config differs in a result-changing option.
    """
    cfg.validate()
    ctx = setup_distributed(cfg.device)
    use_amp = bool(cfg.amp) and ctx.device.type == "cuda"   # AMP is CUDA only; ignored on CPU
    run = RunDir(cfg.out)
    dataset = open_training_data(cfg.data, verify_checksums=cfg.verify_checksums)
    counts = {k: dataset.num_samples(k) for k in ("cityscapes", "coco", "dag")}
    plan = MixPlan(counts=counts, batch_size=cfg.batch_size, seed=cfg.seed,
                   embedding_img_interval=cfg.embedding_img_interval, coco_fraction=cfg.coco_fraction,
                   world_size=ctx.world_size, rank=ctx.rank, block_size=cfg.block_size)
    per_epoch = plan.batches_per_epoch
    total_steps = per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    record = {"format": CONFIG_FORMAT, "version": 1, "options": dataclasses.asdict(cfg), "seed": cfg.seed,
              "versions": {"maxent_train": __version__, **library_versions()},
              "data_manifest_hash": dataset.manifest_hash, "data_totals": counts, "git_commit": git_commit(),
              "world_size": ctx.world_size, "steps_per_epoch": per_epoch, "total_steps": total_steps,
              "amp_active": use_amp,
              "loss_reduction": "mean over all pixels (and classes for entropy target); see maxent_train.loss"}

    tr = _Training.create(cfg, ctx.device, use_amp)
    if resume:
        tr.restore(run.check_resume(record["options"], dataset.manifest_hash, cfg.data))
    else:
        run.check_fresh()
    if ctx.is_main:
        run.start(record, tr.step, resume)
    train_model = ctx.wrap(tr.model)
    loader = ShardLoader(dataset, plan, device=ctx.device, workers=cfg.workers)
    metadata = {"model": cfg.model, "num_classes": cfg.num_classes, "model_kwargs": {}, "seed": cfg.seed,
                "lam": cfg.lam, "optim_target": cfg.optim_target, "embedding_img_interval": cfg.embedding_img_interval,
                "data_manifest_hash": dataset.manifest_hash, "maxent_train": __version__}

    def save() -> None:
        if ctx.is_main:
            run.save(tr.checkpoint(metadata), run.checkpoint)

    with _progress(ctx.is_main and cfg.progress, total_steps, tr.step) as pbar, run.log_writer(ctx.is_main) as log_f:
        def emit(rec: dict) -> None:
            if log_f is not None:
                log_f.write(json.dumps(rec) + "\n")
                log_f.flush()
            if on_step is not None:
                on_step(rec)
            if pbar is not None:
                pbar.update(1)
                pbar.set_postfix(loss=f"{rec['loss']:.4f}", sps=f"{rec['samples_per_s']:.1f}")

        last_loss = _train_loop(tr, cfg, ctx, loader, train_model, per_epoch, total_steps, save, emit)
    if ctx.is_main:
        run.save({"state_dict": tr.model.state_dict(), "metadata": {**metadata, "steps": tr.step}}, run.final)
    ctx.barrier()
    return {"steps": tr.step, "epochs_done": tr.epoch, "is_main": ctx.is_main, "last_loss": last_loss,
            "out": str(run.path), "checkpoint": str(run.checkpoint), "final": str(run.final)}


@contextmanager
def _progress(enabled: bool, total: int, initial: int):
    """A tqdm bar over the steps (None when disabled), closed on exit."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc="fit", unit="step", dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def _f(v) -> float:
    if v is None:
        return math.nan
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def _load_training_checkpoint(path: Path) -> dict[str, Any]:
    import pickle
    import zipfile

    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise MaxentError(f"{path}: cannot read checkpoint ({str(e).strip().splitlines()[0][:200]})") from None
    for key in ("model", "optimizer", "rng", "data", "step"):
        if key not in ck:
            raise MaxentError(f"{path}: not a maxent-train training checkpoint (missing {key!r})")
    return ck
