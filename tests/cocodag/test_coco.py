import json

import numpy as np
import pytest
from _fixtures import make_coco
from pycocotools.coco import COCO

from cocodag.coco import CocoImage, ann_to_mask, crop_proxy, image_masks, load_coco, load_image, read_coco_json
from cocodag.errors import CocodagError


def _src(tmp_path, **kw):
    jp = make_coco(tmp_path)
    return jp, load_coco(jp, tmp_path / "train2017", **kw)


def test_proxy_filter(tmp_path):
    jp, src = _src(tmp_path, min_size=64, min_object_area=200)
    # 100..103 are clean; 200 has a person, 201 a car, 202 is 40x40, 203 holds only a crowd annotation
    assert [im.id for im in src.images] == [100, 101, 102, 103]
    assert src.stats["excluded_category"] == 2 and src.stats["too_small"] == 1 and src.stats["no_object"] == 1
    raw = json.loads(jp.read_text())
    big = {a["id"] for a in raw["annotations"] if a["image_id"] < 200 and a["area"] >= 200}
    assert {o.ann_id for o in src.objects} == big
    _, src0 = _src(tmp_path, min_size=64, min_object_area=0)
    assert len(src0.objects) == 8                       # the 64-px objects come back
    _, src_small = _src(tmp_path, min_size=32, min_object_area=200)
    assert 202 in [im.id for im in src_small.images]


def test_masks_match_stock_pycocotools(tmp_path):
    jp, src = _src(tmp_path, min_size=64, min_object_area=0)
    ref = COCO(str(jp))
    for o in src.objects:
        img = src.images[o.image]
        m = ann_to_mask(img, src.object_ann(o))
        assert np.array_equal(m, ref.annToMask(ref.anns[o.ann_id]))
        assert abs(int(m.sum()) - o.area) <= 0.25 * o.area + 10   # rasterized area ~ polygon area
    obj, crowd = image_masks(src.images[0])
    ref_union = np.zeros_like(obj)
    for a in ref.imgToAnns[100]:
        if not a["iscrowd"]:
            ref_union |= ref.annToMask(a)
    assert np.array_equal(obj, ref_union) and crowd.sum() == 0


@pytest.mark.parametrize("mutate,match", [
    (lambda d: "{not json", "not valid JSON"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "images"}), "missing key 'images'"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "annotations"}), "missing key 'annotations'"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "categories"}), "missing key 'categories'"),
    (lambda d: json.dumps({**d, "annotations": [{k: v for k, v in a.items() if k != "id"} for a in d["annotations"]]}),
     r"annotations\[0\] has no 'id' key"),
    (lambda d: json.dumps(3), "expected a COCO object"),
])
def test_bad_json(tmp_path, mutate, match):
    jp = make_coco(tmp_path)
    jp.write_text(mutate(json.loads(jp.read_text())))
    with pytest.raises(CocodagError, match=rf"instances_train2017.json: {match}"):
        load_coco(jp, tmp_path / "train2017", min_size=64)


def test_missing_image_file(tmp_path):
    jp = make_coco(tmp_path)
    (tmp_path / "train2017" / "000000000101.jpg").unlink()
    with pytest.raises(CocodagError, match="000000000101.jpg: COCO image listed"):
        load_coco(jp, tmp_path / "train2017", min_size=64)
    src = load_coco(jp, tmp_path / "train2017", min_size=64, skip_bad=True)
    assert 101 not in [im.id for im in src.images] and src.stats["skipped"][0]["reason"] == "missing"


def test_real_persons_only_is_filtered_out(real_data):
    with pytest.raises(CocodagError, match="test_coco.json: no usable object left after filtering.*4 contain person"):
        load_coco(real_data / "coco/annotations/test_coco.json", real_data / "coco/val2017", min_size=64)
    data, _ = read_coco_json(real_data / "coco/annotations/test_coco.json")
    assert len(data["images"]) == 4 and len(data["annotations"]) == 14


def test_real_bare_list(real_data):
    d = real_data / "coco/hf_transformers_sample"
    src = load_coco(d / "coco_annotations.txt", d, min_size=480, min_object_area=0)
    assert src.stats["bare_list"] and [im.id for im in src.images] == [39769]
    assert (src.images[0].width, src.images[0].height) == (640, 480)
    raw = {a["id"]: a for a in json.loads((d / "coco_annotations.txt").read_text())}
    assert {o.ann_id for o in src.objects} == set(raw)
    for o in src.objects:
        m = ann_to_mask(src.images[0], src.object_ann(o))
        assert abs(int(m.sum()) - raw[o.ann_id]["area"]) <= 0.05 * raw[o.ann_id]["area"] + 50
    assert len(load_coco(d / "coco_annotations.txt", d, min_size=480, min_object_area=3000).objects) == 5
    with pytest.raises(CocodagError, match="no usable object left.*1 smaller than 481x481"):
        load_coco(d / "coco_annotations.txt", d, min_size=481)


def test_real_mmdet_without_images(real_data):
    jp = real_data / "coco/annotations_only/mmdet_coco_dummy/annotations/instances_val2017.json"
    with pytest.raises(CocodagError, match="no usable object left.*2 contain person"):
        load_coco(jp, real_data / "coco/val2017", min_size=64)
    # Without the Cityscapes-class filter image 139 would be a proxy, but its file is not shipped: named.
    with pytest.raises(CocodagError, match="000000000139.jpg: COCO image listed in instances_val2017.json"):
        load_coco(jp, real_data / "coco/val2017", min_size=64, exclude=())
    with pytest.raises(CocodagError, match="2 image files missing"):
        load_coco(jp, real_data / "coco/val2017", min_size=64, exclude=(), skip_bad=True)


# ------------------------------------------------------------------------------------------------ proxy crops
def _proxy_arrays(h=60, w=80):
    img = np.arange(h * w * 3, dtype=np.uint32).reshape(h, w, 3).astype(np.uint8)
    obj, crowd = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    obj[20:40, 30:60] = 1
    crowd[0:10, 0:10] = 1
    return img, obj, crowd


def test_crop_proxy_labels_box_and_rng():
    img, obj, crowd = _proxy_arrays()
    got = crop_proxy(img, obj, crowd, 32, np.random.default_rng(5))
    assert got is not None
    im, lab, (x0, y0, x1, y1) = got
    assert (x1 - x0, y1 - y0) == (32, 32) and np.array_equal(im, img[y0:y1, x0:x1])
    expected = np.where(obj == 1, 254, 255).astype(np.uint8)[y0:y1, x0:x1]   # ours: background and crowd -> 255
    assert np.array_equal(lab, expected) and (lab == 254).any()
    # the draws are the builder's (they fix the shard bytes): x0 then y0 per try, first crop with an object pixel
    rng = np.random.default_rng(5)
    while True:
        x, y = int(rng.integers(0, 80 - 32 + 1)), int(rng.integers(0, 60 - 32 + 1))
        if obj[y:y + 32, x:x + 32].any():
            break
    assert (x0, y0) == (x, y)


def test_crop_proxy_road_background_crowd_void_and_misses():
    img, obj, crowd = _proxy_arrays()
    _, lab, box = crop_proxy(img, obj, crowd, 60, np.random.default_rng(0), background=0)
    full = np.zeros((60, 80), np.uint8)          # meta-ood: background = road (0); crowd stays void; objects 254
    full[crowd == 1] = 255
    full[obj == 1] = 254
    assert np.array_equal(lab, full[box[1]:box[3], box[0]:box[2]])
    tiny = np.zeros_like(obj)
    tiny[0, 79] = 1                              # one object pixel in a corner: 10 random tries all miss it
    assert crop_proxy(img, tiny, crowd, 16, np.random.default_rng(1), tries=3) is None
    with pytest.raises(CocodagError, match="larger than the proxy image"):
        crop_proxy(img, obj, crowd, 64, np.random.default_rng(0))


def test_load_image_checks_json_size(tmp_path):
    jp, src = _src(tmp_path, min_size=64, min_object_area=200)
    bgr = load_image(src.images[0])
    assert bgr.shape == (src.images[0].height, src.images[0].width, 3)
    wrong = CocoImage(src.images[0].id, src.images[0].path, src.images[0].width + 1, src.images[0].height)
    with pytest.raises(CocodagError, match="but the COCO JSON says"):
        load_image(wrong)


# ------------------------------------------------------------------------------------------------ bad annotations
def _with_extra_annotations(tmp_path, segs, image_id=100, iscrowd=0):
    jp = make_coco(tmp_path)
    d = json.loads(jp.read_text())
    ids = []
    for seg in segs:
        ids.append(max(a["id"] for a in d["annotations"]) + 1)
        d["annotations"].append({"id": ids[-1], "image_id": image_id, "category_id": 17, "segmentation": seg,
                                 "area": 10.0, "iscrowd": iscrowd})
    jp.write_text(json.dumps(d))
    return jp, ids


@pytest.mark.parametrize("seg,why", [
    ([[10.0, 10.0, 40.0, 12.0]], "degenerate polygon"),            # 2 points: pycocotools reads it as a box
    ([[]], "degenerate polygon"),
    ([], "degenerate polygon"),
    ([[1.0, 2.0]], "degenerate polygon"),
    ([["a", "b", "c", "d", "e", "f"]], "non-numeric coordinates"),
    ("polygon", "segmentation is a str"),
    ({"counts": [10], "size": [5, 5]}, "RLE size [5, 5] differs from the image size [80, 96]"),
])
def test_unrasterizable_annotation_is_named_or_skipped(tmp_path, seg, why):
    jp, (aid,) = _with_extra_annotations(tmp_path, [seg])
    with pytest.raises(CocodagError) as e:
        load_coco(jp, tmp_path / "train2017", min_size=64, min_object_area=200)
    msg = str(e.value)
    assert msg.startswith(f"{jp}: annotation {aid} (image 100): ") and why in msg and "--skip-bad" in msg, msg
    src = load_coco(jp, tmp_path / "train2017", min_size=64, min_object_area=200, skip_bad=True)
    assert src.stats["bad_annotations"] == 1 and src.stats["skipped"][0]["file"] == str(jp)
    assert src.stats["skipped"][0]["reason"].startswith(f"annotation {aid} (image 100): ")
    assert [im.id for im in src.images] == [100, 101, 102, 103]
    assert aid not in {a["id"] for a in src.images[0].anns}
    image_masks(src.images[0])                                      # the proxy crop's masks: no pycocotools error


def test_degenerate_parts_are_dropped_without_changing_the_mask(tmp_path):
    tri = [10.0, 12.0, 40.0, 14.0, 30.0, 40.0]
    segs = [[[10.0, 10.0, 40.0, 12.0], tri], [tri, [5.0, 5.0]], [tri, [1.0, 2.0, 70.0, 60.0, 3.0]]]
    jp, ids = _with_extra_annotations(tmp_path, segs)
    src = load_coco(jp, tmp_path / "train2017", min_size=64, min_object_area=200)
    ref = COCO(str(jp))
    img = src.images[0]
    want = ref.annToMask({**ref.anns[ids[0]], "segmentation": [tri]})
    for aid in ids:
        ann = next(a for a in img.anns if a["id"] == aid)
        assert ann["segmentation"] == [tri] and np.array_equal(ann_to_mask(img, ann), want)
    for aid in ids[1:]:                                             # what stock pycocotools gives for the originals
        assert np.array_equal(ref.annToMask(ref.anns[aid]), want)


def test_object_outside_its_image_is_named_or_skipped(tmp_path):
    jp, (aid,) = _with_extra_annotations(tmp_path, [[[200.0, 10.0, 230.0, 10.0, 230.0, 40.0]]])
    d = json.loads(jp.read_text())
    d["annotations"][-1]["area"] = 900.0
    jp.write_text(json.dumps(d))
    with pytest.raises(CocodagError, match=rf"annotation {aid} \(image 100\): its polygon lies outside the 96x80"):
        load_coco(jp, tmp_path / "train2017", min_size=64, min_object_area=200)
    src = load_coco(jp, tmp_path / "train2017", min_size=64, min_object_area=200, skip_bad=True)
    assert aid not in {o.ann_id for o in src.objects} and src.stats["bad_annotations"] == 1


@pytest.mark.parametrize("where,key,value", [("annotations", "area", "big"), ("annotations", "id", "x"),
                                             ("images", "width", "wide"), ("categories", "id", None)])
def test_non_number_fields_are_named(tmp_path, where, key, value):
    jp = make_coco(tmp_path)
    d = json.loads(jp.read_text())
    d[where][1][key] = value
    jp.write_text(json.dumps(d))
    with pytest.raises(CocodagError, match=rf"{where}\[1\].*: '{key}' must be a number, got {value!r}; fix the file"):
        load_coco(jp, tmp_path / "train2017", min_size=64)
