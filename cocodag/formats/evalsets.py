"""Anomaly evaluation-set presets: each set's own files -> one documented 0/1/255 layout (docs/methods.md §1.3).

Every preset knows where a set keeps its images and ground truth and how to map its label values to
**0 = in-distribution, 1 = anomaly, 255 = void**. ``convert`` writes the documented layout (docs/formats.md §2)::

    DST/images/<name>.<png|jpg>   RGB, copied byte for byte (other formats are re-encoded as PNG)
    DST/labels/<name>.png         uint8 0/1/255
    DST/roi/<name>.png            uint8 1 = inside the evaluated region (road presets only)
    DST/meta.json                 written last

>>> sorted(PRESETS)[:3]
['cityscapes', 'demo', 'fishyscapes-laf']
>>> get_preset("lostandfound").region
'road'
"""
from __future__ import annotations

import difflib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..atomic import atomic_write, atomic_write_bytes, atomic_write_json
from ..errors import CocodagError
from ..imageio import decode_image, image_size, read_label
from ..labels import IGNORE_ID, LABEL_ID_TO_TRAIN_ID
from ..lock import OutputLock
from ..outputs import disk_errors, prepare_output
from ..progress import progress_bar
from .logits import invalid_label_values, label_values_message

EVALSET_FORMAT = "cocodag-evalset"
EVALSET_VERSION = 1
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
_COPY_EXTS = (".png", ".jpg")          # written unchanged; anything else is re-encoded as PNG
_MAX_LISTED = 5                        # file names shown in an error message before "..."


@dataclass(frozen=True)
class EvalItem:
    """One evaluation frame: its name (the key that ties labels, logits and score maps together) and its files."""

    name: str
    image_path: Path
    label_path: Path | None
    roi_path: Path | None = None


def _listing(paths: Iterable, root: Path | None = None) -> str:
    items = [str(Path(p).relative_to(root)) if root is not None else str(p) for p in paths]
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def _images_in(folder: Path, suffix: str = "") -> dict[str, Path]:
    """``{name: path}`` of the image files ``<name><suffix><ext>`` in one folder (sorted, first extension wins)."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_EXTS and p.is_file() and p.stem.endswith(suffix):
            name = p.stem[: len(p.stem) - len(suffix)] if suffix else p.stem
            if name in out:
                raise CocodagError(f"{folder}: frame {name!r} has several image files "
                                   f"({out[name].name}, {p.name}); keep one")
            out[name] = p
    return out


def _pair(preset: str, root: Path, images: dict[str, Path], labels: dict[str, Path]) -> list[EvalItem]:
    """Match images and labels by name; any unmatched file is an error naming them with a count."""
    if not images:
        raise CocodagError(f"{preset}: no images found under {root}; expected the layout: "
                           f"{PRESETS[preset].layout}")
    no_label = sorted(set(images) - set(labels))
    no_image = sorted(set(labels) - set(images))
    if no_label:
        raise CocodagError(f"{preset}: {len(no_label)} of {len(images)} image(s) under {root} have no label file: "
                           f"{_listing((images[n] for n in no_label), root)}")
    if no_image:
        raise CocodagError(f"{preset}: {len(no_image)} label file(s) under {root} have no image: "
                           f"{_listing((labels[n] for n in no_image), root)}")
    return [EvalItem(n, images[n], labels[n]) for n in sorted(images)]


def _require_dir(preset: str, path: Path, layout: str) -> Path:
    if not path.is_dir():
        raise CocodagError(f"{preset}: folder {path} not found; expected the layout: {layout}")
    return path


# ------------------------------------------------------------------------------------------------- label mappings
def _lut(pairs: dict[int, int], default: int = IGNORE_ID) -> np.ndarray:
    lut = np.full(256, default, dtype=np.uint8)
    for k, v in pairs.items():
        lut[k] = v
    return lut


_LUT_IDENTITY_01 = _lut({0: 0, 1: 1})                            # 0/1 kept, anything else void
_LUT_ROAD_ANOMALY = _lut({0: 0, 2: 1})                           # RoadAnomaly: 0 background, 2 anomaly
# LostAndFound gtCoarse labelIds: 0 void, 1 road, 2..200 obstacle (SMIYC's LostAndFound classes)
_LUT_LAF = _lut({1: 0, **{v: 1 for v in range(2, 201)}})
_LUT_CITYSCAPES = np.where(LABEL_ID_TO_TRAIN_ID != IGNORE_ID, 0, IGNORE_ID).astype(np.uint8)


def _map_uint8(label: np.ndarray, lut: np.ndarray, path: Path) -> np.ndarray:
    if label.dtype != np.uint8:
        if label.min(initial=0) < 0 or label.max(initial=0) > 255:
            raise CocodagError(f"{path}: label values {label.min()}..{label.max()} outside 0..255")
        label = label.astype(np.uint8)
    return lut[label]


# ------------------------------------------------------------------------------------------------------ presets
@dataclass(frozen=True)
class Preset:
    """An evaluation set's file layout and label convention.

    Attributes
    ----------
    name : str
        Registry key (``PRESETS[name]``), also the ``PRESET`` of ``--dataset PRESET:ROOT``.
    description : str
        One line: the set, its source label values and how they map to 0/1/255.
    region : {"all", "road"}
        Where metrics are computed: the whole image, or the road only (``roi`` = 1 on the road).
    layout : str
        The expected source layout (shown in errors and ``oodscore datasets list``).
    """

    name: str
    description: str
    region: str
    layout: str
    _find: Callable[[Path], list[EvalItem]]
    _lut: np.ndarray | None = None
    _roi_from_source: Callable[[np.ndarray], np.ndarray] | None = None

    def find(self, root: Path | str) -> list[EvalItem]:
        """All frames under ``root``, sorted by name.

        Raises
        ------
        CocodagError
            When the layout is absent or an image lacks its label (or the reverse); the message names the
            files and how many there are.
        """
        root = Path(root)
        if not root.is_dir():
            raise CocodagError(f"{self.name}: dataset root {root} is not a directory")
        return self._find(root)

    def load_label(self, path: Path | str) -> np.ndarray:
        """Read one ground-truth file and map it to uint8 (H, W): 0 = ID, 1 = anomaly, 255 = void.

        Raises
        ------
        CocodagError
            The file cannot be read, or (``standard`` layout) it holds values other than 0/1/255: the message names
            the file and the values.
        """
        path = Path(path)
        raw = read_label(path)
        if self._lut is None:       # the documented layout: values must already be 0/1/255
            bad = invalid_label_values(raw)
            if bad:
                raise CocodagError(f"{path}: {label_values_message(raw, bad)}; preset {self.name} expects the "
                                   "converted layout: fix the file, or convert the source set with `oodscore "
                                   "datasets convert PRESET SRC DST`")
            return raw.astype(np.uint8, copy=False)
        label = _map_uint8(raw, self._lut, path)
        bad = invalid_label_values(label)
        if bad:                     # a LUT maps to 0/1/255 only: anything else is a bug of the preset
            raise CocodagError(f"{path}: preset {self.name} mapped the labels to values {bad} outside 0/1/255 "
                               "(a bug of the preset's table; please report it)")
        return label

    def region_of(self, root: Path | str) -> str:
        """The evaluated region of the set at ``root`` (a converted set records its own in ``meta.json``)."""
        return standard_region(root) if self._find is _find_standard else self.region

    def load_roi(self, item: EvalItem) -> np.ndarray | None:
        """uint8 (H, W) region mask, 1 = evaluated (road); ``None`` for whole-image presets without a roi file."""
        if item.roi_path is not None:
            roi = read_label(Path(item.roi_path))
            return (roi != 0).astype(np.uint8)
        if self._roi_from_source is not None and item.label_path is not None:
            return self._roi_from_source(read_label(Path(item.label_path))).astype(np.uint8)
        return None


def _read_meta(meta_path: Path) -> dict:
    """A converted set's ``meta.json`` as a dict; a truncated or malformed file is one line naming it."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CocodagError(f"{meta_path}: not a readable JSON file ({e}); convert the set again "
                           "(`oodscore datasets convert`) or remove the file") from None
    if not isinstance(meta, dict):
        raise CocodagError(f"{meta_path}: expected a JSON object, found {type(meta).__name__}; convert the set again")
    return meta


def _find_standard(root: Path) -> list[EvalItem]:
    layout = PRESETS["standard"].layout
    meta_path = root / "meta.json"
    if meta_path.is_file():
        meta = _read_meta(meta_path)
        if meta.get("format") != EVALSET_FORMAT:
            raise CocodagError(f"{meta_path}: format {meta.get('format')!r}, expected {EVALSET_FORMAT!r}")
        if meta.get("version") != EVALSET_VERSION:
            raise CocodagError(f"{meta_path}: version {meta.get('version')!r}, expected {EVALSET_VERSION}")
    images = _images_in(_require_dir("standard", root / "images", layout))
    labels = {p.stem: p for p in sorted((root / "labels").glob("*.png"))}
    items = _pair("standard", root, images, labels)
    roi_dir = root / "roi"
    if roi_dir.is_dir():
        rois = {p.stem: p for p in sorted(roi_dir.glob("*.png"))}
        missing = [it.name for it in items if it.name not in rois]
        if missing:
            raise CocodagError(f"standard: {len(missing)} of {len(items)} frame(s) under {root} have no roi/<name>.png "
                               f"although roi/ exists: {_listing(missing)}")
        items = [EvalItem(it.name, it.image_path, it.label_path, rois[it.name]) for it in items]
    return items


def standard_region(root: Path | str) -> str:
    """The region recorded in a converted set's ``meta.json`` (``"all"`` when absent)."""
    meta_path = Path(root) / "meta.json"
    if meta_path.is_file():
        region = _read_meta(meta_path).get("region", "all")
        if region not in ("all", "road"):
            raise CocodagError(f"{meta_path}: region {region!r}, expected 'all' or 'road'")
        return region
    return "all"


def _find_road_anomaly(root: Path) -> list[EvalItem]:
    frames = _require_dir("road-anomaly", root / "frames", PRESETS["road-anomaly"].layout)
    images = _images_in(frames)
    labels = {p.name[: -len(".labels")]: p / "labels_semantic.png"
              for p in sorted(frames.glob("*.labels")) if (p / "labels_semantic.png").is_file()}
    no_sem = [p for p in sorted(frames.glob("*.labels")) if not (p / "labels_semantic.png").is_file()]
    if no_sem:
        raise CocodagError(f"road-anomaly: {len(no_sem)} label folder(s) lack labels_semantic.png: "
                           f"{_listing(no_sem, root)}")
    return _pair("road-anomaly", root, images, labels)


def _find_city_tree(preset: str, root: Path, split: str, gt_folder: str, label_suffix: str) -> list[EvalItem]:
    """Cityscapes-style trees: ``leftImg8bit/<split>/<city>/*_leftImg8bit.*`` +
    ``<gt_folder>/<split>/<city>/*<suffix>``."""
    layout = PRESETS[preset].layout
    img_root = _require_dir(preset, root / "leftImg8bit" / split, layout)
    gt_root = _require_dir(preset, root / gt_folder / split, layout)
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    for city in sorted(p for p in img_root.iterdir() if p.is_dir()):
        images.update(_images_in(city, "_leftImg8bit"))
    for city in sorted(p for p in gt_root.iterdir() if p.is_dir()):
        labels.update({p.name[: -len(label_suffix)]: p for p in sorted(city.glob("*" + label_suffix))})
    return _pair(preset, root, images, labels)


def _find_lostandfound(root: Path, split: str = "test") -> list[EvalItem]:
    return _find_city_tree("lostandfound", root, split, "gtCoarse", "_gtCoarse_labelIds.png")


def _find_fishyscapes(preset: str, split: str) -> Callable[[Path], list[EvalItem]]:
    def find(root: Path) -> list[EvalItem]:
        # The Fishyscapes files as the community loaders keep them (meta-ood, PEBAL, RPL):
        # ROOT/<split>/original/<name>.png + ROOT/<split>/labels/<name>.png; ROOT may also be the split folder.
        base = root / split if (root / split).is_dir() else root
        img_dir = _require_dir(preset, base / "original", PRESETS[preset].layout)
        lbl_dir = _require_dir(preset, base / "labels", PRESETS[preset].layout)
        images = _images_in(img_dir)
        labels = {p.stem: p for p in sorted(lbl_dir.glob("*.png"))}
        return _pair(preset, base, images, labels)
    return find


def _find_smiyc(preset: str) -> Callable[[Path], list[EvalItem]]:
    def find(root: Path) -> list[EvalItem]:
        images = _images_in(_require_dir(preset, root / "images", PRESETS[preset].layout))
        lbl_dir = _require_dir(preset, root / "labels_masks", PRESETS[preset].layout)
        labels = {p.name[: -len("_labels_semantic.png")]: p for p in sorted(lbl_dir.glob("*_labels_semantic.png"))}
        return _pair(preset, root, images, labels)
    return find


def _find_cityscapes(root: Path, split: str = "val") -> list[EvalItem]:
    return _find_city_tree("cityscapes", root, split, "gtFine", "_gtFine_labelIds.png")


def _roi_laf(raw: np.ndarray) -> np.ndarray:
    # the drivable space: labelled road (1) or obstacle on it (2..200); 0 is everything else
    return (raw >= 1) & (raw <= 200)


def _roi_smiyc_obstacle(raw: np.ndarray) -> np.ndarray:
    return raw != IGNORE_ID          # RoadObstacle21 marks everything off the road as 255


_STD_LAYOUT = "ROOT/images/<name>.<png|jpg>, ROOT/labels/<name>.png (0/1/255), optional ROOT/roi/<name>.png, meta.json"
PRESETS: dict[str, Preset] = {}


def _register(*presets: Preset) -> None:
    for p in presets:
        PRESETS[p.name] = p


_register(
    Preset("standard", "the documented layout itself (labels already 0 = ID, 1 = anomaly, 255 = void)", "all",
           _STD_LAYOUT, _find_standard),
    Preset("demo", "the demo world's anomaly set (cocodag demo-data OUT/anomaly), written in the standard layout",
           "all", _STD_LAYOUT, _find_standard),
    Preset("road-anomaly", "RoadAnomaly (Lis et al. 2019): labels_semantic 0 -> 0, 2 -> 1, other values void", "all",
           "ROOT/frames/<name>.<jpg|webp|png> + ROOT/frames/<name>.labels/labels_semantic.png",
           _find_road_anomaly, _LUT_ROAD_ANOMALY),
    Preset("lostandfound", "LostAndFound test, gtCoarse labelIds: 0 -> void, 1 (road) -> 0, 2..200 (obstacle) -> 1; "
           "evaluated on the road (SMIYC obstacle convention)", "road",
           "ROOT/leftImg8bit/test/<city>/<name>_leftImg8bit.<png|jpg> + "
           "ROOT/gtCoarse/test/<city>/<name>_gtCoarse_labelIds.png",
           _find_lostandfound, _LUT_LAF, _roi_laf),
    Preset("fishyscapes-laf", "Fishyscapes Lost&Found: 0 -> 0, 1 -> 1, everything else void", "all",
           "ROOT[/LostAndFound]/original/<name>.png + ROOT[/LostAndFound]/labels/<name>.png",
           _find_fishyscapes("fishyscapes-laf", "LostAndFound"), _LUT_IDENTITY_01),
    Preset("fishyscapes-static", "Fishyscapes Static: 0 -> 0, 1 -> 1, everything else void", "all",
           "ROOT[/Static]/original/<name>.png + ROOT[/Static]/labels/<name>.png",
           _find_fishyscapes("fishyscapes-static", "Static"), _LUT_IDENTITY_01),
    Preset("smiyc-anomaly", "SegmentMeIfYouCan RoadAnomaly21 validation: labels_masks 0/1/255 as is", "all",
           "ROOT/images/<name>.<jpg|webp> + ROOT/labels_masks/<name>_labels_semantic.png",
           _find_smiyc("smiyc-anomaly"), _LUT_IDENTITY_01),
    Preset("smiyc-obstacle", "SegmentMeIfYouCan RoadObstacle21 validation: labels_masks 0 (road) / 1 (obstacle) / "
           "255; evaluated on the road", "road",
           "ROOT/images/<name>.<webp|jpg> + ROOT/labels_masks/<name>_labels_semantic.png",
           _find_smiyc("smiyc-obstacle"), _LUT_IDENTITY_01, _roi_smiyc_obstacle),
    Preset("cityscapes", "Cityscapes val (no anomalies): every pixel with a trainId -> 0, trainId 255 -> void", "all",
           "ROOT/leftImg8bit/val/<city>/<name>_leftImg8bit.png + ROOT/gtFine/val/<city>/<name>_gtFine_labelIds.png",
           _find_cityscapes, _LUT_CITYSCAPES),
)


def get_preset(name: str) -> Preset:
    """Look a preset up by name; an unknown name lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CocodagError(f"unknown evaluation-set preset {name!r}{hint}; known: {', '.join(PRESETS)}") from None


def parse_dataset_spec(spec: str) -> tuple[Preset, Path]:
    """``"PRESET:ROOT"`` -> (preset, root). A bare path means the standard layout."""
    name, sep, root = spec.partition(":")
    if not sep or (len(name) == 1 and os.name == "nt"):      # "C:\\..." on Windows is a path, not a preset
        return PRESETS["standard"], Path(spec)
    if not root:
        raise CocodagError(f"--dataset {spec!r}: expected PRESET:ROOT, e.g. road-anomaly:/data/RoadAnomaly")
    return get_preset(name), Path(root)


# ------------------------------------------------------------------------------------------------------ convert
def _write_png(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise CocodagError(f"{path}: PNG encoding failed")
    atomic_write_bytes(path, buf.tobytes())


def _copy_image(src: Path, dst_dir: Path, name: str) -> Path:
    ext = src.suffix.lower()
    if ext in _COPY_EXTS:
        dst = dst_dir / f"{name}{ext}"
        if not dst.exists():
            with atomic_write(dst) as tmp:
                shutil.copyfile(src, tmp)
        return dst
    dst = dst_dir / f"{name}.png"
    if not dst.exists():
        # BGR on both sides (cv2 decode and encode): the PNG holds the source's RGB pixels. No EXIF rotation, like
        # the label masks and the header size checked against them.
        _write_png(dst, decode_image(src, color=True))
    return dst


def convert(preset: Preset | str, src: Path | str, dst: Path | str, *, progress: bool = True) -> dict:
    """Convert an evaluation set from its own layout to the documented 0/1/255 layout.

    Parameters
    ----------
    preset : Preset or str
        Source preset (``PRESETS`` key).
    src, dst : path
        Source root and output folder. ``dst/meta.json`` is written last; outputs already present are kept
        (a killed conversion resumes), and a ``dst`` converted from another preset is refused.

    Returns
    -------
    dict
        The meta written to ``dst/meta.json``.

    Raises
    ------
    CocodagError
        Missing or unmatched files (named, with a count), unreadable labels or values outside the preset's
        convention, image/label size mismatches, an unusable ``dst`` (a file, read-only), another job converting
        into ``dst`` (it holds :class:`~cocodag.lock.OutputLock` of ``dst``), a full disk.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    src, dst = Path(src), Path(dst)
    items = preset.find(src)
    if src.resolve() == dst.resolve():
        raise CocodagError(f"convert: destination {dst} is the source folder; choose another DST")
    prepare_output(dst, kind="dir", option="DST")
    with OutputLock(dst, option="DST"), disk_errors(dst, option="DST"):
        meta_path = dst / "meta.json"
        if meta_path.is_file():
            old = _read_meta(meta_path)
            if old.get("preset") != preset.name:
                raise CocodagError(f"{meta_path}: {dst} was converted from preset {old.get('preset')!r}, "
                                   f"not {preset.name!r}; use an empty DST")
            meta_path.unlink()          # rewritten below, after every frame is in place
        counts = _convert_frames(preset, items, dst, progress)
        region = preset.region_of(src)
        meta = {"format": EVALSET_FORMAT, "version": EVALSET_VERSION, "preset": preset.name, "region": region,
                "names": [it.name for it in items], "label_convention": "0/1/255",
                "pixels": {"id": int(counts[0]), "anomaly": int(counts[1]), "void": int(counts[2])}}
        atomic_write_json(meta_path, meta, sort_keys=False)
    return meta


def _convert_frames(preset: Preset, items: list[EvalItem], dst: Path, progress: bool) -> np.ndarray:
    """Write every frame's image, label and roi under ``dst``; returns the ID / anomaly / void pixel counts."""
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "labels").mkdir(exist_ok=True)
    if preset.region == "road" or any(it.roi_path for it in items):
        (dst / "roi").mkdir(exist_ok=True)
    mismatched = []
    counts = np.zeros(3, dtype=np.int64)        # ID, anomaly, void pixels
    for it in progress_bar(items, desc=f"convert {preset.name}", unit="frame", disable=not progress):
        label = preset.load_label(it.label_path)
        w, h = image_size(it.image_path)
        if label.shape != (h, w):
            mismatched.append(f"{it.name} (image {h}x{w}, label {label.shape[0]}x{label.shape[1]})")
            continue
        _copy_image(it.image_path, dst / "images", it.name)
        _write_png(dst / "labels" / f"{it.name}.png", label)
        roi = preset.load_roi(it)
        if roi is not None:
            _write_png(dst / "roi" / f"{it.name}.png", roi)
        counts += [(label == 0).sum(), (label == 1).sum(), (label == IGNORE_ID).sum()]
    if mismatched:
        raise CocodagError(f"{preset.name}: {len(mismatched)} frame(s) whose image and label sizes differ: "
                           f"{_listing(mismatched)} (sizes as height x width)")
    return counts
