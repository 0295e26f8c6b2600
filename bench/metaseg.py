"""Benchmark: ``oodscore.metaseg.segment_metrics`` vs meta-ood's compiled ``compute_metrics_components``.

Run from the repository root::

    python bench/metaseg.py --meta-ood /path/to/meta-ood --meta-ood-python /path/to/venv/bin/python
    python bench/metaseg.py                      # ours only (no meta-ood checkout: the comparison is skipped)

``--meta-ood`` is a meta-ood checkout whose ``src/metaseg/metrics.pyx`` is compiled
(``python metrics_setup.py build_ext --inplace`` in ``src/metaseg``); ``--meta-ood-python`` the interpreter it was
compiled for (numpy 1.x, as meta-ood pins; default: this one). The official code runs in that interpreter, in a
subprocess, on the same inputs (passed through a temporary ``.npz``); only the call itself is timed on each side.

Data: one frame (default 2048 x 1024, 19 classes): smooth random logits (a 1/32-resolution Gaussian field,
bilinearly upsampled, so that segments are blobs of every size as in a real softmax), anomaly blobs and a few void
regions in the labels; the OOD mask is meta-ood's (normalized entropy >= 0.7, :func:`oodscore.metaseg.entropy_mask`).
Ours runs ``--repeat`` times (the best is kept), the official code ``--repeat-official`` times (best). The script
prints both times, their ratio, and checks that both give the same numbers (every name but the unused ``prc``,
<= 1e-6 absolute + 1e-5 relative) and the same ``marked`` map.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oodscore.metaseg import entropy_mask, segment_metrics  # noqa: E402

#: run in the official interpreter: argv = meta-ood checkout, input npz, output npz, repeats
_OFFICIAL = r"""
import sys, time
import numpy as np
sys.path.insert(0, sys.argv[1] + "/src/metaseg")
from metrics import compute_metrics_components
d = np.load(sys.argv[2])
best = float("inf")
for _ in range(int(sys.argv[4])):
    t0 = time.perf_counter()
    metrics, marked = compute_metrics_components(probs=d["probs"], gt_train=d["labels"], ood_mask=d["mask"],
                                                 ood_index=[1])
    best = min(best, time.perf_counter() - t0)
out = {"time": best, "marked": marked, "names": np.array(list(metrics))}
out.update({"m/" + k: np.asarray(v, dtype=np.float64) for k, v in metrics.items()})
np.savez(sys.argv[3], **out)
"""


def make_frame(height: int, width: int, classes: int, seed: int, scale: float = 4.0):
    """(probs (C, H, W) float32, labels (H, W) uint8 0/1/255), deterministic in the arguments."""
    rng = np.random.default_rng(seed)
    lh, lw = max(height // 32, 2), max(width // 32, 2)
    logits = rng.normal(0.0, scale, size=(classes, lh, lw)).astype(np.float32)
    up = np.stack([cv2.resize(x, (width, height), interpolation=cv2.INTER_LINEAR) for x in logits])
    up -= up.max(axis=0, keepdims=True)
    probs = np.exp(up)
    probs /= probs.sum(axis=0, keepdims=True)
    field = cv2.resize(rng.random((lh, lw)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    labels = (field > 0.8).astype(np.uint8)
    labels[int(height * 0.85):, :] = 255          # an ego-vehicle band
    labels[: int(height * 0.05), : width // 3] = 255
    return probs.astype(np.float32), labels


def run_official(meta_ood: Path, python: str, probs, labels, mask, repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(src, probs=probs, labels=labels, mask=mask.astype(np.uint8))
        subprocess.run([python, "-c", _OFFICIAL, str(meta_ood), src, dst, str(repeat)], check=True)
        with np.load(dst) as d:
            return {k: d[k] for k in d.files}


def compare(ours: dict, marked_ours: np.ndarray, official: dict) -> list[str]:
    """The differences (empty: the same numbers)."""
    problems = []
    names = [str(n) for n in official["names"] if str(n) != "prc"]
    if names != list(ours):
        problems.append(f"names differ: {names[:6]}... vs {list(ours)[:6]}...")
    if not np.array_equal(marked_ours, official["marked"]):
        problems.append(f"marked differs at {int((marked_ours != official['marked']).sum())} pixels")
    for name in names:
        a, b = ours.get(name), official["m/" + name]
        if a is None or a.shape != b.shape:
            problems.append(f"{name}: shape {None if a is None else a.shape} vs {b.shape}")
        elif not np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True):
            problems.append(f"{name}: max |diff| {np.nanmax(np.abs(a - b)):.3g}")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meta-ood", type=Path, default=None, help="meta-ood checkout with src/metaseg compiled")
    ap.add_argument("--meta-ood-python", default=sys.executable, help="interpreter of the compiled extension")
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--repeat-official", type=int, default=1)
    args = ap.parse_args(argv)

    probs, labels = make_frame(args.height, args.width, args.classes, args.seed)
    mask = entropy_mask(probs, args.threshold, labels)
    best, (metrics, marked) = float("inf"), segment_metrics(probs, mask, labels)
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        metrics, marked = segment_metrics(probs, mask, labels)
        best = min(best, time.perf_counter() - t0)
    n = len(metrics["S"])
    print(f"frame {args.width}x{args.height}, {args.classes} classes: OOD mask {mask.mean():.1%} of the pixels, "
          f"{n} segments (sizes {int(metrics['S'].min()) if n else 0}..{int(metrics['S'].max()) if n else 0} px), "
          f"{int((metrics['iou0'] == 0).sum())} touching an anomaly")
    print(f"ours (oodscore.metaseg.segment_metrics): {best * 1e3:.1f} ms (best of {max(1, args.repeat)})")
    if args.meta_ood is None or not (args.meta_ood / "src" / "metaseg").is_dir():
        print("official: skipped (no --meta-ood checkout given or found; see the module doc)")
        return 0
    off = run_official(args.meta_ood, args.meta_ood_python, probs, labels, mask, args.repeat_official)
    t_off = float(off["time"])
    print(f"official (compiled compute_metrics_components): {t_off * 1e3:.1f} ms "
          f"(best of {max(1, args.repeat_official)})")
    print(f"ratio official / ours: {t_off / best:.1f}x")
    problems = compare(metrics, marked, off)
    print("numbers: " + ("equal (every name but prc, <= 1e-6 abs + 1e-5 rel; marked map exact)" if not problems
                         else "DIFFER: " + "; ".join(problems[:10])))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
