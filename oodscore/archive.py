"""The model files of oodscore (OODMC, the meta classifier): a numpy archive of plain arrays plus a JSON header in
its ``meta`` entry, written atomically and read with ``allow_pickle=False`` (loading runs no code from the file).

Written once here so that both models check the same things the same way: a readable archive, the header's
``format`` and ``version``; what the arrays mean is the model's business.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from cocodag.atomic import atomic_write

from . import OodscoreError

__all__ = ["read_archive", "write_archive"]


def write_archive(path: Path | str, meta: dict[str, Any], arrays: dict[str, Any]) -> Path:
    """``meta`` (JSON-able, with ``format`` and ``version``) and ``arrays`` to ``path``, atomically."""
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
    return path


def read_archive(path: Path, *, where: str, what: str, fmt: str, version: int
                 ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and the arrays of an archive written by :func:`write_archive`.

    ``where`` starts every error line (the path, or the option and the path), ``what`` names the model
    (``"OODMC model"``). One line for an unreadable archive, another format, another version.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"][()])) if "meta" in z.files else None
            arrays = {k: z[k] for k in z.files if k != "meta"}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise OodscoreError(f"{where}: not a readable {what} file ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0]})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        article = "an" if what[:1].lower() in "aeiou" else "a"
        raise OodscoreError(f"{where}: not {article} {what} file (expected format {fmt!r})")
    if meta.get("version") != version:
        raise OodscoreError(f"{where}: {what} version {meta.get('version')!r} is not supported (expected {version})")
    return meta, arrays
