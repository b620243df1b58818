"""Shared fixtures: Hydra configs composed the way ``rbn-run`` composes them, and a small model.

Tests call :func:`robustbench_bn.runner.run` directly on a composed config (the
lightning-hydra-template pattern); ``paths.output_dir`` points into pytest's tmp_path and the
cache into one folder per test session, seeded with the quick test model's committed weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, open_dict

import robustbench_bn.run  # noqa: F401  (registers the rbn_config_hash resolver)
from robustbench_bn.models.training import install_checkpoint
from robustbench_bn.regression import MODEL_CHECKPOINT

#: A source model trained for a tenth of an epoch: seconds, not minutes, and still clearly
#: better than chance (about 68% clean accuracy), which is all the mechanics tests need.
QUICK_MODEL = ["model.epochs=0.1"]


#: The quick model's weights, committed with the regression baseline they produced (see
#: robustbench_bn/regression.py): every test evaluates the same weights on every CPU.
QUICK_MODEL_CHECKPOINT = Path(__file__).resolve().parents[1] / MODEL_CHECKPOINT


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    install_checkpoint(QUICK_MODEL_CHECKPOINT, cache)
    return cache


@pytest.fixture
def make_config(tmp_path: Path, session_cache: Path) -> Callable[..., DictConfig]:
    """``make_config(*overrides, output_dir=None, quick_model=True)`` composes the suite's config.

    ``quick_model`` shortens the embedded model's training; turn it off for presets whose
    model has no ``epochs`` setting.
    """

    def compose_config(
        *overrides: str, output_dir: Path | None = None, quick_model: bool = True
    ) -> DictConfig:
        with initialize_config_module(config_module="robustbench_bn.conf", version_base="1.3"):
            cfg = compose(
                config_name="config",
                overrides=[
                    *(QUICK_MODEL if quick_model else []),
                    f"paths.cache_dir={session_cache}",
                    "display.progress=false",
                    "display.print_table=false",
                    *overrides,
                ],
            )
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir or tmp_path / "job")
        return cfg

    return compose_config


@pytest.fixture(scope="session")
def fashion_images() -> tuple[torch.Tensor, torch.Tensor]:
    """256 real Fashion-MNIST test images as float [0, 1] 3x32x32, with labels."""
    from robustbench_bn.data.fashion_mnist import load_fashion_mnist

    test = load_fashion_mnist("test")
    return test.images[:256].float() / 255, test.labels[:256]


@pytest.fixture(scope="session")
def quick_model(session_cache: Path) -> torch.nn.Module:
    """The embedded default's architecture trained for a tenth of an epoch (the committed
    weights, which the session cache holds under this training config's key)."""
    from robustbench_bn.models.training import trained_small_resnet

    return trained_small_resnet(cache_dir=str(session_cache), epochs=0.1, progress=False)
