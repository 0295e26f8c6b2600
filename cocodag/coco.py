"""COCO loader and the meta-ood proxy filter (docs/methods.md §1.2, §2.1).

``instances_<split>.json`` is validated here (one-line :class:`CocodagError` naming the file and the key), then
reduced to small picklable records so worker processes never receive the whole COCO index:

- a *proxy image* contains no category that overlaps Cityscapes (:data:`EXCLUDED_CATEGORIES`), is at least
  ``min_size`` in both dimensions, and holds at least one *object*;
- an *object* is a non-crowd polygon annotation with ``area >= min_object_area``.

Masks come from pycocotools' ``COCO.annToMask`` only (never rasterized by hand). :func:`crop_proxy` turns a decoded
proxy image and its masks into one sample of the ``coco`` stream (docs/methods.md §2.4).

Variants seen in real data are accepted where that is sensible: a bare JSON *list* of annotations (HF transformers'
``coco_annotations.txt``: images are found as ``<image_dir>/<id:012d>.{jpg,png}`` and sized from the file header;
categories fall back to the official COCO ids), and missing ``width``/``height``/``area``/``iscrowd`` fields
(read from the image header / computed by pycocotools / taken as 0).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from .errors import CocodagError
from .imageio import decode_image, image_size
from .labels import IGNORE_ID, OOD_ID

EXCLUDED_CATEGORIES = ("person", "bicycle", "car", "motorcycle", "bus", "truck", "traffic light", "stop sign")
# Official COCO category ids of the excluded names: used when a file carries no `categories` (bare list variant).
_OFFICIAL_IDS = {1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 6: "bus", 8: "truck", 10: "traffic light",
                 13: "stop sign"}
_ANN_KEYS = ("id", "image_id", "category_id", "segmentation")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")
PROXY_CROP_TRIES = 10        # random crops tried before a proxy image counts as "no object in any crop"


@dataclass(frozen=True)
class CocoImage:
    """A proxy image: path, size and its annotations (minimal dicts: id, image_id, category_id, segmentation,
    iscrowd) — enough for ``annToMask`` in a worker process."""

    id: int
    path: str
    width: int
    height: int
    anns: tuple = ()


@dataclass(frozen=True)
class CocoObject:
    """One pasteable object: annotation id, index of its image in :attr:`CocoSource.images`, area."""

    ann_id: int
    image: int
    area: float


@dataclass
class CocoSource:
    """The filtered COCO set: proxy images, pasteable objects, filter statistics and an input fingerprint."""

    json_path: str
    image_dir: str
    images: list[CocoImage]
    objects: list[CocoObject]
    stats: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def object_ann(self, obj: CocoObject) -> dict:
        img = self.images[obj.image]
        return next(a for a in img.anns if a["id"] == obj.ann_id)


# ------------------------------------------------------------------------------------------------------- masks
class _MaskCoco(COCO):
    """A pycocotools COCO holding only ``imgs`` (what ``annToRLE`` reads), so ``annToMask`` runs on the small
    per-image records in a worker without rebuilding the whole index (and without COCO.__init__'s prints)."""

    def __init__(self, imgs: dict[int, dict]):  # noqa: D107 - deliberately skips COCO.__init__
        self.imgs = imgs


def ann_to_mask(image: CocoImage, ann: dict) -> np.ndarray:
    """``(H, W)`` uint8 0/1 mask of one annotation, via pycocotools ``COCO.annToMask``."""
    c = _MaskCoco({image.id: {"height": image.height, "width": image.width}})
    return c.annToMask(ann)


def image_masks(image: CocoImage) -> tuple[np.ndarray, np.ndarray]:
    """(object mask, crowd mask) of a proxy image: union of non-crowd annotations, union of crowd ones."""
    obj = np.zeros((image.height, image.width), dtype=np.uint8)
    crowd = np.zeros_like(obj)
    for a in image.anns:
        m = ann_to_mask(image, a)
        np.maximum(crowd if a["iscrowd"] else obj, m, out=crowd if a["iscrowd"] else obj)
    return obj, crowd


def load_image(image: CocoImage) -> np.ndarray:
    """Decode a proxy image (``(H, W, 3)`` uint8 BGR) and check its size against the JSON's width/height."""
    bgr = decode_image(image.path, color=True)
    if bgr.shape[:2] != (image.height, image.width):
        raise CocodagError(f"{image.path}: image is {bgr.shape[1]}x{bgr.shape[0]} but the COCO JSON says "
                           f"{image.width}x{image.height}")
    return bgr


def crop_proxy(image: np.ndarray, object_mask: np.ndarray, crowd_mask: np.ndarray, size: int,
               rng: np.random.Generator, *, background: int = IGNORE_ID, tries: int = PROXY_CROP_TRIES,
               ) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]] | None:
    """One sample of the COCO stream (meta-ood's OOD proxies, docs/methods.md §2.4): a random ``size``×``size``
    crop of a proxy image that keeps some object pixels, labelled ``OOD_ID`` (254) on objects, 255 on crowd regions
    and ``background`` elsewhere (ours: 255; meta-ood: 0 = road).

    Parameters
    ----------
    image : (H, W, C) uint8; object_mask, crowd_mask : (H, W) 0/1 (see :func:`image_masks`).
    rng : draws ``x0`` then ``y0`` per try, up to ``tries`` times, until the crop holds an object pixel.

    Returns
    -------
    (image crop view, label crop, box ``(x0, y0, x1, y1)``), or ``None`` when no try kept an object pixel.
    """
    H, W = object_mask.shape
    if size > W or size > H:
        raise CocodagError(f"--crop {size} is larger than the proxy image ({W}x{H})")
    lab = np.full(object_mask.shape, background, dtype=np.uint8)
    lab[crowd_mask.astype(bool)] = IGNORE_ID   # crowd regions are neither clean objects nor background
    lab[object_mask.astype(bool)] = OOD_ID
    for _ in range(tries):
        x0, y0 = int(rng.integers(0, W - size + 1)), int(rng.integers(0, H - size + 1))
        cl = lab[y0:y0 + size, x0:x0 + size]
        if (cl == OOD_ID).any():
            return image[y0:y0 + size, x0:x0 + size], cl, (x0, y0, x0 + size, y0 + size)
    return None


def _rle_area(ann: dict, h: int, w: int) -> float:
    c = _MaskCoco({ann["image_id"]: {"height": h, "width": w}})
    return float(mask_utils.area(c.annToRLE(ann)))


def _is_polygon(segm: Any) -> bool:
    return (isinstance(segm, list) and len(segm) > 0
            and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(map(_is_number, p))
                    for p in segm))


# ------------------------------------------------------------------------------------------------------- files
def coco_paths(root: Path | str | None, split: str = "train2017", *, json_path: Path | str | None = None,
               image_dir: Path | str | None = None) -> tuple[Path, Path]:
    """Resolve ``ROOT/annotations/instances_<split>.json`` and ``ROOT/<split>/`` (either may be overridden)."""
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise CocodagError(f"--coco {root}: directory does not exist")
    if json_path is None:
        if root is None:
            raise CocodagError("--coco: give a COCO root (or --coco-json and --coco-images)")
        json_path = root / "annotations" / f"instances_{split}.json"
        if not json_path.is_file():
            raise CocodagError(f"--coco {root}: not a COCO root (no annotations/instances_{split}.json; "
                               f"check --coco-split)")
    json_path = Path(json_path)
    if not json_path.is_file():
        raise CocodagError(f"--coco-json {json_path}: file not found")
    if image_dir is None:
        image_dir = (root / split) if root is not None else json_path.parent
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise CocodagError(f"{image_dir}: COCO image folder not found (expected images of {json_path.name} there; "
                           f"check --coco-split or --coco-images)")
    return json_path, image_dir


def _find_image_file(image_dir: Path, image_id: int) -> Path | None:
    for stem in (f"{image_id:012d}", str(image_id)):
        for ext in _IMAGE_EXTS:
            p = image_dir / (stem + ext)
            if p.is_file():
                return p
    return None


def read_coco_json(json_path: Path | str, image_dir: Path | str | None = None) -> tuple[dict, str]:
    """Read and validate a COCO instances file; return (normalized dataset dict, sha256 of the file bytes).

    The normalized dict always has ``images`` (with width/height), ``annotations`` (with iscrowd) and
    ``categories``. Raises :class:`CocodagError` naming the file and the missing key.
    """
    json_path = Path(json_path)
    raw = json_path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CocodagError(f"{json_path}: not valid JSON ({e})") from None
    bare = isinstance(data, list)
    if bare:  # HF-style bare list of annotations
        data = {"annotations": data}
    elif not isinstance(data, dict):
        raise CocodagError(f"{json_path}: expected a COCO object (or a list of annotations), got {type(data).__name__}")
    else:
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise CocodagError(f"{json_path}: missing key {key!r} (not a COCO instances file)")
            if not isinstance(data[key], list):
                raise CocodagError(f"{json_path}: {key!r} must be a list, got {type(data[key]).__name__}")
    anns = _read_annotations(json_path, data["annotations"])
    if bare:
        images = _bare_list_images(anns, Path(image_dir) if image_dir is not None else json_path.parent)
        cats = [{"id": k, "name": v} for k, v in _OFFICIAL_IDS.items()]
    else:
        images = _read_images(json_path, data["images"], image_dir)
        cats = []
        for i, c in enumerate(data["categories"]):
            for key in ("id", "name"):
                if not isinstance(c, dict) or key not in c:
                    raise CocodagError(f"{json_path}: categories[{i}] has no {key!r} key")
            cats.append({"id": _number(json_path, f"categories[{i}]", "id", c["id"]), "name": str(c["name"])})
    return {"images": images, "annotations": anns, "categories": cats, "bare_list": bare}, digest


def _read_annotations(json_path: Path, raw: list) -> list[dict]:
    anns = []
    for i, a in enumerate(raw):
        if not isinstance(a, dict):
            raise CocodagError(f"{json_path}: annotations[{i}] is not an object")
        for key in _ANN_KEYS:
            if key not in a:
                raise CocodagError(f"{json_path}: annotations[{i}] has no {key!r} key"
                                   + (f" (annotation id {a['id']})" if "id" in a else ""))
        where = f"annotations[{i}] (annotation id {a['id']!r})"
        anns.append({"id": _number(json_path, f"annotations[{i}]", "id", a["id"]),
                     "image_id": _number(json_path, where, "image_id", a["image_id"]),
                     "category_id": _number(json_path, where, "category_id", a["category_id"]),
                     "segmentation": a["segmentation"],
                     "iscrowd": _number(json_path, where, "iscrowd", a.get("iscrowd", 0) or 0),
                     **({"area": _number(json_path, where, "area", a["area"], float)} if "area" in a else {})})
    return anns


def _number(json_path: Path, where: str, key: str, value: Any, cast=int) -> int | float:
    """``cast(value)``, or a one-line error naming the file, the record and the key (e.g. ``"area": "big"``)."""
    try:
        if isinstance(value, (list, dict)) or value is None:
            raise TypeError
        return cast(value)
    except (TypeError, ValueError, OverflowError):
        raise CocodagError(f"{json_path}: {where}: {key!r} must be a number, got {value!r}; fix the file") from None


def _bare_list_images(anns: list[dict], image_dir: Path) -> list[dict]:
    """Image records of a bare annotation list: files found by id, sized from their header (-1 when missing)."""
    images = []
    for iid in sorted({a["image_id"] for a in anns}):
        p = _find_image_file(image_dir, iid)
        if p is None:
            images.append({"id": iid, "file_name": f"{iid:012d}.jpg", "width": -1, "height": -1})
        else:
            w, h = image_size(p)
            images.append({"id": iid, "file_name": p.name, "width": w, "height": h})
    return images


def _read_images(json_path: Path, raw: list, image_dir: Path | str | None) -> list[dict]:
    """Validated image records; a missing width/height is read from the file header when the file is there."""
    images = []
    for i, im in enumerate(raw):
        for key in ("id", "file_name"):
            if not isinstance(im, dict) or key not in im:
                raise CocodagError(f"{json_path}: images[{i}] has no {key!r} key")
        w, h = im.get("width"), im.get("height")
        if (w is None or h is None) and image_dir is not None:
            p = Path(image_dir) / im["file_name"]
            w, h = image_size(p) if p.is_file() else (-1, -1)
        where = f"images[{i}] (image id {im['id']!r})"
        images.append({"id": _number(json_path, f"images[{i}]", "id", im["id"]), "file_name": str(im["file_name"]),
                       "width": _number(json_path, where, "width", w if w is not None else -1),
                       "height": _number(json_path, where, "height", h if h is not None else -1)})
    return images


@dataclass
class _Filter:
    """What the proxy filter of :func:`load_coco` needs per image, and what it accumulates."""

    json_path: Path
    image_dir: Path
    min_size: int
    min_object_area: float
    excluded_ids: set
    skip_bad: bool
    stats: dict[str, Any]
    fp: Any = field(default_factory=hashlib.sha256)


def load_coco(json_path: Path | str, image_dir: Path | str, *, min_size: int = 480, min_object_area: float = 0.0,
              exclude: tuple[str, ...] = EXCLUDED_CATEGORIES, skip_bad: bool = False,
              require_objects: bool = True) -> CocoSource:
    """Load, validate and filter a COCO instances file into a :class:`CocoSource` (docs/methods.md §2.1).

    Parameters
    ----------
    min_size : proxy images must be at least ``min_size`` wide *and* high (meta-ood: 480 = crop size).
    min_object_area : pasteable objects are non-crowd polygons with ``area >= min_object_area``.
    exclude : category names whose images are dropped entirely.
    skip_bad : a proxy image whose file is missing, or an annotation of a proxy image that cannot give a mask
        (a degenerate polygon: ``[]``, ``[[]]``, fewer than 3 points; a polygon outside the image; a malformed RLE),
        is skipped and listed in ``stats["skipped"]`` instead of failing.
    require_objects : raise when no object survives the filter ("no usable object left").
    """
    json_path, image_dir = Path(json_path), Path(image_dir)
    data, digest = read_coco_json(json_path, image_dir)
    coco = _index(json_path, data)
    names = {c["id"]: c["name"] for c in data["categories"]}
    stats = {"images": len(data["images"]), "annotations": len(data["annotations"]), "excluded_category": 0,
             "too_small": 0, "no_object": 0, "orphan_annotations": 0, "missing_file": 0, "bad_annotations": 0,
             "proxies": 0, "objects": 0, "skipped": [], "excluded": list(exclude), "bare_list": data["bare_list"]}
    stats["orphan_annotations"] = sum(1 for a in data["annotations"] if a["image_id"] not in coco.imgs)
    flt = _Filter(json_path, image_dir, min_size, min_object_area,
                  {cid for cid, n in names.items() if n in set(exclude)}, skip_bad, stats)
    images: list[CocoImage] = []
    objects: list[CocoObject] = []
    for iid in sorted(coco.imgs):
        kept = _proxy_image(flt, iid, coco.imgs[iid], coco.imgToAnns.get(iid, []))
        if kept is not None:
            images.append(kept[0])
            objects.extend(CocoObject(aid, len(images) - 1, area) for aid, area in kept[1])
    stats["proxies"], stats["objects"] = len(images), len(objects)
    if require_objects and not objects:
        missing = f", {stats['missing_file']:d} image files missing" if stats["missing_file"] else ""
        bad = f", {stats['bad_annotations']:d} bad annotations skipped" if stats["bad_annotations"] else ""
        raise CocodagError(
            f"{json_path}: no usable object left after filtering ({stats['images']} images: "
            f"{stats['excluded_category']} contain {'/'.join(exclude)}, {stats['too_small']} smaller than "
            f"{min_size}x{min_size}, {stats['no_object']} without a non-crowd polygon of area >= {min_object_area:g}"
            f"{missing}{bad})")
    fingerprint = {"json": str(json_path), "json_sha256": digest, "proxy_images": len(images),
                   "proxy_files_hash": flt.fp.hexdigest()[:16]}
    return CocoSource(str(json_path), str(image_dir), images, objects, stats, fingerprint)


def _proxy_image(flt: _Filter, iid: int, im: dict, anns: list[dict]
                 ) -> tuple[CocoImage, list[tuple[int, float]]] | None:
    """The proxy record of one image and its pasteable objects, or None when the filter drops it (counted)."""
    stats = flt.stats
    if any(a["category_id"] in flt.excluded_ids for a in anns):
        stats["excluded_category"] += 1
        return None
    w, h = im["width"], im["height"]
    # Size unknown (-1) only when the JSON lacks it and the file is missing: reported at the file check below.
    if w >= 0 and h >= 0 and (w < flt.min_size or h < flt.min_size):
        stats["too_small"] += 1
        return None
    objs = _pasteable(anns, w, h, flt.min_object_area)
    if not objs:
        stats["no_object"] += 1
        return None
    path = flt.image_dir / im["file_name"]
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        if not flt.skip_bad:
            raise CocodagError(f"{path}: COCO image listed in {flt.json_path.name} (id {iid}) not found "
                               f"(use --skip-bad to skip it)") from None
        stats["missing_file"] += 1
        stats["skipped"].append({"file": str(path), "reason": "missing"})
        return None
    minimal, bad = _mask_annotations(anns, {aid for aid, _ in objs}, w, h)
    for aid, why in bad:
        if not flt.skip_bad:
            raise CocodagError(f"{flt.json_path}: annotation {aid} (image {iid}): {why}; fix or remove it, or use "
                               f"--skip-bad to skip it")
        stats["bad_annotations"] += 1
        stats["skipped"].append({"file": str(flt.json_path), "reason": f"annotation {aid} (image {iid}): {why}"})
    objs = [(aid, area) for aid, area in objs if aid not in {b for b, _ in bad}]
    if not objs:
        stats["no_object"] += 1
        return None
    # names + sizes only (no mtimes): a copy of COCO on another node (Slurm scratch) fingerprints the same
    flt.fp.update(f"{im['file_name']}\0{st.st_size}\n".encode())
    return CocoImage(int(iid), str(path), int(w), int(h), minimal), [(int(aid), area) for aid, area in objs]


def _mask_annotations(anns: list[dict], objects: set[int], w: int, h: int) -> tuple[tuple, list[tuple[int, str]]]:
    """The minimal annotation records of a proxy image (what :func:`image_masks` rasterizes) and the bad ones as
    (annotation id, why): a segmentation pycocotools cannot rasterize, or an object polygon outside the image."""
    minimal, bad = [], []
    for a in anns:
        segm, why = _mask_segmentation(a["segmentation"], w, h)
        if why is None and a["id"] in objects and _polygon_outside(segm, w, h):
            why = f"its polygon lies outside the {w}x{h} image (the object mask would be empty)"
        if why is not None:
            bad.append((a["id"], why))
            continue
        minimal.append({"id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"],
                        "segmentation": segm, "iscrowd": a["iscrowd"]})
    return tuple(minimal), bad


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _mask_segmentation(segm: Any, w: int, h: int) -> tuple[Any, str | None]:
    """``(segmentation to rasterize, None)``, or ``(None, why)`` when pycocotools cannot give a mask.

    Polygon parts with fewer than 3 points are dropped: they cover no pixel (pycocotools gives the same mask
    without them), but make it fail when the first part is one (``[[x0, y0, x1, y1]]`` is read as a box, ``[[]]``
    and ``[]`` raise). An annotation left with no polygon of 3 points or more is bad.
    """
    if isinstance(segm, dict):
        size = segm.get("size")
        if not isinstance(segm.get("counts"), (list, str)) or not isinstance(size, list):
            return None, "RLE segmentation without 'counts' and 'size'"
        if size != [h, w]:
            return None, f"RLE size {size} differs from the image size [{h}, {w}] (height, width)"
        return segm, None
    if not isinstance(segm, list):
        return None, f"segmentation is a {type(segm).__name__}, expected a list of polygons or an RLE object"
    if not all(isinstance(p, list) and all(_is_number(v) for v in p) for p in segm):
        return None, "polygon with non-numeric coordinates"
    parts = [p for p in segm if len(p) >= 6]
    if not parts:
        shown = json.dumps(segm)
        return None, f"degenerate polygon {shown if len(shown) <= 40 else shown[:37] + '...'} (fewer than 3 points)"
    return (segm if len(parts) == len(segm) else parts), None


def _polygon_outside(segm: Any, w: int, h: int) -> bool:
    """True when every vertex of a polygon segmentation lies on one side outside the ``w`` x ``h`` image."""
    if not isinstance(segm, list) or w < 0 or h < 0:
        return False
    xy = np.concatenate([np.asarray(p[:len(p) // 2 * 2], np.float64).reshape(-1, 2) for p in segm])
    return bool(xy[:, 0].max() <= 0 or xy[:, 0].min() >= w or xy[:, 1].max() <= 0 or xy[:, 1].min() >= h)


def _index(json_path: Path, data: dict) -> COCO:
    """pycocotools' own index (``createIndex``): annotations grouped per image, category names resolved."""
    coco = COCO()
    coco.dataset = {"images": data["images"], "annotations": data["annotations"], "categories": data["categories"]}
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
        try:
            coco.createIndex()
        except KeyError as e:
            raise CocodagError(f"{json_path}: inconsistent file, missing key {e}") from None
    return coco


def _pasteable(anns: list[dict], w: int, h: int, min_object_area: float) -> list[tuple[int, float]]:
    """(annotation id, area) of the non-crowd polygons with ``area >= min_object_area`` (area computed by
    pycocotools when the file lacks it)."""
    objs = []
    for a in anns:
        if a["iscrowd"] or not _is_polygon(a["segmentation"]):
            continue
        area = a.get("area")
        if area is None:
            area = _rle_area(a, h, w) if h > 0 else 0.0
        if area >= min_object_area:
            objs.append((a["id"], float(area)))
    return objs
