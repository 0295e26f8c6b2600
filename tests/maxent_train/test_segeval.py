"""maxent-train predict (heat map, mask, overlay per image) and miou (confusion matrix / IoU)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion
from typer.testing import CliRunner

from maxent_train.cli import app
from maxent_train.data import normalize
from maxent_train.models import create_model
from maxent_train.segeval import confusion_matrix, iou_from_confusion


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


def test_confusion_and_iou_match_sklearn():
    rng = np.random.default_rng(3)
    label = rng.integers(0, 6, (50, 40)).astype(np.uint8)
    label[rng.random(label.shape) < 0.2] = 255
    pred = np.where(rng.random(label.shape) < 0.7, label, rng.integers(0, 6, label.shape)).astype(np.uint8)
    pred[label == 255] = rng.integers(0, 6, int((label == 255).sum()))
    conf = confusion_matrix(pred, label, 6)
    valid = label != 255
    np.testing.assert_array_equal(conf, sk_confusion(label[valid], pred[valid], labels=list(range(6))))
    res = iou_from_confusion(conf)
    ious = []
    for c in range(6):
        inter = ((pred == c) & (label == c) & valid).sum()
        union = (((pred == c) & valid) | (label == c)).sum()
        ious.append(inter / union)
    assert res["miou"] == pytest.approx(np.mean(ious), abs=1e-12)
    assert res["pixel_acc"] == pytest.approx((pred == label)[valid].mean(), abs=1e-12)
