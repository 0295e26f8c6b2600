"""Train the demo's baseline segmentation model and ship it as data/demo_baseline.pt (+ .json).

The baseline is a `tiny_segnet` trained with plain cross-entropy (`--lambda 0`, no COCO, no DAG) on the
cityscapes stream of the default demo world. `cocodag demo` uses it when the world it generates has the same
configuration (recorded in demo_baseline.json), and otherwise trains one itself.

    python data/make_baseline.py [--steps 4000]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from cocodag_apps.demo import SHIPPED_BASELINE, SHIPPED_BASELINE_INFO, DemoConfig, run_demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4000, help="training steps (batch 8)")
    ap.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cocodag-baseline-"))
    cfg = DemoConfig(out=work, baseline="train", baseline_steps=args.steps, baseline_lr=args.lr)
    res = run_demo(cfg, until="baseline")
    shutil.copyfile(res["baseline"], SHIPPED_BASELINE)
    info = {"world": cfg.world_key(), "steps": args.steps, "lr": args.lr, "miou_val": res["miou"]["miou"],
            "pixel_acc_val": res["miou"]["pixel_acc"], "iou_val": res["miou"]["iou"],
            "made_by": "python data/make_baseline.py --steps %d" % args.steps}
    SHIPPED_BASELINE_INFO.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {SHIPPED_BASELINE} ({SHIPPED_BASELINE.stat().st_size / 1e6:.2f} MB), val mIoU {100 * info['miou_val']:.1f}")


if __name__ == "__main__":
    main()
