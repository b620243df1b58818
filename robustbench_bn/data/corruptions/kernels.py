"""CPU kernels compiled with numba for the kinds of step torch does slowly: a table walk per
pixel (shot noise's inverse-CDF lookup), a sequential sweep whose every step reads the previous
ones (glass blur's local pixel moves) and a flood fill (spatter's Canny hysteresis).

Each kernel handles one image and releases the GIL, so :func:`for_each_image` runs a batch
on the draw pool's threads. The torch implementations beside them (used on other devices)
compute the same numbers; tests/test_corruptions.py checks that the two agree exactly.
Compiled code is cached on disk (numba's ``cache=True``), so only the first use on a machine
pays the compilation (a few seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numba
import numpy as np
import torch

from robustbench_bn.data.corruptions.sampling import run_per_image


@numba.njit(nogil=True, cache=True)
def _shot_noise(pixels, uniforms, table, guide, photons, noisy):  # pragma: no cover - compiled
    # float32 arithmetic where the torch path computes in float32, so both give the same bits.
    width = table.shape[1]
    bins = guide.shape[1] - 1
    scale = np.float32(255.0)
    tolerance = np.float32(1e-6)
    for index in range(pixels.shape[0]):
        level = np.rint(pixels[index] * scale)
        if abs(level / scale - pixels[index]) > tolerance:
            return False
        row = int(level)
        key = np.float64(level) + uniforms[index]
        count = guide[row, int((key - row) * bins)]
        while count < width and table[row, count] <= key:
            count += 1
        noisy[index] = np.float32(min(count, width - 1)) / photons
    return True


@numba.njit(nogil=True, cache=True)
def _glass_sweeps(pixels, shifts, delta):  # pragma: no cover - compiled
    channels, height, width = pixels.shape
    for iteration in range(shifts.shape[0]):
        for row in range(height - delta, delta, -1):
            for col in range(width - delta, delta, -1):
                shift_x = shifts[iteration, row - delta - 1, col - delta - 1, 0]
                shift_y = shifts[iteration, row - delta - 1, col - delta - 1, 1]
                for channel in range(channels):
                    pixels[channel, row, col] = pixels[channel, row + shift_y, col + shift_x]


@numba.njit(nogil=True, cache=True)
def _hysteresis(candidate, strong, edges):  # pragma: no cover - compiled
    # A flood fill from the strong pixels through 8-connected candidates: the fixed point the
    # torch path reaches by repeated 3x3 dilation, in one pass over the image.
    height, width = candidate.shape
    stack = np.empty(height * width, np.int64)
    top = 0
    for row in range(height):
        for col in range(width):
            if strong[row, col]:
                edges[row, col] = True
                stack[top] = row * width + col
                top += 1
    while top > 0:
        top -= 1
        row, col = divmod(stack[top], width)
        for near_row in range(max(row - 1, 0), min(row + 2, height)):
            for near_col in range(max(col - 1, 0), min(col + 2, width)):
                if candidate[near_row, near_col] and not edges[near_row, near_col]:
                    edges[near_row, near_col] = True
                    stack[top] = near_row * width + near_col
                    top += 1


def for_each_image(kernel: Callable[..., None], *batches: torch.Tensor) -> None:
    """``kernel(*(batch[i] as numpy for batch in batches))`` for every image i, in threads."""
    arrays: list[Sequence[np.ndarray]] = [batch.numpy() for batch in batches]
    run_per_image(len(batches[0]), lambda index: kernel(*(array[index] for array in arrays)))


def shot_noise(
    images: torch.Tensor,
    uniforms: torch.Tensor,
    table: torch.Tensor,
    guide: torch.Tensor,
    photons: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled twin of :func:`.noise.shot_noise`'s table path for CPU tensors: the noisy
    images and, per image, whether it was on the uint8 grid (if not, its result is unset)."""
    batch = images.shape[0]
    pixels = images.reshape(batch, -1).contiguous()
    flat_uniforms = uniforms.reshape(batch, -1).contiguous()
    noisy = torch.empty_like(pixels)
    on_grid = torch.zeros(batch, dtype=torch.bool)
    table_array, guide_array = table.numpy(), guide.numpy()
    photons32 = np.float32(photons)

    def one_image(index: int) -> None:
        on_grid[index] = bool(
            _shot_noise(
                pixels[index].numpy(),
                flat_uniforms[index].numpy(),
                table_array,
                guide_array,
                photons32,
                noisy[index].numpy(),
            )
        )

    run_per_image(batch, one_image)
    return noisy.view_as(images), on_grid


def hysteresis(candidate: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
    """The compiled twin of :func:`.spatter.canny`'s hysteresis for CPU tensors: bool
    [B, 1, H, W] edges, the candidates 8-connected through candidates to a strong pixel."""
    edges = torch.zeros_like(strong)
    for_each_image(
        lambda weak, seeds, out: _hysteresis(weak[0], seeds[0], out[0]),
        candidate.contiguous(),
        strong.contiguous(),
        edges,
    )
    return edges


def glass_sweeps(pixels: torch.Tensor, shifts: torch.Tensor, delta: int) -> torch.Tensor:
    """The compiled twin of glass blur's sweeps (see :func:`.blur.glass_blur`) for CPU
    tensors: pixels [B, C, H, W] (moved in place on a copy), shifts [B, iterations, rows,
    cols, (dx, dy)]."""
    moved = pixels.contiguous().clone()
    shifts = shifts.contiguous()
    for_each_image(lambda image, steps: _glass_sweeps(image, steps, delta), moved, shifts)
    return moved
