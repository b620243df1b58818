"""rbn-report's curves against a sweep axis (batch size, n, N), and rows without the stream
columns read as the sequential, per-cell protocol they were produced under."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from robustbench_bn.report import aggregate, cli, sweeps

CORRUPTIONS = ("gaussian_noise", "fog")


def _job(folder: Path, method: str, params: dict, *, batch_size: int, accuracy: float, **extra):
    records = [{"corruption": "clean", "severity": 0, "accuracy": 99.0}]
    records += [
        {"corruption": c, "severity": 5, "accuracy": accuracy + offset}
        for c, offset in zip(CORRUPTIONS, (-1.0, 1.0), strict=True)
    ]
    frame = pd.DataFrame(records)
    frame["dataset"], frame["model"], frame["finetune"] = "toy", "toy", "none"
    frame["method"] = method
    frame["method_params"] = json.dumps(params, sort_keys=True)
    frame["batch_size"] = batch_size
    frame["seed"] = 0
    frame["config_hash"] = folder.name
    for column, value in extra.items():
        frame[column] = value
    folder.mkdir(parents=True)
    frame.to_csv(folder / "rows.csv", index=False)


def test_batch_size_sweep_gives_one_line_per_prior_and_n_sweep_one_point_per_n(tmp_path):
    sweep = tmp_path / "sweep"
    for prior in (0, 16, math.inf):
        for batch_size in (2, 8, 64):
            accuracy = 50.0 + batch_size / 2 if prior == 0 else 70.0 + (prior == 16) * 5
            _job(
                sweep / f"bn-{prior}-{batch_size}",
                "bn",
                {"statistics": "batch", "prior": prior},
                batch_size=batch_size,
                accuracy=accuracy,
            )
    rows = aggregate.load_rows([sweep])
    table = sweeps.sweep_table(rows, "batch_size", "accuracy")
    assert list(table.index) == [2, 8, 64]
    assert set(table.columns) == {"bn(prior=0)", "bn(prior=16)", "bn(prior=inf)"}
    # The mean over corrupted cells only (clean's 99 stays out).
    assert table.loc[2, "bn(prior=0)"] == 51.0 and table.loc[64, "bn(prior=0)"] == 82.0
    assert (table["bn(prior=16)"] == 75.0).all()
    against_prior = sweeps.sweep_table(rows, "prior", "accuracy")
    assert list(against_prior.index) == [0, 16, math.inf]
    assert set(against_prior.columns) == {
        "bn [batch_size=2]",
        "bn [batch_size=8]",
        "bn [batch_size=64]",
    }
    assert sweeps.sweep_table(rows, "n_samples", "accuracy") is None

    report = cli.build_report([sweep], tmp_path / "report")
    folder = tmp_path / "report" / "toy__toy"
    assert (folder / "sweep_batch_size.png").stat().st_size > 0
    assert (folder / "sweep_prior.png").is_file()
    assert not (folder / "sweep_n_samples.png").exists()
    assert "against test batch size" in report and "| inf |" in report


def test_n_samples_sweep_and_a_single_value_draws_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    for n in (1, 4, 32):
        _job(
            sweep / f"n{n}",
            "bn",
            {"statistics": "samples", "n_samples": n, "prior": 0},
            batch_size=128,
            accuracy=60.0 + n,
        )
    rows = aggregate.load_rows([sweep])
    table = sweeps.sweep_table(rows, "n_samples", "accuracy")
    assert list(table.index) == [1, 4, 32] and list(table.columns) == ["bn"]
    assert list(table["bn"]) == [61.0, 64.0, 92.0]
    assert sweeps.sweep_table(rows, "batch_size", "accuracy") is None


def test_rows_without_stream_columns_read_as_sequential_cells(tmp_path):
    _job(tmp_path / "old", "bn", {}, batch_size=64, accuracy=80.0)
    _job(
        tmp_path / "new",
        "bn",
        {},
        batch_size=64,
        accuracy=40.0,
        order="label_shift",
        label_shift_alpha=0.01,
        stream="cells",
    )
    rows = aggregate.load_rows([tmp_path])
    old = rows[rows["source_folder"].str.endswith("old")]
    assert (old["order"] == "sequential").all() and (old["stream"] == "cells").all()
    assert (old["label_shift_alpha"] == "").all()
    # The two orders are two setups, told apart in their labels, never averaged.
    assert rows["label"].nunique() == 2
    assert any("order=label_shift" in label for label in rows["label"])
    # Against the order: one line, the concentration tied to label_shift, not a line of its own.
    table = sweeps.sweep_table(rows, "order", "accuracy")
    assert list(table.columns) == ["bn"] and list(table["bn"]) == [80.0, 40.0]
