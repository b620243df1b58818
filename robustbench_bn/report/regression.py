"""The CI regression slice: a reduced but real run of every method on the embedded default.

``run_slice`` evaluates a fixed, seeded slice (3 corruptions x severities 1, 3, 5 + clean,
500 images, the quickly trained 0.1-epoch source model) for every method and AdvBN + bn.
``scripts/make_ci_baseline.py`` writes its rows to ``results/fashion_mnist_c/ci_slice.csv``;
``tests/test_regression_baseline.py`` re-runs it and compares cell by cell, so a change that
moves a number fails CI.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, open_dict

COMMON_OVERRIDES = (
    "model.epochs=0.1",
    "dataset.n_examples=500",
    "runner.batch_size=100",
    "dataset.corruptions=[gaussian_noise,fog,contrast]",
    "dataset.severities=[1,3,5]",
    "seed=0",
    "display.progress=false",
    "display.print_table=false",
)
SETUPS = {
    "source": ("method=source",),
    "bn": ("method=bn",),
    "bn_samples": ("method=bn", "method.statistics=samples"),
    "tent": ("method=tent",),
    "dmc": ("method=dmc", "method.num_source_images=512"),
    "advbn_bn": ("finetune=advbn", "finetune.epochs=0.02", "method=bn"),
}
#: |difference| allowed per cell, in accuracy points: 5 images of 500. Same code on another
#: CPU can flip a few predictions (float summation order in the 0.1-epoch training and in
#: convolutions); a real change to a method or the data moves far more cells, and further.
TOLERANCE = 1.0


def compose_setup(name: str, *, cache_dir: Path, output_dir: Path) -> DictConfig:
    import robustbench_bn.run  # noqa: F401  (registers the config-hash resolver)

    with initialize_config_module(config_module="robustbench_bn.conf", version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[*COMMON_OVERRIDES, *SETUPS[name], f"paths.cache_dir={cache_dir}"],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir / name)
    return cfg


def run_slice(*, cache_dir: Path, output_dir: Path) -> pd.DataFrame:
    """Run every setup of the slice; returns all rows."""
    from robustbench_bn.runner import run

    frames = [
        run(compose_setup(name, cache_dir=cache_dir, output_dir=output_dir)) for name in SETUPS
    ]
    return pd.concat(frames, ignore_index=True)
