"""Write results/fashion_mnist_c/ci_slice.csv: the CI regression slice's rows, from a real run.

    .venv/bin/python scripts/make_ci_baseline.py

Run it only when a change is meant to move numbers, and say so in the commit message. The
same as ``python -m robustbench_bn.regression results/fashion_mnist_c/ci_slice.csv`` run
from the repository, with the paths taken from this script's place instead.
"""

from __future__ import annotations

from pathlib import Path

from robustbench_bn.regression import MODEL_CHECKPOINT, main

if __name__ == "__main__":
    repository = Path(__file__).resolve().parents[1]
    target = repository / "results" / "fashion_mnist_c" / "ci_slice.csv"
    main([str(target), "--model-checkpoint", str(repository / MODEL_CHECKPOINT)])
