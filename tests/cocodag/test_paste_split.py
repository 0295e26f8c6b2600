import numpy as np
import pytest

from cocodag.errors import CocodagError
from cocodag.paste import paste_object
from cocodag.split import quadrant_boxes, split_by_centroid


def _literal_paste(frame, label, obj, mask, centroid):
    """Slow reference: place the mask centroid on `centroid`, copy pixel by pixel, clip at the border."""
    comp, lab = frame.copy(), label.copy()
    ys, xs = np.nonzero(mask)
    ys0, xs0 = ys.min(), xs.min()
    my, mx = (ys - ys0).mean(), (xs - xs0).mean()
    oy, ox = int(round(centroid[1] - my)), int(round(centroid[0] - mx))
    for y, x in zip(ys, xs):
        fy, fx = y - ys0 + oy, x - xs0 + ox
        if 0 <= fy < frame.shape[0] and 0 <= fx < frame.shape[1]:
            comp[fy, fx] = obj[y, x]
            lab[fy, fx] = 254
    return comp, lab


@pytest.mark.parametrize("seed", range(6))
def test_paste_matches_literal_reference(seed):
    rng = np.random.default_rng(seed)
    H, W = 40, 60
    frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (H, W), dtype=np.uint8)
    obj = rng.integers(0, 256, (25, 30, 3), dtype=np.uint8)
    mask = np.zeros((25, 30), np.uint8)
    mask[3:20, 5:22] = rng.random((17, 17)) < 0.7        # ragged, non-convex object with an empty margin
    centroid = (int(rng.integers(-5, W + 5)), int(rng.integers(-5, H + 5)))  # includes border clipping
    f0, l0, o0, m0 = frame.copy(), label.copy(), obj.copy(), mask.copy()
    comp, lab = paste_object(frame, label, obj, mask, centroid)
    ref_c, ref_l = _literal_paste(frame, label, obj, mask, centroid)
    assert np.array_equal(comp, ref_c) and np.array_equal(lab, ref_l)
    # pure: inputs untouched
    assert all(np.array_equal(a, b) for a, b in ((frame, f0), (label, l0), (obj, o0), (mask, m0)))


def test_paste_centroid_and_box():
    frame = np.zeros((100, 200, 3), np.uint8)
    label = np.full((100, 200), 7, np.uint8)
    obj = np.full((21, 11, 3), 200, np.uint8)
    mask = np.ones((21, 11), np.uint8)
    comp, lab, box = paste_object(frame, label, obj, mask, (80, 40), return_box=True)
    ys, xs = np.nonzero(lab == 254)
    assert (xs.mean(), ys.mean()) == (80, 40)
    assert box == (75, 30, 86, 51) and (lab == 254).sum() == 21 * 11
    assert set(np.unique(lab[lab != 254])) == {7} and (comp[lab == 254] == 200).all() and (comp[lab != 254] == 0).all()


def test_paste_scale_and_feather():
    frame = np.zeros((120, 120, 3), np.uint8)
    label = np.zeros((120, 120), np.uint8)
    obj = np.full((20, 20, 3), 255, np.uint8)
    mask = np.ones((20, 20), np.uint8)
    _, lab2 = paste_object(frame, label, obj, mask, (60, 60), scale=2.0)
    assert (lab2 == 254).sum() == 40 * 40
    hard, lab_h = paste_object(frame, label, obj, mask, (60, 60))
    soft, lab_s = paste_object(frame, label, obj, mask, (60, 60), feather=2.0)
    assert np.array_equal(lab_h, lab_s)                   # label unaffected by feathering
    assert (soft[lab_s != 254] == 0).all()                # inward feather: nothing leaks outside the mask
    inside = soft[lab_s == 254][:, 0]
    assert inside.min() < 255 and inside.max() == 255     # edge blended, centre opaque


def _expected_boxes(cx, cy, s, w, h):
    raw = [(cx - s, cy - s), (cx, cy - s), (cx - s, cy), (cx, cy)]
    out = []
    for x0, y0 in raw:
        if x0 < 0:
            x0 = 0
        if x0 + s > w:
            x0 = w - s
        if y0 < 0:
            y0 = 0
        if y0 + s > h:
            y0 = h - s
        out.append((x0, y0, x0 + s, y0 + s))
    return out


def test_quadrants_interior_are_exact():
    assert quadrant_boxes(1000, 500, 480, 2048, 1024) == [
        (520, 20, 1000, 500), (1000, 20, 1480, 500), (520, 500, 1000, 980), (1000, 500, 1480, 980)]


@pytest.mark.parametrize("cx,cy", [(10, 10), (250, 100), (30, 120), (255, 127), (0, 0), (128, 64)])
def test_quadrants_shifted_at_borders(cx, cy):
    boxes = quadrant_boxes(cx, cy, 64, 256, 128)
    assert boxes == _expected_boxes(cx, cy, 64, 256, 128)
    for x0, y0, x1, y1 in boxes:
        assert x1 - x0 == 64 and y1 - y0 == 64 and x0 >= 0 and y0 >= 0 and x1 <= 256 and y1 <= 128


def test_quadrants_crop_larger_than_frame():
    with pytest.raises(CocodagError, match="larger than the frame"):
        quadrant_boxes(10, 10, 200, 256, 128)


# ------------------------------------------------------------------------------------------- split_by_centroid
def _pasted(h=128, w=256, box=(100, 40, 140, 70), base=7):
    """A frame whose label holds one OOD rectangle ``box`` = (x0, y0, x1, y1) on trainId ``base``."""
    img = np.arange(h * w * 3, dtype=np.uint32).reshape(h, w, 3).astype(np.uint8)
    lab = np.full((h, w), base, np.uint8)
    x0, y0, x1, y1 = box
    lab[y0:y1, x0:x1] = 254
    return img, lab


def test_split_by_centroid_quadrants_and_views():
    img, lab = _pasted()
    sp = split_by_centroid(img, lab, 64)
    ys, xs = np.nonzero(lab == 254)
    assert sp.centroid == (int(round(xs.mean())), int(round(ys.mean())))
    assert [c.quadrant for c in sp.crops] == [0, 1, 2, 3] and (sp.no_ood, sp.no_id) == (0, 0)
    assert [c.box for c in sp.crops] == quadrant_boxes(*sp.centroid, 64, 256, 128)
    for c in sp.crops:
        x0, y0, x1, y1 = c.box
        assert np.shares_memory(c.image, img) and np.array_equal(c.image, img[y0:y1, x0:x1])
        assert np.array_equal(c.label, lab[y0:y1, x0:x1])
    # a search box around the object gives the same split as the whole frame
    inside = split_by_centroid(img, lab, 64, within=(100, 40, 140, 70))
    assert inside.centroid == sp.centroid and [c.box for c in inside.crops] == [c.box for c in sp.crops]


def test_split_by_centroid_drops_and_counts():
    img, lab = _pasted(box=(10, 10, 30, 30), base=255)       # void frame, object near the top-left corner
    lab[:, :5] = 3                                           # ID pixels only in the 5 leftmost columns
    sp = split_by_centroid(img, lab, 64)                     # centroid (20, 20): boxes shifted inside the frame
    assert [c.box for c in sp.crops] == [(0, 0, 64, 64), (0, 20, 64, 84)]     # the left quadrants keep ID pixels
    assert [c.quadrant for c in sp.crops] == [0, 2] and (sp.no_ood, sp.no_id) == (0, 2)
    img2, lab2 = _pasted(box=(0, 0, 256, 128))               # all OOD: no quadrant has an ID pixel
    sp2 = split_by_centroid(img2, lab2, 64)
    assert sp2.crops == () and sp2.no_id == 4
    img3, lab3 = _pasted(box=(0, 0, 0, 0))                   # nothing pasted
    assert split_by_centroid(img3, lab3, 64).centroid is None


def test_split_by_centroid_two_blobs_loses_ood_in_off_diagonal_quadrants():
    img, lab = _pasted(box=(0, 0, 0, 0))
    lab[20:40, 150:170] = 254                                # top-right blob
    lab[90:110, 80:100] = 254                                # bottom-left blob
    sp = split_by_centroid(img, lab, 32)
    assert sp.no_ood == 2 and [c.quadrant for c in sp.crops] == [1, 2]
    assert all((c.label == 254).any() and (c.label < 19).any() for c in sp.crops)
