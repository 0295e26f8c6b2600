"""The only writer and reader of cocodag shards (the contract: docs/formats.md §1).

A dataset directory holds ``<kind>-NNNNN.h5`` shards and a ``manifest.json`` written last; the dataset exists iff the
manifest exists. Each shard is built in memory (HDF5 never touches the output file system, so a full disk cannot
crash it), then its bytes are hashed, written to ``*.h5.tmp``, fsynced and renamed, so a killed writer never leaves a
file that looks complete, and a full disk is one :class:`CocodagError` line (``No space left on device: <path>``).

Writing::

    with ShardWriter(out_dir, crop_size=480, config={...}, seed=0) as w:
        w.write_shard("dag", 0, images, labels, meta)      # explicit shard index (deterministic builds), or
        w.add("cityscapes", image, label, frame="x")       # buffered, flushed every `shard_size` samples

Reading (what :mod:`maxent_train` uses)::

    ds = open_dataset(out_dir)                 # validates manifest, shard attrs, shapes; checksums by default
    for info in ds.shards_of("dag"):
        with ds.open_shard(info) as sh:
            images, labels = sh.read(0, 16)    # one contiguous read
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..atomic import atomic_write, atomic_write_json
from ..errors import CocodagError
from ..labels import IGNORE_ID, NUM_CLASSES, OOD_ID, TRAIN_CLASS_NAMES
from ..outputs import disk_errors
from ..versions import library_versions
from .choices import COMPRESSIONS, GZIP_LEVEL1, LZF_REFUSED, Compression

SHARD_FORMAT = "cocodag-shard"
SHARD_VERSION = 1
MANIFEST_FORMAT = "cocodag-dataset"
MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
KINDS = ("dag", "cityscapes", "coco")
# Stream code of each kind, in KINDS order. The builder seeds every unit's generator with it
# (SeedSequence([seed, code, unit])): changing a value changes the bytes of every build.
STREAM_CODES = {kind: code for code, kind in enumerate(KINDS)}
NO_QUADRANT = 255


# --------------------------------------------------------------------------------------------------------- helpers
def sha256_file(path: Path | str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def shard_name(kind: str, index: int) -> str:
    return f"{kind}-{index:05d}.h5"


def _compression_kwargs(compression: str) -> dict[str, Any]:
    if compression == "none":
        return {}
    if compression == "lzf":
        raise CocodagError(f"--compression lzf: {LZF_REFUSED}")
    if compression == "gzip":
        return dict(GZIP_LEVEL1)
    raise CocodagError(f"--compression: expected one of {', '.join(COMPRESSIONS)}, got {compression!r}")


@dataclass
class SampleMeta:
    """Per-sample provenance stored under ``meta/`` in a shard."""

    frame: str
    coco_ann: int = -1
    centroid: tuple[int, int] = (-1, -1)          # x, y in frame coordinates
    crop: tuple[int, int, int, int] = (-1, -1, -1, -1)  # x0, y0, x1, y1
    quadrant: int = NO_QUADRANT                   # 0 TL, 1 TR, 2 BL, 3 BR; 255 = not a DAG crop


# --------------------------------------------------------------------------------------------------------- writing
def write_shard(
    path: Path | str,
    kind: str,
    images: np.ndarray,
    labels: np.ndarray,
    meta: list[SampleMeta],
    *,
    compression: Compression = "none",
    extra_attrs: dict[str, Any] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Write one shard atomically and return its manifest entry.

    The HDF5 file is built in memory (h5py on an ``io.BytesIO``: HDF5 itself never meets a full disk, which can make
    it crash on close), then written to ``path.tmp``, fsynced, and renamed onto ``path``.

    Parameters
    ----------
    images : (N, S, S, 3) uint8 RGB
    labels : (N, S, S) uint8, trainIds 0..18, 254 = OOD, 255 = ignore
    meta : N :class:`SampleMeta`
    before_commit : called right before the rename (the builder's workers check there that their build still runs).

    Raises
    ------
    CocodagError
        Bad arrays, or the file system refused the write (``No space left on device: <path>; ...``); nothing is
        left under ``path`` or ``path.tmp`` then.
    """
    path = Path(path)
    _check_shard_arrays(path, kind, images, labels, meta)
    ck = _compression_kwargs(compression)
    buf = io.BytesIO()
    _write_h5(buf, kind, np.asarray(images), np.asarray(labels), meta, ck, extra_attrs)
    data = buf.getbuffer()
    digest = hashlib.sha256(data).hexdigest()
    commit_bytes(path, data, before_commit)
    return {"file": path.name, "kind": kind, "num_samples": int(len(meta)), "sha256": digest, "bytes": data.nbytes}


def _check_shard_arrays(path: Path, kind: str, images, labels, meta: list[SampleMeta]) -> None:
    if kind not in KINDS:
        raise CocodagError(f"shard kind must be one of {KINDS}, got {kind!r}")
    images, labels, n = np.asarray(images), np.asarray(labels), len(meta)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
        raise CocodagError(f"{path.name}: image must be (N, S, S, 3) uint8, got {images.shape} {images.dtype}")
    if labels.dtype != np.uint8 or labels.shape != images.shape[:3]:
        raise CocodagError(f"{path.name}: label must be (N, S, S) uint8 matching images, got {labels.shape} "
                           f"{labels.dtype}")
    if images.shape[0] != n:
        raise CocodagError(f"{path.name}: {images.shape[0]} images but {n} meta records")


def commit_bytes(path: Path, data, before_commit: Callable[[], None] | None = None) -> None:
    """``data`` -> ``path.tmp`` (fsynced) -> ``path`` (the :func:`cocodag.atomic.atomic_write` rename); a full disk is
    one line (``No space left on device: <path>; ...``) and leaves neither file. ``before_commit`` runs after the
    fsync, right before the rename."""
    with disk_errors(path), atomic_write(path, fsync=False) as tmp:
        # <name>.tmp: the name the builder's stale-file cleanup looks for
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_commit is not None:
            before_commit()


def _write_h5(path: Path | io.BytesIO, kind: str, images: np.ndarray, labels: np.ndarray, meta: list[SampleMeta],
              ck: dict[str, Any], extra_attrs: dict[str, Any] | None) -> None:
    n, size = len(meta), images.shape[1]
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs.update(
            format=SHARD_FORMAT, version=SHARD_VERSION, kind=kind, crop_size=size, num_classes=NUM_CLASSES,
            ood_id=OOD_ID, ignore_id=IGNORE_ID, num_samples=n,
        )
        for k, v in (extra_attrs or {}).items():
            f.attrs[k] = v
        # One sample per chunk: a reader pulls whole samples, and contiguous runs map to contiguous chunks.
        f.create_dataset("image", data=images, chunks=(1, size, size, 3) if n else None, **(ck if n else {}))
        f.create_dataset("label", data=labels, chunks=(1, size, size) if n else None, **(ck if n else {}))
        g = f.create_group("meta")
        g.create_dataset("frame", data=np.array([m.frame for m in meta], dtype=object), dtype=h5py.string_dtype())
        g.create_dataset("coco_ann", data=np.array([m.coco_ann for m in meta], dtype=np.int64).reshape(n))
        g.create_dataset("centroid", data=np.array([m.centroid for m in meta], dtype=np.int32).reshape(n, 2))
        g.create_dataset("crop", data=np.array([m.crop for m in meta], dtype=np.int32).reshape(n, 4))
        g.create_dataset("quadrant", data=np.array([m.quadrant for m in meta], dtype=np.uint8).reshape(n))


class ShardWriter:
    """Context manager writing shards then the manifest (last, atomically).

    Use :meth:`write_shard` with explicit indices (deterministic parallel builds) or :meth:`add` to buffer samples
    per kind and flush every ``shard_size``. On exception the manifest is *not* written.
    """

    def __init__(self, out_dir: Path | str, *, crop_size: int, config: dict | None = None, seed: int = 0,
                 shard_size: int = 256, compression: Compression = "none", inputs: dict | None = None):
        self.out_dir = Path(out_dir)
        self.crop_size = int(crop_size)
        self.config = dict(config or {})
        self.seed = int(seed)
        self.shard_size = int(shard_size)
        self.compression = compression
        self.inputs = dict(inputs or {})
        if self.shard_size <= 0:
            raise CocodagError(f"--shard-size must be > 0, got {shard_size}")
        _compression_kwargs(compression)
        self.entries: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}
        self._buf: dict[str, tuple[list, list, list]] = {}
        self._next_index: dict[str, int] = {}

    def __enter__(self) -> ShardWriter:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()

    def write_shard(self, kind: str, index: int, images, labels, meta: list[SampleMeta]) -> dict[str, Any]:
        entry = write_shard(self.out_dir / shard_name(kind, index), kind, images, labels, meta,
                            compression=self.compression)
        self.entries.append(entry)
        self._next_index[kind] = max(self._next_index.get(kind, 0), index + 1)
        return entry

    def add_entry(self, entry: dict[str, Any]) -> None:
        """Record a shard written elsewhere (e.g. by a worker process, or kept from an earlier run)."""
        self.entries.append(entry)

    def add(self, kind: str, image: np.ndarray, label: np.ndarray, **meta) -> None:
        imgs, labs, metas = self._buf.setdefault(kind, ([], [], []))
        imgs.append(image)
        labs.append(label)
        metas.append(SampleMeta(**meta))
        if len(imgs) >= self.shard_size:
            self._flush(kind)

    def _flush(self, kind: str) -> None:
        imgs, labs, metas = self._buf.pop(kind, ([], [], []))
        if not imgs:
            return
        self.write_shard(kind, self._next_index.get(kind, 0), np.stack(imgs), np.stack(labs), metas)

    def finish(self) -> dict[str, Any]:
        for kind in list(self._buf):
            self._flush(kind)
        manifest = build_manifest(self.entries, crop_size=self.crop_size, config=self.config, seed=self.seed,
                                  inputs=self.inputs, extra=self.extra)
        with disk_errors(self.out_dir / MANIFEST_NAME):
            atomic_write_json(self.out_dir / MANIFEST_NAME, manifest)
        return manifest


def build_manifest(entries: Iterable[dict], *, crop_size: int, config: dict, seed: int, inputs: dict | None = None,
                   extra: dict | None = None) -> dict[str, Any]:
    entries = sorted(entries, key=lambda e: (KINDS.index(e["kind"]), e["file"]))
    totals = {k: 0 for k in KINDS}
    for e in entries:
        totals[e["kind"]] += e["num_samples"]
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "crop_size": int(crop_size), "seed": int(seed),
        "config": config, "config_hash": config_hash(config), "inputs": inputs or {},
        "num_classes": NUM_CLASSES, "ood_id": OOD_ID, "ignore_id": IGNORE_ID,
        "class_names": list(TRAIN_CLASS_NAMES), "shards": entries, "totals": totals,
        "versions": library_versions(),
    }
    manifest.update(extra or {})
    return manifest


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class ShardInfo:
    path: Path
    kind: str
    num_samples: int
    sha256: str


@dataclass
class Dataset:
    """A validated cocodag dataset directory (paths and manifest only; h5 files are opened per process on demand)."""

    root: Path
    manifest: dict[str, Any]
    shards: list[ShardInfo] = field(default_factory=list)

    @property
    def crop_size(self) -> int:
        return int(self.manifest["crop_size"])

    @property
    def manifest_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()

    def shards_of(self, kind: str) -> list[ShardInfo]:
        return [s for s in self.shards if s.kind == kind]

    def num_samples(self, kind: str | None = None) -> int:
        return sum(s.num_samples for s in self.shards if kind is None or s.kind == kind)

    def open_shard(self, info: ShardInfo) -> ShardFile:
        return ShardFile(info.path, expected_size=self.crop_size)

    def verify_checksums(self, kinds: Iterable[str] | None = None) -> None:
        for s in self.shards:
            if kinds is not None and s.kind not in kinds:
                continue
            _check_checksum(s, self.shards.index(s))

    def iter_samples(self, kind: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for info in self.shards_of(kind):
            with self.open_shard(info) as sh:
                for i in range(info.num_samples):
                    img, lab = sh.read(i, i + 1)
                    yield img[0], lab[0]


def _check_checksum(s: ShardInfo, index: int) -> None:
    digest = sha256_file(s.path)
    if digest != s.sha256:
        raise CocodagError(
            f"{s.path}: sha256 differs from manifest (corrupt or modified shard); rebuild it by rerunning "
            f"the same `cocodag build` command (a rerun rebuilds every shard that differs from its task record)")


class ShardFile:
    """One open shard. ``read(a, b)`` returns ``(images, labels)`` for samples a..b-1 in one contiguous read."""

    def __init__(self, path: Path | str, expected_size: int | None = None):
        self.path = Path(path)
        try:
            self.h5 = h5py.File(self.path, "r")
        except (OSError, FileNotFoundError) as e:
            raise CocodagError(f"{self.path}: cannot open shard ({e.__class__.__name__}: {e})") from None
        a = self.h5.attrs
        if a.get("format") != SHARD_FORMAT:
            self.h5.close()
            raise CocodagError(f"{self.path.name}: not a cocodag shard (format attr {a.get('format')!r})")
        if int(a.get("version", -1)) != SHARD_VERSION:
            self.h5.close()
            raise CocodagError(f"{self.path.name}: shard version {a.get('version')} is not supported "
                               f"(this cocodag reads version {SHARD_VERSION})")
        try:
            self.image = self.h5["image"]
            self.label = self.h5["label"]
        except KeyError as e:
            self.h5.close()
            raise CocodagError(f"{self.path.name}: missing dataset {e}") from None
        s = int(a["crop_size"])
        if expected_size is not None and s != expected_size:
            raise CocodagError(f"{self.path.name}: crop_size {s} differs from manifest crop_size {expected_size}")
        if (self.image.dtype != np.uint8 or self.image.shape[1:] != (s, s, 3) or self.label.dtype != np.uint8
                or self.label.shape != self.image.shape[:3]):
            raise CocodagError(f"{self.path.name}: bad shapes/dtypes image {self.image.shape} {self.image.dtype}, "
                               f"label {self.label.shape} {self.label.dtype}")
        self.kind = str(a["kind"])
        self.num_samples = int(self.image.shape[0])

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return self.image[start:stop], self.label[start:stop]

    def read_meta(self) -> dict[str, np.ndarray]:
        g = self.h5["meta"]
        out = {k: g[k][()] for k in g.keys()}
        out["frame"] = np.array([x.decode() if isinstance(x, bytes) else str(x) for x in out["frame"]], dtype=object)
        return out

    def close(self) -> None:
        self.h5.close()

    def __enter__(self) -> ShardFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_manifest(root: Path | str) -> dict[str, Any]:
    """Read and check ``root/manifest.json`` (format, version); one-line :class:`CocodagError` otherwise."""
    root = Path(root)
    mpath = root / MANIFEST_NAME
    if not root.is_dir():
        raise CocodagError(f"{root}: dataset directory does not exist")
    if not mpath.is_file():
        raise CocodagError(f"{root}: no {MANIFEST_NAME} (not a cocodag dataset, or its build did not finish; "
                           f"re-run `cocodag build` to resume)")
    try:
        manifest = json.loads(mpath.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CocodagError(f"{mpath}: corrupt or truncated manifest (not valid JSON: {e}); rerun the same "
                           f"`cocodag build` command to rewrite it") from None
    if not isinstance(manifest, dict):
        raise CocodagError(f"{mpath}: corrupt manifest (a JSON {type(manifest).__name__}, expected an object); "
                           f"rerun the same `cocodag build` command to rewrite it")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise CocodagError(f"{mpath}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    if manifest.get("version") != MANIFEST_VERSION:
        raise CocodagError(f"{mpath}: manifest version {manifest.get('version')!r} not supported "
                           f"(expected {MANIFEST_VERSION})")
    return manifest


def _manifest_shards(root: Path, manifest: dict[str, Any]) -> list[ShardInfo]:
    """The manifest's shard list, checked entry by entry (keys, kinds, counts) and against its totals."""
    mpath = root / MANIFEST_NAME
    entries = manifest.get("shards")
    if not isinstance(entries, list):
        raise CocodagError(f"{mpath}: 'shards' must be a list; rerun the same `cocodag build` command to rewrite it")
    shards, totals = [], {k: 0 for k in KINDS}
    for i, e in enumerate(entries):
        ok = (isinstance(e, dict) and isinstance(e.get("file"), str) and e.get("kind") in KINDS
              and isinstance(e.get("sha256"), str) and type(e.get("num_samples")) is int and e["num_samples"] >= 0)
        if not ok:
            raise CocodagError(f"{mpath}: shards[{i}] is malformed (expected file, kind in {KINDS}, num_samples >= 0 "
                               f"and sha256); rerun the same `cocodag build` command to rewrite it")
        p = root / e["file"]
        if not p.is_file():
            raise CocodagError(f"{p}: shard listed in the manifest is missing")
        shards.append(ShardInfo(p, e["kind"], e["num_samples"], e["sha256"]))
        totals[e["kind"]] += e["num_samples"]
    listed = manifest.get("totals", totals)
    for k in KINDS:
        if not isinstance(listed, dict) or listed.get(k, 0) != totals[k]:
            got = listed.get(k) if isinstance(listed, dict) else listed
            raise CocodagError(f"{mpath}: totals[{k}] = {got!r} but its shard entries add up to {totals[k]}; rerun "
                               f"the same `cocodag build` command to rewrite it")
    return shards


def _check_shard_header(info: ShardInfo) -> None:
    """The shard file holds what the manifest says: its kind and its number of samples."""
    with ShardFile(info.path) as sh:
        if sh.kind != info.kind or sh.num_samples != info.num_samples:
            raise CocodagError(
                f"{info.path}: the shard holds {sh.num_samples} {sh.kind} samples but {MANIFEST_NAME} says "
                f"{info.num_samples} {info.kind}; the manifest does not match its shards (rerun the same "
                f"`cocodag build` command to rewrite it)")


def open_dataset(root: Path | str, *, verify_checksums: bool = True, kinds: Iterable[str] | None = None) -> Dataset:
    """Open and validate a dataset directory.

    Checks the manifest (format, version, well-formed shard entries whose counts add up to its totals), that every
    listed shard exists and holds the kind and number of samples the manifest records, and, when
    ``verify_checksums``, each shard's sha256 (restricted to ``kinds`` if given). Raises :class:`CocodagError`.
    """
    root = Path(root)
    manifest = read_manifest(root)
    ds = Dataset(root, manifest, _manifest_shards(root, manifest))
    if verify_checksums:
        ds.verify_checksums(kinds)
    for info in ds.shards:
        _check_shard_header(info)
    return ds
