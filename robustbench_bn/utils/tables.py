"""Small table formatting helpers (no extra dependency for Markdown)."""

from __future__ import annotations

import math

import pandas as pd


def _cell(value: object, digits: int) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(table: pd.DataFrame, *, index_name: str = "", digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table of a frame, index included, numbers right-aligned."""
    header = [index_name or (table.index.name or "")] + [str(c) for c in table.columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * len(table.columns)) + "|",
    ]
    for index, row in table.iterrows():
        cells = [str(index)] + [_cell(value, digits) for value in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
