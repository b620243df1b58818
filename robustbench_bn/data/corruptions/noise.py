"""Noise corruptions of Hendrycks & Dietterich 2019: gaussian, shot, impulse, speckle.

Algorithms as in hendrycks/robustness make_*_c.py; parameters in :mod:`.parameters`. Every
function takes float images [B, 3, H, W] in [0, 1], the severity's parameter, one generator per
image and the family, and returns the corrupted batch, finished as ``finish`` asks into ``out``
(:func:`.ops.deliver`; by default unclipped, in a new tensor).
"""

from __future__ import annotations

import torch

from robustbench_bn.data.corruptions import noise_kernels, ops, sampling
from robustbench_bn.data.corruptions.sampling import Generators

#: Largest Poisson count kept in the lookup tables, in standard deviations above the rate;
#: the probability mass beyond it is below 1e-20.
_POISSON_TAIL_SIGMAS = 12


def _draws_in_the_loop(images: torch.Tensor) -> bool:
    # The compiled noise loops draw the normals themselves (the same numbers).
    return images.device.type == "cpu" and images.dtype == torch.float32 and images[0].numel() >= 64


def gaussian_noise(
    images: torch.Tensor, scale: float, generators: Generators, family: str, **finishing
):
    if _draws_in_the_loop(images):
        return noise_kernels.normal_noise(
            images, generators, float(scale), speckle=False, **finishing
        )
    noisy = images + sampling.normal(generators, tuple(images.shape[1:])) * scale
    return ops.deliver(noisy, **finishing)


def speckle_noise(
    images: torch.Tensor, scale: float, generators: Generators, family: str, **finishing
):
    if _draws_in_the_loop(images):
        return noise_kernels.normal_noise(
            images, generators, float(scale), speckle=True, **finishing
        )
    noisy = images + images * sampling.normal(generators, tuple(images.shape[1:])) * scale
    return ops.deliver(noisy, **finishing)


def impulse_noise(
    images: torch.Tensor, amount: float, generators: Generators, family: str, **finishing
):
    # skimage.util.random_noise(mode="s&p"): every element (channels separately) is replaced
    # with probability ``amount``, by salt (1) or pepper (0) with equal odds.
    if _draws_in_the_loop(images):
        return noise_kernels.impulse_noise_drawing(images, generators, float(amount), **finishing)
    draws = sampling.uniform(generators, (2, *images.shape[1:]))
    if images.device.type == "cpu" and images.dtype == torch.float32:
        return noise_kernels.impulse_noise(images, draws, float(amount), **finishing)
    replaced = draws[:, 0] < amount
    salt = (draws[:, 1] < 0.5).to(images.dtype)
    return ops.deliver(torch.where(replaced, salt, images), **finishing)


def shot_noise(
    images: torch.Tensor,
    photons: float,
    generators: Generators,
    family: str,
    out: torch.Tensor | None = None,
    finish: int = ops.RAW,
):
    """poisson(x * photons) / photons.

    An image on the uint8 grid (every dataset this suite reads) has at most 256 distinct
    rates, so its counts come from inverting per-level Poisson CDF tables with its uniforms,
    several times faster than torch.poisson; an image off the grid falls back to
    torch.poisson with its own generator. The choice is made per image, so an image's noise
    never depends on the other images of its batch.
    """
    table = _poisson_level_table(float(photons))
    guide = _poisson_guide(float(photons))
    compiled = images.device.type == "cpu" and images.dtype == torch.float32
    if compiled:
        # The uniforms are drawn inside the compiled loop: the same numbers. Images on the
        # grid come back finished, the others unset.
        noisy, on_grid = noise_kernels.shot_noise_drawing(
            images, generators, table, guide, photons, out=out, finish=finish
        )
    else:
        uniforms = sampling.uniform(generators, tuple(images.shape[1:]), dtype=torch.float64)
        levels = torch.round(images * 255)
        on_grid = ((levels / 255 - images).abs() <= 1e-6).flatten(1).all(1)
        counts = _invert_level_cdfs(table, guide, levels, uniforms)
        noisy = counts.to(images.dtype) / photons
    for index in (~on_grid).nonzero().view(-1).tolist():
        rate = images[index].double().cpu() * photons
        counts = torch.poisson(rate, generator=generators[index]).to(images.device)
        fallback = (counts / photons).to(images.dtype)
        if compiled:
            ops.deliver(fallback[None], noisy[index : index + 1], finish)
        else:
            noisy[index] = fallback
    return noisy if compiled else ops.deliver(noisy, out, finish)


def _invert_level_cdfs(
    table: torch.Tensor, guide: torch.Tensor, levels: torch.Tensor, uniforms: torch.Tensor
) -> torch.Tensor:
    """Counts with level + u falling at or after that many entries of the level's table row,
    capped at the last count: ``searchsorted(table.view(-1), levels + u, right=True)`` minus
    the row offset, clamped, exactly, without a binary search over the whole table per pixel.

    The guide (Chen & Asau's guide table) holds, per level and per 1/bins slice of [0, 1],
    how many row entries lie at or below the slice's start; a pixel starts there and steps
    over the few entries inside its slice. The rare pixel still short after two steps (deep
    tail, where many CDF values crowd into one slice) gets a binary search of its row.
    """
    width = table.shape[1]
    bins = guide.shape[1] - 1
    keys = (levels.double() + uniforms).reshape(-1)
    rows = levels.reshape(-1).long()
    # keys - rows is exact (Sterbenz), and scaling by a power of two too: the slice index is
    # exact, and the slice's start (rows + slice / bins) lies at or below the key.
    slices = ((keys - rows) * bins).long()
    counts = guide.view(-1)[rows * (bins + 1) + slices].long()
    flat = table.view(-1)
    starts = rows * width

    def next_entry_passed() -> torch.Tensor:
        return (counts < width) & (flat[starts + counts.clamp(max=width - 1)] <= keys)

    for _ in range(2):
        counts += next_entry_passed()
    pending = next_entry_passed().nonzero().view(-1)
    if len(pending):
        counts[pending] = torch.searchsorted(
            table[rows[pending]], keys[pending].unsqueeze(1), right=True
        ).view(-1)
    return counts.clamp_(max=width - 1).view_as(levels)


@ops.cached_per_device
def _poisson_guide(photons: float, bins: int = 256) -> torch.Tensor:
    """[256, bins + 1] int16: entries of each level's table row at or below level + b / bins.

    Small on purpose: a lookup per pixel reads it at random, and 256 slices (131 kB) stay in
    the CPU cache where 4,096 (8 MB as int64) made the lookups five times slower here, while
    still leaving under 0.03 steps per pixel on average.
    """
    table = _poisson_level_table(photons)
    starts = torch.arange(256, dtype=torch.float64).view(-1, 1) + (
        torch.arange(bins + 1, dtype=torch.float64) / bins
    )
    return torch.searchsorted(table, starts, right=True).to(torch.int16)


@ops.cached_per_device
def _poisson_level_table(photons: float) -> torch.Tensor:
    """[256, N] float64: row k is k + the Poisson CDF at rate photons * k / 255, N counts."""
    top_rate = photons
    width = int(top_rate + _POISSON_TAIL_SIGMAS * top_rate**0.5 + 20)
    rates = torch.arange(256, dtype=torch.float64).view(-1, 1) * (photons / 255)
    counts = torch.arange(width, dtype=torch.float64).view(1, -1)
    log_pmf = counts * torch.log(rates.clamp(min=1e-300)) - rates - torch.lgamma(counts + 1)
    pmf = torch.exp(log_pmf)
    pmf[0] = 0
    pmf[0, 0] = 1  # rate 0: always 0
    cdf = torch.cumsum(pmf, 1).clamp(max=1)
    cdf[:, -1] = 1  # the cut tail goes to the last count
    # Strictly increasing rows would be needed for exactness only where the pmf underflows
    # to 0 (deep tails); there searchsorted picks the first of equal values, a count whose
    # probability is below 1e-300 anyway.
    return cdf + torch.arange(256, dtype=torch.float64).view(-1, 1)
