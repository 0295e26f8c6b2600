"""Logit / MC-dropout export to ``logits.h5`` (DESIGN §4.3, docs/formats.md §3).

Inputs: a cocodag dataset (``data``, shard kinds ``kinds``; labels trainId -> 0, 254 -> 1, 255 -> 255) or an
evaluation set (``images`` + ``preset`` via :mod:`cocodag.formats.evalsets`, full-resolution inference, optionally in
sliding windows). The file is written frame by frame through the one writer,
:class:`cocodag.formats.logits.LogitsWriter` (one frame per chunk, atomic: it appears only when complete), so it may
exceed RAM.

The optional MC block calls :func:`maxent_train.mc.mc_moments` once per frame with ``seed = seed + frame index``
(independent of batching), head-only when the model has ``forward_features``/``forward_head``. Before it samples,
:func:`maxent_train.mc.prepare_mc_dropout` checks on the first frame that some dropout layer reaches the logits and
refuses otherwise (the moments would be all zero); ``mc_dropout=P`` (``--mc-dropout P``) first inserts test-time
``nn.Dropout2d(P)`` before the final classifier, a deviation from the trained network recorded in the ``mc`` group's
attributes (``mc_dropout``, ``mc_dropout_at``). ``--mc-samples 1`` is refused (no moments exist).

The model comes from the checkpoint's metadata (``model``, ``num_classes``, ``model_kwargs``) or, for a released file
without it, from ``model`` / ``num_classes`` / ``model_kwargs`` (``--model``, ``--num-classes``, ``--model-kwargs``).

The job locks ``--out`` (``F.h5.lock``) and ``--sml-stats`` for its whole run, checks both paths before any work,
and checks the free space up front (uncompressed size) and before every frame, so that a full disk ends in one line
(``No space left on device: F.h5``) with neither ``F.h5`` nor ``F.h5.tmp`` left behind.

``sml_stats`` feeds the *stored* (float16) logits of each frame to :class:`cocodag.formats.sml_stats.SMLStats`, so the
JSON equals what ``oodscore fit-sml`` computes from the written file.
"""
from __future__ import annotations

import itertools
import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from cocodag.atomic import temp_path
from cocodag.device import resolve_device
from cocodag.formats.logits import MC_KEYS, LogitsWriter, upsample
from cocodag.formats.sml_stats import SMLStats
from cocodag.labels import IGNORE_ID, NUM_CLASSES, OOD_ID
from cocodag.lock import OutputLock, lock_path_for
from cocodag.outputs import check_free_space, disk_errors, prepare_output

from . import MaxentError, __version__
from .data import normalize


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
    moments_of: str = "logits"
    mc_dtype: str = "float32"
    store_images: bool = False
    image_max_side: int = 512
    limit: int | None = None
    compression: str = "none"
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
        if self.moments_of not in ("logits", "probs"):
            raise MaxentError(f"--moments-of: expected logits or probs, got {self.moments_of!r}")
        if self.mc_dtype not in ("float32", "float16"):
            raise MaxentError(f"--mc-dtype: expected float32 or float16, got {self.mc_dtype!r}")
        if self.compression not in ("none", "lzf", "gzip"):
            raise MaxentError(f"--compression: expected none, lzf or gzip, got {self.compression!r}")
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
    frames: Iterator[_Frame]
    dataset: str                 # the file's ``dataset`` attribute


# --------------------------------------------------------------------------------------------------------- model
def load_model_for_export(checkpoint: str | Path, model: str | None = None, num_classes: int | None = None,
                          device: torch.device | str = "cpu", model_kwargs: dict | None = None,
                          option: str = "--checkpoint") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the model named in the checkpoint's metadata (or ``model``) and load its weights strictly.

    The model's options are the checkpoint's recorded ``model_kwargs`` (when it names the same model) updated by
    ``model_kwargs``. A raw released file (no metadata) needs ``model`` (``--model``); its class count is
    ``num_classes`` or 19. Returns ``(model in eval mode on device, metadata)``; the metadata's ``model``,
    ``num_classes`` and ``model_kwargs`` are what was built.
    """
    from .models import create_model, load_state, read_checkpoint

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
    net = create_model(name, num_classes=nc, **kwargs)     # e.g. a dropout rate: not part of the state_dict
    load_state(net, state, path, strict=True, name=name)
    meta.update(model=name, num_classes=nc, model_kwargs=kwargs)
    return net.to(device).eval(), meta


# --------------------------------------------------------------------------------------------------------- sources
def _open_source(opts: ExportOptions) -> _Source:
    if opts.data is not None:
        return _shard_frames(opts.data, opts.kinds, opts.batch_size)
    return _evalset_frames(opts.images, opts.preset)


def _shard_frames(data: str, kinds: tuple[str, ...], chunk: int) -> _Source:
    """Frames of the shards of ``kinds`` (in that order), read ``chunk`` samples per shard access."""
    from cocodag.formats.shards import KINDS, open_dataset

    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise MaxentError(f"--kinds: expected a comma-separated subset of {', '.join(KINDS)}, got {','.join(kinds)!r}")
    ds = open_dataset(data, verify_checksums=True, kinds=kinds)
    shards = [s for k in kinds for s in ds.shards_of(k)]
    lut = np.full(256, IGNORE_ID, np.uint8)          # shard trainIds -> logits.h5's 0 (ID) / 1 (OOD) / 255 (void)
    lut[: int(ds.manifest.get("num_classes", NUM_CLASSES))] = 0
    lut[int(ds.manifest.get("ood_id", OOD_ID))] = 1

    def gen() -> Iterator[_Frame]:
        for info in shards:
            with ds.open_shard(info) as sh:
                frames = sh.read_meta()["frame"]
                for a in range(0, info.num_samples, chunk):
                    images, labels = sh.read(a, min(a + chunk, info.num_samples))
                    for j in range(len(images)):
                        i = a + j
                        yield _Frame(f"{info.path.stem}/{i:05d}/{frames[i]}", images[j], lut[labels[j]])

    return _Source(sum(s.num_samples for s in shards), gen(), "cocodag")


def _evalset_frames(root: str, preset_name: str) -> _Source:
    """Frames of an evaluation set at full resolution (labels already 0/1/255 via the preset)."""
    from cocodag.formats.evalsets import get_preset
    from cocodag.imageio import read_rgb

    preset = get_preset(preset_name)
    items = preset.find(root)
    if not items:
        raise MaxentError(f"--images {root}: preset {preset_name} found no frames")

    def gen() -> Iterator[_Frame]:
        for it in items:
            rgb = read_rgb(it.image_path)
            h, w = rgb.shape[:2]
            label = (preset.load_label(it.label_path) if it.label_path is not None
                     else np.full((h, w), IGNORE_ID, np.uint8))   # unlabelled: all void
            if label.shape != (h, w):
                raise MaxentError(f"{it.label_path}: label is {label.shape[1]}x{label.shape[0]}, image "
                                  f"{it.image_path.name} is {w}x{h}")
            yield _Frame(it.name, rgb, label, preset.load_roi(it))

    return _Source(len(items), gen(), preset_name)


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
            out = upsample(model(tile).float(), tile.shape[-2:])
            if acc is None:
                acc = torch.zeros((x.shape[0], out.shape[1], h, w), device=x.device)
            acc[..., y0:y0 + tile.shape[-2], x0:x0 + tile.shape[-1]] += out
            count[..., y0:y0 + tile.shape[-2], x0:x0 + tile.shape[-1]] += 1
    return acc / count


def _at_size(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring an MC tensor (..., h, w) to ``size`` with the one upsampling rule (leading axes become channels)."""
    if tuple(t.shape[-2:]) == size:
        return t
    lead = t.shape[:-2]
    return upsample(t.reshape(1, -1, *t.shape[-2:]).float(), size).reshape(*lead, *size)


def _mc_block(model: torch.nn.Module, x: torch.Tensor, opts: ExportOptions, index: int, head_only: bool,
              size: tuple[int, int]) -> tuple[dict[str, np.ndarray], bool]:
    """MC-dropout moments of one frame: ``({mean, central, entropy} float32 at ``size``, head_only that ran)``.

    Seeded with ``opts.seed + index`` so a frame's masks do not depend on batching or on the other frames.
    """
    from .mc import mc_moments

    mom = mc_moments(model, x, samples=opts.mc_samples, order=opts.moment_order, moments_of=opts.moments_of,
                     head_only=head_only, seed=opts.seed + index)
    arrays = {k: _at_size(mom[k], size)[0].cpu().numpy() for k in MC_KEYS}
    return arrays, bool(mom.get("head_only", head_only))


def _file_attrs(meta: dict[str, Any]) -> dict[str, Any]:
    """Root attributes export adds: our version, and the model options when there are any (JSON)."""
    import json

    attrs: dict[str, Any] = {"maxent_train": __version__}
    if meta.get("model_kwargs"):
        attrs["model_kwargs"] = json.dumps(meta["model_kwargs"], sort_keys=True)
    return attrs


def _prepare_mc(model: torch.nn.Module, first: _Frame, opts: ExportOptions, name: str,
                device: torch.device) -> dict[str, Any]:
    """Before any sampling: check on the first frame that dropout reaches the logits (or insert ``--mc-dropout``
    test-time dropout first); returns the extra mc attrs (``mc_dropout``, ``mc_dropout_at``) when inserted."""
    from .mc import prepare_mc_dropout

    x = normalize(torch.from_numpy(np.ascontiguousarray(first.image))[None].to(device))
    where = prepare_mc_dropout(model, x, opts.mc_dropout, name=name)
    if where is None:
        return {}
    return {"mc_dropout": float(opts.mc_dropout), "mc_dropout_at": where}


def _downsize(image: np.ndarray, max_side: int) -> np.ndarray:
    import cv2

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


def _frame_bytes(num_classes: int, first: _Frame, opts: ExportOptions) -> int:
    """Uncompressed bytes one frame adds to the file."""
    h, w = first.label.shape
    nbytes = num_classes * h * w * 2 + h * w + 256          # logits float16, label, image_id
    if first.roi is not None:
        nbytes += h * w
    if opts.store_images:
        nbytes += _downsize(first.image, opts.image_max_side).size
    if opts.mc_samples:      # mean (C), central (K-1 orders x C), entropy (1)
        nbytes += (num_classes * opts.moment_order + 1) * h * w * (2 if opts.mc_dtype == "float16" else 4)
    return nbytes


def _metadata_reserve(frames: int) -> int:
    """Room for HDF5's own metadata on top of the data: ~40 KiB + < 1 KiB per frame (measured)."""
    return (64 << 10) + (1 << 10) * frames


def _check_space(out: Path, frames: int, frame_bytes: int, compressed: bool) -> None:
    """Refuse up front an export that cannot fit (only without compression: compressed sizes are not known).
    A disk that fills up later anyway is caught by the writer (one line, no file left)."""
    if not compressed:
        check_free_space(out, frames * frame_bytes + _metadata_reserve(frames), option="--out")


# --------------------------------------------------------------------------------------------------------- export
def export_logits(opts: ExportOptions) -> dict[str, Any]:
    """Run the export described by ``opts``; returns ``{"out", "num_images", "shape"}``.

    ``--out`` (and ``--sml-stats``) are checked before any work and locked for the whole job (``F.h5.lock``): a
    second export into the same file is refused with one line naming this one. Under ``torchrun`` only rank 0
    exports (the others return at once: one job, one writer).

    Raises
    ------
    MaxentError / CocodagError
        Bad options or ``--out``, another job holding it, unreadable checkpoint or inputs, frames of different sizes,
        non-finite logits (naming the frame), a float16 MC block that overflows, not enough free space
        (``No space left on device: <file>``; nothing is left under ``--out`` or its temp name).
    """
    opts.validate()
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and int(os.environ.get("RANK", 0)) != 0:
        return {"out": str(opts.out), "num_images": 0, "shape": None, "is_main": False}
    out, sml_path = _prepare_outputs(opts)
    with ExitStack() as stack:
        for path, option in ((out, "--out"), (sml_path, "--sml-stats")):
            if path is not None:
                with disk_errors(path, option=option):
                    stack.enter_context(OutputLock(path, option=option))
        return _export_locked(opts, out, sml_path)


def _export_locked(opts: ExportOptions, out: Path, sml_path: Path | None) -> dict[str, Any]:
    """The export itself, once its outputs are checked and locked: model, frames, free space, then the file."""
    device = resolve_device(opts.device)
    model, meta = load_model_for_export(opts.checkpoint, opts.model, opts.num_classes, device, opts.model_kwargs)
    num_classes = int(meta["num_classes"])
    source = _open_source(opts)
    n = min(source.total, opts.limit) if opts.limit is not None else source.total
    if n == 0:
        raise MaxentError("no frames to export (empty input or --kinds without samples)")
    frames = _take(source.frames, n)
    first = next(frames)
    _check_space(out, n, _frame_bytes(num_classes, first, opts), compressed=opts.compression != "none")

    head_only = hasattr(model, "forward_features") and hasattr(model, "forward_head")
    mc_attrs = dict(moments_of=opts.moments_of, mc_samples=opts.mc_samples, moment_order=opts.moment_order,
                    head_only=bool(head_only), seed=opts.seed)
    if opts.mc_samples:
        mc_attrs.update(_prepare_mc(model, first, opts, str(meta["model"]), device))
    sml = SMLStats(num_classes, source=f"maxent-train export {out.name}") if sml_path is not None else None
    with _progress(opts.progress, n) as pbar, LogitsWriter(
            out, num_classes, dataset=source.dataset, model=str(meta["model"]), checkpoint=str(opts.checkpoint),
            attrs=_file_attrs(meta), compression=opts.compression, mc_attrs=mc_attrs,
            mc_dtype=opts.mc_dtype) as writer:
        hw = _write_frames(writer, itertools.chain([first], frames), model, device, opts, head_only, sml, pbar)
    if sml is not None:
        with disk_errors(sml_path, option="--sml-stats"):
            sml.save(sml_path)
    return {"out": str(out), "num_images": n, "shape": (n, num_classes, *hw)}


def _write_frames(writer: LogitsWriter, frames: Iterator[_Frame], model: torch.nn.Module, device: torch.device,
                  opts: ExportOptions, head_only: bool, sml: SMLStats | None, pbar) -> tuple[int, int]:
    """Forward every frame and append it (logits, label, roi, image, MC block) to ``writer``; returns (H, W)."""
    window = opts.window if opts.sliding_window else None
    hw: tuple[int, int] | None = None
    has_roi: bool | None = None
    for i, fr in enumerate(frames):
        h, w = fr.label.shape
        if hw is None:
            hw, has_roi = (h, w), fr.roi is not None
        elif (h, w) != hw:
            raise MaxentError(f"frame {fr.name} is {w}x{h} but earlier frames are {hw[1]}x{hw[0]}; "
                              f"logits.h5 holds frames of one size (export each size separately)")
        if (fr.roi is not None) != has_roi:
            raise MaxentError(f"frame {fr.name}: roi present for some frames only")
        x = normalize(torch.from_numpy(np.ascontiguousarray(fr.image))[None].to(device))
        model.eval()      # mc_moments switches dropout on; plain logits are deterministic
        l16 = upsample(predict_logits(model, x, window, opts.stride), (h, w))[0].cpu().numpy().astype(np.float16)
        _check_finite(l16, fr.name, opts.checkpoint)
        mc = None
        if opts.mc_samples:
            mc, ran_head_only = _mc_block(model, x, opts, i, head_only, (h, w))
            writer.set_mc_attrs(head_only=ran_head_only)      # what actually ran
        writer.write(l16, fr.label, fr.name, roi=fr.roi, mc=mc,
                     image=_downsize(fr.image, opts.image_max_side) if opts.store_images else None)
        if sml is not None:
            sml.partial_fit(l16)      # the stored float16 values, as `oodscore fit-sml` reads them
        if pbar is not None:
            pbar.update(1)
    return hw


def _check_finite(l16: np.ndarray, frame: str, checkpoint: str) -> None:
    """Refuse non-finite logits where they appear (every later reader would refuse the file, naming no frame)."""
    if np.isfinite(l16).all():
        return
    bad = int((~np.isfinite(l16)).sum())
    kind = "NaN" if np.isnan(l16).any() else "inf (beyond float16's +-65504)"
    raise MaxentError(f"frame {frame}: the model's logits hold {bad} {kind} value(s) with checkpoint {checkpoint}; "
                      "check that checkpoint (non-finite weights, or a model whose logits overflow float16)")


@contextmanager
def _progress(enabled: bool, total: int):
    """A tqdm bar over ``total`` frames (None when disabled), closed on exit."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc="export", unit="img", dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def _take(it: Iterator[_Frame], n: int) -> Iterator[_Frame]:
    for i, fr in enumerate(it):
        if i >= n:
            return
        yield fr
