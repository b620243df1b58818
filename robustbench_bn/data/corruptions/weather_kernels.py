"""The compiled kernels of :mod:`.weather`: fog's plasma fractal and blend, snow's layer
levels and blend, frost's blend. Conventions in :mod:`.common_kernels`."""

from __future__ import annotations

import numba
import numpy as np
import torch

from robustbench_bn.data.corruptions.common_kernels import (
    RAW,
    clamped_level,
    deliver_image,
    extremes,
    image_target,
)
from robustbench_bn.data.corruptions.sampling import run_image_kernel, run_kernel


@numba.njit(nogil=True, cache=True)
def _plasma_fractal(draws, wibble_decay, grid):  # pragma: no cover - compiled
    # :func:`.weather.plasma_fractal` cell by cell: the same sums in the same order, the
    # draws taken in the same order (row-major within each of a step's three grids).
    size = grid.shape[0]
    grid[:, :] = 0.0
    used = 0
    step = size
    wibble = 100.0
    while step >= 2:
        half = step // 2
        cells = size // step
        for row in range(cells):
            below = ((row + 1) % cells) * step
            for col in range(cells):
                right = ((col + 1) % cells) * step
                total = (grid[row * step, col * step] + grid[below, col * step]) + (
                    grid[row * step, right] + grid[below, right]
                )
                grid[row * step + half, col * step + half] = total / 4 + wibble * (
                    draws[used] * 2 * wibble - wibble
                )
                used += 1
        for row in range(cells):
            above = ((row - 1) % cells) * step + half
            for col in range(cells):
                right = ((col + 1) % cells) * step
                total = (
                    (grid[row * step + half, col * step + half] + grid[above, col * step + half])
                    + grid[row * step, col * step]
                ) + grid[row * step, right]
                grid[row * step, col * step + half] = total / 4 + wibble * (
                    draws[used] * 2 * wibble - wibble
                )
                used += 1
        for row in range(cells):
            below = ((row + 1) % cells) * step
            for col in range(cells):
                left = ((col - 1) % cells) * step + half
                total = (
                    (grid[row * step + half, col * step + half] + grid[row * step + half, left])
                    + grid[row * step, col * step]
                ) + grid[below, col * step]
                grid[row * step + half, col * step] = total / 4 + wibble * (
                    draws[used] * 2 * wibble - wibble
                )
                used += 1
        step //= 2
        wibble /= wibble_decay
    # Subtraction rounds monotonically, so the largest value minus the smallest is the
    # largest of the shifted grid: the tensor version's max after its subtraction.
    lowest, peak = extremes(grid)
    grid -= lowest
    grid /= peak - lowest


@numba.njit(nogil=True, cache=True)
def _plasma_share(draws, wibble_decay, grids, first, step):
    for index in range(first, draws.shape[0], step):  # pragma: no cover - compiled
        _plasma_fractal(draws[index], wibble_decay, grids[index])


@numba.njit(nogil=True, cache=True)
def _fog_share(images, plasma, amount, finish, out, first, step):  # pragma: no cover - compiled
    # :func:`.weather.fog`'s blend in float32, in the tensor version's order, row by row over
    # contiguous slices (the plasma row converted once for the three channels).
    channels, height, width = images.shape[1:]
    scratch = np.empty(out.shape[1:], np.float32)
    fog = np.empty(width, np.float32)
    for index in range(first, images.shape[0], step):
        target = image_target(scratch, out, index, finish)
        image = images[index]
        peak = extremes(image.reshape(channels * height, width))[1]
        divisor = peak + amount
        for row in range(height):
            source = plasma[index, row]
            for col in range(width):
                fog[col] = amount * np.float32(source[col])
            for channel in range(channels):
                pixels, line = image[channel, row], target[channel, row]
                for col in range(width):
                    line[col] = (pixels[col] + fog[col]) * peak / divisor
        deliver_image(scratch, out, index, finish)


def plasma_fractal(draws: torch.Tensor, size: int, wibble_decay: float) -> torch.Tensor:
    """The compiled twin of :func:`.weather.plasma_fractal` from its uniform draws
    [B, size^2 - 1] (float64): [B, size, size] float64, the same bits."""
    grids = torch.empty((len(draws), size, size), dtype=torch.float64)
    run_kernel(
        _plasma_share, len(draws), draws.contiguous().numpy(), float(wibble_decay), grids.numpy()
    )
    return grids


def fog_blend(
    images: torch.Tensor,
    plasma: torch.Tensor,
    amount: float,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """The compiled twin of :func:`.weather.fog`'s blend of float32 images [B, C, H, W] with
    plasma [B, >= H, >= W] (float64): (x + amount * plasma) * peak / (peak + amount)."""
    return run_image_kernel(
        _fog_share, images, plasma.numpy(), np.float32(amount), out=out, finish=finish
    )


@numba.njit(nogil=True, cache=True)
def _zeroed_levels_share(planes, threshold, out, first, step):  # pragma: no cover - compiled
    # torch.where(x < threshold, 0, x) (the threshold rounded to float32, as torch compares a
    # float32 tensor with a Python float), then :func:`.ops.quantize`: one pass, row by row.
    cut = np.float32(threshold)
    zero, scale = np.float32(0.0), np.float32(255.0)
    for index in range(first, planes.shape[0], step):
        for channel in range(planes.shape[1]):
            for row in range(planes.shape[2]):
                source, target = planes[index, channel, row], out[index, channel, row]
                for col in range(source.shape[0]):
                    value = source[col]
                    value = zero if value < cut else value
                    target[col] = clamped_level(value) / scale


def zeroed_levels(planes: torch.Tensor, threshold: float) -> torch.Tensor:
    """CPU float32 [B, C, H, W] (any strides) with the values below ``threshold`` zeroed, then
    truncated onto the uint8 grid (:func:`.ops.quantize`): a new contiguous tensor."""
    out = torch.empty(planes.shape, dtype=torch.float32)
    run_kernel(_zeroed_levels_share, len(planes), planes.numpy(), float(threshold), out.numpy())
    return out


@numba.njit(nogil=True, cache=True)
def _snow_blend_share(images, layer, keep, whiten, finish, out, first, step):
    # pragma: no cover - compiled
    # :func:`.weather.snow`'s last steps in float32, operation for operation: the layer read
    # back as 8 bits (round(clamp(x, 0, 1) * 255) / 255), the whitened image
    # max(x, luma * 1.5 + 0.5), the blend keep * x + whiten * whitened, then the layer and
    # its 180-degree turn added.
    height, width = images.shape[2], images.shape[3]
    bright = np.empty(width, np.float32)
    straight = np.empty(width, np.float32)
    turned = np.empty(width, np.float32)
    scratch = np.empty(out.shape[1:], np.float32)
    low, high, scale = np.float32(0.0), np.float32(1.0), np.float32(255.0)
    for index in range(first, images.shape[0], step):
        result = image_target(scratch, out, index, finish)
        flakes = layer[index, 0]
        for row in range(height):
            red, green, blue = images[index, 0, row], images[index, 1, row], images[index, 2, row]
            for col in range(width):
                luma = (red[col] * np.float32(0.299) + green[col] * np.float32(0.587)) + blue[
                    col
                ] * np.float32(0.114)
                bright[col] = luma * np.float32(1.5) + np.float32(0.5)
            here, opposite = flakes[row], flakes[height - 1 - row]
            for col in range(width):
                value = here[col]
                value = low if value < low else (high if value > high else value)
                straight[col] = np.rint(value * scale) / scale
                value = opposite[width - 1 - col]
                value = low if value < low else (high if value > high else value)
                turned[col] = np.rint(value * scale) / scale
            for channel in range(3):
                source = images[index, channel, row]
                target = result[channel, row]
                for col in range(width):
                    value = source[col]
                    whitened = value if value >= bright[col] else bright[col]
                    target[col] = ((keep * value + whiten * whitened) + straight[col]) + turned[col]
        deliver_image(scratch, out, index, finish)


def snow_blend(
    images: torch.Tensor,
    layer: torch.Tensor,
    image_weight: float,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """The compiled twin of :func:`.weather.snow`'s final blend of CPU float32 images
    [B, 3, H, W] with their motion-blurred snow layers [B, 1, H, W] (before their 8-bit
    rounding, which the blend does as it reads them)."""
    return run_image_kernel(
        _snow_blend_share,
        images,
        layer.contiguous().numpy(),
        np.float32(image_weight),
        np.float32(1 - image_weight),
        out=out,
        finish=finish,
    )


@numba.njit(nogil=True, cache=True)
def _frost_share(images, photographs, corners, keep, frost, finish, out, first, step):
    # pragma: no cover - compiled
    # keep * x + frost * crop in float32, as the tensor steps compute it, the crop read in
    # place from its photograph.
    channels, height, width = images.shape[1:]
    scratch = np.empty(out.shape[1:], np.float32)
    for index in range(first, images.shape[0], step):
        result = image_target(scratch, out, index, finish)
        choice, top, left = corners[index, 0], corners[index, 1], corners[index, 2]
        for channel in range(channels):
            for row in range(height):
                source = images[index, channel, row]
                crop = photographs[choice, channel, top + row, left : left + width]
                target = result[channel, row]
                for col in range(width):
                    target[col] = keep * source[col] + frost * crop[col]
        deliver_image(scratch, out, index, finish)


def frost_blend(
    images: torch.Tensor,
    photographs: torch.Tensor,
    corners: torch.Tensor,
    image_weight: float,
    frost_weight: float,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """The compiled twin of :func:`.weather.frost`'s blend for CPU float32 images
    [B, 3, H, W]: ``photographs`` [P, 3, h, w] float32, ``corners`` [B, (photograph, top,
    left)] where each image's crop starts."""
    return run_image_kernel(
        _frost_share,
        images,
        photographs.contiguous().numpy(),
        corners.contiguous().numpy(),
        np.float32(image_weight),
        np.float32(frost_weight),
        out=out,
        finish=finish,
    )
