"""oodscore.io: score-map readers (docs/formats.md §4)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from oodscore import OodscoreError
from oodscore.io import open_score_maps

H, W = 12, 16

# ----------------------------------------------------------------------------------------- score maps
def test_score_map_formats(tmp_path):
    rng = np.random.default_rng(3)
    maps = {f"f{i}": rng.normal(size=(H, W)).astype(np.float32) for i in range(3)}
    d = tmp_path / "maps"
    d.mkdir()
    np.save(d / "f0.npy", maps["f0"])
    np.savez_compressed(d / "f1.npz", anomaly=maps["f1"])
    with h5py.File(d / "f2.hdf5", "w") as f:             # the SegmentMeIfYouCan tooling's per-frame file
        f.create_dataset("value", data=maps["f2"].astype(np.float16), compression=9)
    (d / "readme.txt").write_text("ignored")
    with open_score_maps(d) as sm:
        assert sm.names == ["f0", "f1", "f2"]
        np.testing.assert_array_equal(sm.get("f0"), maps["f0"])
        np.testing.assert_array_equal(sm.get("f1"), maps["f1"])
        np.testing.assert_array_equal(sm.get("f2"), maps["f2"].astype(np.float16).astype(np.float32))
        assert sm.get("f2").dtype == np.float32
        assert sm.match(["f0", "f2"]) == ["f1"]
        with pytest.raises(OodscoreError, match=r"2 of 3 frame\(s\) have no score map: x, y"):
            sm.match(["f0", "x", "y"])


def test_scores_h5(tmp_path):
    rng = np.random.default_rng(4)
    s = rng.normal(size=(2, H, W)).astype(np.float32)
    with h5py.File(tmp_path / "scores.h5", "w") as f:
        f["score"] = s
        f.create_dataset("image_id", data=["b", "a"], dtype=h5py.string_dtype())
    with open_score_maps(tmp_path / "scores.h5") as sm:
        np.testing.assert_array_equal(sm.get("a"), s[1])
        np.testing.assert_array_equal(sm.get("b"), s[0])
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["scores"] = s
    with pytest.raises(OodscoreError, match="expected datasets 'score'"):
        open_score_maps(tmp_path / "bad.h5")


def test_score_map_errors(tmp_path):
    with pytest.raises(OodscoreError, match="score path not found"):
        open_score_maps(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OodscoreError, match="no score maps"):
        open_score_maps(tmp_path / "empty")
    d = tmp_path / "dup"
    d.mkdir()
    np.save(d / "a.npy", np.zeros((2, 2)))
    np.savez(d / "a.npz", np.zeros((2, 2)))
    with pytest.raises(OodscoreError, match="two score files"):
        open_score_maps(d)
    d = tmp_path / "badh5"
    d.mkdir()
    with h5py.File(d / "a.hdf5", "w") as f:
        f["other"] = np.zeros((2, 2))
    np.save(d / "b.npy", np.zeros((2, 2, 2)))
    with open_score_maps(d) as sm:
        with pytest.raises(OodscoreError, match="no dataset 'value'"):
            sm.get("a")
        with pytest.raises(OodscoreError, match=r"shape \(2, 2, 2\), expected \(H, W\)"):
            sm.get("b")
    # pickled npy is refused (allow_pickle=False)
    d = tmp_path / "pick"
    d.mkdir()
    np.save(d / "a.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with open_score_maps(d) as sm:
        with pytest.raises(OodscoreError, match="cannot read score map"):
            sm.get("a")


# ----------------------------------------------------------------------------------------- OODMC model file
def test_oodmc_model_file_roundtrip_is_atomic(tmp_path, monkeypatch):
    import joblib

    from oodscore.io import load_oodmc, save_oodmc
    from oodscore.scores import OODMC

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(2):
        lab = (rng.random((H, W)) < 0.3).astype(np.uint8)
        mc = {"mean": rng.normal(size=(3, H, W)).astype(np.float32) + 3 * lab,
              "central": rng.random((1, 3, H, W)).astype(np.float32),
              "entropy": (rng.random((H, W)) + lab).astype(np.float32)}
        frames.append((mc, lab))
    model = OODMC(svm_points_num=100).fit(frames)
    p = save_oodmc(model, tmp_path / "m.joblib")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.joblib"]
    back = load_oodmc(p)
    assert back.get_params() == model.get_params()
    np.testing.assert_array_equal(back.score(frames[0][0]), model.score(frames[0][0]))
    # a failing write leaves the old file and no temp file behind
    def broken_savez(f, *args, **kwargs):
        f.write(b"half")
        raise OSError("disk full")

    with monkeypatch.context() as mp:
        mp.setattr(np, "savez", broken_savez)
        with pytest.raises(OSError, match="disk full"):
            save_oodmc(model, p)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.joblib"]
    np.testing.assert_array_equal(load_oodmc(p).score(frames[0][0]), model.score(frames[0][0]))
    with pytest.raises(OodscoreError, match="not fitted"):
        save_oodmc(OODMC(), tmp_path / "x.joblib")
    # a pickle is never opened unless asked for
    joblib.dump({"format": "something-else"}, tmp_path / "other.joblib")
    with pytest.raises(OodscoreError, match="joblib pickle, which can run code when loaded"):
        load_oodmc(tmp_path / "other.joblib")
    with pytest.raises(OodscoreError, match="not an OODMC model"):
        load_oodmc(tmp_path / "other.joblib", allow_pickle=True)
