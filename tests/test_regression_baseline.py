"""The CI regression guard: re-run the slice of every method and compare it with the baseline.

Each setup of :mod:`robustbench_bn.regression` runs for real through
``runner.run`` on a config from conftest's ``make_config`` (the quick 0.1-epoch model, the
session's cache) and is compared cell by cell with ``results/fashion_mnist_c/ci_slice.csv``
within :data:`~robustbench_bn.regression.TOLERANCE`. The cheap setups run with the
fast tests; dmc (source quantiles), AdvBN (a fine-tune) and dua (5,120 augmented forwards per
cell, about 15 s) are marked ``slow``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from robustbench_bn.regression import (
    CELLS_PER_SETUP,
    MODEL_CHECKPOINT,
    SETUPS,
    TOLERANCE,
    setup_overrides,
)
from robustbench_bn.report import compare
from robustbench_bn.runner import run

BASELINE = Path(__file__).resolve().parents[1] / "results" / "fashion_mnist_c" / "ci_slice.csv"
SLOW_SETUPS = {"dmc", "advbn_bn", "dua"}


def _setup_key(frame: pd.DataFrame) -> pd.Series:
    params = frame["method_params"].map(lambda text: json.dumps(json.loads(text), sort_keys=True))
    return frame["finetune"] + "|" + frame["method"] + "|" + params


def test_baseline_holds_every_setup_of_the_slice():
    baseline = pd.read_csv(BASELINE, dtype={"method_params": str})
    counts = _setup_key(baseline).value_counts()
    assert len(counts) == len(SETUPS)
    assert (counts == CELLS_PER_SETUP).all()
    assert set(baseline["severity"]) == {0, 1, 3, 5}
    assert baseline["n"].eq(500).all() and baseline["seed"].eq(0).all()


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SETUPS else n for n in SETUPS],
)
def test_setup_matches_the_committed_baseline(name, make_config, tmp_path):
    rows = run(make_config(*setup_overrides(name), output_dir=tmp_path / "job"))
    baseline = pd.read_csv(BASELINE, dtype={"method_params": str})
    own = baseline[_setup_key(baseline).isin(set(_setup_key(rows)))]
    assert len(own) == CELLS_PER_SETUP, f"{name}: no baseline rows for {set(_setup_key(rows))}"
    reference = tmp_path / "reference.csv"
    own.to_csv(reference, index=False)

    comparison = compare.compare([str(tmp_path / "job")], str(reference), TOLERANCE)
    assert comparison.passed, f"{name} moved:\n{compare.report(comparison)}"


def test_tests_evaluate_the_committed_quick_model(session_cache):
    """The cache seeded by conftest serves the committed weights for the quick model's config,
    so no test trains its own (which would make the baseline depend on the CPU)."""
    import torch

    from robustbench_bn.models.training import trained_small_resnet

    committed = torch.load(
        Path(__file__).resolve().parents[1] / MODEL_CHECKPOINT, weights_only=True
    )["state_dict"]
    loaded = trained_small_resnet(cache_dir=str(session_cache), epochs=0.1, progress=False)
    assert loaded.state_dict().keys() == committed.keys()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, committed[name]), name
