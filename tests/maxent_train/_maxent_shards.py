"""Small synthetic cocodag datasets for the maxent_train tests (written with cocodag's own ShardWriter)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cocodag.formats.shards import ShardWriter

# One colour per class so that a tiny network can learn the labels (the loss must be able to drop).
_PALETTE = np.random.default_rng(123).integers(0, 256, size=(256, 3)).astype(np.uint8)


def _sample(rng: np.random.Generator, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    label = np.full((size, size), 255, np.uint8)
    h = size // 2
    if kind != "coco":
        for (y0, x0) in ((0, 0), (0, h), (h, 0), (h, h)):
            label[y0:y0 + h, x0:x0 + h] = rng.integers(0, 19)
    if kind in ("coco", "dag"):
        y, x = rng.integers(0, size - size // 3, 2)
        label[y:y + size // 3, x:x + size // 3] = 254
    image = _PALETTE[label].copy()
    image = np.clip(image.astype(np.int16) + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
    return image, label


def make_shards(out: Path, counts: dict[str, int] | None = None, size: int = 32, shard_size: int = 8,
                seed: int = 0) -> Path:
    """Write a dataset with ``counts`` samples per kind; shards hold ``shard_size`` samples each."""
    counts = counts or {"cityscapes": 24, "coco": 20, "dag": 12}
    rng = np.random.default_rng(seed)
    with ShardWriter(out, crop_size=size, config={"test": True}, seed=seed, shard_size=shard_size) as w:
        for kind, n in counts.items():
            for i in range(n):
                image, label = _sample(rng, size, kind)
                w.add(kind, image, label, frame=f"{kind}_{i:04d}", quadrant=i % 4 if kind == "dag" else 255)
    return out
