import numpy as np
import pytest
from _fixtures import TRAIN_IDS, make_cityscapes
from PIL import Image

from cocodag.cityscapes import find_frames, load_frame, load_frame_rgb
from cocodag.errors import CocodagError
from cocodag.imageio import decode_image

# The full official labelId -> trainId table (cityscapesScripts helpers/labels.py), written out independently.
OFFICIAL = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
            27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _official(lab):
    out = np.full(lab.shape, 255, np.uint8)
    for k, v in OFFICIAL.items():
        out[lab == k] = v
    return out


def test_find_and_load_fixture(tmp_path):
    make_cityscapes(tmp_path, "train", n=3)
    make_cityscapes(tmp_path, "val", n=1, seed=5)
    frames = find_frames(tmp_path, "train")
    assert [f.name for f in frames] == sorted(f.name for f in frames) and len(frames) == 3
    assert all(f.label_kind == "labelIds" and (f.width, f.height) == (256, 128) for f in frames)
    for f in frames:
        rgb, lab = load_frame_rgb(f)
        ref_rgb = np.asarray(Image.open(f.image).convert("RGB"))
        ref_ids = np.asarray(Image.open(f.label))
        assert np.array_equal(rgb, ref_rgb)
        assert np.array_equal(lab, np.vectorize(lambda v: TRAIN_IDS[int(v)])(ref_ids).astype(np.uint8))
        bgr, _ = load_frame(f)
        assert np.array_equal(bgr[..., ::-1], ref_rgb)


def test_label_train_ids_preferred(tmp_path):
    make_cityscapes(tmp_path, "train", n=1, train_ids=True)
    (f,) = find_frames(tmp_path, "train")
    assert f.label_kind == "labelTrainIds" and f.label.endswith("_gtFine_labelTrainIds.png")
    (g,) = find_frames(tmp_path, "train", label_source="labelIds")
    assert g.label_kind == "labelIds"
    assert np.array_equal(load_frame(f)[1], load_frame(g)[1])


def test_errors(tmp_path):
    with pytest.raises(CocodagError, match="does not exist"):
        find_frames(tmp_path / "nope")
    with pytest.raises(CocodagError, match="no leftImg8bit"):
        find_frames(tmp_path)
    make_cityscapes(tmp_path, "train", n=2)
    with pytest.raises(CocodagError, match=r"--split 'val'.*splits found: train"):
        find_frames(tmp_path, "val")
    lab_path = next((tmp_path / "gtFine").rglob("*labelIds.png"))
    Image.fromarray(np.zeros((64, 100), np.uint8)).save(lab_path)
    with pytest.raises(CocodagError, match=rf"{lab_path.name}: label size 100x64 differs"):
        find_frames(tmp_path, "train")


def test_corrupt_and_truncated(tmp_path):
    paths = make_cityscapes(tmp_path, "train", n=2)
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2])
    frames = find_frames(tmp_path, "train")          # headers are intact: found, fails at decode
    with pytest.raises(CocodagError, match=rf"{paths[0].name}: corrupt or truncated"):
        load_frame(frames[0])
    paths[1].write_bytes(b"not a png at all" * 10)
    with pytest.raises(CocodagError, match=rf"{paths[1].name}: not a PNG"):
        find_frames(tmp_path, "train")
    jpg = tmp_path / "x.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpg)
    jpg.write_bytes(jpg.read_bytes()[:-400])
    with pytest.raises(CocodagError, match="x.jpg: corrupt or truncated"):
        decode_image(jpg)


def test_real_cityscapes_frame(real_data):
    root = real_data / "cityscapes"
    (f,) = find_frames(root, "val")
    assert f.name == "frankfurt_000000_000294" and (f.width, f.height) == (256, 128)
    assert f.label_kind == "labelTrainIds"
    (g,) = find_frames(root, "val", label_source="labelIds")
    rgb, from_ids = load_frame_rgb(g)
    assert rgb.shape == (128, 256, 3) and np.array_equal(rgb, np.asarray(Image.open(g.image).convert("RGB")))
    ids = np.asarray(Image.open(g.label))
    assert np.array_equal(from_ids, _official(ids))
    _, from_train = load_frame(f)
    assert np.array_equal(from_train, np.asarray(Image.open(f.label)))
    # SOURCES.md: the two real label maps were downscaled independently and differ on 77 boundary pixels.
    assert int((from_ids != from_train).sum()) == 77
    with pytest.raises(CocodagError, match="splits found: val"):
        find_frames(root, "train")
