"""The options of ``maxent-train fit`` (:class:`FitConfig`), checked once, and the run files that hold them.

``--config`` reads a ``run.toml`` (a ``[fit]`` table or top-level keys) or an earlier run's ``config.json``
(:func:`load_config_file`); flags given on the command line override it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cocodag.device import resolve_device
from cocodag.labels import NUM_CLASSES

from . import MaxentError
from .choices import FROZEN_BN, LR_SCHEDULES, OPTIM_TARGETS, FrozenBN, LrSchedule, ObjectiveName, OptimTarget
from .models import parse_kwargs, parse_model_kwargs, read_checkpoint
from .objectives import Objective, make_objective, objective_class, parse_objective_kwargs

if sys.version_info >= (3, 11):
    import tomllib

CONFIG_FORMAT = "maxent-train-run"
#: the parameters of the ``maxent`` objective that have options of their own (``--lambda``, ``--optim-target``)
_MAXENT_FLAGS = {"lam": "--lambda", "optim_target": "--optim-target"}


@dataclass
class FitConfig:
    """All options of ``maxent-train fit`` (names = CLI option names with ``_``)."""

    data: str = ""
    model: str = ""
    out: str = ""
    init: str | None = None
    num_classes: int = NUM_CLASSES
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    epochs: int = 4
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-5
    lam: float = 0.9
    optim_target: OptimTarget = "entropy"
    #: the training objective (:mod:`maxent_train.objectives`) and its parameters besides ``lam`` / ``optim_target``
    objective: ObjectiveName = "maxent"
    objective_kwargs: dict = dataclasses.field(default_factory=dict)
    #: parameter-name globs to train (None: the objective's default, see :mod:`maxent_train.params`)
    train_only: list[str] | None = None
    frozen_bn: FrozenBN = "train"
    lr_schedule: LrSchedule = "constant"
    lr_power: float = 0.9
    weight_decay: float = 0.0
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
        if not self.model and self.init:
            self._model_from_init()
        if not self.model:
            raise MaxentError("--model is required (see `maxent-train models`)")
        if not self.out:
            raise MaxentError("--out is required (the run directory)")
        self.model_kwargs = parse_model_kwargs(self.model_kwargs)     # a config file may hold the CLI's string form
        if self.optim_target not in OPTIM_TARGETS:
            raise MaxentError(f"--optim-target: expected {' or '.join(OPTIM_TARGETS)}, got {self.optim_target!r}")
        resolve_device(self.device)         # an unknown name, or CUDA where there is none: one line, before any work
        for name in ("epochs", "batch_size", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise MaxentError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise MaxentError(f"--max-steps must be > 0, got {self.max_steps}")
        if not self.lr > 0:
            raise MaxentError(f"--lr must be > 0, got {self.lr}")
        if not 0.0 <= self.lam <= 1.0:
            raise MaxentError(f"--lambda must be in [0, 1], got {self.lam}")
        self._validate_training_options()

    def _validate_training_options(self) -> None:
        """The objective, the parameter selection, the schedule and the weight decay."""
        self.objective_kwargs = objective_options(self.objective_kwargs)
        self.make_objective()               # unknown objective / parameter, bad values: one line
        self.train_only = train_only_patterns(self.train_only)
        if self.frozen_bn not in FROZEN_BN:
            raise MaxentError(f"--frozen-bn: expected {' or '.join(FROZEN_BN)}, got {self.frozen_bn!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise MaxentError(f"--lr-schedule: expected {' or '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not (math.isfinite(self.lr_power) and self.lr_power > 0):
            raise MaxentError(f"--lr-power must be > 0, got {self.lr_power}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise MaxentError(f"--weight-decay must be >= 0, got {self.weight_decay}")

    def objective_params(self) -> dict[str, Any]:
        """The parameters the objective is made with: ``--objective-kwargs``, plus ``--lambda`` / ``--optim-target``
        for ``maxent`` and ``--num-classes`` for an objective with a ``num_classes`` parameter.

        Raises
        ------
        MaxentError
            ``--objective-kwargs`` repeating what another option sets (``lam`` for maxent, a ``num_classes`` other
            than ``--num-classes``), or ``--lambda`` / ``--optim-target`` changed for another objective.
        """
        params = dict(self.objective_kwargs)
        valid = objective_class(self.objective).param_names()
        if self.objective == "maxent":
            clash = [f"{k} (use {_MAXENT_FLAGS[k]})" for k in params if k in _MAXENT_FLAGS]
            if clash:
                raise MaxentError(f"--objective-kwargs: {', '.join(clash)}: the maxent objective takes it from its "
                                  f"own option")
            params.update(lam=self.lam, optim_target=self.optim_target)
        else:
            defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in _MAXENT_FLAGS}
            changed = [_MAXENT_FLAGS[k] for k in _MAXENT_FLAGS if getattr(self, k) != defaults[k]]
            if changed:
                raise MaxentError(f"{' and '.join(changed)}: parameters of the maxent objective, not of "
                                  f"{self.objective!r}; give its parameters with --objective-kwargs (valid: "
                                  f"{', '.join(valid)})")
        if "num_classes" in valid:
            if params.get("num_classes", self.num_classes) != self.num_classes:
                raise MaxentError(f"--objective-kwargs num_classes={params['num_classes']} differs from "
                                  f"--num-classes {self.num_classes}; set the class count with --num-classes")
            params["num_classes"] = self.num_classes
        return params

    def make_objective(self) -> Objective:
        """The objective of this run (:func:`maxent_train.objectives.make_objective`)."""
        return make_objective(self.objective, **self.objective_params())

    def _model_from_init(self) -> None:
        """``--model`` (and ``--model-kwargs`` when not given) from the metadata of one of our checkpoints."""
        assert self.init is not None        # called only with --init
        path = Path(self.init)
        if not path.is_file():
            raise MaxentError(f"--init {path}: file does not exist")
        _, meta = read_checkpoint(path)
        if not meta.get("model"):
            raise MaxentError(f"--init {path}: has no metadata naming the model (a released checkpoint); pass "
                              "--model NAME (see `maxent-train models`; e.g. deeplabv3plus_wrn38 for NVIDIA's "
                              "cityscapes_best.pth)")
        classes = _recorded_classes(meta)
        if classes not in (None, self.num_classes):
            raise MaxentError(f"--num-classes {self.num_classes} differs from the {classes} classes of --init {path}; "
                              f"pass --num-classes {classes}")
        self.model = str(meta["model"])
        if not self.model_kwargs:
            self.model_kwargs = dict(meta.get("model_kwargs") or {})


def _recorded_classes(meta: dict[str, Any]) -> int | None:
    """The class count a checkpoint of ours was trained with: its ``num_classes`` (the network's outputs) less the
    abstention channel when it has one."""
    outputs = meta.get("num_classes")
    if outputs is None:
        return None
    return int(outputs) - (meta.get("abstention_channel") is not None)


def objective_options(value: Any) -> dict[str, Any]:
    """``--objective-kwargs`` as a dict (:func:`maxent_train.models.parse_kwargs`): ``k=v,k=v`` is read by
    :func:`maxent_train.objectives.parse_objective_kwargs` (values JSON when they parse: numbers, ``true``,
    ``null``, ``[...]``; else strings). Names and values are checked by the objective."""
    return parse_kwargs(value, "--objective-kwargs", "expected KEY=VALUE[,KEY=VALUE...] (e.g. m_out=-5,alpha=4) "
                        "or a table of parameters", parse_objective_kwargs)


def train_only_patterns(value: Any) -> list[str] | None:
    """``--train-only`` as a list of globs (None: the objective's default); each item may hold several, split at
    commas (``final.*,aspp.*``)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(p, str) for p in items):
        raise MaxentError(f"--train-only: expected parameter-name patterns, got {value!r}")
    patterns = [p.strip() for item in items for p in item.split(",") if p.strip()]
    if not patterns:
        raise MaxentError("--train-only: give at least one parameter-name pattern (e.g. 'final.*'); leave the "
                          "option out for the objective's default")
    return patterns


# Options that do not change the result: a resumed/reproduced run may differ in them.
NON_RESULT_OPTIONS = {"out", "workers", "progress", "checkpoint_every", "verify_checksums", "max_steps"}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read ``run.toml`` or an earlier run's ``config.json`` into a dict of FitConfig fields.

    Unknown keys are refused (a typo would otherwise silently fall back to a default).
    """
    path = Path(path)
    if not path.is_file():
        raise MaxentError(f"--config {path}: file does not exist")
    try:
        if path.suffix == ".toml":
            raw = _read_toml(path)
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


def _read_toml(path: Path) -> Any:
    if sys.version_info >= (3, 11):
        return tomllib.loads(path.read_text())
    raise MaxentError(f"--config {path}: reading TOML needs Python 3.11 or later (tomllib); give the options as a "
                      "JSON object (e.g. an earlier run's config.json)")
