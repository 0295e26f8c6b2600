"""Train the demo's baseline segmentation model and ship it as cocodag_apps/data/demo_baseline.pt (+ .json).

The baseline is a `tiny_segnet` trained with plain cross-entropy (`--lambda 0`, no COCO, no DAG) on the
cityscapes stream of the default demo world. `cocodag demo` uses it when the world it generates has the same
configuration (recorded in demo_baseline.json), and otherwise trains one itself. Both files are package data
(pyproject's [tool.setuptools.package-data]), read by the demo through importlib.resources, so a wheel ships them.

    python data/make_baseline.py [--steps 4000]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from cocodag_apps.demo import DemoConfig, run_demo

#: where the package data lives in this repository (written here, next to the sources, to be committed)
DEST = Path(__file__).resolve().parents[1] / "cocodag_apps" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4000, help="training steps (batch 8)")
    ap.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--dest", type=Path, default=DEST, help="folder of demo_baseline.pt/.json (default: %(default)s)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cocodag-baseline-"))
    cfg = DemoConfig(out=work, baseline="train", baseline_steps=args.steps, baseline_lr=args.lr)
    res = run_demo(cfg, until="baseline")
    args.dest.mkdir(parents=True, exist_ok=True)
    ckpt, info_path = args.dest / "demo_baseline.pt", args.dest / "demo_baseline.json"
    shutil.copyfile(res["baseline"], ckpt)
    info = {"world": cfg.world_key(), "steps": args.steps, "lr": args.lr, "miou_val": res["miou"]["miou"],
            "pixel_acc_val": res["miou"]["pixel_acc"], "iou_val": res["miou"]["iou"],
            "made_by": f"python data/make_baseline.py --steps {args.steps}"}
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {ckpt} ({ckpt.stat().st_size / 1e6:.2f} MB), val mIoU {100 * info['miou_val']:.1f}")


if __name__ == "__main__":
    main()
