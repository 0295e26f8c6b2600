"""Fitting runs over a training ``logits.h5`` file: SML statistics and the OODMC classifier (one frame at a time).

The estimators themselves (:class:`~cocodag.formats.sml_stats.SMLStats`, :class:`~oodscore.scores.oodmc.OODMC`)
take arrays; this module streams a file into them, for ``oodscore fit-sml`` / ``oodscore fit-oodmc``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from . import OodscoreError

if TYPE_CHECKING:
    from .scores import OODMC, SMLStats


def fit_sml(logits_path: Path | str, *, device: str | None = None, progress: bool = True) -> "SMLStats":
    """SML statistics over every pixel of every frame of ``logits_path``, grouped by predicted class (DESIGN §4.4).

    Parameters
    ----------
    device : str, optional
        ``"auto"``, ``"cpu"`` or ``"cuda[:i]"`` for the per-frame max/argmax; default: numpy on the CPU.

    Raises
    ------
    OodscoreError / CocodagError
        An unreadable or malformed logits file, or a bad device.
    """
    from tqdm import tqdm

    from cocodag.formats.logits import LogitsFile

    from .scores import SMLStats
    from .scores.base import resolve_device

    dev = resolve_device(device)
    with LogitsFile(logits_path) as lf:
        stats = SMLStats(num_classes=lf.num_classes, source=str(logits_path))
        for i in tqdm(range(len(lf)), desc="fit-sml", unit="frame", disable=not progress):
            x = lf.frame(i, image=False).logits[None]
            if dev is not None:
                import torch

                x = torch.from_numpy(x).to(dev)
            stats.partial_fit(x)
    return stats


def fit_oodmc(logits_path: Path | str, *, progress: bool = True, **params) -> "OODMC":
    """Fit :class:`~oodscore.scores.oodmc.OODMC` on the MC-dropout block (``mc/*``) and labels of ``logits_path``.

    ``params`` go to ``OODMC`` (``classifier``, ``svm_points_num``, ``moment_weight``, ``random_state``, ...);
    ``moments_of`` is taken from the file's ``mc`` attributes (``"logits"`` when it records none).

    Raises
    ------
    OodscoreError
        The file has no MC-dropout data, or the fit fails (bad parameters, a class missing, ...).
    """
    from tqdm import tqdm

    from cocodag.formats.logits import LogitsFile

    from .scores import OODMC

    with LogitsFile(logits_path) as lf:
        if not lf.has_mc:
            raise OodscoreError(f"{logits_path}: no mc/* datasets; export with --mc-samples T --moment-order K")
        model = OODMC(moments_of=lf.mc_attrs.get("moments_of", "logits"), **params)
        frames = ((lf.mc(i), lf.label(i))
                  for i in tqdm(range(len(lf)), desc="fit-oodmc", unit="frame", disable=not progress))
        return model.fit(frames)
