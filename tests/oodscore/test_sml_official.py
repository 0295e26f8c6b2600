"""``SML(border="official-2021", boundary_width=...)`` against the official SML pipeline as it ran in 2021.

``tests/fixtures/official/sml_official_2021.npz`` holds the output of the official code (``network/deepv3.py`` of
shjung13/Standardized-max-logits: ``DeepV3Plus.forward`` from ``main_out`` on, ``BoundarySuppressionWithSmoothing``)
run with kornia 0.5.0, whose morphology is that of the pinned commit af948c5; ``record_sml_official.py`` beside it
recorded it (see its docstring). The border rule and the radius schedule are also checked against numpy
re-derivations of the official definitions (never against our own code).
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from cocodag.formats.logits import upsample
from oodscore import OodscoreError
from oodscore.scores import SML, SMLStats, get_scorer
from oodscore.scores.sml import boundary_mask, official_radii

torch.set_num_threads(1)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "sml_official_2021.npz"


@pytest.fixture(scope="module")
def rec():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def _official_stats(rec, tag, tmp_path) -> SMLStats:
    """The recorded statistics, through the official file layout (``np.save`` of ``{trainId: float}`` dicts)."""
    for what in ("mean", "var"):
        np.save(tmp_path / f"{tag}_{what}.npy", {k: float(v) for k, v in enumerate(rec[f"{tag}_{what}"])})
    return SMLStats.import_official(tmp_path / f"{tag}_mean.npy", tmp_path / f"{tag}_var.npy")


def _main_out(rec, tag) -> np.ndarray:
    """The official ``main_out``: ``network/mynn.py``'s ``Upsample`` is bilinear with ``align_corners=True`` (the
    rule an sml-r101 logits file records); a no-op for the inputs already at the input size."""
    z = torch.from_numpy(rec[f"{tag}_logits"].astype(np.float32))
    return upsample(z, tuple(int(v) for v in rec[f"{tag}_size"]), align_corners=True).numpy()


def _case(rec, case):
    tag_i, suppression, width, iters, smoothing = (int(v) for v in rec[f"{case}_config"])
    return str(rec["inputs"][tag_i]), dict(boundary_width=width, boundary_iters=iters if suppression else 0,
                                           smoothing=bool(smoothing))


def test_fixture_provenance(rec):
    assert str(rec["kornia_version"]) == "0.5.0"
    assert FIXTURE.stat().st_size < 300_000
    assert len(rec["cases"]) >= 10


@pytest.mark.parametrize("case", ["a_default", "a_nosmooth", "a_w4_i2", "a_smooth_only", "b_w6_i3", "b_w10_i5",
                                  "b_w0_i2", "c_w8_i4", "c_w4_i1", "c_w4_i0", "up_default", "up_raw", "u_default",
                                  "u_nosmooth"])
def test_official_2021_equals_the_recorded_official_pipeline(rec, case, tmp_path):
    assert case in set(rec["cases"])
    tag, params = _case(rec, case)
    st = _official_stats(rec, tag, tmp_path)
    ours = SML(st, border="official-2021", **params).score(_main_out(rec, tag))
    official = rec[f"{case}_out"]           # the official anomaly_score is s; our score is -s
    assert ours.shape == official.shape
    np.testing.assert_allclose(-ours, official, rtol=0, atol=1e-5)


def test_official_2021_defaults_are_the_official_defaults(rec, tmp_path):
    st = _official_stats(rec, "a", tmp_path)
    z = _main_out(rec, "a")
    np.testing.assert_allclose(-SML(st, border="official-2021").score(z), rec["a_default_out"], rtol=0, atol=1e-5)
    built = get_scorer("sml", stats=st, border="official-2021", boundary_width=None, boundary_iters=None)
    assert built.boundary_radii() == (3, 2, 1, 0)
    np.testing.assert_array_equal(built.score(z), SML(st, border="official-2021").score(z))


def test_geodesic_default_differs_only_by_the_border(rec, tmp_path):
    """Uniform frames of class 0, 1, 2: the official border rule makes the image edge a boundary for class 2 only."""
    st = _official_stats(rec, "u", tmp_path)
    z = _main_out(rec, "u")
    assert [int(np.unique(z[k].argmax(0))[0]) for k in range(3)] == [0, 1, 2]
    geo = SML(st, smoothing=False).score(z)
    off = SML(st, border="official-2021", smoothing=False).score(z)
    np.testing.assert_array_equal(off[:2], geo[:2])
    changed = off[2] != geo[2]
    assert changed[0].all() and changed[-1].all() and changed[:, 0].all() and changed[:, -1].all()
    assert not changed[5:-5, 5:-5].any()    # radius 3 + the 3x3 average: nothing deeper than 4 px moves
    np.testing.assert_allclose(-off, rec["u_nosmooth_out"], rtol=0, atol=1e-5)
    # the geodesic border with the official schedule (width 4, 4 iterations) is today's default
    np.testing.assert_array_equal(SML(st, boundary_width=4).score(z), SML(st).score(z))


# ------------------------------------------------------------------------------ numpy re-derivations
def _np_windows(a, pad_value):
    p = np.pad(a, 1, mode="constant", constant_values=pad_value)
    h, w = a.shape
    return {(dy, dx): p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)}


def np_official_boundary(pred):
    """kornia 0.5.0: ``dilation`` (cross, zero-padded conv) != ``erosion`` (3x3 square, input padded with 1)."""
    d, e = _np_windows(pred, 0), _np_windows(pred, 1)
    dil = np.max([d[o] for o in [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]], axis=0)
    ero = np.min(list(e.values()), axis=0)
    return dil != ero


def test_boundary_mask_official_border_matches_numpy():
    rng = np.random.default_rng(0)
    for shape, classes in [((9, 13), 3), ((17, 8), 5), ((1, 6), 4), ((30, 30), 300)]:
        pred = np.kron(rng.integers(0, classes, size=(shape[0] // 2 + 1, shape[1] // 2 + 1)), np.ones((2, 2)))
        pred = pred[:shape[0], :shape[1]].astype(np.int64)
        ours = boundary_mask(torch.from_numpy(pred), border="official-2021").numpy()
        np.testing.assert_array_equal(ours, np_official_boundary(pred))
        geo = boundary_mask(torch.from_numpy(pred)).numpy()
        ring = np.ones(shape, bool)
        ring[1:-1, 1:-1] = False
        np.testing.assert_array_equal(ours, geo | (ring & (pred >= 2)))   # the rule the docs state


@pytest.mark.parametrize("width,iters,radii", [(4, 4, (3, 2, 1, 0)), (6, 3, (5, 3, 0)), (8, 4, (7, 5, 3, 0)),
                                               (4, 2, (3, 0)), (4, 1, (0,)), (0, 2, (0, 0)), (10, 5, (9, 7, 5, 3, 0)),
                                               (4, 0, ()), (12, 6, (11, 9, 7, 5, 3, 0))])
def test_official_radius_schedule(width, iters, radii):
    # BoundarySuppressionWithSmoothing.forward: r_i = width - (width // iters) * i - 1, the last one (or all when
    # width == 0) 0
    expected = tuple(0 if width == 0 or i == iters - 1 else width - (width // iters) * i - 1 for i in range(iters))
    assert official_radii(width, iters) == expected == radii
    assert SML(SMLStats(), boundary_width=width, boundary_iters=iters).boundary_radii() == radii


def test_boundary_iters_keeps_its_meaning_by_default():
    st = SMLStats()
    for k in range(5):
        assert SML(st, boundary_iters=k).boundary_radii() == (3, 2, 1, 0)[:k]
    assert SML(st, border="official-2021", boundary_iters=2).boundary_radii() == (3, 0)   # the official (4, 2)
    assert SML(st, border="official-2021", boundary_width=6, boundary_iters=6).boundary_radii() == (5, 4, 3, 2, 1, 0)


@pytest.mark.parametrize("params,msg", [
    (dict(border="kornia"), "SML border: expected one of 'geodesic', 'official-2021', got 'kornia'"),
    (dict(boundary_width=-1), "SML boundary_width: expected None or an int >= 0, got -1"),
    (dict(boundary_width=2.0), "SML boundary_width: expected None or an int >= 0, got 2.0"),
    (dict(boundary_width=6), "SML boundary_width: expected a multiple of boundary_iters=4"),
    (dict(border="official-2021", boundary_iters=3),
     "SML boundary_iters: expected a divisor of the official default boundary_width=4"),
    (dict(boundary_iters=5), "SML boundary_iters: expected an int in [0, 4], got 5"),
    (dict(boundary_width=10, boundary_iters=-1), "SML boundary_iters: expected an int >= 0, got -1"),
])
def test_bad_fidelity_parameters(params, msg):
    st = SMLStats().partial_fit(np.random.default_rng(0).normal(size=(1, 3, 5, 5)))
    with pytest.raises(OodscoreError) as e:
        SML(st, **params).score(np.zeros((3, 4, 4), np.float32))
    assert msg in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(OodscoreError, match="border: expected one of"):
        boundary_mask(torch.zeros(3, 3, dtype=torch.int64), border="zero")
