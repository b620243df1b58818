"""Add the ``finetune_params`` column to result CSVs written before rows carried it.

    PYTHONPATH=. .venv/bin/python scripts/backfill_finetune_params.py results/fashion_mnist_c/*.csv

A value is written only where it is certain, and every other cell of the file is left as it
was (the file is read and written as text):

* ``finetune=none``: ``{}`` (no fine-tune, no parameters);
* any other fine-tune: the row's config is composed again from its fine-tune, method,
  ``n_examples`` and any ``finetune_<setting>`` columns the file has (the AdvBN sweep's), and
  the value is written only if that config's hash equals the row's ``config_hash``, i.e. the
  row was produced by exactly that config. Otherwise the cell stays blank (not known), and
  ``rbn-report`` reads it as no settings.

Running it again fills only blanks, so it also completes rows appended later by code that did
not write the column yet.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import robustbench_bn.run  # noqa: F401  (registers the config-hash resolver)
from robustbench_bn.results import finetune_params
from robustbench_bn.runner import config_hash

COLUMN = "finetune_params"
#: Columns named finetune_<setting> (results/fashion_mnist_c/advbn_sweep.csv) hold overrides.
SETTING_PREFIX = "finetune_"


def _overrides(row: pd.Series, setting_columns: list[str]) -> list[str]:
    overrides = [f"finetune={row['finetune']}", f"method={row['method']}"]
    if row.get("n_examples", ""):
        overrides.append(f"dataset.n_examples={row['n_examples']}")
    overrides += [
        f"finetune.{column.removeprefix(SETTING_PREFIX)}={row[column]}"
        for column in setting_columns
        if row[column] != ""
    ]
    return overrides


def backfill(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """``frame`` (all text) with the column filled where certain; counts of what was done."""
    frame = frame.copy()
    if COLUMN not in frame:
        frame.insert(list(frame.columns).index("finetune") + 1, COLUMN, "")
    setting_columns = [
        column for column in frame.columns if column.startswith(SETTING_PREFIX) and column != COLUMN
    ]
    counts = {"already": 0, "none": 0, "verified": 0, "unknown": 0}
    composed: dict[tuple[str, ...], tuple[str, str]] = {}  # overrides -> (hash, value)
    with initialize_config_module(config_module="robustbench_bn.conf", version_base="1.3"):
        for index, row in frame.iterrows():
            if row[COLUMN] != "":
                counts["already"] += 1
                continue
            if row["finetune"] in ("none", ""):
                frame.at[index, COLUMN] = finetune_params({})
                counts["none"] += 1
                continue
            overrides = tuple(_overrides(row, setting_columns))
            if overrides not in composed:
                cfg = compose(config_name="config", overrides=list(overrides))
                resolved = OmegaConf.to_container(cfg.finetune, resolve=True)
                composed[overrides] = (config_hash(cfg), finetune_params(resolved))
            job_hash, value = composed[overrides]
            # Only a config that hashes to the row's own hash is known to have made it.
            if job_hash == row.get("config_hash", ""):
                frame.at[index, COLUMN] = value
                counts["verified"] += 1
            else:
                counts["unknown"] += 1
    return frame, counts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="+", type=Path, help="result CSVs in the row schema")
    arguments = parser.parse_args(argv)
    for path in arguments.csv:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "finetune" not in frame:
            print(f"{path}: no finetune column, left alone")
            continue
        filled, counts = backfill(frame)
        filled.to_csv(path, index=False)
        print(f"{path}: " + ", ".join(f"{name} {count}" for name, count in counts.items()))


if __name__ == "__main__":
    main()
