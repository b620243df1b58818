"""What users get wrong, each answered by a clear message, a non-zero exit, and no wrong rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.runner import run

RBN_RUN = str(Path(sys.executable).parent / "rbn-run")
SMALL = [
    "dataset.n_examples=64",
    "runner.batch_size=32",
    "dataset.severities=[1]",
    "dataset.corruptions=[brightness]",
]


def _rbn_run(*overrides: str, tmp_path: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            RBN_RUN,
            f"hydra.run.dir={tmp_path / 'job'}",
            f"paths.cache_dir={cache}",
            "model.epochs=0.1",
            "display.progress=false",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("method=tnet", "Could not find 'method/tnet'"),
        ("dataset=cifar10", "Could not find 'dataset/cifar10'"),
        ("model=resnet9000", "Could not find 'model/resnet9000'"),
        ("datset.n_examples=5", "Could not override 'datset.n_examples'"),
        ("dataset.severities=[6]", "Severity must be an integer from 1 to 5"),
        ("dataset.corruption_device=graphics", "is not a device; use cpu, auto or cuda"),
    ],
)
def test_command_line_mistakes_exit_non_zero_with_a_message(
    override, expected, tmp_path, session_cache, quick_model
):
    result = _rbn_run(override, tmp_path=tmp_path, cache=session_cache)
    assert result.returncode != 0
    assert expected in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "job" / "rows.csv").exists()


def test_batch_of_one_with_batch_statistics_is_refused(make_config):
    cfg = make_config(*SMALL, "method=bn", "runner.batch_size=1")
    with pytest.raises(ConfigurationError, match="at least 2 images per batch"):
        run(cfg)
    rows = Path(cfg.paths.output_dir) / "rows.csv"
    assert not rows.exists()


@pytest.mark.parametrize("method", ["eata", "dua", "dmc"])
def test_a_method_seed_other_than_the_run_seed_is_refused(make_config, tmp_path, method):
    """Rows record the run's seed; a method seed of its own would change numbers unrecorded."""
    cfg = make_config(*SMALL, f"method={method}", "method.seed=3")
    with pytest.raises(ConfigurationError, match=r"method.seed=3 differs from seed=0"):
        run(cfg)
    assert not (tmp_path / "job" / "rows.csv").exists()


def test_last_batch_of_one_is_refused_too(make_config):
    cfg = make_config(*SMALL, "method=bn", "dataset.n_examples=65")
    with pytest.raises(ConfigurationError, match="at least 2 images per batch"):
        run(cfg)


def test_unwritable_output_folder(make_config, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cfg = make_config(*SMALL, output_dir=blocker / "job")
    with pytest.raises(ConfigurationError, match="Cannot write to the output folder"):
        run(cfg)


def test_half_written_rows_file_keeps_complete_rows_and_redoes_the_rest(make_config):
    cfg = make_config(*SMALL, "dataset.severities=[1,2,3]")
    complete = run(cfg)
    rows_file = Path(cfg.paths.output_dir) / "rows.csv"
    text = rows_file.read_text()
    rows_file.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])
    resumed = run(cfg)
    assert len(resumed) == len(complete) == 4
    assert not resumed.duplicated(["corruption", "severity"]).any()
    assert sorted(resumed["correct"]) == sorted(complete["correct"])
    assert len(pd.read_csv(rows_file)) == 4


def test_garbage_rows_file_is_refused_not_overwritten(make_config):
    cfg = make_config(*SMALL)
    rows_file = Path(cfg.paths.output_dir) / "rows.csv"
    rows_file.parent.mkdir(parents=True)
    rows_file.write_text("this,is\nnot,ours\n")
    with pytest.raises(ConfigurationError, match="not written by this suite"):
        run(cfg)
    assert rows_file.read_text() == "this,is\nnot,ours\n"
