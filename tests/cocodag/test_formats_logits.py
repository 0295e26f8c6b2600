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
from cocodag.formats.logits import LogitsFile, LogitsWriter, class_logits, class_mc

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
        assert f.attrs["format"] == "cocodag-logits" and int(f.attrs["version"]) == 2
        assert f.attrs["logits_resolution"] == "label" and tuple(f.attrs["label_shape"]) == (H, W)
        assert int(f.attrs["num_classes"]) == C and "abstention_channel" not in f.attrs
        assert f["label"].compression == "gzip" and f["roi"].compression == "gzip"   # always (mostly constant)
        assert f["logits"].dtype == np.float16 and f["logits"].shape == (3, C, H, W)
        assert f["logits"].chunks == (1, C, H, W)
        assert f["label"].dtype == np.uint8 and f["label"].shape == (3, H, W)
        assert [s.decode() for s in f["image_id"][()]] == [fr["image_id"] for fr in frames]
        assert f["mc/central"].shape == (3, 3, C, H, W)
        assert f["mc"].attrs["moments_of"] == "logits"
    with LogitsFile(path) as lf:
        assert len(lf) == 3 and lf.num_classes == C and lf.shape == (H, W) == lf.native_shape
        assert lf.logits_resolution == "label" and lf.upsample_rule is None
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


# ------------------------------------------------------------------------------------------ native resolution (v2)
def _native_frames(rng, n, h=3, w=4, dtype=np.float16):
    frames = _frames(rng, n, mc_order=3)
    for fr in frames:
        fr["logits"] = rng.normal(scale=4, size=(C, h, w)).astype(dtype)
        fr["mc"] = {"mean": rng.normal(size=(C, h, w)).astype(np.float32),
                    "central": rng.random((2, C, h, w)).astype(np.float32),
                    "entropy": rng.random((h, w)).astype(np.float32)}
    return frames


@pytest.mark.parametrize("align_corners,dtype", [(False, np.float16), (True, np.float16), (False, np.float32)])
def test_native_resolution_roundtrip_reads_label_size_logits(tmp_path, align_corners, dtype):
    """Logits and MC block stored at (h, w) = (3, 4) with the rule; the reader gives label-size (12, 16) float32
    logits, upsampled with that rule one frame at a time, and the stored ones on request."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(5)
    frames = _native_frames(rng, 3, dtype=dtype)
    rule = {"mode": "bilinear", "align_corners": align_corners}
    path = tmp_path / "n.h5"
    _write(path, frames, logits_resolution="native", upsample_rule=rule, logits_dtype=np.dtype(dtype).name,
           mc_attrs={"moments_of": "logits"})
    with h5py.File(path, "r") as f:         # the documented layout
        assert int(f.attrs["version"]) == 2 and f.attrs["logits_resolution"] == "native"
        assert tuple(f.attrs["label_shape"]) == (H, W) and f.attrs["upsample_mode"] == "bilinear"
        assert bool(f.attrs["upsample_align_corners"]) == align_corners
        assert f["logits"].shape == (3, C, 3, 4) and f["logits"].chunks == (1, C, 3, 4) and f["logits"].dtype == dtype
        assert f["label"].shape == (3, H, W) and f["mc/central"].shape == (3, 2, C, 3, 4)
    with LogitsFile(path) as lf:
        assert lf.shape == (H, W) and lf.native_shape == (3, 4) and lf.logits_resolution == "native"
        assert lf.upsample_rule == rule and "native_shape=(3, 4)" in repr(lf)
        for i, (fr, got) in enumerate(zip(frames, lf.iter_frames())):
            stored = torch.from_numpy(fr["logits"].astype(np.float32))[None]
            expect = F.interpolate(stored, size=(H, W), mode="bilinear", align_corners=align_corners)[0].numpy()
            assert got.logits.dtype == np.float32 and got.logits.shape == (C, H, W)
            np.testing.assert_array_equal(got.logits, expect)
            np.testing.assert_array_equal(lf.logits(i), expect)
            np.testing.assert_array_equal(lf.frame(i, native=True).logits, fr["logits"].astype(np.float32))
            np.testing.assert_array_equal(lf.native_logits(i), fr["logits"].astype(np.float32))
            np.testing.assert_array_equal(got.label, fr["label"])
            np.testing.assert_array_equal(got.roi, fr["roi"])
        mc = lf.mc(1)
        assert mc["upsample"] == rule and mc["size"] == (H, W) and mc["moments_of"] == "logits"
        for k in ("mean", "central", "entropy"):
            np.testing.assert_array_equal(mc[k], frames[1]["mc"][k])


def test_upsample_frame_is_the_one_rule():
    import torch
    import torch.nn.functional as F

    from cocodag.formats.logits import upsample, upsample_frame

    a = np.random.default_rng(6).normal(size=(C, 5, 7)).astype(np.float32)
    for ac in (False, True):
        expect = F.interpolate(torch.from_numpy(a)[None], size=(11, 13), mode="bilinear", align_corners=ac)[0]
        np.testing.assert_array_equal(upsample_frame(a, (11, 13), {"mode": "bilinear", "align_corners": ac}),
                                      expect.numpy())
        np.testing.assert_array_equal(upsample(torch.from_numpy(a)[None], (11, 13), align_corners=ac)[0], expect)
    assert upsample_frame(a[0], (11, 13), None).shape == (11, 13)         # a map; default rule: align_corners False
    np.testing.assert_array_equal(upsample_frame(a, (5, 7), None), a)      # same size: unchanged


def test_native_writer_and_reader_errors(tmp_path):
    rng = np.random.default_rng(7)
    fr = _native_frames(rng, 1)[0]
    with pytest.raises(CocodagError, match="needs the upsample_rule"):
        LogitsWriter(tmp_path / "a.h5", C, logits_resolution="native")
    with pytest.raises(CocodagError, match="upsampling mode 'nearest'"):
        LogitsWriter(tmp_path / "a.h5", C, logits_resolution="native",
                     upsample_rule={"mode": "nearest", "align_corners": False})
    with pytest.raises(CocodagError, match=r"mc/mean of 'x' has shape \(5, 12, 16\), expected it at the logits' "):
        with LogitsWriter(tmp_path / "a.h5", C, logits_resolution="native",
                          upsample_rule={"mode": "bilinear", "align_corners": False}) as w:
            w.write(fr["logits"], fr["label"], "x", mc={**fr["mc"], "mean": np.zeros((C, H, W), np.float32)})
    assert not (tmp_path / "a.h5").exists()
    good = tmp_path / "good.h5"
    _write(good, [fr], logits_resolution="native", upsample_rule={"mode": "bilinear", "align_corners": True})
    for key, value, msg in (("logits_resolution", "half", "logits_resolution attribute is 'half'"),
                            ("label_shape", np.array([H]), "label_shape attribute is"),
                            ("upsample_mode", "area", "upsample_mode, upsample_align_corners.*'area'"),
                            ("label_shape", np.array([H, W + 1]), r"'label' has shape \(1, 12, 16\), expected "
                                                                  r"\(1, 12, 17\) \(the label_shape attribute\)")):
        bad = tmp_path / f"bad-{key}.h5"
        bad.write_bytes(good.read_bytes())
        with h5py.File(bad, "r+") as f:
            f.attrs[key] = value
        with pytest.raises(CocodagError, match=msg) as e:
            LogitsFile(bad)
        assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_version_1_files_still_read(tmp_path):
    path = _raw_file(tmp_path / "v1.h5")         # version 1: no layout attributes, logits at label resolution
    with LogitsFile(path) as lf:
        assert lf.attrs["version"] == 1 and lf.logits_resolution == "label" and lf.upsample_rule is None
        assert lf.shape == lf.native_shape == (H, W) and lf.frame(1).logits.shape == (C, H, W)


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
        if "abstention_channel" in over:
            f.attrs["abstention_channel"] = over["abstention_channel"]
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
    ({"version": 3, "num_classes": 4, "abstention_channel": 2},
     r"abstention_channel attribute is 2, expected 4 \(the last of the 5 channels of 'logits'\) or none"),
    ({"version": 3, "abstention_channel": 4},
     r"num_classes attribute is 5 but 'logits' has 5 channels \(with the abstention channel 4\)"),
    ({"version": 3, "num_classes": 1, "abstention_channel": 1, "logits": np.zeros((2, 2, H, W), np.float16)},
     r"'logits' has 1 class channel\(s\) \(with the abstention channel 1\), expected at least 2"),
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


def test_lzf_is_refused_for_writing_and_lzf_files_still_read(tmp_path):
    rng = np.random.default_rng(9)
    frames = _frames(rng, 2, mc_order=3)
    with pytest.raises(CocodagError, match=r"compression 'lzf': lzf is no longer written: .* use gzip"):
        _write(tmp_path / "x.h5", frames, compression="lzf")
    assert not list(tmp_path.iterdir())
    path = tmp_path / "old.h5"
    _write(path, frames, compression="gzip")
    with h5py.File(path, "r+") as f:   # as an earlier version wrote it: the big datasets lzf-compressed
        for name in ("logits", "image", "mc/mean", "mc/central", "mc/entropy"):
            data, chunks = f[name][()], f[name].chunks
            del f[name]
            f.create_dataset(name, data=data, chunks=chunks, compression="lzf")
    with LogitsFile(path) as lf:
        for i, fr in enumerate(frames):
            got = lf.frame(i)
            assert np.array_equal(got.logits, fr["logits"]) and np.array_equal(got.label, fr["label"])
            assert np.array_equal(lf.mc(i)["central"], fr["mc"]["central"]) and np.array_equal(got.image, fr["image"])


def test_abstention_channel_is_recorded_read_and_dropped_for_the_classes(tmp_path):
    """A network with an abstention channel (PEBAL): C + 1 channels stored, the attribute says which one abstains,
    version 3 (a version-2 reader refuses the file instead of scoring that channel as a class)."""
    rng = np.random.default_rng(5)
    frames = _frames(rng, 2, mc_order=3)
    for fr in frames:           # C classes + the abstention channel
        fr["logits"] = rng.normal(size=(C + 1, H, W)).astype(np.float16)
        fr["mc"] = {**fr["mc"], "mean": rng.normal(size=(C + 1, H, W)).astype(np.float32),
                    "central": rng.random((2, C + 1, H, W)).astype(np.float32)}
    path = tmp_path / "a.h5"
    _write(path, frames, attrs={"abstention_channel": C, "maxent_train": "x"})
    with h5py.File(path, "r") as f:
        assert int(f.attrs["version"]) == 3 and int(f.attrs["num_classes"]) == C
        assert int(f.attrs["abstention_channel"]) == C and f["logits"].shape == (2, C + 1, H, W)
    with LogitsFile(path) as lf:
        assert (lf.num_classes, lf.num_channels, lf.abstention_channel) == (C, C + 1, C)
        assert "abstention_channel=5" in repr(lf)
        fr = lf.frame(1)
        np.testing.assert_array_equal(fr.logits, frames[1]["logits"].astype(np.float32))   # stored as written
        np.testing.assert_array_equal(class_logits(fr.logits, lf.abstention_channel),
                                      frames[1]["logits"][:C].astype(np.float32))
        mc = class_mc(lf.mc(1), lf.abstention_channel)
        assert mc is not None
        np.testing.assert_array_equal(mc["mean"], frames[1]["mc"]["mean"][:C])
        np.testing.assert_array_equal(mc["central"], frames[1]["mc"]["central"][:, :C])
        np.testing.assert_array_equal(mc["entropy"], frames[1]["mc"]["entropy"])
    # the rule on batches and tensors too; None leaves everything as it is
    import torch
    z = torch.zeros(3, C + 1, 2, 2)
    assert class_logits(z, C).shape == (3, C, 2, 2) and class_logits(z, None) is z
    assert class_mc(None, C) is None and class_mc({"mean": 1}, None) == {"mean": 1}
    # a file without the attribute (or with -1) has none, and reads as before
    _write(tmp_path / "b.h5", _frames(rng, 1), attrs={"abstention_channel": None})
    with h5py.File(tmp_path / "b.h5", "r") as f:
        assert int(f.attrs["version"]) == 2 and "abstention_channel" not in f.attrs
    with LogitsFile(_raw_file(tmp_path / "m1.h5", abstention_channel=-1)) as lf:
        assert lf.abstention_channel is None and lf.num_classes == lf.num_channels == C


def test_writer_refuses_a_bad_abstention_channel(tmp_path):
    for bad in (C - 1, True, "5", 5.0):
        with pytest.raises(CocodagError, match=rf"abstention_channel {bad!r}: expected None or {C} \(the channel "):
            LogitsWriter(tmp_path / "x.h5", C, attrs={"abstention_channel": bad})
    with LogitsWriter(tmp_path / "x.h5", C, attrs={"abstention_channel": C}) as w:
        with pytest.raises(CocodagError, match=rf"have shape \({C}, {H}, {W}\), expected \({C + 1}, H, W\)"):
            w.write(np.zeros((C, H, W), np.float16), np.zeros((H, W), np.uint8), "f")
        w.write(np.zeros((C + 1, H, W), np.float16), np.zeros((H, W), np.uint8), "f")
    assert not (tmp_path / "y.h5").exists()
