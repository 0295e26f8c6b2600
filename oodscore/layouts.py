"""Score maps written in the benchmarks' own layouts: ``oodscore evaluate --save-scores LAYOUT:DIR``
(docs/formats.md §4).

=============  ========================================================================================
``smiyc``      ``DIR/anomaly_p/<method>/<dataset>/<frame>.hdf5``, dataset ``value``, float16, gzip: the layout
               the SegmentMeIfYouCan tooling (road-anomaly-benchmark) writes and reads. ``<dataset>`` is the
               logits file's ``dataset`` attribute (``--logits``) or the preset name of ``--dataset`` (``--scores``).
``fishyscapes`` ``DIR/<method>/<frame>_anomaly.npy`` float32 (+ ``<frame>_segmentation.npy``, the argmax of the
               logits as uint8 trainIds, when the run has logits): the Fishyscapes container protocol's names.
``npy``        ``DIR/<method>/<frame>.npy`` float32.
=============  ========================================================================================

Every file is written atomically (:mod:`cocodag.atomic`), by the parent process, in frame order. All three are read
back by :func:`oodscore.io.open_score_maps` (the smiyc ``anomaly_p/<method>/<dataset>`` folder, the fishyscapes or
npy ``<method>`` folder).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from cocodag.atomic import atomic_write
from cocodag.lock import OutputLock
from cocodag.outputs import disk_errors, prepare_output

from . import OodscoreError

Layout = Literal["smiyc", "fishyscapes", "npy"]
LAYOUTS: tuple[str, ...] = get_args(Layout)
SEGMENTATION_KEY = "\0segmentation"     # reserved key of a frame's score dict: the argmax trainIds (uint8)
_OPTION = "--save-scores"


def parse_save_spec(spec: str) -> tuple[str, Path]:
    """``"LAYOUT:DIR"`` -> (layout, DIR); one line listing the valid layouts otherwise."""
    layout, sep, d = str(spec).partition(":")
    if not sep or not d:
        raise OodscoreError(f"{_OPTION} {spec!r}: expected LAYOUT:DIR with LAYOUT one of {', '.join(LAYOUTS)}")
    if layout not in LAYOUTS:
        raise OodscoreError(f"{_OPTION} {spec!r}: unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    return layout, Path(d)


def detect_layouts(d: Path) -> set[str]:
    """The score layouts found in folder ``d`` (empty when none; hidden files and report files are ignored)."""
    found: set[str] = set()
    if not d.is_dir():
        return found
    if (d / "anomaly_p").is_dir():
        found.add("smiyc")
    for sub in d.iterdir():
        if not sub.is_dir() or sub.name.startswith(".") or sub.name in ("anomaly_p", "overlays"):
            continue
        for p in sub.iterdir():
            if p.suffix != ".npy" or not p.is_file():
                continue
            found.add("fishyscapes" if p.stem.endswith(("_anomaly", "_segmentation")) else "npy")
    return found


def check_save_dir(layout: str, d: Path) -> None:
    """Refuse a folder that already holds another layout's score maps; create it (checked as an output)."""
    other = sorted(detect_layouts(d) - {layout})
    if other:
        raise OodscoreError(f"{_OPTION} {layout}:{d}: the folder already holds {' and '.join(other)} score maps; "
                            "choose an empty folder or one of the same layout")
    prepare_output(d, kind="dir", option=_OPTION)


class ScoreSaver:
    """Writes every frame's maps into one or more layouts (``targets``: ``[(layout, DIR)]``), atomically per file.

    ``dataset``: the ``<dataset>`` folder of the smiyc layout. :attr:`wants_segmentation` says whether a frame's
    score dict should carry :data:`SEGMENTATION_KEY` (the fishyscapes layout writes it when present).
    """

    def __init__(self, targets, dataset: str):
        self.targets = [(layout, Path(d)) for layout, d in targets]
        self.dataset = dataset or "dataset"
        self.wants_segmentation = any(layout == "fishyscapes" for layout, _ in self.targets)
        self.written = 0
        for layout, d in self.targets:
            check_save_dir(layout, d)

    @contextlib.contextmanager
    def locked(self, held=()):
        """Hold an :class:`~cocodag.lock.OutputLock` on every target folder while the maps are written, so that two
        jobs never write the same maps (``held``: folders this job has locked already, e.g. its ``--out``)."""
        seen = {Path(h).resolve() for h in held}
        with contextlib.ExitStack() as stack:
            for _, d in self.targets:
                if d.resolve() not in seen:
                    seen.add(d.resolve())
                    stack.enter_context(OutputLock(d, option=_OPTION, kind="dir"))
            yield self

    @classmethod
    def from_specs(cls, specs, dataset: str) -> ScoreSaver | None:
        if not specs:
            return None
        return cls([parse_save_spec(s) for s in specs], dataset)

    def _method_dir(self, layout: str, d: Path, method: str) -> Path:
        md = d / "anomaly_p" / method / self.dataset if layout == "smiyc" else d / method
        md.mkdir(parents=True, exist_ok=True)
        return md

    def write(self, name: str, scores: dict) -> None:
        """Frame ``name``'s maps (``{method: (H, W) score}``, plus :data:`SEGMENTATION_KEY` if computed)."""
        if "/" in name or "\\" in name or name.startswith(".") or not name:
            raise OodscoreError(f"{_OPTION}: frame name {name!r} cannot be a file name")
        seg = scores.get(SEGMENTATION_KEY)
        for layout, d in self.targets:
            with disk_errors(d, option=_OPTION):
                for m, s in scores.items():
                    if m == SEGMENTATION_KEY:
                        continue
                    md = self._method_dir(layout, d, m)
                    if layout == "smiyc":
                        _write_hdf5(md / f"{name}.hdf5", s)
                    elif layout == "fishyscapes":
                        _write_npy(md / f"{name}_anomaly.npy", np.asarray(s, dtype=np.float32))
                        if seg is not None:
                            _write_npy(md / f"{name}_segmentation.npy", np.asarray(seg, dtype=np.uint8))
                    else:
                        _write_npy(md / f"{name}.npy", np.asarray(s, dtype=np.float32))
        self.written += 1


def _write_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_write(path, keep_suffix=True) as tmp:
        np.save(tmp, arr, allow_pickle=False)


def _write_hdf5(path: Path, score: np.ndarray) -> None:
    import h5py

    from .io import SMIYC_DATASET  # io opens HDF5 files: h5py, as above

    with atomic_write(path, keep_suffix=True) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(SMIYC_DATASET, data=np.asarray(score).astype(np.float16), compression="gzip")
