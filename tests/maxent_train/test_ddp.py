"""DDP: `torchrun --nproc-per-node 2 -m maxent_train fit` on CPU (gloo) runs, splits batches, rank 0 writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maxent_train.train import read_log

from _maxent_shards import make_shards

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    data = make_shards(tmp_path / "ds", {"cityscapes": 16, "coco": 10, "dag": 8}, size=24, shard_size=4)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "maxent_train", "fit", "--data", str(data), "--model", "tiny_segnet", "--out", str(out),
           "--batch-size", "2", "--epochs", "2", "--embedding-img-interval", "2", "--checkpoint-every", "3",
           "--device", "cpu", "--no-progress", "--lr", "1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    # 16 cityscapes + int(0.1*16)=1 coco = 17 samples / global batch 4 = 4 steps per epoch
    assert cfg["world_size"] == 2 and cfg["steps_per_epoch"] == 4
    log = read_log(out / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 9))               # rank 0 alone writes the log
    assert all(r["samples_per_s"] > 0 for r in log)
    ck = torch.load(out / "checkpoint-last.pt", weights_only=True)
    assert ck["step"] == 8 and ck["data"] == {"epoch": 2, "batch": 0}
    assert not any(k.startswith("module.") for k in ck["model"])      # unwrapped state_dict
    final = torch.load(out / "model-final.pt", weights_only=True)
    assert all(torch.equal(final["state_dict"][k], ck["model"][k]) for k in ck["model"])


@pytest.mark.slow
def test_torchrun_refused_out_stops_every_rank_at_once_with_one_line(tmp_path):
    """Rank 0 takes the run's lock for the whole job; when it cannot, every rank exits with the same line (no rank
    left waiting in a collective until its 30-minute timeout)."""
    import time

    from cocodag.lock import OutputLock

    data = make_shards(tmp_path / "ds", {"cityscapes": 8, "coco": 2, "dag": 4}, size=24, shard_size=4)
    out = tmp_path / "run"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "maxent_train", "fit", "--data", str(data), "--model", "tiny_segnet", "--out", str(out),
           "--batch-size", "2", "--epochs", "1", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with OutputLock(out):                   # this test process is "another job" holding the run
        t0 = time.monotonic()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t0
    assert res.returncode != 0
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 2 and errors[0] == errors[1], res.stderr[-3000:]          # one line per rank, the same
    assert errors[0].startswith(f"error: --out {out}: in use by another job (pid {os.getpid()} ")
    assert took < 60, took
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
