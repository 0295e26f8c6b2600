"""Reading back the JSON documents oodscore writes (``thresholds.json``, ``meta.json``): parsed, with their
``format`` and ``version`` checked, each problem one line naming the file and the command that writes it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import OodscoreError

__all__ = ["read_json_doc"]


def read_json_doc(path: Path, *, fmt: str, name: str, writer: str, version: int = 1,
                  version_default: int | None = None) -> dict[str, Any]:
    """The parsed document at ``path`` (an existing file): a JSON object of format ``fmt`` and version ``version``.

    ``name`` is the document's file name (``"thresholds.json"``), ``writer`` the command that writes it
    (``"oodscore evaluate"``); ``version_default`` is the version of a document without a ``version`` key (None:
    such a document is refused).
    """
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OodscoreError(f"{path}: not valid JSON ({e}); write it again with `{writer}`") from None
    except OSError as e:
        raise OodscoreError(f"{path}: cannot read the {name} file ({e.strerror or e})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise OodscoreError(f"{path}: format {found!r}, expected {fmt!r} (a {name} written by {writer})")
    if doc.get("version", version_default) != version:
        raise OodscoreError(f"{path}: version {doc.get('version')!r} is not supported (expected {version})")
    return doc
