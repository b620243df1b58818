"""``rbn-report``: aggregate job/multirun folders into tables and plots, or compare them.

    rbn-report DIR [DIR ...] [--out DIR] [--metric accuracy|error] [--keep error|newest]
    rbn-report compare RUN [RUN ...] REFERENCE [--tol 0.5] [--keep error|newest]

A RUN (or DIR) is a job folder, a multirun folder, or any CSV file in the row schema (a
committed table such as results/fashion_mnist_c/full_grid.csv, a frame from evaluate()).

The first form reads every rows.csv under the folders and writes, per dataset and model, a
corruption x severity table per setup, comparison tables (per corruption, per severity,
overall), a summary (clean error, mean error, mCE and relative mCE where AlexNet's errors are
declared) as Markdown, CSV and LaTeX, and the figures as PNG and PDF; when a sweep varied
the batch size, n or N, also the metric against it (:mod:`robustbench_bn.report.sweeps`).
Every summary gives the binomial standard error of each setup's mean over cells, and
seed_means.csv the per-seed means. When a setup was run under several seeds
(``experiment=seeds``) its seeds are averaged (:mod:`robustbench_bn.report.seeds`): the
tables show the mean over seeds, the summary ± the sample standard deviation over seeds, and
paired_differences.csv the difference between setups paired by seed.
The second compares a run with a reference CSV cell by cell and exits 1 when a cell moved
or is missing.
Exit status 2 means bad input (no rows, duplicated cells, unreadable files).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.report import aggregate, formats, mce, plots, seeds, sweeps
from robustbench_bn.utils.files import atomic_write_text

METRICS = ("accuracy", "error")


def _file_name(text: str) -> str:
    """A label or dataset name as a portable file name."""
    return "".join(c if c.isalnum() or c in "-_=." else "_" for c in text).strip("_")


def build_report(
    paths: Sequence[str | Path],
    out: Path,
    *,
    metric: str = "accuracy",
    keep: str = "error",
    make_plots: bool = True,
) -> str:
    """Write every table and figure for the rows under ``paths`` into ``out``; returns the
    Markdown summary (also written to ``out``/report.md)."""
    if metric not in METRICS:
        raise ConfigurationError(f"metric must be one of {METRICS}, got {metric!r}.")
    rows = aggregate.load_rows(paths, keep=keep)
    out.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out / "rows.csv", index=False)
    summary: list[str] = [
        f"# rbn-report: {len(rows)} rows from {rows['source_folder'].nunique()} job folders\n"
    ]
    setups: list[str] = []
    for (dataset, model), group in rows.groupby(["dataset", "model"], sort=False):
        folder = out / f"{_file_name(str(dataset))}__{_file_name(str(model))}"
        folder.mkdir(parents=True, exist_ok=True)
        title = f"{dataset} | {model} | {metric} (%)"
        summary.append(f"## {dataset} | {model}\n")

        groups = seeds.group_seeds(group)
        tidy = seeds.tidy_table(groups)
        atomic_write_text(folder / "seed_means.csv", tidy.to_csv(index=False, float_format="%.4f"))
        over = tidy[tidy["row"] == "mean over seeds"].set_index("setup")
        if groups.has_several_seeds:
            # Every table below shows a setup's cells averaged over its seeds.
            group = seeds.mean_over_seeds_rows(groups)
        table, notes = mce.summary_table(group)
        notes = groups.notes + notes
        if groups.has_several_seeds:
            table["std over seeds"] = over["std_over_seeds"].astype(float).reindex(table.index)
            table["seeds"] = over["seeds"].astype(object).reindex(table.index)
        table["binomial s.e."] = over["binomial_standard_error"].astype(float).reindex(table.index)
        summary.append(
            "Error (%) per setup: clean, mean over the corrupted cells"
            + (", mCE and relative mCE (AlexNet = 100)" if "mCE" in table else "")
            + (
                " (each the mean over the setup's seeds), the sample standard deviation of "
                "the mean error over seeds and the number of seeds"
                if groups.has_several_seeds
                else ""
            )
            + "; binomial s.e.: the standard error of one seed's mean from the finite "
            "number of images per cell (cells taken as independent; not the seed-to-seed "
            "variation):\n\n" + formats.write_all_formats(table, folder, "summary", "setup") + "\n"
        )
        if groups.has_several_seeds:
            summary.append(
                f"{metric} (%) per setup over seeds, mean over the corrupted cells: mean over "
                "seeds ± sample standard deviation over seeds (number of seeds); setups "
                "that differ only in the columns "
                f"{', '.join(groups.aggregated_over)} are one setup, every other setup and "
                "protocol column is equal within it (per seed: seed_means.csv):\n\n"
                + formats.write_all_formats(
                    seeds.formatted_summary(over.reset_index(), metric),
                    folder,
                    "summary_over_seeds",
                    "setup",
                )
                + "\n"
            )
            per_seed = tidy[tidy["row"] == "seed"]
            differences = seeds.paired_differences(per_seed, metric)
            atomic_write_text(
                folder / "paired_differences.csv",
                differences.to_csv(index=False, float_format="%.4f"),
            )
            summary.append(
                f"{metric} (%) difference between setups, row minus column, paired by seed "
                "(the same seed and data_seed: the same corruption draws): mean ± sample "
                "standard deviation over the paired seeds (their number); empty where two "
                "setups share fewer than two seeds:\n\n"
                + formats.write_all_formats(
                    seeds.difference_matrix(differences, metric, aggregate.ordered_labels(group)),
                    folder,
                    "paired_differences_matrix",
                    "setup",
                )
                + "\n"
            )
        coverage = aggregate.coverage_note(group)
        if coverage:
            notes.append(coverage)
        for name, comparison in aggregate.comparison_tables(group, metric).items():
            index_name = "corruption" if name == "by_corruption" else "severity"
            other = "severities" if name == "by_corruption" else "corruptions"
            markdown = formats.write_all_formats(
                comparison, folder, f"comparison_{name}", index_name
            )
            summary.append(f"{metric} (%) by {index_name}, mean over {other}:\n\n{markdown}\n")

        for label in aggregate.ordered_labels(group):
            setup = group[group["label"] == label]
            markdown = formats.write_all_formats(
                aggregate.severity_table(setup, metric),
                folder,
                f"table__{_file_name(label)}",
                "corruption",
            )
            seed_count = int(over["seeds"].get(label, 1))
            averaged = f", mean over {seed_count} seeds" if seed_count > 1 else ""
            setups.append(
                f"### {dataset} | {model} | {label} | {metric} (%){averaged}\n\n{markdown}\n"
            )

        if make_plots:
            plots.severity_curves(group, metric, folder, title)
            if not plots.gain_heatmap(group, folder, f"{dataset} | {model}"):
                notes.append(
                    "no gain heatmap: it needs exactly one setup with method source and no "
                    "fine-tune, plus at least one other setup."
                )
            plots.per_corruption_curves(group, metric, folder, title)
            summary.extend(sweeps.sweep_curves(group, metric, folder, title))
        summary.extend(f"note: {note}\n" for note in notes)
        summary.append(f"tables and figures: {folder}\n")
    text = "\n".join(summary)
    per_setup = "\n## Per setup: corruption x severity\n\n" + "\n".join(setups)
    (out / "report.md").write_text(text + per_setup)
    return text


def _compare_main(argv: Sequence[str]) -> int:
    from robustbench_bn.report import compare

    parser = argparse.ArgumentParser(
        prog="rbn-report compare",
        description="Compare a run with a reference CSV, cell by cell (the CI regression guard).",
    )
    parser.add_argument(
        "run", nargs="+", help="job or multirun folder(s) of the run, or CSV files of its rows"
    )
    parser.add_argument("reference", help="reference CSV in the suite's long row schema")
    parser.add_argument(
        "--tol", type=float, default=0.5, help="allowed |difference| in accuracy points"
    )
    parser.add_argument("--keep", choices=("error", "newest"), default="error")
    arguments = parser.parse_args(argv)
    comparison = compare.compare(
        arguments.run, arguments.reference, arguments.tol, keep=arguments.keep
    )
    print(compare.report(comparison))
    return 0 if comparison.passed else 1


def _report_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rbn-report",
        description="Tables (Markdown, CSV, LaTeX) and figures from rbn-run folders. "
        "'rbn-report compare -h' for the regression check.",
    )
    parser.add_argument(
        "paths", nargs="+", help="job folders, multirun folders, CSV files in the row schema"
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/report"))
    parser.add_argument("--metric", choices=METRICS, default="accuracy")
    parser.add_argument(
        "--keep",
        choices=("error", "newest"),
        default="error",
        help="the same cell in two folders: fail (default) or keep the newest row",
    )
    parser.add_argument("--no-plots", action="store_true", help="tables only")
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
    print(f"report: {arguments.out / 'report.md'}")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``rbn-report``; exits 0 (done / comparison passed), 1 (comparison
    failed) or 2 (bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["compare"]:
            sys.exit(_compare_main(argv[1:]))
        sys.exit(_report_main(argv))
    except ConfigurationError as error:
        print(f"rbn-report: error: {error}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:
        # Output piped into head: the reader has what it wanted; the status stays honest.
        sys.stderr.close()
        sys.exit(1)
