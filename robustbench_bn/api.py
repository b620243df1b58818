"""Evaluate any ``torch.nn.Module`` from Python, through the same config and runner as ``rbn-run``.

    import torchvision
    from robustbench_bn import evaluate

    model = torchvision.models.resnet18(num_classes=10)   # your own model, trained or not
    rows = evaluate(model, method="bn", overrides=["dataset.n_examples=500"])

:func:`evaluate` composes the suite's Hydra config (``conf/``, Hydra's compose API, the same
defaults and overrides as the command line), puts the given model in place of the config's
model, and calls :func:`robustbench_bn.runner.run`: the same cells, methods, checks and rows,
no second evaluation path. The job folder is named as ``rbn-run`` names it, with the model's
fingerprint (class, structure, weights, preprocessing; :func:`~robustbench_bn.models.python.
model_fingerprint`) in the hashed config, so a second call with the same model and settings
resumes (or finds nothing left to do) and a different model never shares the folder.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from torch import nn

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.models.python import (
    Preprocessing,
    model_fingerprint,
    qualified_name,
    with_preprocessing,
)


def compose_config(overrides: Sequence[str] = ()):
    """The suite's config for ``overrides``, as ``rbn-run`` composes it (Hydra's node included,
    so the job folder's name can be read from ``hydra.run.dir``)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    import robustbench_bn.run  # noqa: F401  (registers the config-hash resolver)

    if GlobalHydra.instance().is_initialized():
        raise ConfigurationError(
            "evaluate() composes the suite's own config, but Hydra is already initialized in "
            "this process (inside a @hydra.main app or an initialize() block). Call it "
            "outside, or run the model through rbn-run with model=python."
        )
    try:
        with initialize_config_module(config_module="robustbench_bn.conf", version_base="1.3"):
            return compose(
                config_name="config", overrides=list(overrides), return_hydra_config=True
            )
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigurationError(
            f"Cannot compose the config with {list(overrides)}: {error}"
        ) from error


def evaluate(
    model: nn.Module,
    *,
    dataset: str = "fashion_mnist_c",
    method: str = "source",
    finetune: str = "none",
    overrides: Sequence[str] = (),
    output_dir: str | Path | None = None,
    preprocessing: Preprocessing | None = None,
    name: str | None = None,
) -> pd.DataFrame:
    """Evaluate ``model`` on every cell of ``dataset`` with ``method``; returns the rows.

    ``model`` takes float images in [0, 1], [B, 3, H, W], and returns logits [B, classes].
    ``preprocessing``: ``(mean, std)`` per channel, or a callable applied to the [0, 1] batch,
    inside the model; ``None`` for a model that normalizes itself. It is written into every
    row. ``overrides``: any ``rbn-run`` override, e.g. ``["dataset.n_examples=500",
    "runner.batch_size=64", "dataset.corruptions=[fog,snow]"]``. ``output_dir``: the output
    root (``paths.output_root``) under which the job folder is made as ``rbn-run`` makes it,
    ``<output_dir>/runs/<dataset>/<name>/<finetune>/<method>-<hash>/``; ``None`` runs in a
    temporary folder that is removed afterwards. ``name``: the model's name in the rows and
    the folder (default: its class's qualified name and the first 8 characters of its
    fingerprint, e.g. ``torchvision.models.resnet.ResNet@3f09c1d2``).

    The given model is not changed: the methods adapt a copy.
    """
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"evaluate() takes a torch.nn.Module, got {type(model).__name__}.")
    if isinstance(overrides, str):
        raise ConfigurationError(
            f"overrides must be a list of strings, e.g. [{overrides!r}], not one string."
        )
    for override in overrides:
        key = str(override).lstrip("+~").split("=", 1)[0]
        if key == "model" or key.startswith("model."):
            raise ConfigurationError(
                f"evaluate() evaluates the model it is given; the override {override!r} does "
                "not apply. Set its preprocessing with preprocessing=... and its name with "
                "name=...."
            )
    import copy

    from omegaconf import OmegaConf, open_dict

    from robustbench_bn.runner import run

    # The methods patch BatchNorm layers and load states into the model they adapt.
    prepared = with_preprocessing(copy.deepcopy(model), preprocessing)
    fingerprint = model_fingerprint(prepared)
    prepared.cache_key = f"python-object:{fingerprint}"
    cfg = compose_config(
        [f"dataset={dataset}", f"method={method}", f"finetune={finetune}", *overrides]
    )
    with open_dict(cfg):
        cfg.model = OmegaConf.create(
            {
                # Without a name, the class and the fingerprint: rows of two different
                # models of one class never read as the same model.
                "name": name or f"{qualified_name(model)}@{fingerprint[:8]}",
                "source": "python_object",
                "class": qualified_name(model),
                "fingerprint": fingerprint,
                "preprocessing": prepared.preprocessing,
            }
        )
    with tempfile.TemporaryDirectory(prefix="rbn-evaluate-") as temporary:
        with open_dict(cfg):
            cfg.paths.output_root = str(output_dir if output_dir is not None else temporary)
            # rbn-run's job folder, from the same template and config hash.
            cfg.paths.output_dir = str(cfg.hydra.run.dir)
            del cfg["hydra"]
        return run(cfg, model=prepared)
