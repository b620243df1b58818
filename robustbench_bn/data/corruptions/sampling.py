"""Per-image random draws: each image owns a ``torch.Generator`` seeded from its own seed.

Drawing every random number of an image from its own generator (and in a fixed order per
corruption) is what makes an image's corruption independent of the batch it travels in.
Each helper makes one call per image, so the Python overhead stays at a few microseconds per
image whatever the image size.

The generators are CPU generators whatever device the engine works on, so an image's random
numbers are the same bits on every machine; the draws are then moved to the working device
(:func:`torch.get_default_device`, which the engine sets with a ``torch.device`` context).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Generators = Sequence[torch.Generator]
CPU = torch.device("cpu")


def generators_for(seeds: torch.Tensor) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds.tolist()]


def per_image(generators: Generators, draw: Callable[[torch.Generator], torch.Tensor]):
    draws = torch.stack([draw(generator) for generator in generators])
    return draws.to(torch.get_default_device())


def uniform(
    generators: Generators,
    shape: tuple[int, ...],
    low: float = 0.0,
    high: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """[B, *shape] uniform in [low, high), one draw call per image."""
    draws = per_image(generators, lambda g: torch.rand(shape, generator=g, dtype=dtype, device=CPU))
    if low == 0.0 and high == 1.0:
        return draws  # x * 1 + 0 is x: two full passes saved
    return draws * (high - low) + low


def normal(generators: Generators, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    return per_image(generators, lambda g: torch.randn(shape, generator=g, dtype=dtype, device=CPU))


def integers(generators: Generators, low: int, high: int, shape: tuple[int, ...]) -> torch.Tensor:
    """[B, *shape] int64 in [low, high) (numpy's randint convention)."""
    return per_image(generators, lambda g: torch.randint(low, high, shape, generator=g, device=CPU))
