"""`cocodag verify`: checksums, shapes, dtypes, label values and the DAG invariant of a built dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import CocodagError
from .formats.shards import KINDS, open_dataset
from .labels import IGNORE_ID, NUM_CLASSES, OOD_ID

_ALLOWED = np.zeros(256, dtype=bool)
_ALLOWED[:NUM_CLASSES] = True
_ALLOWED[[OOD_ID, IGNORE_ID]] = True
_META_SHAPES = {"frame": (), "coco_ann": (), "centroid": (2,), "crop": (4,), "quadrant": ()}


def verify_dataset(root: Path | str, *, batch: int = 64) -> dict[str, Any]:
    """Validate every shard of a dataset; raise :class:`CocodagError` (one line, naming shard and sample) on failure.

    Checks: manifest + per-shard sha256 (via :func:`cocodag.formats.shards.open_dataset`), shard attrs/kind, image/label
    shapes and dtypes, meta shapes, label values in {0..18, 254, 255}, every DAG crop holds OOD (254) and ID (0..18)
    pixels and a quadrant 0..3, and the manifest totals.
    """
    ds = open_dataset(root, verify_checksums=True)
    counts = {k: 0 for k in KINDS}
    ood = {k: 0 for k in KINDS}
    pixels = {k: 0 for k in KINDS}
    for info in ds.shards:
        with ds.open_shard(info) as sh:
            name = info.path.name
            if sh.kind != info.kind:
                raise CocodagError(f"{name}: shard kind {sh.kind!r} but the manifest says {info.kind!r}")
            if sh.num_samples != info.num_samples:
                raise CocodagError(f"{name}: {sh.num_samples} samples but the manifest says {info.num_samples}")
            if "meta" not in sh.h5:
                raise CocodagError(f"{name}: missing group 'meta'")
            for key, tail in _META_SHAPES.items():
                if key not in sh.h5["meta"] or sh.h5["meta"][key].shape != (sh.num_samples, *tail):
                    got = sh.h5["meta"][key].shape if key in sh.h5["meta"] else "missing"
                    raise CocodagError(f"{name}: meta/{key} expected shape {(sh.num_samples, *tail)}, got {got}")
            quad = sh.h5["meta/quadrant"][()]
            crops = sh.h5["meta/crop"][()]
            known = (crops != -1).any(axis=1)     # (-1,-1,-1,-1) = no box recorded (allowed by the format)
            if not ((crops[known, 2] - crops[known, 0] == ds.crop_size)
                    & (crops[known, 3] - crops[known, 1] == ds.crop_size)).all():
                raise CocodagError(f"{name}: meta/crop boxes are not {ds.crop_size}x{ds.crop_size}")
            for a in range(0, sh.num_samples, batch):
                lab = sh.label[a:a + batch]
                flat = lab.reshape(lab.shape[0], -1)
                bad = ~_ALLOWED[flat]
                if bad.any():
                    i = int(np.flatnonzero(bad.any(axis=1))[0])
                    vals = sorted(set(np.unique(flat[i][bad[i]]).tolist()))
                    raise CocodagError(f"{name}: sample {a + i} has label values {vals[:5]} outside "
                                       f"{{0..18, 254, 255}}")
                has_ood = (flat == OOD_ID).any(axis=1)
                if info.kind == "dag":
                    has_id = (flat < NUM_CLASSES).any(axis=1)
                    for i in range(flat.shape[0]):
                        if not has_ood[i] or not has_id[i]:
                            what = "OOD (254)" if not has_ood[i] else "in-distribution (0..18)"
                            raise CocodagError(f"{name}: DAG sample {a + i} holds no {what} pixel")
                        if quad[a + i] > 3:
                            raise CocodagError(f"{name}: DAG sample {a + i} has quadrant {quad[a + i]}, expected 0..3")
                ood[info.kind] += int((flat == OOD_ID).sum())
                pixels[info.kind] += flat.size
            counts[info.kind] += sh.num_samples
    totals = ds.manifest.get("totals", {})
    for k in KINDS:
        if int(totals.get(k, 0)) != counts[k]:
            raise CocodagError(f"{ds.root / 'manifest.json'}: totals[{k}] = {totals.get(k)} but the shards hold "
                               f"{counts[k]}")
    return {"counts": counts, "shards": len(ds.shards),
            "ood_fraction": {k: (ood[k] / pixels[k] if pixels[k] else 0.0) for k in KINDS}}
