"""Oracles shared by the meta-classification tests: meta-ood's own procedure, written out as its code does it
(``src/helper.py`` ``metrics_to_dataset``, ``meta_classification.py`` ``classifier_fit_and_predict`` and
``remove()``), independent of ``oodscore.meta``; and the numbers recorded by running the official code."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import LeaveOneOut

#: meta-ood's segment metrics and pipeline numbers, recorded by tests/fixtures/official/record_metaseg.py
METASEG_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "metaseg.npz"


def official_loo(metrics):
    """meta-ood's ``metrics_to_dataset`` + ``classifier_fit_and_predict``, written out as its code does it."""
    names = sorted(m for m in metrics if m not in ["iou", "iou0", "prc"])
    M = np.asarray([np.asarray(metrics[m]) for m in names])
    MM = M.copy()
    for i in range(M.shape[0]):
        M[i] = (np.asarray(M[i]) - np.mean(MM[i], axis=-1)) / (np.std(MM[i], axis=-1) + 1e-10)
    Xa = np.squeeze(M.T)
    y0a = np.squeeze(np.asarray([np.asarray(metrics["iou0"])]).T)
    proba = np.zeros((len(y0a), 2))
    model = LogisticRegression(solver="liblinear")
    for train, test in LeaveOneOut().split(Xa):
        model.fit(Xa[train], y0a[train])
        proba[test] = model.predict_proba(Xa[test])
    return proba, y0a


def official_remove(components, gt_components, kick):
    """meta-ood's ``remove()`` false-negative loop over one frame's maps, as its code does it."""
    comp_pred = abs(components).flatten()
    for l, k in enumerate(kick):  # noqa: E741 - meta-ood's names
        if k == 1:
            comp_pred[comp_pred == l + 1] = 0
    comp_pred[comp_pred > 0] = 1
    comp_gt = abs(gt_components).flatten()
    fn = 0
    for c in np.unique(comp_gt)[1:]:
        comp_c = np.squeeze([comp_gt == c])
        if np.sum(comp_c[comp_pred > 0]) == 0:
            fn += 1
    return fn


@pytest.fixture
def meta_ood():
    """``meta_ood.loo(metrics) -> (proba, iou0)`` and ``meta_ood.remove(components, gt_components, kick) -> fn``."""
    return SimpleNamespace(loo=official_loo, remove=official_remove)


@pytest.fixture(scope="session")
def official_metaseg() -> dict:
    """The arrays of ``metaseg.npz``: per case ``<case>/probs``, ``/labels``, ``/ood_mask``, ``/metrics/<name>``,
    ...; ``pipeline/*`` the official meta-classification pipeline over the cases of ``pipeline/frames``."""
    with np.load(METASEG_FIXTURE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
