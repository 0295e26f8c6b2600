"""MC-dropout benchmark: T stochastic passes, head-only (backbone once) vs T full forwards, same run, same machine.

    python bench/mc.py                                   # tiny_segnet, 1x3x128x128, T=128, K=4, CPU
    python bench/mc.py --model deeplabv3plus_resnet18 --size 128
    python bench/mc.py --device cuda --size 512 --sample-batch 16

Prints, for each mode: best-of-N wall time (modes interleaved in one process) of ``maxent_train.mc.mc_moments``
(passes + streaming moments + entropy of the mean softmax) and of the forward passes alone, and the peak memory of
one ``mc_moments`` call (CUDA: ``max_memory_allocated``; CPU: peak RSS growth of a fresh child process running only
that mode, with ``MALLOC_MMAP_THRESHOLD_`` set so freed memory is returned and RSS tracks live memory), then the
ratios. Head-only is also measured at T=8 to show that memory does not grow with T.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _setup(args):
    import torch

    from maxent_train.models import create_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = create_model(args.model, num_classes=19, dropout=args.dropout).to(device).eval()
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    return torch, model, x, device


def _sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _mc_runner(args, model, x, head_only: bool, samples: int):
    from maxent_train.mc import mc_moments

    kw = dict(samples=samples, order=args.order, moments_of=args.moments_of, head_only=head_only, seed=0,
              sample_batch=args.sample_batch)
    return lambda: mc_moments(model, x, **kw)


def _forward_runner(args, model, x, head_only: bool):
    """The model passes alone: 1 backbone + T heads, or T full forwards (same sample batching as mc_moments)."""
    import torch

    from maxent_train.mc import _repeat

    size = x.shape[-2:]

    def run():
        with torch.no_grad():
            feats = model.forward_features(x) if head_only else None
            for s in range(0, args.samples, args.sample_batch):
                b = min(args.sample_batch, args.samples - s)
                if head_only:
                    model.forward_head(_repeat(feats, b), size)
                else:
                    model(_repeat(x, b))
    return run


def _best_interleaved(torch, device, runners: dict, repeats: int) -> dict:
    """Best wall time per runner; runners alternate so that a load spike on a shared machine hits all of them."""
    for fn in runners.values():  # warm-up (allocator, oneDNN/cuDNN kernel choice)
        fn()
    best = {k: float("inf") for k in runners}
    for _ in range(repeats):
        for k, fn in runners.items():
            _sync(torch, device)
            t0 = time.perf_counter()
            fn()
            _sync(torch, device)
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def _rss(field: str) -> int:
    """Bytes of a /proc/self/status field (VmRSS = now, VmHWM = peak); ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> None:
    try:  # Linux: writing 5 to clear_refs resets VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _child(args) -> dict:
    """Peak memory of one mc_moments call in this fresh process (CPU: run with MALLOC_MMAP_THRESHOLD_ set)."""
    torch, model, x, device = _setup(args)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()  # the model's construction must not set the high-water mark
        base = _rss("VmRSS")
    _mc_runner(args, model, x, args.child_mode == "head", args.samples)()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss("VmHWM") - base
    return {"mode": args.child_mode, "samples": args.samples, "peak_mib": peak / 2**20}


def _run_child(args, mode: str, samples: int) -> dict:
    cmd = [sys.executable, __file__, "--child-mode", mode, "--samples", str(samples)]
    for k in ("model", "size", "batch", "order", "moments_of", "device", "threads", "sample_batch", "dropout"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    # freed blocks go back to the OS at once, so peak RSS measures live memory rather than glibc heap fragmentation
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny_segnet", help="registered model name")
    ap.add_argument("--size", type=int, default=128, help="square input size in pixels")
    ap.add_argument("--batch", type=int, default=1, help="images per call")
    ap.add_argument("--samples", type=int, default=128, help="T, MC passes")
    ap.add_argument("--order", type=int, default=4, help="K, highest moment order")
    ap.add_argument("--moments-of", default="logits", choices=["logits", "probs"], help="moments of logits or probs")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--sample-batch", type=int, default=8, help="MC passes run together as one batch")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats, interleaved (best is reported)")
    ap.add_argument("--dropout", type=float, default=0.1, help="head dropout probability")
    ap.add_argument("--child-mode", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_mode:
        print(json.dumps(_child(args)))
        return

    import torch

    print(f"# bench/mc.py  model={args.model} input={args.batch}x3x{args.size}x{args.size} T={args.samples} "
          f"K={args.order} moments_of={args.moments_of} sample_batch={args.sample_batch} device={args.device} "
          f"threads={args.threads} torch={torch.__version__} cpu={platform.processor() or platform.machine()}")
    torch_, model, x, device = _setup(args)
    from maxent_train.mc import enable_mc_dropout

    t = _best_interleaved(torch_, device, {
        "mc_full": _mc_runner(args, model, x, False, args.samples),
        "mc_head": _mc_runner(args, model, x, True, args.samples),
    }, args.repeats)
    enable_mc_dropout(model)
    t.update(_best_interleaved(torch_, device, {
        "fw_full": _forward_runner(args, model, x, False),
        "fw_head": _forward_runner(args, model, x, True),
    }, args.repeats))
    mem = {m: _run_child(args, m, args.samples)["peak_mib"] for m in ("full", "head")}
    mem_small = _run_child(args, "head", 8)["peak_mib"]
    print(f"{'mode':<28}{'mc_moments s':>14}{'forwards s':>12}{'peak MiB':>10}")
    print(f"{'full forwards (T passes)':<28}{t['mc_full']:>14.3f}{t['fw_full']:>12.3f}{mem['full']:>10.1f}")
    print(f"{'head-only (1 backbone)':<28}{t['mc_head']:>14.3f}{t['fw_head']:>12.3f}{mem['head']:>10.1f}")
    print(f"ratio full/head-only: mc_moments {t['mc_full'] / t['mc_head']:.1f}x (passes + streaming moments + "
          f"entropy), forward passes alone {t['fw_full'] / t['fw_head']:.1f}x")
    print(f"peak memory, head-only: T={args.samples} {mem['head']:.1f} MiB vs T=8 {mem_small:.1f} MiB "
          f"(streaming power sums: independent of T)")

if __name__ == "__main__":
    main()
