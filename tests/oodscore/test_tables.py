"""oodscore.tables: the one table writer behind metrics.csv, protocols.md/.csv and leaderboard.md/.csv/.tex.

Oracles: the expected text written out by hand; the csv module reading the CSV back.
"""
from __future__ import annotations

import csv
import io

from oodscore.tables import Table, tex_escape

T = Table(["run", "method", "auroc", "n"], [["a_1", "msp", 0.91234567, 3], ["b&c", "sml", None, 4]],
          align="llrr", bold=frozenset({(0, 2)}))


def test_markdown():
    assert T.markdown(".4f") == ("| run | method | auroc | n |\n|---|---|---:|---:|\n"
                                 "| a_1 | msp | **0.9123** | 3 |\n| b&c | sml | - | 4 |")
    assert Table(["a"], [[1.5e-9]]).markdown().splitlines() == ["| a |", "|---|", "| 1.5e-09 |"]   # .6g, left


def test_csv_keeps_every_digit_and_reads_back():
    text = T.csv()
    assert text.startswith("run,method,auroc,n\r\n") and text.count("\r\n") == 3
    rows = list(csv.reader(io.StringIO(T.csv(lineterminator="\n"))))
    assert rows == [["run", "method", "auroc", "n"], ["a_1", "msp", "0.91234567", "3"], ["b&c", "sml", "", "4"]]
    assert float(rows[1][2]) == 0.91234567


def test_latex():
    assert T.latex(".4f").splitlines() == [
        "\\begin{tabular}{llrr}", "\\hline", "run & method & auroc & n \\\\", "\\hline",
        "a\\_1 & msp & \\textbf{0.9123} & 3 \\\\", "b\\&c & sml & - & 4 \\\\", "\\hline", "\\end{tabular}"]
    assert tex_escape("50%_{x}^~\\") == "50\\%\\_\\{x\\}\\textasciicircum{}\\textasciitilde{}\\textbackslash{}"
