"""Checkpoint helpers: strip DataParallel/DDP prefixes, load state_dicts strictly with a readable report."""
from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from .. import MaxentError

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")


@dataclass
class LoadReport:
    """What ``load_checkpoint`` found: keys that did not line up (empty lists when everything matched)."""

    path: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, in model, in file)
    loaded: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self) -> str:
        """One line: counts plus the first few offending keys of each kind."""
        parts = []

        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f", ... (+{len(keys) - 4})" if len(keys) > 4 else "")

        if self.shape_mismatch:
            items = [f"{k} model {tuple(a)} vs file {tuple(b)}" for k, a, b in self.shape_mismatch]
            parts.append(f"{len(items)} shape mismatch(es): {few(items)}")
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {few(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {few(self.unexpected)}")
        return "; ".join(parts) if parts else f"all {self.loaded} tensors matched"


def clean_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the ``module.`` prefix that ``nn.DataParallel`` / DDP add (and ``_orig_mod.`` of ``torch.compile``)."""
    out = {}
    for k, v in state_dict.items():
        stripped = True
        while stripped:  # prefixes may nest (a compiled DDP model: "_orig_mod.module.")
            stripped = False
            for prefix in ("module.", "_orig_mod."):
                if k.startswith(prefix):
                    k, stripped = k[len(prefix):], True
        out[k] = v
    return out


def _extract_state_dict(obj, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:  # {"state_dict": ...} (meta-ood), {"model": ...} (our trainer, many others)
            if key in obj and isinstance(obj[key], Mapping):
                return obj[key]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    keys = list(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__
    raise MaxentError(f"{path}: no state_dict found (expected a dict of tensors or a dict with one of "
                      f"{list(_WRAPPER_KEYS)}; got {keys})")


def _what_is(path: Path) -> str:
    """What a file that torch cannot load looks like (for the error message)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "an empty file"
    for magic, what in ((b"\x89HDF", "an HDF5 file"), (b"\x93NUMPY", "a NumPy .npy file"),
                        (b"PK", "a zip archive without torch.save's layout"), (b"\x89PNG", "a PNG image"),
                        (b"\xff\xd8", "a JPEG image")):
        if head.startswith(magic):
            return what
    text = head.decode("utf-8", errors="replace")      # a cut multi-byte character at the end is fine
    if all(c.isprintable() or c in "\t\r\n" for c in text) and text.count("\ufffd") <= 1:
        return "a text file"
    return "an unknown binary file"


def _is_torch_zip(path: Path) -> bool:
    """Whether ``path`` is a zip archive laid out as ``torch.save`` writes it (``<name>/data.pkl``)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/data.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_file(path: str | Path):
    """``torch.load(path, weights_only=True)`` on CPU with one-line errors (missing, not a torch file, corrupt,
    needs unpickling). Never retries with ``weights_only=False`` (that would execute code from the file)."""
    path = Path(path)
    if path.is_dir():
        raise MaxentError(f"checkpoint {path} is a folder; pass a checkpoint file (e.g. {path / 'model-final.pt'})")
    if not path.is_file():
        raise MaxentError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():     # a plain pickle.dump of protocol > 2: the error below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:      # a file given as a checkpoint: any failure to parse it is the input's fault
        raise _unreadable(path, e) from None


def _unreadable(path: Path, e: Exception) -> MaxentError:
    """The one-line error for a file ``torch.load(weights_only=True)`` failed on, by what the file is."""
    msg = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
    if "weights only load failed" in msg.lower() and _is_torch_zip(path):
        # never retry with weights_only=False: that would execute code from the file
        return MaxentError(f"{path}: refused: not a plain tensor checkpoint (loading it would need unpickling "
                           f"arbitrary objects); save `model.state_dict()` (or {{'state_dict': ...}})")
    if _is_pickle(path):
        return MaxentError(f"{path}: not a PyTorch checkpoint (torch.save zip archive); legacy pickled "
                           f"checkpoints are refused: re-save the state_dict with a current torch")
    what = _what_is(path)
    if _is_torch_zip(path) or (what.startswith("a zip") and not zipfile.is_zipfile(path)):
        return MaxentError(f"{path}: cannot read checkpoint ({msg[:200]}); the file is damaged or truncated, "
                           "use another copy")
    return MaxentError(f"{path}: not a torch checkpoint ({what}, not a file written by torch.save); pass a model "
                       "checkpoint (model-final.pt, checkpoint-last.pt or a saved state_dict)")


def _is_pickle(path: Path) -> bool:
    """A raw pickle (protocol 2+ starts with 0x80): torch's legacy format or a plain ``pickle.dump``."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (``weights_only=True``) and return its cleaned state_dict."""
    return clean_state_dict(_extract_state_dict(load_file(path), Path(path)))


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load a checkpoint into ``model`` and report key mismatches.

    Parameters
    ----------
    model : torch.nn.Module
        Target model (not wrapped in DataParallel/DDP; pass ``model.module`` otherwise).
    path : str or Path
        A plain state_dict, or a dict holding one under ``state_dict`` / ``model`` (meta-ood's checkpoints are
        ``{"state_dict": ...}`` of a DataParallel model: the ``module.`` prefix is stripped).
    strict : bool, default=True
        Raise ``MaxentError`` on any missing/unexpected key or shape mismatch. With ``strict=False`` the tensors that
        match are loaded, the others are skipped and listed in the returned report (never silently).

    Returns
    -------
    LoadReport
    """
    state = read_state_dict(path)
    own = model.state_dict()
    report = LoadReport(path=str(path))
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    report.shape_mismatch = [(k, tuple(own[k].shape), tuple(state[k].shape))
                             for k in own if k in state and own[k].shape != state[k].shape]
    if strict and not report.ok:
        hint = ""
        nc = getattr(model, "num_classes", None)
        file_nc = {b[0] for _, a, b in report.shape_mismatch if a and b and a[0] == nc and b[0] != nc}
        if nc is not None and len(file_nc) == 1:  # the classifier's output dim differs: say it plainly
            hint = f" (class count: model has {nc} classes, checkpoint has {file_nc.pop()})"
        raise MaxentError(f"{path}: checkpoint does not match the model: {report.summary()}{hint}")
    bad = {k for k, _, _ in report.shape_mismatch}
    usable = {k: v for k, v in state.items() if k in own and k not in bad}
    model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    return report
