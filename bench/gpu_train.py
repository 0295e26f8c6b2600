"""GPU check: MaxEnt training steps/s with AMP fed by the shard loader, and how often the GPU waits for data.

Run by bench/gpu.sh (needs a cocodag dataset; that script builds one). Prints one JSON line and a summary.

The GPU idle fraction is measured from the training loop itself: the time the loop spends blocked on the loader
(with the GPU drained, so the wait is real idle time) divided by the wall time of the timed steps. When
``nvidia-smi`` exists, its sampled utilization is reported beside it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import threading
import time

import torch


def _smi_sampler(stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=5)
            out.append(float(r.stdout.strip().splitlines()[0]))
        except Exception:  # noqa: BLE001 - best effort side measurement
            return
        stop.wait(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, help="cocodag dataset directory")
    ap.add_argument("--model", default="deeplabv3plus_resnet50")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=60, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--interval", type=int, default=2, help="embedding_img_interval (DAG every k-th batch)")
    args = ap.parse_args()

    from cocodag.formats.shards import open_dataset
    from maxent_train.data import DeviceAugment, MixPlan, ShardLoader
    from maxent_train.loss import maxent_loss
    from maxent_train.models import create_model

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ds = open_dataset(args.data)
    counts = {k: ds.num_samples(k) for k in ("cityscapes", "coco", "dag")}
    plan = MixPlan(counts=counts, batch_size=args.batch_size, seed=0, embedding_img_interval=args.interval)
    loader = ShardLoader(ds, plan, device=dev, workers=args.workers)
    aug = DeviceAugment(seed=0)
    model = create_model(args.model, num_classes=19).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and dev.type == "cuda")
    total = args.warmup + args.steps
    wait = 0.0
    n = 0
    smi: list[float] = []
    stop = threading.Event()
    th = None
    epoch = 0
    t_start = None
    while n < total:
        it = loader.epoch_batches(epoch)
        while n < total:
            if n == args.warmup:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t_start, wait = time.perf_counter(), 0.0
                if shutil.which("nvidia-smi"):
                    th = threading.Thread(target=_smi_sampler, args=(stop, smi), daemon=True)
                    th.start()
            if dev.type == "cuda":
                torch.cuda.synchronize()     # GPU drained: any time blocked below is GPU idle time
            t0 = time.perf_counter()
            try:
                b, images, labels, _ = next(it)
            except StopIteration:
                epoch += 1
                break
            wait += time.perf_counter() - t0
            x, y = aug(images, labels, epoch=epoch, batch=b)
            with torch.autocast(dev.type, dtype=torch.float16, enabled=args.amp and dev.type == "cuda"):
                logits = model(x)
            loss, _ = maxent_loss(logits.float(), y, lam=0.9, optim_target="entropy")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            n += 1
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t_start
    stop.set()
    if th is not None:
        th.join(timeout=2)
    res = {
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
        "model": args.model, "batch_size": args.batch_size, "crop": ds.crop_size, "amp": args.amp,
        "workers": args.workers, "steps": args.steps, "steps_per_s": args.steps / wall,
        "samples_per_s": args.steps * args.batch_size / wall, "gpu_idle_fraction": wait / wall,
        "nvidia_smi_util_mean": (sum(smi) / len(smi)) if smi else None,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None,
    }
    print(json.dumps(res))
    print(f"{res['device']}: {args.model} bs {args.batch_size} crop {ds.crop_size} AMP={args.amp}: "
          f"{res['steps_per_s']:.2f} steps/s ({res['samples_per_s']:.1f} samples/s), "
          f"GPU idle (waiting for data) {100 * res['gpu_idle_fraction']:.1f} %")


if __name__ == "__main__":
    main()
