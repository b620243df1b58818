"""The compiled kernels of :mod:`.blur`: glass blur's sequential pixel sweeps (also
drawing their shifts inside the loop), defocus blur's disk sums and zoom blur's transposed
zooms. Motion and gaussian blur's kernels serve :mod:`.ops` and live in
:mod:`.ops_kernels`. Conventions in :mod:`.common_kernels`."""

from __future__ import annotations

import numba
import numpy as np
import torch

from robustbench_bn.data.corruptions import mersenne
from robustbench_bn.data.corruptions.common_kernels import (
    RAW,
    border_index,
    deliver_image,
    finish_image,
    image_target,
    padded_row,
)
from robustbench_bn.data.corruptions.sampling import generator_states, run_image_kernel, run_kernel


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
def _glass_sweeps_share(pixels, shifts, delta, first, step):
    for index in range(first, pixels.shape[0], step):  # pragma: no cover - compiled
        _glass_sweeps(pixels[index], shifts[index], delta)


@numba.njit(nogil=True, cache=True)
def _glass_sweeps_drawing_share(sources, states, delta, iterations, quantize, moved, first, step):
    # pragma: no cover - compiled
    # :func:`_glass_sweeps` drawing each iteration's shifts (rows x cols x (dx, dy) in
    # [-delta, delta), the numbers ``sampling.integers`` would return) from the image's
    # generator into a small int8 buffer that stays in the cache. Each image is first copied
    # (or clamped and quantized, :func:`.common_kernels.finish_image`) into ``moved`` by the
    # same thread, so the sweeps find it in the cache.
    channels, height, width = sources.shape[1:]
    rows, cols = height - 2 * delta, width - 2 * delta
    shifts = np.empty((1, rows, cols, 2), np.int8)
    flat = shifts.ravel()
    buffer = np.empty(mersenne.CHUNK, np.uint32)
    for index in range(first, sources.shape[0], step):
        if quantize:
            finish_image(sources[index], moved[index], True)
        else:
            moved[index] = sources[index]
        words, position = mersenne.open_state(states[index])
        for _ in range(iterations):
            for start in range(0, flat.size, mersenne.CHUNK):
                target = flat[start : start + mersenne.CHUNK]
                mersenne.integer_chunk(words, position, buffer, target, -delta, 2 * delta)
            _glass_sweeps(moved[index], shifts, delta)
        mersenne.close_state(states[index], words, position)


def glass_sweeps_drawing(
    pixels: torch.Tensor, generators, delta: int, iterations: int, quantize: bool = False
) -> torch.Tensor:
    """:func:`glass_sweeps` drawing each image's shifts from its generator inside the
    compiled loop (delta below 64), then advancing the generators as the draw would. With
    ``quantize``, ``pixels`` (float32) are first clamped and quantized as
    :func:`.ops_kernels.finish` does, in the same loop."""
    sources = pixels.contiguous()
    moved = torch.empty_like(sources)
    with generator_states(generators) as states:
        run_kernel(
            _glass_sweeps_drawing_share,
            len(moved),
            sources.numpy(),
            states,
            delta,
            iterations,
            quantize,
            moved.numpy(),
        )
    return moved


def glass_sweeps(pixels: torch.Tensor, shifts: torch.Tensor, delta: int) -> torch.Tensor:
    """The compiled twin of glass blur's sweeps (see :func:`.blur.glass_blur`) for CPU
    tensors: pixels [B, C, H, W] (moved in place on a copy), shifts [B, iterations, rows,
    cols, (dx, dy)]."""
    moved = pixels.contiguous().clone()
    shifts = shifts.contiguous()
    run_kernel(_glass_sweeps_share, len(moved), moved.numpy(), shifts.numpy(), delta)
    return moved


@numba.njit(nogil=True, cache=True)
def _disk_blur_share(images, row_sources, col_sources, heights, taps, finish, out, first, step):
    # pragma: no cover - compiled
    # Correlation with (blur taps x blur taps) convolved with a uniform disk, in float64: the
    # padded plane blurred along rows, then down the columns into running column sums, so a
    # disk column of rows -h..h is the difference of two sums. Per pixel that is two loads per
    # disk column instead of one multiply-add per kernel tap (or two FFTs of the plane).
    channels, height, width = images.shape[1:]
    reach = heights.shape[0] // 2
    count = taps.shape[0]
    pad = reach + count // 2
    span = width + 2 * reach  # columns of the blurred plane the disk reads
    scale = 0.0
    for column in range(heights.shape[0]):
        scale += 2 * heights[column] + 1
    scale = 1.0 / scale
    padded = np.empty((height + 2 * pad, width + 2 * pad), np.float32)
    across = np.empty((height + 2 * pad, span), np.float64)
    sums = np.empty((height + 2 * reach + 1, span), np.float64)
    line = np.empty(width, np.float64)
    scratch = np.empty(out.shape[1:], np.float32)
    for index in range(first, images.shape[0], step):
        result = image_target(scratch, out, index, finish)
        for channel in range(channels):
            plane = images[index, channel]
            for row in range(padded.shape[0]):
                padded_row(plane[row_sources[row]], padded[row], pad, col_sources)
            for row in range(padded.shape[0]):
                blurred = across[row]
                source = padded[row]
                weight = taps[0]
                for col in range(span):
                    blurred[col] = np.float64(source[col]) * weight
                for tap in range(1, count):
                    weight = taps[tap]
                    shifted = source[tap : tap + span]
                    for col in range(span):
                        blurred[col] += np.float64(shifted[col]) * weight
            # sums[k] holds the column-blurred rows 0 .. k - 1 (of the rows the disk reads).
            sums[0, :] = 0.0
            for row in range(sums.shape[0] - 1):
                before, after = sums[row], sums[row + 1]
                for col in range(span):
                    after[col] = before[col]
                for tap in range(count):
                    weight = taps[tap]
                    blurred = across[row + tap]
                    for col in range(span):
                        after[col] += blurred[col] * weight
            for row in range(height):
                line[:] = 0.0
                for column in range(heights.shape[0]):
                    half_height = heights[column]
                    below = sums[row + reach + half_height + 1, column : column + width]
                    above = sums[row + reach - half_height, column : column + width]
                    for col in range(width):
                        line[col] += below[col] - above[col]
                target = result[channel, row]
                for col in range(width):
                    target[col] = np.float32(line[col] * scale)
        deliver_image(scratch, out, index, finish)


def disk_blur(
    images: torch.Tensor,
    heights: tuple[int, ...],
    taps: tuple[float, ...],
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """Correlate CPU float32 images [B, C, H, W] with a uniform disk blurred by ``taps``
    along both axes (:func:`.blur.disk_columns`), borders mirrored (BORDER_REFLECT_101).
    ``heights[k]`` is the half height of disk column ``k - len(heights) // 2``. Exact in
    float64 before the float32 result, which differs from the FFT's float32 rounding in
    about 1 in 50,000 uint8 levels at 224 px."""
    height, width = images.shape[-2:]
    pad = len(heights) // 2 + len(taps) // 2
    return run_image_kernel(
        _disk_blur_share,
        images,
        border_index(torch.arange(-pad, height + pad), height, "mirror").numpy(),
        border_index(torch.arange(-pad, width + pad), width, "mirror").numpy(),
        np.asarray(heights, dtype=np.int64),
        np.asarray(taps, dtype=np.float64),
        out=out,
        finish=finish,
    )


@numba.njit(inline="always")
def _transposed_from_memory(source, target):  # pragma: no cover - compiled
    # target[c, r] = source[r, c], the source not yet in cache: one target row at a time
    # (measured here: 0.57 ns per value against 1.2 for 8 x 8 tiles).
    rows, cols = source.shape
    for col in range(cols):
        line = target[col]
        for row in range(rows):
            line[row] = source[row, col]


@numba.njit(inline="always")
def _transposed_scaled(source, target, scale):  # pragma: no cover - compiled
    # target[c, r] = source[r, c] * scale, the source in cache: whole 8 x 8 tiles (fixed
    # trip counts, which numba unrolls: three times faster here than tiles with computed
    # bounds), then the rows and columns past the last whole tile.
    rows, cols = source.shape
    whole_rows, whole_cols = rows - rows % 8, cols - cols % 8
    for top in range(0, whole_rows, 8):
        for left in range(0, whole_cols, 8):
            for col in range(8):
                for row in range(8):
                    target[left + col, top + row] = source[top + row, left + col] * scale
    for row in range(whole_rows, rows):
        for col in range(cols):
            target[col, row] = source[row, col] * scale
    for col in range(whole_cols, cols):
        for row in range(whole_rows):
            target[col, row] = source[row, col] * scale


@numba.njit(nogil=True, cache=True)
def _zoom_blur_share(images, rows, row_weights, cols, col_weights, finish, out, first, step):
    # pragma: no cover - compiled
    # The image plus each factor's zoom, over (1 + factors), summed transposed: per zoom,
    # the two source rows of each output row blended (contiguous), written transposed eight
    # rows at a time, so the blend of each output column's two source columns is again two
    # contiguous rows; the sum is transposed back once. Same arithmetic, in the same order,
    # as blending rows then columns in place.
    channels, height, width = images.shape[1:]
    factors = rows.shape[0]
    total = np.empty((width, height), np.float32)
    across = np.empty((width, height), np.float32)
    blended = np.empty((8, width), np.float32)
    scale = np.float32(1.0) / np.float32(factors + 1)
    one = np.float32(1.0)
    scratch = np.empty(out.shape[1:], np.float32)
    for index in range(first, images.shape[0], step):
        result = image_target(scratch, out, index, finish)
        for channel in range(channels):
            plane = images[index, channel]
            _transposed_from_memory(plane, total)
            for factor in range(factors):
                # Only the columns the zoom reads (its centre).
                start = cols[factor, 0, 0]
                stop = cols[factor, width - 1, 1] + 1
                for top in range(0, height, 8):
                    bottom = min(top + 8, height)
                    for row in range(top, bottom):
                        upper, lower = rows[factor, row, 0], rows[factor, row, 1]
                        down = row_weights[factor, row]
                        up = one - down
                        above = plane[upper, start:stop]
                        below = plane[lower, start:stop]
                        line = blended[row - top, start:stop]
                        for col in range(stop - start):
                            line[col] = above[col] * up + below[col] * down
                    if bottom - top == 8:  # a fixed trip count: unrolled
                        for col in range(start, stop):
                            for row in range(8):
                                across[col, top + row] = blended[row, col]
                    else:
                        for col in range(start, stop):
                            for row in range(bottom - top):
                                across[col, top + row] = blended[row, col]
                for col in range(width):
                    left, right = cols[factor, col, 0], cols[factor, col, 1]
                    share = col_weights[factor, col]
                    keep = one - share
                    line = total[col]
                    first_source, second_source = across[left], across[right]
                    for row in range(height):
                        line[row] += first_source[row] * keep + second_source[row] * share
            _transposed_scaled(total, result[channel], scale)
        deliver_image(scratch, out, index, finish)


def zoom_blur(
    images: torch.Tensor, tables, out: torch.Tensor | None = None, finish: int = RAW
) -> torch.Tensor:
    """The compiled twin of :func:`.blur.zoom_blur` for CPU float32 images [B, C, H, W]:
    ``tables`` from :func:`.ops.clipped_zoom_tables` for every factor."""
    rows, row_weights, cols, col_weights = tables
    return run_image_kernel(
        _zoom_blur_share,
        images,
        rows.numpy(),
        row_weights.numpy(),
        cols.contiguous().numpy(),
        col_weights.numpy(),
        out=out,
        finish=finish,
    )
