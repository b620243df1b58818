"""Models built by the user's own Python code: ``model=python`` and :func:`robustbench_bn.evaluate`.

``model=python model.target=pkg.module:function`` calls ``function(**model.kwargs)`` and
evaluates the ``nn.Module`` it returns; the rows name the model by that qualified name.
:func:`robustbench_bn.evaluate` takes an ``nn.Module`` directly.

Every model the suite evaluates takes images in [0, 1] and applies its own preprocessing
(see :mod:`robustbench_bn.models.normalized`). A user's model gets it from ``mean``/``std``
(or a callable, from Python); a model without either is fed [0, 1] images as they are, and
the rows say so.

A model given as an object has no config that could name its job folder, so
:func:`model_fingerprint` hashes what determines its outputs: its class, its module structure
(``repr``), every parameter and buffer, and its preprocessing. Two different models never
share a job folder (or a fine-tune / DMC cache), and the same model resumes its own.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.models.normalized import NormalizedModel

#: What the rows say about a model that gets [0, 1] images without any preprocessing.
NO_PREPROCESSING = "none(model takes [0,1] images)"

Preprocessing = tuple[Sequence[float], Sequence[float]] | Callable[[torch.Tensor], torch.Tensor]


def qualified_name(thing: Any) -> str:
    """``module.QualifiedName`` of a class or function (of an instance: of its class)."""
    is_named = isinstance(thing, type) or inspect.isroutine(thing)
    kind = thing if is_named else type(thing)
    return f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', repr(kind))}"


class CallablePreprocessedModel(nn.Module):
    """``network(preprocess(images))`` for a preprocessing given as a Python callable."""

    def __init__(self, network: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.network = network
        self.preprocess = preprocess

    @property
    def preprocessing(self) -> str:
        return f"callable:{qualified_name(self.preprocess)}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(self.preprocess(images))


class UnnormalizedModel(nn.Module):
    """A model that takes [0, 1] images as they are; only says so in the rows."""

    preprocessing = NO_PREPROCESSING

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)


def with_preprocessing(model: nn.Module, preprocessing: Preprocessing | None) -> nn.Module:
    """The model with its preprocessing inside, reported by a ``preprocessing`` attribute.

    ``(mean, std)`` normalizes per channel; a callable is applied to the [0, 1] batch; ``None``
    keeps a model that declares its own ``preprocessing`` (the suite's models do) and feeds
    any other the [0, 1] images unchanged.
    """
    if not isinstance(model, nn.Module):
        raise ConfigurationError(
            f"The model must be a torch.nn.Module, got {type(model).__name__}."
        )
    if preprocessing is None:
        if isinstance(getattr(model, "preprocessing", None), str):
            return model
        return UnnormalizedModel(model)
    if callable(preprocessing):
        return CallablePreprocessedModel(model, preprocessing)
    try:
        mean, std = preprocessing
        mean, std = [float(v) for v in mean], [float(v) for v in std]
    except (TypeError, ValueError) as error:
        raise ConfigurationError(
            "preprocessing must be (mean, std) with one value per channel, e.g. "
            "((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), a callable applied to the [0, 1] "
            f"batch, or None; got {preprocessing!r}."
        ) from error
    if len(mean) != len(std) or not mean or any(value <= 0 for value in std):
        raise ConfigurationError(
            f"preprocessing (mean, std) needs as many means as stds (one per channel) and "
            f"positive stds; got mean={mean}, std={std}."
        )
    return NormalizedModel(model, mean=mean, std=std)


def model_fingerprint(model: nn.Module) -> str:
    """A hash of the model's class, structure, parameters, buffers and preprocessing."""
    digest = hashlib.sha256()
    digest.update(qualified_name(model).encode())
    digest.update(repr(model).encode())
    digest.update(str(getattr(model, "preprocessing", "")).encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        # The raw bytes, whatever the dtype (numpy has no bfloat16).
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def import_target(target: str) -> Callable[..., Any]:
    """The callable named by ``pkg.module:function`` (or ``pkg.module:Class.method``)."""
    module_name, colon, attribute = str(target).partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigurationError(
            f"model.target must be 'pkg.module:function', got {target!r}; e.g. "
            "model.target=torchvision.models:resnet18 'model.kwargs={num_classes: 10}'."
        )
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigurationError(
            f"model.target={target}: cannot import {module_name} ({error}). Is it installed, "
            "or is its folder on PYTHONPATH?"
        ) from error
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ConfigurationError(f"model.target={target}: {module_name} has no {attribute}.")
        found = getattr(found, part)
    if not callable(found):
        raise ConfigurationError(f"model.target={target} is not callable.")
    return found


def python_model(
    *,
    target: str,
    kwargs: dict[str, Any] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """Hydra entry point for ``model=python``: ``target(**kwargs)`` with its preprocessing."""
    build = import_target(target)
    try:
        network = build(**(kwargs or {}))
    except TypeError as error:
        raise ConfigurationError(
            f"model.target={target} cannot be called with model.kwargs={kwargs or {}}: {error}."
        ) from error
    if not isinstance(network, nn.Module):
        raise ConfigurationError(
            f"model.target={target} returned {type(network).__name__}; it must return a "
            "torch.nn.Module."
        )
    if (mean is None) != (std is None):
        raise ConfigurationError("Set both model.mean and model.std, or neither.")
    model = with_preprocessing(network, None if mean is None else (mean, std))
    # The config names the job folder; the cache key (fine-tunes, DMC's source statistics)
    # follows the weights themselves, which the user's function may load from anywhere.
    model.cache_key = f"python:{target}:{model_fingerprint(model)}"
    return model.eval()
