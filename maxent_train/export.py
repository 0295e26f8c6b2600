"""Logit / MC-dropout export to ``logits.h5`` (DESIGN §4.3, docs/formats.md §3).

Inputs: a cocodag dataset (``data``, shard kinds ``kinds``; labels trainId -> 0, 254 -> 1, 255 -> 255) or an
evaluation set (``images`` + ``preset`` via :mod:`cocodag.formats.evalsets`, full-resolution inference, optionally in sliding
windows). Every dataset is chunked one frame per chunk and filled frame by frame, so the file may exceed RAM; it is
written to ``<out>.tmp`` and renamed when complete.

The optional MC block calls :func:`maxent_train.mc.mc_moments` once per frame with ``seed = seed + frame index``
(independent of batching), head-only when the model has ``forward_features``/``forward_head``.
``sml_stats`` accumulates, per predicted class, count / mean / M2 of the max logit of the *stored* (float16) logits,
so the JSON equals what ``oodscore fit-sml`` computes from the written file; it uses the same JSON layout as
``oodscore``'s ``SMLStats.save`` (without importing oodscore).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from . import MaxentError, __version__
from .data import normalize
from .train import resolve_device

LOGITS_FORMAT = "cocodag-logits"
LOGITS_VERSION = 1
SML_STATS_FORMAT = "oodscore-sml-stats"   # the JSON oodscore's SMLStats.load reads (docs: oodscore/scores/sml.py)
SML_STATS_VERSION = 1


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
    batch_size: int = 4
    sliding_window: bool = False
    window: int = 1024
    stride: int = 512
    mc_samples: int = 0
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


@dataclass
class _Frame:
    name: str
    image: np.ndarray            # (H, W, 3) uint8 RGB
    label: np.ndarray            # (H, W) uint8 0/1/255
    roi: np.ndarray | None = None


# --------------------------------------------------------------------------------------------------------- model
def load_model_for_export(checkpoint: str | Path, model: str | None = None, num_classes: int | None = None,
                          device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the model named in the checkpoint's metadata (or ``model``) and load its weights strictly.

    Returns ``(model in eval mode on device, metadata)``.
    """
    from .models import create_model, load_checkpoint
    from .models._helpers import load_file

    path = Path(checkpoint)
    if not path.is_file():
        raise MaxentError(f"--checkpoint {path}: file does not exist")
    obj = load_file(path)
    meta = dict(obj.get("metadata") or {}) if isinstance(obj, dict) else {}
    name = model or meta.get("model")
    if not name:
        raise MaxentError(f"--checkpoint {path}: has no metadata naming the model; pass --model NAME")
    if num_classes is not None and meta.get("num_classes") not in (None, num_classes):
        raise MaxentError(f"--num-classes {num_classes} differs from the checkpoint's {meta['num_classes']}")
    nc = int(num_classes or meta.get("num_classes") or 19)
    kwargs = dict(meta.get("model_kwargs") or {}) if name == meta.get("model") else {}
    net = create_model(name, num_classes=nc, **kwargs)     # e.g. a dropout rate: not part of the state_dict
    load_checkpoint(net, path, strict=True)
    meta.update(model=name, num_classes=nc)
    return net.to(device).eval(), meta


# --------------------------------------------------------------------------------------------------------- sources
def _shard_frames(data: str, kinds: tuple[str, ...], chunk: int) -> tuple[int, tuple[int, int], Iterator[_Frame]]:
    from cocodag.formats.shards import KINDS, open_dataset

    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise MaxentError(f"--kinds: expected a comma-separated subset of {', '.join(KINDS)}, got {','.join(kinds)!r}")
    ds = open_dataset(data, verify_checksums=True, kinds=kinds)
    shards = [s for k in kinds for s in ds.shards_of(k)]
    total = sum(s.num_samples for s in shards)
    size = ds.crop_size
    lut = np.full(256, 255, np.uint8)
    lut[: int(ds.manifest.get("num_classes", 19))] = 0
    lut[int(ds.manifest.get("ood_id", 254))] = 1

    def gen() -> Iterator[_Frame]:
        for info in shards:
            with ds.open_shard(info) as sh:
                frames = sh.read_meta()["frame"]
                for a in range(0, info.num_samples, chunk):
                    images, labels = sh.read(a, min(a + chunk, info.num_samples))
                    for j in range(len(images)):
                        i = a + j
                        yield _Frame(f"{info.path.stem}/{i:05d}/{frames[i]}", images[j], lut[labels[j]])

    return total, (size, size), gen()


def _evalset_frames(root: str, preset_name: str) -> tuple[int, tuple[int, int] | None, Iterator[_Frame], Any]:
    import cv2

    from cocodag.formats.evalsets import get_preset

    preset = get_preset(preset_name)
    items = preset.find(root)
    if not items:
        raise MaxentError(f"--images {root}: preset {preset_name} found no frames")

    def gen() -> Iterator[_Frame]:
        for it in items:
            bgr = cv2.imread(str(it.image_path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise MaxentError(f"{it.image_path}: cannot decode image")
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            h, w = rgb.shape[:2]
            label = (preset.load_label(it.label_path) if it.label_path is not None
                     else np.full((h, w), 255, np.uint8))
            if label.shape != (h, w):
                raise MaxentError(f"{it.label_path}: label is {label.shape[1]}x{label.shape[0]}, image "
                                  f"{it.image_path.name} is {w}x{h}")
            roi = preset.load_roi(it)
            yield _Frame(it.name, rgb, label, roi)

    return len(items), None, gen(), preset


# --------------------------------------------------------------------------------------------------------- inference
@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, window: int | None = None,
                   stride: int | None = None) -> torch.Tensor:
    """Logits (N, C, H, W) float32 at input size; with ``window`` the image is covered by overlapping
    ``window``×``window`` tiles (last tile aligned to the border) whose logits are averaged where they overlap."""
    h, w = x.shape[-2:]
    if window is None or (h <= window and w <= window):
        out = model(x).float()
        return out if out.shape[-2:] == (h, w) else F.interpolate(out, size=(h, w), mode="bilinear",
                                                                   align_corners=False)
    if stride is None or stride <= 0 or stride > window:
        raise MaxentError(f"--stride must be in 1..--window ({window}), got {stride}")

    def starts(n: int) -> list[int]:
        if n <= window:
            return [0]
        s = list(range(0, n - window + 1, stride))
        if s[-1] != n - window:
            s.append(n - window)
        return s

    acc = None
    count = torch.zeros((1, 1, h, w), device=x.device)
    for y0 in starts(h):
        for x0 in starts(w):
            tile = x[..., y0:y0 + window, x0:x0 + window]
            out = model(tile).float()
            if out.shape[-2:] != tile.shape[-2:]:
                out = F.interpolate(out, size=tile.shape[-2:], mode="bilinear", align_corners=False)
            if acc is None:
                acc = torch.zeros((x.shape[0], out.shape[1], h, w), device=x.device)
            acc[..., y0:y0 + tile.shape[-2], x0:x0 + tile.shape[-1]] += out
            count[..., y0:y0 + tile.shape[-2], x0:x0 + tile.shape[-1]] += 1
    return acc / count


class _SMLAccumulator:
    """Per predicted class count / mean / M2 of the max logit (Chan et al. merge, float64)."""

    def __init__(self, num_classes: int) -> None:
        self.count = np.zeros(num_classes, np.int64)
        self.mean = np.zeros(num_classes)
        self.m2 = np.zeros(num_classes)
        self.n_images = 0

    def update(self, logits: np.ndarray) -> None:
        """logits (C, H, W) (the stored float16 values)."""
        c = logits.shape[0]
        flat = logits.reshape(c, -1)
        pred = flat.argmax(0)
        lmax = flat.max(0).astype(np.float64)
        cnt = np.bincount(pred, minlength=c)
        mean_b = np.bincount(pred, weights=lmax, minlength=c) / np.maximum(cnt, 1)
        m2_b = np.bincount(pred, weights=(lmax - mean_b[pred]) ** 2, minlength=c)
        n_a, n_b = self.count.astype(np.float64), cnt.astype(np.float64)
        n = np.maximum(n_a + n_b, 1.0)
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / n
        self.m2 = self.m2 + m2_b + delta * delta * n_a * n_b / n
        self.count += cnt
        self.n_images += 1

    def to_dict(self, source: str) -> dict[str, Any]:
        classes = {}
        for c in range(len(self.count)):
            n = int(self.count[c])
            var = self.m2[c] / (n - 1) if n > 1 else None
            classes[str(c)] = {"mean": float(self.mean[c]) if n > 0 else None,
                               "std": math.sqrt(var) if var is not None else None, "var": var, "count": n}
        return {"format": SML_STATS_FORMAT, "version": SML_STATS_VERSION, "num_classes": len(self.count),
                "n_images": self.n_images, "n_pixels": int(self.count.sum()), "source": source,
                "counts_known": True, "classes": classes}


def _downsize(image: np.ndarray, max_side: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    s = max_side / max(h, w)
    if s >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------------------------------------- export
def export_logits(opts: ExportOptions) -> dict[str, Any]:
    """Run the export described by ``opts``; returns ``{"out", "num_images", "shape"}``.

    Raises
    ------
    MaxentError / CocodagError
        Bad options, unreadable checkpoint or inputs, frames of different sizes.
    """
    if (opts.data is None) == (opts.images is None):
        raise MaxentError("give exactly one input: --data DIR (cocodag dataset) or --images DIR --preset P")
    if opts.mc_samples < 0:
        raise MaxentError(f"--mc-samples must be >= 0, got {opts.mc_samples}")
    if opts.mc_samples and opts.moment_order < 2:
        raise MaxentError(f"--moment-order must be >= 2, got {opts.moment_order}")
    if opts.mc_samples and opts.sliding_window:
        raise MaxentError("--mc-samples with --sliding-window is not supported (moments of averaged tiles are not "
                          "the moments of the frame); run MC export at full resolution")
    if opts.moments_of not in ("logits", "probs"):
        raise MaxentError(f"--moments-of: expected logits or probs, got {opts.moments_of!r}")
    if opts.mc_dtype not in ("float32", "float16"):
        raise MaxentError(f"--mc-dtype: expected float32 or float16, got {opts.mc_dtype!r}")
    if opts.compression not in ("none", "lzf", "gzip"):
        raise MaxentError(f"--compression: expected none, lzf or gzip, got {opts.compression!r}")
    if opts.limit is not None and opts.limit <= 0:
        raise MaxentError(f"--limit must be > 0, got {opts.limit}")
    if opts.batch_size <= 0:
        raise MaxentError(f"--batch-size must be > 0, got {opts.batch_size}")
    device = resolve_device(opts.device)
    model, meta = load_model_for_export(opts.checkpoint, opts.model, opts.num_classes, device)
    num_classes = int(meta["num_classes"])

    if opts.data is not None:
        total, size, frames = _shard_frames(opts.data, opts.kinds, opts.batch_size)
        dataset_name, preset = "cocodag", None
    else:
        total, size, frames, preset = _evalset_frames(opts.images, opts.preset)
        dataset_name = opts.preset
    n = min(total, opts.limit) if opts.limit is not None else total
    if n == 0:
        raise MaxentError("no frames to export (empty input or --kinds without samples)")

    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    ck: dict[str, Any] = {}
    if opts.compression == "lzf":
        ck = {"compression": "lzf"}
    elif opts.compression == "gzip":
        ck = {"compression": "gzip", "compression_opts": 1}
    mc_np_dtype = np.float16 if opts.mc_dtype == "float16" else np.float32
    sml = _SMLAccumulator(num_classes) if opts.sml_stats else None
    head_only = hasattr(model, "forward_features") and hasattr(model, "forward_head")
    window = opts.window if opts.sliding_window else None

    pbar = None
    if opts.progress:
        from tqdm import tqdm

        pbar = tqdm(total=n, desc="export", unit="img", dynamic_ncols=True)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(format=LOGITS_FORMAT, version=LOGITS_VERSION, num_classes=num_classes,
                           dataset=dataset_name, model=str(meta["model"]), checkpoint=str(opts.checkpoint),
                           maxent_train=__version__)
            dsets: dict[str, h5py.Dataset] = {}
            hw: tuple[int, int] | None = None
            has_roi: bool | None = None
            for i, fr in enumerate(_take(frames, n)):
                h, w = fr.label.shape
                if hw is None:
                    hw = (h, w)
                    has_roi = fr.roi is not None
                    dsets = _create_datasets(f, n, num_classes, hw, fr, opts, ck, mc_np_dtype, head_only)
                elif (h, w) != hw:
                    raise MaxentError(f"frame {fr.name} is {w}x{h} but earlier frames are {hw[1]}x{hw[0]}; "
                                      f"logits.h5 holds frames of one size (export each size separately)")
                if (fr.roi is not None) != has_roi:
                    raise MaxentError(f"frame {fr.name}: roi present for some frames only")
                x = normalize(torch.from_numpy(np.ascontiguousarray(fr.image))[None].to(device))
                model.eval()      # mc_moments switches dropout on; plain logits are deterministic
                logits = predict_logits(model, x, window, opts.stride)[0]
                if logits.shape[-2:] != (h, w):
                    logits = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
                l16 = logits.cpu().numpy().astype(np.float16)
                dsets["logits"][i] = l16
                dsets["label"][i] = fr.label
                dsets["image_id"][i] = fr.name
                if fr.roi is not None:
                    dsets["roi"][i] = fr.roi
                if opts.store_images:
                    dsets["image"][i] = _downsize(fr.image, opts.image_max_side)
                if sml is not None:
                    sml.update(l16)
                if opts.mc_samples:
                    from .mc import mc_moments

                    mom = mc_moments(model, x, samples=opts.mc_samples, order=opts.moment_order,
                                     moments_of=opts.moments_of, head_only=head_only, seed=opts.seed + i)
                    f["mc"].attrs["head_only"] = bool(mom.get("head_only", head_only))   # what actually ran
                    mean, central, ent = (_at_size(mom["mean"], (h, w)), _at_size(mom["central"], (h, w)),
                                          _at_size(mom["entropy"], (h, w)))
                    for key, t in (("mc/mean", mean), ("mc/central", central), ("mc/entropy", ent)):
                        a = t[0].cpu().numpy().astype(mc_np_dtype)
                        if mc_np_dtype == np.float16 and not np.isfinite(a).all():
                            # high-order moments of logits easily pass float16's 65504 (a deviation of 16 -> 16^4)
                            raise MaxentError(f"{fr.name}: {key} overflows float16 "
                                              f"({int((~np.isfinite(a)).sum())} values); use --mc-dtype float32 "
                                              f"or --moments-of probs")
                        dsets[key][i] = a
                if pbar is not None:
                    pbar.update(1)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if pbar is not None:
            pbar.close()
    if sml is not None:
        spath = Path(opts.sml_stats)
        stmp = spath.with_name(spath.name + ".tmp")
        stmp.write_text(json.dumps(sml.to_dict(source=f"maxent-train export {out.name}"), indent=2))
        os.replace(stmp, spath)
    return {"out": str(out), "num_images": n, "shape": (n, num_classes, *hw)}


def _take(it: Iterator[_Frame], n: int) -> Iterator[_Frame]:
    for i, fr in enumerate(it):
        if i >= n:
            return
        yield fr


def _at_size(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring an MC tensor (..., h, w) to ``size`` (bilinear) if the model returned another size."""
    if tuple(t.shape[-2:]) == size:
        return t
    lead = t.shape[:-2]
    flat = t.reshape(1, -1, *t.shape[-2:]).float()
    return F.interpolate(flat, size=size, mode="bilinear", align_corners=False).reshape(*lead, *size)


def _create_datasets(f: h5py.File, n: int, num_classes: int, hw: tuple[int, int], first: _Frame,
                     opts: ExportOptions, ck: dict, mc_dtype, head_only: bool) -> dict[str, h5py.Dataset]:
    h, w = hw
    d: dict[str, h5py.Dataset] = {
        "logits": f.create_dataset("logits", (n, num_classes, h, w), np.float16, chunks=(1, num_classes, h, w), **ck),
        "label": f.create_dataset("label", (n, h, w), np.uint8, chunks=(1, h, w), **ck),
        "image_id": f.create_dataset("image_id", (n,), h5py.string_dtype()),
    }
    if first.roi is not None:
        d["roi"] = f.create_dataset("roi", (n, h, w), np.uint8, chunks=(1, h, w), **ck)
    if opts.store_images:
        sh, sw = _downsize(first.image, opts.image_max_side).shape[:2]
        d["image"] = f.create_dataset("image", (n, sh, sw, 3), np.uint8, chunks=(1, sh, sw, 3), **ck)
    if opts.mc_samples:
        g = f.create_group("mc")
        k = opts.moment_order
        g.attrs.update(moments_of=opts.moments_of, mc_samples=opts.mc_samples, moment_order=k,
                       head_only=bool(head_only), seed=opts.seed)
        d["mc/mean"] = g.create_dataset("mean", (n, num_classes, h, w), mc_dtype, chunks=(1, num_classes, h, w), **ck)
        d["mc/central"] = g.create_dataset("central", (n, k - 1, num_classes, h, w), mc_dtype,
                                           chunks=(1, k - 1, num_classes, h, w), **ck)
        d["mc/entropy"] = g.create_dataset("entropy", (n, h, w), mc_dtype, chunks=(1, h, w), **ck)
    return d
