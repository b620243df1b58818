"""Noise corruptions of Hendrycks & Dietterich 2019: gaussian, shot, impulse, speckle.

Algorithms as in hendrycks/robustness make_*_c.py; parameters in :mod:`.parameters`. Every
function takes float images [B, 3, H, W] in [0, 1], the severity's parameter, one generator per
image and the family, and returns the unclipped corrupted batch.
"""

from __future__ import annotations

import torch

from robustbench_bn.data.corruptions import ops, sampling
from robustbench_bn.data.corruptions.sampling import Generators

#: Largest Poisson count kept in the lookup tables, in standard deviations above the rate;
#: the probability mass beyond it is below 1e-20.
_POISSON_TAIL_SIGMAS = 12


def gaussian_noise(images: torch.Tensor, scale: float, generators: Generators, family: str):
    return images + sampling.normal(generators, tuple(images.shape[1:])) * scale


def speckle_noise(images: torch.Tensor, scale: float, generators: Generators, family: str):
    return images + images * sampling.normal(generators, tuple(images.shape[1:])) * scale


def impulse_noise(images: torch.Tensor, amount: float, generators: Generators, family: str):
    # skimage.util.random_noise(mode="s&p"): every element (channels separately) is replaced
    # with probability ``amount``, by salt (1) or pepper (0) with equal odds.
    draws = sampling.uniform(generators, (2, *images.shape[1:]))
    replaced = draws[:, 0] < amount
    salt = (draws[:, 1] < 0.5).to(images.dtype)
    return torch.where(replaced, salt, images)


def shot_noise(images: torch.Tensor, photons: float, generators: Generators, family: str):
    """poisson(x * photons) / photons.

    Images on the uint8 grid (every dataset this suite reads) have at most 256 distinct rates,
    so counts are drawn by inverting per-level Poisson CDF tables with one search per pixel,
    several times faster than torch.poisson; other images fall back to torch.poisson.
    """
    levels = torch.round(images * 255)
    uniforms = sampling.uniform(generators, tuple(images.shape[1:]), dtype=torch.float64)
    if not torch.allclose(levels / 255, images, rtol=0, atol=1e-6):
        rates = images.double() * photons
        counts = torch.stack(
            [
                torch.poisson(rate.cpu(), generator=generator)
                for rate, generator in zip(rates, generators, strict=True)
            ]
        ).to(images.device)
        return (counts / photons).to(images.dtype)
    table = _poisson_level_table(float(photons))
    width = table.shape[1]
    # Row k of the table holds k + CDF(level k), so one sorted array serves every level.
    keys = levels.double() + uniforms
    positions = torch.searchsorted(table.view(-1), keys.reshape(-1), right=True)
    counts = positions.view_as(levels) - levels.long() * width
    return (counts.clamp_(0, width - 1).to(images.dtype)) / photons


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
