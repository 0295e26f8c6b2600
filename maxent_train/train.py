"""The fine-tuning loop (MaxEnt by default; any objective of :mod:`maxent_train.objectives`) with atomic,
exactly-resumable checkpoints.

``fit(FitConfig(...))`` (options: :mod:`maxent_train.config`) writes into ``out``:

* ``config.json`` – every option, seed, library versions, the data manifest hash and the git commit (if any). Passing
  it back as ``--config`` reproduces the run.
* ``log.jsonl`` – one line per step: step, epoch, batch, loss, the objective's parts (maxent: id_ce, ood_entropy,
  n_id, n_ood; pebal / balanced-energy: every part of their loss), lr, dag, samples_per_s.
* ``checkpoint-last.pt`` – model, optimizer, AMP scaler, RNG states, data position ``(epoch, batch)`` and step,
  written atomically (:func:`cocodag.atomic.atomic_write`) every ``checkpoint_every`` steps and at the end of each
  epoch.
* ``model-final.pt`` – ``{"state_dict": ..., "metadata": {"model", "num_classes", "model_kwargs", "num_outputs",
  "abstention_channel", "objective", ...}}`` (what ``export``, ``predict`` and ``miou`` read: they need no
  ``--model`` / ``--model-kwargs`` then). ``num_classes`` and ``num_outputs`` are the network's outputs: the classes,
  plus one when the objective has an abstention channel (``abstention_channel``, the last output; None without).
* ``.lock`` – the job's exclusive lock (:class:`cocodag.lock.OutputLock`), held from before the first check to the end:
  a second job on the same ``out`` is refused with one line naming the holder; under torchrun rank 0 holds it.

Checkpoints record the result-changing options, the data manifest hash and the world size in their ``metadata``:
``--resume`` compares them (and ``config.json`` when present) and refuses any change, naming the option.

Determinism: the batch order, flips and dropout masks are functions of ``(seed, epoch, batch, rank)`` (dropout: the
torch RNG is reseeded from them before every step), so ``resume`` from a checkpoint continues with the same batches
and, on CPU, bit-identical losses. Everything is loaded with ``torch.load(weights_only=True)``: RNG states are stored
as tensors and lists.

meta-ood re-creates its Adam optimizer at every epoch; ``recreate_optimizer_each_epoch=True`` (the default) does the
same, ``False`` keeps Adam's moments across epochs (PEBAL's and Balanced Energy's trainers keep one Adam). The
objective, the abstention channel (:mod:`maxent_train.network`), the trained parameters and frozen BatchNorm layers
(:mod:`maxent_train.params`) and the learning-rate schedule (:mod:`maxent_train.schedule`) live in their own modules.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from cocodag.arrays import to_numpy
from cocodag.atomic import atomic_write, atomic_write_text
from cocodag.device import resolve_device
from cocodag.errors import CocodagError
from cocodag.lock import OutputLock
from cocodag.outputs import disk_errors, prepare_output
from cocodag.progress import progress_bar
from cocodag.versions import library_versions

from . import MaxentError, __version__
from .config import CONFIG_FORMAT, NON_RESULT_OPTIONS, FitConfig, load_config_file
from .data import DeviceAugment, MixPlan, ShardLoader, derive_seed, open_training_data
from .models._helpers import load_file
from .network import Network, build_network
from .objectives import Objective
from .params import freeze_parameters, frozen_batchnorm, resolve_train_only, set_frozen_bn_mode
from .schedule import LRSchedule

__all__ = ["CHECKPOINT_LAST", "CONFIG_FORMAT", "CONFIG_NAME", "LOG_NAME", "MODEL_FINAL", "DistContext", "FitConfig",
           "RunDir", "fit", "git_commit", "load_config_file", "read_log", "rng_state", "set_rng_state",
           "setup_distributed", "train_step"]

CHECKPOINT_LAST = "checkpoint-last.pt"
MODEL_FINAL = "model-final.pt"
CONFIG_NAME = "config.json"
LOG_NAME = "log.jsonl"


def git_commit() -> str | None:
    """The git commit (with ``+dirty`` when modified) of the checkout this package runs from, or None when it is not
    run from one (an installed wheel: its folder may still lie inside some repository, e.g. a venv in a checkout)."""
    root = Path(__file__).resolve().parents[1]
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root:
            return None
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
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)      # legacy=True: (name, keys, pos, has_gauss, cached_gaussian)
    py_state = random.getstate()
    state: dict[str, Any] = {
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
    np.random.set_state((n[0], to_numpy(n[1], "numpy RNG keys").astype(np.uint32), n[2], n[3], n[4]))
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
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextmanager
    def one_outcome(self) -> Iterator[None]:
        """Run a block any rank may fail in; then every rank raises the same error, or none does.

        Without it a rank that stops early (a refused ``--out``, a bad file) leaves the others waiting in their next
        collective until its timeout (30 minutes). The ranks exchange the first error's line (``all_gather_object``);
        a rank that failed with one of our errors raises that line, a bug keeps its own traceback. One process: the
        block's exception passes through untouched.
        """
        if not self.distributed:
            yield
            return
        err: Exception | None = None
        try:
            yield
        except Exception as e:      # noqa: BLE001 - re-raised below, after telling the other ranks
            err = e
        texts: list[str | None] = [None] * self.world_size
        dist.all_gather_object(texts, None if err is None else _error_line(err, self.rank))
        first = next((t for t in texts if t is not None), None)
        if err is not None and not isinstance(err, CocodagError):
            raise err
        if first is not None:
            raise MaxentError(first)


def _error_line(err: Exception, rank: int) -> str:
    if isinstance(err, CocodagError):
        return str(err)
    return f"rank {rank} failed with {type(err).__name__}: {str(err).strip()[:300]} (its traceback is above)"


def setup_distributed(device: str) -> DistContext:
    """Read torchrun's environment (one process without it), resolve ``device`` and join the process group.

    Under torchrun (``WORLD_SIZE > 1``) CUDA processes take ``cuda:LOCAL_RANK`` and use nccl, CPU ones gloo.
    """
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device)
    if world > 1:
        if dev.type == "cuda":
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


# --------------------------------------------------------------------------------------------------------- run dir
class RunDir:
    """A run directory (``--out``): ``config.json``, ``log.jsonl``, ``checkpoint-last.pt``, ``model-final.pt``.

    Owns the rules for starting a run in it (refused when it already holds one, or while another job holds its lock
    ``OUT/.lock``) and for resuming one (refused when a result-changing option or the data differ from what the run
    recorded, in its checkpoint and in ``config.json``). Every file it writes is atomic, and a full disk is one line
    (``No space left on device: <file>``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / CONFIG_NAME
        self.log = self.path / LOG_NAME
        self.checkpoint = self.path / CHECKPOINT_LAST
        self.final = self.path / MODEL_FINAL

    @contextmanager
    def exclusive(self, ctx: DistContext) -> Iterator[None]:
        """Hold the run's lock for the whole run; one job is one lock.

        Rank 0 checks ``--out`` (an existing file, a parent that is a file, a read-only place: refused before any
        work) and takes the lock; the other ranks of the same job wait for the outcome, so a refused job stops on
        every rank at once with the same line (naming the job that holds it).
        """
        lock: OutputLock | None = None
        try:
            with ctx.one_outcome():
                if ctx.is_main:
                    prepare_output(self.path, kind="dir", option="--out")
                    # only now: the lock of an existing folder is OUT/.lock (of a missing one, OUT.lock beside it)
                    lock = OutputLock(self.path, option="--out", lock_file=self.path / ".lock")
                    with disk_errors(self.path):
                        lock.acquire()
            yield
        finally:
            if lock is not None:
                lock.release()

    def check_fresh(self) -> None:
        """Raise if the directory already holds a run."""
        if self.checkpoint.is_file():
            raise MaxentError(f"{self.path}: already holds a run ({CHECKPOINT_LAST}); use --resume to continue it "
                              f"or choose a new --out")

    def check_resume(self, options: dict[str, Any], manifest_hash: str, data: str,
                     world_size: int | None = None) -> dict[str, Any]:
        """Check that the run can be resumed with ``options`` on this data; return its training checkpoint.

        The checkpoint's own record (its ``metadata``: options, data manifest hash, world size) is compared first,
        then ``config.json`` when present: deleting ``config.json`` does not let a changed ``--lr`` through.
        """
        if not self.checkpoint.is_file():
            raise MaxentError(f"--resume: {self.checkpoint} does not exist (nothing to resume; drop --resume)")
        ck = _load_training_checkpoint(self.checkpoint)
        recorded = ck.get("metadata")
        meta: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
        _check_same_options(self.checkpoint, _recorded_options(meta), options, self.config)
        _check_same_data(self.checkpoint, meta.get("data_manifest_hash"), manifest_hash, data)
        recorded_world = meta.get("world_size")
        if world_size is not None and recorded_world is not None and int(recorded_world) != world_size:
            raise MaxentError(f"--resume: {self.checkpoint} was trained by {recorded_world} process(es) "
                              f"(torchrun --nproc-per-node), now {world_size}; the batches depend on it: resume "
                              f"with {recorded_world}")
        old = self._read_config()
        if old is not None:
            _check_same_options(self.config, old.get("options", {}), options, self.config)
            _check_same_data(self.config, old.get("data_manifest_hash"), manifest_hash, data)
        return ck

    def _read_config(self) -> dict[str, Any] | None:
        if not self.config.is_file():
            return None
        try:
            old = json.loads(self.config.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise MaxentError(f"--resume: {self.config}: cannot parse ({str(e).splitlines()[0]}); delete it to "
                              f"resume from {CHECKPOINT_LAST}'s own record") from None
        if not isinstance(old, dict) or not isinstance(old.get("options", {}), dict):
            raise MaxentError(f"--resume: {self.config}: not a run config (expected an object with 'options'); "
                              f"delete it to resume from {CHECKPOINT_LAST}'s own record")
        return old

    def start(self, record: dict[str, Any], step: int, resume: bool) -> None:
        """Write ``config.json`` and cut ``log.jsonl`` back to ``step`` (a fresh run starts an empty log)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with disk_errors(self.config):
            atomic_write_text(self.config, json.dumps({**record, "resumed_from_step": step if resume else None},
                                                      indent=2, sort_keys=True, default=str))
        # Drop log lines written after the checkpoint (the killed run's tail): the resumed run rewrites them.
        log = [r for r in read_log(self.log) if r.get("step", 0) <= step] if resume else []
        with disk_errors(self.log):
            atomic_write_text(self.log, "".join(json.dumps(r) + "\n" for r in log))

    @contextmanager
    def log_writer(self, enabled: bool) -> Iterator[Callable[[dict], None] | None]:
        """A function appending one record to ``log.jsonl`` (None when ``enabled`` is false: ranks other than 0).

        A record is written whole or not at all: a failed write (disk full) is cut back off before the one-line
        error, so the log never ends in half a line.
        """
        if not enabled:
            yield None
            return
        with disk_errors(self.log):
            fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

        def write(record: dict) -> None:
            data = (json.dumps(record) + "\n").encode()
            with disk_errors(self.log):
                size = os.fstat(fd).st_size
                try:
                    while data:
                        data = data[os.write(fd, data):]
                except OSError:
                    _truncate(fd, size)
                    raise

        try:
            yield write
        finally:
            os.close(fd)

    @staticmethod
    def save(obj: Any, path: Path) -> None:
        """``torch.save`` atomically: a kill or a full disk leaves the old file (and no temp file)."""
        with disk_errors(path), atomic_write(path) as tmp:
            try:
                with open(tmp, "wb") as f:
                    torch.save(obj, f)
            except RuntimeError as e:       # torch reports a failed write as RuntimeError; the OSError is its context
                if isinstance(e.__context__, OSError):
                    raise e.__context__ from None
                raise


def _truncate(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass


def _flag(name: str) -> str:
    """The command-line flag of a FitConfig field."""
    return {"lam": "--lambda", "recreate_optimizer_each_epoch": "--recreate-optimizer-each-epoch/--keep-optimizer"
            }.get(name, "--" + name.replace("_", "-"))


# FitConfig fields that checkpoints written before the full option record already held in their metadata
_LEGACY_METADATA_OPTIONS = ("model", "num_classes", "seed", "lam", "optim_target", "embedding_img_interval")


def _recorded_options(meta: dict[str, Any]) -> dict[str, Any]:
    """The result-changing options a checkpoint's metadata records (older checkpoints: the few they held)."""
    if isinstance(meta.get("options"), dict):
        return dict(meta["options"])
    return {k: meta[k] for k in _LEGACY_METADATA_OPTIONS if k in meta}


def _check_same_options(where: Path, recorded: dict[str, Any], options: dict[str, Any], config: Path) -> None:
    """Refuse a resume whose result-changing options differ from ``recorded`` (one line: flag, run vs now)."""
    diff = sorted(k for k, v in recorded.items()
                  if k not in NON_RESULT_OPTIONS and k in FitConfig.field_names() and options.get(k) != v)
    if not diff:
        return
    changes = "; ".join(f"{_flag(k)}: run {recorded[k]!r}, now {options.get(k)!r}" for k in diff)
    how = f"--config {config}" if config.is_file() else "the run's values"
    raise MaxentError(f"--resume: options {diff} differ from {where} ({changes}); resume with the same options "
                      f"({how}) or start a new run in another --out")


def _check_same_data(where: Path, recorded: str | None, manifest_hash: str, data: str) -> None:
    if recorded is not None and recorded != manifest_hash:
        raise MaxentError(f"--resume: data manifest of {data} differs from the one the run started with "
                          f"(recorded in {where}); resume on the same dataset")


# --------------------------------------------------------------------------------------------------------- training
def _build_network(cfg: FitConfig, objective: Objective) -> tuple[Network, list[str] | None, list[str]]:
    """The network (``--init`` loaded, the abstention channel added when the objective needs one) with its trained
    parameters selected; returns it, the ``--train-only`` globs in force (None: all) and the trained names."""
    torch.manual_seed(derive_seed(cfg.seed, "init"))  # same seed -> same initial weights (heads without --init, the
    net = build_network(cfg.model, cfg.num_classes, cfg.model_kwargs, cfg.init,   # abstention channel)
                        abstention=objective.abstention, objective=objective.name)
    patterns = resolve_train_only(cfg.train_only, objective, cfg.model)
    return net, patterns, freeze_parameters(net.model, patterns, cfg.model)


def _make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam over the trained parameters; ``weight_decay`` is Adam's own (L2 added to the gradient, as in PEBAL's
    and Balanced Energy's ``torch.optim.Adam``), left at Adam's default when 0."""
    params = [p for p in model.parameters() if p.requires_grad]
    if weight_decay:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr)


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
    def create(cls, cfg: FitConfig, model: torch.nn.Module, device: torch.device, use_amp: bool) -> _Training:
        model = model.to(device)
        return cls(model, _make_optimizer(model, cfg.lr, cfg.weight_decay),
                   torch.amp.GradScaler("cuda", enabled=use_amp), use_amp)

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
               x: torch.Tensor, y: torch.Tensor, *, objective: Objective, use_amp: bool,
               where: str = "") -> tuple[torch.Tensor, dict[str, float]]:
    """One optimizer step of ``objective`` on a batch (autocast + GradScaler when ``use_amp``).

    Parameters
    ----------
    x : (B, 3, S, S) float32 normalized images; y : (B, S, S) int64 labels
    objective : a :mod:`maxent_train.objectives` objective, called on the float32 logits
    where : the step's position, for the error message

    Returns
    -------
    loss, parts : see :class:`maxent_train.objectives.Objective`

    Raises
    ------
    MaxentError
        A non-finite loss (checked before the weights are touched).
    """
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=x.device.type, dtype=torch.float16, enabled=use_amp):
        logits = model(x)
    loss, parts = objective(logits.float(), y)
    if not torch.isfinite(loss):
        raise MaxentError(f"loss is {loss.item()} at {where}; lower --lr or disable --amp")
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, parts


#: the parts of an objective's loss that its log lines hold (default: all of them); maxent's: as they always were
_LOGGED_PARTS = {"maxent": ("id_ce", "ood_entropy", "n_id", "n_ood")}


def _log_record(tr: _Training, b: int, loss: torch.Tensor, parts: dict, is_dag: bool, samples: int,
                seconds: float, objective: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"step": tr.step, "epoch": tr.epoch, "batch": b, "loss": float(loss.item())}
    for name in _LOGGED_PARTS.get(objective, tuple(parts)):
        value = _f(parts.get(name))
        rec[name] = int(value) if name.startswith("n_") else value      # counts: n_id, n_ood, n_ood_images
    rec.update(lr=tr.optimizer.param_groups[0]["lr"], dag=is_dag, samples_per_s=round(samples / max(seconds, 1e-9), 2))
    return rec


def _train_loop(tr: _Training, job: _Job, cfg: FitConfig, ctx: DistContext, loader: ShardLoader,
                train_model: torch.nn.Module, save: Callable[[], None], emit: Callable[[dict], None]) -> float:
    """Train from ``tr``'s position to the job's step budget; ``save`` writes a checkpoint, ``emit`` gets each log
    record. Returns the last loss (NaN when no step ran)."""
    augment = DeviceAugment(seed=cfg.seed, flip_p=cfg.flip_p)
    per_epoch, total_steps = job.plan.batches_per_epoch, job.total_steps
    last_loss = math.nan
    tr.model.train()
    set_frozen_bn_mode(tr.model, cfg.frozen_bn)
    while tr.step < total_steps and tr.epoch < cfg.epochs:
        if cfg.recreate_optimizer_each_epoch and tr.batch == 0 and tr.epoch > 0:
            tr.optimizer = _make_optimizer(tr.model, cfg.lr, cfg.weight_decay)  # meta-ood: a fresh Adam every epoch
        t_last = time.perf_counter()
        for b, images, labels, is_dag in loader.epoch_batches(tr.epoch, tr.batch):
            if tr.step >= total_steps:
                break
            # Dropout masks depend only on the position, not on the RNG history (resume-exact).
            torch.manual_seed(derive_seed(cfg.seed, "step", tr.epoch, b, ctx.rank))
            x, y = augment(images, labels, epoch=tr.epoch, batch=b, rank=ctx.rank)
            job.schedule.apply(tr.optimizer, tr.step)
            loss, parts = train_step(train_model, tr.optimizer, tr.scaler, x, y, objective=job.objective,
                                     use_amp=tr.use_amp, where=f"step {tr.step} (epoch {tr.epoch}, batch {b})")
            tr.step += 1
            tr.batch = b + 1
            now = time.perf_counter()
            rec = _log_record(tr, b, loss, parts, is_dag, cfg.batch_size * ctx.world_size, now - t_last,
                              job.objective.name)
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
    """Run (or resume) fine-tuning with ``cfg.objective``; returns a summary dict (steps, final loss, paths).

    The job holds an exclusive lock on ``cfg.out`` (``OUT/.lock``) from before its first check to its end: a second
    job on the same run directory is refused with one line naming this one. Under ``torchrun`` (``WORLD_SIZE > 1``)
    it joins the process group (gloo on CPU, nccl on CUDA), rank 0 takes the lock for the whole job, the model is
    wrapped in DDP and each global batch is split across ranks; only rank 0 writes files. An error while setting up
    (the lock, the data, a checkpoint) stops every rank with the same line.

    Raises
    ------
    MaxentError / CocodagError
        Bad options, ``--out``, data dir, checkpoint; another job holding ``--out``; resuming a run whose recorded
        options or data differ in a result-changing way; a full disk (``No space left on device: <file>``).
    """
    cfg.validate()
    ctx = setup_distributed(cfg.device)
    run = RunDir(cfg.out)
    with run.exclusive(ctx):
        with ctx.one_outcome():
            job = _prepare_job(cfg, ctx, run, resume)
        return _run_job(job, cfg, ctx, run, on_step)


@dataclass
class _Job:
    """A prepared run: its data, mix plan, step budget, objective, learning-rate schedule, the record of
    ``config.json`` and the checkpoint metadata."""

    dataset: Any
    plan: MixPlan
    total_steps: int
    objective: Objective
    schedule: LRSchedule
    record: dict[str, Any]
    metadata: dict[str, Any]
    training: _Training


def _prepare_job(cfg: FitConfig, ctx: DistContext, run: RunDir, resume: bool) -> _Job:
    """Open the data, plan the batches, build (or restore) the model and, on rank 0, write ``config.json``."""
    use_amp = bool(cfg.amp) and ctx.device.type == "cuda"   # AMP is CUDA only; ignored on CPU
    objective = cfg.make_objective()
    dataset = open_training_data(cfg.data, verify_checksums=cfg.verify_checksums)
    counts = {k: dataset.num_samples(k) for k in ("cityscapes", "coco", "dag")}
    plan = MixPlan(counts=counts, batch_size=cfg.batch_size, seed=cfg.seed,
                   embedding_img_interval=cfg.embedding_img_interval, coco_fraction=cfg.coco_fraction,
                   world_size=ctx.world_size, rank=ctx.rank, block_size=cfg.block_size)
    per_epoch = plan.batches_per_epoch
    total_steps = per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    # the poly schedule runs over every planned step, whatever --max-steps stops at (a non-result option)
    schedule = LRSchedule(cfg.lr_schedule, cfg.lr, per_epoch * cfg.epochs, cfg.lr_power)
    net, patterns, trained = _build_network(cfg, objective)
    options = dataclasses.asdict(cfg)
    trained_record = _training_record(objective, net, patterns, trained, cfg)
    record = {"format": CONFIG_FORMAT, "version": 1, "options": options, "seed": cfg.seed,
              "versions": {"maxent_train": __version__, **library_versions()},
              "data_manifest_hash": dataset.manifest_hash, "data_totals": counts, "git_commit": git_commit(),
              "world_size": ctx.world_size, "steps_per_epoch": per_epoch, "total_steps": total_steps,
              "amp_active": use_amp, "loss_reduction": _LOSS_REDUCTION.get(objective.name, _LOSS_REDUCTION[""]),
              **trained_record}
    # What --resume compares, kept in every checkpoint itself (plain types: loads with weights_only=True), and what
    # export, miou and predict rebuild the network from: model, model_kwargs and num_classes, the network's outputs
    # (= num_outputs: the classes, plus the abstention channel when abstention_channel is set; options.num_classes
    # and the objective's params keep the class count)
    metadata = {"model": cfg.model, "num_classes": net.num_outputs, "model_kwargs": dict(cfg.model_kwargs),
                "seed": cfg.seed,
                "lam": cfg.lam, "optim_target": cfg.optim_target, "embedding_img_interval": cfg.embedding_img_interval,
                "data_manifest_hash": dataset.manifest_hash, "maxent_train": __version__,
                "world_size": ctx.world_size,
                "options": {k: v for k, v in options.items() if k not in NON_RESULT_OPTIONS},
                **trained_record}
    tr = _Training.create(cfg, net.model, ctx.device, use_amp)
    if resume:
        tr.restore(run.check_resume(options, dataset.manifest_hash, cfg.data, ctx.world_size))
    else:
        run.check_fresh()
    if ctx.is_main:
        run.start(record, tr.step, resume)
    return _Job(dataset, plan, total_steps, objective, schedule, record, metadata, tr)


_LOSS_REDUCTION = {"maxent": "mean over all pixels (and classes for entropy target); see maxent_train.loss",
                   "": "per batch, as the objective's official training loop adds it; see maxent_train.objectives"}


def _training_record(objective: Objective, net: Network, patterns: list[str] | None, trained: list[str],
                     cfg: FitConfig) -> dict[str, Any]:
    """What config.json and the checkpoint metadata record of the objective, the network's outputs and the trained
    parameters (``abstention_channel``: the index of the abstention channel, None without one)."""
    return {"objective": {"name": objective.name, "params": objective.get_params()},
            "num_outputs": net.num_outputs, "abstention_channel": net.abstention_channel,
            "abstention_source": net.abstention_source, "grown_classifier": list(net.grown),
            "train_only": None if patterns is None else list(patterns), "trained_tensors": len(trained),
            "frozen_bn": cfg.frozen_bn, "frozen_bn_layers": len(frozen_batchnorm(net.model))}


def _run_job(job: _Job, cfg: FitConfig, ctx: DistContext, run: RunDir,
             on_step: Callable[[dict], None] | None) -> dict[str, Any]:
    """Train from the job's position to its step budget, then write ``model-final.pt`` (rank 0)."""
    tr = job.training
    train_model = ctx.wrap(tr.model)
    loader = ShardLoader(job.dataset, job.plan, device=ctx.device, workers=cfg.workers)

    def save() -> None:
        if ctx.is_main:
            run.save(tr.checkpoint(job.metadata), run.checkpoint)

    with _progress(ctx.is_main and cfg.progress, job.total_steps, tr.step) as pbar, \
            run.log_writer(ctx.is_main) as write_log:
        def emit(rec: dict) -> None:
            if write_log is not None:
                write_log(rec)
            if on_step is not None:
                on_step(rec)
            if pbar is not None:
                pbar.update(1)
                pbar.set_postfix(loss=f"{rec['loss']:.4f}", sps=f"{rec['samples_per_s']:.1f}")

        last_loss = _train_loop(tr, job, cfg, ctx, loader, train_model, save, emit)
    if ctx.is_main:
        run.save({"state_dict": tr.model.state_dict(), "metadata": {**job.metadata, "steps": tr.step}}, run.final)
    ctx.barrier()
    return {"steps": tr.step, "epochs_done": tr.epoch, "is_main": ctx.is_main, "last_loss": last_loss,
            "out": str(run.path), "checkpoint": str(run.checkpoint), "final": str(run.final)}


@contextmanager
def _progress(enabled: bool, total: int, initial: int) -> Iterator[Any]:
    """A progress bar over the steps (:func:`cocodag.progress.progress_bar`; None when disabled), closed on exit."""
    if not enabled:
        yield None
        return
    bar = progress_bar(total=total, initial=initial, desc="fit", unit="step", dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def _f(v: torch.Tensor | float | None) -> float:
    if v is None:
        return math.nan
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def _load_training_checkpoint(path: Path) -> dict[str, Any]:
    ck = load_file(path)
    if not isinstance(ck, dict):
        raise MaxentError(f"{path}: not a maxent-train training checkpoint (holds a {type(ck).__name__}); "
                          f"resume needs the {CHECKPOINT_LAST} a run wrote")
    for key in ("model", "optimizer", "rng", "data", "step"):
        if key not in ck:
            raise MaxentError(f"{path}: not a maxent-train training checkpoint (missing {key!r}); resume needs the "
                              f"{CHECKPOINT_LAST} a run wrote")
    return ck
