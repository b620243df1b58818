"""Multirun through Hydra's launchers: basic (in process), joblib (local processes) and
submitit (SLURM; tested through submitit's local executor). Each job writes its own folder."""

from __future__ import annotations

import subprocess
import sys
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
