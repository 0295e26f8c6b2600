"""Loader benchmark: device-ready 480x480 batches from cocodag shards vs the on-the-fly pipeline of meta-ood/PEBAL.

Both pipelines deliver the same thing, a normalized float32 batch ``(8, 3, 480, 480)`` + int64 labels on the target
device, and run in the same process, one after the other, on inputs this script generates itself:

* **on-the-fly** (what meta-ood / PEBAL do per sample): decode a 2048x1024 PNG frame and its labelIds PNG, map
  labelIds -> trainIds, decode a COCO-style proxy image + mask PNG, paste the object (label 254), random-crop 480,
  random flip, to tensor, ImageNet-normalize on the CPU, collate, copy to the device.
* **shards** (``maxent_train.data``): read uint8 crops from ``cocodag`` shards (contiguous reads), copy uint8 to the
  device, flip + normalize there.

Usage::

    python bench/loader.py                       # CPU, 0 workers, prints samples/s and the ratio
    python bench/loader.py --device cuda --workers 4 --frames 16 --samples 400

The inputs are synthetic street frames (``cocodag.demo_world.render_street``) at the real Cityscapes resolution
written as real PNGs, so the decode cost is the real one (PNG compression of synthetic images differs somewhat from
photos; photos are usually *slower* to decode).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cocodag.formats.shards import ShardWriter, open_dataset  # noqa: E402
from cocodag.imageio import decode_image, read_rgb  # noqa: E402
from cocodag.labels import LABEL_ID_TO_TRAIN_ID, OOD_ID  # noqa: E402
from maxent_train.data import IMAGENET_MEAN, IMAGENET_STD, DeviceAugment, MixPlan, ShardLoader  # noqa: E402

FRAME_W, FRAME_H = 2048, 1024


# --------------------------------------------------------------------------------------------------------- inputs
def _frame(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    try:
        from cocodag.demo_world import render_street

        return render_street(rng, FRAME_W, FRAME_H)
    except ImportError:   # older checkout: smooth random image + blocky labels
        small = rng.integers(0, 256, (FRAME_H // 32, FRAME_W // 32, 3), dtype=np.uint8)
        rgb = cv2.resize(small, (FRAME_W, FRAME_H), interpolation=cv2.INTER_CUBIC)
        lab = cv2.resize(rng.integers(0, 34, (8, 16), dtype=np.uint8), (FRAME_W, FRAME_H),
                         interpolation=cv2.INTER_NEAREST)
        return rgb, lab


def _proxy(rng: np.random.Generator, size: int = 640) -> tuple[np.ndarray, np.ndarray]:
    """A COCO-like proxy image with one polygon object (mask 1)."""
    img = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 3)
    c = rng.uniform(size * 0.3, size * 0.7, 2)
    ang = np.sort(rng.uniform(0, 2 * np.pi, 9))
    r = rng.uniform(size * 0.1, size * 0.3, 9)
    poly = np.stack([c[0] + r * np.cos(ang), c[1] + r * np.sin(ang)], 1).astype(np.int32)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [poly], 1)
    return img, mask


def generate_inputs(root: Path, frames: int, proxies: int, samples: int, crop: int, seed: int,
                    compression: str) -> tuple[list, list, Path]:
    """PNG frames + labels, proxy images + masks, and a shard dataset of ``samples`` crops."""
    rng = np.random.default_rng(seed)
    frame_files, proxy_files, in_memory = [], [], []
    for i in range(frames):
        rgb, lab = _frame(rng)
        in_memory.append((rgb, LABEL_ID_TO_TRAIN_ID[lab]))
        f_img, f_lab = root / f"frame{i:03d}_leftImg8bit.png", root / f"frame{i:03d}_gtFine_labelIds.png"
        cv2.imwrite(str(f_img), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(f_lab), lab)
        frame_files.append((f_img, f_lab))
    for i in range(proxies):
        img, mask = _proxy(rng)
        p_img, p_mask = root / f"coco{i:03d}.png", root / f"coco{i:03d}_mask.png"
        cv2.imwrite(str(p_img), img)
        cv2.imwrite(str(p_mask), mask)
        proxy_files.append((p_img, p_mask))
    shard_dir = root / "shards"
    # shard contents: random crops of the same frames (what `cocodag build` pre-renders; content does not change
    # the read speed of uncompressed shards)
    with ShardWriter(shard_dir, crop_size=crop, config={"bench": True}, seed=seed, shard_size=64,
                     compression=compression) as w:
        for i in range(samples):
            rgb, lab = in_memory[i % len(in_memory)]
            y0, x0 = int(rng.integers(0, FRAME_H - crop + 1)), int(rng.integers(0, FRAME_W - crop + 1))
            w.add("cityscapes", rgb[y0:y0 + crop, x0:x0 + crop], lab[y0:y0 + crop, x0:x0 + crop],
                  frame=f"bench{i}")
    return frame_files, proxy_files, shard_dir


# --------------------------------------------------------------------------------------------------------- pipelines
class OnTheFly(torch.utils.data.Dataset):
    """meta-ood / PEBAL style per-sample work, as a map-style dataset (usable with DataLoader workers)."""

    def __init__(self, frames: list, proxies: list, crop: int, seed: int) -> None:
        self.frames, self.proxies, self.crop, self.seed = frames, proxies, crop, seed
        self.mean = np.array(IMAGENET_MEAN, np.float32) * 255
        self.std = np.array(IMAGENET_STD, np.float32) * 255

    def __len__(self) -> int:
        return 10 ** 9

    def sample(self, i: int, normalize: bool = True):
        rng = np.random.default_rng((self.seed, i))
        f_img, f_lab = self.frames[i % len(self.frames)]
        img = read_rgb(f_img)
        lab = LABEL_ID_TO_TRAIN_ID[decode_image(f_lab, color=False)]
        p_img, p_mask = self.proxies[int(rng.integers(len(self.proxies)))]
        obj = read_rgb(p_img)
        mask = decode_image(p_mask, color=False).astype(bool)
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        obj, mask = obj[y0:y1, x0:x1], mask[y0:y1, x0:x1]
        h, w = mask.shape
        cy = int(rng.integers(250, 775)) - h // 2        # seed's centroid range, object at original scale
        cx = int(rng.integers(250, 1799)) - w // 2
        cy, cx = int(np.clip(cy, 0, FRAME_H - h)), int(np.clip(cx, 0, FRAME_W - w))
        region = img[cy:cy + h, cx:cx + w]
        region[mask] = obj[mask]
        lab[cy:cy + h, cx:cx + w][mask] = OOD_ID
        # random crop around the object (the seed crops from the window at the centroid)
        oy = int(np.clip(cy + h // 2 - int(rng.integers(0, self.crop)), 0, FRAME_H - self.crop))
        ox = int(np.clip(cx + w // 2 - int(rng.integers(0, self.crop)), 0, FRAME_W - self.crop))
        img = img[oy:oy + self.crop, ox:ox + self.crop]
        lab = lab[oy:oy + self.crop, ox:ox + self.crop]
        if rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        if not normalize:
            return np.ascontiguousarray(img), np.ascontiguousarray(lab)
        x = torch.from_numpy(((img.astype(np.float32) - self.mean) / self.std).transpose(2, 0, 1).copy())
        return x, torch.from_numpy(lab.astype(np.int64))

    def __getitem__(self, i: int):
        return self.sample(i)


def bench_on_the_fly(frames, proxies, crop, batch, batches, workers, device, seed) -> float:
    ds = OnTheFly(frames, proxies, crop, seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=range(batch * (batches + 1)),
                                         num_workers=workers, pin_memory=device.type == "cuda")
    it = iter(loader)
    x, y = next(it)                       # warm-up batch (worker start-up) not timed
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    for x, y in it:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        n += x.shape[0]
    _sync(device)
    return n / (time.perf_counter() - t0)


def bench_shards(shard_dir, batch, batches, workers, device, seed) -> float:
    ds = open_dataset(shard_dir)
    plan = MixPlan({"cityscapes": ds.num_samples("cityscapes"), "coco": 0, "dag": 0}, batch_size=batch, seed=seed)
    loader = ShardLoader(ds, plan, device=device, workers=workers)
    aug = DeviceAugment(seed=seed)
    n, epoch, t0 = 0, 0, None
    while True:
        for b, images, labels, _ in loader.epoch_batches(epoch):
            x, y = aug(images, labels, epoch=epoch, batch=b)
            if t0 is None:                # first batch = warm-up (worker start-up, file opens)
                _sync(device)
                t0 = time.perf_counter()
                continue
            n += x.shape[0]
            if n >= batch * batches:
                _sync(device)
                return n / (time.perf_counter() - t0)
        epoch += 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers for both pipelines")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", type=int, default=480)
    ap.add_argument("--frames", type=int, default=6, help="2048x1024 PNG frames generated")
    ap.add_argument("--proxies", type=int, default=8, help="proxy images generated")
    ap.add_argument("--samples", type=int, default=256, help="crops written to the shard dataset")
    ap.add_argument("--otf-batches", type=int, default=4, help="timed on-the-fly batches")
    ap.add_argument("--shard-batches", type=int, default=30, help="timed shard batches")
    ap.add_argument("--compression", default="none", help="shard compression: none | gzip")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenCV threads (1 = fair per-core comparison)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    device = torch.device(a.device)
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        t = time.perf_counter()
        frames, proxies, shard_dir = generate_inputs(Path(tmp), a.frames, a.proxies, a.samples, a.crop, a.seed,
                                                     a.compression)
        print(f"inputs generated in {time.perf_counter() - t:.1f}s: {a.frames} frames {FRAME_W}x{FRAME_H} PNG, "
              f"{a.samples} shard crops {a.crop}x{a.crop} ({a.compression})", file=sys.stderr)
        otf = bench_on_the_fly(frames, proxies, a.crop, a.batch_size, a.otf_batches, a.workers, device, a.seed)
        sh = bench_shards(shard_dir, a.batch_size, a.shard_batches, a.workers, device, a.seed)
    res = {"device": str(device), "workers": a.workers, "threads": a.threads, "batch_size": a.batch_size,
           "crop": a.crop, "compression": a.compression, "on_the_fly_samples_per_s": round(otf, 2),
           "shards_samples_per_s": round(sh, 2), "ratio": round(sh / otf, 2),
           "machine": f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} torch threads)"}
    print(f"on-the-fly (PNG decode + paste + crop + CPU normalize): {otf:8.1f} samples/s")
    print(f"shards     (uint8 h5 reads + device flip/normalize):    {sh:8.1f} samples/s")
    print(f"ratio shards / on-the-fly: {sh / otf:.1f}x  (device {device}, workers {a.workers}, "
          f"batch {a.batch_size}, crop {a.crop})")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
