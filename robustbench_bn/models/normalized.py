"""Models that take images in [0, 1] and apply their own input normalization.

Every model the suite evaluates receives float images in [0, 1]; the model's preprocessing
(mean, std) lives inside the model, so a dataset never normalizes and an image is never
normalized twice. The preprocessing is reported through :attr:`NormalizedModel.preprocessing`
and written into every result row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class NormalizedModel(nn.Module):
    """``network((x - mean) / std)`` with the mean and std kept as buffers."""

    def __init__(self, network: nn.Module, *, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.network = network
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def preprocessing(self) -> str:
        mean = ",".join(f"{v:.4g}" for v in self.mean.flatten().tolist())
        std = ",".join(f"{v:.4g}" for v in self.std.flatten().tolist())
        return f"mean=({mean});std=({std})"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network((images - self.mean) / self.std)
