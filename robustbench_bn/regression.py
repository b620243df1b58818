"""The CI regression slice: a reduced but real run of every method on the embedded default.

It composes configs and runs them through the runner (training or loading models), so it
lives beside :mod:`robustbench_bn.runner`; ``report/`` only reads the rows such runs write.

The slice is fixed and seeded: 3 corruptions x severities 1, 3, 5 plus clean, the first 500
Fashion-MNIST test images, batch 100, seed 0, and the quickly trained source model
(``model.epochs=0.1``, the same override tests/conftest.py applies to every test config; its
weights are committed, :data:`MODEL_CHECKPOINT`), for
source, bn (batch), bn (samples, n=32), tent, dmc (exact, K=512 source images), AdvBN
(0.02 epochs) + bn, and the BN-family baselines eata (Fisher from 500 training images), sar,
lame and dua with their defaults. ``results/fashion_mnist_c/ci_slice.csv`` holds its rows
from a real run; ``tests/test_regression_baseline.py`` re-runs every setup through
``runner.run`` with conftest's ``make_config`` and the overrides of :func:`setup_overrides`,
and compares the cells with :mod:`robustbench_bn.report.compare`, so a change that moves a
number fails CI.

Regenerate the baseline (only for a change meant to move numbers, and say so in the commit):

    .venv/bin/python -m robustbench_bn.regression results/fashion_mnist_c/ci_slice.csv
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, open_dict

#: The quick source model; must equal tests/conftest.py's QUICK_MODEL.
QUICK_MODEL_OVERRIDES = ("model.epochs=0.1",)
#: The quick model's weights, committed beside the baseline they produced. Training them anew
#: on another CPU moved cells of the slice by up to 6.8 points (float summation order differs
#: with the vector width, and 0.1 epochs of training amplify it); evaluating shared weights
#: keeps the guard about the evaluation code, which is what it guards.
MODEL_CHECKPOINT = Path("results") / "fashion_mnist_c" / "ci_slice_model.pt"
#: What tests/conftest.py's make_config adds besides the quick model and the cache folder.
DISPLAY_OVERRIDES = ("display.progress=false", "display.print_table=false")
SLICE_OVERRIDES = (
    "dataset.n_examples=500",
    "runner.batch_size=100",
    "dataset.corruptions=[gaussian_noise,fog,contrast]",
    "dataset.severities=[1,3,5]",
    "seed=0",
)
SETUPS: dict[str, tuple[str, ...]] = {
    "source": ("method=source",),
    "bn": ("method=bn",),
    "bn_samples": ("method=bn", "method.statistics=samples"),
    "tent": ("method=tent",),
    "dmc": ("method=dmc", "method.num_source_images=512"),
    "advbn_bn": ("finetune=advbn", "finetune.epochs=0.02", "method=bn"),
    "eata": ("method=eata", "method.num_fisher_samples=500"),
    "sar": ("method=sar",),
    "lame": ("method=lame",),
    "dua": ("method=dua",),
}
#: Cells per setup: clean + 3 corruptions x 3 severities.
CELLS_PER_SETUP = 10
#: |difference| allowed per cell, in accuracy points: 5 images of 500. The same code on another
#: CPU can flip a few predictions (float summation order in the 0.1-epoch training and in the
#: convolutions); a real change to a method or to the data moves more cells, and further.
TOLERANCE = 1.0
#: The baseline keeps the key, measurement and provenance columns of the suite's row schema.
BASELINE_COLUMNS = (
    "dataset",
    "model",
    "finetune",
    "finetune_params",
    "method",
    "method_params",
    "corruption",
    "severity",
    "n",
    "correct",
    "accuracy",
    "error",
    "seed",
    "batch_size",
    "order",
    "label_shift_alpha",
    "stream",
    "n_examples",
    "git_revision",
    "torch_version",
    "device",
)


def setup_overrides(name: str) -> list[str]:
    """Every override of one setup of the slice, the quick model included."""
    return [*QUICK_MODEL_OVERRIDES, *SLICE_OVERRIDES, *SETUPS[name]]


def compose_setup(name: str, *, cache_dir: Path, output_dir: Path) -> DictConfig:
    """The config of one setup, composed exactly as conftest's ``make_config`` composes it."""
    import robustbench_bn.run  # noqa: F401  (registers the config-hash resolver)

    with initialize_config_module(config_module="robustbench_bn.conf", version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                f"paths.cache_dir={cache_dir}",
                *DISPLAY_OVERRIDES,
                *setup_overrides(name),
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir / name)
    return cfg


def run_slice(
    *,
    cache_dir: Path,
    output_dir: Path,
    setups: Sequence[str] = tuple(SETUPS),
    model_checkpoint: Path | None = None,
) -> pd.DataFrame:
    """Run the named setups of the slice (all by default); returns their rows.

    ``model_checkpoint`` (the committed :data:`MODEL_CHECKPOINT` for the baseline) is put into
    the cache first, so the slice evaluates those weights instead of training its own.
    """
    from robustbench_bn.models.training import install_checkpoint
    from robustbench_bn.runner import run

    if model_checkpoint is not None:
        install_checkpoint(model_checkpoint, cache_dir)

    frames = [
        run(compose_setup(name, cache_dir=cache_dir, output_dir=output_dir)) for name in setups
    ]
    return pd.concat(frames, ignore_index=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Write the slice's rows to the CSV named on the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m robustbench_bn.regression",
        description="Run the CI regression slice and write its rows as the baseline CSV.",
    )
    parser.add_argument("target", type=Path, help="e.g. results/fashion_mnist_c/ci_slice.csv")
    parser.add_argument(
        "--model-checkpoint",
        type=Path,
        default=MODEL_CHECKPOINT,
        help=f"the quick model's weights (default {MODEL_CHECKPOINT}, run from the repository)",
    )
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        rows = run_slice(
            cache_dir=Path(scratch) / "cache",
            output_dir=Path(scratch) / "jobs",
            model_checkpoint=arguments.model_checkpoint,
        )
    arguments.target.parent.mkdir(parents=True, exist_ok=True)
    rows[list(BASELINE_COLUMNS)].to_csv(arguments.target, index=False)
    print(f"wrote {len(rows)} rows to {arguments.target}")


if __name__ == "__main__":
    main()
