"""Cell-by-cell comparison of a run with a reference table: the CI regression guard.

The reference is a CSV in the suite's long row schema (a committed baseline, or a paper's
numbers from results/reference/): columns corruption, severity and accuracy (or error, or
top1), plus any of dataset, model, finetune, method, method_params. Lines starting with
``#`` are comments (citations). Cells are matched on the key columns both sides have;
dataset names match regardless of case, ``-`` and ``_`` (``CIFAR-10-C`` = ``cifar10_c``);
a reference's method_params match a run's when every parameter the reference names has the
same value in the run (a paper names the parameters it varied, the suite records them all).

The comparison fails when a matched cell differs by more than the tolerance (accuracy
points), and when a reference cell is missing from the run, so a run that shrank cannot pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.report.aggregate import (
    KNOWN_PROTOCOL_COLUMNS,
    LATER_PROTOCOL_DEFAULTS,
    canonical_value,
    load_rows,
    parse_params,
)
from robustbench_bn.report.mce import normalized_dataset

KEY_COLUMNS = (
    "dataset",
    "model",
    "finetune",
    "method",
    "method_params",
    *KNOWN_PROTOCOL_COLUMNS,
    "corruption",
    "severity",
)
#: How many cells of each kind the printed report lists before summarizing the rest.
LISTED_CELLS = 50


@dataclass
class Comparison:
    """Matched cells (reference and run accuracy, difference, ``ok``) and what was left over."""

    cells: pd.DataFrame
    keys: list[str]
    tolerance: float
    unreported_reference_cells: int
    run_cells_not_in_reference: int

    @property
    def missing(self) -> pd.Series:
        return self.cells["accuracy_run"].isna()

    @property
    def outside(self) -> pd.Series:
        return ~self.cells["ok"] & ~self.missing

    @property
    def passed(self) -> bool:
        return len(self.cells) > 0 and not self.outside.any() and not self.missing.any()


def read_reference(path: str | Path) -> pd.DataFrame:
    """The reference cells with an ``accuracy`` column (from error or top1 if need be)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"Reference table {path} does not exist.")
    try:
        reference = pd.read_csv(path, comment="#", dtype={"method_params": str, "corruption": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ConfigurationError(
            f"Reference table {path} cannot be read as CSV ({error})."
        ) from error
    if "accuracy" not in reference:
        if "error" in reference:
            reference["accuracy"] = 100 - pd.to_numeric(reference["error"], errors="coerce")
        elif "top1" in reference:
            reference["accuracy"] = reference["top1"]
    missing = [c for c in ("corruption", "severity", "accuracy") if c not in reference]
    if missing:
        raise ConfigurationError(
            f"Reference table {path} lacks the columns {missing}; it needs corruption, "
            "severity and accuracy (or error), in the suite's long row schema."
        )
    severity = pd.to_numeric(reference["severity"], errors="coerce")
    if severity.isna().any() or (severity % 1 != 0).any():
        bad = reference.loc[severity.isna() | (severity % 1 != 0), "severity"]
        raise ConfigurationError(
            f"Reference table {path}: severity must be an integer (0 for clean), got "
            f"{bad.unique().tolist()[:5]}."
        )
    reference["severity"] = severity.astype(int)
    reference["accuracy"] = pd.to_numeric(reference["accuracy"], errors="coerce")
    if "method_params" in reference:
        reference["method_params"] = reference["method_params"].fillna("{}")
    if "finetune" in reference:
        reference["finetune"] = reference["finetune"].fillna("none")
    # A table without stream columns (published numbers, earlier baselines) was measured the
    # way every job ran before they existed: each cell alone, in stored order.
    for column, default in LATER_PROTOCOL_DEFAULTS.items():
        reference[column] = reference.get(column, pd.Series(default, index=reference.index))
        reference[column] = reference[column].fillna(default)
    return reference


def _params_match(reference_params: str, run_params: str) -> bool:
    wanted = parse_params(reference_params)
    found = parse_params(run_params)
    return all(name in found and _same_value(value, found[name]) for name, value in wanted.items())


def _same_value(first: Any, second: Any) -> bool:
    if isinstance(first, int | float) and isinstance(second, int | float):
        return float(first) == float(second)
    return json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def compare(
    run_paths: list[str], reference_path: str, tolerance: float, *, keep: str = "error"
) -> Comparison:
    """Match every reference cell with the run's cell; see the module docstring for rules."""
    if tolerance < 0:
        raise ConfigurationError(f"--tol must be >= 0, got {tolerance}.")
    run = load_rows(run_paths, keep=keep)
    reference = read_reference(reference_path)
    keys = [c for c in KEY_COLUMNS if c in run.columns and c in reference.columns]
    exact = [c for c in keys if c != "method_params"]
    unreported = int(reference["accuracy"].isna().sum())
    reference = reference[reference["accuracy"].notna()].reset_index(drop=True)
    reference["reference_cell"] = reference.index
    left = reference[["reference_cell", *keys, "accuracy"]].copy()
    right = run[[*keys, "label", "accuracy"]].copy()
    for frame in (left, right):
        for column in ("dataset", "model", "finetune", "method", "corruption"):
            if column in exact:
                frame[column] = frame[column].astype(str)
        for column in KNOWN_PROTOCOL_COLUMNS:
            if column in exact:
                # 500 in one file and 500.0 in another are one value.
                frame[column] = frame[column].map(canonical_value)
        if "dataset" in exact:
            frame["dataset_key"] = frame["dataset"].map(normalized_dataset)
    join = ["dataset_key" if c == "dataset" else c for c in exact]
    right = right.drop(columns=["dataset"] if "dataset" in exact else [])
    matched = left.merge(right, on=join, how="inner", suffixes=("_reference", "_run"))
    if "method_params" in keys:
        fits = [
            _params_match(wanted, found)
            for wanted, found in zip(
                matched["method_params_reference"], matched["method_params_run"], strict=True
            )
        ]
        # A boolean Series, not a list: an empty list would select no columns.
        matched = matched[pd.Series(fits, index=matched.index, dtype=bool)]
    counts = matched.groupby("reference_cell").size()
    ambiguous = counts[counts > 1]
    if len(ambiguous):
        cell = int(ambiguous.index[0])
        labels = sorted(set(matched.loc[matched["reference_cell"] == cell, "label"]))
        raise ConfigurationError(
            f"{len(ambiguous)} reference cells match several setups of the run, e.g. "
            f"{reference.loc[cell, keys].to_dict()} matches {labels}. Give the reference the "
            "columns that tell them apart (method_params, finetune, ...) or compare fewer "
            "folders."
        )
    by_cell = matched.set_index("reference_cell")
    cells = reference[keys].copy()
    cells["setup"] = by_cell["label"].reindex(reference.index)
    cells["accuracy_reference"] = reference["accuracy"]
    cells["accuracy_run"] = by_cell["accuracy_run"].reindex(reference.index)
    cells["difference"] = cells["accuracy_run"] - cells["accuracy_reference"]
    cells["ok"] = cells["difference"].abs() <= tolerance
    return Comparison(
        cells=cells,
        keys=keys,
        tolerance=tolerance,
        unreported_reference_cells=unreported,
        run_cells_not_in_reference=len(run) - len(matched),
    )


def _listing(frame: pd.DataFrame, compact: bool = True) -> str:
    if compact:
        # The run's setup label stands in for finetune, method and the long method_params.
        frame = frame.drop(columns=["finetune", "method", "method_params", "ok"], errors="ignore")
        frame = frame[["setup", *[c for c in frame.columns if c != "setup"]]]
    text = frame.head(LISTED_CELLS).to_string(index=False, float_format=lambda v: f"{v:.2f}")
    if len(frame) > LISTED_CELLS:
        text += f"\n... and {len(frame) - LISTED_CELLS} more"
    return text


def report(comparison: Comparison) -> str:
    """The comparison as text: counts, the largest differences, and every failing cell."""
    cells = comparison.cells
    missing, outside = comparison.missing, comparison.outside
    tolerance = comparison.tolerance
    lines = [
        f"matched on: {', '.join(comparison.keys)}",
        f"{len(cells)} reference cells: {int(cells['ok'].sum())} within ±{tolerance:g} "
        f"accuracy points, {int(outside.sum())} outside, {int(missing.sum())} missing from "
        "the run.",
    ]
    if comparison.unreported_reference_cells:
        lines.append(
            f"{comparison.unreported_reference_cells} reference rows have no value and were "
            "skipped."
        )
    if comparison.run_cells_not_in_reference:
        lines.append(
            f"{comparison.run_cells_not_in_reference} cells of the run are not in the "
            "reference (not compared)."
        )
    compared = cells[~missing]
    if len(compared):
        largest = compared.reindex(compared["difference"].abs().sort_values().index[::-1])
        lines.append(
            f"largest |difference|: {abs(largest['difference'].iloc[0]):.3f} points; "
            f"mean difference (run - reference): {compared['difference'].mean():+.3f}"
        )
        if not outside.any():
            lines += ["largest differences:", _listing(largest.head(5))]
    if outside.any():
        lines += [
            f"cells outside ±{tolerance:g}:",
            _listing(cells.loc[outside]),
        ]
    if missing.any():
        lines += [
            "reference cells missing from the run:",
            _listing(cells.loc[missing, comparison.keys], compact=False),
        ]
    if cells.empty:
        lines.append("the reference has no cells with a value: nothing to compare.")
    lines.append("PASS" if comparison.passed else "FAIL")
    return "\n".join(lines)
