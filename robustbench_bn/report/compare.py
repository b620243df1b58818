"""Cell-by-cell comparison of a run with a reference table: the CI regression guard.

The reference is a CSV in the suite's long row schema (a committed baseline, or a paper's
numbers from results/reference/). Cells are matched on the key columns both sides have;
a reference cell missing from the run counts as a failure, so a shrunken run cannot pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.report.aggregate import load_rows

KEY_COLUMNS = ("dataset", "model", "finetune", "method", "method_params", "corruption", "severity")


def _normalized_params(value: object) -> str:
    try:
        return json.dumps(json.loads(str(value)), sort_keys=True)
    except json.JSONDecodeError:
        return str(value)


def read_reference(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"Reference table {path} does not exist.")
    reference = pd.read_csv(path, comment="#", dtype={"method_params": str, "corruption": str})
    if "accuracy" not in reference and "error" in reference:
        reference["accuracy"] = 100 - reference["error"]
    if "accuracy" not in reference or "corruption" not in reference:
        raise ConfigurationError(
            f"{path} needs the columns corruption, severity and accuracy (or error)."
        )
    return reference


def compare(run_paths: list[str], reference_path: str, tolerance: float) -> pd.DataFrame:
    """Frame of matched cells with run, reference and difference, plus an ``ok`` column."""
    run = load_rows(run_paths)
    reference = read_reference(reference_path)
    keys = [c for c in KEY_COLUMNS if c in run.columns and c in reference.columns]
    for frame in (run, reference):
        if "method_params" in keys:
            frame["method_params"] = frame["method_params"].fillna("{}").map(_normalized_params)
        if "severity" in keys:
            frame["severity"] = frame["severity"].astype(int)
    merged = reference[keys + ["accuracy"]].merge(
        run[keys + ["accuracy"]], on=keys, how="left", suffixes=("_reference", "_run")
    )
    merged["difference"] = merged["accuracy_run"] - merged["accuracy_reference"]
    merged["ok"] = merged["difference"].abs() <= tolerance
    return merged


def report(merged: pd.DataFrame, tolerance: float) -> tuple[str, bool]:
    missing = merged["accuracy_run"].isna()
    outside = ~merged["ok"] & ~missing
    lines = [
        f"{len(merged)} reference cells: {int(merged['ok'].sum())} within ±{tolerance}, "
        f"{int(outside.sum())} outside, {int(missing.sum())} missing from the run.",
        f"largest |difference|: {merged['difference'].abs().max():.3f} points"
        if merged["difference"].notna().any()
        else "no cell matched",
    ]
    if outside.any():
        lines.append("cells outside the tolerance:")
        lines.append(merged.loc[outside].to_string(index=False))
    if missing.any():
        lines.append("reference cells missing from the run:")
        lines.append(
            merged.loc[missing]
            .drop(columns=["accuracy_run", "difference", "ok"])
            .head(20)
            .to_string(index=False)
        )
    passed = not outside.any() and not missing.any() and len(merged) > 0
    return "\n".join(lines), passed
