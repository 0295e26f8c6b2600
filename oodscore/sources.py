"""Where an evaluation's frames come from: a ``logits.h5`` file scored by the methods' scorers, or saved score maps
matched by frame name to an evaluation set.

A frame is ``(name, label, {method: (H, W) score map}, RGB image | None)``, as :func:`oodscore.report.evaluate_frames`
takes it. For ``--workers N`` each source is also a picklable object (:class:`_LogitsSource`,
:class:`_ScoreMapsSource`) whose ``open(stack)`` gives ``(frame(i), describe(name))`` in a worker process
(:mod:`oodscore.workers`). :func:`build_scorers` makes the methods' scorers from the evaluation's options, checking up
front what each needs (stats file, model file, the MC-dropout block).

A logits file with an abstention channel (``LogitsFile.abstention_channel``: PEBAL, Balanced Energy) hands the
scorers its C class channels only, here, where frames are handed to them (:data:`_INPUT_READERS`): the abstention
channel is no class, so every class-based score sees what it means (and the argmax segmentation never picks it).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cocodag.errors import CocodagError
from cocodag.formats.evalsets import parse_dataset_spec
from cocodag.formats.logits import LogitsFile, class_logits, class_mc
from cocodag.imageio import read_rgb
from cocodag.labels import IGNORE_ID

from . import OodscoreError
from .io import open_score_maps
from .layouts import SEGMENTATION_KEY
from .options import EvalOptions
from .plots import _resize
from .scores import check_methods, get_scorer, scorer_class

__all__ = ["build_scorers"]


def _apply_region(label: np.ndarray, roi: np.ndarray | None, region: str, name: str) -> np.ndarray:
    """``label`` with every pixel outside the roi void (``region="road"``), or as it is (``"all"``)."""
    if region == "all":
        return label
    if roi is None:
        raise OodscoreError(f"frame {name!r}: --region road needs a roi mask, but none is available")
    return np.where(roi != 0, label, np.uint8(IGNORE_ID)).astype(np.uint8)


# ------------------------------------------------------------------------------------------------- scorers
def _load_sml_stats(path: Path | None, num_classes: int, methods: Sequence[str]):
    """The ``stats`` parameter of the scorers that take one, read once from ``--sml-stats``."""
    from .scores import SMLStats  # the scorers' module: torch, only when a method takes stats

    if path is None:
        raise OodscoreError(f"method(s) {', '.join(methods)}: need --sml-stats FILE (from `oodscore fit-sml`)")
    if Path(path).is_dir():
        raise OodscoreError(f"--sml-stats {path}: is a folder, expected the JSON file of `oodscore fit-sml`")
    if not Path(path).is_file():
        raise OodscoreError(f"--sml-stats {path}: file not found")
    stats = SMLStats.load(path)
    stats_classes = int(np.asarray(stats.mean_).shape[0]) if hasattr(stats, "mean_") else num_classes
    if stats_classes != num_classes:
        raise OodscoreError(f"--sml-stats {path}: stats have {stats_classes} classes, the logits have {num_classes}")
    return stats


def _load_model_file(method: str, cls, path: Path | None):
    """A scorer fitted and saved on its own (OODMC), from ``--<method>-model`` (written by ``fit-<method>``)."""
    if path is None:
        raise OodscoreError(f"method {method} needs --{method}-model FILE (from `oodscore fit-{method}`)")
    if not Path(path).is_file():
        raise OodscoreError(f"--{method}-model {path}: file not found")
    return cls.load(path)


def _check_model_classes(method: str, scorer, path: Path | None, num_classes: int) -> None:
    """A model fitted on logits of another class count would fail on every frame: refuse it up front."""
    fitted = getattr(scorer, "num_classes_", None)
    if fitted is not None and int(fitted) != num_classes:
        raise OodscoreError(f"--{method}-model {path}: fitted on {int(fitted)} classes, the logits have "
                            f"{num_classes}; fit it on logits of the same model (`oodscore fit-{method}`)")


def _path(p: Path | str | None) -> Path | None:
    return Path(p) if p else None


def build_scorers(methods: Sequence[str], options: EvalOptions, *, num_classes: int, has_mc: bool) -> dict:
    """Instantiate each method's scorer, checking at once what it needs (stats file, model, MC data).

    What a method needs is asked of its scorer class: ``requires`` (its per-frame input; ``"mc"`` needs the
    file's mc/* block), its ``__init__`` parameters (filled by name from the options ``device``,
    ``boundary_iters``, ``smoothing``, ``border`` = ``sml_border``, ``boundary_width`` (sml, vde), ``temperature``
    (energy, msp-t), ``threshold`` = ``vde_threshold`` and ``stats`` = the ``sml_stats`` file); methods with a model
    file of their own (``oodmc_model``) are loaded from it. ``None`` options leave the scorer's defaults; a scorer
    option that none of the methods takes is an error.
    """
    classes = {m: scorer_class(m) for m in check_methods(methods)}
    for m, cls in classes.items():
        if cls.requires == "mc" and not has_mc:
            raise OodscoreError(f"method {m} needs MC-dropout data (mc/*) in the logits file; "
                                "export with --mc-samples T --moment-order K")
    model_files = {"oodmc": _path(options.oodmc_model)}
    with_stats = [m for m, cls in classes.items() if "stats" in cls.param_names()]
    params = {"device": options.device, "boundary_iters": options.boundary_iters, "smoothing": options.smoothing,
              "threshold": options.vde_threshold, "border": options.sml_border,
              "boundary_width": options.boundary_width, "temperature": options.temperature,
              "stats": _load_sml_stats(_path(options.sml_stats), num_classes, with_stats) if with_stats else None}
    for opt, flag in (("border", "--sml-border"), ("boundary_width", "--boundary-width"),
                      ("temperature", "--temperature")):
        if params[opt] is not None and not any(opt in cls.param_names() for cls in classes.values()):
            raise OodscoreError(f"{flag}: none of the methods {', '.join(classes)} takes it")
    scorers = {}
    for m, cls in classes.items():
        path = model_files.get(m)
        if m in model_files:
            scorers[m] = _load_model_file(m, cls, path)
            _check_model_classes(m, scorers[m], path, num_classes)
        else:
            scorers[m] = get_scorer(m, **{k: v for k, v in params.items() if k in cls.param_names()})
    return scorers


# ------------------------------------------------------------------------------------------------- logits
#: how a logits file's frame ``i`` gives each kind of scorer input (``Scorer.requires``): the class channels only
_INPUT_READERS = {
    "logits": lambda lf, i, frame: class_logits(frame.logits, lf.abstention_channel),
    "mc": lambda lf, i, frame: class_mc(lf.mc(i), lf.abstention_channel),
}


def _score_frame(lf, i: int, image_id: str, scorers: dict, inputs: dict, size: tuple[int, int]) -> dict:
    """Every method's score map of frame ``i``; a scorer's error (NaN / inf logits, ...) names the file and frame."""
    scores = {}
    for m, sc in scorers.items():
        try:
            scores[m] = np.asarray(sc.score(inputs[sc.requires], size=size), dtype=np.float32)
        except CocodagError as e:
            raise OodscoreError(f"{lf.path}: frame {i} ({image_id!r}), {m}: {e}") from None
    return scores


def _logits_frame(lf, scorers: dict, region: str, overlay_at: frozenset[int], i: int, segmentation: bool = False
                  ) -> tuple:
    """Frame ``i`` of a ``LogitsFile``, every method's scores computed (``segmentation``: plus the argmax trainIds
    under ``layouts.SEGMENTATION_KEY``, for --save-scores)."""
    kinds = {sc.requires for sc in scorers.values()} | ({"logits"} if segmentation else set())
    fr = lf.frame(i, image=i in overlay_at)
    label = _apply_region(fr.label, fr.roi, region, fr.image_id)
    inputs = {k: _INPUT_READERS[k](lf, i, fr) for k in kinds}
    scores = _score_frame(lf, i, fr.image_id, scorers, inputs, label.shape)
    if segmentation:
        scores[SEGMENTATION_KEY] = np.argmax(inputs["logits"], axis=0).astype(np.uint8)
    return fr.image_id, label, scores, fr.image


def _logits_frames(lf, scorers: dict, region: str, overlay_at: frozenset[int], segmentation: bool = False
                   ) -> Callable[[], Iterable[tuple]]:
    """The ``frames()`` callable of :func:`oodscore.report.evaluate_frames` for a ``LogitsFile``: scores every
    frame on the fly."""
    def frames():
        for i in range(len(lf)):
            yield _logits_frame(lf, scorers, region, overlay_at, i, segmentation)

    return frames


@dataclass(frozen=True)
class _LogitsSource:
    """What a worker process needs to score frames of a logits file itself (see :mod:`oodscore.workers`)."""

    path: str
    methods: tuple
    options: EvalOptions   # build_scorers' options (the file's own num_classes / has_mc come from the file)
    region: str
    overlay_at: frozenset
    segmentation: bool = False

    def open(self, stack):
        lf = stack.enter_context(LogitsFile(self.path))
        scorers = build_scorers(self.methods, self.options, num_classes=lf.num_classes, has_mc=lf.has_mc)
        return ((lambda i: _logits_frame(lf, scorers, self.region, self.overlay_at, i, self.segmentation)),
                (lambda _n: str(lf.path)))


# ------------------------------------------------------------------------------------------------- score maps
def _overlay_image(path: Path) -> np.ndarray | None:
    """The RGB image under an overlay, or None when it cannot be read (the frame is then drawn without one)."""
    try:
        return read_rgb(path)
    except CocodagError:
        return None


def _score_map_frame(maps, preset, it, region: str, method: str, resize: bool, with_image: bool) -> tuple:
    """One frame of an evaluation set with its saved score map."""
    label = preset.load_label(it.label_path)
    roi = preset.load_roi(it) if region == "road" else None
    label = _apply_region(label, roi, region, it.name)
    s = maps.get(it.name)
    if s.shape != label.shape:
        if not resize:
            raise OodscoreError(f"{maps.path}: score map of {it.name!r} is {s.shape[0]}x{s.shape[1]}, "
                                f"label is {label.shape[0]}x{label.shape[1]} (pass --resize-scores to "
                                "resize bilinearly)")
        s = _resize(s, label.shape)
    image = _overlay_image(it.image_path) if with_image else None
    return it.name, label, {method: s}, image


def _method_of(path: Path) -> str:
    """The default method name of saved maps: ``<method>`` of a SMIYC ``anomaly_p/<method>/<dataset>`` folder, else
    the path's name."""
    if path.parent.parent.name == "anomaly_p" and path.parent.name:
        return path.parent.name
    return path.stem or "scores"


@dataclass(frozen=True)
class _ScoreMapsSource:
    """What a worker process needs to read frames and score maps itself (see :mod:`oodscore.workers`)."""

    scores_path: str
    dataset: str
    method: str
    region: str
    resize: bool
    overlay_at: frozenset

    def open(self, stack):
        preset, root = parse_dataset_spec(self.dataset)
        items = preset.find(root)
        maps = stack.enter_context(open_score_maps(self.scores_path))
        return (lambda i: _score_map_frame(maps, preset, items[i], self.region, self.method, self.resize,
                                           i in self.overlay_at)), maps.where
