"""oodscore's own file formats: score-map readers and the OODMC model file.

(``logits.h5`` is a contract between two packages and has its own module, :mod:`cocodag.formats.logits`; so do
the SML statistics, :mod:`cocodag.formats.sml_stats`.)

Score maps of any method (``oodscore evaluate --scores PATH --dataset PRESET:ROOT``, docs/formats.md §4) are read by
:func:`open_score_maps`: a directory of ``<name>.npy`` / ``<name>.npz`` / ``<name>.hdf5`` (the SegmentMeIfYouCan
tooling's ``value`` dataset, float16; its ``anomaly_p/<method>/<dataset>`` folder), a directory of the Fishyscapes
container's ``<name>_anomaly.npy`` (its ``<name>_segmentation.npy`` skipped), or a single ``scores.h5`` with
``score`` (N,H,W) and ``image_id`` (N,). :mod:`oodscore.layouts` writes these layouts (``--save-scores``).

The OODMC model file is the model's own: :meth:`OODMC.save <oodscore.scores.oodmc.OODMC.save>` /
:meth:`OODMC.load <oodscore.scores.oodmc.OODMC.load>` write and read it (docs/formats.md §7); :func:`save_oodmc` and
:func:`load_oodmc` here are the same calls.
"""
from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from . import OodscoreError

if TYPE_CHECKING:
    from .scores.oodmc import OODMC

_MAX_LISTED = 5


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


# ---------------------------------------------------------------------------------------------- score maps
SCORE_EXTS = (".npy", ".npz", ".hdf5")
SMIYC_DATASET = "value"          # road-anomaly-benchmark's ChannelLoaderHDF5 var_name (float16 per frame)
FISHYSCAPES_SUFFIX = "_anomaly"                  # Fishyscapes container protocol: <frame>_anomaly.npy
FISHYSCAPES_SEGMENTATION = "_segmentation"       # ... and <frame>_segmentation.npy (skipped when reading scores)


class ScoreMaps:
    """Per-frame anomaly maps of any method, looked up by frame name (higher = more anomalous).

    Use :func:`open_score_maps`. ``names`` lists the frames available; ``get(name)`` returns (H, W) float32.
    """

    def __init__(self, path: Path, names: list[str], files: dict[str, Path] | None = None,
                 h5: h5py.File | None = None):
        self.path = path
        self.names = names
        self._files = files or {}
        self._h5 = h5
        self._row = {n: i for i, n in enumerate(names)} if h5 is not None else {}

    def _check(self, arr: np.ndarray, where: str) -> np.ndarray:
        arr = np.asarray(arr)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2:
            raise OodscoreError(f"{where}: score map has shape {arr.shape}, expected (H, W)")
        if arr.dtype.kind not in "fiub":
            raise OodscoreError(f"{where}: score map has dtype {arr.dtype}, expected a number type")
        return arr.astype(np.float32, copy=False)

    def where(self, name: str) -> str:
        """The file holding frame ``name``'s map (``scores.h5[name]`` for a single file), for error messages."""
        return f"{self.path}[{name!r}]" if self._h5 is not None else str(self._files.get(name, self.path))

    def get(self, name: str) -> np.ndarray:
        """Frame ``name``'s score map as (H, W) float32.

        Raises
        ------
        OodscoreError
            The file cannot be read (naming it), or the map is not a 2-D array of numbers.
        """
        if self._h5 is not None:
            try:
                arr = self._h5["score"][self._row[name]]
            except (OSError, RuntimeError) as e:
                raise OodscoreError(f"{self.where(name)}: cannot read the score map ({str(e).splitlines()[0]}); "
                                    "the file is damaged, write it again") from None
            return self._check(arr, self.where(name))
        p = self._files[name]
        try:
            if p.suffix == ".npy":
                arr = np.load(p, allow_pickle=False)
            elif p.suffix == ".npz":
                with np.load(p, allow_pickle=False) as z:
                    if not z.files:
                        raise OodscoreError(f"{p}: npz file holds no array")
                    arr = z[z.files[0]]
            else:
                with h5py.File(p, "r") as f:
                    if SMIYC_DATASET not in f:
                        raise OodscoreError(f"{p}: no dataset '{SMIYC_DATASET}' (SegmentMeIfYouCan layout); "
                                            f"found {sorted(f.keys())}")
                    arr = f[SMIYC_DATASET][()]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:     # empty, truncated or not an array
            if isinstance(e, OodscoreError):
                raise
            raise OodscoreError(f"{p}: cannot read score map ({type(e).__name__}: "
                                f"{(str(e).splitlines() or [''])[0]}); write it again") from None
        return self._check(arr, str(p))

    def match(self, names: Sequence[str]) -> list[str]:
        """Check that every ground-truth frame has a map; returns the extra map names (not in ``names``).

        Raises
        ------
        OodscoreError
            When maps are missing, naming them with a count.
        """
        have = set(self.names)
        missing = [n for n in names if n not in have]
        if missing:
            raise OodscoreError(f"{self.path}: {len(missing)} of {len(names)} frame(s) have no score map: "
                                f"{_listing(missing)}")
        want = set(names)
        return [n for n in self.names if n not in want]

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()

    def __enter__(self) -> ScoreMaps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_score_maps(path: Path | str) -> ScoreMaps:
    """Open score maps from a directory of ``<name>.npy|.npz|.hdf5`` or one ``scores.h5`` (docs/formats.md §4).

    A directory whose ``.npy`` files are all ``<name>_anomaly.npy`` / ``<name>_segmentation.npy`` (the Fishyscapes
    container layout, ``--save-scores fishyscapes``) gives the frames ``<name>`` of the ``_anomaly`` files.

    Raises
    ------
    OodscoreError
        Path missing, an empty directory, the same name in two formats, or a ``scores.h5`` without
        ``score`` (N,H,W) / ``image_id`` (N,).
    """
    path = Path(path)
    if path.is_dir():
        files: dict[str, Path] = {}
        found = [p for p in sorted(path.iterdir()) if p.suffix in SCORE_EXTS and p.is_file()]
        npy = [p.stem for p in found if p.suffix == ".npy"]
        # the Fishyscapes container layout: <frame>_anomaly.npy (+ <frame>_segmentation.npy, not a score map)
        fishyscapes = (any(s.endswith(FISHYSCAPES_SUFFIX) for s in npy)
                       and all(s.endswith((FISHYSCAPES_SUFFIX, FISHYSCAPES_SEGMENTATION)) for s in npy))
        for p in found:
            stem = p.stem
            if fishyscapes and p.suffix == ".npy":
                if stem.endswith(FISHYSCAPES_SEGMENTATION):
                    continue
                stem = stem[:-len(FISHYSCAPES_SUFFIX)]
            if stem in files:
                raise OodscoreError(f"{path}: frame {stem!r} has two score files "
                                    f"({files[stem].name}, {p.name}); keep one")
            files[stem] = p
        if not files:
            raise OodscoreError(f"{path}: no score maps (<name>.npy, .npz or .hdf5) in this directory")
        return ScoreMaps(path, sorted(files), files=files)
    if path.is_file():
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise OodscoreError(f"{path}: not a readable HDF5 file ({str(e).splitlines()[0]})") from None
        try:
            if "score" not in f or "image_id" not in f:
                raise OodscoreError(f"{path}: expected datasets 'score' (N,H,W) and 'image_id' (N,), "
                                    f"found {sorted(f.keys())}")
            score, ids = f["score"], f["image_id"]
            if score.ndim != 3 or ids.shape != (score.shape[0],):
                raise OodscoreError(f"{path}: 'score' has shape {score.shape} and 'image_id' {ids.shape}; "
                                    "expected (N, H, W) and (N,)")
            names = [s.decode() if isinstance(s, bytes) else str(s) for s in ids[()]]
            if len(set(names)) != len(names):
                raise OodscoreError(f"{path}: 'image_id' has duplicated names")
        except BaseException:
            f.close()
            raise
        return ScoreMaps(path, names, h5=f)
    raise OodscoreError(f"{path}: score path not found (expected a directory of score maps or a scores.h5 file)")


# ---------------------------------------------------------------------------------------------- OODMC model
def save_oodmc(model: OODMC, path: Path | str) -> Path:
    """``model.save(path)``: write a fitted OODMC atomically (see :meth:`OODMC.save`)."""
    return model.save(path)


def load_oodmc(path: Path | str, *, allow_pickle: bool = False) -> OODMC:
    """``OODMC.load(path)``: read an OODMC model file (see :meth:`OODMC.load`; ``allow_pickle`` reads the pickles of
    version 1, for files you trust only)."""
    from .scores.oodmc import OODMC  # torch and sklearn: reading score maps (this module's main use) needs neither

    return OODMC.load(path, allow_pickle=allow_pickle)
