"""The runner: cells, rows, resume after an interruption, and clear errors for bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from robustbench_bn import runner as runner_module
from robustbench_bn.errors import ConfigurationError
from robustbench_bn.runner import config_hash, run

SMALL = ["dataset.n_examples=64", "runner.batch_size=32", "dataset.severities=[1,5]"]
TWO_CORRUPTIONS = "dataset.corruptions=[gaussian_noise,brightness]"


def test_run_writes_one_row_per_cell_and_tables(make_config, tmp_path):
    cfg = make_config(*SMALL, TWO_CORRUPTIONS, "method=bn")
    rows = run(cfg)
    cells = list(zip(rows["corruption"], rows["severity"], strict=True))
    assert cells == [
        ("clean", 0),
        ("gaussian_noise", 1),
        ("gaussian_noise", 5),
        ("brightness", 1),
        ("brightness", 5),
    ]
    assert (rows["n"] == 64).all()
    assert (rows["accuracy"] == 100 * rows["correct"] / rows["n"]).all()
    for column in (
        "method_params",
        "batch_size",
        "reset",
        "precision",
        "seed",
        "subset",
        "preprocessing",
        "git_revision",
        "device",
        "config_hash",
        "finetune_params",
    ):
        assert rows[column].notna().all(), column
    assert (rows["finetune_params"] == "{}").all()  # finetune=none has no parameters
    job = tmp_path / "job"
    on_disk = pd.read_csv(job / "rows.csv")
    assert len(on_disk) == 5
    record = json.loads((job / "job.json").read_text())
    assert record["cells_evaluated"] == 5 and record["seconds"] > 0
    assert record["environment"]["torch"] and record["config"]["method"]["name"] == "bn"
    table = (job / "table.md").read_text()
    assert "| gaussian_noise |" in table and "| mean |" in table and "| clean |" in table


def test_interrupted_run_resumes_without_lost_or_duplicated_rows(make_config, monkeypatch):
    cfg = make_config(*SMALL, TWO_CORRUPTIONS)
    real_evaluate = runner_module.evaluate_cell
    calls = {"count": 0}

    def interrupt_on_fourth_cell(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 4:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(runner_module, "evaluate_cell", interrupt_on_fourth_cell)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    partial = pd.read_csv(f"{cfg.paths.output_dir}/rows.csv")
    assert len(partial) == 3

    monkeypatch.setattr(runner_module, "evaluate_cell", real_evaluate)
    resumed = run(cfg)
    assert len(resumed) == 5
    assert not resumed.duplicated(["corruption", "severity"]).any()
    # The rows finished before the interruption are kept as they were, not recomputed.
    assert resumed.head(3)["finished_at"].tolist() == partial["finished_at"].tolist()

    fresh = run(make_config(*SMALL, TWO_CORRUPTIONS, output_dir=cfg.paths.output_dir + "_fresh"))
    assert resumed["correct"].tolist() == fresh["correct"].tolist()


def test_rerunning_a_finished_job_does_no_work(make_config, monkeypatch):
    cfg = make_config(*SMALL, "dataset.corruptions=[brightness]")
    run(cfg)

    def must_not_be_called(*args, **kwargs):
        raise AssertionError("a finished job evaluated a cell again")

    monkeypatch.setattr(runner_module, "evaluate_cell", must_not_be_called)
    assert len(run(cfg)) == 3


def test_rows_from_another_configuration_are_refused(make_config):
    first = make_config(*SMALL, "dataset.corruptions=[brightness]")
    run(first)
    other = make_config(
        *SMALL, "dataset.corruptions=[brightness]", "seed=1", output_dir=first.paths.output_dir
    )
    assert config_hash(other) != config_hash(first)
    with pytest.raises(ConfigurationError, match="different configuration"):
        run(other)


def test_config_hash_ignores_paths_and_display(make_config, tmp_path):
    first = make_config(*SMALL)
    second = make_config(
        *SMALL,
        "display.progress=true",
        f"paths.data_dir={tmp_path}",
        output_dir=tmp_path / "elsewhere",
    )
    assert config_hash(first) == config_hash(second)
    assert config_hash(first) != config_hash(make_config(*SMALL, "runner.batch_size=16"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset.corruptions=[gausian_noise]", "Did you mean 'gaussian_noise'"),
        ("dataset.corruptions=[]", "dataset.corruptions is empty"),
        ("dataset.severities=[0]", "Severity must be an integer from 1 to 5"),
        ("dataset.severities=[6]", "Severity must be an integer from 1 to 5"),
        ("dataset.n_examples=20000", "has only 10000 images"),
        ("runner.reset=sometimes", "runner.reset must be one of"),
        ("runner.precision=fp8", "runner.precision must be one of"),
    ],
)
def test_bad_input_gives_a_clear_error_and_writes_no_rows(make_config, override, message):
    cfg = make_config(*SMALL, override)
    with pytest.raises(ConfigurationError, match=message):
        run(cfg)
    assert not (runner_module.Path(cfg.paths.output_dir) / "rows.csv").exists()


def test_missing_data_dir_names_both_ways_to_get_the_data(make_config, tmp_path, monkeypatch):
    from robustbench_bn.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian-package")
    cfg = make_config(*SMALL, f"paths.data_dir={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigurationError) as error:
        run(cfg)
    text = str(error.value)
    assert "apt-get install -y dataset-fashion-mnist" in text
    assert "dataset.download=true" in text
    assert str(tmp_path / "nowhere") in text


def test_memory_format_and_precision_are_recorded_in_every_row(make_config, tmp_path):
    base = run(make_config(*SMALL, "dataset.corruptions=[fog]", output_dir=tmp_path / "a"))
    channels_last = run(
        make_config(
            *SMALL,
            "dataset.corruptions=[fog]",
            "runner.channels_last=true",
            output_dir=tmp_path / "b",
        )
    )
    assert (channels_last["channels_last"]).all() and not base["channels_last"].any()
    assert (abs(channels_last["correct"] - base["correct"]) <= 1).all()
    bf16 = run(
        make_config(
            *SMALL, "dataset.corruptions=[fog]", "runner.precision=bf16", output_dir=tmp_path / "c"
        )
    )
    assert (bf16["precision"] == "bf16").all()
    assert (abs(bf16["accuracy"] - base["accuracy"]) <= 10).all()
