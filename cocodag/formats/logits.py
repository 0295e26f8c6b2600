"""The ``logits.h5`` contract (docs/formats.md §3, DESIGN §4.3): its one writer and its one reader.

``maxent-train export`` writes through :class:`LogitsWriter`; ``oodscore`` reads through :class:`LogitsFile`,
which validates the file once, when it is opened (format attr, version, shapes, dtypes); after that frames are
read one at a time, so a file larger than RAM is fine::

    with LogitsWriter("test.h5", num_classes=19, attrs={"model": "tiny_segnet"}) as w:
        w.write(logits, label, "frame-0", roi=roi, mc={"mean": ..., "central": ..., "entropy": ...})

    with LogitsFile("test.h5") as f:
        for fr in f.iter_frames():             # Frame(image_id, logits (C,H,W) float32, label, roi, image)
            ...

:func:`upsample` is the one rule for bringing logits to the label size (bilinear, ``align_corners=False``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from ..atomic import atomic_write
from ..errors import CocodagError
from ..outputs import disk_errors

LOGITS_FORMAT = "cocodag-logits"
LOGITS_VERSION = 1
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


@dataclass
class Frame:
    """One frame of a ``logits.h5`` file.

    Attributes
    ----------
    image_id : str
    logits : (C, H, W) float32
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
    """Validated, read-only access to a ``logits.h5`` file (DESIGN §4.3).

    Parameters
    ----------
    path : path
        The file. It is checked at once: ``format``/``version`` attrs, dataset shapes (``logits`` (N,C,H,W),
        ``label`` (N,H,W), ``image_id`` (N,), optional ``roi``, ``image``, ``mc/*``) and dtypes.

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

    def _dataset(self, name: str, ndim: int, dtypes: tuple, required: bool = True) -> h5py.Dataset | None:
        if name not in self._f:
            if required:
                raise self._err(f"missing dataset '{name}' (is this a {LOGITS_FORMAT} file?)")
            return None
        ds = self._f[name]
        if not isinstance(ds, h5py.Dataset):
            raise self._err(f"'{name}' is a group, expected a dataset")
        if ds.ndim != ndim:
            raise self._err(f"dataset '{name}' has shape {ds.shape}, expected {ndim} dimensions")
        if dtypes and ds.dtype.type not in dtypes:
            raise self._err(f"dataset '{name}' has dtype {ds.dtype}, expected "
                            f"{' or '.join(np.dtype(d).name for d in dtypes)}")
        return ds

    def _validate(self) -> None:
        f = self._f
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != LOGITS_FORMAT:
            raise self._err(f"format attribute is {fmt!r}, expected {LOGITS_FORMAT!r}")
        version = f.attrs.get("version")
        version = version.item() if hasattr(version, "item") else version
        if not isinstance(version, (int, np.integer)) or int(version) != LOGITS_VERSION:
            raise self._err(f"format version {version!r} is not supported (expected {LOGITS_VERSION})")
        self._logits = self._dataset("logits", 4, _FLOAT_DTYPES)
        n, c, h, w = self._logits.shape
        if n == 0:
            raise self._err("holds no frames ('logits' has shape "
                            f"{self._logits.shape}); re-export it (an interrupted or empty export?)")
        nc = f.attrs.get("num_classes")
        if nc is not None and int(nc) != c:
            raise self._err(f"num_classes attribute is {int(nc)} but 'logits' has {c} channels")
        if c < 2:
            raise self._err(f"'logits' has {c} class channel(s), expected at least 2")
        self._label = self._dataset("label", 3, (np.uint8,))
        if self._label.shape != (n, h, w):
            raise self._err(f"'label' has shape {self._label.shape}, expected {(n, h, w)} to match 'logits'")
        ids = self._dataset("image_id", 1, ())
        if ids.shape != (n,):
            raise self._err(f"'image_id' has shape {ids.shape}, expected ({n},)")
        if ids.dtype.kind not in ("O", "S", "U") or h5py.check_string_dtype(ids.dtype) is None:
            raise self._err(f"'image_id' has dtype {ids.dtype}, expected strings")
        self._ids = [s.decode() if isinstance(s, bytes) else str(s) for s in ids[()]]
        dup = sorted({i for i in self._ids if self._ids.count(i) > 1}) if len(set(self._ids)) != n else []
        if dup:
            raise self._err(f"{len(dup)} duplicated image_id(s): {_listing(dup)}")
        self._roi = self._dataset("roi", 3, (np.uint8,), required=False)
        if self._roi is not None and self._roi.shape != (n, h, w):
            raise self._err(f"'roi' has shape {self._roi.shape}, expected {(n, h, w)}")
        self._image = self._dataset("image", 4, (np.uint8,), required=False)
        if self._image is not None and (self._image.shape[0] != n or self._image.shape[3] != 3):
            raise self._err(f"'image' has shape {self._image.shape}, expected ({n}, h, w, 3)")
        self._mc = None
        if "mc" in f:
            mean = self._dataset("mc/mean", 4, _FLOAT_DTYPES)
            central = self._dataset("mc/central", 5, _FLOAT_DTYPES)
            entropy = self._dataset("mc/entropy", 3, _FLOAT_DTYPES)
            if mean.shape != (n, c, h, w):
                raise self._err(f"'mc/mean' has shape {mean.shape}, expected {(n, c, h, w)}")
            if central.shape[0] != n or central.shape[2:] != (c, h, w):
                raise self._err(f"'mc/central' has shape {central.shape}, expected ({n}, K-1, {c}, {h}, {w})")
            if entropy.shape != (n, h, w):
                raise self._err(f"'mc/entropy' has shape {entropy.shape}, expected {(n, h, w)}")
            self._mc = (mean, central, entropy)

    # ------------------------------------------------------------------------------------------- properties
    def __len__(self) -> int:
        return self._logits.shape[0]

    @property
    def num_classes(self) -> int:
        return int(self._logits.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of every frame's logits and label."""
        return int(self._logits.shape[2]), int(self._logits.shape[3])

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
        return {k: (v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v)
                for k, v in self._f.attrs.items()}

    @property
    def mc_attrs(self) -> dict:
        """Attributes of the ``mc`` group (moments_of, mc_samples, moment_order, ...); empty without MC data."""
        if self._mc is None:
            return {}
        return {k: (v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v)
                for k, v in self._f["mc"].attrs.items()}

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

    def frame(self, i: int, *, image: bool = True) -> Frame:
        """Read frame ``i`` (one chunk of each dataset); logits are returned as float32.

        Raises
        ------
        CocodagError
            The frame's label holds values other than 0/1/255, or the frame cannot be read.
        """
        i = self._index(i)
        return Frame(
            image_id=self._ids[i],
            logits=self.logits(i),
            label=self._checked_label(i),
            roi=self._read(self._roi, i, "roi") if self._roi is not None else None,
            image=self._read(self._image, i, "image") if (image and self._image is not None) else None,
        )

    def logits(self, i: int) -> np.ndarray:
        """Logits of frame ``i`` only, (C, H, W) float32 (no label read, e.g. for statistics over logits)."""
        i = self._index(i)
        return self._read(self._logits, i, "logits").astype(np.float32, copy=False)

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
        """MC-dropout block of frame ``i``: ``dict(mean (C,H,W), central (K-1,C,H,W), entropy (H,W))`` float32,
        plus ``moments_of`` ("logits" | "probs") when the file records it."""
        if self._mc is None:
            return None
        i = self._index(i)
        out = {k: self._read(ds, i, f"mc/{k}").astype(np.float32, copy=False) for k, ds in zip(MC_KEYS, self._mc)}
        moments_of = self.mc_attrs.get("moments_of")
        if moments_of is not None:      # lets OODMC refuse moments of probs when it was fitted on logits
            out["moments_of"] = moments_of
        return out

    def iter_frames(self, indices: Sequence[int] | None = None, *, image: bool = True) -> Iterator[Frame]:
        """Yield frames one at a time (never more than one frame in memory)."""
        for i in (range(len(self)) if indices is None else indices):
            yield self.frame(i, image=image)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "LogitsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"LogitsFile({str(self.path)!r}, frames={len(self)}, num_classes={self.num_classes}, "
                f"shape={self.shape}, mc={self.has_mc}, images={self.has_images}, roi={self.has_roi})")


class LogitsWriter:
    """Write a ``logits.h5`` file frame by frame (the format :class:`LogitsFile` reads); atomic tmp + rename.

    Datasets are created at the first :meth:`write` (shapes come from it) and grow by one frame per call,
    chunked one frame per chunk, so the file may exceed RAM. The file appears under ``path`` only when the
    context exits without error; on an error the temp file is removed.

    Parameters
    ----------
    path : path
    num_classes : int
    dataset, model, checkpoint : str
        Provenance attributes.
    attrs : dict, optional
        More file attributes (e.g. the exporting package's version); cannot override the format keys.
    compression : {None, "none", "lzf", "gzip"}
        ``gzip`` is level 1 (the measured size/speed choice).
    mc_attrs : dict, optional
        Attributes of the ``mc`` group (``moments_of``, ``mc_samples``, ``moment_order``, ``head_only``, ``seed``);
        :meth:`set_mc_attrs` updates them while writing.
    logits_dtype : {"float16", "float32"}
    mc_dtype : {None, "float16", "float32"}
        dtype of the ``mc/*`` datasets; default: float16 if the first frame's ``mc["mean"]`` is float16, else
        float32. A float16 MC block that overflows is refused (the message names the frame and dataset).
    """

    _RESERVED = ("format", "version", "num_classes")

    def __init__(self, path: Path | str, num_classes: int, *, dataset: str = "cocodag", model: str = "",
                 checkpoint: str = "", attrs: dict | None = None, compression: str | None = None,
                 mc_attrs: dict | None = None, logits_dtype: str = "float16", mc_dtype: str | None = None):
        if compression == "none":
            compression = None
        if compression not in (None, "lzf", "gzip"):
            raise CocodagError(f"compression {compression!r}: expected None, 'lzf' or 'gzip'")
        if logits_dtype not in ("float16", "float32"):
            raise CocodagError(f"logits_dtype {logits_dtype!r}: expected 'float16' or 'float32'")
        if mc_dtype not in (None, "float16", "float32"):
            raise CocodagError(f"mc_dtype {mc_dtype!r}: expected 'float16' or 'float32'")
        clash = sorted(set(attrs or {}) & set(self._RESERVED))
        if clash:
            raise CocodagError(f"attrs: {clash} are set by the writer itself")
        self.path = Path(path)
        self.num_classes = int(num_classes)
        self._attrs = {"format": LOGITS_FORMAT, "version": LOGITS_VERSION, "num_classes": self.num_classes,
                       "dataset": dataset, "model": model, "checkpoint": checkpoint, **(attrs or {})}
        self._ck = ({} if compression is None else
                    {"compression": "gzip", "compression_opts": 1} if compression == "gzip" else
                    {"compression": compression})
        self._mc_attrs = dict(mc_attrs or {})
        self._dtype = np.dtype(logits_dtype)
        self._mc_dtype = None if mc_dtype is None else np.dtype(mc_dtype)
        self._f: h5py.File | None = None
        self._file: _WriteGuard | None = None
        self._atomic = None
        self._n = 0

    def __enter__(self) -> "LogitsWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._atomic = atomic_write(self.path)
        tmp = self._atomic.__enter__()
        self._file = _WriteGuard(tmp)
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

    def _create(self, name: str, frame_shape: tuple, dtype) -> h5py.Dataset:
        return self._f.create_dataset(name, shape=(0, *frame_shape), maxshape=(None, *frame_shape), dtype=dtype,
                                      chunks=(1, *frame_shape), **self._ck)

    def _append(self, name: str, value: np.ndarray) -> None:
        ds = self._f[name]
        if ds.shape[1:] != value.shape:
            raise CocodagError(f"{self.path}: '{name}' of frame {self._n} has shape {value.shape}, "
                               f"expected {ds.shape[1:]} like the first frame")
        ds.resize(self._n + 1, axis=0)
        ds[self._n] = value

    def _first_frame(self, logits: np.ndarray, label: np.ndarray, roi, image, mc) -> None:
        f = self._f
        self._create("logits", logits.shape, self._dtype)
        self._create("label", label.shape, np.uint8)
        f.create_dataset("image_id", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(1024,))
        if roi is not None:
            self._create("roi", label.shape, np.uint8)
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
        """Append one frame: logits (C,H,W), label (H,W) uint8 0/1/255, optional roi/image/mc (same keys as read)."""
        if self._f is None:
            raise CocodagError("LogitsWriter.write called outside its `with` block")
        logits = np.asarray(logits)
        if logits.ndim != 3 or logits.shape[0] != self.num_classes:
            raise CocodagError(f"logits of {image_id!r} have shape {logits.shape}, "
                               f"expected ({self.num_classes}, H, W)")
        label = np.asarray(label)
        if label.shape != logits.shape[1:]:
            raise CocodagError(f"label of {image_id!r} has shape {label.shape}, expected {logits.shape[1:]}")
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
        mc_arrays = {}
        if mc is not None:      # convert (and check) before anything of this frame is written
            for k in MC_KEYS:
                with np.errstate(over="ignore"):        # an overflow is reported below, as one clear line
                    a = np.asarray(mc[k]).astype(self._mc_dtype, copy=False)
                if self._mc_dtype == np.float16 and not np.isfinite(a).all():
                    # high-order moments of logits easily pass float16's 65504 (a deviation of 16 -> 16^4)
                    raise CocodagError(f"{image_id}: mc/{k} overflows float16 ({int((~np.isfinite(a)).sum())} "
                                       "values); use --mc-dtype float32 or --moments-of probs")
                mc_arrays[k] = a
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

    def _check_disk(self) -> None:
        """Raise the first write error the file met (disk full, quota, ...) as one line."""
        if self._file is not None and self._file.error is not None:
            with disk_errors(self.path):
                raise self._file.error

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._f is not None and self._atomic is not None
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


class _WriteGuard:
    """The file object HDF5 writes ``logits.h5`` through: it records the first ``OSError`` of a write (a full disk,
    a quota) and accepts every later write without doing it, so that HDF5 never sees a failed write. (After a failed
    write HDF5 cannot close its file and the process crashes at exit; here the writer raises the recorded error as
    one line and deletes the temp file instead.)"""

    def __init__(self, path: Path):
        self._raw = open(path, "w+b", buffering=0)
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):        # unbuffered writes may be partial
                    n = self._raw.write(view[done:])
                    if not n:
                        raise OSError(28, os.strerror(28))
                    done += n
            except OSError as e:
                self.error = e
        return len(view)

    def _guarded(self, fn, *args):
        if self.error is None:
            try:
                return fn(*args)
            except OSError as e:
                self.error = e
        return None

    def read(self, size: int = -1) -> bytes:
        return self._raw.read(size)

    def readinto(self, buf) -> int:
        return self._raw.readinto(buf)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def truncate(self, size: int | None = None) -> int:
        out = self._guarded(self._raw.truncate, size)
        return self._raw.tell() if out is None else out

    def flush(self) -> None:
        self._guarded(self._raw.flush)

    def close(self) -> None:
        if not self._raw.closed:
            self._guarded(os.fsync, self._raw.fileno())
            self._raw.close()


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


def upsample(logits, size: tuple[int, int] | None):
    """Bring ``(N, C, h, w)`` torch logits to ``size`` = (H, W): bilinear, ``align_corners=False``, the one rule
    used by export (models with a smaller output) and by every scorer that works at the label size."""
    if size is None or tuple(logits.shape[-2:]) == tuple(size):
        return logits
    import torch.nn.functional as F

    return F.interpolate(logits, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
