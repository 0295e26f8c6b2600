"""cocodag.formats.logits: logits.h5 validation/reading/writing (docs/formats.md §3).

Files are made directly with h5py/numpy here (the format as documented), then read through the module.
(Moved from tests/oodscore/test_io.py when the format moved to the foundation; errors are now the base
:class:`CocodagError`, of which ``OodscoreError`` and ``MaxentError`` are subclasses.)
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from cocodag import CocodagError
from cocodag.formats.logits import LogitsFile, LogitsWriter

C, H, W = 5, 12, 16


def _frames(rng, n, mc_order=None, image=True):
    out = []
    for i in range(n):
        fr = {
            "logits": rng.normal(size=(C, H, W)).astype(np.float16),
            "label": rng.choice([0, 1, 255], size=(H, W)).astype(np.uint8),
            "image_id": f"frame_{i:03d}",
            "roi": rng.integers(0, 2, (H, W), dtype=np.uint8),
        }
        if image:
            fr["image"] = rng.integers(0, 256, (H // 2, W // 2, 3), dtype=np.uint8)
        if mc_order:
            fr["mc"] = {"mean": rng.normal(size=(C, H, W)).astype(np.float32),
                        "central": rng.random((mc_order - 1, C, H, W)).astype(np.float32),
                        "entropy": rng.random((H, W)).astype(np.float32)}
        out.append(fr)
    return out


def _write(path, frames, **kw):
    with LogitsWriter(path, C, **kw) as w:
        for fr in frames:
            w.write(fr["logits"], fr["label"], fr["image_id"], roi=fr.get("roi"), image=fr.get("image"),
                    mc=fr.get("mc"))


def test_roundtrip_with_raw_h5py_check(tmp_path):
    rng = np.random.default_rng(0)
    frames = _frames(rng, 3, mc_order=4)
    path = tmp_path / "t.h5"
    _write(path, frames, dataset="road-anomaly", model="tiny", mc_attrs={"moments_of": "logits", "moment_order": 4})
    assert not (tmp_path / "t.h5.tmp").exists()
    # the documented layout, read with plain h5py (independent of LogitsFile)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "cocodag-logits" and int(f.attrs["version"]) == 1
        assert int(f.attrs["num_classes"]) == C
        assert f["logits"].dtype == np.float16 and f["logits"].shape == (3, C, H, W)
        assert f["logits"].chunks == (1, C, H, W)
        assert f["label"].dtype == np.uint8 and f["label"].shape == (3, H, W)
        assert [s.decode() for s in f["image_id"][()]] == [fr["image_id"] for fr in frames]
        assert f["mc/central"].shape == (3, 3, C, H, W)
        assert f["mc"].attrs["moments_of"] == "logits"
    with LogitsFile(path) as lf:
        assert len(lf) == 3 and lf.num_classes == C and lf.shape == (H, W)
        assert lf.has_mc and lf.has_images and lf.has_roi
        assert lf.image_ids == [fr["image_id"] for fr in frames]
        assert lf.attrs["dataset"] == "road-anomaly" and lf.mc_attrs["moment_order"] == 4
        got = list(lf.iter_frames())
        assert len(got) == 3
        for fr, g in zip(frames, got):
            assert g.logits.dtype == np.float32 and g.logits.shape == (C, H, W)
            np.testing.assert_array_equal(g.logits, fr["logits"].astype(np.float32))
            np.testing.assert_array_equal(g.label, fr["label"])
            np.testing.assert_array_equal(g.roi, fr["roi"])
            np.testing.assert_array_equal(g.image, fr["image"])
        mc = lf.mc(1)
        for k in ("mean", "central", "entropy"):
            np.testing.assert_array_equal(mc[k], frames[1]["mc"][k])
        np.testing.assert_array_equal(lf.label(-1), frames[2]["label"])
        assert lf.frame(0, image=False).image is None
        with pytest.raises(IndexError):
            lf.frame(3)


def test_writer_is_atomic_and_consistent(tmp_path):
    rng = np.random.default_rng(1)
    frames = _frames(rng, 2, image=False)
    path = tmp_path / "t.h5"
    with pytest.raises(RuntimeError):
        with LogitsWriter(path, C) as w:
            w.write(frames[0]["logits"], frames[0]["label"], "a")
            raise RuntimeError("killed")
    assert not path.exists() and not (tmp_path / "t.h5.tmp").exists()
    with pytest.raises(CocodagError, match="lacks 'roi'"):
        with LogitsWriter(path, C) as w:
            w.write(frames[0]["logits"], frames[0]["label"], "a", roi=frames[0]["roi"])
            w.write(frames[1]["logits"], frames[1]["label"], "b")
    assert not path.exists()
    with pytest.raises(CocodagError, match=r"expected \(5, H, W\)"):
        with LogitsWriter(path, C) as w:
            w.write(frames[0]["logits"][:3], frames[0]["label"], "a")


def _raw_file(path, **over):
    """A minimal valid logits.h5 written with h5py, with optional overrides to break it."""
    rng = np.random.default_rng(2)
    n = 2
    with h5py.File(path, "w") as f:
        f.attrs["format"] = over.get("format", "cocodag-logits")
        f.attrs["version"] = over.get("version", 1)
        f.attrs["num_classes"] = over.get("num_classes", C)
        f["logits"] = over.get("logits", rng.normal(size=(n, C, H, W)).astype(np.float16))
        f["label"] = over.get("label", np.zeros((n, H, W), np.uint8))
        f.create_dataset("image_id", data=over.get("image_id", ["a", "b"]), dtype=h5py.string_dtype())
        if "roi" in over:
            f["roi"] = over["roi"]
    return path


@pytest.mark.parametrize("over,msg", [
    ({"format": "something-else"}, "format attribute is 'something-else', expected 'cocodag-logits'"),
    ({"version": 7}, "format version 7 is not supported"),
    ({"num_classes": 19}, "num_classes attribute is 19 but 'logits' has 5 channels"),
    ({"label": np.zeros((2, H, W + 1), np.uint8)}, r"'label' has shape \(2, 12, 17\), expected \(2, 12, 16\)"),
    ({"label": np.zeros((2, H, W), np.int32)}, "'label' has dtype int32, expected uint8"),
    ({"logits": np.zeros((2, C, H, W), np.int16)}, "'logits' has dtype int16, expected float16 or float32"),
    ({"logits": np.zeros((2, H, W), np.float16)}, "'logits' has shape .* expected 4 dimensions"),
    ({"image_id": ["a", "a"]}, "1 duplicated image_id"),
    ({"roi": np.zeros((2, H, 3), np.uint8)}, "'roi' has shape"),
])
def test_validation_errors(tmp_path, over, msg):
    path = _raw_file(tmp_path / "bad.h5", **over)
    with pytest.raises(CocodagError, match=msg) as e:
        LogitsFile(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_and_non_hdf5(tmp_path):
    with pytest.raises(CocodagError, match="logits file not found"):
        LogitsFile(tmp_path / "nope.h5")
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(CocodagError, match="not a readable HDF5 file"):
        LogitsFile(tmp_path / "x.h5")
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f.attrs["format"] = "cocodag-logits"
        f.attrs["version"] = 1
    with pytest.raises(CocodagError, match="missing dataset 'logits'"):
        LogitsFile(tmp_path / "y.h5")


# ------------------------------------------------------------------------------------------ issue 9: label values
def test_label_outside_0_1_255_is_an_error_where_it_is_read(tmp_path):
    label = np.zeros((2, H, W), np.uint8)
    label[1, :3, :4] = 7                            # 12 pixels of 7
    label[1, 5, 5] = 254
    path = _raw_file(tmp_path / "bad.h5", label=label)
    with LogitsFile(path) as lf:                    # opening stays cheap: labels are checked per frame, when read
        assert lf.frame(0).label.max() == 0 and lf.label(0).max() == 0
        for read in (lambda: lf.frame(1), lambda: lf.label(1), lambda: lf.label(-1), lambda: list(lf.iter_frames())):
            with pytest.raises(CocodagError) as e:
                read()
            msg = str(e.value)
            assert msg.startswith(f"{path}: frame 1 ('b'): label values [7, 254] not in 0/1/255 (13 pixels;"), msg
            assert "\n" not in msg
        # logits alone (statistics that do not use the labels) stay readable
        assert lf.logits(1).shape == (C, H, W) and lf.logits(1).dtype == np.float32


def test_writer_refuses_labels_outside_0_1_255(tmp_path):
    rng = np.random.default_rng(3)
    fr = _frames(rng, 1, image=False)[0]
    bad = fr["label"].copy()
    bad[0, 0] = 2
    with pytest.raises(CocodagError, match=r"label of 'x': label values \[2\] not in 0/1/255 \(1 pixel;"):
        with LogitsWriter(tmp_path / "t.h5", C) as w:
            w.write(fr["logits"], bad, "x")
    assert not (tmp_path / "t.h5").exists()


def test_folder_empty_and_damaged_files(tmp_path):
    with pytest.raises(CocodagError, match="is a folder, expected a logits.h5 file"):
        LogitsFile(tmp_path)
    empty = _raw_file(tmp_path / "empty.h5", logits=np.zeros((0, C, H, W), np.float16),
                      label=np.zeros((0, H, W), np.uint8), image_id=[])
    with pytest.raises(CocodagError, match=r"empty.h5: holds no frames"):
        LogitsFile(empty)
    # a damaged chunk: the frame read fails as one line naming the file, the dataset and the frame
    rng = np.random.default_rng(4)
    path = tmp_path / "gz.h5"
    _write(path, _frames(rng, 3, image=False), compression="gzip")
    with h5py.File(path, "r") as f:
        info = f["logits"].id.get_chunk_info(2)
    data = bytearray(path.read_bytes())
    data[info.byte_offset + 8: info.byte_offset + 72] = bytes(64)
    path.write_bytes(bytes(data))
    with LogitsFile(path) as lf:
        lf.frame(1)
        with pytest.raises(CocodagError, match=r"gz.h5: cannot read 'logits' of frame 2 \('frame_002'\): .*re-export"):
            lf.frame(2)
