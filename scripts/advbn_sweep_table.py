"""Collect an AdvBN sweep on the embedded default into one CSV and a Markdown table.

Rows do not carry the fine-tune's settings, so each job's ``job.json`` (its resolved config)
supplies them: split point, epochs and learning rate become columns of every row.

    PYTHONPATH=. .venv/bin/python scripts/advbn_sweep_table.py outputs/advbn_sweep \\
        --out results/fashion_mnist_c/advbn_sweep.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

SETTINGS = ("split_after", "epochs", "learning_rate")


def collect(sweep: Path) -> pd.DataFrame:
    frames = []
    for rows_path in sorted(sweep.rglob("rows.csv")):
        config = json.loads((rows_path.parent / "job.json").read_text())["config"]
        rows = pd.read_csv(rows_path)
        finetune = config["finetune"]
        for setting in SETTINGS:
            rows[f"finetune_{setting}"] = finetune.get(setting, "")
        frames.append(rows)
    if not frames:
        raise SystemExit(f"no rows.csv under {sweep}")
    return pd.concat(frames, ignore_index=True)


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    keys = ["n_examples", "finetune", *(f"finetune_{s}" for s in SETTINGS), "method"]
    corrupted = rows[rows["corruption"] != "clean"]
    table = corrupted.groupby(keys, dropna=False)["accuracy"].mean().rename("mean_corrupted")
    clean = rows[rows["corruption"] == "clean"].groupby(keys, dropna=False)["accuracy"].mean()
    cells = corrupted.groupby(keys, dropna=False)["accuracy"].size().rename("cells")
    table = pd.concat([table, clean.rename("clean"), cells], axis=1).reset_index()
    source = table[(table["finetune"] == "none") & (table["method"] == "source")]
    baseline = dict(zip(source["n_examples"], source["mean_corrupted"], strict=True))
    table["vs_source"] = table["mean_corrupted"] - table["n_examples"].map(baseline)
    return table.round(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = collect(args.sweep)
    if args.out:
        rows.to_csv(args.out, index=False)
    table = summary(rows)
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for values in table.itertuples(index=False):
        print("| " + " | ".join(str(value) for value in values) + " |")


if __name__ == "__main__":
    main()
