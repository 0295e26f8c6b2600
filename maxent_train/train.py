"""MaxEnt fine-tuning loop with atomic, exactly-resumable checkpoints (DESIGN §4.2).

``fit(FitConfig(...))`` writes into ``out``:

* ``config.json`` – every option, seed, library versions, the data manifest hash and the git commit (if any). Passing
  it back as ``--config`` reproduces the run.
* ``log.jsonl`` – one line per step: step, epoch, batch, loss, id_ce, ood_entropy, n_id, n_ood, lr, samples_per_s, dag.
* ``checkpoint-last.pt`` – model, optimizer, AMP scaler, RNG states, data position ``(epoch, batch)`` and step,
  written via ``.tmp`` + ``os.replace`` every ``checkpoint_every`` steps and at the end of each epoch.
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
import platform
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cocodag.atomic import atomic_write_text

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
    num_classes: int = 19
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


def library_versions() -> dict[str, str]:
    import h5py

    import cocodag

    return {"maxent_train": __version__, "cocodag": cocodag.__version__, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "h5py": h5py.__version__}


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


# --------------------------------------------------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MaxentError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return dev


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``<path>.tmp``, fsync, ``os.replace``: a kill leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)



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
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (1 process without it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _build_model(cfg: FitConfig) -> torch.nn.Module:
    from .models import create_model, load_checkpoint

    model = create_model(cfg.model, num_classes=cfg.num_classes)
    if cfg.init:
        load_checkpoint(model, cfg.init, strict=True)
    return model


def _make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=lr)


def read_log(path: Path) -> list[dict[str, Any]]:
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
    from .loss import maxent_loss

    cfg.validate()
    rank, world, local_rank = _dist_info()
    device = resolve_device(cfg.device)
    distributed = world > 1
    if distributed:
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    use_amp = bool(cfg.amp) and device.type == "cuda"   # AMP is CUDA only; ignored on CPU
    out = Path(cfg.out)
    is_main = rank == 0
    ckpt_path = out / CHECKPOINT_LAST

    dataset = open_training_data(cfg.data, verify_checksums=cfg.verify_checksums)
    counts = {k: dataset.num_samples(k) for k in ("cityscapes", "coco", "dag")}
    plan = MixPlan(counts=counts, batch_size=cfg.batch_size, seed=cfg.seed,
                   embedding_img_interval=cfg.embedding_img_interval, coco_fraction=cfg.coco_fraction,
                   world_size=world, rank=rank, block_size=cfg.block_size)
    per_epoch = plan.batches_per_epoch
    total_steps = per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    record = {"format": CONFIG_FORMAT, "version": 1, "options": dataclasses.asdict(cfg), "seed": cfg.seed,
              "versions": library_versions(), "data_manifest_hash": dataset.manifest_hash,
              "data_totals": counts, "git_commit": git_commit(), "world_size": world,
              "steps_per_epoch": per_epoch, "total_steps": total_steps, "amp_active": use_amp,
              "loss_reduction": "mean over all pixels (and classes for entropy target); see maxent_train.loss"}

    torch.manual_seed(derive_seed(cfg.seed, "init"))   # same seed -> same initial weights (heads without --init)
    model = _build_model(cfg).to(device)
    optimizer = _make_optimizer(model, cfg.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    step, epoch, batch = 0, 0, 0

    if resume:
        if not ckpt_path.is_file():
            raise MaxentError(f"--resume: {ckpt_path} does not exist (nothing to resume; drop --resume)")
        old = json.loads((out / CONFIG_NAME).read_text()) if (out / CONFIG_NAME).is_file() else None
        if old is not None:
            diff = {k for k, v in old.get("options", {}).items()
                    if k not in _NON_RESULT_OPTIONS and record["options"].get(k) != v}
            if diff:
                raise MaxentError(f"--resume: options {sorted(diff)} differ from {out / CONFIG_NAME}; resume with "
                                  f"the same options (or --config {out / CONFIG_NAME})")
            if old.get("data_manifest_hash") != dataset.manifest_hash:
                raise MaxentError(f"--resume: data manifest of {cfg.data} differs from the one the run started with")
        ck = _load_training_checkpoint(ckpt_path)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck["rng"])
        step, epoch, batch = int(ck["step"]), int(ck["data"]["epoch"]), int(ck["data"]["batch"])
    elif ckpt_path.is_file():
        raise MaxentError(f"{out}: already holds a run ({CHECKPOINT_LAST}); use --resume to continue it or "
                          f"choose a new --out")

    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        record["resumed_from_step"] = step if resume else None
        atomic_write_text(out / CONFIG_NAME, json.dumps(record, indent=2, sort_keys=True, default=str))
        # Drop log lines written after the checkpoint (the killed run's tail): the resumed run rewrites them.
        log = [r for r in read_log(out / LOG_NAME) if r.get("step", 0) <= step] if resume else []
        atomic_write_text(out / LOG_NAME, "".join(json.dumps(r) + "\n" for r in log))

    train_model: torch.nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    loader = ShardLoader(dataset, plan, device=device, workers=cfg.workers)
    augment = DeviceAugment(seed=cfg.seed, flip_p=cfg.flip_p)
    metadata = {"model": cfg.model, "num_classes": cfg.num_classes, "model_kwargs": {}, "seed": cfg.seed,
                "lam": cfg.lam, "optim_target": cfg.optim_target, "embedding_img_interval": cfg.embedding_img_interval,
                "data_manifest_hash": dataset.manifest_hash, "maxent_train": __version__}

    def save_checkpoint(next_epoch: int, next_batch: int) -> None:
        if not is_main:
            return
        atomic_torch_save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if use_amp else {}, "rng": rng_state(),
            "data": {"epoch": next_epoch, "batch": next_batch}, "step": step, "metadata": metadata,
        }, ckpt_path)

    pbar = None
    if is_main and cfg.progress:
        from tqdm import tqdm

        pbar = tqdm(total=total_steps, initial=step, desc="fit", unit="step", dynamic_ncols=True)
    log_f = open(out / LOG_NAME, "a") if is_main else None
    last_loss = math.nan
    try:
        model.train()
        while step < total_steps and epoch < cfg.epochs:
            if cfg.recreate_optimizer_each_epoch and batch == 0 and epoch > 0:
                optimizer = _make_optimizer(model, cfg.lr)   # meta-ood: a fresh Adam every epoch
            t_last = time.perf_counter()
            for b, images, labels, is_dag in loader.epoch_batches(epoch, batch):
                if step >= total_steps:
                    break
                # Dropout masks depend only on the position, not on the RNG history (resume-exact).
                torch.manual_seed(derive_seed(cfg.seed, "step", epoch, b, rank))
                x, y = augment(images, labels, epoch=epoch, batch=b, rank=rank)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    logits = train_model(x)
                loss, parts = maxent_loss(logits.float(), y, lam=cfg.lam, optim_target=cfg.optim_target)
                if not torch.isfinite(loss):
                    raise MaxentError(f"loss is {loss.item()} at step {step} (epoch {epoch}, batch {b}); "
                                      f"lower --lr or disable --amp")
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                batch = b + 1
                now = time.perf_counter()
                rec = {"step": step, "epoch": epoch, "batch": b, "loss": float(loss.item()),
                       "id_ce": _f(parts.get("id_ce")), "ood_entropy": _f(parts.get("ood_entropy")),
                       "n_id": int(_f(parts.get("n_id"))), "n_ood": int(_f(parts.get("n_ood"))),
                       "lr": optimizer.param_groups[0]["lr"], "dag": is_dag,
                       "samples_per_s": round(cfg.batch_size * world / max(now - t_last, 1e-9), 2)}
                t_last = now
                last_loss = rec["loss"]
                if log_f is not None:
                    log_f.write(json.dumps(rec) + "\n")
                    log_f.flush()
                if on_step is not None:
                    on_step(rec)
                if pbar is not None:
                    pbar.update(1)
                    pbar.set_postfix(loss=f"{rec['loss']:.4f}", sps=f"{rec['samples_per_s']:.1f}")
                if step % cfg.checkpoint_every == 0 and batch < per_epoch:
                    save_checkpoint(epoch, batch)
            if batch >= per_epoch:
                epoch, batch = epoch + 1, 0
                save_checkpoint(epoch, 0)       # end of epoch
            elif step >= total_steps:
                save_checkpoint(epoch, batch)   # --max-steps reached mid-epoch
    finally:
        if pbar is not None:
            pbar.close()
        if log_f is not None:
            log_f.close()
    if is_main:
        atomic_torch_save({"state_dict": model.state_dict(), "metadata": {**metadata, "steps": step}},
                          out / MODEL_FINAL)
    if distributed:
        import torch.distributed as dist

        dist.barrier()
    return {"steps": step, "epochs_done": epoch, "is_main": is_main, "last_loss": last_loss, "out": str(out),
            "checkpoint": str(ckpt_path), "final": str(out / MODEL_FINAL)}


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
