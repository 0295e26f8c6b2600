"""The ``logits.h5`` contract (docs/formats.md §3): its one writer and its one reader.

``maxent-train export`` writes through :class:`LogitsWriter`; ``oodscore`` reads through :class:`LogitsFile`,
which validates the file once, when it is opened (format attr, version, shapes, dtypes); after that frames are
read one at a time, so a file larger than RAM is fine::

    with LogitsWriter("test.h5", num_classes=19, attrs={"model": "tiny_segnet"}) as w:
        w.write(logits, label, "frame-0", roi=roi, mc={"mean": ..., "central": ..., "entropy": ...})

    with LogitsFile("test.h5") as f:
        for fr in f.iter_frames():             # Frame(image_id, logits (C,H,W) float32, label, roi, image)
            ...

Version 2 files may store the logits (and the MC block) at the network's own output resolution
(``logits_resolution="native"``, (h, w) smaller than the label's (H, W)) with the rule that brings them to the label
size (``upsample_mode``, ``upsample_align_corners``); the reader applies that rule one frame at a time, so
:meth:`LogitsFile.frame` / :meth:`LogitsFile.logits` always return label-size float32 logits, whatever the layout
(``native=True`` gives the stored ones). Version 1 files (label resolution) still read.

A network with an abstention channel (PEBAL, Balanced Energy: C classes + 1, that channel last) is stored whole, with
the ``abstention_channel`` attribute (= C; version 3). It is no class: :attr:`LogitsFile.num_classes` is C, and every
class-based consumer (scores, SML statistics, segmentation) takes :func:`class_logits` / :func:`class_mc` of a frame.

:func:`upsample` is the one rule for bringing logits to the label size (bilinear; ``align_corners`` as the network
that computed them: ``False`` unless a file or model records otherwise); :func:`upsample_frame` applies it to one
stored frame on the CPU (what the reader returns, and what export feeds its SML statistics).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..atomic import atomic_write
from ..errors import CocodagError
from ..outputs import disk_errors
from ._write_guard import WriteGuard
from .choices import (  # the writer's choices, defined without h5py (re-exported here)
    GZIP_LEVEL1,
    LOGITS_DTYPES,
    LZF_REFUSED,
    RESOLUTIONS,
    UPSAMPLE_MODES,
)

LOGITS_FORMAT = "cocodag-logits"
LOGITS_VERSION = 2
#: the version of a file whose last channel is an abstention channel (a version-2 reader would score it as a class)
ABSTENTION_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)   # 1: logits at label resolution, no layout attributes; 3: 2 + abstention_channel
#: the rule of version-1 files and of models that record none
DEFAULT_RULE = {"mode": "bilinear", "align_corners": False}
MC_KEYS = ("mean", "central", "entropy")
_FLOAT_DTYPES = (np.float16, np.float32)
_MAX_LISTED = 5
LABEL_VALUES = (0, 1, 255)      # 0 = in-distribution, 1 = anomaly / OOD, 255 = void
_LABEL_OK = np.zeros(256, dtype=bool)
_LABEL_OK[list(LABEL_VALUES)] = True


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def invalid_label_values(label: np.ndarray) -> list[int]:
    """The values of ``label`` outside 0/1/255, sorted (empty when the label is valid).

    Cheap on the uint8 labels of the formats (a 256-bin count); other integer dtypes go through ``np.unique``.
    """
    label = np.asarray(label)
    if label.dtype == np.uint8:
        counts = np.bincount(label.ravel(), minlength=256)
        return np.flatnonzero((counts > 0) & ~_LABEL_OK).tolist()
    return np.setdiff1d(np.unique(label), LABEL_VALUES).tolist()


def label_values_message(label: np.ndarray, bad: Sequence[int]) -> str:
    """``"label values [7] not in 0/1/255 (12 pixels; 0 = ID, 1 = anomaly, 255 = void)"`` for an error line."""
    n = int(np.isin(label, bad).sum())
    shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
    return (f"label values [{shown}] not in 0/1/255 ({n} pixel{'s' if n != 1 else ''}; "
            "0 = in-distribution, 1 = anomaly, 255 = void)")


def _plain(v):
    """An HDF5 attribute as a plain Python value (bytes -> str, numpy scalar -> int/float/bool, array -> tuple)."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return tuple(v.tolist())
    return v.item() if hasattr(v, "item") else v


@dataclass
class Frame:
    """One frame of a ``logits.h5`` file.

    Attributes
    ----------
    image_id : str
    logits : (C, H, W) float32 at the label size (``frame(i, native=True)``: as stored, (C, h, w))
    label : (H, W) uint8, 0 = ID, 1 = anomaly, 255 = void
    roi : (H, W) uint8 or None, 1 = inside the evaluated region
    image : (h, w, 3) uint8 RGB or None (downsized, for overlays)
    """

    image_id: str
    logits: np.ndarray
    label: np.ndarray
    roi: np.ndarray | None = None
    image: np.ndarray | None = None


class LogitsFile:
    """Validated, read-only access to a ``logits.h5`` file (docs/formats.md §3).

    Parameters
    ----------
    path : path
        The file. It is checked at once: ``format``/``version`` attrs (versions 1 to 3), the layout attributes
        (``logits_resolution``, ``label_shape``, the upsampling rule), dataset shapes (``logits`` (N,C,h,w),
        ``label`` (N,H,W), ``image_id`` (N,), optional ``roi`` (N,H,W), ``image``, ``mc/*`` at (h, w)) and dtypes.

    Raises
    ------
    CocodagError
        One line naming the file, the dataset or attribute, what was expected and what was found.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if self.path.is_dir():
            raise CocodagError(f"{self.path}: is a folder, expected a logits.h5 file (written by maxent-train export)")
        if not self.path.is_file():
            raise CocodagError(f"{self.path}: logits file not found")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise CocodagError(f"{self.path}: not a readable HDF5 file ({str(e).splitlines()[0]})") from None
        try:
            self._validate()
        except BaseException:
            self._f.close()
            raise

    # ------------------------------------------------------------------------------------------- validation
    def _err(self, msg: str) -> CocodagError:
        return CocodagError(f"{self.path}: {msg}")

    def _optional_dataset(self, name: str, ndim: int, dtypes: tuple) -> h5py.Dataset | None:
        """Dataset ``name`` checked (kind, rank, dtype), or None when the file has none."""
        return self._dataset(name, ndim, dtypes) if name in self._f else None

    def _dataset(self, name: str, ndim: int, dtypes: tuple) -> h5py.Dataset:
        """Dataset ``name``, which the file must hold, checked (kind, rank, dtype)."""
        if name not in self._f:
            raise self._err(f"missing dataset '{name}' (is this a {LOGITS_FORMAT} file?)")
        ds = self._f[name]
        if not isinstance(ds, h5py.Dataset):
            raise self._err(f"'{name}' is a group, expected a dataset")
        if ds.ndim != ndim:
            raise self._err(f"dataset '{name}' has shape {ds.shape}, expected {ndim} dimensions")
        if dtypes and ds.dtype.type not in dtypes:
            raise self._err(f"dataset '{name}' has dtype {ds.dtype}, expected "
                            f"{' or '.join(np.dtype(d).name for d in dtypes)}")
        return ds

    def _attr(self, name: str):
        return _plain(self._f.attrs.get(name))

    def _check_header(self) -> int:
        fmt = self._attr("format")
        if fmt != LOGITS_FORMAT:
            raise self._err(f"format attribute is {fmt!r}, expected {LOGITS_FORMAT!r}")
        version = self._attr("version")
        if not isinstance(version, (int, np.integer)) or int(version) not in READABLE_VERSIONS:
            raise self._err(f"format version {version!r} is not supported (expected one of "
                            f"{', '.join(map(str, READABLE_VERSIONS))})")
        return int(version)

    def _read_layout(self, version: int, logits_hw: tuple[int, int]) -> None:
        """``logits_resolution``, the label size and the upsampling rule (version 1: label resolution)."""
        self._resolution, self._rule, self._label_hw = "label", None, logits_hw
        if version == 1:
            return
        res = self._attr("logits_resolution")
        if res not in RESOLUTIONS:
            raise self._err(f"logits_resolution attribute is {res!r}, expected one of {', '.join(RESOLUTIONS)}")
        self._resolution = res
        if res == "label":
            return
        shape = self._f.attrs.get("label_shape")
        if shape is None or np.asarray(shape).shape != (2,) or np.asarray(shape).min() <= 0:
            raise self._err(f"label_shape attribute is {shape!r}, expected (H, W) for native-resolution logits")
        label_h, label_w = (int(v) for v in np.asarray(shape))
        self._label_hw = (label_h, label_w)
        rule = {"mode": self._attr("upsample_mode"), "align_corners": self._attr("upsample_align_corners")}
        try:
            self._rule = check_upsample_rule(rule)
        except CocodagError as e:
            raise self._err(f"upsampling rule attributes (upsample_mode, upsample_align_corners): {e}") from None

    def _validate(self) -> None:
        version = self._check_header()
        self._logits = self._dataset("logits", 4, _FLOAT_DTYPES)
        n, c, h, w = self._logits.shape
        if n == 0:
            raise self._err("holds no frames ('logits' has shape "
                            f"{self._logits.shape}); re-export it (an interrupted or empty export?)")
        self._abstention = self._read_abstention(c)
        classes = c if self._abstention is None else c - 1
        besides = "" if self._abstention is None else f" (with the abstention channel {self._abstention})"
        nc = self._attr("num_classes")
        if nc is not None and int(nc) != classes:
            raise self._err(f"num_classes attribute is {int(nc)} but 'logits' has {c} channels{besides}")
        if classes < 2:
            raise self._err(f"'logits' has {classes} class channel(s){besides}, expected at least 2")
        self._read_layout(version, (h, w))
        lh, lw = self._label_hw
        what = "to match 'logits'" if self._resolution == "label" else "(the label_shape attribute)"
        self._label = self._dataset("label", 3, (np.uint8,))
        if self._label.shape != (n, lh, lw):
            raise self._err(f"'label' has shape {self._label.shape}, expected {(n, lh, lw)} {what}")
        self._read_ids(n)
        self._roi = self._optional_dataset("roi", 3, (np.uint8,))
        if self._roi is not None and self._roi.shape != (n, lh, lw):
            raise self._err(f"'roi' has shape {self._roi.shape}, expected {(n, lh, lw)}")
        self._image = self._optional_dataset("image", 4, (np.uint8,))
        if self._image is not None and (self._image.shape[0] != n or self._image.shape[3] != 3):
            raise self._err(f"'image' has shape {self._image.shape}, expected ({n}, h, w, 3)")
        self._mc = self._mc_datasets(n, c, h, w) if "mc" in self._f else None

    def _read_abstention(self, channels: int) -> int | None:
        """The ``abstention_channel`` attribute: None when absent (or -1), else it must name the last channel."""
        a = self._attr("abstention_channel")
        if a is None or (isinstance(a, int) and not isinstance(a, bool) and a == -1):
            return None
        if not isinstance(a, int) or isinstance(a, bool) or a != channels - 1:
            raise self._err(f"abstention_channel attribute is {a!r}, expected {channels - 1} (the last of the "
                            f"{channels} channels of 'logits') or none")
        return a

    def _read_ids(self, n: int) -> None:
        ids = self._dataset("image_id", 1, ())
        if ids.shape != (n,):
            raise self._err(f"'image_id' has shape {ids.shape}, expected ({n},)")
        if ids.dtype.kind not in ("O", "S", "U") or h5py.check_string_dtype(ids.dtype) is None:
            raise self._err(f"'image_id' has dtype {ids.dtype}, expected strings")
        self._ids = [s.decode() if isinstance(s, bytes) else str(s) for s in ids[()]]
        dup = sorted({i for i in self._ids if self._ids.count(i) > 1}) if len(set(self._ids)) != n else []
        if dup:
            raise self._err(f"{len(dup)} duplicated image_id(s): {_listing(dup)}")

    def _mc_datasets(self, n: int, c: int, h: int, w: int) -> tuple:
        """The ``mc/*`` datasets, checked: at the stored logits' resolution (native or label)."""
        mean = self._dataset("mc/mean", 4, _FLOAT_DTYPES)
        central = self._dataset("mc/central", 5, _FLOAT_DTYPES)
        entropy = self._dataset("mc/entropy", 3, _FLOAT_DTYPES)
        if mean.shape != (n, c, h, w):
            raise self._err(f"'mc/mean' has shape {mean.shape}, expected {(n, c, h, w)}")
        if central.shape[0] != n or central.shape[2:] != (c, h, w):
            raise self._err(f"'mc/central' has shape {central.shape}, expected ({n}, K-1, {c}, {h}, {w})")
        if entropy.shape != (n, h, w):
            raise self._err(f"'mc/entropy' has shape {entropy.shape}, expected {(n, h, w)}")
        return mean, central, entropy

    # ------------------------------------------------------------------------------------------- properties
    def __len__(self) -> int:
        return self._logits.shape[0]

    @property
    def num_classes(self) -> int:
        """The number of classes C: the channels of ``logits``, less the abstention channel when there is one."""
        return self.num_channels - (self._abstention is not None)

    @property
    def num_channels(self) -> int:
        """The channels of the stored ``logits`` (and ``mc/*``): C, or C + 1 with an abstention channel."""
        return int(self._logits.shape[1])

    @property
    def abstention_channel(self) -> int | None:
        """Index of the abstention channel (the last, = :attr:`num_classes`), or None when the file has none.
        It is no class: feed class-based consumers :func:`class_logits` / :func:`class_mc` of what you read."""
        return self._abstention

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of every frame's label, and of the logits :meth:`frame` / :meth:`logits` return."""
        return self._label_hw

    @property
    def native_shape(self) -> tuple[int, int]:
        """(h, w) of the stored logits and MC block (equal to :attr:`shape` at label resolution)."""
        return int(self._logits.shape[2]), int(self._logits.shape[3])

    @property
    def logits_resolution(self) -> str:
        """``"native"`` (the network's output resolution, upsampled when read) or ``"label"`` (version 1 files)."""
        return self._resolution

    @property
    def upsample_rule(self) -> dict | None:
        """``{"mode", "align_corners"}`` that brings stored logits to :attr:`shape`; None at label resolution."""
        return None if self._rule is None else dict(self._rule)

    @property
    def image_ids(self) -> list[str]:
        return list(self._ids)

    @property
    def has_mc(self) -> bool:
        return self._mc is not None

    @property
    def has_images(self) -> bool:
        return self._image is not None

    @property
    def has_roi(self) -> bool:
        return self._roi is not None

    @property
    def attrs(self) -> dict:
        """File attributes (format, version, num_classes, dataset, model, ...) as plain Python values."""
        return {k: _plain(v) for k, v in self._f.attrs.items()}

    @property
    def mc_attrs(self) -> dict:
        """Attributes of the ``mc`` group (moments_of, mc_samples, moment_order, ...); empty without MC data."""
        if self._mc is None:
            return {}
        return {k: _plain(v) for k, v in self._f["mc"].attrs.items()}

    # ----------------------------------------------------------------------------------------------- frames
    def _index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"{self.path}: frame {i} out of range (file has {n} frames)")
        return i % n

    def _read(self, ds: h5py.Dataset, i: int, name: str) -> np.ndarray:
        """Row ``i`` of one dataset; a read failure (a truncated or corrupt file) is one line naming the frame."""
        try:
            return ds[i]
        except (OSError, RuntimeError) as e:
            raise self._err(f"cannot read '{name}' of frame {i} ({self._ids[i]!r}): {str(e).splitlines()[0]}; "
                            "the file is damaged, re-export it") from None

    def _checked_label(self, i: int) -> np.ndarray:
        label = self._read(self._label, i, "label")
        bad = invalid_label_values(label)
        if bad:
            raise self._err(f"frame {i} ({self._ids[i]!r}): {label_values_message(label, bad)}; fix the labels "
                            "and re-export the file")
        return label

    def frame(self, i: int, *, image: bool = True, native: bool = False) -> Frame:
        """Read frame ``i`` (one chunk of each dataset); logits are returned as float32 at the label size (a
        native-resolution file's logits upsampled with its rule), or as stored with ``native=True``.

        Raises
        ------
        CocodagError
            The frame's label holds values other than 0/1/255, or the frame cannot be read.
        """
        i = self._index(i)
        return Frame(
            image_id=self._ids[i],
            logits=self.logits(i, native=native),
            label=self._checked_label(i),
            roi=self._read(self._roi, i, "roi") if self._roi is not None else None,
            image=self._read(self._image, i, "image") if (image and self._image is not None) else None,
        )

    def logits(self, i: int, *, native: bool = False) -> np.ndarray:
        """Logits of frame ``i`` only, (C, H, W) float32 (no label read, e.g. for statistics over logits): at the
        label size (native-resolution logits upsampled with the file's rule, on the CPU, one frame at a time), or
        as stored, (C, h, w), with ``native=True``."""
        i = self._index(i)
        stored = self._read(self._logits, i, "logits").astype(np.float32, copy=False)
        if native or self._rule is None:
            return stored
        return upsample_frame(stored, self._label_hw, self._rule)

    def native_logits(self, i: int) -> np.ndarray:
        """The stored logits of frame ``i``, (C, h, w) float32 (same as ``logits(i, native=True)``)."""
        return self.logits(i, native=True)

    def label(self, i: int) -> np.ndarray:
        """Ground truth of frame ``i`` only (uint8 (H, W), 0/1/255) without reading its logits; other values are
        an error naming the file, the frame and the values."""
        return self._checked_label(self._index(i))

    def roi(self, i: int) -> np.ndarray | None:
        """Region mask of frame ``i`` (uint8 (H, W), 1 = evaluated) or None when the file has no ``roi``."""
        return self._read(self._roi, self._index(i), "roi") if self._roi is not None else None

    def image(self, i: int) -> np.ndarray | None:
        """Stored RGB image of frame ``i`` (uint8 (h, w, 3)) or None."""
        return self._read(self._image, self._index(i), "image") if self._image is not None else None

    def mc(self, i: int) -> dict | None:
        """MC-dropout block of frame ``i`` as stored: ``dict(mean (C,h,w), central (K-1,C,h,w), entropy (h,w))``
        float32, plus ``moments_of`` ("logits" | "probs") when the file records it; in a native-resolution file
        also ``upsample`` (the rule) and ``size`` (the label's (H, W)), for a scorer that brings its map there."""
        if self._mc is None:
            return None
        i = self._index(i)
        out: dict[str, Any] = {k: self._read(ds, i, f"mc/{k}").astype(np.float32, copy=False)
                               for k, ds in zip(MC_KEYS, self._mc)}
        moments_of = self.mc_attrs.get("moments_of")
        if moments_of is not None:      # lets OODMC refuse moments of probs when it was fitted on logits
            out["moments_of"] = moments_of
        if self._rule is not None:
            out["upsample"], out["size"] = dict(self._rule), self._label_hw
        return out

    def iter_frames(self, indices: Sequence[int] | None = None, *, image: bool = True) -> Iterator[Frame]:
        """Yield frames one at a time (never more than one frame in memory)."""
        for i in (range(len(self)) if indices is None else indices):
            yield self.frame(i, image=image)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> LogitsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        native = f", native_shape={self.native_shape}" if self._resolution == "native" else ""
        abstention = "" if self._abstention is None else f", abstention_channel={self._abstention}"
        return (f"LogitsFile({str(self.path)!r}, frames={len(self)}, num_classes={self.num_classes}{abstention}, "
                f"shape={self.shape}{native}, mc={self.has_mc}, images={self.has_images}, roi={self.has_roi})")


class LogitsWriter:
    """Write a ``logits.h5`` file frame by frame (the format :class:`LogitsFile` reads); atomic tmp + rename.

    Datasets are created at the first :meth:`write` (shapes come from it) and grow by one frame per call,
    chunked one frame per chunk, so the file may exceed RAM. The file appears under ``path`` only when the
    context exits without error; on an error the temp file is removed.

    Parameters
    ----------
    path : path
    num_classes : int
        C, the classes: every frame's logits have C channels, C + 1 with an abstention channel.
    dataset, model, checkpoint : str
        Provenance attributes.
    attrs : dict, optional
        More file attributes (e.g. the exporting package's version); cannot override the format keys.
        ``abstention_channel`` (an int, or None for none) is the format's own: it must be ``num_classes`` (the
        channel after the C classes, as PEBAL's network has it); the frames then have C + 1 channels and the file
        is version 3 (:data:`ABSTENTION_VERSION`).
    compression : {None, "none", "gzip"}
        Of the logits, the MC block and the images; ``gzip`` is level 1 (the measured size/speed choice). Labels
        and ROI masks are always gzip level 1 (measured: ~15 KiB per 2048x1024 label, smaller and faster to read
        than lzf's ~29 KiB). ``"lzf"`` is refused (``cocodag.formats.choices.LZF_REFUSED``); lzf files still
        read.
    logits_resolution : {"label", "native"}
        ``"label"``: logits (and MC block) at the label size. ``"native"``: at the network's output size (h, w),
        any size; the label size and ``upsample_rule`` are recorded, and the reader upsamples with them.
    upsample_rule : dict, optional
        ``{"mode": "bilinear", "align_corners": bool}``; required with ``logits_resolution="native"``.
    mc_attrs : dict, optional
        Attributes of the ``mc`` group (``moments_of``, ``mc_samples``, ``moment_order``, ``head_only``, ``seed``);
        :meth:`set_mc_attrs` updates them while writing.
    logits_dtype : {"float16", "float32"}
    mc_dtype : {None, "float16", "float32"}
        dtype of the ``mc/*`` datasets; default: float16 if the first frame's ``mc["mean"]`` is float16, else
        float32. A float16 MC block that overflows is refused (the message names the frame and dataset).
    """

    _RESERVED = ("format", "version", "num_classes", "logits_resolution", "label_shape", "upsample_mode",
                 "upsample_align_corners")
    #: labels and roi: always compressed (mostly constant regions)
    _LABEL_CK = dict(GZIP_LEVEL1)

    def __init__(self, path: Path | str, num_classes: int, *, dataset: str = "cocodag", model: str = "",
                 checkpoint: str = "", attrs: dict | None = None, compression: str | None = None,
                 mc_attrs: dict | None = None, logits_dtype: str = "float16", mc_dtype: str | None = None,
                 logits_resolution: str = "label", upsample_rule: dict | None = None):
        if compression == "none":
            compression = None
        if compression == "lzf":
            raise CocodagError(f"compression 'lzf': {LZF_REFUSED}")
        if compression not in (None, "gzip"):
            raise CocodagError(f"compression {compression!r}: expected None or 'gzip'")
        if logits_dtype not in LOGITS_DTYPES:
            raise CocodagError(f"logits_dtype {logits_dtype!r}: expected 'float16' or 'float32'")
        if mc_dtype is not None and mc_dtype not in LOGITS_DTYPES:
            raise CocodagError(f"mc_dtype {mc_dtype!r}: expected 'float16' or 'float32'")
        clash = sorted(set(attrs or {}) & set(self._RESERVED))
        if clash:
            raise CocodagError(f"attrs: {clash} are set by the writer itself")
        self.path = Path(path)
        self.num_classes = int(num_classes)
        attrs = dict(attrs or {})
        self.abstention_channel = self._check_abstention(attrs.pop("abstention_channel", None), self.num_classes)
        #: the channels of every frame's logits: the classes, and the abstention channel when there is one
        self.num_channels = self.num_classes + (self.abstention_channel is not None)
        if self.abstention_channel is not None:     # version 3: a version-2 reader would take it for a class
            attrs["abstention_channel"] = self.abstention_channel
        version = LOGITS_VERSION if self.abstention_channel is None else ABSTENTION_VERSION
        self._attrs = {"format": LOGITS_FORMAT, "version": version, "num_classes": self.num_classes,
                       "dataset": dataset, "model": model, "checkpoint": checkpoint, **attrs,
                       **self._layout_attrs(logits_resolution, upsample_rule)}
        self.native = logits_resolution == "native"
        self._ck: dict[str, Any] = {} if compression is None else dict(GZIP_LEVEL1)
        self._mc_attrs = dict(mc_attrs or {})
        self._dtype = np.dtype(logits_dtype)
        self._mc_dtype = None if mc_dtype is None else np.dtype(mc_dtype)
        self._f: h5py.File | None = None
        self._file: WriteGuard | None = None
        self._atomic: AbstractContextManager[Path] | None = None
        self._n = 0

    @staticmethod
    def _check_abstention(channel, num_classes: int) -> int | None:
        """``attrs["abstention_channel"]``: None, or the channel after the ``num_classes`` classes."""
        if channel is None:
            return None
        if isinstance(channel, (bool, np.bool_)) or not isinstance(channel, (int, np.integer)) \
                or int(channel) != num_classes:
            raise CocodagError(f"abstention_channel {channel!r}: expected None or {num_classes} (the channel after "
                               f"the {num_classes} classes)")
        return int(channel)

    @staticmethod
    def _layout_attrs(resolution: str, rule: dict | None) -> dict:
        if resolution not in RESOLUTIONS:
            raise CocodagError(f"logits_resolution {resolution!r}: expected one of {', '.join(RESOLUTIONS)}")
        if resolution == "label":
            return {"logits_resolution": "label"}
        if rule is None:
            raise CocodagError("logits_resolution 'native' needs the upsample_rule that brings logits to the label "
                               "size")
        rule = check_upsample_rule(rule)
        return {"logits_resolution": "native", "upsample_mode": rule["mode"],
                "upsample_align_corners": rule["align_corners"]}

    def __enter__(self) -> LogitsWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._atomic = atomic_write(self.path)
        tmp = self._atomic.__enter__()
        self._file = WriteGuard(tmp)
        self._f = h5py.File(self._file, "w")
        self._f.attrs.update(self._attrs)
        return self

    def __len__(self) -> int:
        return self._n

    def set_mc_attrs(self, **attrs) -> None:
        """Update attributes of the ``mc`` group (e.g. ``head_only``: what actually ran)."""
        self._mc_attrs.update(attrs)
        if self._f is not None and "mc" in self._f:
            self._f["mc"].attrs.update(attrs)

    @property
    def _h5(self) -> h5py.File:
        """The open HDF5 file (between ``__enter__`` and ``__exit__``)."""
        if self._f is None:
            raise CocodagError("LogitsWriter used outside its `with` block")
        return self._f

    def _create(self, name: str, frame_shape: tuple, dtype, ck: dict | None = None) -> h5py.Dataset:
        return self._h5.create_dataset(name, shape=(0, *frame_shape), maxshape=(None, *frame_shape), dtype=dtype,
                                      chunks=(1, *frame_shape), **(self._ck if ck is None else ck))

    def _append(self, name: str, value: np.ndarray) -> None:
        ds = self._h5[name]
        if ds.shape[1:] != value.shape:
            raise CocodagError(f"{self.path}: '{name}' of frame {self._n} has shape {value.shape}, "
                               f"expected {ds.shape[1:]} like the first frame")
        ds.resize(self._n + 1, axis=0)
        ds[self._n] = value

    def _first_frame(self, logits: np.ndarray, label: np.ndarray, roi, image, mc) -> None:
        f = self._h5
        self._create("logits", logits.shape, self._dtype)
        self._create("label", label.shape, np.uint8, self._LABEL_CK)
        f.attrs["label_shape"] = np.asarray(label.shape, dtype=np.int64)
        f.create_dataset("image_id", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(1024,))
        if roi is not None:
            self._create("roi", label.shape, np.uint8, self._LABEL_CK)
        if image is not None:
            self._create("image", np.asarray(image).shape, np.uint8)
        if mc is not None:
            g = f.create_group("mc")
            g.attrs.update(self._mc_attrs)
            if self._mc_dtype is None:
                self._mc_dtype = np.dtype(np.float16 if np.asarray(mc["mean"]).dtype == np.float16 else np.float32)
            for k in MC_KEYS:
                self._create(f"mc/{k}", np.asarray(mc[k]).shape, self._mc_dtype)

    def write(self, logits: np.ndarray, label: np.ndarray, image_id: str, *, roi: np.ndarray | None = None,
              image: np.ndarray | None = None, mc: dict | None = None) -> None:
        """Append one frame: logits (C,H,W) (native resolution: (C,h,w)), label (H,W) uint8 0/1/255, optional
        roi (H,W) / image / mc (same keys as read; at the logits' resolution)."""
        if self._f is None:
            raise CocodagError("LogitsWriter.write called outside its `with` block")
        logits = np.asarray(logits)
        if logits.ndim != 3 or logits.shape[0] != self.num_channels:
            raise CocodagError(f"logits of {image_id!r} have shape {logits.shape}, "
                               f"expected ({self.num_channels}, H, W)")
        label = np.asarray(label)
        if label.ndim != 2 or (not self.native and label.shape != logits.shape[1:]):
            raise CocodagError(f"label of {image_id!r} has shape {label.shape}, expected "
                               f"{logits.shape[1:] if not self.native else '(H, W)'}")
        bad = invalid_label_values(label)
        if bad:     # the reader refuses them: never write a file it cannot read
            raise CocodagError(f"{self.path}: label of {image_id!r}: {label_values_message(label, bad)}")
        label = label.astype(np.uint8)
        f = self._f
        if self._n == 0:
            self._first_frame(logits, label, roi, image, mc)
        for name, value in (("roi", roi), ("image", image), ("mc", mc)):
            if (value is None) != (name not in f):
                raise CocodagError(f"{self.path}: frame {self._n} ({image_id!r}) "
                                   f"{'lacks' if value is None else 'adds'} '{name}'; every frame must have the "
                                   "same optional datasets as the first")
        mc_arrays = self._mc_arrays(mc, logits.shape, image_id) if mc is not None else {}
        self._append("logits", logits.astype(self._dtype, copy=False))
        self._append("label", label)
        if roi is not None:
            self._append("roi", np.asarray(roi, dtype=np.uint8))
        if image is not None:
            self._append("image", np.asarray(image, dtype=np.uint8))
        for k, a in mc_arrays.items():
            self._append(f"mc/{k}", a)
        ids = f["image_id"]
        ids.resize(self._n + 1, axis=0)
        ids[self._n] = str(image_id)
        self._n += 1
        self._check_disk()          # a full disk ends the job at the frame that met it

    def _mc_arrays(self, mc: dict, logits_shape: tuple, image_id: str) -> dict[str, np.ndarray]:
        """The MC block converted to the ``mc/*`` dtype and checked (shapes, float16 overflow) before anything of
        the frame is written."""
        c, h, w = logits_shape
        expect = {"mean": lambda s: s == (c, h, w), "central": lambda s: len(s) == 4 and s[1:] == (c, h, w),
                  "entropy": lambda s: s == (h, w)}
        out = {}
        for k in MC_KEYS:
            a = np.asarray(mc[k])
            if not expect[k](a.shape):
                raise CocodagError(f"{self.path}: mc/{k} of {image_id!r} has shape {a.shape}, expected it at the "
                                   f"logits' resolution {(h, w)}")
            with np.errstate(over="ignore"):        # an overflow is reported below, as one clear line
                a = a.astype(self._mc_dtype, copy=False)
            if self._mc_dtype == np.float16 and not np.isfinite(a).all():
                # high-order moments of logits easily pass float16's 65504 (a deviation of 16 -> 16^4)
                raise CocodagError(f"{image_id}: mc/{k} overflows float16 ({int((~np.isfinite(a)).sum())} "
                                   "values); use --mc-dtype float32 or --moments-of probs")
            out[k] = a
        return out

    def _check_disk(self) -> None:
        """Raise the first write error the file met (disk full, quota, ...) as one line."""
        if self._file is not None and self._file.error is not None:
            with disk_errors(self.path):
                raise self._file.error

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._f is not None and self._file is not None and self._atomic is not None   # set by __enter__
        self._f.close()             # never fails on a full disk: the guard swallowed the writes after the first error
        self._f = None
        self._file.close()
        atomic, self._atomic = self._atomic, None
        try:
            if exc_type is None:
                self._check_disk()
                if self._n == 0:
                    raise CocodagError(f"{self.path}: no frames written")
        except CocodagError as e:
            atomic.__exit__(type(e), e, None)          # removes the temp file
            raise
        finally:
            self._file = None
        atomic.__exit__(exc_type, exc, tb)      # rename on success, remove the temp file on an error


def as_logits_tensor(logits, *, name: str = "logits", device=None, check_finite: bool = True,
                     error: type[CocodagError] = CocodagError):
    """Validate logits and return them as a float32 ``(N, C, h, w)`` torch tensor plus whether a batch axis was given.

    Parameters
    ----------
    logits : (N, C, h, w) or (C, h, w) array-like, numpy or torch, any float dtype (float16 is widened)
    name : argument name used in error messages
    device : torch.device, optional; where to compute (default: the tensor's own device, CPU for numpy)
    check_finite : refuse NaN / inf values (they would silently poison every downstream statistic)
    error : the error type to raise (the calling package's own, a :class:`CocodagError` subclass)
    """
    import torch

    if isinstance(logits, torch.Tensor):
        t = logits
    else:
        arr = np.asarray(logits)
        if arr.dtype.kind not in "fiu":
            raise error(f"{name}: expected a numeric array, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.ndim not in (3, 4):
        raise error(f"{name}: expected shape (N, C, H, W) or (C, H, W), got {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:
        raise error(f"{name}: expected a real float array, got {t.dtype}")
    batched = t.ndim == 4
    if not batched:
        t = t.unsqueeze(0)
    if t.shape[1] < 2:
        raise error(f"{name}: expected at least 2 classes on axis 1, got {t.shape[1]}")
    if device is not None:
        t = t.to(device)
    t = t.float()
    if check_finite and not bool(torch.isfinite(t).all()):
        raise error(f"{name}: contains NaN or inf values")
    return t, batched


def check_size(size, *, error: type[CocodagError] = CocodagError) -> tuple[int, int] | None:
    """Validate an output ``(H, W)`` size (the label size); None stays None."""
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise error(f"size: expected (H, W) with two positive ints, got {size!r}") from None
    if h <= 0 or w <= 0:
        raise error(f"size: expected (H, W) with two positive ints, got {size!r}")
    return h, w


def check_upsample_rule(rule) -> dict:
    """Validate an upsampling rule ``{"mode": "bilinear" | "bicubic", "align_corners": bool}`` -> a plain dict."""
    if not isinstance(rule, dict) or set(rule) != {"mode", "align_corners"}:
        raise CocodagError(f"upsampling rule {rule!r}: expected {{'mode': 'bilinear', 'align_corners': bool}}")
    mode, ac = rule["mode"], rule["align_corners"]
    if mode not in UPSAMPLE_MODES:
        raise CocodagError(f"upsampling mode {mode!r}: expected one of {', '.join(UPSAMPLE_MODES)}")
    if not isinstance(ac, (bool, np.bool_)):
        raise CocodagError(f"upsampling align_corners {ac!r}: expected True or False")
    return {"mode": str(mode), "align_corners": bool(ac)}


def upsample(logits, size: tuple[int, int] | None, *, mode: str = "bilinear", align_corners: bool = False):
    """Bring ``(N, C, h, w)`` torch logits to ``size`` = (H, W): bilinear with ``align_corners`` (default False,
    and what version-1 files, the scorers and models that record no rule use), the one rule used by export, by the
    reader of native-resolution files (with the rule the file records) and by every scorer at the label size."""
    if size is None or tuple(logits.shape[-2:]) == tuple(size):
        return logits
    import torch.nn.functional as F

    return F.interpolate(logits, size=tuple(int(s) for s in size), mode=mode, align_corners=align_corners)


def upsample_frame(logits: np.ndarray, size: tuple[int, int], rule: dict | None) -> np.ndarray:
    """One stored frame ``(C, h, w)`` (or a map ``(h, w)``) -> float32 numpy at ``size`` = (H, W), on the CPU, with
    ``rule`` (:data:`DEFAULT_RULE` when None). What :meth:`LogitsFile.logits` returns for a native-resolution file;
    export feeds its SML statistics through it so that they equal what the file gives."""
    import torch

    a = np.ascontiguousarray(logits, dtype=np.float32)
    t = torch.from_numpy(a.reshape(1, -1, *a.shape[-2:]))
    out = upsample(t, size, **(rule or DEFAULT_RULE))
    return out.numpy().reshape(*a.shape[:-2], *(int(v) for v in size))


def class_logits(logits, abstention_channel: int | None):
    """The class channels of ``logits`` (``(..., C(+1), H, W)``, numpy or torch): without the abstention channel
    (no class; :attr:`LogitsFile.abstention_channel`, the last channel), unchanged when it is None.

    The one rule for every class-based consumer of a ``logits.h5`` file (scores, SML statistics, argmax
    segmentation); a view, not a copy."""
    if abstention_channel is None:
        return logits
    return logits[..., :abstention_channel, :, :]


def class_mc(mc: dict | None, abstention_channel: int | None) -> dict | None:
    """A frame's MC block (as :meth:`LogitsFile.mc` returns it) restricted to the classes: ``mean`` and ``central``
    without the abstention channel (:func:`class_logits`); ``entropy`` is already that of the classes' mean softmax
    (``maxent-train export`` computes it over the C classes)."""
    if mc is None or abstention_channel is None:
        return mc
    return {**mc, "mean": class_logits(mc["mean"], abstention_channel),
            "central": class_logits(mc["central"], abstention_channel)}
