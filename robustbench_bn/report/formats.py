"""Writing tables as Markdown, CSV and LaTeX (booktabs), without extra dependencies."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from robustbench_bn.utils.files import atomic_write_text
from robustbench_bn.utils.tables import markdown_table

LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "_": r"\_",
    "&": r"\&",
    "%": r"\%",
    "#": r"\#",
    "{": r"\{",
    "}": r"\}",
    "$": r"\$",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Text safe inside a tabular cell; one pass, so the escapes are not escaped again."""
    return "".join(LATEX_SPECIAL.get(character, character) for character in text)


def latex_table(table: pd.DataFrame, *, index_name: str = "", digits: int = 1) -> str:
    """A booktabs tabular: \\toprule, \\midrule before the summary rows, \\bottomrule."""
    columns = [index_name] + [str(column) for column in table.columns]
    lines = [
        r"% needs \usepackage{booktabs}",
        r"\begin{tabular}{l" + "r" * len(table.columns) + "}",
        r"\toprule",
        " & ".join(latex_escape(column) for column in columns) + r" \\",
        r"\midrule",
    ]
    for index, row in table.iterrows():
        if str(index) in ("mean", "clean") and lines[-1] != r"\midrule":
            lines.append(r"\midrule")
        values = [
            ""
            if isinstance(v, float) and math.isnan(v)
            else (f"{v:.{digits}f}" if isinstance(v, float) else latex_escape(str(v)))
            for v in row.tolist()
        ]
        lines.append(" & ".join([latex_escape(str(index))] + values) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def write_all_formats(table: pd.DataFrame, folder: Path, stem: str, index_name: str) -> str:
    """Write ``stem``.md/.csv/.tex into ``folder``; returns the Markdown."""
    markdown = markdown_table(table, index_name=index_name)
    atomic_write_text(folder / f"{stem}.md", markdown + "\n")
    atomic_write_text(
        folder / f"{stem}.csv", table.to_csv(index_label=index_name, float_format="%.4f")
    )
    atomic_write_text(folder / f"{stem}.tex", latex_table(table, index_name=index_name) + "\n")
    return markdown
