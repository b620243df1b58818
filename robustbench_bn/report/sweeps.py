"""Curves against a sweep axis: accuracy against the batch size, against the number of
adaptation samples n, against the source prior N, and against the stream order (sequential,
shuffled, label_shift), one line per setup.

A figure is drawn for an axis only when the rows hold at least two values of it, i.e. when a
sweep varied it (``rbn-run -m runner.batch_size=1,2,4,...`` or the presets
``schneider2020_batch_sizes`` and ``benz2021_n_samples``). A line is everything about a setup
except that axis: method, fine-tune, the other parameters and protocol settings; each point
is the metric's mean over the corrupted cells of one job. Values are placed at even steps in
sorted order, so doubling sweeps read as a log scale and N=inf gets its own place at the end.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from robustbench_bn.data.streams import ORDERS
from robustbench_bn.report.aggregate import (
    CLEAN,
    CONFIG_COLUMNS,
    SETUP_COLUMNS,
    parse_params,
    protocol_columns,
)
from robustbench_bn.report.formats import write_all_formats

#: axis name -> (where its value lives, the name there, the axis title).
AXES = {
    "batch_size": ("protocol", "batch_size", "test batch size"),
    "n_samples": ("params", "n_samples", "adaptation samples per cell n"),
    "prior": ("params", "prior", "source prior N (pseudo-samples)"),
    "order": ("protocol", "order", "test stream order"),
}
#: Axes whose values are names, placed in this order (others sort as numbers).
CATEGORIES = {"order": ORDERS}
#: Settings that belong to one value of an axis (the concentration to label_shift): no line
#: of their own on that axis.
TIED = {"order": ("label_shift_alpha",)}
#: Protocol columns that never tell two lines apart in a legend (they follow from the others).
QUIET_COLUMNS = {"subset", "corruption_source", "preprocessing", *CONFIG_COLUMNS}


def axis_values(rows: pd.DataFrame, axis: str) -> pd.Series:
    """The axis as floats per row (NaN where the row has no such setting)."""
    where, name, _ = AXES[axis]
    if where == "protocol":
        if name not in rows:
            return pd.Series(math.nan, index=rows.index)
        if axis in CATEGORIES:  # the position of the name in its list
            position = {value: float(i) for i, value in enumerate(CATEGORIES[axis])}
            return rows[name].map(lambda value: position.get(value, math.nan)).astype(float)
        return pd.to_numeric(rows[name], errors="coerce")
    values = rows["method_params"].map(lambda text: parse_params(text).get(name))
    return pd.to_numeric(values, errors="coerce")


def _format(value: float) -> str:
    if math.isinf(value):
        return "inf"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _shown(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _format(float(value))
    return str(value)


def line_names(rows: pd.DataFrame, axis: str) -> pd.Series:
    """Each row's line: its setup and protocol without ``axis``, as short as tells lines apart."""
    _, name, _ = AXES[axis]
    params = rows["method_params"].map(parse_params)
    others = params.map(
        lambda p: json.dumps({k: v for k, v in p.items() if k != name}, sort_keys=True)
    )
    protocol = [
        c
        for c in protocol_columns(rows)
        if c != name and c not in QUIET_COLUMNS and c not in TIED.get(axis, ())
    ]
    keys = rows[list(SETUP_COLUMNS[:4])].astype(str).agg("|".join, axis=1) + "|" + others
    for column in protocol:
        keys = keys + "|" + rows[column].astype(str)
    names = pd.Series("", index=rows.index, dtype=object)
    varying_protocol = [c for c in protocol if rows[c].astype(str).nunique() > 1]
    for (finetune, method), group in rows.groupby(["finetune", "method"], sort=False):
        prefix = "" if finetune in ("none", "") else f"{finetune}+"
        group_params = [json.loads(text) for text in others[group.index].unique()]
        shown = sorted(
            {
                key
                for params_of_line in group_params
                for key in params_of_line
                if len({json.dumps(p.get(key)) for p in group_params}) > 1
            }
        )
        for index in group.index:
            own = json.loads(others[index])
            text = f"{prefix}{method}"
            if shown:
                text += "(" + ",".join(f"{k}={_shown(own.get(k))}" for k in shown) + ")"
            suffix = [f"{c}={rows.at[index, c]}" for c in varying_protocol if rows.at[index, c]]
            names[index] = text + (f" [{', '.join(suffix)}]" if suffix else "")
    # Two different keys that print alike fall back to their keys.
    if names.groupby(names).apply(lambda g: keys[g.index].nunique()).gt(1).any():
        names = keys
    return names


def sweep_table(rows: pd.DataFrame, axis: str, metric: str) -> pd.DataFrame | None:
    """Axis value x line table of ``metric`` (mean over corrupted cells), or None if the axis
    takes fewer than two values."""
    corrupted = rows[rows["corruption"] != CLEAN]
    values = axis_values(corrupted, axis)
    corrupted = corrupted[values.notna()]
    if values.dropna().nunique() < 2:
        return None
    frame = pd.DataFrame(
        {
            "value": values[corrupted.index],
            "line": line_names(corrupted, axis),
            metric: corrupted[metric].astype(float),
        }
    )
    table = frame.pivot_table(
        index="value", columns="line", values=metric, aggfunc="mean", sort=True
    )
    table.columns.name = None
    return table[sorted(table.columns, key=_natural_key)]


def _natural_key(text: str) -> list[object]:
    """ "bn [batch_size=16]" after "bn [batch_size=2]": numbers compare as numbers."""
    parts = re.split(r"(\d+(?:\.\d+)?|inf)", text)
    return [
        (0, float(part), "") if re.fullmatch(r"\d+(?:\.\d+)?|inf", part) else (1, 0.0, part)
        for part in parts
    ]


def sweep_curves(rows: pd.DataFrame, metric: str, folder: Path, title: str) -> list[str]:
    """One figure and table per swept axis; returns Markdown sections for the report."""
    from robustbench_bn.report import plots

    sections = []
    for axis, (_, _, axis_title) in AXES.items():
        table = sweep_table(rows, axis, metric)
        if table is None:
            continue
        if axis in CATEGORIES:
            table.index = [CATEGORIES[axis][int(value)] for value in table.index]
        printed = table.copy()
        printed.index = [
            value if isinstance(value, str) else _format(value) for value in printed.index
        ]
        markdown = write_all_formats(printed, folder, f"sweep_{axis}", axis)
        plots.sweep_curve(table, axis_title, metric, folder, f"sweep_{axis}", title)
        sections.append(
            f"{metric} (%) against {axis_title}, mean over the corrupted cells "
            f"(figure sweep_{axis}.png):\n\n{markdown}\n"
        )
    return sections
