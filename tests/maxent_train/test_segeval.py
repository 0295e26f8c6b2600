"""maxent-train miou: confusion matrix / IoU (the `predict` tests moved to tests/apps/test_predict.py)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion

from maxent_train.segeval import confusion_matrix, iou_from_confusion


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
