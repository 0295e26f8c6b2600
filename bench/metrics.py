"""Benchmark: exact ``oodscore.metrics.pixel_metrics`` vs sklearn, and streaming 10^9 pixels in bounded memory.

Run from the repository root::

    python bench/metrics.py                          # 10^7 and 10^8 vs sklearn, then 10^9 streamed
    python bench/metrics.py --sizes 1e6,1e7 --stream 1e8   # quicker
    python bench/metrics.py --quick                  # 10^6 and 10^7 vs sklearn, 10^7 streamed (a smoke run)

Data: labels 5 % anomaly, 10 % void (255); scores float32 ``N(0,1) + 2 * anomaly`` (almost every value distinct,
the hard case for an exact histogram). sklearn's time covers dropping void pixels, ``roc_auc_score``,
``average_precision_score`` and ``roc_curve`` (for FPR95); ours covers ``pixel_metrics`` (all metrics + the
F1-optimal threshold). The baseline is one ``np.sort`` of the same scores (a copy, sorted, on one thread): ours
(default threads: the CPUs this process may use) and it run in turns, ``--repeat`` times, and the best of each is
printed with their ratio; then ours on one thread, the same way (sklearn runs once). The machine's load
average is printed before and after. The streaming part runs in a fresh subprocess so that its peak RSS
(``VmHWM``) is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cocodag.progress import progress_bar  # noqa: E402
from oodscore.metrics import PixelMetrics, pixel_metrics  # noqa: E402
from oodscore.metrics._batch import threads_for  # noqa: E402


def make_data(n: int, seed: int, dtype=np.float32):
    """Scores and labels (0/1/255) for one chunk, deterministic in (seed, n)."""
    rng = np.random.default_rng(seed)
    u = rng.random(n, dtype=np.float32)
    y = (u < 0.05).astype(np.uint8)
    y[u > 0.9] = 255
    s = rng.standard_normal(n, dtype=np.float32)
    s[y == 1] += np.float32(2.0)
    return s.astype(dtype, copy=False), y


def vm_hwm_mib() -> float:
    """Peak resident set size of this process (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sklearn_metrics(s, y):
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    valid = y < 2
    sv, yv = s[valid], y[valid]
    auc = roc_auc_score(yv, sv)
    ap = average_precision_score(yv, sv)
    fpr, tpr, _ = roc_curve(yv, sv, drop_intermediate=False)
    return {"auroc": auc, "ap": ap, "fpr95": float(fpr[np.flatnonzero(tpr >= 0.95)[0]]),
            "fpr95_interp": float(np.interp(0.95, tpr, fpr))}


def _timed(fn):
    """(wall s, user CPU s, system CPU s, result): system time is mostly the kernel finding fresh (huge) pages."""
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    out = fn()
    t, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return (t, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime), out


def compare(n: int, seed: int, with_sklearn: bool, repeat: int = 3) -> dict:
    s, y = make_data(n, seed)
    best = {"ours": (float("inf"),) * 3, "sort": (float("inf"),) * 3, "one": (float("inf"),) * 3}
    for _ in range(max(1, repeat)):  # in turns, so that all see the same machine
        t, srt = _timed(lambda: np.sort(s))
        del srt
        best["sort"] = min(best["sort"], t)
        t, ours = _timed(lambda: pixel_metrics(s, y))
        best["ours"] = min(best["ours"], t)
        t, one = _timed(lambda: pixel_metrics(s, y, threads=1))
        best["one"] = min(best["one"], t)
        assert one == ours, "the numbers must not depend on the threads"
    (t_ours, u_ours, k_ours), (t_sort, u_sort, k_sort) = best["ours"], best["sort"]
    row = {"n": n, "ours_s": t_ours, "sort_s": t_sort, "ours_per_sort": t_ours / t_sort,
           "one_s": best["one"][0], "one_per_sort": best["one"][0] / t_sort,
           "cpu": f"user+sys ours {u_ours:.2f}+{k_ours:.2f} s, np.sort {u_sort:.2f}+{k_sort:.2f} s"}
    if with_sklearn:
        t0 = time.perf_counter()
        ref = sklearn_metrics(s, y)
        row["sklearn_s"] = time.perf_counter() - t0
        row["speedup"] = row["sklearn_s"] / t_ours
        row["max_abs_diff"] = max(abs(ours[k] - ref[k]) for k in ref)
    row["auroc"] = ours["auroc"]
    row["ap"] = ours["ap"]
    return row


def stream(total: int, chunk: int, seed: int, dtype: str) -> dict:
    """Stream ``total`` pixels in chunks through PixelMetrics (exact); report time and peak RSS."""
    base = vm_hwm_mib()
    m = PixelMetrics()
    t_gen = t_upd = 0.0
    done, i = 0, 0
    bar = progress_bar(total=total, unit="px", unit_scale=True, file=sys.stderr, desc="stream")
    while done < total:
        n = min(chunk, total - done)
        t0 = time.perf_counter()
        s, y = make_data(n, seed * 1_000_003 + i, np.dtype(dtype))
        t1 = time.perf_counter()
        m.update(s, y)
        t_upd += time.perf_counter() - t1
        t_gen += t1 - t0
        done += n
        i += 1
        bar.update(n)
    bar.close()
    t0 = time.perf_counter()
    out = m.compute()
    t_comp = time.perf_counter() - t0
    return {"pixels": total, "chunk": chunk, "dtype": dtype, "update_s": t_upd, "compute_s": t_comp,
            "generate_s": t_gen, "distinct_entries": m.n_distinct, "peak_rss_mib": vm_hwm_mib(),
            "rss_before_mib": base, "auroc": out["auroc"], "ap": out["ap"]}


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1e7,1e8", help="comma-separated sizes compared with sklearn")
    p.add_argument("--sklearn-max", type=float, default=1e8, help="skip sklearn above this size")
    p.add_argument("--stream", type=float, default=1e9, help="pixels to stream (0 skips)")
    p.add_argument("--chunk", type=float, default=2e7, help="pixels per streamed update")
    p.add_argument("--stream-dtype", default="float32", choices=["float16", "float32"], help="streamed score dtype")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--repeat", type=int, default=3, help="runs of ours and of np.sort (the best is printed)")
    p.add_argument("--quick", action="store_true", help="a smoke run: --sizes 1e6,1e7 --stream 1e7 --chunk 2e6")
    p.add_argument("--_stream-child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.sizes, a.stream, a.chunk = "1e6,1e7", 1e7, 2e6
    if a._stream_child:
        print(json.dumps(stream(int(a.stream), int(a.chunk), a.seed, a.stream_dtype)))
        return
    import sklearn

    print(f"numpy {np.__version__}, sklearn {sklearn.__version__}; ours on {threads_for(None, 1 << 30)} threads;"
          f" {_load()}", flush=True)
    for size in [int(float(x)) for x in a.sizes.split(",") if x]:
        r = compare(size, a.seed, size <= a.sklearn_max, a.repeat)
        line = (f"n={r['n']:.0e}  ours {r['ours_s']:.2f} s  np.sort {r['sort_s']:.2f} s"
                f"  ours/np.sort {r['ours_per_sort']:.2f}x  (one thread: {r['one_s']:.2f} s,"
                f" {r['one_per_sort']:.2f}x)")
        if "sklearn_s" in r:
            line += (f"  sklearn {r['sklearn_s']:.2f} s  sklearn/ours {r['speedup']:.1f}x"
                     f"  max|diff| {r['max_abs_diff']:.1e}")
        print(line + f"  ({r['cpu']})", flush=True)
    print(_load(), flush=True)
    if a.stream > 0:
        cmd = [sys.executable, __file__, "--_stream-child", "--stream", str(a.stream), "--chunk", str(a.chunk),
               "--stream-dtype", a.stream_dtype, "--seed", str(a.seed)]
        res = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"stream {r['pixels']:.0e} px ({r['dtype']}, chunks of {r['chunk']:.0e}): update {r['update_s']:.1f} s"
              f" + compute {r['compute_s']:.1f} s (data generation {r['generate_s']:.1f} s not counted);"
              f" {r['distinct_entries']:,} histogram entries; peak RSS {r['peak_rss_mib']:.0f} MiB"
              f" (process baseline {r['rss_before_mib']:.0f} MiB;"
              f" {'within' if r['peak_rss_mib'] < 4096 else 'OVER'} the 4 GiB budget)")


if __name__ == "__main__":
    main()
