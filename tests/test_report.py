"""rbn-report on synthetic rows: mCE by hand, comparisons, formats, duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from robustbench_bn.data.corruptions import BENCHMARK_CORRUPTIONS
from robustbench_bn.report import aggregate, cli, compare, formats, mce
from robustbench_bn.report.aggregate import DuplicateCellsError


def _rows(dataset: str, method: str, error_of, params: dict | None = None) -> pd.DataFrame:
    records = [{"corruption": "clean", "severity": 0, "error": error_of("clean", 0)}]
    records += [
        {"corruption": corruption, "severity": severity, "error": error_of(corruption, severity)}
        for corruption in BENCHMARK_CORRUPTIONS
        for severity in range(1, 6)
    ]
    frame = pd.DataFrame(records)
    frame["accuracy"] = 100 - frame["error"]
    frame["dataset"] = dataset
    frame["model"] = "toy"
    frame["finetune"] = "none"
    frame["method"] = method
    frame["method_params"] = json.dumps(params or {})
    frame["seed"] = 0
    frame["finished_at"] = "2026-01-01T00:00:00"
    return frame


def _job(folder: Path, frame: pd.DataFrame) -> Path:
    folder.mkdir(parents=True)
    frame.to_csv(folder / "rows.csv", index=False)
    return folder


def test_mce_matches_a_hand_computed_example():
    # Error = 2 x AlexNet's mean error on every CIFAR-10-C corruption -> CE_c = 2 -> mCE 200.
    alexnet = mce.alexnet_errors("cifar10_c")
    rows = _rows(
        "cifar10_c", "source", lambda c, s: 10.0 if c == "clean" else 200 * float(alexnet[c])
    )
    rows["label"] = "source"
    table, notes = mce.mce_table(rows)
    assert table.loc[0, "mCE"] == pytest.approx(200.0)
    assert any("relative mCE" in note for note in notes)


def test_imagenet_relative_mce_by_hand():
    alexnet = mce.alexnet_errors("imagenet_c")
    clean_error = 0.20
    # E_c - E_clean = half of AlexNet's (E_c - E_clean) -> relative CE 0.5 everywhere.
    rows = _rows(
        "imagenet_c",
        "bn",
        lambda c, s: (
            100 * clean_error
            if c == "clean"
            else 100 * (clean_error + 0.5 * (float(alexnet[c]) - 0.4345))
        ),
    )
    rows["label"] = "bn"
    table, _ = mce.mce_table(rows)
    assert table.loc[0, "relative_mCE"] == pytest.approx(50.0)


def test_dataset_without_baseline_gets_a_note_not_a_key_error():
    rows = _rows("fashion_mnist_c", "source", lambda c, s: 10.0 * s)
    rows["label"] = "source"
    table, notes = mce.mce_table(rows)
    assert table.empty and "no AlexNet baseline" in notes[0]


def test_report_writes_markdown_and_latex_with_expected_cells(tmp_path):
    _job(tmp_path / "runs" / "a", _rows("cifar10_c", "source", lambda c, s: 10.0 * s))
    _job(
        tmp_path / "runs" / "b",
        _rows("cifar10_c", "bn", lambda c, s: 5.0 * s, {"statistics": "batch"}),
    )
    text = cli.build_report(
        [str(tmp_path / "runs")], tmp_path / "out", metric="error", make_plots=False
    )
    folder = tmp_path / "out" / "cifar10_c__toy"
    markdown = (folder / "comparison_by_severity.md").read_text()
    assert "| severity | source | bn |" in markdown
    assert "| 3 | 30.00 | 15.00 |" in markdown
    latex = (folder / "comparison_by_severity.tex").read_text()
    assert r"\toprule" in latex and r"\bottomrule" in latex
    assert r"3 & 30.0 & 15.0 \\" in latex
    assert "mCE" in text


def test_same_cell_from_two_folders_is_reported_not_averaged(tmp_path):
    rows = _rows("cifar10_c", "source", lambda c, s: 10.0)
    _job(tmp_path / "one", rows)
    _job(tmp_path / "two", rows.assign(error=20.0, accuracy=80.0, finished_at="2026-02-01"))
    with pytest.raises(DuplicateCellsError, match="never averaged"):
        aggregate.load_rows([tmp_path])
    newest = aggregate.load_rows([tmp_path], keep="newest")
    assert (newest["error"] == 20.0).all() and len(newest) == len(rows)


def test_compare_passes_within_tolerance_and_fails_on_a_planted_regression(tmp_path):
    baseline = _rows("fashion_mnist_c", "bn", lambda c, s: 10.0 + s)
    reference = tmp_path / "reference.csv"
    baseline.to_csv(reference, index=False)
    _job(tmp_path / "same", baseline.assign(accuracy=baseline["accuracy"] + 0.2))
    merged = compare.compare([str(tmp_path / "same")], str(reference), tolerance=0.5)
    assert compare.report(merged, 0.5)[1]

    regressed = baseline.copy()
    regressed.loc[regressed["corruption"] == "fog", "accuracy"] -= 3.0
    _job(tmp_path / "regressed", regressed)
    merged = compare.compare([str(tmp_path / "regressed")], str(reference), tolerance=0.5)
    text, passed = compare.report(merged, 0.5)
    assert not passed and "fog" in text and "5 outside" in text

    _job(tmp_path / "shrunk", baseline[baseline["corruption"] != "snow"])
    merged = compare.compare([str(tmp_path / "shrunk")], str(reference), tolerance=0.5)
    text, passed = compare.report(merged, 0.5)
    assert not passed and "5 missing" in text


def test_compare_command_exit_codes(tmp_path):
    baseline = _rows("fashion_mnist_c", "bn", lambda c, s: 10.0 + s)
    baseline.to_csv(tmp_path / "reference.csv", index=False)
    _job(tmp_path / "run", baseline.assign(accuracy=baseline["accuracy"] - 1.0))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compare", str(tmp_path / "run"), str(tmp_path / "reference.csv")])
    assert exit_info.value.code == 1
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compare", str(tmp_path / "run"), str(tmp_path / "reference.csv"), "--tol", "2"])
    assert exit_info.value.code == 0


def test_latex_escapes_underscores():
    table = pd.DataFrame({"a_b": [1.0]}, index=["gaussian_noise"])
    assert r"gaussian\_noise & 1.0" in formats.latex_table(table, index_name="corruption")


def test_no_rows_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "No rows.csv" in capsys.readouterr().err


def test_labels_show_parameters_only_where_a_method_has_several(tmp_path):
    _job(tmp_path / "a", _rows("cifar10_c", "bn", lambda c, s: 5.0, {"statistics": "batch"}))
    _job(tmp_path / "b", _rows("cifar10_c", "bn", lambda c, s: 6.0, {"statistics": "samples"}))
    _job(tmp_path / "c", _rows("cifar10_c", "tent", lambda c, s: 7.0, {"steps": 1}))
    labels = set(aggregate.load_rows([tmp_path])["label"])
    assert labels == {"bn(statistics=batch)", "bn(statistics=samples)", "tent"}
