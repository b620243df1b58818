"""Build models by name: the CIFAR nets written here, torchvision and timm models, and local
checkpoints. Every model is wrapped in :class:`NormalizedModel`, so it takes [0, 1] images and
applies its own preprocessing (mean, std), which is written into every result row.

Pretrained weights come through torchvision's and timm's own caches; offline without cached
weights, a clear error names the weights and how to fetch them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.models.cifar_resnet import resnet20, resnet26
from robustbench_bn.models.normalized import NormalizedModel
from robustbench_bn.models.wide_resnet import wide_resnet28_10

CIFAR_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet26": resnet26,
    "wide_resnet28_10": wide_resnet28_10,
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _load_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise ConfigurationError(f"Checkpoint {path} does not exist; set model.checkpoint.")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(checkpoint, dict) and key in checkpoint:
            checkpoint = checkpoint[key]
    # Checkpoints saved from DataParallel prefix every key with "module.".
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def cifar_model(
    *,
    architecture: str,
    num_classes: int = 10,
    checkpoint: str | None = None,
    mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
    std: Sequence[float] = (0.2471, 0.2435, 0.2616),
) -> NormalizedModel:
    """A CIFAR architecture written here, with weights from a local checkpoint (or random)."""
    if architecture not in CIFAR_ARCHITECTURES:
        raise ConfigurationError(
            f"Unknown CIFAR architecture {architecture!r}; known: {sorted(CIFAR_ARCHITECTURES)}."
        )
    network = CIFAR_ARCHITECTURES[architecture](num_classes=num_classes)
    if checkpoint:
        state = _load_state_dict(Path(checkpoint).expanduser())
        missing, unexpected = network.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigurationError(
                f"{checkpoint} does not fit {architecture}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}."
            )
    model = NormalizedModel(network, mean=mean, std=std)
    model.cache_key = f"{architecture}:{checkpoint or 'random'}"
    return model.eval()


def torchvision_model(*, architecture: str, weights: str | None = "DEFAULT") -> NormalizedModel:
    """A torchvision classification model; preprocessing from its weights' transforms."""
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(architecture)
    except ValueError as error:
        raise ConfigurationError(f"torchvision has no model {architecture!r}.") from error
    weights_enum = torchvision.models.get_model_weights(architecture)[weights] if weights else None
    try:
        network = builder(weights=weights_enum)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        raise ConfigurationError(
            f"Could not load torchvision weights {weights_enum} for {architecture} ({error}). "
            "Offline, download them once with network access "
            f'(python -c "import torchvision; torchvision.models.{architecture}'
            f"(weights='{weights}')\") into the torch hub cache ($TORCH_HOME)."
        ) from error
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if weights_enum is not None:
        transforms = weights_enum.transforms()
        mean, std = tuple(transforms.mean), tuple(transforms.std)
    model = NormalizedModel(network, mean=mean, std=std)
    model.cache_key = f"torchvision:{architecture}:{weights}"
    return model.eval()


def timm_model(*, architecture: str, pretrained: bool = True) -> NormalizedModel:
    """A timm model; preprocessing from its pretrained_cfg (mean, std)."""
    import timm

    try:
        network = timm.create_model(architecture, pretrained=pretrained)
    except RuntimeError as error:
        raise ConfigurationError(f"timm cannot build {architecture!r} ({error}).") from error
    except OSError as error:
        raise ConfigurationError(
            f"Could not fetch timm weights for {architecture} ({error}). Offline, download them "
            "once with network access into the Hugging Face cache ($HF_HOME), then set "
            "HF_HUB_OFFLINE=1."
        ) from error
    config = network.pretrained_cfg
    model = NormalizedModel(
        network, mean=config.get("mean", IMAGENET_MEAN), std=config.get("std", IMAGENET_STD)
    )
    model.cache_key = f"timm:{architecture}:{pretrained}"
    return model.eval()
