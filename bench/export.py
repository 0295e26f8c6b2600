"""Export benchmark: bytes on disk and peak RSS per 2048x1024 frame, native vs label resolution, float16 vs float32.

    python bench/export.py                                  # tiny_segnet (the demo's model), 2 frames, CPU
    python bench/export.py --model deeplabv3plus_resnet18 --frames 2
    python bench/export.py --checkpoint runs/demo/model-final.pt   # a trained network instead of a random one

Each configuration runs the real command line (``python -m maxent_train export --images ... --preset standard``) in a
fresh process on the same synthetic evaluation set (street-like RGB frames with anomaly blobs, labels 0/1/255 with
void bands, a road ROI) and reports, per frame: the file's bytes (and those of ``logits``, ``mc/*``, ``label`` +
``roi``), the process's peak RSS (``ru_maxrss`` of that child: imports, model and everything), the wall time, and the
projected size of a LostAndFound-test export (1203 frames). Configurations: ``--logits-resolution native|label`` x
``--logits-dtype float16|float32``, logits only and with the MC block (T = 8, K = 4, float32 moments).

Then the metrics' difference between the storages: AUROC / AP / FPR95 of msp, maxlogit, entropy and sml (stats fitted
on each file itself, as ``oodscore fit-sml``) over the frames' non-void pixels, computed from the label-resolution
file and from the native file as the reader returns it (upsampled with the recorded rule), for both dtypes.
Without ``--checkpoint`` the network has random weights (BatchNorm statistics calibrated on the frames), so the
metrics themselves mean nothing; their difference between the two storages is what is measured.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LAF_TEST_FRAMES = 1203
METRIC_METHODS = ("msp", "maxlogit", "entropy", "sml")


# ------------------------------------------------------------------------------------------------------- inputs
def _frame(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A street-like RGB frame, its 0/1/255 label (road = ID, blobs on the road = anomaly, void elsewhere and on
    object borders) and the road ROI."""
    import cv2

    img = np.empty((h, w, 3), np.uint8)
    img[: h // 2] = (130, 170, 220)                                    # sky
    img[h // 2:] = (90, 110, 90)                                       # vegetation / buildings
    road = np.array([[0, h], [w, h], [int(w * 0.6), int(h * 0.45)], [int(w * 0.4), int(h * 0.45)]], np.int32)
    roi = np.zeros((h, w), np.uint8)
    cv2.fillPoly(roi, [road], 1)
    img[roi == 1] = (100, 100, 100)
    label = np.where(roi == 1, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        c = (int(rng.integers(w * 0.42, w * 0.58)), int(rng.integers(h * 0.55, h * 0.9)))
        axes = (int(rng.integers(w // 100, w // 30)), int(rng.integers(h // 100, h // 30)))
        cv2.ellipse(label, c, axes, 0, 0, 360, 1, -1)
        cv2.ellipse(img, c, axes, 0, 0, 360, tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
    edge = cv2.dilate((cv2.Canny(label, 0, 1) > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    label[edge] = 255
    noise = rng.normal(0, 12, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8), label, roi


def write_evalset(root: Path, n: int, h: int, w: int, seed: int = 0) -> Path:
    """``n`` synthetic frames in the standard evaluation-set layout (images/, labels/, roi/)."""
    import cv2

    rng = np.random.default_rng(seed)
    for sub in ("images", "labels", "roi"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, label, roi = _frame(rng, h, w)
        cv2.imwrite(str(root / "images" / f"frame_{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "labels" / f"frame_{i:03d}.png"), label)
        cv2.imwrite(str(root / "roi" / f"frame_{i:03d}.png"), roi)
    return root


def write_checkpoint(path: Path, model_name: str, evalset: Path) -> Path:
    """A random network of ``model_name`` whose BatchNorm statistics are calibrated on the frames (logits of a
    realistic range), saved with the metadata export reads."""
    import torch

    from cocodag.imageio import read_rgb
    from maxent_train.data import normalize
    from maxent_train.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name, num_classes=19).train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None                                          # cumulative average over the calibration
    with torch.no_grad():
        for p in sorted((evalset / "images").glob("*.png")):
            x = normalize(torch.from_numpy(read_rgb(p))[None])
            model(torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear"))
    torch.save({"state_dict": model.eval().state_dict(),
                "metadata": {"model": model_name, "num_classes": 19}}, path)
    return path


# ------------------------------------------------------------------------------------------------------- export runs
def run_export(ckpt: Path, evalset: Path, out: Path, threads: int, *extra: str) -> dict:
    """One ``maxent_train export`` in a fresh process: its wall time and peak RSS (the child's own ``ru_maxrss``)."""
    cmd = [sys.executable, "-m", "maxent_train", "export", "--checkpoint", str(ckpt), "--images", str(evalset),
           "--preset", "standard", "--out", str(out), "--device", "cpu", "--no-progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    log = out.with_suffix(".log")
    with open(log, "wb") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)        # this child's own rusage (ru_maxrss: its peak RSS, KiB)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"export failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-2000:]}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024}


def file_sizes(path: Path) -> dict:
    """Bytes per frame of the file and of its datasets (HDF5's stored size: after compression)."""
    import h5py

    with h5py.File(path, "r") as f:
        n = f["label"].shape[0]

        def stored(*names):
            return sum(f[k].id.get_storage_size() for k in names if k in f) / n

        return {"file": path.stat().st_size / n, "logits": stored("logits"),
                "mc": stored("mc/mean", "mc/central", "mc/entropy"), "label_roi": stored("label", "roi"),
                "native_shape": tuple(f["logits"].shape[2:])}


def bench_exports(ckpt: Path, evalset: Path, work: Path, threads: int) -> tuple[list[dict], dict]:
    """Every configuration; returns the rows and the logits-only files by (resolution, dtype) for the metrics."""
    rows, files = [], {}
    for mc in (False, True):
        for res in ("native", "label"):
            for dtype in ("float16", "float32"):
                out = work / f"{res}-{dtype}{'-mc' if mc else ''}.h5"
                extra = ["--logits-resolution", res, "--logits-dtype", dtype]
                if mc:
                    extra += ["--mc-samples", "8", "--moment-order", "4", "--mc-dtype", "float32"]
                run = run_export(ckpt, evalset, out, threads, *extra)
                rows.append({"mc": mc, "resolution": res, "dtype": dtype, **run, **file_sizes(out)})
                if mc:
                    out.unlink()
                else:
                    files[res, dtype] = out
                print(_row(rows[-1]), flush=True)
    return rows, files


# ------------------------------------------------------------------------------------------------------- metrics
def _metrics(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    return (float(roc_auc_score(labels, scores)), float(average_precision_score(labels, scores)),
            float(fpr[np.searchsorted(tpr, 0.95, side="left")]))


def file_metrics(path: Path) -> dict[str, tuple[float, float, float]]:
    """AUROC, AP, FPR95 per method over the non-void pixels of every frame, from the logits the reader returns."""
    import warnings

    warnings.filterwarnings("ignore", message="SML: classes")        # a random network leaves classes unpredicted
    from cocodag.formats.logits import LogitsFile
    from oodscore.fit import fit_sml
    from oodscore.scores import get_scorer

    stats = fit_sml(path, progress=False)
    scorers = {m: get_scorer(m, **({"stats": stats} if m == "sml" else {})) for m in METRIC_METHODS}
    scores = {m: [] for m in METRIC_METHODS}
    labels = []
    with LogitsFile(path) as lf:
        for fr in lf.iter_frames(image=False):
            keep = fr.label != 255
            labels.append(fr.label[keep])
            for m, sc in scorers.items():
                scores[m].append(sc.score(fr.logits)[keep])
    y = np.concatenate(labels)
    return {m: _metrics(np.concatenate(s), y) for m, s in scores.items()}


# ------------------------------------------------------------------------------------------------------- report
def _row(r: dict) -> str:
    mib = 2 ** 20
    what = f"{'logits+MC' if r['mc'] else 'logits':<10}{r['resolution']:<8}{r['dtype']:<9}"
    return (f"{what}{str(r['native_shape']):<13}{r['file'] / mib:>9.2f}{r['logits'] / mib:>9.2f}{r['mc'] / mib:>9.2f}"
            f"{r['label_roi'] / 2 ** 10:>13.1f}{r['peak_rss_mib']:>10.0f}{r['wall_s']:>8.1f}"
            f"{r['file'] * LAF_TEST_FRAMES / 2 ** 30:>10.2f}")


def print_metrics(files: dict) -> None:
    print("\n# metrics over the frames' non-void pixels: native file (read back at label size) vs label file")
    print(f"{'dtype':<9}{'method':<10}{'AUROC lab':>11}{'AUROC nat':>11}{'|dAUROC|':>10}{'|dAP|':>10}{'|dFPR95|':>10}")
    worst = 0.0
    for dtype in ("float16", "float32"):
        lab, nat = file_metrics(files["label", dtype]), file_metrics(files["native", dtype])
        for m in METRIC_METHODS:
            d = [abs(a - b) for a, b in zip(lab[m], nat[m])]
            worst = max(worst, *d)
            print(f"{dtype:<9}{m:<10}{lab[m][0]:>11.6f}{nat[m][0]:>11.6f}{d[0]:>10.2e}{d[1]:>10.2e}{d[2]:>10.2e}")
    print(f"largest difference over AUROC / AP / FPR95: {worst:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny_segnet", help="registered model name (random weights)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="a trained checkpoint instead (with metadata)")
    ap.add_argument("--frames", type=int, default=2, help="frames of the synthetic evaluation set")
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads of each export")
    args = ap.parse_args()

    import torch

    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        work = Path(tmp)
        evalset = write_evalset(work / "evalset", args.frames, args.height, args.width)
        ckpt = args.checkpoint or write_checkpoint(work / "model.pt", args.model, evalset)
        print(f"# bench/export.py  model={args.checkpoint or args.model} frames={args.frames} "
              f"{args.width}x{args.height} threads={args.threads} torch={torch.__version__} "
              f"cpu={platform.processor() or platform.machine()}; MC: T=8, K=4, float32 moments")
        print(f"{'content':<10}{'res':<8}{'dtype':<9}{'logits hw':<13}{'MiB/frm':>9}{'logits':>9}{'mc':>9}"
              f"{'lab+roi KiB':>13}{'RSS MiB':>10}{'wall s':>8}{'L&F GiB':>10}")
        _, files = bench_exports(ckpt, evalset, work, args.threads)
        print_metrics(files)


if __name__ == "__main__":
    main()
