"""Checkpoint reading: released files taken as they are, loaded strictly, every failure one line.

The path of a file to a model (:func:`load_checkpoint`, or :func:`read_checkpoint` + :func:`load_state`):

1. ``torch.load(weights_only=True)`` with numpy scalars allowed (:func:`load_file`; zip or pre-1.6 format; a file
   that needs any other global is refused, naming it; nothing in it is executed);
2. the state_dict found under its wrapper (``state_dict`` / ``model_state`` / ``model_state_dict`` / ``model`` /
   ``net``, nested allowed) and its wrapper prefixes stripped (:func:`clean_state_dict`);
3. training-only ``criterion*`` entries dropped (a one-line note on stderr);
4. the model's registered ``checkpoint_filter`` (``register_model(checkpoint_filter=...)``) renames an upstream
   layout to the model's key names;
5. a strict load: any difference is one line naming the first keys and, when the keys look like another family's,
   the ``--model`` that fits (:func:`guess_family`).
"""
from __future__ import annotations

import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .. import MaxentError
from ._registry import checkpoint_filter_for

try:
    from numpy._core.multiarray import scalar
except ImportError:       # numpy < 2
    from numpy.core.multiarray import scalar  # type: ignore[no-redef]

#: where released checkpoints keep their state_dict: meta-ood/NVIDIA/SML ``state_dict``, VainF ``model_state``, our
#: trainer and PEBAL ``model``, others ``model_state_dict`` / ``net``; looked up in this order, nested allowed
_WRAPPER_KEYS = ("state_dict", "model_state", "model_state_dict", "model", "net")
_PER_KEY_PREFIXES = ("module.", "_orig_mod.")
_WHOLE_PREFIXES = ("branch1.",)
#: first key component prefixes of training-only entries (loss modules) dropped before a load
_TRAINING_ONLY = ("criterion",)


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
    """Strip wrapper prefixes from the keys of a state_dict.

    * ``module.`` (``nn.DataParallel`` / DDP) and ``_orig_mod.`` (``torch.compile``), on every key, nested in any
      order (a compiled DDP model: ``_orig_mod.module.``);
    * ``branch1.`` (PEBAL's ``Network`` holds its DeepWV3Plus as ``branch1``), only when every key of the network
      (training-only ``criterion*`` entries aside) carries it: a model of ours with a ``branch1`` child keeps it.
    """
    out = {}
    for k, v in state_dict.items():
        stripped = True
        while stripped:  # prefixes may nest (a compiled DDP model: "_orig_mod.module.")
            stripped = False
            for prefix in _PER_KEY_PREFIXES:
                if k.startswith(prefix):
                    k, stripped = k[len(prefix):], True
        out[k] = v
    network = [k for k in out if not _is_training_only(k)]
    for prefix in _WHOLE_PREFIXES:
        if network and all(k.startswith(prefix) for k in network):
            out = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in out.items()}
    return out


def _is_training_only(key: str) -> bool:
    """A loss module's entry saved with the network (NVIDIA: ``criterion.nll_loss.weight``; SML: ``criterion_aux.``)."""
    return key.split(".", 1)[0].startswith(_TRAINING_ONLY)


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _extract_state_dict(obj, path: Path) -> Mapping[str, torch.Tensor]:
    """The state_dict inside a checkpoint object: the object itself, or under one of ``_WRAPPER_KEYS`` (nested:
    ``{'model': {'state_dict': ...}}``), the first wrapper key present winning at each level."""
    seen = obj
    for _ in range(4):  # wrappers nest a few levels at most
        if _is_state_dict(seen):
            return seen
        if not isinstance(seen, Mapping):
            break
        inner = next((seen[k] for k in _WRAPPER_KEYS if isinstance(seen.get(k), Mapping)), None)
        if inner is None:
            break
        seen = inner
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


def _numpy_safe_globals() -> list:
    """Exactly the numpy names a checkpoint's numpy *scalars* unpickle through (NVIDIA's ``mean_iu``, VainF's
    ``best_score``): ``multiarray.scalar`` (under numpy 2's and numpy 1's module path), ``numpy.dtype`` and the
    numeric dtype classes. No array reconstruction, no object dtype: nothing that can call arbitrary code."""
    codes = np.typecodes["AllInteger"] + np.typecodes["AllFloat"] + "?"
    dtype_classes = sorted({type(np.dtype(c)) for c in codes}, key=lambda t: t.__name__)
    return [(scalar, "numpy._core.multiarray.scalar"), (scalar, "numpy.core.multiarray.scalar"), np.dtype,
            *dtype_classes]


def load_file(path: str | Path):
    """``torch.load(path, weights_only=True)`` on CPU with one-line errors (missing, not a torch file, corrupt,
    needs unpickling). Numpy scalars (and their dtypes) are allowed through torch's weights-only allow-list; both the
    zip format and torch's pre-1.6 ("legacy") format load. Never retries with ``weights_only=False`` (that would
    execute code from the file)."""
    path = Path(path)
    if path.is_dir():
        raise MaxentError(f"checkpoint {path} is a folder; pass a checkpoint file (e.g. {path / 'model-final.pt'})")
    if not path.is_file():
        raise MaxentError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():     # a plain pickle.dump of protocol > 2: the error below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:      # a file given as a checkpoint: any failure to parse it is the input's fault
        raise _unreadable(path, e) from None


def _offending_global(message: str) -> str | None:
    """The global a weights-only load refused, as torch's UnpicklingError names it (None when it names none)."""
    for pattern in (r"GLOBAL ([\w.]+)", r"types allowlisted via `add_safe_globals`, but got <class '([\w.]+)'>"):
        m = re.search(pattern, message)
        if m:
            return m.group(1)
    return None


def _unreadable(path: Path, e: Exception) -> MaxentError:
    """The one-line error for a file ``torch.load(weights_only=True)`` failed on, by what the file is."""
    full = str(e).strip()
    msg = full.splitlines()[0].split(". ")[0] if full else type(e).__name__
    offending = _offending_global(full)
    if offending is not None:
        # never retry with weights_only=False: that would execute code from the file
        return MaxentError(f"{path}: refused: not a plain tensor checkpoint (loading it would need unpickling "
                           f"{offending}, which is not on the weights-only allow-list: unpickling arbitrary objects "
                           f"can run code; nothing was executed); save `model.state_dict()` "
                           f"(or {{'state_dict': ...}}) with tensors, numbers and strings only")
    if _is_pickle(path):
        detail = [ln.strip() for ln in full.splitlines() if ln.strip() and "weights_only" not in ln]
        why = (detail[0] if detail else msg)[:160]
        return MaxentError(f"{path}: not a PyTorch checkpoint (a pickle torch.load(weights_only=True) cannot read: "
                           f"{why}); legacy pickled checkpoints are refused when they are not torch.save files of "
                           f"tensors and numbers: re-save the state_dict with torch.save")
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


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint file once: ``(cleaned state_dict, metadata)``.

    ``metadata`` is the ``metadata`` dict our trainer writes (``model``, ``num_classes``, ``model_kwargs``, ...), or
    ``{}`` for a released file (which carries none).
    """
    obj = load_file(path)
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    return clean_state_dict(_extract_state_dict(obj, Path(path))), dict(meta) if isinstance(meta, Mapping) else {}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (``weights_only=True``) and return its cleaned state_dict."""
    return read_checkpoint(path)[0]


# ----------------------------------------------------------------------------------------------- which family
def _has(keys: set[str], *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def _our_deeplab_depth(keys: set[str]) -> str:
    """resnet18/50/101 of our DeepLabV3+ from its layer3 block count (2, 6, 23)."""
    blocks = {int(k.split(".")[2]) for k in keys if k.startswith("backbone.layer3.") and k.split(".")[2].isdigit()}
    return {2: "resnet18", 6: "resnet50", 23: "resnet101"}.get(len(blocks), "resnet*")


def guess_family(keys) -> tuple[str, str] | None:
    """``(what the state_dict looks like, the --model to load it with)`` from characteristic key names (cleaned
    keys: no ``module.``), or None when no known family fits."""
    ks = set(keys)
    if _has(ks, "mod1.", "mod2.") and _has(ks, "aspp."):
        return "an NVIDIA DeepWV3Plus (WideResNet-38: meta-ood, PEBAL) checkpoint", "deeplabv3plus_wrn38"
    if _has(ks, "layer0.", "dsn."):
        return "an SML DeepR101V3PlusD_OS8 checkpoint", "deeplabv3plus_resnet101_sml"
    if _has(ks, "backbone.") and _has(ks, "classifier.aspp", "classifier.classifier"):
        if _has(ks, "backbone.low_level_features", "backbone.high_level_features", "backbone.features"):
            return "a VainF DeepLabV3Plus-Pytorch MobileNetV2 checkpoint", "deeplabv3plus_mobilenetv2_vainf"
        return "a VainF DeepLabV3Plus-Pytorch ResNet-101 checkpoint", "deeplabv3plus_resnet101_vainf"
    if _has(ks, "stem.") and _has(ks, "stage8."):
        return "a tiny_segnet checkpoint of ours", "tiny_segnet"
    if _has(ks, "backbone.layer1.") and _has(ks, "aspp.branches.", "aspp.project."):
        depth = _our_deeplab_depth(ks)
        return f"a deeplabv3plus_{depth} checkpoint of ours", f"deeplabv3plus_{depth}"
    return None


def _family_hint(keys, name: str | None) -> str:
    """``"; it looks like X: use --model Y"`` when the keys point to another model than ``name``, else ``""``."""
    guess = guess_family(keys) if name else None
    if guess is None or guess[1] == name:
        return ""
    return f"; the file looks like {guess[0]}: use --model {guess[1]}"


# ----------------------------------------------------------------------------------------------- loading
def _drop_training_keys(state: dict[str, torch.Tensor], own: Mapping) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Drop training-only entries (``criterion*``: loss weights saved inside the network) the model does not have;
    returns ``(state, dropped keys)``."""
    drop = [k for k in state if _is_training_only(k) and k not in own]
    return {k: v for k, v in state.items() if k not in drop}, drop


def _note_dropped(path, dropped: list[str]) -> None:
    """The one-line note on stderr for the training-only entries a successful load left out."""
    if dropped:
        few = ", ".join(dropped[:3]) + (", ..." if len(dropped) > 3 else "")
        print(f"note: {path}: dropped {len(dropped)} training-only entr{'y' if len(dropped) == 1 else 'ies'} "
              f"({few}): the loss module saved with the network, not part of it", file=sys.stderr)


def _apply_filter(state: dict[str, torch.Tensor], model: nn.Module, path, name: str | None) -> dict:
    """The registered ``checkpoint_filter`` of ``name``, when the keys are not already the model's own."""
    fn = checkpoint_filter_for(name) if name else None
    if fn is None or set(state) == set(model.state_dict()):
        return state
    try:
        out = fn(dict(state), model)
    except MaxentError:
        raise
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:   # a file its filter cannot read
        raise MaxentError(f"{path}: model {name}'s checkpoint filter cannot read this checkpoint "
                          f"({type(e).__name__}: {str(e)[:120]}){_family_hint(state, name)}") from None
    if not isinstance(out, Mapping):
        raise MaxentError(f"model {name}: its checkpoint_filter returned {type(out).__name__}, expected a dict")
    return dict(out)


def filtered_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path,
                   name: str | None = None) -> dict[str, torch.Tensor]:
    """``state`` as :func:`load_state` would load it into ``model``: training-only keys dropped, the model's
    ``checkpoint_filter`` applied (the keys are the model's own names then; shapes are not checked)."""
    name = name or getattr(model, "registry_name", None)
    raw, _ = _drop_training_keys(dict(state), model.state_dict())
    return _apply_filter(raw, model, path, name)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path, strict: bool = True,
               name: str | None = None) -> LoadReport:
    """Load an already read (and cleaned) ``state`` into ``model``: training-only keys dropped, the model's
    ``checkpoint_filter`` applied, then a strict (or reported) load. See :func:`load_checkpoint`."""
    name = name or getattr(model, "registry_name", None)
    own = model.state_dict()
    raw, dropped = _drop_training_keys(dict(state), own)
    state = _apply_filter(raw, model, path, name)
    report = LoadReport(path=str(path))
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    report.shape_mismatch = [(k, tuple(own[k].shape), tuple(state[k].shape))
                             for k in own if k in state and own[k].shape != state[k].shape]
    if strict and not report.ok:
        raise MaxentError(f"{path}: checkpoint does not match the model{f' {name}' if name else ''}: "
                          f"{report.summary()}{_class_count_hint(model, report)}{_family_hint(raw, name)}")
    bad = {k for k, _, _ in report.shape_mismatch}
    usable = {k: v for k, v in state.items() if k in own and k not in bad}
    model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    _note_dropped(path, dropped)
    return report


def _class_count_hint(model: nn.Module, report: LoadReport) -> str:
    nc = getattr(model, "num_classes", None)
    file_nc = {b[0] for _, a, b in report.shape_mismatch if a and b and a[0] == nc and b[0] != nc}
    if nc is None or len(file_nc) != 1:
        return ""
    n = file_nc.pop()     # the classifier's output dim differs: say it plainly
    return f" (class count: model has {nc} classes, checkpoint has {n}; pass --num-classes {n})"


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True, name: str | None = None) -> LoadReport:
    """Load a checkpoint file into ``model`` and report key mismatches.

    Parameters
    ----------
    model : torch.nn.Module
        Target model (not wrapped in DataParallel/DDP; pass ``model.module`` otherwise).
    path : str or Path
        A released file as it is, or one of ours: a plain state_dict, or a dict holding one under ``state_dict`` /
        ``model_state`` / ``model_state_dict`` / ``model`` / ``net`` (nested allowed); ``module.`` /
        ``_orig_mod.`` / ``branch1.`` prefixes stripped; numpy scalars in the file (``mean_iu``, ``best_score``)
        allowed; zip or pre-1.6 pickle format. Training-only ``criterion*`` entries are dropped (a note on
        stderr).
    strict : bool, default=True
        Raise ``MaxentError`` on any missing/unexpected key or shape mismatch, naming the first keys and, when the
        keys look like another family's, the ``--model`` that fits. With ``strict=False`` the tensors that match are
        loaded, the others are skipped and listed in the returned report (never silently).
    name : str, optional
        The registry name of ``model`` (default: ``model.registry_name``, set by ``create_model``): its registered
        ``checkpoint_filter`` renames an upstream file's keys before the load (skipped when the keys already are the
        model's own).

    Returns
    -------
    LoadReport
    """
    return load_state(model, read_state_dict(path), path, strict=strict, name=name)
