"""Evaluation-set presets -> the documented 0/1/255 layout (cocodag.formats.evalsets, docs/formats.md §2).

Oracles: the source files' own values mapped with literal per-pixel rules written here (not the module's LUTs);
the real RoadAnomaly frames (../shared/real-data) where present.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from cocodag import CocodagError
from cocodag.formats.evalsets import PRESETS, EvalItem, convert, get_preset, parse_dataset_spec

# Cityscapes labelIds that have a trainId (official cityscapesScripts table), written out independently here.
_CS_EVAL_IDS = {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33}


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _rgb(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _read(path):
    return np.asarray(Image.open(path))


# ------------------------------------------------------------------------------------------------ real data
def test_road_anomaly_real_frames(real_data, tmp_path):
    src = real_data / "anomaly" / "road_anomaly"
    if not (src / "frames").is_dir():
        pytest.skip("RoadAnomaly frames not present")
    meta = convert("road-anomaly", src, tmp_path / "ra", progress=False)
    names = sorted(p.stem for p in (src / "frames").glob("*.jpg"))
    assert meta["names"] == names and len(names) == 3
    assert meta["preset"] == "road-anomaly" and meta["region"] == "all"
    for n in names:
        source = _read(src / "frames" / f"{n}.labels" / "labels_semantic.png")
        out = _read(tmp_path / "ra" / "labels" / f"{n}.png")
        assert out.dtype == np.uint8 and out.shape == source.shape
        assert set(np.unique(out)) <= {0, 1}
        np.testing.assert_array_equal(out == 1, source == 2)       # anomaly pixels exactly the source's 2s
        np.testing.assert_array_equal(out == 0, source == 0)
        # image copied byte for byte
        assert (tmp_path / "ra" / "images" / f"{n}.jpg").read_bytes() == (src / "frames" / f"{n}.jpg").read_bytes()
    # the converted set reads back through the standard preset
    std = get_preset("standard")
    items = std.find(tmp_path / "ra")
    assert [it.name for it in items] == names
    np.testing.assert_array_equal(std.load_label(items[0].label_path),
                                  _read(src / "frames" / f"{names[0]}.labels" / "labels_semantic.png") == 2)
    # pixel totals in meta.json: SOURCES.md lists 215,418 + 25,557 + 10,107 anomaly pixels
    assert json.loads((tmp_path / "ra" / "meta.json").read_text())["pixels"]["anomaly"] == 215418 + 25557 + 10107


def test_cityscapes_preset_real_frame(real_data, tmp_path):
    root = real_data / "cityscapes"
    if not (root / "gtFine" / "val").is_dir():
        pytest.skip("Cityscapes sample not present")
    p = get_preset("cityscapes")
    items = p.find(root)
    assert [it.name for it in items] == ["frankfurt_000000_000294"]
    ids = _read(items[0].label_path)
    lab = p.load_label(items[0].label_path)
    expect = np.where(np.isin(ids, list(_CS_EVAL_IDS)), 0, 255)
    np.testing.assert_array_equal(lab, expect)
    assert 1 not in lab


# ------------------------------------------------------------------------------------- synthetic layouts
def _make_laf(root, rng, n_per_city=2, h=24, w=32):
    expected = {}
    for city in ("01_Hanns_Klemm_Str_45", "04_Maurener_Weg_8"):
        for k in range(n_per_city):
            stem = f"{city}_{k:06d}_000100"
            ids = rng.choice([0, 1, 1, 1, 2, 7, 200, 201, 255], size=(h, w)).astype(np.uint8)
            _png(root / "leftImg8bit" / "test" / city / f"{stem}_leftImg8bit.png", _rgb(rng, h, w))
            _png(root / "gtCoarse" / "test" / city / f"{stem}_gtCoarse_labelIds.png", ids)
            expected[stem] = ids
    return expected


def _laf_rule(v):
    v = int(v)
    if v == 1:
        return 0
    if 2 <= v <= 200:
        return 1
    return 255


def test_lostandfound_mapping_and_roi(tmp_path):
    rng = np.random.default_rng(0)
    expected = _make_laf(tmp_path / "laf", rng)
    p = get_preset("lostandfound")
    assert p.region == "road"
    items = p.find(tmp_path / "laf")
    assert [it.name for it in items] == sorted(expected)
    rule = np.vectorize(_laf_rule)
    for it in items:
        ids = expected[it.name]
        np.testing.assert_array_equal(p.load_label(it.label_path), rule(ids).astype(np.uint8))
        np.testing.assert_array_equal(p.load_roi(it), ((ids >= 1) & (ids <= 200)).astype(np.uint8))
    meta = convert(p, tmp_path / "laf", tmp_path / "out", progress=False)
    assert meta["region"] == "road"
    for n, ids in expected.items():
        np.testing.assert_array_equal(_read(tmp_path / "out" / "labels" / f"{n}.png"), rule(ids))
        np.testing.assert_array_equal(_read(tmp_path / "out" / "roi" / f"{n}.png"), (ids >= 1) & (ids <= 200))
    # the converted set keeps its region and roi through the standard preset
    std = get_preset("standard")
    assert std.region_of(tmp_path / "out") == "road"
    it = std.find(tmp_path / "out")[0]
    assert it.roi_path is not None
    np.testing.assert_array_equal(std.load_roi(it), (expected[it.name] >= 1) & (expected[it.name] <= 200))


@pytest.mark.parametrize("preset,split", [("fishyscapes-laf", "LostAndFound"), ("fishyscapes-static", "Static")])
@pytest.mark.parametrize("nested", [True, False])
def test_fishyscapes(tmp_path, preset, split, nested):
    rng = np.random.default_rng(1)
    base = tmp_path / "fs" / split if nested else tmp_path / "fs"
    labs = {}
    for i in range(3):
        lab = rng.choice([0, 1, 2, 255, 17], size=(16, 20)).astype(np.uint8)
        _png(base / "original" / f"{i}.png", _rgb(rng, 16, 20))
        _png(base / "labels" / f"{i}.png", lab)
        labs[str(i)] = lab
    p = get_preset(preset)
    items = p.find(tmp_path / "fs")
    assert [it.name for it in items] == ["0", "1", "2"]
    for it in items:
        lab = labs[it.name]
        np.testing.assert_array_equal(p.load_label(it.label_path), np.where((lab == 0) | (lab == 1), lab, 255))


@pytest.mark.parametrize("preset,ext", [("smiyc-anomaly", "jpg"), ("smiyc-obstacle", "webp")])
def test_smiyc(tmp_path, preset, ext):
    rng = np.random.default_rng(2)
    root = tmp_path / "smiyc"
    labs = {}
    for name in ("validation_1", "validation_2"):
        lab = rng.choice([0, 1, 255], size=(16, 24)).astype(np.uint8)
        (root / "images").mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / "images" / f"{name}.{ext}"), _rgb(rng, 16, 24))
        _png(root / "labels_masks" / f"{name}_labels_semantic.png", lab)
        labs[name] = lab
    p = get_preset(preset)
    items = p.find(root)
    assert [it.name for it in items] == sorted(labs)
    for it in items:
        np.testing.assert_array_equal(p.load_label(it.label_path), labs[it.name])
    meta = convert(p, root, tmp_path / "out", progress=False)
    out_ext = "jpg" if ext == "jpg" else "png"        # webp is re-encoded as PNG
    for n in labs:
        assert (tmp_path / "out" / "images" / f"{n}.{out_ext}").is_file()
        np.testing.assert_array_equal(_read(tmp_path / "out" / "labels" / f"{n}.png"), labs[n])
    if preset == "smiyc-obstacle":
        assert meta["region"] == "road"
        for n in labs:
            np.testing.assert_array_equal(_read(tmp_path / "out" / "roi" / f"{n}.png"), labs[n] != 255)
    else:
        assert not (tmp_path / "out" / "roi").exists()


# ------------------------------------------------------------------------------------------- bad inputs
def _make_standard(root, rng, names=("a", "b", "c"), h=12, w=10):
    for n in names:
        _png(root / "images" / f"{n}.png", _rgb(rng, h, w))
        _png(root / "labels" / f"{n}.png", rng.choice([0, 1, 255], size=(h, w)).astype(np.uint8))


def test_missing_label_named_with_count(tmp_path):
    rng = np.random.default_rng(3)
    _make_standard(tmp_path, rng, names=("a", "b", "c", "d"))
    (tmp_path / "labels" / "b.png").unlink()
    (tmp_path / "labels" / "d.png").unlink()
    with pytest.raises(CocodagError, match=r"2 of 4 image\(s\).*no label file: images/b.png, images/d.png"):
        get_preset("standard").find(tmp_path)


def test_label_without_image(tmp_path):
    rng = np.random.default_rng(4)
    _make_standard(tmp_path, rng)
    (tmp_path / "images" / "c.png").unlink()
    with pytest.raises(CocodagError, match=r"1 label file\(s\).*no image: labels/c.png"):
        get_preset("standard").find(tmp_path)


def test_road_anomaly_missing_semantic(tmp_path):
    rng = np.random.default_rng(5)
    fr = tmp_path / "frames"
    for n in ("x", "y"):
        _png(fr / f"{n}.jpg".replace(".jpg", ".png"), _rgb(rng, 8, 8))
        (fr / f"{n}.labels").mkdir(parents=True)
    _png(fr / "x.labels" / "labels_semantic.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(CocodagError, match=r"1 label folder\(s\) lack labels_semantic.png: frames/y.labels"):
        get_preset("road-anomaly").find(tmp_path)


def test_empty_and_absent_layout(tmp_path):
    with pytest.raises(CocodagError, match="not a directory"):
        get_preset("standard").find(tmp_path / "nope")
    (tmp_path / "images").mkdir()
    with pytest.raises(CocodagError, match="no images found"):
        get_preset("standard").find(tmp_path)
    with pytest.raises(CocodagError, match="leftImg8bit/test not found"):
        get_preset("lostandfound").find(tmp_path)


def test_size_mismatch_and_bad_values(tmp_path):
    rng = np.random.default_rng(6)
    _make_standard(tmp_path / "s", rng)
    _png(tmp_path / "s" / "labels" / "b.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(CocodagError,
                       match=r"1 frame\(s\) whose image and label sizes differ: b \(image 12x10, label 5x5\)"):
        convert("standard", tmp_path / "s", tmp_path / "o", progress=False)
    assert not (tmp_path / "o" / "meta.json").exists()
    _png(tmp_path / "s" / "labels" / "b.png", np.full((12, 10), 7, np.uint8))
    with pytest.raises(CocodagError, match=r"label values \[7\] not in 0/1/255"):
        get_preset("standard").load_label(tmp_path / "s" / "labels" / "b.png")


def test_convert_resumes_and_refuses_other_preset(tmp_path):
    rng = np.random.default_rng(7)
    _make_standard(tmp_path / "s", rng)
    m1 = convert("standard", tmp_path / "s", tmp_path / "o", progress=False)
    m2 = convert("standard", tmp_path / "s", tmp_path / "o", progress=False)
    assert m1 == m2
    _make_laf(tmp_path / "laf", rng)
    with pytest.raises(CocodagError, match="converted from preset 'standard'"):
        convert("lostandfound", tmp_path / "laf", tmp_path / "o", progress=False)
    with pytest.raises(CocodagError, match="is the source folder"):
        convert("standard", tmp_path / "s", tmp_path / "s", progress=False)


def test_registry_and_spec(tmp_path):
    for name in ("standard", "road-anomaly", "lostandfound", "fishyscapes-laf", "fishyscapes-static",
                 "smiyc-anomaly", "smiyc-obstacle", "cityscapes", "demo"):
        p = PRESETS[name]
        assert p.region in ("all", "road") and p.description and p.layout
    with pytest.raises(CocodagError, match="did you mean road-anomaly"):
        get_preset("road-anomaly2")
    p, root = parse_dataset_spec(f"lostandfound:{tmp_path}")
    assert p.name == "lostandfound" and root == tmp_path
    p, root = parse_dataset_spec(str(tmp_path))
    assert p.name == "standard"
    assert EvalItem("a", tmp_path, None).roi_path is None


def test_reencoded_images_keep_pixels_and_ignore_exif_rotation(tmp_path):
    """Non-copied formats (.webp, .jpeg) are re-encoded as PNG with the decoded pixels unchanged; an EXIF orientation
    tag is not applied, so the image stays aligned with its (unrotated) label, as PIL-based upstream loaders see it."""
    rng = np.random.default_rng(8)
    fr = tmp_path / "src" / "frames"
    fr.mkdir(parents=True)
    h, w = 12, 20
    rgb = _rgb(rng, h, w)
    Image.fromarray(rgb).save(fr / "a.webp", lossless=True)
    im = Image.fromarray(_rgb(rng, h, w))
    exif = im.getexif()
    exif[0x0112] = 6                                         # "rotate 90 CW to display"
    im.save(fr / "b.jpeg", exif=exif, quality=95)
    for n in ("a", "b"):
        _png(fr / f"{n}.labels" / "labels_semantic.png", np.zeros((h, w), np.uint8))
    convert("road-anomaly", tmp_path / "src", tmp_path / "out", progress=False)
    np.testing.assert_array_equal(_read(tmp_path / "out" / "images" / "a.png"), rgb)
    b = _read(tmp_path / "out" / "images" / "b.png")
    assert b.shape == (h, w, 3)                              # not rotated to 20x12
    ref = np.asarray(Image.open(fr / "b.jpeg").convert("RGB")).astype(int)
    assert np.abs(b.astype(int) - ref).max() <= 3           # JPEG decoders (cv2 vs PIL) may differ slightly


# ------------------------------------------------------------------------------------------ issue 9: faults
def test_standard_label_values_name_file_and_values(tmp_path):
    rng = np.random.default_rng(9)
    _make_standard(tmp_path / "s", rng)
    bad = np.zeros((12, 10), np.uint8)
    bad[0, :3] = 7
    bad[1, 0] = 2
    _png(tmp_path / "s" / "labels" / "b.png", bad)
    with pytest.raises(CocodagError) as e:
        get_preset("standard").load_label(tmp_path / "s" / "labels" / "b.png")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 's' / 'labels' / 'b.png'}: label values [2, 7] not in 0/1/255 (4 pixels;")
    assert "oodscore datasets convert" in msg and "\n" not in msg


def test_every_preset_table_maps_to_0_1_255_only(tmp_path):
    import dataclasses

    for p in PRESETS.values():
        if p._lut is not None:
            assert set(np.unique(p._lut).tolist()) <= {0, 1, 255}, p.name
            assert p._lut.dtype == np.uint8 and p._lut.shape == (256,)
    # load_label checks the mapped values: a broken table is reported as the preset's bug, not passed on as void
    lut = PRESETS["fishyscapes-laf"]._lut.copy()
    lut[1] = 3
    broken = dataclasses.replace(PRESETS["fishyscapes-laf"], _lut=lut)
    _png(tmp_path / "l.png", np.ones((4, 4), np.uint8))
    with pytest.raises(CocodagError, match=r"l.png: preset fishyscapes-laf mapped the labels to values \[3\]"):
        broken.load_label(tmp_path / "l.png")


@pytest.mark.parametrize("text", ['{"format": "cocodag-ev', "[1, 2]", "\udcff"])
def test_damaged_meta_json_is_one_line(tmp_path, text):
    rng = np.random.default_rng(10)
    _make_standard(tmp_path / "s", rng)
    (tmp_path / "s" / "meta.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    std = get_preset("standard")
    for call in (lambda: std.find(tmp_path / "s"), lambda: std.region_of(tmp_path / "s")):
        with pytest.raises(CocodagError, match=r"s/meta.json: (not a readable JSON file|expected a JSON object)"):
            call()
    # a damaged meta.json in a convert destination
    _make_standard(tmp_path / "s2", rng)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "meta.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CocodagError, match=r"o/meta.json: (not a readable JSON file|expected a JSON object)"):
        convert("standard", tmp_path / "s2", tmp_path / "o", progress=False)


def test_convert_refused_while_another_job_writes_dst(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    rng = np.random.default_rng(11)
    _make_standard(tmp_path / "s", rng)
    dst = tmp_path / "o"
    dst.mkdir()
    ready = tmp_path / "ready"
    code = textwrap.dedent(f"""
        import time, pathlib
        from cocodag.lock import OutputLock
        OutputLock({str(dst)!r}).acquire()
        pathlib.Path({str(ready)!r}).write_text("held")
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(300):
            if ready.exists():
                break
            time.sleep(0.05)
        with pytest.raises(CocodagError, match=rf"DST {dst}: in use by another job \(pid {child.pid} on "):
            convert("standard", tmp_path / "s", dst, progress=False)
        assert not (dst / "meta.json").exists() and not (dst / "labels").exists()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert convert("standard", tmp_path / "s", dst, progress=False)["names"] == ["a", "b", "c"]


def test_convert_dst_checked_and_disk_full(small_fs, tmp_path):
    rng = np.random.default_rng(12)
    _make_standard(tmp_path / "s", rng, names=[f"f{i:02d}" for i in range(12)], h=200, w=300)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CocodagError, match="DST .*afile: is an existing file, expected a folder"):
        convert("standard", tmp_path / "s", tmp_path / "afile", progress=False)
    mnt, _ = small_fs                       # 12 random 200x300 RGB PNGs (~180 kB each) cannot fit in 1 MiB
    with pytest.raises(CocodagError, match=rf"^No space left on device: {mnt / 'o'}; "):
        convert("standard", tmp_path / "s", mnt / "o", progress=False)
    assert not (mnt / "o" / "meta.json").exists()
    assert not [p for p in (mnt / "o").rglob("*") if ".tmp" in p.name]
