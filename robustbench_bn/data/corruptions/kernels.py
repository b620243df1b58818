"""CPU kernels compiled with numba for the kinds of step torch does slowly: a table walk per
pixel (shot noise's inverse-CDF lookup), a sequential sweep whose every step reads the previous
ones (glass blur's local pixel moves) and the per-pixel neighbourhood logic of spatter's Canny
edges and capped distance transform.

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
def _canny(plane, low, high, edges):  # pragma: no cover - compiled
    # The torch path's integer arithmetic, pixel by pixel: Sobel on the edge-replicated plane,
    # L1 magnitude (0 outside the image), OpenCV's fixed-point sectors and tie rules.
    height, width = plane.shape
    magnitude = np.zeros((height + 2, width + 2), np.int64)
    gradient_x = np.empty((height, width), np.int64)
    gradient_y = np.empty((height, width), np.int64)
    for row in range(height):
        above, below = max(row - 1, 0), min(row + 1, height - 1)
        for col in range(width):
            left, right = max(col - 1, 0), min(col + 1, width - 1)
            across = (
                (plane[above, right] - plane[above, left])
                + 2 * (plane[row, right] - plane[row, left])
                + (plane[below, right] - plane[below, left])
            )
            down = (
                (plane[below, left] - plane[above, left])
                + 2 * (plane[below, col] - plane[above, col])
                + (plane[below, right] - plane[above, right])
            )
            gradient_x[row, col] = across
            gradient_y[row, col] = down
            magnitude[row + 1, col + 1] = abs(across) + abs(down)
    candidate = np.zeros((height, width), np.bool_)
    strong = np.zeros((height, width), np.bool_)
    for row in range(height):
        for col in range(width):
            here = magnitude[row + 1, col + 1]
            if here <= low:
                continue
            abs_x = abs(gradient_x[row, col])
            scaled_y = abs(gradient_y[row, col]) << 15
            tan22_x = abs_x * 13573
            tan67_x = tan22_x + (abs_x << 16)
            if scaled_y < tan22_x:
                peak = here > magnitude[row + 1, col] and here >= magnitude[row + 1, col + 2]
            elif scaled_y > tan67_x:
                peak = here > magnitude[row, col + 1] and here >= magnitude[row + 2, col + 1]
            elif (gradient_x[row, col] ^ gradient_y[row, col]) >= 0:
                peak = here > magnitude[row, col] and here > magnitude[row + 2, col + 2]
            else:
                peak = here > magnitude[row, col + 2] and here > magnitude[row + 2, col]
            if peak:
                candidate[row, col] = True
                strong[row, col] = here > high
    _hysteresis(candidate, strong, edges)


@numba.njit(nogil=True, cache=True)
def _distance_to_edges(edges, cap, distance):  # pragma: no cover - compiled
    # min(cap, Euclidean distance to the nearest edge): the torch path's capped row distances
    # and column pass, stopping a pixel's search once the row offset alone exceeds its best.
    height, width = edges.shape
    along = np.empty((height, width), np.int64)
    for row in range(height):
        last = -(10**6)
        for col in range(width):
            if edges[row, col]:
                last = col
            along[row, col] = col - last
        last = width - 1 + 10**6
        for col in range(width - 1, -1, -1):
            if edges[row, col]:
                last = col
            along[row, col] = min(min(along[row, col], last - col), cap)
    for row in range(height):
        for col in range(width):
            best = along[row, col] ** 2
            offset = 1
            while offset <= cap and offset * offset < best:
                for source in (row - offset, row + offset):
                    if 0 <= source < height:
                        candidate = along[source, col] ** 2 + offset * offset
                    else:
                        candidate = cap * cap + offset * offset
                    best = min(best, candidate)
                offset += 1
            distance[row, col] = np.sqrt(np.float64(best))


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


def canny(planes: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """The compiled twin of :func:`.spatter.canny` for CPU tensors: [B, 1, H, W] integer
    valued planes to bool edges."""
    integers = planes.to(torch.int64).contiguous()
    edges = torch.zeros(planes.shape, dtype=torch.bool)
    for_each_image(lambda plane, out: _canny(plane[0], low, high, out[0]), integers, edges)
    return edges


def distance_to_edges(edges: torch.Tensor, cap: int) -> torch.Tensor:
    """The compiled twin of :func:`.spatter.distance_to_edges` for CPU tensors."""
    distance = torch.empty(edges.shape, dtype=torch.float64)
    for_each_image(
        lambda plane, out: _distance_to_edges(plane[0], cap, out[0]), edges.contiguous(), distance
    )
    return distance


def glass_sweeps(pixels: torch.Tensor, shifts: torch.Tensor, delta: int) -> torch.Tensor:
    """The compiled twin of glass blur's sweeps (see :func:`.blur.glass_blur`) for CPU
    tensors: pixels [B, C, H, W] (moved in place on a copy), shifts [B, iterations, rows,
    cols, (dx, dy)]."""
    moved = pixels.contiguous().clone()
    shifts = shifts.contiguous()
    for_each_image(lambda image, steps: _glass_sweeps(image, steps, delta), moved, shifts)
    return moved
