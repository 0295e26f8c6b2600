"""Per-stage times of a recipe run on real-size inputs: seconds per frame (build, export, evaluate) and per
training step (fit), for the README's "Reproduce a published method".

    python bench/recipe_stages.py                       # pebal, WRN38 (random weights, NVIDIA's layout), CPU
    python bench/recipe_stages.py --recipe cocodag --device cuda --batch-size 8

It writes a demo world at Cityscapes' size (2048x1024 frames, COCO images 640x480), an NVIDIA-layout
``cityscapes_best.pth`` of ``deeplabv3plus_wrn38`` with random weights, and runs ``cocodag recipe run RECIPE`` on them
with the recipe's own settings except the few that make it finish (``fit.max_steps``, ``fit.batch_size``,
``build.dag_samples``, and crop 480 as the recipes use). Each stage's seconds come from the run's own records
(``OUT/stages/<step>.json``) and are divided by what it processed: the frames the build read, the frames exported
and evaluated, and for ``fit`` the median time of a training step from ``log.jsonl`` (batch / samples_per_s, the
first logged step left out: it includes start-up). The numbers are this machine's; the same script on a GPU (with
``--device cuda``) gives that machine's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _checkpoint(path: Path) -> None:
    import torch

    from maxent_train.models import create_model

    torch.manual_seed(0)
    model = create_model("deeplabv3plus_wrn38", num_classes=19)
    keys = json.loads((ROOT / "tests" / "fixtures" / "upstream" / "wrn38_keys.json").read_text())["keys"]
    own = model.state_dict()
    sd = {"module." + k: own[k] for k, _, _ in keys}
    torch.save({"state_dict": sd, "epoch": 0, "mean_iu": 0.0}, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="pebal")
    ap.add_argument("--frames", type=int, default=4, help="Cityscapes-like train frames (2048x1024)")
    ap.add_argument("--eval-frames", type=int, default=3, help="anomaly frames exported and evaluated")
    ap.add_argument("--steps", type=int, default=4, help="training steps (the first is left out of the per-step time)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cocodag-recipe-bench-"))
    from cocodag.demo_world import generate_demo_world

    world = work / "world"
    if not (world / "anomaly").is_dir():
        generate_demo_world(world, frames=args.frames, val_frames=1, anomaly_frames=args.eval_frames,
                            frame_size="2048x1024", coco_images=20, coco_image_size="640x480", seed=0, workers=2,
                            progress=False)
    init = work / "cityscapes_best.pth"
    if not init.is_file():
        _checkpoint(init)
    out = work / "run"
    cmd = [sys.executable, "-m", "cocodag_apps", "cocodag", "recipe", "run", args.recipe,
           "build.crop=480", "build.dag_samples=8", "build.workers=2", f"fit.max_steps={args.steps}",
           f"fit.batch_size={args.batch_size}", "fit.workers=0", "fit.progress=false", "export.progress=false",
           "evaluate.progress=false", "--cityscapes", str(world / "cityscapes"), "--coco", str(world / "coco"),
           "--init", str(init), "--eval", f"anomaly=standard:{world / 'anomaly'}", "--out", str(out),
           "--device", args.device]
    print("$", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    n_build = args.frames + 1 + len(list((world / "coco").rglob("*.jpg")))
    rows = []
    for rec_path in sorted((out / "stages").glob("*.json")):
        rec = json.loads(rec_path.read_text())
        step, seconds = rec["step"], rec["seconds"]
        if step == "build":
            unit, n = "input image (Cityscapes frames + COCO images)", n_build
        elif step.startswith(("export", "evaluate")):
            unit, n = "frame (2048x1024)", args.eval_frames
        elif step == "fit":
            log = [json.loads(line) for line in (out / "run" / "log.jsonl").read_text().splitlines()
                   if '"samples_per_s"' in line]
            per = [args.batch_size / r["samples_per_s"] for r in log[1:] if r.get("samples_per_s")]
            rows.append((step, seconds, f"{statistics.median(per):.2f}" if per else "n/a",
                         f"training step (batch {args.batch_size}, crop 480)"))
            continue
        else:
            unit, n = "run", 1
        rows.append((step, seconds, f"{seconds / n:.2f}", unit))
    totals = manifest.get("totals", {})
    print(f"# {args.recipe} on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, device "
          f"{args.device}; crops written: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    print("| step | seconds | seconds per unit | unit |\n|---|---|---|---|")
    for step, seconds, per, unit in rows:
        print(f"| {step} | {seconds:.1f} | {per} | {unit} |")


if __name__ == "__main__":
    main()
