"""Read the rows of many job and multirun folders into one frame, and pivot it into tables.

Aggregation never averages two measurements of the same cell: a cell (same dataset, model,
fine-tune, method and parameters, protocol and corruption x severity) found in two folders
is reported as a duplicate; ``keep="newest"`` keeps the most recently finished one instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.results import ROWS_FILE, STRING_COLUMNS

#: What identifies a setup; rows that agree on all of these measure the same thing.
SETUP_COLUMNS = (
    "dataset",
    "model",
    "finetune",
    "method",
    "method_params",
    "n_examples",
    "subset",
    "corruption_source",
    "batch_size",
    "reset",
    "precision",
    "seed",
)
CELL_COLUMNS = ("corruption", "severity")


class DuplicateCellsError(ConfigurationError):
    """The same cell was measured in more than one folder."""


def find_rows_files(paths: Iterable[str | Path]) -> list[Path]:
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file() and path.name == ROWS_FILE:
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(path.rglob(ROWS_FILE)))
        else:
            raise ConfigurationError(
                f"{path} is neither a job folder, a multirun folder nor a {ROWS_FILE} file."
            )
    if not found:
        raise ConfigurationError(
            f"No {ROWS_FILE} under {', '.join(map(str, paths))}; point rbn-report at the "
            "folders rbn-run wrote (outputs/runs/..., outputs/multirun/...)."
        )
    return found


def method_label(row: pd.Series, *, with_params: bool = True) -> str:
    """A readable name for a setup: method(params) plus the fine-tune when there is one."""
    if not with_params:
        finetune = row.get("finetune", "none")
        prefix = (
            f"{finetune}+" if isinstance(finetune, str) and finetune not in ("none", "") else ""
        )
        return f"{prefix}{row['method']}"
    try:
        params = json.loads(row.get("method_params") or "{}")
    except (TypeError, json.JSONDecodeError):
        params = {}
    shown = ",".join(f"{key}={value}" for key, value in sorted(params.items()))
    label = f"{row['method']}({shown})" if shown else str(row["method"])
    finetune = row.get("finetune", "none")
    if isinstance(finetune, str) and finetune not in ("none", ""):
        label = f"{finetune}+{label}"
    return label


def load_rows(paths: Iterable[str | Path], *, keep: str = "error") -> pd.DataFrame:
    """Every row under ``paths`` with a ``label`` and ``source_folder`` column added."""
    frames = []
    for rows_file in find_rows_files(paths):
        frame = pd.read_csv(rows_file, dtype=STRING_COLUMNS)
        frame["source_folder"] = str(rows_file.parent)
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    for column in SETUP_COLUMNS:
        if column not in rows:
            rows[column] = ""
    # Parameters appear in a label only where one method runs with several parameter sets.
    variants = rows.groupby(["dataset", "model", "finetune", "method"])["method_params"]
    ambiguous = variants.transform("nunique") > 1
    rows["label"] = [
        method_label(row, with_params=bool(needs_params))
        for (_, row), needs_params in zip(rows.iterrows(), ambiguous, strict=True)
    ]
    key = [c for c in SETUP_COLUMNS + CELL_COLUMNS if c in rows]
    duplicated = rows.duplicated(key, keep=False)
    if duplicated.any():
        if keep == "newest":
            rows = rows.sort_values("finished_at").drop_duplicates(key, keep="last")
        else:
            sample = rows.loc[duplicated, ["label", "corruption", "severity", "source_folder"]]
            raise DuplicateCellsError(
                f"{int(duplicated.sum())} rows measure a cell that another folder measured "
                f"too (never averaged):\n{sample.head(10).to_string(index=False)}\n"
                "Report the folders separately, remove the stale one, or pass --keep newest."
            )
    return rows.reset_index(drop=True)


def severity_table(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One setup's corruption x severity table with mean column/row and the clean value."""
    corrupted = rows[rows["corruption"] != "clean"]
    table = corrupted.pivot_table(
        index="corruption", columns="severity", values=metric, aggfunc="mean", sort=False
    )
    table.columns = [str(column) for column in table.columns]
    table["mean"] = table.mean(axis=1)
    table.loc["mean"] = table.mean(axis=0)
    clean = rows.loc[rows["corruption"] == "clean", metric]
    if len(clean):
        table.loc["clean"] = float("nan")
        table.loc["clean", "mean"] = float(clean.iloc[0])
    return table


def ordered_labels(rows: pd.DataFrame) -> list[str]:
    """Setup labels with the unadapted ``source`` first, then in order of appearance."""
    labels = list(dict.fromkeys(rows["label"]))
    return sorted(labels, key=lambda label: label != "source")


def comparison_tables(rows: pd.DataFrame, metric: str) -> dict[str, pd.DataFrame]:
    """Methods side by side: per corruption (mean over severities), per severity, overall."""
    corrupted = rows[rows["corruption"] != "clean"]
    labels = ordered_labels(rows)
    by_corruption = corrupted.pivot_table(
        index="corruption", columns="label", values=metric, aggfunc="mean", sort=False
    )[labels]
    by_corruption.loc["mean"] = corrupted.groupby("label")[metric].mean()[labels]
    clean = rows[rows["corruption"] == "clean"].groupby("label")[metric].first()
    if len(clean):
        by_corruption.loc["clean"] = clean.reindex(labels)
    by_severity = corrupted.pivot_table(
        index="severity", columns="label", values=metric, aggfunc="mean"
    )[labels]
    by_severity.index = [str(index) for index in by_severity.index]
    by_severity.loc["mean"] = corrupted.groupby("label")[metric].mean()[labels]
    return {"by_corruption": by_corruption, "by_severity": by_severity}
