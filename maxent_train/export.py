"""Logit / MC-dropout export to ``logits.h5`` (the file: docs/formats.md, section 3).

Inputs: a cocodag dataset (``data``, shard kinds ``kinds``; labels trainId -> 0, 254 -> 1, 255 -> 255) or an
evaluation set (``images`` + ``preset`` via :mod:`cocodag.formats.evalsets`, full-resolution inference, optionally in
sliding windows). The file is written frame by frame through the one writer,
:class:`cocodag.formats.logits.LogitsWriter` (one frame per chunk, atomic: it appears only when complete), so it may
exceed RAM.

Layout (``--logits-resolution``): ``native`` (default) stores what the network computes before its final bilinear
upsampling (``forward_native``, 1/4 or 1/2 of the input for our models) with the rule (``output_upsample``: mode,
``align_corners``) and the label size, so the reader gives label-size logits back; ``label`` stores them upsampled to
the label size (the version-1 layout; also what a plug-in model without the hook, or ``--sliding-window``, gets, with
a one-line note). ``--logits-dtype`` float16 (default) or float32. Labels and ROI are always gzip-compressed.

The optional MC block calls :func:`maxent_train.mc.mc_moments` once per frame with ``seed = seed + frame index``
(independent of batching and of the number of processes), head-only when the model has
``forward_features``/``forward_head``, at the layout's resolution (natively: power sums of the native samples, so
memory does not grow with the label size x K). Before it samples, :func:`maxent_train.mc.prepare_mc_dropout` checks
on the first frame that some dropout layer reaches the logits and refuses otherwise (the moments would be all zero);
``mc_dropout=P`` (``--mc-dropout P``) first inserts test-time ``nn.Dropout2d(P)`` before the final classifier, a
deviation from the trained network recorded in the ``mc`` group's attributes (``mc_dropout``, ``mc_dropout_at``).
``--mc-samples 1`` is refused (no moments exist).

The model comes from the checkpoint's metadata (``model``, ``num_classes``, ``model_kwargs``) or, for a released file
without it, from ``model`` / ``num_classes`` / ``model_kwargs`` (``--model``, ``--num-classes``, ``--model-kwargs``).
A network trained with an abstention channel (``maxent-train fit --objective pebal`` / ``balanced-energy``: the
metadata's ``abstention_channel``, the last of its ``num_classes`` outputs) is exported with every output and the
file says which channel abstains (``abstention_channel``, docs/formats.md section 3): the C classes are the others,
and the SML statistics and the MC block's entropy are those of the C classes.

The job locks ``--out`` (``F.h5.lock``) and ``--sml-stats`` for its whole run, checks both paths before any work,
and checks the free space once the first frame is computed (its uncompressed size) and while writing, so that a full
disk ends in one line (``No space left on device: F.h5``) with neither ``F.h5`` nor ``F.h5.tmp`` left behind.

Several processes (``torchrun --nproc-per-node N -m maxent_train export ...``): see :func:`export_logits`.

``sml_stats`` feeds the logits of each frame *as the reader returns them* (the stored float16 values, native ones
upsampled with the file's rule) to :class:`cocodag.formats.sml_stats.SMLStats`, so the JSON equals what
``oodscore fit-sml`` computes from the written file.
"""
from __future__ import annotations

import glob
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import cv2
import numpy as np
import torch
import torch.distributed as dist

from cocodag.arrays import to_numpy
from cocodag.atomic import temp_path
from cocodag.formats.evalsets import get_preset
from cocodag.formats.logits import MC_KEYS, LogitsFile, LogitsWriter, class_logits, upsample, upsample_frame
from cocodag.formats.shards import KINDS, LZF_REFUSED, open_dataset
from cocodag.formats.sml_stats import SMLStats
from cocodag.imageio import read_rgb
from cocodag.labels import IGNORE_ID, NUM_CLASSES, OOD_ID
from cocodag.lock import OutputLock, lock_path_for
from cocodag.outputs import check_free_space, disk_errors, prepare_output
from cocodag.progress import progress_bar

from . import MaxentError, __version__
from .choices import (
    COMPRESSIONS,
    LOGITS_DTYPES,
    LOGITS_RESOLUTIONS,
    MC_DTYPES,
    MOMENTS_OF,
    Compression,
    LogitsDtype,
    LogitsResolution,
    McDtype,
    MomentsOf,
)
from .data import normalize
from .mc import mc_moments, prepare_mc_dropout
from .models import create_model, load_state, native_output_rule, read_checkpoint
from .train import DistContext, setup_distributed


@dataclass
class ExportOptions:
    """Options of ``maxent-train export`` (see the CLI help)."""

    checkpoint: str
    out: str
    data: str | None = None
    kinds: tuple[str, ...] = ("dag",)
    images: str | None = None
    preset: str = "standard"
    model: str | None = None
    num_classes: int | None = None
    model_kwargs: dict | None = None
    batch_size: int = 4
    sliding_window: bool = False
    window: int = 1024
    stride: int = 512
    mc_samples: int = 0
    mc_dropout: float | None = None
    moment_order: int = 4
    moments_of: MomentsOf = "logits"
    mc_dtype: McDtype = "float32"
    logits_resolution: LogitsResolution = "native"
    logits_dtype: LogitsDtype = "float16"
    store_images: bool = False
    image_max_side: int = 512
    limit: int | None = None
    compression: Compression = "none"
    sml_stats: str | None = None
    device: str = "auto"
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        """Check the options against each other (inputs are checked when opened).

        Raises
        ------
        MaxentError
            Naming the option, what it expects and what it got.
        """
        if (self.data is None) == (self.images is None):
            raise MaxentError("give exactly one input: --data DIR (cocodag dataset) or --images DIR --preset P")
        if self.mc_samples < 0:
            raise MaxentError(f"--mc-samples must be >= 0, got {self.mc_samples}")
        if self.mc_samples == 1:
            raise MaxentError("--mc-samples 1: one pass has no spread, so no central moments exist; use 2 or more "
                              "(e.g. 32), or 0 for no MC block")
        if self.mc_dropout is not None and not self.mc_samples:
            raise MaxentError(f"--mc-dropout {self.mc_dropout} needs --mc-samples T (T >= 2): it only acts on the MC "
                              "block")
        if self.mc_dropout is not None and not 0.0 < self.mc_dropout < 1.0:
            raise MaxentError(f"--mc-dropout must be in (0, 1), got {self.mc_dropout}")
        if self.mc_samples and self.moment_order < 2:
            raise MaxentError(f"--moment-order must be >= 2, got {self.moment_order}")
        if self.mc_samples and self.sliding_window:
            raise MaxentError("--mc-samples with --sliding-window is not supported (moments of averaged tiles are "
                              "not the moments of the frame); run MC export at full resolution")
        for option, value, choices in (("--moments-of", self.moments_of, MOMENTS_OF),
                                       ("--mc-dtype", self.mc_dtype, MC_DTYPES),
                                       ("--logits-dtype", self.logits_dtype, LOGITS_DTYPES),
                                       ("--logits-resolution", self.logits_resolution, LOGITS_RESOLUTIONS)):
            if value not in choices:
                raise MaxentError(f"{option}: expected {' or '.join(choices)}, got {value!r}")
        compression: str = self.compression      # a library caller may pass any string
        if compression == "lzf":
            raise MaxentError(f"--compression lzf: {LZF_REFUSED}")
        if compression not in COMPRESSIONS:
            raise MaxentError(f"--compression: expected {' or '.join(COMPRESSIONS)}, got {compression!r}")
        if self.limit is not None and self.limit <= 0:
            raise MaxentError(f"--limit must be > 0, got {self.limit}")
        if self.batch_size <= 0:
            raise MaxentError(f"--batch-size must be > 0, got {self.batch_size}")


@dataclass
class _Frame:
    name: str
    image: np.ndarray            # (H, W, 3) uint8 RGB
    label: np.ndarray            # (H, W) uint8 0/1/255
    roi: np.ndarray | None = None


@dataclass
class _Source:
    total: int                   # frames available (before --limit)
    frames: Callable[[int, int], Iterator[_Frame]]     # frames(start, stop): frames start..stop-1, in order
    dataset: str                 # the file's ``dataset`` attribute


# --------------------------------------------------------------------------------------------------------- model
def load_model_for_export(checkpoint: str | Path, model: str | None = None, num_classes: int | None = None,
                          device: torch.device | str = "cpu", model_kwargs: dict | None = None,
                          option: str = "--checkpoint") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the model named in the checkpoint's metadata (or ``model``) and load its weights strictly.

    The model's options are the checkpoint's recorded ``model_kwargs`` (when it names the same model) updated by
    ``model_kwargs``. A raw released file (no metadata) needs ``model`` (``--model``); its class count is
    ``num_classes`` or 19. Returns ``(model in eval mode on device, metadata)``; the metadata's ``model``,
    ``num_classes`` (the network's outputs) and ``model_kwargs`` are what was built, and ``abstention_channel`` the
    output that is no class (None for none; when recorded, it must be the last output).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise MaxentError(f"{option} {path}: file does not exist")
    state, meta = read_checkpoint(path)
    name = model or meta.get("model")
    if not name:
        raise MaxentError(f"{option} {path}: has no metadata naming the model; pass --model NAME (see "
                          f"`maxent-train models`; e.g. deeplabv3plus_wrn38 for NVIDIA's cityscapes_best.pth)")
    if num_classes is not None and meta.get("num_classes") not in (None, num_classes):
        raise MaxentError(f"--num-classes {num_classes} differs from the checkpoint's {meta['num_classes']}")
    nc = int(num_classes or meta.get("num_classes") or NUM_CLASSES)
    kwargs = dict(meta.get("model_kwargs") or {}) if name == meta.get("model") else {}
    kwargs.update(model_kwargs or {})
    abstention = meta.get("abstention_channel")
    if abstention is not None and (isinstance(abstention, bool) or abstention != nc - 1):
        raise MaxentError(f"{option} {path}: its metadata's abstention_channel is {abstention!r}, expected "
                          f"{nc - 1} (the last of the model's {nc} outputs) or none")
    net = create_model(name, num_classes=nc, **kwargs)     # e.g. a dropout rate: not part of the state_dict
    load_state(net, state, path, strict=True, name=name)
    meta.update(model=name, num_classes=nc, model_kwargs=kwargs,
                abstention_channel=None if abstention is None else int(abstention))
    return net.to(device).eval(), meta


# --------------------------------------------------------------------------------------------------------- sources
def _open_source(opts: ExportOptions) -> _Source:
    if opts.data is not None:
        return _shard_frames(opts.data, opts.kinds, opts.batch_size)
    assert opts.images is not None          # validate(): exactly one input
    return _evalset_frames(opts.images, opts.preset)


def _shard_frames(data: str, kinds: tuple[str, ...], chunk: int) -> _Source:
    """Frames of the shards of ``kinds`` (in that order), read ``chunk`` samples per shard access."""
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise MaxentError(f"--kinds: expected a comma-separated subset of {', '.join(KINDS)}, got {','.join(kinds)!r}")
    ds = open_dataset(data, verify_checksums=True, kinds=kinds)
    shards = [s for k in kinds for s in ds.shards_of(k)]
    lut = np.full(256, IGNORE_ID, np.uint8)          # shard trainIds -> logits.h5's 0 (ID) / 1 (OOD) / 255 (void)
    lut[: int(ds.manifest.get("num_classes", NUM_CLASSES))] = 0
    lut[int(ds.manifest.get("ood_id", OOD_ID))] = 1

    def gen(start: int, stop: int) -> Iterator[_Frame]:
        offset = 0                                   # global index of the shard's first sample
        for info in shards:
            lo, hi = max(start - offset, 0), min(stop - offset, info.num_samples)
            offset += info.num_samples
            if lo >= hi:
                continue
            with ds.open_shard(info) as sh:
                frames = sh.read_meta()["frame"]
                for a in range(lo, hi, chunk):
                    images, labels = sh.read(a, min(a + chunk, hi))
                    for j in range(len(images)):
                        i = a + j
                        yield _Frame(f"{info.path.stem}/{i:05d}/{frames[i]}", images[j], lut[labels[j]])

    return _Source(sum(s.num_samples for s in shards), gen, "cocodag")


def _evalset_frames(root: str, preset_name: str) -> _Source:
    """Frames of an evaluation set at full resolution (labels already 0/1/255 via the preset)."""
    preset = get_preset(preset_name)
    items = preset.find(root)
    if not items:
        raise MaxentError(f"--images {root}: preset {preset_name} found no frames")

    def gen(start: int, stop: int) -> Iterator[_Frame]:
        for it in items[start:stop]:
            rgb = read_rgb(it.image_path)
            h, w = rgb.shape[:2]
            label = (preset.load_label(it.label_path) if it.label_path is not None
                     else np.full((h, w), IGNORE_ID, np.uint8))   # unlabelled: all void
            if label.shape != (h, w):
                raise MaxentError(f"{it.label_path}: label is {label.shape[1]}x{label.shape[0]}, image "
                                  f"{it.image_path.name} is {w}x{h}")
            yield _Frame(it.name, rgb, label, preset.load_roi(it))

    return _Source(len(items), gen, preset_name)


# --------------------------------------------------------------------------------------------------------- inference
def _tile_starts(n: int, window: int, stride: int) -> list[int]:
    """Tile origins along one axis: every ``stride``, the last tile aligned to the border."""
    if n <= window:
        return [0]
    s = list(range(0, n - window + 1, stride))
    if s[-1] != n - window:
        s.append(n - window)
    return s


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, window: int | None = None,
                   stride: int | None = None) -> torch.Tensor:
    """Logits (N, C, H, W) float32 at input size.

    With ``window`` the image is covered by overlapping ``window``×``window`` tiles (last tile aligned to the border)
    whose logits are averaged where they overlap. A model output smaller than its input is brought to size with
    :func:`cocodag.formats.logits.upsample`.
    """
    h, w = x.shape[-2:]
    if window is None or (h <= window and w <= window):
        return upsample(model(x).float(), (h, w))
    if stride is None or stride <= 0 or stride > window:
        raise MaxentError(f"--stride must be in 1..--window ({window}), got {stride}")
    acc = None
    count = torch.zeros((1, 1, h, w), device=x.device)
    for y0 in _tile_starts(h, window, stride):
        for x0 in _tile_starts(w, window, stride):
            tile = x[..., y0:y0 + window, x0:x0 + window]
            out = upsample(model(tile).float(), (tile.shape[-2], tile.shape[-1]))
            if acc is None:
                acc = torch.zeros((x.shape[0], out.shape[1], h, w), device=x.device)
            acc[..., y0:y0 + tile.shape[-2], x0:x0 + tile.shape[-1]] += out
            count[..., y0:y0 + tile.shape[-2], x0:x0 + tile.shape[-1]] += 1
    assert acc is not None                  # at least one tile
    return acc / count


def _at_size(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring an MC tensor (..., h, w) to ``size`` with the one upsampling rule (leading axes become channels)."""
    if tuple(t.shape[-2:]) == size:
        return t
    lead = t.shape[:-2]
    return upsample(t.reshape(1, -1, *t.shape[-2:]).float(), size).reshape(*lead, *size)


# --------------------------------------------------------------------------------------------------------- layout
class _NativeModel(Protocol):
    """A model with the native-output hook (:func:`maxent_train.models.native_output_rule` checks it)."""

    def forward_native(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class _Layout:
    """How the logits and the MC block are stored: at the network's output resolution (``native``, with the rule
    that upsamples them) or at the label size (``label``, the version-1 layout)."""

    resolution: str
    rule: dict | None = None

    @property
    def native(self) -> bool:
        return self.resolution == "native"


def _note(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr)


def _choose_layout(model: torch.nn.Module, opts: ExportOptions, name: str, quiet: bool = False) -> _Layout:
    """``--logits-resolution native`` when the model has the native-output hook (and no sliding window), else the
    label resolution with a one-line note."""
    if opts.logits_resolution == "label":
        return _Layout("label")
    rule = native_output_rule(model)
    why = None
    if rule is None:
        why = f"model {name} has no native-output hook (forward_native + output_upsample)"
    elif opts.sliding_window:
        why = "--sliding-window stitches its tiles at the label size"
    if why is None:
        return _Layout("native", rule)
    if not quiet:
        _note(f"{why}: logits stored at label resolution (as with --logits-resolution label)")
    return _Layout("label")


@dataclass
class _Output:
    """One frame's computed outputs, ready for the writer."""

    frame: _Frame
    index: int                   # global frame index (MC seed = seed + index)
    logits: np.ndarray           # (C, h, w) in the storage dtype (native or label resolution)
    mc: dict[str, np.ndarray] | None
    head_only: bool              # what the MC block actually ran


def _compute(model: torch.nn.Module, fr: _Frame, index: int, opts: ExportOptions, layout: _Layout, head_only: bool,
             device: torch.device, abstention: int | None = None) -> _Output:
    """Forward one frame: its logits (native, or at the label size) in the storage dtype, and its MC block."""
    h, w = fr.label.shape
    x = normalize(torch.from_numpy(np.ascontiguousarray(fr.image))[None].to(device))
    model.eval()      # mc_moments switches dropout on; plain logits are deterministic
    if layout.native:
        with torch.no_grad():
            t = cast(_NativeModel, model).forward_native(x).float()
    else:
        window = opts.window if opts.sliding_window else None
        t = upsample(predict_logits(model, x, window, opts.stride), (h, w))
    stored = to_numpy(t[0], "logits").astype(opts.logits_dtype)
    _check_finite(stored, fr.name, opts.checkpoint)
    mc, ran = None, head_only
    if opts.mc_samples:
        mc, ran = _mc_block(model, x, opts, index, head_only, layout, (h, w), abstention)
    return _Output(fr, index, stored, mc, ran)


def _mc_block(model: torch.nn.Module, x: torch.Tensor, opts: ExportOptions, index: int, head_only: bool,
              layout: _Layout, size: tuple[int, int], abstention: int | None = None
              ) -> tuple[dict[str, np.ndarray], bool]:
    """MC-dropout moments of one frame: ``({mean, central, entropy} float32, head_only that ran)``, sampled and
    stored at the native resolution (``layout.native``) or at the label ``size``; with an ``abstention`` channel,
    moments of every output and the entropy of the classes' mean softmax.

    Seeded with ``opts.seed + index`` so a frame's masks do not depend on batching, on the other frames or on the
    number of processes.
    """
    mom = mc_moments(model, x, samples=opts.mc_samples, order=opts.moment_order, moments_of=opts.moments_of,
                     head_only=head_only, seed=opts.seed + index, native=layout.native, classes=abstention)
    arrays = {k: to_numpy((mom[k] if layout.native else _at_size(mom[k], size))[0], k) for k in MC_KEYS}
    return arrays, bool(mom.get("head_only", head_only))


def _sml_summary(sml: SMLStats, out: _Output, layout: _Layout, abstention: int | None = None) -> SMLStats:
    """This frame's SML state (an empty copy of ``sml`` updated with what ``oodscore fit-sml`` folds in for it: the
    class logits the reader returns, the stored values without an abstention channel, native ones upsampled with
    the file's rule on the CPU, as ``LogitsFile.logits`` does); rank 0 merges the frames' states in frame order."""
    logits = class_logits(out.logits, abstention).astype(np.float32)
    if layout.native:
        logits = upsample_frame(logits, out.frame.label.shape, layout.rule)
    state = sml.empty_copy()
    state.update(logits)
    return state


def _file_attrs(meta: dict[str, Any]) -> dict[str, Any]:
    """Root attributes export adds: our version, the model options when there are any (JSON), and the abstention
    channel when the network has one."""
    attrs: dict[str, Any] = {"maxent_train": __version__}
    if meta.get("model_kwargs"):
        attrs["model_kwargs"] = json.dumps(meta["model_kwargs"], sort_keys=True)
    if meta.get("abstention_channel") is not None:      # the writer's own attribute (the file's version 3)
        attrs["abstention_channel"] = meta["abstention_channel"]
    return attrs


def _prepare_mc(model: torch.nn.Module, first: _Frame, opts: ExportOptions, name: str,
                device: torch.device) -> dict[str, Any]:
    """Before any sampling: check on the first frame that dropout reaches the logits (or insert ``--mc-dropout``
    test-time dropout first); returns the extra mc attrs (``mc_dropout``, ``mc_dropout_at``) when inserted."""
    x = normalize(torch.from_numpy(np.ascontiguousarray(first.image))[None].to(device))
    where = prepare_mc_dropout(model, x, opts.mc_dropout, name=name)
    if where is None or opts.mc_dropout is None:      # None exactly when no dropout was asked for
        return {}
    return {"mc_dropout": float(opts.mc_dropout), "mc_dropout_at": where}


def _downsize(image: np.ndarray, max_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    s = max_side / max(h, w)
    if s >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------------------------------------- outputs
def _prepare_outputs(opts: ExportOptions) -> tuple[Path, Path | None]:
    """Check ``--out`` and ``--sml-stats`` before any work (odd paths refused, folders created); returns both."""
    out = prepare_output(opts.out, kind="file", option="--out")
    if opts.sml_stats is None:
        return out, None
    sml = Path(opts.sml_stats)
    taken = {p.resolve(): what for p, what in ((out, "--out"), (temp_path(out), "--out's temp file"),
                                               (lock_path_for(out), "--out's lock file"))}
    if sml.resolve() in taken:
        raise MaxentError(f"--sml-stats {sml}: is the same file as {taken[sml.resolve()]}; choose another name "
                          f"(e.g. {out.with_suffix('.sml.json')})")
    return out, prepare_output(sml, kind="file", option="--sml-stats")


def _frame_bytes(out: _Output, opts: ExportOptions) -> int:
    """Uncompressed bytes one frame adds to the file (labels and ROI, always compressed, counted uncompressed: an
    upper bound)."""
    fr = out.frame
    nbytes = out.logits.nbytes + fr.label.size + 256          # logits, label, image_id
    if fr.roi is not None:
        nbytes += fr.label.size
    if opts.store_images:
        nbytes += _downsize(fr.image, opts.image_max_side).size
    if out.mc is not None:      # mean (C), central (K-1 orders x C), entropy (1)
        nbytes += sum(a.size for a in out.mc.values()) * (2 if opts.mc_dtype == "float16" else 4)
    return nbytes


def _metadata_reserve(frames: int) -> int:
    """Room for HDF5's own metadata on top of the data: ~40 KiB + < 1 KiB per frame (measured)."""
    return (64 << 10) + (1 << 10) * frames


def _check_space(out: Path, frames: int, frame_bytes: int, compressed: bool) -> None:
    """Refuse up front an export that cannot fit (only without compression: compressed sizes are not known).
    A disk that fills up later anyway is caught by the writer (one line, no file left)."""
    if not compressed:
        check_free_space(out, frames * frame_bytes + _metadata_reserve(frames), option="--out")


# --------------------------------------------------------------------------------------------------------- processes
def _block(n: int, rank: int, world: int) -> tuple[int, int]:
    """Frames ``[start, stop)`` of ``rank``: contiguous blocks in frame order, the first ``n % world`` ranks one frame
    longer (so rank 0 always has frames when there are any)."""
    q, r = divmod(n, world)
    start = rank * q + min(rank, r)
    return start, start + q + (1 if rank < r else 0)


def part_path(out: Path, rank: int, world: int) -> Path:
    """The part file rank ``rank`` of ``world`` writes under torchrun: ``F.h5.part-R-of-N`` beside ``F.h5``."""
    return out.with_name(f"{out.name}.part-{rank}-of-{world}")


def _remove_parts(out: Path) -> None:
    """Remove every part file of ``out`` (and their temp files): after a merge, or left by a killed job."""
    for p in out.parent.glob(f"{glob.escape(out.name)}.part-*-of-*"):
        p.unlink(missing_ok=True)


def _gather(ctx: DistContext, obj: Any) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` in one process)."""
    if not ctx.distributed:
        return [obj]
    objs: list = [None] * ctx.world_size
    dist.all_gather_object(objs, obj)
    return objs


@dataclass
class _RankResult:
    """What one process exported: its frames' SML summaries (in frame order) and the file layout."""

    num_images: int                          # frames of the whole job
    num_classes: int                         # the classes (the network's outputs less an abstention channel)
    layout: _Layout
    shape: tuple[int, ...] | None = None     # stored logits (C, h, w) of a frame; None when the rank had no frame
    writer_kwargs: dict = field(default_factory=dict)
    summaries: list = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------- export
def export_logits(opts: ExportOptions) -> dict[str, Any]:
    """Run the export described by ``opts``; returns ``{"out", "num_images", "shape", "logits_resolution"}``
    (``shape``: the stored logits, (N, C, h, w)).

    ``--out`` (and ``--sml-stats``) are checked before any work and locked for the whole job (``F.h5.lock``): a
    second export into the same file is refused with one line naming this one. Under ``torchrun`` (``WORLD_SIZE >
    1``) the frames are split in contiguous blocks across the ranks (on CUDA one GPU each, ``cuda:LOCAL_RANK``);
    rank 0 holds the locks, each rank writes ``F.h5.part-R-of-N`` (atomically), then rank 0 copies the parts into
    ``F.h5`` in frame order, one frame at a time, and removes them; the SML statistics are replayed in frame order,
    so both equal a one-process export's (up to the forward's last bits between thread counts). Every rank ends with
    the same outcome (an error on one is the same line on all).

    Raises
    ------
    MaxentError / CocodagError
        Bad options or ``--out``, another job holding it, unreadable checkpoint or inputs, frames of different sizes,
        non-finite logits (naming the frame), a float16 MC block that overflows, not enough free space
        (``No space left on device: <file>``; nothing is left under ``--out`` or its temp name).
    """

    opts.validate()
    with _process_group(opts.device) as ctx:
        return _export_locked(opts, ctx)


@contextmanager
def _process_group(device: str) -> Iterator[DistContext]:
    """The job's :class:`maxent_train.train.DistContext`; under torchrun the process group is joined here and left at
    the end (on every outcome), unless the caller had joined it already."""
    owned = int(os.environ.get("WORLD_SIZE", 1)) > 1 and not (dist.is_available() and dist.is_initialized())
    ctx = setup_distributed(device)
    try:
        yield ctx
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()        # gloo's threads otherwise abort the interpreter's exit (SIGABRT)


def _export_locked(opts: ExportOptions, ctx: DistContext) -> dict[str, Any]:
    """Lock the outputs (rank 0), export, return the summary."""
    out = Path(opts.out)
    sml_path = Path(opts.sml_stats) if opts.sml_stats is not None else None
    with ExitStack() as stack:
        with ctx.one_outcome():
            if ctx.is_main:
                out, sml_path = _prepare_outputs(opts)
                for path, option in ((out, "--out"), (sml_path, "--sml-stats")):
                    if path is not None:
                        with disk_errors(path, option=option):
                            stack.enter_context(OutputLock(path, option=option))
                _remove_parts(out)      # a killed job's (we hold the lock: no running job writes them)
        res = _export_job(opts, ctx, out, sml_path)
    summary = {"out": str(out), "num_images": res.num_images, "shape": (res.num_images, *(res.shape or ())),
               "logits_resolution": res.layout.resolution}
    return summary if ctx.is_main else {**summary, "is_main": False}


def _export_job(opts: ExportOptions, ctx: DistContext, out: Path, sml_path: Path | None) -> _RankResult:
    """Every rank exports its block; then rank 0 merges the parts (several processes) and writes the SML stats."""
    try:
        with ctx.one_outcome():
            res = _export_rank(opts, ctx, out, with_sml=sml_path is not None)
        summaries = _gather(ctx, res.summaries)
        with ctx.one_outcome():
            if ctx.is_main and ctx.distributed:
                _merge_parts(out, ctx.world_size, res)
            if ctx.is_main and sml_path is not None:
                sml = SMLStats(res.num_classes, source=f"maxent-train export {out.name}")
                for state in itertools.chain.from_iterable(summaries):
                    sml.merge(state)
                with disk_errors(sml_path, option="--sml-stats"):
                    sml.save(sml_path)
    finally:
        if ctx.is_main and ctx.distributed:
            _remove_parts(out)
    return res


def _export_rank(opts: ExportOptions, ctx: DistContext, out: Path, with_sml: bool) -> _RankResult:
    """This process's share: model, its block of frames, free space, then its file (``out`` itself in one process,
    its part file under torchrun)."""
    model, meta = load_model_for_export(opts.checkpoint, opts.model, opts.num_classes, ctx.device, opts.model_kwargs)
    abstention, name = meta["abstention_channel"], str(meta["model"])
    num_classes = int(meta["num_classes"]) if abstention is None else abstention     # the classes
    if abstention is not None and opts.mc_samples and opts.moments_of == "probs":
        raise MaxentError(f"--moments-of probs: checkpoint {opts.checkpoint} has an abstention channel (output "
                          f"{abstention}), which is no class, so its class probabilities have one channel less than "
                          "its logits; use --moments-of logits")
    source = _open_source(opts)
    n = min(source.total, opts.limit) if opts.limit is not None else source.total
    if n == 0:
        raise MaxentError("no frames to export (empty input or --kinds without samples)")
    layout = _choose_layout(model, opts, name, quiet=not ctx.is_main)
    res = _RankResult(n, num_classes, layout)
    start, stop = _block(n, ctx.rank, ctx.world_size)
    if start == stop:
        return res
    frames = source.frames(start, stop)
    first = next(frames)
    head_only = hasattr(model, "forward_features") and hasattr(model, "forward_head")
    mc_attrs = dict(moments_of=opts.moments_of, mc_samples=opts.mc_samples, moment_order=opts.moment_order,
                    head_only=bool(head_only), seed=opts.seed)
    if opts.mc_samples:
        mc_attrs.update(_prepare_mc(model, first, opts, name, ctx.device))
    first_out = _compute(model, first, start, opts, layout, head_only, ctx.device, abstention)
    merged = n if (ctx.is_main and ctx.distributed) else 0       # rank 0 also writes the merged file
    _check_space(out, stop - start + merged, _frame_bytes(first_out, opts), compressed=opts.compression != "none")
    res.shape = first_out.logits.shape
    res.writer_kwargs = dict(dataset=source.dataset, model=name, checkpoint=str(opts.checkpoint),
                             attrs=_file_attrs(meta), compression=opts.compression, mc_attrs=mc_attrs,
                             mc_dtype=opts.mc_dtype, logits_dtype=opts.logits_dtype,
                             logits_resolution=layout.resolution, upsample_rule=layout.rule)
    target = part_path(out, ctx.rank, ctx.world_size) if ctx.distributed else out
    rest = (_compute(model, fr, i, opts, layout, head_only, ctx.device, abstention)
            for i, fr in enumerate(frames, start + 1))
    sml = SMLStats(num_classes) if with_sml else None
    with _progress(opts.progress and ctx.is_main, stop - start) as pbar, \
            LogitsWriter(target, num_classes, **res.writer_kwargs) as writer:
        for o in _checked(itertools.chain([first_out], rest)):
            if o.mc is not None:
                writer.set_mc_attrs(head_only=o.head_only)      # what actually ran
            writer.write(o.logits, o.frame.label, o.frame.name, roi=o.frame.roi, mc=o.mc,
                         image=_downsize(o.frame.image, opts.image_max_side) if opts.store_images else None)
            if sml is not None:
                res.summaries.append(_sml_summary(sml, o, layout, abstention))
            if pbar is not None:
                pbar.update(1)
    return res


def _checked(outputs: Iterator[_Output]) -> Iterator[_Output]:
    """The outputs, refused (one line) when a frame's size or its having a ROI differs from the first frame's."""
    hw: tuple[int, int] | None = None
    has_roi: bool | None = None
    for o in outputs:
        fr = o.frame
        h, w = fr.label.shape
        if hw is None:
            hw, has_roi = (h, w), fr.roi is not None
        elif (h, w) != hw:
            raise MaxentError(f"frame {fr.name} is {w}x{h} but earlier frames are {hw[1]}x{hw[0]}; "
                              f"logits.h5 holds frames of one size (export each size separately)")
        if (fr.roi is not None) != has_roi:
            raise MaxentError(f"frame {fr.name}: roi present for some frames only")
        yield o


def _merge_parts(out: Path, world: int, res: _RankResult) -> None:
    """Rank 0, once every rank has written its part: copy the parts into ``out`` in rank order (= frame order), one
    frame at a time (bounded memory), through the one writer (atomic: ``out`` appears when complete); each part is
    removed once copied, so the disk holds at most the merged file and the parts not yet copied."""
    blocks = [_block(res.num_images, r, world) for r in range(world)]
    parts = [part_path(out, r, world) for r, (start, stop) in enumerate(blocks) if start < stop]
    with LogitsFile(parts[0]) as lf:
        kwargs = {**res.writer_kwargs, "mc_attrs": lf.mc_attrs or res.writer_kwargs["mc_attrs"]}
        hw = lf.shape
    with LogitsWriter(out, res.num_classes, **kwargs) as writer:
        for part in parts:
            with LogitsFile(part) as lf:
                if lf.shape != hw:
                    raise MaxentError(f"frame {lf.image_ids[0]} is {lf.shape[1]}x{lf.shape[0]} but earlier frames "
                                      f"are {hw[1]}x{hw[0]}; logits.h5 holds frames of one size (export each size "
                                      "separately)")
                for i in range(len(lf)):
                    mc = lf.mc(i)
                    writer.write(lf.native_logits(i), lf.label(i), lf.image_ids[i], roi=lf.roi(i),
                                 image=lf.image(i), mc=None if mc is None else {k: mc[k] for k in MC_KEYS})
            part.unlink()


def _check_finite(l16: np.ndarray, frame: str, checkpoint: str) -> None:
    """Refuse non-finite logits where they appear (every later reader would refuse the file, naming no frame)."""
    if np.isfinite(l16).all():
        return
    bad = int((~np.isfinite(l16)).sum())
    kind = "NaN" if np.isnan(l16).any() else "inf (beyond float16's +-65504)"
    raise MaxentError(f"frame {frame}: the model's logits hold {bad} {kind} value(s) with checkpoint {checkpoint}; "
                      "check that checkpoint (non-finite weights, or a model whose logits overflow float16)")


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Any]:
    """A progress bar over ``total`` frames (:func:`cocodag.progress.progress_bar`; None when disabled), closed on
    exit."""
    if not enabled:
        yield None
        return
    bar = progress_bar(total=total, desc="export", unit="img", dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
