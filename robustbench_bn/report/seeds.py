"""Setups measured under several seeds: the mean over seeds, the spread between seeds, and a
binomial standard error that needs only one seed.

A *setup* here is everything that defines a job except its seeds; a *seed* (replicate) is
one combination of the seed values a row records: the top-level ``seed``, the dataset's
``data_seed`` (the corruption draws of an on-the-fly dataset) and the ``seed`` a method or a
fine-tune writes into ``method_params`` / ``finetune_params`` (eata, dmc, dua; AdvBN).
:func:`robustbench_bn.report.aggregate.load_rows` keeps every seed a setup of its own
(``bn [data_seed=1, seed=1]``); :func:`group_seeds` puts them back together:

* the per-seed mean of the metric over the corrupted cells, and over seeds the mean of
  those means, the sample standard deviation (``ddof=1``) and the number of seeds;
* per cell, the mean over seeds (the tables of a multi-seed report);
* the binomial standard error of one seed's mean over cells. A cell's accuracy is
  ``correct / n``, a binomial proportion p with variance p(1-p)/n, so the mean over K cells
  has the standard error ``sqrt(sum_k p_k (1 - p_k) / n_k) / K`` if the cells are
  independent. It measures how far the mean would move if each cell's n images were drawn
  afresh. It ignores that every cell of the embedded default holds the same clean images
  (cells are positively correlated, so the true sampling error is larger), the variation of
  the corruption draws and of the adaptation from seed to seed (the standard deviation over
  seeds measures those), and that two methods evaluated on the same images err on mostly the
  same images (so a difference between them is less noisy than their two errors suggest).

A setup whose seeds did not evaluate the same corrupted cells is not averaged: its seeds stay
separate setups and a note says why, because a mean over seeds would then mix cells.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pandas as pd

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.report.aggregate import (
    CELL_COLUMNS,
    CLEAN,
    SETUP_COLUMNS,
    ordered_labels,
    parse_params,
    protocol_columns,
    setup_labels,
)

#: Protocol columns that hold a seed: the job's and the dataset's corruption draws.
SEED_COLUMNS = ("seed", "data_seed")
#: The key under which a method or fine-tune records its own seed in its parameters column.
SEED_PARAMETER = "seed"
#: Parameters columns whose ``seed`` key is a seed too (named ``method_params.seed`` in output).
PARAMETER_COLUMNS = ("method_params", "finetune_params")
#: The columns of the tidy per-seed CSV (seed_means.csv), in order.
TIDY_COLUMNS = (
    "dataset",
    "model",
    "setup",
    "row",
    "seed",
    "data_seed",
    "method_seed",
    "finetune_seed",
    "seeds",
    "corrupted_cells",
    "mean_accuracy",
    "mean_error",
    "std_over_seeds",
    "binomial_standard_error",
    "clean_accuracy",
    "aggregated_over",
)


@dataclass
class SeedGroups:
    """Rows labelled by setup (``setup``) and by seed (``seed_values``), and what was merged."""

    rows: pd.DataFrame
    #: The seed columns (and parameters' seeds) that take more than one value within a setup.
    aggregated_over: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def has_several_seeds(self) -> bool:
        return bool(self.aggregated_over)


def _without_seed(text: object) -> str:
    params = parse_params(text)
    params.pop(SEED_PARAMETER, None)
    return json.dumps(params, sort_keys=True)


def _seed_in(text: object) -> str:
    value = parse_params(text).get(SEED_PARAMETER)
    return "" if value is None else str(value)


def _seed_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Per row: every seed value it records, one column each (``""`` where it has none)."""
    seeds = pd.DataFrame(index=rows.index)
    for column in SEED_COLUMNS:
        seeds[column] = rows[column].astype(str) if column in rows else ""
    for column in PARAMETER_COLUMNS:
        seeds[f"{column}.{SEED_PARAMETER}"] = (
            rows[column].map(_seed_in) if column in rows else pd.Series("", index=rows.index)
        )
    return seeds


def group_seeds(rows: pd.DataFrame) -> SeedGroups:
    """Label every row of :func:`~robustbench_bn.report.aggregate.load_rows` with its setup
    (the label it would get without its seeds) and its seed values, and find which seed
    columns vary within a setup."""
    rows = rows.copy()
    seeds = _seed_frame(rows)
    # The setup: every key column with the seeds taken out.
    stripped = rows.copy()
    for column in PARAMETER_COLUMNS:
        if column in stripped:
            stripped[column] = stripped[column].map(_without_seed)
    protocol = [column for column in protocol_columns(rows) if column not in SEED_COLUMNS]
    key_columns = [*SETUP_COLUMNS, *protocol]
    stripped["label"] = setup_labels(stripped, protocol)
    setup_keys = stripped[key_columns].astype(str).agg("|".join, axis=1)
    clash = stripped.assign(key=setup_keys).groupby(["dataset", "model", "label"])["key"].nunique()
    if (clash > 1).any():
        raise ConfigurationError(
            "Two setups got the same label once their seeds were set aside; report them "
            f"separately: {sorted(clash[clash > 1].index.get_level_values('label'))[:5]}"
        )
    rows["setup"] = stripped["label"]
    # "|" never occurs in a seed value; the tidy table splits it back into its columns.
    rows["seed_values"] = seeds.agg(lambda values: "|".join(values), axis=1)

    notes: list[str] = []
    varying: set[str] = set()
    for (dataset, model, setup), group in rows.groupby(["dataset", "model", "setup"], sort=False):
        if group["seed_values"].nunique() < 2:
            continue
        corrupted = group[group["corruption"] != CLEAN]
        cells = corrupted.groupby("seed_values")[list(CELL_COLUMNS)].apply(
            lambda cells_of_seed: frozenset(map(tuple, cells_of_seed.values.tolist()))
        )
        if cells.nunique() > 1:
            # Averaging would mix cells; each seed stays a setup of its own (its full label).
            rows.loc[group.index, "setup"] = group["label"]
            counts = ", ".join(
                f"{group.loc[group['seed_values'] == key, 'label'].iloc[0]}: {len(found)}"
                for key, found in cells.items()
            )
            notes.append(
                f"{dataset} | {model} | {setup}: its seeds cover different corrupted cells "
                f"({counts} cells), so they are reported as separate setups, not averaged."
            )
            continue
        group_seeds_frame = seeds.loc[group.index]
        varying |= {column for column in seeds.columns if group_seeds_frame[column].nunique() > 1}
    aggregated_over = [column for column in seeds.columns if column in varying]
    if not aggregated_over:
        # No setup has several seeds: every row keeps the label load_rows gave it, so a
        # single-seed report reads exactly as before.
        rows["setup"] = rows["label"]
    return SeedGroups(rows=rows, aggregated_over=aggregated_over, notes=notes)


def binomial_standard_error(corrupted: pd.DataFrame) -> float:
    """The binomial standard error (percentage points) of the mean accuracy over the cells of
    one seed: ``100 * sqrt(sum_k p_k (1 - p_k) / n_k) / K``; NaN without the ``n`` column."""
    if corrupted.empty or "n" not in corrupted:
        return math.nan
    counts = pd.to_numeric(corrupted["n"], errors="coerce")
    if counts.isna().any() or (counts <= 0).any():
        return math.nan
    proportion = corrupted["accuracy"].astype(float) / 100
    variance = (proportion * (1 - proportion) / counts).sum()
    return 100 * math.sqrt(variance) / len(corrupted)


def per_seed_means(groups: SeedGroups) -> pd.DataFrame:
    """One row per dataset, model, setup and seed: mean accuracy and error over the corrupted
    cells, the binomial standard error of that mean, and the clean accuracy."""
    records = []
    keys = ["dataset", "model", "setup", "seed_values"]
    for (dataset, model, setup, seed_values), group in groups.rows.groupby(keys, sort=False):
        corrupted = group[group["corruption"] != CLEAN]
        clean = group.loc[group["corruption"] == CLEAN, "accuracy"]
        seed, data_seed, method_seed, finetune_seed = seed_values.split("|")
        mean_accuracy = float(corrupted["accuracy"].mean()) if len(corrupted) else math.nan
        records.append(
            {
                "dataset": dataset,
                "model": model,
                "setup": setup,
                "row": "seed",
                "seed": seed,
                "data_seed": data_seed,
                "method_seed": method_seed,
                "finetune_seed": finetune_seed,
                "seeds": 1,
                "corrupted_cells": len(corrupted),
                "mean_accuracy": mean_accuracy,
                "mean_error": 100 - mean_accuracy,
                "std_over_seeds": math.nan,
                "binomial_standard_error": binomial_standard_error(corrupted),
                "clean_accuracy": float(clean.iloc[0]) if len(clean) else math.nan,
                "aggregated_over": "",
            }
        )
    # Seeds in numeric order within each setup (folders are read in path order, not seed order).
    records.sort(
        key=lambda record: [
            _natural(record[column])
            for column in ("seed", "data_seed", "method_seed", "finetune_seed")
        ]
    )
    return pd.DataFrame(records, columns=list(TIDY_COLUMNS))


def _natural(value: str) -> tuple[int, float, str]:
    """Numbers before text, numbers by value: "2" before "10"."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def over_seeds(per_seed: pd.DataFrame, aggregated_over: list[str]) -> pd.DataFrame:
    """Per setup: the mean over seeds of the per-seed means, their sample standard deviation
    (NaN for one seed), the number of seeds, and the mean of the per-seed standard errors."""
    records = []
    for (dataset, model, setup), group in per_seed.groupby(
        ["dataset", "model", "setup"], sort=False
    ):
        mean_accuracy = float(group["mean_accuracy"].mean())
        records.append(
            {
                "dataset": dataset,
                "model": model,
                "setup": setup,
                "row": "mean over seeds",
                "seed": ",".join(dict.fromkeys(group["seed"])),
                "data_seed": ",".join(dict.fromkeys(group["data_seed"])),
                "method_seed": ",".join(dict.fromkeys(group["method_seed"])),
                "finetune_seed": ",".join(dict.fromkeys(group["finetune_seed"])),
                "seeds": len(group),
                "corrupted_cells": int(group["corrupted_cells"].iloc[0]),
                "mean_accuracy": mean_accuracy,
                "mean_error": 100 - mean_accuracy,
                # ddof=1: the sample standard deviation, undefined (NaN) for one seed.
                "std_over_seeds": float(group["mean_accuracy"].std(ddof=1))
                if len(group) > 1
                else math.nan,
                "binomial_standard_error": float(group["binomial_standard_error"].mean()),
                "clean_accuracy": float(group["clean_accuracy"].mean()),
                "aggregated_over": " ".join(aggregated_over) if len(group) > 1 else "",
            }
        )
    return pd.DataFrame(records, columns=list(TIDY_COLUMNS))


def tidy_table(groups: SeedGroups) -> pd.DataFrame:
    """Per setup its per-seed rows followed by its ``mean over seeds`` row (seed_means.csv), the
    setups in the report's order."""
    per_seed = per_seed_means(groups)
    aggregate_rows = over_seeds(per_seed, groups.aggregated_over)
    order = {
        label: position
        for position, label in enumerate(
            ordered_labels(groups.rows.assign(label=groups.rows["setup"]))
        )
    }
    combined = pd.concat([per_seed, aggregate_rows], ignore_index=True)
    position = combined["setup"].map(order)
    is_aggregate = combined["row"] != "seed"
    sorted_index = (
        pd.DataFrame({"position": position, "aggregate": is_aggregate})
        .sort_values(["position", "aggregate"], kind="stable")
        .index
    )
    return combined.loc[sorted_index].reset_index(drop=True)


def mean_over_seeds_rows(groups: SeedGroups) -> pd.DataFrame:
    """One row per setup and cell: accuracy, error and correct averaged over the setup's seeds,
    labelled by the setup; the seed columns list the seeds averaged (``0,1,2``)."""
    rows = groups.rows
    seed_columns = [column for column in SEED_COLUMNS if column in rows]
    keys = ["dataset", "model", "setup", *CELL_COLUMNS]
    averaged = ["accuracy", "error"] + (["correct"] if "correct" in rows else [])
    first = [column for column in rows.columns if column not in {*keys, *averaged}]
    aggregations = {column: "mean" for column in averaged}
    aggregations.update({column: "first" for column in first})
    for column in seed_columns:
        aggregations[column] = lambda values: ",".join(dict.fromkeys(values.astype(str)))
    merged = rows.groupby(keys, sort=False, as_index=False).agg(aggregations)
    merged["label"] = merged["setup"]
    return merged


def formatted_summary(over: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``80.53 ± 0.12 (3 seeds)`` per setup (``80.53 (1 seed)``: no spread from one seed), the
    binomial standard error and the seeds, for the Markdown report."""
    column = f"mean_{metric}"
    table = pd.DataFrame(index=list(over["setup"]))
    texts = []
    for _, row in over.iterrows():
        if row["seeds"] > 1:
            texts.append(f"{row[column]:.2f} ± {row['std_over_seeds']:.2f} ({row['seeds']} seeds)")
        else:
            texts.append(f"{row[column]:.2f} (1 seed)")
    table[f"{metric} over seeds"] = texts
    table["binomial s.e."] = list(over["binomial_standard_error"].astype(float))
    table["seeds"] = [
        "; ".join(
            part
            for part in (
                f"seed={row['seed']}" if row["seed"] else "",
                f"data_seed={row['data_seed']}" if row["data_seed"] else "",
                f"method.seed={row['method_seed']}" if row["method_seed"] else "",
                f"finetune.seed={row['finetune_seed']}" if row["finetune_seed"] else "",
            )
            if part
        )
        for _, row in over.iterrows()
    ]
    return table


def paired_differences(per_seed: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per ordered pair of setups of one dataset and model: over the seeds both ran with (equal
    ``seed`` and ``data_seed``: the same corruption draws and streams), the mean and the sample
    standard deviation of the difference of their per-seed means (``setup`` minus
    ``reference``, in points of ``metric``).

    Pairing takes out what the seeds share: a corruption draw that is hard for one method is
    hard for the other, so the spread of the difference is smaller than either spread alone.
    """
    column = f"mean_{metric}"
    records = []
    for (dataset, model), frame in per_seed.groupby(["dataset", "model"], sort=False):
        values = frame.pivot_table(
            index=["seed", "data_seed"], columns="setup", values=column, aggfunc="first"
        )
        setups = list(dict.fromkeys(frame["setup"]))
        for setup in setups:
            for reference in setups:
                if setup == reference:
                    continue
                difference = (values[setup] - values[reference]).dropna()
                records.append(
                    {
                        "dataset": dataset,
                        "model": model,
                        "setup": setup,
                        "reference": reference,
                        "paired_seeds": len(difference),
                        f"mean_difference_{metric}": float(difference.mean())
                        if len(difference)
                        else math.nan,
                        "std_of_difference": float(difference.std(ddof=1))
                        if len(difference) > 1
                        else math.nan,
                    }
                )
    return pd.DataFrame(
        records,
        columns=[
            "dataset",
            "model",
            "setup",
            "reference",
            "paired_seeds",
            f"mean_difference_{metric}",
            "std_of_difference",
        ],
    )


def difference_matrix(differences: pd.DataFrame, metric: str, setups: list[str]) -> pd.DataFrame:
    """Row minus column, ``+0.069 ± 0.015 (3)`` (mean ± sample std over the paired seeds, their
    number; three decimals, since one image of one cell moves a mean over 75 cells of 1,000
    images by 0.0013 points); empty where two setups share fewer than two seeds."""
    table = pd.DataFrame("", index=setups, columns=setups, dtype=object)
    for _, row in differences.iterrows():
        if row["paired_seeds"] > 1:
            table.loc[row["setup"], row["reference"]] = (
                f"{row[f'mean_difference_{metric}']:+.3f} ± {row['std_of_difference']:.3f} "
                f"({row['paired_seeds']})"
            )
    return table
