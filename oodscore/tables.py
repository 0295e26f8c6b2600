"""One small table writer: the same rows as markdown, CSV or LaTeX (``metrics.csv``, ``protocols.md/.csv``,
``leaderboard.md/.csv/.tex``).

A cell is a value: None (missing), a float, or anything else (written with ``str``). Each output has its own rule:

=========  ==================  ===============================  ============================
output     missing             float                            bold cells
=========  ==================  ===============================  ============================
markdown   ``-``               ``float_format`` (``.6g``)       ``**x**``
CSV        empty               ``repr`` (every digit, reread)   (none)
LaTeX      ``-``               ``float_format`` (``.4f``)       ``\\textbf{x}``, text escaped
=========  ==================  ===============================  ============================
"""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Table", "tex_escape"]

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(s: str) -> str:
    """``s`` with LaTeX's special characters escaped."""
    return "".join(_TEX.get(c, c) for c in s)


def _text(v: Any, float_format: str) -> str:
    if v is None:
        return "-"
    return format(v, float_format) if isinstance(v, float) else str(v)


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    return repr(v) if isinstance(v, float) else v


@dataclass(frozen=True)
class Table:
    """Rows under a header.

    ``align``: one letter per column, ``l`` or ``r`` (markdown ``---`` / ``---:``, LaTeX's column spec); default
    every column ``l``. ``bold``: the ``(row, column)`` cells drawn in bold (markdown, LaTeX).
    """

    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    align: str = ""
    bold: frozenset[tuple[int, int]] = frozenset()

    def _cells(self, float_format: str, mark: str) -> list[list[str]]:
        out = []
        for i, row in enumerate(self.rows):
            cells = [_text(v, float_format) for v in row]
            out.append([mark.format(c) if (i, j) in self.bold else c for j, c in enumerate(cells)])
        return out

    def markdown(self, float_format: str = ".6g") -> str:
        """A markdown table, its lines joined by ``\\n`` (no final newline)."""
        align = self.align or "l" * len(self.header)
        lines = ["| " + " | ".join(self.header) + " |", "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
        lines += ["| " + " | ".join(cells) + " |" for cells in self._cells(float_format, "**{}**")]
        return "\n".join(lines)

    def csv(self, lineterminator: str = "\r\n") -> str:
        """CSV text (the ``csv`` module's quoting; ``lineterminator`` after every row)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator=lineterminator)
        w.writerow(self.header)
        for row in self.rows:
            w.writerow([_csv_cell(v) for v in row])
        return buf.getvalue()

    def latex(self, float_format: str = ".4f") -> str:
        """A LaTeX ``tabular`` between ``\\hline`` rules, lines joined by ``\\n`` (no final newline)."""
        align = self.align or "l" * len(self.header)
        lines = ["\\begin{tabular}{" + align + "}", "\\hline", " & ".join(map(tex_escape, self.header)) + " \\\\",
                 "\\hline"]
        for i, row in enumerate(self.rows):
            cells = [tex_escape(_text(v, float_format)) for v in row]
            lines.append(" & ".join(f"\\textbf{{{c}}}" if (i, j) in self.bold else c for j, c in enumerate(cells))
                         + " \\\\")
        lines += ["\\hline", "\\end{tabular}"]
        return "\n".join(lines)
