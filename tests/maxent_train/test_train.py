"""maxent_train.train: fit lowers the loss, kill -9 + resume is exact, config.json reproduces a run."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _maxent_shards import make_shards

from cocodag.errors import CocodagError
from maxent_train import MaxentError
from maxent_train.data import DeviceAugment, MixPlan, ShardReader
from maxent_train.loss import maxent_loss
from maxent_train.models import create_model
from maxent_train.train import (
    CHECKPOINT_LAST,
    LOG_NAME,
    MODEL_FINAL,
    FitConfig,
    RunDir,
    fit,
    read_log,
    setup_distributed,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("train") / "ds", {"cityscapes": 24, "coco": 20, "dag": 12},
                       size=32, shard_size=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")     # tests/conftest.py


def _cfg(data_dir, out, **kw) -> FitConfig:
    base = dict(data=str(data_dir), model="tiny_segnet", out=str(out), batch_size=4, lr=1e-3, epochs=50,
                embedding_img_interval=3, seed=7, checkpoint_every=10, progress=False)
    base.update(kw)
    return FitConfig(**base)


def _fixed_batch_loss(data_dir, state_dict, lam: float) -> float:
    from cocodag.formats.shards import open_dataset

    ds = open_dataset(data_dir)
    reader = ShardReader(ds)
    plan = MixPlan({k: ds.num_samples(k) for k in ("cityscapes", "coco", "dag")}, batch_size=8, seed=99,
                   embedding_img_interval=2)
    refs = np.concatenate([plan.batch_refs(0, 0), plan.batch_refs(0, 1)])   # original + DAG crops
    images, labels = reader.read(refs)
    reader.close()
    x, y = DeviceAugment(flip_p=0.0)(torch.from_numpy(images), torch.from_numpy(labels))
    model = create_model("tiny_segnet", num_classes=19)
    model.load_state_dict(state_dict)
    model.eval()
    with torch.no_grad():
        loss, _ = maxent_loss(model(x), y, lam=lam)
    return float(loss)


def test_fit_lowers_loss_on_a_fixed_batch(data_dir, tmp_path):
    torch.manual_seed(0)
    init = create_model("tiny_segnet", num_classes=19)
    torch.save(init.state_dict(), tmp_path / "init.pt")
    # λ=0.5: with λ=0.9 a fresh network is already near the OOD optimum (uniform softmax) and the loss is
    # dominated by the λ·log C floor, so 60 steps barely move it
    summary = fit(_cfg(data_dir, tmp_path / "run", init=str(tmp_path / "init.pt"), max_steps=60, lam=0.5))
    assert summary["steps"] == 60
    final = torch.load(tmp_path / "run" / MODEL_FINAL, weights_only=True)
    assert final["metadata"]["model"] == "tiny_segnet" and final["metadata"]["num_classes"] == 19
    before = _fixed_batch_loss(data_dir, init.state_dict(), 0.5)
    after = _fixed_batch_loss(data_dir, final["state_dict"], 0.5)
    assert after < 0.8 * before, (before, after)
    log = read_log(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 61))
    assert {"step", "epoch", "loss", "id_ce", "ood_entropy", "lr", "samples_per_s"} <= set(log[0])
    # DAG batches are every 3rd batch of each epoch (6 batches/epoch: 24 cityscapes + 2 coco crops, batch 4)
    assert [r["dag"] for r in log[:6]] == [False, False, True, False, False, True]
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["options"]["lr"] == 1e-3 and cfg["seed"] == 7 and len(cfg["data_manifest_hash"]) == 64
    assert "torch" in cfg["versions"] and cfg["steps_per_epoch"] == 6
    ck = torch.load(tmp_path / "run" / CHECKPOINT_LAST, weights_only=True)   # loads without unpickling code
    assert ck["step"] == 60 and ck["data"] == {"epoch": 10, "batch": 0}


def test_kill9_then_resume_matches_uninterrupted(data_dir, tmp_path):
    steps = 80
    fit(_cfg(data_dir, tmp_path / "ref", max_steps=steps))
    ref_log = read_log(tmp_path / "ref" / "log.jsonl")

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "maxent_train", "fit", "--data", str(data_dir), "--model", "tiny_segnet",
           "--out", str(run), "--batch-size", "4", "--lr", "1e-3", "--epochs", "50", "--embedding-img-interval", "3",
           "--seed", "7", "--checkpoint-every", "10", "--max-steps", str(steps), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not (run / CHECKPOINT_LAST).exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (run / MODEL_FINAL).exists(), "the run finished before it was killed"
    saved = torch.load(run / CHECKPOINT_LAST, weights_only=True)["step"]
    assert 0 < saved < steps

    with pytest.raises(MaxentError, match="--resume"):
        fit(_cfg(data_dir, run, max_steps=steps))                     # refuses to overwrite a run
    first_step = []
    fit(_cfg(data_dir, run, max_steps=steps), resume=True, on_step=lambda r: first_step.append(r["step"]))
    assert first_step[0] == saved + 1                                  # continued, not restarted at 0
    log = read_log(run / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, steps + 1))
    # bit-identical losses on CPU (same batches, flips, dropout masks, optimizer state)
    assert [r["loss"] for r in log] == [r["loss"] for r in ref_log]
    a = torch.load(run / MODEL_FINAL, weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "ref" / MODEL_FINAL, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_changed_options(data_dir, tmp_path):
    fit(_cfg(data_dir, tmp_path / "r", max_steps=12))
    with pytest.raises(MaxentError, match="lr"):
        fit(_cfg(data_dir, tmp_path / "r", max_steps=20, lr=1e-2), resume=True)
    with pytest.raises(MaxentError, match="nothing to resume"):
        fit(_cfg(data_dir, tmp_path / "none", max_steps=5), resume=True)
    # extending a finished run with a larger --max-steps continues from its checkpoint
    fit(_cfg(data_dir, tmp_path / "r", max_steps=20), resume=True)
    assert [r["step"] for r in read_log(tmp_path / "r" / "log.jsonl")] == list(range(1, 21))


def test_recreate_optimizer_changes_training(data_dir, tmp_path):
    a = fit(_cfg(data_dir, tmp_path / "a", max_steps=12, checkpoint_every=100))
    b = fit(_cfg(data_dir, tmp_path / "b", max_steps=12, checkpoint_every=100, recreate_optimizer_each_epoch=False))
    la = [r["loss"] for r in read_log(tmp_path / "a" / "log.jsonl")]
    lb = [r["loss"] for r in read_log(tmp_path / "b" / "log.jsonl")]
    assert la[:7] == lb[:7] and la[7:] != lb[7:]      # identical first epoch (6 steps + 1 after reset differs)
    assert a["steps"] == b["steps"] == 12


def test_single_process_context_and_run_dir(tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = setup_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    net = torch.nn.Linear(2, 2)
    assert ctx.wrap(net) is net
    if not torch.cuda.is_available():
        with pytest.raises(CocodagError, match="CUDA is not available"):
            setup_distributed("cuda")
    run = RunDir(tmp_path / "run")
    run.check_fresh()
    with pytest.raises(MaxentError, match="nothing to resume"):
        run.check_resume({}, "hash", "data")
    run.start({"options": {"lr": 1.0}, "data_manifest_hash": "h"}, 0, resume=False)
    run.save({"model": {}, "optimizer": {}, "rng": {}, "data": {}, "step": 0}, run.checkpoint)
    assert not run.checkpoint.with_name(run.checkpoint.name + ".tmp").exists()
    with pytest.raises(MaxentError, match="already holds a run"):
        run.check_fresh()
    with pytest.raises(MaxentError, match=r"options \['lr'\] differ"):
        run.check_resume({"lr": 2.0}, "h", "data")
    with pytest.raises(MaxentError, match="data manifest"):
        run.check_resume({"lr": 1.0}, "other", "data")
    assert run.check_resume({"lr": 1.0}, "h", "data")["step"] == 0


def test_resume_compares_the_checkpoints_own_options_without_config_json(data_dir, tmp_path):
    import shutil

    data = tmp_path / "ds"
    shutil.copytree(data_dir, data)
    run = tmp_path / "r"
    fit(_cfg(data, run, max_steps=12))
    meta = torch.load(run / CHECKPOINT_LAST, weights_only=True)["metadata"]
    assert meta["options"]["lr"] == 1e-3 and meta["options"]["batch_size"] == 4 and meta["world_size"] == 1
    assert "out" not in meta["options"] and "max_steps" not in meta["options"]    # those may change on resume
    (run / "config.json").unlink()
    for change, needle in (({"lr": 1e-2}, "--lr: run 0.001, now 0.01"),
                           ({"optim_target": "logit"}, "--optim-target: run 'entropy', now 'logit'"),
                           ({"batch_size": 8}, "--batch-size: run 4, now 8")):
        with pytest.raises(MaxentError) as ei:
            fit(_cfg(data, run, max_steps=20, **change), resume=True)
        msg = str(ei.value)
        assert msg.startswith("--resume: options") and str(run / CHECKPOINT_LAST) in msg and "\n" not in msg, msg
        assert needle in msg, msg
    assert read_log(run / "log.jsonl")[-1]["step"] == 12       # nothing was touched by the refused resumes
    assert not (run / "config.json").exists()
    # the same options resume (and write a new config.json)
    fit(_cfg(data, run, max_steps=20), resume=True)
    assert [r["step"] for r in read_log(run / "log.jsonl")] == list(range(1, 21))
    assert (run / "config.json").is_file()
    # other data under the same path is refused from the checkpoint's record too
    (run / "config.json").unlink()
    shutil.rmtree(data)
    make_shards(data, {"cityscapes": 24, "coco": 20, "dag": 12}, size=32, shard_size=8, seed=5)
    with pytest.raises(MaxentError, match=f"data manifest of {data} differs .*recorded in {run / CHECKPOINT_LAST}"):
        fit(_cfg(data, run, max_steps=24), resume=True)


def test_run_dir_lock_and_odd_out_paths(data_dir, tmp_path):
    from cocodag.lock import OutputLock, OutputLockedError

    run = tmp_path / "run"
    run.mkdir()
    with OutputLock(run):           # another job holds the run: refused before any work, nothing written
        with pytest.raises(OutputLockedError, match=r"--out .*: in use by another job \(pid \d+ on "):
            fit(_cfg(data_dir, run, max_steps=2))
    assert sorted(p.name for p in run.iterdir()) == [".lock"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    # odd --out paths are refused before the data is even opened (--data does not exist here)
    for out, needle in ((afile, "is an existing file, expected a folder"), (afile / "run", "is a file, so nothing")):
        with pytest.raises(CocodagError, match=needle):
            fit(_cfg(tmp_path / "no-such-data", out, max_steps=2))


def _fill(folder: Path, leave: int) -> None:
    """Fill the file system of ``folder`` until about ``leave`` bytes are free."""
    import shutil as _sh

    free = _sh.disk_usage(folder).free
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_disk_full_run_files_are_one_line_and_never_half_written(small_fs, data_dir, tmp_path):
    mnt, _ = small_fs
    # tiny_segnet's training checkpoint (~6 MB) cannot fit on 1 MiB: the first save fails, nothing is left
    run = mnt / "run"
    with pytest.raises(CocodagError) as ei:
        fit(_cfg(data_dir, run, max_steps=3))
    assert str(ei.value).startswith(f"No space left on device: {run / CHECKPOINT_LAST};"), ei.value
    assert not (run / CHECKPOINT_LAST).exists() and not (run / (CHECKPOINT_LAST + ".tmp")).exists()
    assert [r["step"] for r in read_log(run / LOG_NAME)] == [1, 2, 3]
    # config.json and the log: the old file stays, no temp file, no half line
    rd = RunDir(mnt / "r2")
    rd.start({"options": {"lr": 1.0}}, 0, resume=False)
    before = rd.config.read_bytes()
    _fill(mnt, 0)
    with pytest.raises(CocodagError, match=f"No space left on device: {rd.config}"):
        rd.start({"options": {"lr": 1.0}, "pad": "x" * 10000}, 0, resume=False)
    assert rd.config.read_bytes() == before and not (mnt / "r2" / "config.json.tmp").exists()
    with rd.log_writer(True) as write:
        with pytest.raises(CocodagError, match=f"No space left on device: {rd.log}"):
            write({"step": 1, "pad": "x" * 10000})
    assert rd.log.read_bytes() == b""


@pytest.mark.slow
def test_two_fits_into_one_out_one_refused_the_other_equals_a_solo_run(data_dir, tmp_path):
    steps = 60
    fit(_cfg(data_dir, tmp_path / "solo", max_steps=steps))
    solo_losses = [r["loss"] for r in read_log(tmp_path / "solo" / LOG_NAME)]
    solo = torch.load(tmp_path / "solo" / MODEL_FINAL, weights_only=True)["state_dict"]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "maxent_train", "fit", "--data", str(data_dir), "--model", "tiny_segnet",
           "--out", str(run), "--batch-size", "4", "--lr", "1e-3", "--epochs", "50", "--embedding-img-interval", "3",
           "--seed", "7", "--checkpoint-every", "10", "--max-steps", str(steps), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for attempt in range(3):
        if run.exists():
            shutil.rmtree(run)
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.2)
        second = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        errs = {p.pid: p.communicate(timeout=300)[1] for p in (first, second)}
        codes = {p.pid: p.returncode for p in (first, second)}
        assert sorted(codes.values()) == [0, 1], (attempt, codes, errs)
        winner = next(pid for pid, rc in codes.items() if rc == 0)
        loser = next(pid for pid, rc in codes.items() if rc == 1)
        lines = [ln for ln in errs[loser].splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: --out {run}: in use by another job (pid {winner} "), \
            (attempt, errs[loser])
        assert [r["loss"] for r in read_log(run / LOG_NAME)] == solo_losses, attempt
        final = torch.load(run / MODEL_FINAL, weights_only=True)["state_dict"]
        assert all(torch.equal(final[k], solo[k]) for k in solo), attempt


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_commit_only_of_the_checkout_the_package_runs_from(tmp_path, monkeypatch):
    """A run records the commit of the checkout it runs from, never that of a repository its installed copy happens
    to lie in (a venv inside a checkout)."""
    import maxent_train.train as train_mod

    repo = tmp_path / "repo"
    (repo / "maxent_train").mkdir(parents=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    monkeypatch.setattr(train_mod, "__file__", str(repo / "maxent_train" / "train.py"))
    assert train_mod.git_commit() == head
    site = repo / ".venv" / "lib" / "site-packages"
    (site / "maxent_train").mkdir(parents=True)
    monkeypatch.setattr(train_mod, "__file__", str(site / "maxent_train" / "train.py"))
    assert train_mod.git_commit() is None
