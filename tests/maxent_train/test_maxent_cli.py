"""maxent-train CLI: config round trip, one-line errors for bad inputs (no traceback)."""
from __future__ import annotations

import json

import h5py
import pytest
import torch
from _maxent_shards import make_shards
from typer.testing import CliRunner

from maxent_train.cli import app
from maxent_train.models import create_model
from maxent_train.train import read_log

runner = CliRunner()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("cli") / "ds", {"cityscapes": 16, "coco": 10, "dag": 8},
                       size=24, shard_size=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")     # tests/conftest.py


def _fit(*args: str):
    res = runner.invoke(app, ["fit", "--no-progress", *args])
    assert res.exit_code == 0, res.output
    return res


def _losses(run) -> list[float]:
    return [r["loss"] for r in read_log(run / "log.jsonl")]


def _one_line_error(res, *needles: str) -> None:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_config_json_and_toml_reproduce_a_run(data_dir, tmp_path):
    common = ["--data", str(data_dir), "--model", "tiny_segnet", "--batch-size", "4", "--lr", "1e-3",
              "--embedding-img-interval", "2", "--seed", "3", "--max-steps", "8", "--lambda", "0.7"]
    _fit(*common, "--out", str(tmp_path / "a"))
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["options"]["lam"] == 0.7 and cfg["options"]["embedding_img_interval"] == 2
    _fit("--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "b"))
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a") and len(_losses(tmp_path / "a")) == 8
    # an explicit flag overrides the config file
    _fit("--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "c"), "--seed", "4")
    assert _losses(tmp_path / "c") != _losses(tmp_path / "a")
    assert json.loads((tmp_path / "c" / "config.json").read_text())["options"]["seed"] == 4
    toml = tmp_path / "run.toml"
    toml.write_text(f'data = "{data_dir}"\nmodel = "tiny_segnet"\nbatch-size = 4\nlr = 1e-3\n'
                    f'embedding_img_interval = 2\nseed = 3\nmax_steps = 8\nlambda = 0.7\n')
    _fit("--config", str(toml), "--out", str(tmp_path / "d"))
    assert _losses(tmp_path / "d") == _losses(tmp_path / "a")


def test_bad_config_key(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('learning_rate = 0.1\n')
    _one_line_error(runner.invoke(app, ["fit", "--config", str(toml), "--out", str(tmp_path / "x")]),
                    "unknown option", "learning_rate")


def test_data_dir_without_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line_error(runner.invoke(app, ["fit", "--data", str(tmp_path / "empty"), "--model", "tiny_segnet",
                                        "--out", str(tmp_path / "run"), "--no-progress"]), "manifest.json")


def test_corrupt_shard_is_refused(data_dir, tmp_path):
    import shutil

    bad = tmp_path / "ds"
    shutil.copytree(data_dir, bad)
    with h5py.File(bad / "dag-00000.h5", "r+") as f:     # valid HDF5, wrong content: only the checksum can tell
        f["image"][0, 0, 0, 0] ^= 0xFF
    _one_line_error(runner.invoke(app, ["fit", "--data", str(bad), "--model", "tiny_segnet",
                                        "--out", str(tmp_path / "run"), "--no-progress"]), "dag-00000.h5", "sha256")
    torch.save(create_model("tiny_segnet").state_dict(), tmp_path / "ok.pt")
    _one_line_error(runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "ok.pt"), "--model", "tiny_segnet",
                                        "--data", str(bad), "--out", str(tmp_path / "x.h5"), "--no-progress"]),
                    "dag-00000.h5", "sha256")
    _one_line_error(runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(bad),
                                        "--out", str(tmp_path / "x.h5"), "--no-progress"]), "none.pt")


def test_init_checkpoint_mismatch(data_dir, tmp_path):
    other = create_model("tiny_segnet", num_classes=19, width=16)          # different tensor shapes
    torch.save({"state_dict": {"module." + k: v for k, v in other.state_dict().items()}}, tmp_path / "w16.pt")
    _one_line_error(runner.invoke(app, ["fit", "--data", str(data_dir), "--model", "tiny_segnet", "--init",
                                        str(tmp_path / "w16.pt"), "--out", str(tmp_path / "r1"), "--no-progress"]),
                    "w16.pt", "mismatch")
    extra = create_model("tiny_segnet", num_classes=19).state_dict()
    extra["aux.weight"] = torch.zeros(1)
    del extra["classifier.bias"]
    torch.save(extra, tmp_path / "keys.pt")
    _one_line_error(runner.invoke(app, ["fit", "--data", str(data_dir), "--model", "tiny_segnet", "--init",
                                        str(tmp_path / "keys.pt"), "--out", str(tmp_path / "r2"), "--no-progress"]),
                    "missing", "classifier.bias", "unexpected", "aux.weight")
    five = create_model("tiny_segnet", num_classes=5)
    torch.save(five.state_dict(), tmp_path / "c5.pt")
    _one_line_error(runner.invoke(app, ["fit", "--data", str(data_dir), "--model", "tiny_segnet", "--init",
                                        str(tmp_path / "c5.pt"), "--out", str(tmp_path / "r3"), "--no-progress"]),
                    "class count")
    _one_line_error(runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "c5.pt"), "--model", "tiny_segnet",
                                        "--data", str(data_dir), "--out", str(tmp_path / "x.h5"), "--no-progress"]),
                    "class count")


def test_fit_then_export_and_models(data_dir, tmp_path):
    _fit("--data", str(data_dir), "--model", "tiny_segnet", "--out", str(tmp_path / "run"), "--batch-size", "4",
         "--max-steps", "3")
    res = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "run" / "model-final.pt"), "--data",
                              str(data_dir), "--kinds", "dag", "--limit", "3", "--out", str(tmp_path / "l.h5"),
                              "--mc-samples", "2", "--moment-order", "3", "--mc-dtype", "float16", "--no-progress"])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "l.h5", "r") as f:      # native resolution (tiny_segnet: 1/4) by default
        assert f["logits"].shape == (3, 19, 6, 6) and f["mc/central"].shape == (3, 2, 19, 6, 6)
        assert f["mc/mean"].dtype.name == "float16" and f.attrs["model"] == "tiny_segnet"
        assert tuple(f.attrs["label_shape"]) == (24, 24) and f["label"].shape == (3, 24, 24)
    res = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "run" / "model-final.pt"), "--data",
                              str(data_dir), "--kinds", "dag", "--limit", "2", "--out", str(tmp_path / "l32.h5"),
                              "--logits-resolution", "label", "--logits-dtype", "float32", "--no-progress"])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "l32.h5", "r") as f:
        assert f["logits"].shape == (2, 19, 24, 24) and f["logits"].dtype.name == "float32"
        assert f.attrs["logits_resolution"] == "label"
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and "tiny_segnet" in res.output


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nothing can be written in: a read-only tmpfs as root (root writes through permissions), else
    chmod 0500; skips when neither works."""
    import os
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o500)
        yield ro
        ro.chmod(0o700)
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield ro
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


def test_odd_out_paths_are_refused_before_any_work(tmp_path, read_only_dir):
    # --data / --checkpoint do not exist: the --out check must come first, so the error is about --out
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "folder.h5").mkdir()
    fit_args = ["fit", "--data", str(tmp_path / "no-data"), "--model", "tiny_segnet", "--no-progress", "--out"]
    for out, needle in ((afile, "is an existing file, expected a folder"), (afile / "run", "is a file, so nothing"),
                        (read_only_dir / "run", "cannot")):
        _one_line_error(runner.invoke(app, [*fit_args, str(out)]), f"--out {out}", needle)
    exp_args = ["export", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path / "no-data"),
                "--no-progress", "--out"]
    for out, needle in ((tmp_path / "folder.h5", "is a folder, expected a file name"),
                        (afile / "x.h5", "is a file, so nothing"), (read_only_dir / "sub" / "x.h5", "cannot create")):
        _one_line_error(runner.invoke(app, [*exp_args, str(out)]), f"--out {out}", needle)
    out = tmp_path / "l.h5"
    for sml in (out, tmp_path / "l.h5.tmp"):
        _one_line_error(runner.invoke(app, [*exp_args, str(out), "--sml-stats", str(sml)]),
                        f"--sml-stats {sml}: is the same file as --out")
    _one_line_error(runner.invoke(app, [*exp_args, str(out), "--sml-stats", str(afile / "s.json")]),
                    "--sml-stats", "is a file, so nothing")


def test_export_into_an_existing_read_only_folder(tmp_path, read_only_dir):
    out = read_only_dir / "x.h5"
    _one_line_error(runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "none.pt"), "--data",
                                        str(tmp_path / "no-data"), "--no-progress", "--out", str(out)]),
                    f"--out {out}", "cannot write in")


def test_resume_refuses_a_changed_lr_without_config_json(data_dir, tmp_path):
    common = ["--data", str(data_dir), "--model", "tiny_segnet", "--out", str(tmp_path / "r"), "--batch-size", "4",
              "--max-steps", "3", "--lr", "1e-3"]
    _fit(*common)
    (tmp_path / "r" / "config.json").unlink()
    res = runner.invoke(app, ["fit", "--no-progress", *common[:-2], "--lr", "0.01", "--resume"])
    _one_line_error(res, "--resume", "--lr: run 0.001, now 0.01", "checkpoint-last.pt")


def test_text_file_as_init_checkpoint_or_resume(data_dir, tmp_path):
    text = tmp_path / "weights.txt"
    text.write_text("these are not weights\n")
    _one_line_error(runner.invoke(app, ["fit", "--data", str(data_dir), "--model", "tiny_segnet", "--init", str(text),
                                        "--out", str(tmp_path / "r"), "--no-progress"]),
                    f"{text}: not a torch checkpoint (a text file")
    _one_line_error(runner.invoke(app, ["export", "--checkpoint", str(text), "--data", str(data_dir),
                                        "--out", str(tmp_path / "x.h5"), "--no-progress"]),
                    f"{text}: not a torch checkpoint (a text file")
    assert not (tmp_path / "x.h5").exists()
    run = tmp_path / "r2"
    run.mkdir()
    (run / "checkpoint-last.pt").write_text("overwritten by an editor\n")
    _one_line_error(runner.invoke(app, ["fit", "--data", str(data_dir), "--model", "tiny_segnet", "--out", str(run),
                                        "--resume", "--no-progress"]),
                    f"{run / 'checkpoint-last.pt'}: not a torch checkpoint")


def test_fit_disk_full_is_one_line(small_fs, data_dir):
    mnt, _ = small_fs
    run = mnt / "run"
    res = runner.invoke(app, ["fit", "--data", str(data_dir), "--model", "tiny_segnet", "--out", str(run),
                              "--batch-size", "4", "--max-steps", "2", "--no-progress"])
    _one_line_error(res, f"No space left on device: {run / 'checkpoint-last.pt'}")
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.json", "log.jsonl"]


# ------------------------------------------------------------------------------------------- issue 12: model options
def _nvidia_style(model, path):
    """A checkpoint saved as NVIDIA's trainer saves it: DataParallel keys plus its loss weight, numpy mean_iu, the
    pre-zip format."""
    import numpy as np

    sd = {"module." + k: v for k, v in model.state_dict().items()}
    sd["module.criterion.nll_loss.weight"] = torch.ones(model.num_classes)
    torch.save({"state_dict": sd, "epoch": 175, "mean_iu": np.float64(0.8), "command": "train.py"}, path,
               _use_new_zipfile_serialization=False)
    return path


def test_model_kwargs_are_used_and_recorded_so_later_commands_need_neither(data_dir, tmp_path):
    torch.manual_seed(0)
    init = _nvidia_style(create_model("tiny_segnet", width=16, dropout=0.2), tmp_path / "cityscapes_best.pth")
    run = tmp_path / "run"
    common = ["--data", str(data_dir), "--model", "tiny_segnet", "--batch-size", "4", "--max-steps", "2",
              "--out", str(run)]
    # the raw file needs the model's options: without them one line naming the mismatch
    _one_line_error(runner.invoke(app, ["fit", "--no-progress", *common, "--init", str(init)]), "cityscapes_best.pth",
                    "shape mismatch")
    res = _fit(*common, "--init", str(init), "--model-kwargs", "width=16,dropout=0.2")
    assert "training-only" in res.output and "criterion.nll_loss.weight" in res.output
    final = torch.load(run / "model-final.pt", weights_only=True)
    assert final["metadata"]["model"] == "tiny_segnet"
    assert final["metadata"]["model_kwargs"] == {"width": 16, "dropout": 0.2}
    assert json.loads((run / "config.json").read_text())["options"]["model_kwargs"] == {"width": 16, "dropout": 0.2}
    # export: no --model, no --model-kwargs
    res = runner.invoke(app, ["export", "--checkpoint", str(run / "model-final.pt"), "--data", str(data_dir),
                              "--limit", "1", "--out", str(tmp_path / "l.h5"), "--no-progress"])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "l.h5", "r") as f:
        assert json.loads(f.attrs["model_kwargs"]) == {"width": 16, "dropout": 0.2}
    # a resume with other model options is refused, naming the flag
    _one_line_error(runner.invoke(app, ["fit", "--no-progress", *common, "--resume", "--model-kwargs",
                                        '{"width": 16, "dropout": 0.5}']), "--model-kwargs: run")
    # the raw released file itself: export with --model and --model-kwargs
    res = runner.invoke(app, ["export", "--checkpoint", str(init), "--model", "tiny_segnet", "--model-kwargs",
                              '{"width": 16}', "--data", str(data_dir), "--limit", "1", "--out",
                              str(tmp_path / "raw.h5"), "--no-progress"])
    assert res.exit_code == 0, res.output


def test_fit_takes_the_model_from_our_own_init_checkpoint(data_dir, tmp_path):
    """A second fine-tuning from one of our checkpoints needs no --model: its metadata names the model and options."""
    first = tmp_path / "first"
    _fit("--data", str(data_dir), "--model", "tiny_segnet", "--model-kwargs", "width=16,dropout=0.2",
         "--batch-size", "4", "--max-steps", "1", "--out", str(first))
    second = tmp_path / "second"
    _fit("--data", str(data_dir), "--init", str(first / "model-final.pt"), "--batch-size", "4", "--max-steps", "1",
         "--out", str(second))
    meta = torch.load(second / "model-final.pt", weights_only=True)["metadata"]
    assert meta["model"] == "tiny_segnet" and meta["model_kwargs"] == {"width": 16, "dropout": 0.2}
    opts = json.loads((second / "config.json").read_text())["options"]
    assert opts["model"] == "tiny_segnet" and opts["init"] == str(first / "model-final.pt")
    # a released file has no metadata: one line asking for --model; another class count: one line too
    raw = tmp_path / "raw.pt"
    torch.save(create_model("tiny_segnet").state_dict(), raw)
    _one_line_error(runner.invoke(app, ["fit", "--data", str(data_dir), "--init", str(raw), "--out",
                                        str(tmp_path / "r"), "--no-progress"]), "raw.pt", "pass --model NAME")
    _one_line_error(runner.invoke(app, ["fit", "--data", str(data_dir), "--init", str(first / "model-final.pt"),
                                        "--num-classes", "5", "--out", str(tmp_path / "r5"), "--no-progress"]),
                    "--num-classes 5 differs from the 19 classes", "pass --num-classes 19")


def test_bad_model_kwargs_are_one_line(data_dir, tmp_path):
    torch.save(create_model("tiny_segnet").state_dict(), tmp_path / "ok.pt")
    for cmd in (["fit", "--data", str(data_dir), "--model", "tiny_segnet", "--out", str(tmp_path / "r"),
                 "--no-progress"],
                ["export", "--checkpoint", str(tmp_path / "ok.pt"), "--model", "tiny_segnet", "--data", str(data_dir),
                 "--out", str(tmp_path / "x.h5"), "--no-progress"],
                ["miou", "--checkpoint", str(tmp_path / "ok.pt"), "--model", "tiny_segnet", "--cityscapes",
                 str(tmp_path / "cs")]):
        _one_line_error(runner.invoke(app, [*cmd, "--model-kwargs", "output_stride"]),
                        "--model-kwargs 'output_stride': cannot parse", "KEY=VALUE")
        _one_line_error(runner.invoke(app, [*cmd, "--model-kwargs", "no_such_option=1"]),
                        "model 'tiny_segnet': bad arguments ['no_such_option']")
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "r" / "checkpoint-last.pt").exists()
    _one_line_error(runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "ok.pt"), "--data", str(data_dir),
                                        "--out", str(tmp_path / "x.h5"), "--mc-samples", "1", "--no-progress"]),
                    "--mc-samples 1")


def _cityscapes_tree(root, model, n=2, h=24, w=40):
    """A Cityscapes-layout val split whose labels are ``model``'s own predictions (so its mIoU is exactly 1)."""
    import cv2
    import numpy as np

    from maxent_train.data import normalize

    rng = np.random.default_rng(0)
    for i in range(n):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        with torch.no_grad():
            pred = model.eval()(normalize(torch.from_numpy(rgb)[None])).argmax(1)[0].numpy().astype(np.uint8)
        for sub, name, img in (("leftImg8bit", f"c_{i:06d}_000019_leftImg8bit.png", rgb[..., ::-1]),
                               ("gtFine", f"c_{i:06d}_000019_gtFine_labelTrainIds.png", pred)):
            (root / sub / "val" / "c").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / sub / "val" / "c" / name), img)
    return root


def test_miou_on_a_raw_checkpoint_with_model(tmp_path):
    torch.manual_seed(2)
    model = create_model("tiny_segnet", width=16)
    raw = _nvidia_style(model, tmp_path / "cityscapes_best.pth")
    cs = _cityscapes_tree(tmp_path / "cs", model)
    _one_line_error(runner.invoke(app, ["miou", "--checkpoint", str(raw), "--cityscapes", str(cs)]),
                    "has no metadata naming the model; pass --model NAME")
    res = runner.invoke(app, ["miou", "--checkpoint", str(raw), "--cityscapes", str(cs), "--model", "tiny_segnet",
                              "--model-kwargs", "width=16", "--out", str(tmp_path / "m.json"), "--no-progress"])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["miou"] == 1.0 and got["pixel_acc"] == 1.0 and got["n_frames"] == 2
    assert got["model"] == "tiny_segnet" and got["model_kwargs"] == {"width": 16}
