"""maxent-train predict (a top-layer app: heat map, mask, overlay per image), through the installed app."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cocodag_apps.cli import maxent_app as app
from maxent_train.data import normalize
from maxent_train.models import create_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    model = create_model("tiny_segnet", num_classes=19)
    path = d / "model-final.pt"
    torch.save({"state_dict": model.state_dict(), "metadata": {"model": "tiny_segnet", "num_classes": 19}}, path)
    return path, model.eval()


def test_predict_writes_heatmap_mask_overlay(tmp_path, ckpt):
    path, model = ckpt
    rng = np.random.default_rng(0)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rgbs = {}
    for name in ("a", "b"):
        rgbs[name] = rng.integers(0, 256, (40, 72, 3), dtype=np.uint8)
        cv2.imwrite(str(imgs / f"{name}.png"), rgbs[name][..., ::-1])
    t = 0.35
    r = CliRunner().invoke(app, ["predict", str(imgs), "--checkpoint", str(path), "--out", str(tmp_path / "out"),
                                 "--method", "entropy", "--threshold", str(t), "--save-scores", "--device", "cpu",
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    for name, rgb in rgbs.items():
        for suffix in ("_heat.png", "_mask.png", "_overlay.png"):
            assert (tmp_path / "out" / f"{name}{suffix}").is_file()
        # independent reference: normalized entropy of the model's softmax, thresholded at t
        with torch.no_grad():
            p = torch.softmax(model(normalize(torch.from_numpy(rgb)[None])).double(), 1)[0].numpy()
        ent = -(p * np.log(np.clip(p, 1e-300, None))).sum(0) / np.log(19)
        score = np.load(tmp_path / "out" / "scores" / f"{name}.npy")
        np.testing.assert_allclose(score, ent, atol=1e-4)
        mask = cv2.imread(str(tmp_path / "out" / f"{name}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask)) <= {0, 255}
        sure = np.abs(ent - t) > 1e-3            # away from the threshold float32 vs float64 cannot disagree
        assert ((mask == 255) == (ent >= t))[sure].all()


def test_predict_bad_inputs_are_one_line_errors(tmp_path, ckpt):
    path, _ = ckpt
    run = CliRunner().invoke
    r = run(app, ["predict", str(tmp_path / "nope.png"), "--checkpoint", str(path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "no such image" in r.output and "Traceback" not in r.output
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), np.zeros((8, 8, 3), np.uint8))
    r = run(app, ["predict", str(img), "--checkpoint", str(path), "--out", str(tmp_path / "o"), "--method", "sml"])
    assert r.exit_code == 1 and "--sml-stats" in r.output and "Traceback" not in r.output
    r = run(app, ["predict", str(img), "--checkpoint", str(path), "--out", str(tmp_path / "o"), "--method", "bogus"])
    assert r.exit_code == 1 and "--method" in r.output


def test_predict_a_raw_released_checkpoint_with_model_and_model_kwargs(tmp_path):
    """A released file (VainF's layout: {'model_state', 'best_score': numpy}, no metadata) is looked at before any
    fine-tuning: --model and --model-kwargs build the network, scores equal the model's own."""
    torch.manual_seed(1)
    model = create_model("tiny_segnet", num_classes=19, width=16).eval()
    raw = tmp_path / "best_tiny_cityscapes_os16.pth"
    torch.save({"model_state": model.state_dict(), "cur_itrs": 10, "best_score": np.float64(0.5)}, raw)
    img = tmp_path / "a.png"
    rgb = np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    cv2.imwrite(str(img), rgb[..., ::-1])
    run = CliRunner().invoke
    base = ["predict", str(img), "--checkpoint", str(raw), "--out", str(tmp_path / "o"), "--device", "cpu",
            "--no-progress"]
    r = run(app, base)
    assert r.exit_code == 1 and "pass --model NAME" in r.output and "Traceback" not in r.output
    r = run(app, [*base, "--model", "tiny_segnet", "--model-kwargs", "width"])
    assert r.exit_code == 1 and "--model-kwargs" in r.output and "Traceback" not in r.output
    r = run(app, [*base, "--model", "tiny_segnet", "--model-kwargs", "width=16", "--method", "maxlogit",
                  "--save-scores"])
    assert r.exit_code == 0, r.output
    with torch.no_grad():
        logits = model(normalize(torch.from_numpy(rgb)[None]))[0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "o" / "scores" / "a.npy"), -logits.max(0), atol=1e-4)


@pytest.mark.parametrize("method", ["msp", "pebal"])
def test_predict_scores_the_classes_of_a_network_with_an_abstention_channel(tmp_path, method):
    """A PEBAL-style checkpoint (20 outputs, the last an abstention channel): the score is that of the 19 classes."""
    torch.manual_seed(4)
    model = create_model("tiny_segnet", num_classes=20).eval()
    with torch.no_grad():
        model.classifier.bias[19] += 3.0        # the abstention channel dominates: as a class it would change msp
    path = tmp_path / "pebal.pt"
    torch.save({"state_dict": model.state_dict(),
                "metadata": {"model": "tiny_segnet", "num_classes": 20, "abstention_channel": 19}}, path)
    rgb = np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), rgb[..., ::-1])
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "a.png"), "--checkpoint", str(path), "--out",
                                 str(tmp_path / "out"), "--method", method, "--save-scores", "--device", "cpu",
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    with torch.no_grad():
        z = model(normalize(torch.from_numpy(rgb)[None])).double()[:, :19]
    if method == "msp":
        ref = 1.0 - torch.softmax(z, 1).amax(1)[0].numpy()
    else:       # -logsumexp of the classes, then PEBAL's blur (torch's float64 reflect padding = mirror)
        from cocodag.filters import gaussian_blur

        ref = gaussian_blur(-torch.logsumexp(z, 1))[0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out" / "scores" / "a.npy"), ref, atol=1e-4)
