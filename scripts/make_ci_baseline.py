"""Write results/fashion_mnist_c/ci_slice.csv: the CI regression slice's rows, from a real run.

    .venv/bin/python scripts/make_ci_baseline.py

Run it only when a change is meant to move numbers, and say so in the commit message.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from robustbench_bn.report.regression import BASELINE_COLUMNS, MODEL_CHECKPOINT, run_slice


def main() -> None:
    repository = Path(__file__).resolve().parents[1]
    target = repository / "results" / "fashion_mnist_c" / "ci_slice.csv"
    with tempfile.TemporaryDirectory() as scratch:
        rows = run_slice(
            cache_dir=Path(scratch) / "cache",
            output_dir=Path(scratch) / "jobs",
            model_checkpoint=repository / MODEL_CHECKPOINT,
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    rows[list(BASELINE_COLUMNS)].to_csv(target, index=False)
    print(f"wrote {len(rows)} rows to {target}")


if __name__ == "__main__":
    main()
