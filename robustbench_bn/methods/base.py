"""The method protocol: what the runner asks of every test-time method.

The runner drives each cell the same way::

    method.reset()                   # back to the source state (every cell, unless continual)
    method.adapt(samples)            # only if method.cell_samples > 0: a random sample of the cell
    logits = method.predict(batch)   # for every batch of the cell, in order

and once per job, before the first cell, ``method.prepare(training_images)`` for methods that
need the clean source training split (``needs_training_data``). Constructors take explicit
keyword arguments; Hydra builds them with ``_partial_: true`` and the runner adds ``model=``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

TrainingImages = Callable[[], tuple[torch.Tensor, torch.Tensor]]


class Method:
    """Base class: keeps a copy of the source state and restores it on :meth:`reset`."""

    #: How many random images of each cell :meth:`adapt` wants before evaluation (0: none).
    cell_samples: int = 0
    #: Whether :meth:`prepare` needs the clean training split.
    needs_training_data: bool = False

    def __init__(self, *, model: nn.Module) -> None:
        self.model = model
        self._source_state = copy.deepcopy(model.state_dict())

    def prepare(self, training_images: TrainingImages, *, cache_key: str, cache_dir: str) -> None:
        """Once per job, before any cell. ``training_images()`` loads the clean training split."""

    def reset(self) -> None:
        """Return the model (and any method state) to the source state."""
        self.model.load_state_dict(self._source_state)
        self.model.eval()

    def adapt(self, samples: torch.Tensor) -> None:
        """Adapt to a cell from ``cell_samples`` random images of it (no labels)."""

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch; a method may adapt on the batch before answering."""
        with torch.inference_mode():
            return self.model(images)

    def row_fields(self) -> dict[str, Any]:
        """The method's parameters, written into every result row."""
        return {}


def check_finite_loss(loss: torch.Tensor, *, method: str, learning_rate: float) -> None:
    """Stop a gradient-based method before a non-finite loss reaches ``backward()``: the step
    would write NaN into the model and every later prediction of the job would be wrong."""
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"{method}'s loss became non-finite; lower method.learning_rate "
            f"(now {learning_rate}) or use runner.precision=fp32."
        )


def batch_norm_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """All BatchNorm2d layers in forward-definition order."""
    return [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
