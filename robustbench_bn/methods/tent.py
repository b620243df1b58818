"""TENT: test-time entropy minimization (Wang, Shelhamer, Liu, Olshausen, Darrell, ICLR 2021,
"Tent: Fully Test-Time Adaptation by Entropy Minimization"; github DequanWang/tent).

Every BatchNorm layer normalizes with the current batch's statistics (no running statistics);
only the BN affine parameters (gamma, beta) are trained, by Adam on the mean softmax entropy
of the batch's predictions, ``steps`` updates per batch. The logits returned for a batch are
those of the last forward pass before its final update, as in the reference implementation.
The model and the optimizer return to the source state on :meth:`reset` (every cell unless
``runner.reset=continual``).
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.methods.base import Method, batch_norm_layers, check_finite_loss


def _batch_statistics_forward(layer: nn.BatchNorm2d, inputs: torch.Tensor) -> torch.Tensor:
    if inputs.shape[0] < 2:
        raise ConfigurationError(
            "tent normalizes with test-batch statistics and needs at least 2 images per batch; "
            "raise runner.batch_size."
        )
    return F.batch_norm(inputs, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy of softmax(logits)."""
    log_probabilities = logits.log_softmax(1)
    return -(log_probabilities.exp() * log_probabilities).sum(1)


class Tent(Method):
    """See the module docstring."""

    def __init__(
        self,
        *,
        model: nn.Module,
        learning_rate: float = 1e-3,
        steps: int = 1,
        beta1: float = 0.9,
        beta2: float = 0.999,
        weight_decay: float = 0.0,
    ) -> None:
        if steps < 1:
            raise ConfigurationError(f"method.steps must be >= 1, got {steps}.")
        if learning_rate <= 0:
            raise ConfigurationError(f"method.learning_rate must be > 0, got {learning_rate}.")
        super().__init__(model=model)
        self.learning_rate = learning_rate
        self.steps = steps
        self.layers = batch_norm_layers(model)
        if not self.layers:
            raise ConfigurationError("method=tent needs a model with BatchNorm2d layers.")
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.trainable: list[nn.Parameter] = []
        for layer in self.layers:
            layer.forward = types.MethodType(_batch_statistics_forward, layer)
            for parameter in (layer.weight, layer.bias):
                if parameter is not None:
                    parameter.requires_grad_(True)
                    self.trainable.append(parameter)
        self.optimizer = torch.optim.Adam(
            self.trainable, lr=learning_rate, betas=(beta1, beta2), weight_decay=weight_decay
        )
        self._optimizer_state = self.optimizer.state_dict()
        self._hyperparameters = {
            "learning_rate": learning_rate,
            "steps": steps,
            "betas": [beta1, beta2],
            "weight_decay": weight_decay,
            "optimizer": "adam",
        }

    def reset(self) -> None:
        super().reset()
        # A fresh optimizer state: Adam's moments from one cell must not leak into the next.
        self.optimizer.load_state_dict(self._optimizer_state)
        self.optimizer.state.clear()

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(False), torch.enable_grad():
            images = images.clone()  # an inference tensor cannot enter autograd
            for _ in range(self.steps):
                logits = self.model(images)
                loss = softmax_entropy(logits).mean()
                check_finite_loss(loss, method="tent", learning_rate=self.learning_rate)
                loss.backward()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        return logits.detach()

    def row_fields(self) -> dict[str, Any]:
        return dict(self._hyperparameters)
