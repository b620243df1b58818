"""The CI regression guard: re-run the slice and compare it with the committed baseline."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustbench_bn.report import compare
from robustbench_bn.report.regression import TOLERANCE, run_slice

BASELINE = Path(__file__).resolve().parents[1] / "results" / "fashion_mnist_c" / "ci_slice.csv"


@pytest.mark.slow
def test_slice_matches_the_committed_baseline(tmp_path, session_cache):
    run_slice(cache_dir=session_cache, output_dir=tmp_path / "jobs")
    merged = compare.compare([str(tmp_path / "jobs")], str(BASELINE), TOLERANCE)
    text, passed = compare.report(merged, TOLERANCE)
    assert passed, text
    assert len(merged) == 60  # 6 setups x (clean + 3 corruptions x 3 severities)
