"""Multirun through Hydra's launchers: basic (in process), joblib (local processes) and
submitit (SLURM; tested through submitit's local executor). Each job writes its own folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

RBN_RUN = str(Path(sys.executable).parent / "rbn-run")
TINY = [
    "model.epochs=0.1",
    "dataset.n_examples=64",
    "runner.batch_size=32",
    "dataset.severities=[1]",
    "dataset.corruptions=[brightness]",
    "display.progress=false",
]


def _sweep(tmp_path: Path, cache: Path, *launcher: str) -> list[Path]:
    result = subprocess.run(
        [
            RBN_RUN,
            "--multirun",
            "method=source,bn",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            f"paths.cache_dir={cache}",
            *TINY,
            *launcher,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sorted((tmp_path / "sweep").rglob("rows.csv"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [
        [],
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
    ],
    ids=["basic", "joblib", "submitit_local"],
)
def test_multirun_writes_one_folder_per_job(launcher, tmp_path, session_cache, quick_model):
    rows_files = _sweep(tmp_path, session_cache, *launcher)
    assert len(rows_files) == 2
    methods = sorted(pd.read_csv(path)["method"].iloc[0] for path in rows_files)
    assert methods == ["bn", "source"]
    for path in rows_files:
        rows = pd.read_csv(path)
        assert len(rows) == 2  # clean + brightness-1
        assert (path.parent / "job.json").is_file()


def _batch_size_sweep(sweep: Path, cache: Path, batch_sizes: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            RBN_RUN,
            "--multirun",
            "method=bn",
            f"runner.batch_size={batch_sizes}",
            f"hydra.sweep.dir={sweep}",
            f"paths.cache_dir={cache}",
            *(override for override in TINY if not override.startswith("runner.batch_size")),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_refused_job_does_not_end_the_sweep(tmp_path, session_cache):
    """`rbn-run -m runner.batch_size=1,2 method=bn`: batch size 1 is refused (bn with prior 0
    needs a batch), batch size 2 still runs, the refusal is listed at the end, exit status 2."""
    sweep = tmp_path / "sweep"
    result = _batch_size_sweep(sweep, session_cache, "1,2")
    assert result.returncode == 2, result.stderr[-3000:]
    [refused] = list(sweep.rglob("refused.txt"))
    assert not (refused.parent / "rows.csv").exists()
    assert "runner.batch_size=1" in refused.read_text()
    assert "needs at least 2 images per batch" in refused.read_text()
    [rows] = list(sweep.rglob("rows.csv"))
    assert (pd.read_csv(rows)["batch_size"] == 2).all()
    summary = result.stderr[result.stderr.index("1 job(s) of the sweep were refused") :]
    assert "runner.batch_size=1" in summary and str(refused.parent) in summary
    # A later sweep into the same folder is not blamed for that earlier refusal.
    os.utime(refused, (time.time() - 60, time.time() - 60))
    again = _batch_size_sweep(sweep, session_cache, "2,4")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "refused" not in again.stderr
    assert len(list(sweep.rglob("rows.csv"))) == 2
