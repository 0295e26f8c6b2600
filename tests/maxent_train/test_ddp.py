"""DDP: `torchrun --nproc-per-node 2 -m maxent_train fit` on CPU (gloo) runs, splits batches, rank 0 writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _maxent_shards import make_shards

from maxent_train.train import read_log

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


# --------------------------------------------------------------------------------------------- export on many processes
def _export_cmd(ckpt, data, out, *extra, nproc: int | None = None) -> list[str]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
                if nproc else [sys.executable])
    return [*launcher, "-m", "maxent_train", "export", "--checkpoint", str(ckpt), "--data", str(data),
            "--kinds", "dag,cityscapes", "--out", str(out), "--device", "cpu", "--no-progress", *extra]


def _run(cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def export_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp-export")
    data = make_shards(d / "ds", {"cityscapes": 6, "coco": 0, "dag": 5}, size=24, shard_size=4)
    torch.manual_seed(1)
    from maxent_train.models import create_model

    model = create_model("tiny_segnet", num_classes=19, dropout=0.3)
    ckpt = d / "model-final.pt"
    torch.save({"state_dict": model.state_dict(),
                "metadata": {"model": "tiny_segnet", "num_classes": 19, "model_kwargs": {"dropout": 0.3}}}, ckpt)
    return data, ckpt


@pytest.mark.slow
def test_torchrun_export_equals_one_process(tmp_path, export_inputs):
    """2 gloo ranks split the 11 frames (6 + 5), each writes a part, rank 0 merges them in frame order: the file and
    the SML stats are a one-process export's (MC seeds are seed + frame index, whatever the rank)."""
    import numpy as np

    from cocodag.formats.logits import LogitsFile
    from cocodag.formats.sml_stats import SMLStats

    data, ckpt = export_inputs
    extra = ["--mc-samples", "3", "--moment-order", "3", "--seed", "4", "--store-images", "--compression", "gzip"]
    one, two = tmp_path / "one" / "F.h5", tmp_path / "two" / "F.h5"
    res = _run(_export_cmd(ckpt, data, one, *extra, "--sml-stats", str(one.with_suffix(".json"))))
    assert res.returncode == 0, res.stderr[-3000:]
    res = _run(_export_cmd(ckpt, data, two, *extra, "--sml-stats", str(two.with_suffix(".json")), nproc=2))
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in two.parent.iterdir()) == ["F.h5", "F.h5.lock", "F.json", "F.json.lock"]
    with LogitsFile(one) as a, LogitsFile(two) as b:
        assert len(b) == 11 and b.image_ids == a.image_ids and b.logits_resolution == "native"
        assert {k: v for k, v in b.attrs.items()} == a.attrs and b.mc_attrs == a.mc_attrs
        for i in range(11):
            fa, fb = a.frame(i, native=True), b.frame(i, native=True)
            np.testing.assert_array_equal(fb.label, fa.label)
            np.testing.assert_array_equal(fb.image, fa.image)
            np.testing.assert_allclose(fb.logits, fa.logits, rtol=1e-3, atol=1e-3)    # float16: 1 ulp at most
            np.testing.assert_array_equal(b.logits(i).argmax(0), a.logits(i).argmax(0))
            ma, mb = a.mc(i), b.mc(i)
            for k in ("mean", "central", "entropy"):
                np.testing.assert_allclose(mb[k], ma[k], rtol=1e-5, atol=1e-6)
    sa, sb = SMLStats.load(one.with_suffix(".json")), SMLStats.load(two.with_suffix(".json"))
    np.testing.assert_array_equal(sb.count_, sa.count_)
    np.testing.assert_allclose(sb.mean_, sa.mean_, rtol=1e-6)
    np.testing.assert_allclose(sb.var_, sa.var_, rtol=1e-5)
    with LogitsFile(two) as b:      # and they are what `oodscore fit-sml` computes from the merged file
        expect = SMLStats().fit(b.logits(i)[None] for i in range(len(b)))
    np.testing.assert_array_equal(sb.count_, expect.count_)
    np.testing.assert_array_equal(sb.mean_, expect.mean_)
    np.testing.assert_array_equal(sb.var_, expect.var_)


def _evalset(root, sizes):
    """An evaluation set (standard layout) of frames f0, f1, ... of the given (h, w) sizes."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(root / "images" / f"f{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        cv2.imwrite(str(root / "labels" / f"f{i}.png"), rng.choice(np.array([0, 1, 255], np.uint8), (h, w)))
    return root


@pytest.mark.slow
def test_torchrun_export_refused_or_failed_leaves_no_file(tmp_path, export_inputs):
    """A held --out stops both ranks at once with one line; a rank that fails mid-way (a frame of another size in
    rank 1's block), or parts that cannot be merged (rank 1's frames all of another size), end every rank with the
    one-process message and leave neither F.h5 nor any part behind."""
    from cocodag.lock import OutputLock

    _, ckpt = export_inputs
    out = tmp_path / "o" / "F.h5"
    out.parent.mkdir()
    with OutputLock(out):
        res = _run(_export_cmd(ckpt, "unused", out, nproc=2))
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert res.returncode != 0 and len(errors) == 2 and errors[0] == errors[1], res.stderr[-3000:]
    assert errors[0].startswith(f"error: --out {out}: in use by another job (pid {os.getpid()} ")
    assert sorted(p.name for p in out.parent.iterdir()) == ["F.h5.lock"]
    for name, sizes in (("midway", [(32, 40)] * 3 + [(40, 32)]), ("merge", [(32, 40)] * 2 + [(40, 32)] * 2)):
        root = _evalset(tmp_path / name, sizes)
        (out.parent / "F.h5.part-1-of-3").write_bytes(b"left by a killed job")     # removed by the next job
        cmd = _export_cmd(ckpt, "x", out, nproc=2)
        cmd[cmd.index("--data"):cmd.index("--data") + 4] = ["--images", str(root)]      # evalset instead of shards
        res = _run(cmd)
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
        assert res.returncode != 0 and len(errors) == 2 and errors[0] == errors[1], res.stderr[-3000:]
        bad = "f3" if name == "midway" else "f2"
        assert errors[0] == f"error: frame {bad} is 32x40 but earlier frames are 40x32; logits.h5 holds frames of " \
                            "one size (export each size separately)", errors[0]
        assert sorted(p.name for p in out.parent.iterdir()) == ["F.h5.lock"]
