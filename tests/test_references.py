"""The published tables in results/reference/ read as compare references and agree with the
summary numbers their papers print (PAPERS.md), so a conversion slip cannot go unnoticed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from robustbench_bn.data.corruptions import BENCHMARK_CORRUPTIONS
from robustbench_bn.report.compare import read_reference

REFERENCES = Path(__file__).resolve().parents[1] / "results" / "reference"
PER_CELL = sorted(
    path
    for path in REFERENCES.glob("*.csv")
    if "corruption" in pd.read_csv(path, comment="#", nrows=1).columns
)


@pytest.mark.parametrize("path", PER_CELL, ids=lambda path: path.stem)
def test_per_cell_reference_reads_and_is_consistent(path):
    table = read_reference(path)
    assert len(table) > 0
    assert table["accuracy"].between(0, 100).all()
    assert ((table["accuracy"] + table["error"]) - 100).abs().max() < 0.011
    assert table["source_citation"].str.len().min() > 20  # every row says where it is from
    assert not table.duplicated(["model", "method", "corruption", "severity"]).any()


def test_tent_table_means_are_the_published_ones():
    table = read_reference(REFERENCES / "wang2021_tent_cifar10c_sev5.csv")
    assert set(table["corruption"]) == set(BENCHMARK_CORRUPTIONS)
    means = table.groupby("method")["error"].mean()
    # TENT's README: source 43.5, norm 20.4, tent 18.6 (rows are rounded to 0.1).
    assert means["source"] == pytest.approx(43.5, abs=0.1)
    assert means["bn"] == pytest.approx(20.4, abs=0.1)
    assert means["tent"] == pytest.approx(18.6, abs=0.1)


def test_benz_cifar10_means_over_the_benchmark_corruptions():
    table = read_reference(REFERENCES / "benz2021_resnet20_cifar10c.csv")
    benchmark = table[table["corruption"].isin(BENCHMARK_CORRUPTIONS)]
    assert len(benchmark) == 2 * 15 * 5
    means = benchmark.groupby("method")["accuracy"].mean()
    assert means["source"] == pytest.approx(68.20, abs=0.01)
    assert means["bn"] == pytest.approx(72.96, abs=0.01)


def test_summary_reference_holds_the_published_mce():
    summary = pd.read_csv(REFERENCES / "imagenet_c_mce_published.csv", comment="#")
    mce = summary[summary["metric"] == "mCE"]

    def values(paper: str, finetune: str, method: str) -> list[float]:
        chosen = (mce["paper"] == paper) & (mce["finetune"] == finetune)
        return sorted(mce.loc[chosen & (mce["method"] == method), "value"].tolist())

    assert values("schneider2020", "none", "source") == [76.7]
    assert values("schneider2020", "none", "bn") == [62.2, 65.0]
    assert values("shu2021", "advbn", "source") == [72.7]
