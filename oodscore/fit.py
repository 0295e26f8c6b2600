"""Fitting runs over a training ``logits.h5`` file: SML statistics and the OODMC classifier (one frame at a time).

The estimators themselves (:class:`~cocodag.formats.sml_stats.SMLStats`, :class:`~oodscore.scores.oodmc.OODMC`)
take arrays; this module streams a file into them, for ``oodscore fit-sml`` / ``oodscore fit-oodmc``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cocodag.device import resolve_device
from cocodag.errors import CocodagError
from cocodag.formats.logits import LogitsFile, class_logits, class_mc
from cocodag.formats.sml_stats import SMLStats
from cocodag.progress import progress_bar

from . import OodscoreError

if TYPE_CHECKING:
    from .scores.oodmc import OODMC


def fit_sml(logits_path: Path | str, *, device: str | None = None, progress: bool = True) -> SMLStats:
    """SML statistics over every pixel of every frame of ``logits_path``, grouped by predicted class (docs/methods.md
    §4.3).

    Parameters
    ----------
    device : str, optional
        ``"auto"``, ``"cpu"`` or ``"cuda[:i]"`` for the per-frame max/argmax; default: numpy on the CPU.

    Raises
    ------
    OodscoreError / CocodagError
        An unreadable or malformed logits file, or a bad device.
    """
    dev = None if device is None else resolve_device(device, option="device")
    with LogitsFile(logits_path) as lf:
        stats = SMLStats(num_classes=lf.num_classes, source=str(logits_path))
        for i in progress_bar(range(len(lf)), desc="fit-sml", unit="frame", disable=not progress):
            batch = class_logits(lf.logits(i), lf.abstention_channel)[None]     # labels: not used (nor read)
            x = batch if dev is None else torch.from_numpy(batch).to(dev)
            try:
                stats.update(x)
            except CocodagError as e:       # e.g. NaN / inf logits: say which file and frame
                raise OodscoreError(f"{lf.path}: frame {i} ({lf.image_ids[i]!r}): {e}") from None
    return stats


def fit_oodmc(logits_path: Path | str, *, classifier: str | None = None, progress: bool = True,
              **params) -> OODMC:
    """Fit :class:`~oodscore.scores.oodmc.OODMC` on the MC-dropout block (``mc/*``) and labels of ``logits_path``.

    ``classifier`` names the classifier (``oodscore fit-oodmc --classifier``: one of
    :data:`~oodscore.scores.oodmc.CLASSIFIER_NAMES`, default ``linear-svc``); ``params`` go to ``OODMC``
    (``estimator`` instead of ``classifier``, ``svm_points_num``, ``moment_weight``, ``random_state``, ...);
    ``moments_of`` is taken from the file's ``mc`` attributes (``"logits"`` when it records none).

    Raises
    ------
    OodscoreError
        An unknown classifier name, the file has no MC-dropout data, or the fit fails (bad parameters, a class
        missing, ...).
    """
    from .scores.oodmc import OODMC, make_classifier  # sklearn: fit-sml does not pay for it

    if classifier is not None:
        if params.get("estimator") is not None:
            raise OodscoreError("fit_oodmc: give classifier (a name) or estimator (an object), not both")
        params["estimator"] = make_classifier(classifier)
    with LogitsFile(logits_path) as lf:
        if not lf.has_mc:
            raise OodscoreError(f"{logits_path}: no mc/* datasets; export with --mc-samples T --moment-order K")
        model = OODMC(moments_of=lf.mc_attrs.get("moments_of", "logits"), **params)
        at: dict[str, int | None] = {"frame": -1}   # the frame being fitted: -1 before the first, None after the last

        def frames():
            for i in progress_bar(range(len(lf)), desc="fit-oodmc", unit="frame", disable=not progress):
                at["frame"] = i
                yield class_mc(lf.mc(i), lf.abstention_channel), lf.label(i)
            at["frame"] = None

        try:
            return model.fit(frames())
        except OodscoreError as e:      # the model only sees arrays: say which file (and frame)
            i = at["frame"]
            if i == -1:                 # refused before reading anything (its parameters): nothing to add
                raise
            where = f"{lf.path}: frame {i} ({lf.image_ids[i]!r})" if i is not None else str(lf.path)
            raise OodscoreError(f"{where}: {e}") from None
