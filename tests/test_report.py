"""rbn-report on synthetic rows: mCE by hand, comparisons, formats, duplicates, bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from robustbench_bn.data.corruptions import BENCHMARK_CORRUPTIONS
from robustbench_bn.errors import ConfigurationError
from robustbench_bn.report import aggregate, cli, compare, formats, mce
from robustbench_bn.report.aggregate import DuplicateCellsError


def _rows(
    dataset: str,
    method: str,
    error_of: Callable[[str, int], float],
    params: dict | None = None,
    *,
    finetune: str = "none",
    seed: int = 0,
    corruptions: tuple[str, ...] = BENCHMARK_CORRUPTIONS,
    severities: tuple[int, ...] = (1, 2, 3, 4, 5),
) -> pd.DataFrame:
    """Rows shaped like the runner's: one per cell, clean first."""
    records = [{"corruption": "clean", "severity": 0, "error": error_of("clean", 0)}]
    records += [
        {"corruption": corruption, "severity": severity, "error": error_of(corruption, severity)}
        for corruption in corruptions
        for severity in severities
    ]
    frame = pd.DataFrame(records)
    frame["accuracy"] = 100 - frame["error"]
    frame["dataset"] = dataset
    frame["model"] = "toy"
    frame["finetune"] = finetune
    frame["method"] = method
    frame["method_params"] = json.dumps(params or {}, sort_keys=True)
    frame["n_examples"] = 1000
    frame["batch_size"] = 100
    frame["seed"] = seed
    frame["config_hash"] = f"{method}{seed}"
    frame["n"] = 1000
    frame["finished_at"] = "2026-01-01T00:00:00+00:00"
    return frame


def _job(folder: Path, frame: pd.DataFrame) -> Path:
    folder.mkdir(parents=True)
    frame.to_csv(folder / "rows.csv", index=False)
    return folder


def _labelled(frame: pd.DataFrame, label: str) -> pd.DataFrame:
    return frame.assign(label=label)


# --- mCE -----------------------------------------------------------------------------------


def test_mce_matches_a_hand_computed_example():
    # AlexNet's error on every CIFAR-10-C corruption except gaussian_noise, where it is three
    # times AlexNet's: CE = 1 for 14 corruptions and 3 for one -> mCE = 100 * 17 / 15.
    alexnet = mce.alexnet_errors("cifar10_c")
    assert alexnet["gaussian_noise"] == pytest.approx(0.2584)

    def error_of(corruption: str, severity: int) -> float:
        if corruption == "clean":
            return 5.0
        factor = 3.0 if corruption == "gaussian_noise" else 1.0
        # Severities spread around the mean: only the mean over the five enters CE.
        return 100 * factor * float(alexnet[corruption]) + (severity - 3)

    table, notes = mce.mce_table(_labelled(_rows("cifar10_c", "source", error_of), "source"))
    assert table.loc[0, "mCE"] == pytest.approx(100 * 17 / 15)
    assert pd.isna(table.loc[0, "relative_mCE"])
    assert any("no relative mCE" in note for note in notes)


def test_imagenet_relative_mce_by_hand():
    alexnet = mce.alexnet_errors("ImageNet-C")
    clean_error = 0.20
    # E_c - E_clean is half of AlexNet's E_c - 0.4345 everywhere -> relative mCE 50.
    rows = _rows(
        "imagenet_c",
        "bn",
        lambda c, s: (
            100 * clean_error
            if c == "clean"
            else 100 * (clean_error + 0.5 * (float(alexnet[c]) - 0.4345))
        ),
    )
    table, notes = mce.mce_table(_labelled(rows, "bn"))
    assert table.loc[0, "relative_mCE"] == pytest.approx(50.0)
    expected = (
        100
        * sum(
            (clean_error + 0.5 * (float(alexnet[c]) - 0.4345)) / float(alexnet[c])
            for c in BENCHMARK_CORRUPTIONS
        )
        / len(BENCHMARK_CORRUPTIONS)
    )
    assert table.loc[0, "mCE"] == pytest.approx(expected)
    assert notes == []


def test_dataset_names_map_to_the_baseline_columns():
    assert mce.alexnet_errors("CIFAR-100-C")["contrast"] == pytest.approx(0.75924)
    assert mce.alexnet_errors("cifar100c")["contrast"] == pytest.approx(0.75924)
    assert mce.alexnet_errors("imagenet_c")["fog"] == pytest.approx(0.819324)
    assert mce.alexnet_errors("fashion_mnist_c") is None


def test_dataset_without_baseline_gets_a_note_not_a_key_error():
    rows = _labelled(_rows("fashion_mnist_c", "source", lambda c, s: 10.0 * s), "source")
    table, notes = mce.mce_table(rows)
    assert table.empty and "no AlexNet baseline" in notes[0]
    summary, _ = mce.summary_table(rows)
    assert list(summary.columns) == ["clean error", "mean error"]
    assert summary.loc["source", "mean error"] == pytest.approx(30.0)


def test_mce_needs_every_corruption_and_severity():
    partial = _rows("cifar10_c", "source", lambda c, s: 30.0, severities=(1, 3, 5))
    table, notes = mce.mce_table(_labelled(partial, "source"))
    assert table["mCE"].isna().all()
    assert any("severities 1-5" in note for note in notes)
    few = _rows("cifar10_c", "source", lambda c, s: 30.0, corruptions=("fog",))
    _, notes = mce.mce_table(_labelled(few, "source"))
    assert any("missing" in note and "gaussian_noise" in note for note in notes)


# --- tables and formats --------------------------------------------------------------------


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
    assert "| mean | 30.00 | 15.00 |" in markdown
    latex = (folder / "comparison_by_severity.tex").read_text()
    assert r"\toprule" in latex and r"\midrule" in latex and r"\bottomrule" in latex
    assert r"3 & 30.0 & 15.0 \\" in latex
    by_corruption = (folder / "comparison_by_corruption.tex").read_text()
    assert r"gaussian\_noise & 30.0 & 15.0 \\" in by_corruption
    per_setup = (folder / "table__bn.md").read_text()
    assert "| fog | 5.00 | 10.00 | 15.00 | 20.00 | 25.00 | 15.00 |" in per_setup
    assert "| clean |  |  |  |  |  | 0.00 |" in per_setup
    summary = pd.read_csv(folder / "summary.csv", index_col=0)
    # source errors 10..50 are CE_c = 0.3 / AlexNet's mean error per corruption.
    expected = 100 * (0.30 / mce.alexnet_errors("cifar10_c")).mean()
    assert summary.loc["source", "mCE"] == pytest.approx(expected, abs=1e-3)
    assert summary.loc["bn", "mean error"] == pytest.approx(15.0)
    assert "mCE" in text and "no relative mCE" in text


def test_accuracy_is_the_default_metric(tmp_path):
    _job(tmp_path / "a", _rows("fashion_mnist_c", "source", lambda c, s: 10.0 * s))
    cli.build_report([tmp_path / "a"], tmp_path / "out", make_plots=False)
    markdown = tmp_path / "out" / "fashion_mnist_c__toy" / "comparison_by_severity.md"
    assert "| 2 | 80.00 |" in markdown.read_text()


def test_latex_escapes_special_characters_once():
    table = pd.DataFrame({"a_b": [1.0]}, index=["gaussian_noise"])
    latex = formats.latex_table(table, index_name="corruption")
    assert r"gaussian\_noise & 1.0 \\" in latex and r"corruption & a\_b \\" in latex
    assert formats.latex_escape("50% {x}\\") == r"50\% \{x\}\textbackslash{}"


def test_labels_show_only_the_parameters_that_differ(tmp_path):
    batch = {"prior": 0, "statistics": "batch"}
    samples = {"n_samples": 32, "prior": 0, "statistics": "samples"}
    _job(tmp_path / "a", _rows("cifar10_c", "bn", lambda c, s: 5.0, batch))
    _job(tmp_path / "b", _rows("cifar10_c", "bn", lambda c, s: 6.0, samples))
    _job(tmp_path / "c", _rows("cifar10_c", "tent", lambda c, s: 7.0, {"steps": 1}))
    _job(tmp_path / "d", _rows("cifar10_c", "bn", lambda c, s: 4.0, batch, finetune="advbn"))
    _job(tmp_path / "e", _rows("cifar10_c", "source", lambda c, s: 9.0))
    rows = aggregate.load_rows([tmp_path])
    assert aggregate.ordered_labels(rows) == [
        "source",
        "bn(statistics=batch)",
        "bn(statistics=samples,n_samples=32)",
        "tent",
        "advbn+bn",
    ]


def test_setups_differing_in_a_protocol_field_are_kept_apart(tmp_path):
    _job(tmp_path / "seed0", _rows("cifar10_c", "bn", lambda c, s: 10.0, seed=0))
    _job(tmp_path / "seed1", _rows("cifar10_c", "bn", lambda c, s: 20.0, seed=1))
    rows = aggregate.load_rows([tmp_path])
    assert set(rows["label"]) == {"bn [seed=0]", "bn [seed=1]"}
    table = aggregate.comparison_tables(rows, "error")["by_severity"]
    # Never averaged into 15.
    assert table.loc["mean"].tolist() == [10.0, 20.0]


def test_setups_covering_different_cells_get_a_note(tmp_path):
    _job(tmp_path / "a", _rows("cifar10_c", "source", lambda c, s: 10.0))
    _job(tmp_path / "b", _rows("cifar10_c", "bn", lambda c, s: 5.0, corruptions=("fog",)))
    note = aggregate.coverage_note(aggregate.load_rows([tmp_path]))
    assert note is not None and "source: 75" in note and "bn: 5" in note


def test_plots_are_written_as_png_and_pdf(tmp_path):
    corruptions = ("gaussian_noise", "fog", "contrast")
    _job(
        tmp_path / "a", _rows("cifar10_c", "source", lambda c, s: 10.0 * s, corruptions=corruptions)
    )
    _job(tmp_path / "b", _rows("cifar10_c", "bn", lambda c, s: 4.0 * s, corruptions=corruptions))
    cli.build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    folder = tmp_path / "out" / "cifar10_c__toy"
    for stem in ("severity_curves", "gain_over_source", "per_corruption_curves"):
        for suffix in (".png", ".pdf"):
            assert (folder / f"{stem}{suffix}").stat().st_size > 1000


# --- duplicates ----------------------------------------------------------------------------


def test_same_cell_from_two_folders_is_reported_not_averaged(tmp_path):
    rows = _rows("cifar10_c", "source", lambda c, s: 10.0)
    _job(tmp_path / "one", rows)
    _job(tmp_path / "two", rows.assign(error=20.0, accuracy=80.0, finished_at="2026-02-01"))
    with pytest.raises(DuplicateCellsError, match="never averaged"):
        aggregate.load_rows([tmp_path])
    newest = aggregate.load_rows([tmp_path], keep="newest")
    assert (newest["error"] == 20.0).all() and len(newest) == len(rows)


def _job_with_config(folder: Path, rows: pd.DataFrame, config: dict) -> None:
    _job(folder, rows)
    (folder / "job.json").write_text(json.dumps({"config": config}))


def test_finetune_settings_from_job_json_tell_setups_apart(tmp_path):
    rows = _rows("cifar10_c", "bn", lambda c, s: 10.0, finetune="advbn")
    for name, epochs in (("short", 0.1), ("long", 1.0)):
        config = {"finetune": {"name": "advbn", "epochs": epochs, "progress": False}}
        _job_with_config(tmp_path / name, rows.assign(error=10 * epochs), config)
    loaded = aggregate.load_rows([tmp_path])
    assert set(loaded["label"]) == {
        "advbn+bn [finetune.epochs=0.1]",
        "advbn+bn [finetune.epochs=1]",
    }
    means = aggregate.comparison_tables(loaded, "error")["by_severity"].loc["mean"]
    assert sorted(means.tolist()) == [1.0, 10.0]


def test_finetune_params_in_rows_and_from_job_json_spell_one_setup_alike(tmp_path):
    """Rows that carry finetune_params and older rows whose job.json says the same fine-tune
    are one setup (so the same cell twice is a duplicate); rows without the column, or with
    it left blank, still load."""
    from robustbench_bn.results import finetune_params

    settings = {"name": "advbn", "epochs": 1, "split_after": "stem", "progress": True}
    new = _rows("cifar10_c", "bn", lambda c, s: 10.0, finetune="advbn")
    new["finetune_params"] = finetune_params(settings)
    assert json.loads(new["finetune_params"].iloc[0]) == {"epochs": 1, "split_after": "stem"}
    _job(tmp_path / "new", new)
    _job_with_config(tmp_path / "old", new.drop(columns="finetune_params"), {"finetune": settings})
    with pytest.raises(DuplicateCellsError):
        aggregate.load_rows([tmp_path / "new", tmp_path / "old"])
    other = dict(settings, split_after="stages.0")
    _job_with_config(tmp_path / "other", new.drop(columns="finetune_params"), {"finetune": other})
    loaded = aggregate.load_rows([tmp_path / "new", tmp_path / "other"])
    assert set(loaded["label"]) == {
        "advbn+bn [finetune.split_after=stem]",
        "advbn+bn [finetune.split_after=stages.0]",
    }
    # A committed CSV: a blank finetune_params (not known) and finetune=none read as no settings.
    table = pd.concat([new, _rows("cifar10_c", "source", lambda c, s: 20.0)])
    table.loc[table["finetune"] == "none", "finetune_params"] = None
    table.to_csv(tmp_path / "table.csv", index=False)
    loaded = aggregate.load_rows([tmp_path / "table.csv"])
    by_finetune = loaded.groupby("finetune")["finetune_params"].unique()
    assert list(by_finetune["none"]) == ["{}"]
    assert list(by_finetune["advbn"]) == [new["finetune_params"].iloc[0]]


def test_committed_advbn_rows_carry_the_finetune_params_their_hash_proves(make_config):
    """results/fashion_mnist_c/full_grid.csv was backfilled by
    scripts/backfill_finetune_params.py: a value only where the composed config hashes to the
    row's config_hash; a row whose hash does not match stays blank."""
    import importlib.util

    from robustbench_bn.results import finetune_params
    from robustbench_bn.runner import config_hash

    root = Path(__file__).resolve().parents[1]
    grid = pd.read_csv(root / "results/fashion_mnist_c/full_grid.csv", dtype=str)
    advbn = grid[grid["finetune"] == "advbn"]
    assert len(advbn) and (grid.loc[grid["finetune"] == "none", "finetune_params"] == "{}").all()
    for method, rows in advbn.groupby("method"):
        cfg = make_config("finetune=advbn", f"method={method}", quick_model=False)
        assert set(rows["config_hash"]) == {config_hash(cfg)}
        expected = finetune_params(OmegaConf.to_container(cfg.finetune, resolve=True))
        assert set(rows["finetune_params"]) == {expected}
    spec = importlib.util.spec_from_file_location(
        "backfill", root / "scripts/backfill_finetune_params.py"
    )
    backfill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backfill)
    sample = advbn.head(2).drop(columns="finetune_params").fillna("")
    sample.iloc[1, sample.columns.get_loc("config_hash")] = "not-this-config"
    filled, counts = backfill.backfill(sample)
    assert list(filled["finetune_params"]) == [expected, ""]
    assert counts == {"already": 0, "none": 0, "verified": 1, "unknown": 1}


def test_duplicates_name_the_config_settings_that_differ(tmp_path):
    rows = _rows("cifar10_c", "bn", lambda c, s: 10.0)
    for name, layout in (("old", False), ("new", True), ("again", True)):
        config = {"runner": {"channels_last": layout}, "paths": {"output_dir": name}}
        _job_with_config(tmp_path / name, rows.assign(config_hash=name), config)
    with pytest.raises(DuplicateCellsError) as error:
        aggregate.load_rows([tmp_path / "old", tmp_path / "new"])
    assert "runner.channels_last: True vs False" in str(error.value)
    with pytest.raises(DuplicateCellsError, match="same settings"):
        aggregate.load_rows([tmp_path / "new", tmp_path / "again"])


def test_a_folder_named_twice_is_read_once(tmp_path):
    folder = _job(tmp_path / "multirun" / "job", _rows("cifar10_c", "bn", lambda c, s: 1.0))
    rows = aggregate.load_rows([tmp_path / "multirun", folder, folder / "rows.csv"])
    assert len(rows) == 76


def test_a_report_written_inside_the_sweep_folder_is_not_read_back(tmp_path):
    sweep = tmp_path / "multirun"
    _job(sweep / "source", _rows("cifar10_c", "source", lambda c, s: 10.0 * s))
    _job(sweep / "bn", _rows("cifar10_c", "bn", lambda c, s: 5.0 * s, {"statistics": "batch"}))
    cli.build_report([str(sweep)], sweep / "report", metric="error", make_plots=False)
    assert (sweep / "report" / "rows.csv").is_file()
    # The second report over the same folder sees the two jobs, not a third copy of them.
    assert len(aggregate.load_rows([sweep])) == 2 * 76
    cli.build_report([str(sweep)], sweep / "report", metric="error", make_plots=False)


def test_duplicate_exits_2_from_the_command_line(tmp_path, capsys):
    rows = _rows("cifar10_c", "source", lambda c, s: 10.0)
    _job(tmp_path / "one", rows)
    _job(tmp_path / "two", rows)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(tmp_path), "--out", str(tmp_path / "out"), "--no-plots"])
    assert exit_info.value.code == 2
    assert "--keep newest" in capsys.readouterr().err


# --- compare -------------------------------------------------------------------------------


def test_compare_passes_within_tolerance_and_fails_on_a_planted_regression(tmp_path):
    baseline = _rows("fashion_mnist_c", "bn", lambda c, s: 10.0 + s)
    reference = tmp_path / "reference.csv"
    baseline.to_csv(reference, index=False)
    _job(tmp_path / "same", baseline.assign(accuracy=baseline["accuracy"] + 0.2))
    result = compare.compare([str(tmp_path / "same")], str(reference), tolerance=0.5)
    assert result.passed and compare.report(result).endswith("PASS")

    regressed = baseline.copy()
    regressed.loc[regressed["corruption"] == "fog", "accuracy"] -= 3.0
    _job(tmp_path / "regressed", regressed)
    result = compare.compare([str(tmp_path / "regressed")], str(reference), tolerance=0.5)
    text = compare.report(result)
    assert not result.passed and "fog" in text and "5 outside" in text
    assert text.endswith("FAIL")

    _job(tmp_path / "shrunk", baseline[baseline["corruption"] != "snow"])
    result = compare.compare([str(tmp_path / "shrunk")], str(reference), tolerance=0.5)
    text = compare.report(result)
    assert not result.passed and "5 missing" in text
    assert "missing from the run:" in text and "snow" in text.split("missing from the run:")[1]


def test_compare_matches_paper_style_references(tmp_path):
    # A paper gives error, a spelled-out dataset name and only the parameter it varied.
    run = _rows(
        "cifar10_c",
        "bn",
        lambda c, s: 10.0,
        {"n_samples": 32, "prior": 0, "statistics": "samples"},
        severities=(5,),
    )
    _job(tmp_path / "run", run)
    reference = pd.DataFrame(
        {
            "dataset": "CIFAR-10-C",
            "method": "bn",
            "method_params": '{"statistics": "samples"}',
            "corruption": list(BENCHMARK_CORRUPTIONS),
            "severity": 5,
            "error": 10.3,
        }
    )
    path = tmp_path / "paper.csv"
    path.write_text("# cited source\n" + reference.to_csv(index=False))
    result = compare.compare([str(tmp_path / "run")], str(path), tolerance=0.5)
    assert result.passed and len(result.cells) == 15
    assert result.cells["difference"].round(6).eq(0.3).all()
    assert result.run_cells_not_in_reference == 1  # the clean cell

    other = reference.assign(method_params='{"statistics": "batch"}')
    other.to_csv(path, index=False)
    result = compare.compare([str(tmp_path / "run")], str(path), tolerance=0.5)
    assert not result.passed and result.missing.all()


def test_compare_refuses_a_reference_cell_that_matches_two_setups(tmp_path):
    _job(tmp_path / "a", _rows("cifar10_c", "bn", lambda c, s: 10.0, seed=0))
    _job(tmp_path / "b", _rows("cifar10_c", "bn", lambda c, s: 11.0, seed=1))
    reference = _rows("cifar10_c", "bn", lambda c, s: 10.0)[["method", "corruption", "severity"]]
    reference.assign(accuracy=90.0).to_csv(tmp_path / "ref.csv", index=False)
    with pytest.raises(ConfigurationError, match="match several setups"):
        compare.compare([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "ref.csv"), 1)


def test_compare_command_exit_codes(tmp_path, capsys):
    baseline = _rows("fashion_mnist_c", "bn", lambda c, s: 10.0 + s)
    baseline.to_csv(tmp_path / "reference.csv", index=False)
    _job(tmp_path / "run", baseline.assign(accuracy=baseline["accuracy"] - 1.0))
    arguments = ["compare", str(tmp_path / "run"), str(tmp_path / "reference.csv")]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(arguments)
    assert exit_info.value.code == 1
    assert "76 outside" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*arguments, "--tol", "2"])
    assert exit_info.value.code == 0
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compare", str(tmp_path / "run"), str(tmp_path / "nowhere.csv")])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


# --- bad input -----------------------------------------------------------------------------


def test_no_rows_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "No rows.csv" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("corruption,severity\nfog,1\n", "lacks the columns"),
        ("", "cannot be read"),
        (
            "dataset,model,method,corruption,severity,accuracy\nd,m,bn,fog,one,50\n",
            "numeric severity",
        ),
    ],
)
def test_malformed_rows_are_a_clear_error(tmp_path, capsys, content, message):
    (tmp_path / "rows.csv").write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_malformed_reference_is_a_clear_error(tmp_path):
    _job(tmp_path / "run", _rows("cifar10_c", "bn", lambda c, s: 10.0))
    (tmp_path / "ref.csv").write_text("corruption,accuracy\nfog,50\n")
    with pytest.raises(ConfigurationError, match="lacks the columns"):
        compare.compare([str(tmp_path / "run")], str(tmp_path / "ref.csv"), 0.5)
    (tmp_path / "ref.csv").write_text("corruption,severity,accuracy\nfog,high,50\n")
    with pytest.raises(ConfigurationError, match="severity must be an integer"):
        compare.compare([str(tmp_path / "run")], str(tmp_path / "ref.csv"), 0.5)


def test_protocol_values_read_as_int_or_float_are_one_setup(tmp_path):
    rows = _rows("cifar10_c", "bn", lambda c, s: 10.0)
    _job(tmp_path / "int", rows)
    # A gap in a column makes pandas read it as float: 1000 -> 1000.0.
    gappy = _rows("cifar10_c", "bn", lambda c, s: 10.0, corruptions=("snow",), seed=1)
    gappy["batch_size"] = [None] + [100.0] * (len(gappy) - 1)
    _job(tmp_path / "float", gappy)
    loaded = aggregate.load_rows([tmp_path])
    assert loaded["n_examples"].unique().tolist() == ["1000"]
    with pytest.raises(DuplicateCellsError):
        _job(tmp_path / "again", rows.assign(n_examples=1000.0))
        aggregate.load_rows([tmp_path])


def test_compare_matches_protocol_fields_present_in_both(tmp_path):
    run = _rows("fashion_mnist_c", "bn", lambda c, s: 10.0, corruptions=("fog",))
    _job(tmp_path / "run", run)  # n_examples 1000
    reference = tmp_path / "reference.csv"
    run.assign(n_examples=500).to_csv(reference, index=False)
    result = compare.compare([str(tmp_path / "run")], str(reference), tolerance=0.5)
    assert not result.passed and result.missing.all() and "n_examples" in result.keys
    run.assign(n_examples=1000.0).to_csv(reference, index=False)
    assert compare.compare([str(tmp_path / "run")], str(reference), tolerance=0.5).passed
