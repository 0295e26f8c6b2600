"""``maxent-train fit --objective NAME``: the objectives of maxent_train.objectives on the trainer.

- the default (maxent) is the trainer it always was: its losses are the ones the committed trainer gave before the
  objectives existed (recorded once from that code, on the same shards);
- pebal / balanced-energy: the abstention channel grown from a 19-class checkpoint as PEBAL's
  ``load_model(extra_channel=True)`` does, only the final classifier block trained (``--train-only`` default), the
  frozen BatchNorm choice, everything recorded so that ``--config`` reproduces the run and a saved run loads back;
- ``--lr-schedule poly`` equals PEBAL's ``WarmUpPolyLR`` as its trainer applies it; ``--weight-decay`` reaches Adam;
- bad input is one line.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _maxent_shards import make_shards
from test_field_checkpoints_cli import _calibrate_batchnorm, _nvidia  # NVIDIA's layout, as the family tests write it
from typer.testing import CliRunner

from maxent_train import MaxentError
from maxent_train.cli import app
from maxent_train.models import create_model, load_checkpoint, read_checkpoint
from maxent_train.schedule import LRSchedule
from maxent_train.train import CHECKPOINT_LAST, MODEL_FINAL, FitConfig, fit, read_log

runner = CliRunner()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    # the shards the committed trainer's losses below were recorded on
    return make_shards(tmp_path_factory.mktemp("objfit") / "ds", {"cityscapes": 24, "coco": 20, "dag": 12},
                       size=32, shard_size=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")     # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A 19-class tiny_segnet checkpoint of the plain-state_dict kind."""
    torch.manual_seed(0)
    model = create_model("tiny_segnet", num_classes=19)
    path = tmp_path_factory.mktemp("init") / "tiny19.pt"
    torch.save(model.state_dict(), path)
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def _cfg(data_dir, out, **kw) -> FitConfig:
    base = dict(data=str(data_dir), model="tiny_segnet", out=str(out), batch_size=4, lr=1e-3, epochs=50,
                embedding_img_interval=3, seed=7, checkpoint_every=5, progress=False, device="cpu")
    base.update(kw)
    return FitConfig(**base)


def _one_line_error(res, *needles: str) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------------------------------- maxent
#: log.jsonl losses of the committed trainer (before --objective existed, commit 6f1af1b), run as
#: ``maxent-train fit --model tiny_segnet --batch-size 4 --lr 1e-3 --epochs 50 --embedding-img-interval 3 --seed 7
#: --checkpoint-every 5 --max-steps 14 --device cpu`` (OMP_NUM_THREADS=1) on ``data_dir``'s shards; the second run
#: adds ``--keep-optimizer --lambda 0.5 --optim-target logit``. With it, the optimizer state, weights and the log
#: matched bit for bit, and the checkpoint metadata only gained keys.
COMMITTED_LOSSES = {
    "default": [0.3045440912246704, 0.3090420961380005, 0.5653628706932068, 0.2869291305541992, 0.3012985289096832,
                0.546687662601471, 0.2680831849575043, 0.300891637802124, 0.5725583434104919, 0.2853802442550659,
                0.30278947949409485, 0.5255630016326904, 0.2784586250782013, 0.2623112201690674],
    "logit": [-0.47092095017433167, -0.7232460379600525, -0.758176326751709, -1.1466047763824463,
              -1.0597563982009888, -1.228101134300232, -1.5564504861831665, -1.6903997659683228,
              -1.5950897932052612, -1.2896859645843506, -1.9106570482254028, -1.6110409498214722,
              -1.8946871757507324, -1.9420092105865479],
}


@pytest.mark.parametrize("case", ["default", "logit"])
def test_maxent_default_is_the_committed_trainer(case, data_dir, tmp_path):
    extra = {} if case == "default" else {"recreate_optimizer_each_epoch": False, "lam": 0.5, "optim_target": "logit"}
    fit(_cfg(data_dir, tmp_path / "r", max_steps=14, **extra))
    log = read_log(tmp_path / "r" / "log.jsonl")
    assert [r["loss"] for r in log] == pytest.approx(COMMITTED_LOSSES[case], rel=1e-5, abs=1e-7)
    # the log lines keep their fields, in their order
    assert list(log[0]) == ["step", "epoch", "batch", "loss", "id_ce", "ood_entropy", "n_id", "n_ood", "lr", "dag",
                            "samples_per_s"]
    meta = torch.load(tmp_path / "r" / MODEL_FINAL, weights_only=True)["metadata"]
    assert meta["objective"] == {"name": "maxent", "params": {"lam": extra.get("lam", 0.9),
                                                             "optim_target": extra.get("optim_target", "entropy")}}
    assert meta["num_outputs"] == 19 and meta["abstention_channel"] is None and meta["train_only"] is None
    ck = torch.load(tmp_path / "r" / CHECKPOINT_LAST, weights_only=True)
    group = ck["optimizer"]["param_groups"][0]
    assert group["weight_decay"] == 0 and len(group["params"]) == len(list(create_model("tiny_segnet").parameters()))


# ----------------------------------------------------------------------------------------------------- pebal
def test_pebal_grows_the_classifier_and_trains_its_block_only(data_dir, tiny_init, tmp_path):
    init, before = tiny_init
    fit(_cfg(data_dir, tmp_path / "p", init=str(init), objective="pebal", max_steps=3, lr=1e-2))
    state, meta = read_checkpoint(tmp_path / "p" / MODEL_FINAL)
    assert state["classifier.weight"].shape[0] == 20 and state["classifier.bias"].shape == (20,)
    # num_classes / num_outputs: the network's outputs (what export, miou, predict build); the class count: options
    assert meta["num_classes"] == meta["num_outputs"] == 20 and meta["abstention_channel"] == 19
    assert meta["options"]["num_classes"] == 19
    assert meta["objective"]["name"] == "pebal" and meta["objective"]["params"]["num_classes"] == 19
    assert meta["train_only"] == ["fuse.*", "classifier.*"] and meta["grown_classifier"] == ["classifier"]
    assert meta["abstention_source"] == "grown from --init" and meta["frozen_bn"] == "train"
    params = {n for n, _ in create_model("tiny_segnet").named_parameters()}
    trained = {n for n in params if n.startswith(("fuse.", "classifier."))}
    for name in params - trained:
        assert torch.equal(state[name], before[name]), name          # frozen: not moved
    for name in trained:
        moved = state[name][:19] if name.startswith("classifier.") else state[name]
        assert not torch.equal(moved, before[name]), name             # trained, the first 19 rows too
    # frozen BatchNorm layers kept updating their running statistics (--frozen-bn train, PEBAL's code)
    assert not torch.equal(state["stem.0.1.running_mean"], before["stem.0.1.running_mean"])
    # the saved run loads back as the 20-output network, and continues with --resume
    model = create_model("tiny_segnet", num_classes=meta["num_outputs"])
    assert load_checkpoint(model, tmp_path / "p" / MODEL_FINAL).ok
    log = read_log(tmp_path / "p" / "log.jsonl")
    assert {"gambler", "energy", "n_ood"} <= set(log[0]) and all(math.isfinite(r["loss"]) for r in log)
    fit(_cfg(data_dir, tmp_path / "p", init=str(init), objective="pebal", max_steps=5, lr=1e-2), resume=True)
    assert [r["step"] for r in read_log(tmp_path / "p" / "log.jsonl")] == [1, 2, 3, 4, 5]


def test_frozen_bn_eval_leaves_the_frozen_network_exactly_as_loaded(data_dir, tiny_init, tmp_path):
    init, before = tiny_init
    fit(_cfg(data_dir, tmp_path / "e", init=str(init), objective="balanced-energy", max_steps=2,
             frozen_bn="eval", train_only=["classifier.*"]))
    state, meta = read_checkpoint(tmp_path / "e" / MODEL_FINAL)
    assert meta["frozen_bn"] == "eval" and meta["train_only"] == ["classifier.*"] and meta["trained_tensors"] == 2
    for name, value in before.items():
        if not name.startswith("classifier."):
            assert torch.equal(state[name], value), name     # parameters and BatchNorm statistics
    assert not torch.equal(state["classifier.weight"][:19], before["classifier.weight"])


def test_an_init_with_the_abstention_channel_is_continued_not_grown(data_dir, tiny_init, tmp_path):
    init, _ = tiny_init
    fit(_cfg(data_dir, tmp_path / "a", init=str(init), objective="pebal", max_steps=1))
    first = read_checkpoint(tmp_path / "a" / MODEL_FINAL)[0]
    # our own 20-output run (its metadata names the model) and PEBAL's layout of such a file ({'model': ...})
    torch.save({"model": first}, tmp_path / "pebal_layout.pt")
    for source in (tmp_path / "a" / MODEL_FINAL, tmp_path / "pebal_layout.pt"):
        out = tmp_path / f"b_{source.stem}"
        model = "" if source.name == MODEL_FINAL else "tiny_segnet"     # ours names its model (and 19 + 1 outputs)
        fit(_cfg(data_dir, out, init=str(source), model=model, objective="pebal", max_steps=1, lr=1e-9))
        state, meta = read_checkpoint(out / MODEL_FINAL)
        assert meta["abstention_source"] == "in --init" and meta["grown_classifier"] == []
        assert torch.allclose(state["classifier.weight"], first["classifier.weight"], atol=1e-6)
    # ... and a maxent fit refuses it in one line instead of a shape mismatch
    with pytest.raises(MaxentError, match=r"has an abstention channel \(output 19, trained with pebal\)"):
        fit(_cfg(data_dir, tmp_path / "m", init=str(tmp_path / "a" / MODEL_FINAL), max_steps=1))


# ----------------------------------------------------------------------------------------------------- schedule
#: engine/lr_policy.py:WarmUpPolyLR(start_lr, lr_power, total_iters, warmup_steps=0).get_lr(i), recorded once from
#: the PEBAL checkout (tianyu0207/PEBAL), i = 0, 1, ...
OFFICIAL_POLY = {
    (1e-5, 0.9, 10): [1e-05, 9.095325760829622e-06, 8.180521460508584e-06, 7.2541784693721995e-06,
                      6.314458674893553e-06, 5.3588673126814664e-06, 4.383832905540869e-06, 3.383834619016499e-06,
                      2.3492378861760375e-06, 1.2589254117941672e-06],
    (1e-3, 2.0, 6): [0.001, 0.0006944444444444446, 0.0004444444444444445, 0.00025, 0.00011111111111111113,
                     2.7777777777777766e-05],
}


def test_poly_schedule_is_pebals_as_its_trainer_applies_it():
    for (lr, power, total), official in OFFICIAL_POLY.items():
        sched = LRSchedule("poly", lr, total, power)
        # the trainer sets get_lr(i) after step i: step s runs with get_lr(s - 1), step 0 with the base rate
        assert [sched(s) for s in range(total)] == [lr] + official[:-1]
        assert sched(total) == official[-1]
    # the 1e-8 floor of WarmUpPolyLR (numpy.clip(., end_lr, start_lr)): get_lr(99990) of 100000 steps
    assert LRSchedule("poly", 1e-5, 100_000, 0.9)(99_991) == 1e-08
    assert LRSchedule("constant", 1e-3, 5)(4) == 1e-3


def test_poly_schedule_and_weight_decay_reach_adam(data_dir, tmp_path):
    fit(_cfg(data_dir, tmp_path / "s", max_steps=7, lr_schedule="poly", lr_power=0.9, weight_decay=1e-4,
             recreate_optimizer_each_epoch=False))
    log = read_log(tmp_path / "s" / "log.jsonl")
    total = json.loads((tmp_path / "s" / "config.json").read_text())["steps_per_epoch"] * 50   # T: every planned step
    sched = LRSchedule("poly", 1e-3, total, 0.9)
    assert [r["lr"] for r in log] == [sched(s) for s in range(7)]
    assert log[0]["lr"] == log[1]["lr"] == 1e-3 > log[2]["lr"]
    group = torch.load(tmp_path / "s" / CHECKPOINT_LAST, weights_only=True)["optimizer"]["param_groups"][0]
    assert group["weight_decay"] == 1e-4 and group["lr"] == sched(6)
    # weight decay changes the training (Adam's L2 term), a stopped run does not change T
    fit(_cfg(data_dir, tmp_path / "s0", max_steps=7, lr_schedule="poly", recreate_optimizer_each_epoch=False))
    assert [r["loss"] for r in read_log(tmp_path / "s0" / "log.jsonl")][3:] != [r["loss"] for r in log][3:]
    assert [r["lr"] for r in read_log(tmp_path / "s0" / "log.jsonl")] == [r["lr"] for r in log]


# ----------------------------------------------------------------------------------------------------- CLI, config
def test_cli_objective_options_round_trip_through_config(data_dir, tiny_init, tmp_path):
    init, _ = tiny_init
    args = ["fit", "--no-progress", "--data", str(data_dir), "--model", "tiny_segnet", "--init", str(init),
            "--batch-size", "4", "--lr", "1e-3", "--seed", "3", "--max-steps", "3", "--embedding-img-interval", "2",
            "--device", "cpu", "--objective", "balanced-energy", "--objective-kwargs", "alpha=4,m_out=-5",
            "--train-only", "fuse.*", "--train-only", "classifier.*", "--lr-schedule", "poly", "--lr-power", "2",
            "--weight-decay", "1e-5", "--frozen-bn", "eval"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    opts = cfg["options"]
    assert (opts["objective"], opts["objective_kwargs"], opts["train_only"]) == (
        "balanced-energy", {"alpha": 4, "m_out": -5}, ["fuse.*", "classifier.*"])
    assert (opts["lr_schedule"], opts["lr_power"], opts["weight_decay"], opts["frozen_bn"]) == ("poly", 2.0, 1e-5,
                                                                                              "eval")
    assert cfg["objective"]["name"] == "balanced-energy" and cfg["objective"]["params"]["alpha"] == 4.0
    assert cfg["num_outputs"] == 20 and cfg["abstention_channel"] == 19
    res = runner.invoke(app, ["fit", "--no-progress", "--config", str(tmp_path / "a" / "config.json"),
                              "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "b" / "config.json").read_text())
    assert {k: v for k, v in again["options"].items() if k != "out"} == {k: v for k, v in opts.items() if k != "out"}
    la, lb = read_log(tmp_path / "a" / "log.jsonl"), read_log(tmp_path / "b" / "log.jsonl")
    assert [(r["loss"], r["lr"]) for r in la] == [(r["loss"], r["lr"]) for r in lb] and len(la) == 3
    # a changed objective parameter is refused on --resume, naming it
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "a"), "--max-steps", "4", "--resume",
                              "--objective-kwargs", "alpha=5,m_out=-5"])
    _one_line_error(res, "--resume", "--objective-kwargs")


def test_help_offers_the_objectives_and_schedules():
    res = runner.invoke(app, ["fit", "--help"], env={"COLUMNS": "250"})
    assert "--objective " in res.output and "<maxent|pebal|balanced-energy>" in res.output, res.output
    assert "<constant|poly>" in res.output and "<train|eval>" in res.output


def test_bad_objective_input_is_one_line(data_dir, tiny_init, tmp_path):
    init, _ = tiny_init
    base = ["fit", "--no-progress", "--data", str(data_dir), "--model", "tiny_segnet", "--out", str(tmp_path / "x"),
            "--max-steps", "1", "--device", "cpu"]
    cases = [
        (["--objective-kwargs", "m_outt=-5", "--objective", "pebal"], ["m_outt", "valid: m_in, m_out"]),
        (["--objective-kwargs", "lam=0.5"], ["lam (use --lambda)"]),
        (["--objective", "pebal", "--lambda", "0.5"], ["--lambda", "maxent", "--objective-kwargs"]),
        (["--objective", "pebal", "--objective-kwargs", "num_classes=7"], ["--num-classes 19"]),
        (["--train-only", "final.*"], ["--train-only 'final.*' matches no parameter", "stem.*", "classifier.*"]),
        (["--lr-power", "0"], ["--lr-power must be > 0"]),
        (["--weight-decay", "-1"], ["--weight-decay must be >= 0"]),
    ]
    for extra, needles in cases:
        _one_line_error(runner.invoke(app, [*base, *extra]), *needles)
    # an objective unknown to the command line is typer's usage error listing them; from a config file it is ours
    res = runner.invoke(app, [*base, "--objective", "oe"])
    assert res.exit_code == 2 and "maxent" in res.output and "balanced-energy" in res.output, res.output
    (tmp_path / "run.toml").write_text('[fit]\nobjective = "oe"\n')
    _one_line_error(runner.invoke(app, [*base, "--config", str(tmp_path / "run.toml")]),
                    "unknown objective 'oe'", "maxent, pebal, balanced-energy")
    # a checkpoint whose classifier cannot be grown to 19 + 1 (7 classes)
    torch.manual_seed(0)
    torch.save(create_model("tiny_segnet", num_classes=7).state_dict(), tmp_path / "seven.pt")
    _one_line_error(runner.invoke(app, [*base, "--objective", "pebal", "--init", str(tmp_path / "seven.pt")]),
                    "classifier classifier has 7 outputs", "--num-classes 7")
    assert not (tmp_path / "x" / CHECKPOINT_LAST).exists()


# ----------------------------------------------------------------------------------------------------- WRN38
def test_pebal_on_nvidias_wrn38_file(tmp_path):
    """``fit --objective pebal --init cityscapes_best.pth --model deeplabv3plus_wrn38`` on NVIDIA's layout: the final
    conv has 20 outputs, no parameter outside ``final.*`` changed, the first 19 rows did (~8 s: a 550 MB file written
    and read, 2 steps on 32x32 crops)."""
    t0 = time.perf_counter()
    data = make_shards(tmp_path / "ds", {"cityscapes": 4, "coco": 1, "dag": 2}, size=32, shard_size=4)
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_wrn38")
    _calibrate_batchnorm(model, np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    init = tmp_path / "cityscapes_best.pth"
    _nvidia(model, init)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    del model
    run = tmp_path / "run"
    res = runner.invoke(app, ["fit", "--no-progress", "--data", str(data), "--objective", "pebal", "--init", str(init),
                              "--model", "deeplabv3plus_wrn38", "--out", str(run), "--batch-size", "2",
                              "--embedding-img-interval", "2", "--max-steps", "2", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    init.unlink()
    state, meta = read_checkpoint(run / MODEL_FINAL)
    (run / CHECKPOINT_LAST).unlink()
    assert state["final.6.weight"].shape == (20, 256, 1, 1)
    assert meta["num_outputs"] == 20 and meta["abstention_channel"] == 19 and meta["train_only"] == ["final.*"]
    assert meta["grown_classifier"] == ["final.6"]
    unchanged = [k for k in before if not k.startswith("final.")]
    assert len(unchanged) == len(before) - 7 and all(torch.equal(state[k], before[k]) for k in unchanged)
    rows = state["final.6.weight"][:19]
    assert bool((rows != before["final.6.weight"]).flatten(1).any(1).all())       # every one of the 19 rows moved
    assert all(not torch.equal(state[k], before[k]) for k in before if k.startswith("final.") and k != "final.6.weight")
    log = read_log(run / "log.jsonl")
    assert len(log) == 2 and all(math.isfinite(r["loss"]) for r in log) and log[1]["n_ood"] > 0
    print(f"\nWRN38 pebal fit: {time.perf_counter() - t0:.1f} s")
