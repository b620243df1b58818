"""A real ``kill -9`` in the middle of a job, then the same command: nothing lost or doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

RBN_RUN = str(Path(sys.executable).parent / "rbn-run")


def _command(job_dir: Path, cache_dir: Path) -> list[str]:
    return [
        RBN_RUN,
        f"hydra.run.dir={job_dir}",
        f"paths.cache_dir={cache_dir}",
        "model.epochs=0.1",
        "method=bn",
        "dataset.n_examples=1000",
        "runner.batch_size=50",
        "dataset.corruptions=[gaussian_noise,shot_noise,contrast,brightness]",
        "display.progress=false",
    ]


def _row_count(rows_file: Path) -> int:
    try:
        return len(pd.read_csv(rows_file))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


@pytest.mark.slow
def test_kill_9_mid_job_then_rerun_keeps_finished_cells(tmp_path, quick_model, session_cache):
    job_dir = tmp_path / "job"
    rows_file = job_dir / "rows.csv"
    command = _command(job_dir, session_cache)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while _row_count(rows_file) < 4:
        assert process.poll() is None, "the job ended before it could be killed"
        assert time.monotonic() < deadline, "the job wrote no rows in time"
        time.sleep(0.05)
    time.sleep(0.2)  # well inside the next cell
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = pd.read_csv(rows_file)
    assert 4 <= len(before) < 21

    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    after = pd.read_csv(rows_file)
    assert len(after) == 21  # clean + 4 corruptions x 5 severities
    assert not after.duplicated(["corruption", "severity"]).any()
    kept = after.head(len(before))
    assert kept["finished_at"].tolist() == before["finished_at"].tolist()
    assert kept["correct"].tolist() == before["correct"].tolist()

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert pd.read_csv(rows_file)["finished_at"].tolist() == after["finished_at"].tolist()
