"""``rbn-report``: aggregate job/multirun folders into tables and plots, or compare them.

rbn-report DIR [DIR ...] [--out DIR] [--metric accuracy|error] [--keep error|newest]
rbn-report compare RUN REFERENCE [--tol 0.5]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.report import aggregate, formats, mce, plots
from robustbench_bn.utils.tables import markdown_table


def build_report(
    paths: Sequence[str],
    out: Path,
    *,
    metric: str = "accuracy",
    keep: str = "error",
    make_plots: bool = True,
) -> str:
    """Write every table and figure for the rows under ``paths`` into ``out``; returns a summary."""
    rows = aggregate.load_rows(paths, keep=keep)
    out.mkdir(parents=True, exist_ok=True)
    summary: list[str] = []
    for (dataset, model), group in rows.groupby(["dataset", "model"], sort=False):
        folder = out / f"{dataset}__{model}"
        folder.mkdir(parents=True, exist_ok=True)
        title = f"{dataset} | {model} | {metric} (%)"
        summary.append(f"## {title}\n")
        for label, setup in group.groupby("label", sort=False):
            stem = "table__" + "".join(c if c.isalnum() or c in "-_=." else "_" for c in label)
            formats.write_all_formats(
                aggregate.severity_table(setup, metric), folder, stem, "corruption"
            )
        tables = aggregate.comparison_tables(group, metric)
        for name, table in tables.items():
            index_name = "corruption" if name == "by_corruption" else "severity"
            markdown = formats.write_all_formats(table, folder, f"comparison_{name}", index_name)
            summary.append(f"{metric} by {index_name}, mean over the other axis:\n\n{markdown}\n")
        mce_frame, notes = mce.mce_table(group)
        if not mce_frame.empty:
            table = mce_frame.set_index("label")[["mCE", "relative_mCE"]]
            summary.append(
                "mCE (%, AlexNet = 100):\n\n"
                + formats.write_all_formats(table, folder, "mce", "method")
                + "\n"
            )
        summary.extend(f"note: {note}\n" for note in notes)
        if make_plots:
            plots.severity_curves(group, metric, folder, title)
            plots.gain_heatmap(group, metric, folder, title)
            plots.per_corruption_curves(group, metric, folder, title)
        summary.append(f"tables and figures: {folder}\n")
    text = "\n".join(summary)
    (out / "report.md").write_text(text)
    return text


def _main_compare(argv: Sequence[str]) -> int:
    from robustbench_bn.report import compare

    parser = argparse.ArgumentParser(
        prog="rbn-report compare", description="Compare a run with a reference, cell by cell."
    )
    parser.add_argument("run", nargs="+", help="job or multirun folder(s) of the run")
    parser.add_argument("reference", help="reference CSV in the suite's long row schema")
    parser.add_argument("--tol", type=float, default=0.5, help="allowed |difference| (points)")
    arguments = parser.parse_args(argv)
    merged = compare.compare(arguments.run, arguments.reference, arguments.tol)
    text, passed = compare.report(merged, arguments.tol)
    print(text)
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["compare"]:
            sys.exit(_main_compare(argv[1:]))
        parser = argparse.ArgumentParser(prog="rbn-report", description=__doc__.splitlines()[0])
        parser.add_argument("paths", nargs="+", help="job folders, multirun folders, rows.csv")
        parser.add_argument("--out", type=Path, default=Path("outputs/report"))
        parser.add_argument("--metric", choices=("accuracy", "error"), default="accuracy")
        parser.add_argument(
            "--keep",
            choices=("error", "newest"),
            default="error",
            help="on the same cell in two folders: fail (default) or keep newest",
        )
        parser.add_argument("--no-plots", action="store_true")
        arguments = parser.parse_args(argv)
        pd.set_option("display.width", 200)
        print(
            build_report(
                arguments.paths,
                arguments.out,
                metric=arguments.metric,
                keep=arguments.keep,
                make_plots=not arguments.no_plots,
            )
        )
    except ConfigurationError as error:
        print(f"rbn-report: error: {error}", file=sys.stderr)
        sys.exit(2)


__all__ = ["build_report", "main", "markdown_table"]
