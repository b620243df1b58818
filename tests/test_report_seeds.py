"""rbn-report over seeds, on synthetic rows whose means, standard deviations and binomial
standard errors are computed by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

import robustbench_bn
from robustbench_bn.report import aggregate, cli, seeds
from robustbench_bn.report.aggregate import DuplicateCellsError

CELLS = (("fog", 1), ("contrast", 1))


def _rows(
    method: str,
    accuracies: tuple[float, ...],
    *,
    seed: int,
    batch_size: int = 100,
    params: dict | None = None,
    cells: tuple[tuple[str, int], ...] = CELLS,
    clean: float = 95.0,
) -> pd.DataFrame:
    """A job's rows shaped like the runner's: clean, then one row per cell, n=100 images."""
    records = [{"corruption": "clean", "severity": 0, "accuracy": clean}]
    records += [
        {"corruption": corruption, "severity": severity, "accuracy": accuracy}
        for (corruption, severity), accuracy in zip(cells, accuracies, strict=True)
    ]
    frame = pd.DataFrame(records)
    frame["error"] = 100 - frame["accuracy"]
    frame["n"] = 100
    frame["correct"] = frame["accuracy"]  # n=100: the count equals the percentage
    frame["dataset"] = "fashion_mnist_c"
    frame["model"] = "toy"
    frame["finetune"] = "none"
    frame["method"] = method
    frame["method_params"] = json.dumps(params or {}, sort_keys=True)
    frame["n_examples"] = 100
    frame["data_seed"] = seed
    frame["batch_size"] = batch_size
    frame["seed"] = seed
    frame["config_hash"] = f"{method}{seed}{batch_size}"
    frame["finished_at"] = "2026-01-01T00:00:00+00:00"
    return frame


def _job(folder: Path, frame: pd.DataFrame) -> Path:
    folder.mkdir(parents=True)
    frame.to_csv(folder / "rows.csv", index=False)
    return folder


def _three_seeds_of_bn(root: Path) -> None:
    # Seed s: cells at 80+s and 90+s, so the per-seed means are 85, 86, 87.
    for seed in (0, 1, 2):
        _job(root / f"bn{seed}", _rows("bn", (80.0 + seed, 90.0 + seed), seed=seed))


def _binomial_standard_error(*accuracies: float, n: int = 100) -> float:
    variance = sum(a / 100 * (1 - a / 100) / n for a in accuracies)
    return 100 * math.sqrt(variance) / len(accuracies)


def test_mean_and_sample_std_over_seeds_by_hand(tmp_path):
    _three_seeds_of_bn(tmp_path / "runs")
    _job(tmp_path / "runs" / "source", _rows("source", (40.0, 60.0), seed=0))
    text = cli.build_report([tmp_path / "runs"], tmp_path / "out", make_plots=False)
    folder = tmp_path / "out" / "fashion_mnist_c__toy"

    tidy = pd.read_csv(folder / "seed_means.csv", dtype={"seed": str, "data_seed": str})
    bn = tidy[tidy["setup"] == "bn"]
    assert bn["row"].tolist() == ["seed", "seed", "seed", "mean over seeds"]
    assert bn["mean_accuracy"].tolist() == pytest.approx([85.0, 86.0, 87.0, 86.0])
    over = bn.iloc[-1]
    # Sample standard deviation of 85, 86, 87: sqrt(((-1)^2 + 0 + 1^2) / 2) = 1.
    assert over["std_over_seeds"] == pytest.approx(1.0)
    assert over["seeds"] == 3 and over["seed"] == "0,1,2"
    assert over["aggregated_over"] == "seed data_seed"
    # 0.8 and 0.9 of 100 images: 100 * sqrt((0.16 + 0.09) / 100) / 2 = 2.5 points.
    assert bn.iloc[0]["binomial_standard_error"] == pytest.approx(2.5, abs=1e-4)
    per_seed = [_binomial_standard_error(80 + s, 90 + s) for s in (0, 1, 2)]
    assert over["binomial_standard_error"] == pytest.approx(sum(per_seed) / 3, abs=1e-4)

    assert "| bn | 86.00 ± 1.00 (3 seeds) |" in text
    assert "| source | 50.00 (1 seed) |" in text
    assert "columns seed, data_seed" in text
    summary = pd.read_csv(folder / "summary.csv", index_col=0)
    assert summary.loc["bn", "mean error"] == pytest.approx(14.0)
    assert summary.loc["bn", "std over seeds"] == pytest.approx(1.0)
    assert summary.loc["bn", "seeds"] == 3 and summary.loc["source", "seeds"] == 1
    assert math.isnan(summary.loc["source", "std over seeds"])
    # The per-cell tables hold the mean over seeds: fog 81, contrast 91.
    per_cell = (folder / "table__bn.md").read_text()
    assert "| fog | 81.00 | 81.00 |" in per_cell and "| contrast | 91.00 | 91.00 |" in per_cell
    assert "| bn | accuracy (%), mean over 3 seeds" in (tmp_path / "out" / "report.md").read_text()


def test_one_seed_keeps_the_single_seed_report(tmp_path):
    _job(tmp_path / "bn", _rows("bn", (80.0, 90.0), seed=0))
    _job(tmp_path / "source", _rows("source", (40.0, 60.0), seed=0))
    text = cli.build_report([tmp_path], tmp_path / "out", make_plots=False)
    summary = pd.read_csv(tmp_path / "out" / "fashion_mnist_c__toy" / "summary.csv", index_col=0)
    assert list(summary.columns) == ["clean error", "mean error", "binomial s.e."]
    assert summary.loc["bn", "binomial s.e."] == pytest.approx(2.5, abs=1e-4)
    assert "over seeds" not in text and "±" not in text


def test_setups_differing_in_batch_size_are_not_merged_across_seeds(tmp_path):
    for seed in (0, 1):
        _job(tmp_path / f"a{seed}", _rows("bn", (80.0 + seed, 90.0), seed=seed, batch_size=100))
        _job(tmp_path / f"b{seed}", _rows("bn", (70.0 + seed, 70.0), seed=seed, batch_size=50))
    groups = seeds.group_seeds(aggregate.load_rows([tmp_path]))
    over = seeds.over_seeds(seeds.per_seed_means(groups), groups.aggregated_over)
    by_setup = over.set_index("setup")
    assert set(by_setup.index) == {"bn [batch_size=100]", "bn [batch_size=50]"}
    assert by_setup["seeds"].tolist() == [2, 2]
    assert by_setup.loc["bn [batch_size=100]", "mean_accuracy"] == pytest.approx(85.25)
    assert by_setup.loc["bn [batch_size=50]", "mean_accuracy"] == pytest.approx(70.25)


def test_a_methods_own_seed_is_aggregated_over_too(tmp_path):
    for seed in (0, 1):
        params = {"learning_rate": 0.00025, "seed": seed}
        _job(tmp_path / f"eata{seed}", _rows("eata", (80.0 + seed, 90.0), seed=seed, params=params))
    groups = seeds.group_seeds(aggregate.load_rows([tmp_path]))
    assert set(groups.rows["setup"]) == {"eata"}
    assert groups.aggregated_over == ["seed", "data_seed", "method_params.seed"]


def test_the_same_cell_of_the_same_seed_in_two_folders_is_an_error(tmp_path):
    _three_seeds_of_bn(tmp_path)
    _job(tmp_path / "again", _rows("bn", (50.0, 50.0), seed=1))
    with pytest.raises(DuplicateCellsError, match="never averaged"):
        cli.build_report([tmp_path], tmp_path / "out", make_plots=False)


def test_seeds_covering_different_cells_are_not_averaged(tmp_path):
    _job(tmp_path / "bn0", _rows("bn", (80.0, 90.0), seed=0))
    _job(tmp_path / "bn1", _rows("bn", (81.0,), seed=1, cells=CELLS[:1]))
    groups = seeds.group_seeds(aggregate.load_rows([tmp_path]))
    assert not groups.has_several_seeds
    assert set(groups.rows["setup"]) == {"bn [data_seed=0, seed=0]", "bn [data_seed=1, seed=1]"}
    assert "not averaged" in groups.notes[0]


def test_the_seeds_preset_sweeps_three_seeds():
    preset = Path(robustbench_bn.__file__).parent / "conf" / "experiment" / "seeds.yaml"
    params = OmegaConf.load(preset).hydra.sweeper.params
    assert str(params.seed) == "0,1,2" and "bn" in str(params.method).split(",")


def test_differences_are_paired_by_seed(tmp_path):
    _three_seeds_of_bn(tmp_path)
    # tent is 1, 2, 3 points above bn under seeds 0, 1, 2: the paired difference is 2 ± 1.
    for seed in (0, 1, 2):
        gain = seed + 1.0
        _job(
            tmp_path / f"tent{seed}", _rows("tent", (80 + seed + gain, 90 + seed + gain), seed=seed)
        )
    _job(tmp_path / "source", _rows("source", (40.0, 60.0), seed=0))
    text = cli.build_report([tmp_path], tmp_path / "out", make_plots=False)
    folder = tmp_path / "out" / "fashion_mnist_c__toy"
    differences = pd.read_csv(folder / "paired_differences.csv").set_index(["setup", "reference"])
    tent_minus_bn = differences.loc[("tent", "bn")]
    assert tent_minus_bn["paired_seeds"] == 3
    assert tent_minus_bn["mean_difference_accuracy"] == pytest.approx(2.0)
    assert tent_minus_bn["std_of_difference"] == pytest.approx(1.0)
    assert differences.loc[("bn", "tent"), "mean_difference_accuracy"] == pytest.approx(-2.0)
    # source has one seed: one pair, no spread, left empty in the matrix.
    assert differences.loc[("bn", "source"), "paired_seeds"] == 1
    assert "| tent |  | +2.000 ± 1.000 (3) |  |" in text
