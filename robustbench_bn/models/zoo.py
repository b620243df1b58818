"""Build models by name: the CIFAR nets written here, torchvision and timm models, RobustBench
zoo models and local checkpoints. Every model is a :class:`PreprocessedModel`: it takes
[0, 1] images and applies its own preprocessing (mean, std, input resolution), taken from the
model's own data config (torchvision: the weights' ``transforms()``; timm:
``resolve_data_config`` over its ``pretrained_cfg``), and reported in every result row.

Images that already have the model's input resolution (ImageNet-C's 224 px for a 224 px
model) are never resized or cropped again; others are resized to it, and the row says so.

Pretrained weights come through torchvision's, timm's (Hugging Face) and RobustBench's own
caches; offline without cached weights, a clear error names the weights and how to get them.
"""

from __future__ import annotations

import urllib.error
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.models.cifar_resnet import ARCHITECTURES as CIFAR_RESNETS
from robustbench_bn.models.cifar_resnet import PRETRAINED_URLS
from robustbench_bn.models.normalized import NormalizedModel
from robustbench_bn.models.wide_resnet import wide_resnet28_10

CIFAR_ARCHITECTURES = {**CIFAR_RESNETS, "wide_resnet28_10": wide_resnet28_10}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


class PreprocessedModel(NormalizedModel):
    """A :class:`NormalizedModel` that also knows its input resolution.

    Inputs of another size are resized (bilinear, antialiased) to ``input_size`` first; inputs
    of the right size pass untouched. ``origin`` says where the preprocessing came from.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: int | None,
        origin: str,
    ) -> None:
        super().__init__(network, mean=mean, std=std)
        self.input_size = input_size
        self.origin = origin

    @property
    def preprocessing(self) -> str:
        size = f"{self.input_size}px(resize_if_different)" if self.input_size else "any"
        return f"{super().preprocessing};input={size};from={self.origin}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.input_size
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return super().forward(images)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigurationError(
            f"Checkpoint {path} does not exist; set model.checkpoint to a state dict file."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (any unpickling failure means the same thing)
        raise ConfigurationError(
            f"{path} cannot be read as a PyTorch state dict ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}). It must be saved with torch.save(state_dict) "
            "(or a dict holding it under 'state_dict' / 'model'); whole pickled models are "
            "not loaded."
        ) from error
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict) or not all(
        isinstance(v, torch.Tensor) for v in checkpoint.values()
    ):
        raise ConfigurationError(f"{path} holds no state dict (name -> tensor).")
    # Checkpoints saved from DataParallel prefix every key with "module.".
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def _load_into(network: nn.Module, state: dict[str, torch.Tensor], *, what: str, source: str):
    expected = network.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} != {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    if missing or unexpected or wrong_shape:
        raise ConfigurationError(
            f"{source} does not fit {what}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shapes {wrong_shape[:3]}. Check model.architecture and "
            "model.num_classes against the checkpoint."
        )
    network.load_state_dict(state)


def _download_state_dict(url: str, *, what: str) -> dict[str, torch.Tensor]:
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        raise ConfigurationError(
            f"Could not load the {what} weights from {url} ({error}). Offline, download that "
            f"file once with network access into {torch.hub.get_dir()}/checkpoints/ (torch "
            "hub's cache, $TORCH_HOME) or point model.checkpoint at it."
        ) from error


def cifar_model(
    *,
    architecture: str,
    num_classes: int = 10,
    checkpoint: str | None = None,
    pretrained: str | None = None,
    require_weights: bool = False,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> PreprocessedModel:
    """A CIFAR architecture written here, with weights from a local checkpoint, published
    weights (``pretrained``: ``cifar10`` / ``cifar100``, see PRETRAINED_URLS) or random.

    ``require_weights`` refuses random weights: paper presets set it, so that a missing
    checkpoint is an error and never a table of chance-level numbers.
    """
    if architecture not in CIFAR_ARCHITECTURES:
        raise ConfigurationError(
            f"Unknown CIFAR architecture {architecture!r}; known: {sorted(CIFAR_ARCHITECTURES)}."
        )
    if checkpoint and pretrained:
        raise ConfigurationError("Set model.checkpoint or model.pretrained, not both.")
    network = CIFAR_ARCHITECTURES[architecture](num_classes=num_classes)
    if checkpoint:
        path = Path(checkpoint).expanduser()
        _load_into(network, _load_state_dict(path), what=architecture, source=str(path))
        weights = f"checkpoint:{path.name}"
    elif pretrained:
        url = PRETRAINED_URLS.get((architecture, pretrained))
        if url is None:
            known = sorted(f"{a}:{d}" for a, d in PRETRAINED_URLS)
            raise ConfigurationError(
                f"No published weights {architecture}:{pretrained}; known: {known}."
            )
        state = _download_state_dict(url, what=f"{architecture} {pretrained}")
        _load_into(network, state, what=architecture, source=url)
        weights = f"pretrained:{pretrained}"
    elif require_weights:
        published = [d for a, d in PRETRAINED_URLS if a == architecture]
        alternative = f" or model.pretrained={'|'.join(published)}" if published else ""
        raise ConfigurationError(
            f"This configuration evaluates a trained {architecture}, but no weights were "
            f"given: set model.checkpoint=/path/to/state_dict.pt{alternative}. (Random weights "
            "on purpose: model.require_weights=false.)"
        )
    else:
        weights = "random"
    model = PreprocessedModel(network, mean=mean, std=std, input_size=32, origin="config")
    model.cache_key = f"{architecture}:{num_classes}:{weights}"
    return model.eval()


def torchvision_model(
    *,
    architecture: str,
    weights: str | None = "DEFAULT",
    checkpoint: str | None = None,
    num_classes: int = 1000,
) -> PreprocessedModel:
    """A torchvision classification model; preprocessing from its weights' ``transforms()``.

    ``checkpoint`` loads a local state dict into the architecture instead of downloading
    ``weights``; the preprocessing still comes from ``weights`` (ImageNet's when null).
    """
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(architecture)
    except ValueError as error:
        raise ConfigurationError(f"torchvision has no model {architecture!r}.") from error
    weights_enum = None
    if weights:
        try:
            weights_enum = torchvision.models.get_model_weights(architecture)[weights]
        except KeyError as error:
            choices = [w.name for w in torchvision.models.get_model_weights(architecture)]
            raise ConfigurationError(
                f"torchvision {architecture} has no weights {weights!r}; choose from "
                f"{choices + ['DEFAULT']}."
            ) from error
    if checkpoint:
        network = builder(weights=None, num_classes=num_classes)
        path = Path(checkpoint).expanduser()
        _load_into(network, _load_state_dict(path), what=architecture, source=str(path))
        loaded = f"checkpoint:{path.name}"
    else:
        if weights_enum is not None and num_classes != 1000:
            raise ConfigurationError(
                f"torchvision {architecture} weights {weights} have 1000 classes, but "
                f"model.num_classes={num_classes}; use model.weights=null (random weights) or a "
                "model.checkpoint with that many classes."
            )
        try:
            # Random weights take the requested head; pretrained ones keep ImageNet's 1000.
            extra = {} if weights_enum is not None else {"num_classes": num_classes}
            network = builder(weights=weights_enum, **extra)
        except (OSError, RuntimeError) as error:  # URLError is an OSError
            raise ConfigurationError(
                f"Could not load torchvision weights {weights_enum} for {architecture} "
                f"({error}). Offline, download them once with network access into the torch "
                f'hub cache ({torch.hub.get_dir()}, $TORCH_HOME): python -c "import '
                f"torchvision; torchvision.models.{architecture}(weights='{weights}')\"."
            ) from error
        loaded = str(weights_enum) if weights_enum else "random"
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, 224
    origin = "imagenet_default"
    if weights_enum is not None:
        transforms = weights_enum.transforms()
        mean, std = tuple(transforms.mean), tuple(transforms.std)
        size = int(transforms.crop_size[0])
        origin = f"torchvision:{weights_enum}"
    model = PreprocessedModel(network, mean=mean, std=std, input_size=size, origin=origin)
    model.cache_key = f"torchvision:{architecture}:{loaded}" + (
        f":{num_classes}_classes" if num_classes != 1000 else ""
    )
    return model.eval()


def timm_model(
    *,
    architecture: str,
    pretrained: bool = True,
    checkpoint: str | None = None,
    num_classes: int | None = None,
) -> PreprocessedModel:
    """A timm model; preprocessing from timm's data config of its ``pretrained_cfg``."""
    import timm
    from timm.data import resolve_data_config

    extra: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    try:
        network = timm.create_model(architecture, pretrained=pretrained and not checkpoint, **extra)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise ConfigurationError(f"timm has no model {architecture!r}.") from error
        raise ConfigurationError(f"timm cannot build {architecture!r} ({error}).") from error
    except OSError as error:  # Hugging Face hub and URL errors are OSErrors
        raise ConfigurationError(
            f"Could not fetch timm's pretrained weights for {architecture} ({error}). Offline, "
            "download them once with network access into the Hugging Face cache ($HF_HOME): "
            f"python -c \"import timm; timm.create_model('{architecture}', pretrained=True)\", "
            "then run with HF_HUB_OFFLINE=1; or point model.checkpoint at a state dict."
        ) from error
    if checkpoint:
        path = Path(checkpoint).expanduser()
        _load_into(network, _load_state_dict(path), what=architecture, source=str(path))
    config = resolve_data_config({}, model=network)
    model = PreprocessedModel(
        network,
        mean=config.get("mean", IMAGENET_MEAN),
        std=config.get("std", IMAGENET_STD),
        input_size=int(config["input_size"][-1]),
        origin=f"timm:{network.pretrained_cfg.get('tag') or architecture}",
    )
    weights = f"checkpoint:{Path(checkpoint).name}" if checkpoint else f"pretrained={pretrained}"
    model.cache_key = f"timm:{architecture}:{weights}"
    return model.eval()


def robustbench_model(
    *,
    zoo_name: str,
    dataset: str = "cifar10",
    threat_model: str = "corruptions",
    cache_dir: str = "models",
) -> PreprocessedModel:
    """A RobustBench model zoo entry (``robustbench.utils.load_model``); needs the optional
    ``robustbench`` package. Zoo models take [0, 1] images and normalize inside themselves,
    so the wrapper's mean and std are the identity."""
    try:
        from robustbench.utils import load_model
    except ImportError as error:
        raise ConfigurationError(
            f"{zoo_name} comes from the RobustBench model zoo, which needs the optional "
            "package: pip install -e '.[robustbench]' (or pip install "
            "git+https://github.com/RobustBench/robustbench.git). "
            "Without it, a WideResNet-28-10 'Standard' state dict loads with "
            "model=wrn28_10_cifar model.checkpoint=/path/to/Standard.pt."
        ) from error
    try:
        network = load_model(
            model_name=zoo_name, dataset=dataset, threat_model=threat_model, model_dir=cache_dir
        )
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ConfigurationError(
            f"RobustBench could not load {zoo_name} ({dataset}, {threat_model}) into "
            f"{cache_dir} ({error}). Offline, run the same command once with network access; "
            f"RobustBench keeps the weights in {cache_dir}/{dataset}/{threat_model}/"
            f"{zoo_name}.pt."
        ) from error
    size = {"cifar10": 32, "cifar100": 32, "imagenet": 224}.get(dataset)
    model = PreprocessedModel(
        network,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        input_size=size,
        origin=f"robustbench:{dataset}/{threat_model}/{zoo_name}(normalizes inside)",
    )
    model.cache_key = f"robustbench:{dataset}:{threat_model}:{zoo_name}"
    return model.eval()
