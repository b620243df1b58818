"""Checks that a model fits a benchmark, run once before the first cell.

A model built for another dataset (1000 ImageNet classes on a 10-class benchmark), or one
whose forward returns something other than one row of logits per image, would otherwise fail
deep inside the first cell, or worse, give a silently wrong accuracy (``argmax`` over 1000
logits still returns a label). One forward pass on two images of the first cell finds it,
and the error says what was found and what was expected.

Whether a method can use the model at all (BatchNorm layers for the methods that adapt them)
is each method's own check, in its constructor.
"""

from __future__ import annotations

import torch
from torch import nn

from robustbench_bn.data.benchmark import Cell, CorruptionBenchmark, as_float_images
from robustbench_bn.errors import ConfigurationError

#: Images in the probe batch: two, so that layers using batch statistics accept it.
PROBE_IMAGES = 2


def check_model_outputs(
    model: nn.Module, benchmark: CorruptionBenchmark, cell: Cell, device: torch.device
) -> None:
    """Refuse a model whose output for a batch of ``cell`` is not ``[B, num_classes]`` logits."""
    count = min(PROBE_IMAGES, benchmark.cell_size(cell))
    images, _ = benchmark.load(cell, torch.arange(count))
    images = as_float_images(images.to(device))
    shape = list(images.shape)
    expected = f"[{count}, {benchmark.num_classes}]"
    try:
        with torch.inference_mode():
            outputs = model(images)
    except ConfigurationError:
        raise
    except (RuntimeError, ValueError, TypeError) as error:
        first_line = (str(error).splitlines() or [""])[0][:300]
        raise ConfigurationError(
            f"The model fails on a batch of {benchmark.name} images (float32 {shape}, values "
            f"in [0, 1]): {type(error).__name__}: {first_line}. It must take such a batch "
            f"(any normalization inside the model) and return logits {expected}."
        ) from error
    if not isinstance(outputs, torch.Tensor):
        raise ConfigurationError(
            f"The model returns {type(outputs).__name__} for a batch of {benchmark.name} "
            f"images {shape}; it must return one tensor of logits {expected}. Wrap a model "
            "that returns a tuple or a dict in a module that picks the logits."
        )
    if outputs.ndim != 2 or outputs.shape[0] != count:
        raise ConfigurationError(
            f"The model's output for a batch of {benchmark.name} images {shape} has shape "
            f"{list(outputs.shape)}; it must be logits {expected}, one row per image."
        )
    if outputs.shape[1] != benchmark.num_classes:
        raise ConfigurationError(
            f"The model outputs {outputs.shape[1]} classes, but {benchmark.name} has "
            f"{benchmark.num_classes}: output {list(outputs.shape)}, expected {expected}. "
            "Use a model trained on this dataset's classes (e.g. a classification head with "
            f"{benchmark.num_classes} outputs)."
        )
