"""The compiled kernels of :mod:`.ops`' shared steps on CPU tensors: padding, the separable
filter, the sparse (BOX) resize, motion blur's taps (snow's too), and the finishing pass of
:func:`.ops.deliver` and the FFT paths. Conventions in :mod:`.common_kernels`."""

from __future__ import annotations

import numba
import numpy as np
import torch

from robustbench_bn.data.corruptions.common_kernels import (
    RAW,
    border_index,
    deliver_image,
    finish_image,
    finish_row,
    image_target,
    padded_row,
)
from robustbench_bn.data.corruptions.sampling import run_image_kernel, run_kernel


@numba.njit(nogil=True, cache=True)
def resize_separable_image(image, row_columns, row_weights, col_columns, col_weights, out):
    # pragma: no cover - compiled
    # Rows first, then columns, each output a float32 sum of its taps in increasing input
    # order with products rounded before adding: :func:`.ops.apply_sparse`'s arithmetic.
    channels = image.shape[0]
    out_height, out_width = out.shape[1], out.shape[2]
    width = image.shape[2]
    rows = np.empty((out_height, width), np.float32)
    transposed = np.empty((width, out_height), np.float32)
    columns = np.empty((out_width, out_height), np.float32)
    for channel in range(channels):
        # Tap by tap over whole rows (the same sums in the same order), so the inner loop
        # runs along contiguous memory and vectorizes.
        for row in range(out_height):
            target = rows[row]
            source = image[channel, row_columns[row, 0]]
            weight = row_weights[row, 0]
            for col in range(width):
                target[col] = source[col] * weight
            for tap in range(1, row_columns.shape[1]):
                source = image[channel, row_columns[row, tap]]
                weight = row_weights[row, tap]
                for col in range(width):
                    target[col] += source[col] * weight
        # The columns the same way on the transposed rows, then transposed back: a gather per
        # tap and pixel ran four times slower.
        for row in range(out_height):
            for col in range(width):
                transposed[col, row] = rows[row, col]
        for col in range(out_width):
            target = columns[col]
            source = transposed[col_columns[col, 0]]
            weight = col_weights[col, 0]
            for row in range(out_height):
                target[row] = source[row] * weight
            for tap in range(1, col_columns.shape[1]):
                source = transposed[col_columns[col, tap]]
                weight = col_weights[col, tap]
                for row in range(out_height):
                    target[row] += source[row] * weight
        for row in range(out_height):
            for col in range(out_width):
                out[channel, row, col] = columns[col, row]


@numba.njit(nogil=True, cache=True)
def finish_crop(image, top, left, out, finish):  # pragma: no cover - compiled
    """``image`` [C, H', W'] cropped to ``out``'s [C, H, W] from (``top``, ``left``) and
    finished as ``finish`` asks (:data:`.ops.RAW` copies): rows indexed from an offset, so
    the loops vectorize where a strided view of the crop would not."""
    channels, height = out.shape[0], out.shape[1]
    for channel in range(channels):
        for row in range(height):
            finish_row(image[channel, top + row], left, out[channel, row], finish)


@numba.njit(nogil=True, cache=True)
def _pad_share(images, rows, cols, left, out, first, step):  # pragma: no cover - compiled
    # out[..., r, c] = images[..., rows[r], cols[c]], row by row
    # (:func:`.common_kernels.padded_row`).
    for index in range(first, images.shape[0], step):
        for channel in range(images.shape[1]):
            for row in range(out.shape[2]):
                padded_row(images[index, channel, rows[row]], out[index, channel, row], left, cols)


def pad(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, left: int) -> torch.Tensor:
    """The compiled twin of :func:`.ops.pad` for CPU [B, C, H, W] tensors: ``rows`` / ``cols``
    are the padded positions' sources (:func:`.ops.border_index`), ``left`` the left pad."""
    source = images.contiguous()
    out = torch.empty(
        (*source.shape[:2], len(rows), len(cols)), dtype=source.dtype, device=source.device
    )
    run_kernel(
        _pad_share, len(source), source.numpy(), rows.numpy(), cols.numpy(), left, out.numpy()
    )
    return out


@numba.njit(nogil=True, cache=True)
def _resize_share(images, row_columns, row_weights, col_columns, col_weights, out, first, step):
    for index in range(first, images.shape[0], step):  # pragma: no cover - compiled
        resize_separable_image(
            images[index], row_columns, row_weights, col_columns, col_weights, out[index]
        )


@numba.njit(nogil=True, cache=True)
def _finish_share(corrupted, out, quantize, first, step):
    for index in range(first, corrupted.shape[0], step):  # pragma: no cover - compiled
        finish_image(corrupted[index], out[index], quantize)


def finish(corrupted: torch.Tensor, out: torch.Tensor, quantize: bool) -> None:
    """Clamp float32 ``corrupted`` [B, C, H, W] to [0, 1], quantize it like
    :func:`.ops.quantize_` if asked, and write it into ``out``: one pass instead of six."""
    # A crop (the FFT paths') is copied first: over arrays of unknown strides the loop does
    # not vectorize, and ran 3x slower than the copy and the contiguous pass together.
    run_kernel(_finish_share, len(corrupted), corrupted.contiguous().numpy(), out.numpy(), quantize)


def resize_separable(
    images: torch.Tensor,
    rows: tuple[torch.Tensor, torch.Tensor],
    cols: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """The compiled twin of two :func:`.ops.apply_sparse` calls (rows, then columns) for CPU
    float32 images [B, C, H, W]; ``rows`` and ``cols`` are (columns, weights) tap tables."""
    row_columns, row_weights = rows[0].numpy(), rows[1].float().numpy()
    col_columns, col_weights = cols[0].numpy(), cols[1].float().numpy()
    batch, channels = images.shape[:2]
    out = torch.empty(batch, channels, len(row_columns), len(col_columns))
    run_kernel(
        _resize_share,
        batch,
        images.contiguous().numpy(),
        row_columns,
        row_weights,
        col_columns,
        col_weights,
        out.numpy(),
    )
    return out


@numba.njit(inline="always")
def _add_four_taps(line, one, two, three, four, taps, tap):  # pragma: no cover - compiled
    # line += one * taps[tap] + ... + four * taps[tap + 3], added one after another in a
    # register: the same sums, in the same order, as four passes, with a quarter of the
    # loads and stores of the running sum.
    first, second, third, fourth = taps[tap], taps[tap + 1], taps[tap + 2], taps[tap + 3]
    for col in range(line.size):
        value = line[col] + one[col] * first
        value = value + two[col] * second
        value = value + three[col] * third
        line[col] = value + four[col] * fourth


@numba.njit(nogil=True, cache=True)
def separable_filter_plane(plane, taps, row_sources, col_sources, across, padded, out):
    # pragma: no cover - compiled
    # Along rows, then along columns, each output the sum of its taps in increasing order
    # (:func:`.ops.correlate1d`'s shifted adds), tap by tap over contiguous rows. The loops
    # index slices from 0 so numba drops its negative-index wraparound and they vectorize.
    # ``row_sources`` / ``col_sources`` map padded positions to image ones.
    height, width = plane.shape
    count = taps.shape[0]
    radius = count // 2
    for row in range(height):
        padded_row(plane[row], padded, radius, col_sources)
        line = across[row]
        weight = taps[0]
        for col in range(width):
            line[col] = padded[col] * weight
        tap = 1
        while tap + 4 <= count:
            _add_four_taps(
                line,
                padded[tap : tap + width],
                padded[tap + 1 : tap + 1 + width],
                padded[tap + 2 : tap + 2 + width],
                padded[tap + 3 : tap + 3 + width],
                taps,
                tap,
            )
            tap += 4
        for remaining in range(tap, count):
            weight = taps[remaining]
            window = padded[remaining : remaining + width]
            for col in range(width):
                line[col] += window[col] * weight
    for row in range(height):
        line = out[row]
        weight = taps[0]
        source = across[row_sources[row]]
        for col in range(width):
            line[col] = source[col] * weight
        tap = 1
        while tap + 4 <= count:
            _add_four_taps(
                line,
                across[row_sources[row + tap]],
                across[row_sources[row + tap + 1]],
                across[row_sources[row + tap + 2]],
                across[row_sources[row + tap + 3]],
                taps,
                tap,
            )
            tap += 4
        for remaining in range(tap, count):
            weight = taps[remaining]
            source = across[row_sources[row + remaining]]
            for col in range(width):
                line[col] += source[col] * weight


@numba.njit(nogil=True, cache=True)
def _separable_filter_share(planes, taps, row_sources, col_sources, finish, out, first, step):
    # pragma: no cover - compiled
    height, width = planes.shape[1], planes.shape[2]
    across = np.empty((height, width), planes.dtype)
    padded = np.empty(width + taps.shape[0] - 1, planes.dtype)
    scratch = np.empty((height, width), out.dtype)
    for index in range(first, planes.shape[0], step):
        target = image_target(scratch, out, index, finish)
        separable_filter_plane(
            planes[index], taps, row_sources, col_sources, across, padded, target
        )
        deliver_image(scratch, out, index, finish)


def separable_filter(
    images: torch.Tensor,
    taps: torch.Tensor,
    mode: str,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """The compiled twin of correlating the last axis, then the second-to-last, with the same
    odd-length ``taps`` (:func:`.ops.gaussian_filter`), for CPU float32 / float64 tensors
    [..., H, W]; borders in ``mode`` (scipy's names), any radius. One pass per axis with all
    taps, where the tensor version makes a full memory pass per tap. ``out`` and ``finish``
    (float32 only) as for the other kernels."""
    height, width = images.shape[-2:]
    radius = len(taps) // 2
    row_sources = border_index(torch.arange(-radius, height + radius), height, mode)
    col_sources = border_index(torch.arange(-radius, width + radius), width, mode)
    planes = images.reshape(-1, height, width).contiguous()
    if finish != RAW and images.dtype != torch.float32:
        raise ValueError("finishing in the filter needs float32 planes")
    result = torch.empty_like(planes) if out is None else out.view(-1, height, width)
    run_kernel(
        _separable_filter_share,
        len(planes),
        planes.numpy(),
        taps.to(images.dtype).numpy(),
        row_sources.numpy(),
        col_sources.numpy(),
        int(finish),
        result.numpy(),
    )
    return result.view(images.shape) if out is None else out


@numba.njit(nogil=True, cache=True)
def _motion_blur_share(images, shifts, weights, finish, out, first, step):
    # pragma: no cover - compiled
    # out(p) = sum_k weight_k * image(p - shift_k), indices clamped onto the image (edges
    # replicated), each pixel's taps added in order (taps of weight 0 skipped). Each plane is
    # first copied with its edge columns replicated as far as the taps reach, so every tap
    # reads one contiguous run of a row; a row's taps then go four at a time into a local
    # row (:func:`_add_four_taps`: the same sums in the same order, a quarter of the loads
    # and stores), where a pass per tap over the whole plane ran through the cache again and
    # again.
    channels, height, width = images.shape[1:]
    reach = 0
    for index in range(first, images.shape[0], step):
        for tap in range(shifts.shape[1]):
            reach = max(reach, abs(shifts[index, tap, 1]))
    padded = np.empty((height, width + 2 * reach), np.float32)
    edge_cols = np.empty(width + 2 * reach, np.int64)  # padded column -> clamped image column
    for col in range(edge_cols.shape[0]):
        edge_cols[col] = min(max(col - reach, 0), width - 1)
    scratch = np.empty(out.shape[1:], np.float32)
    line = np.empty(width, np.float32)
    tap_rows = np.empty(shifts.shape[1], np.int64)
    tap_starts = np.empty(shifts.shape[1], np.int64)
    tap_weights = np.empty(shifts.shape[1], np.float32)
    for index in range(first, images.shape[0], step):
        result = image_target(scratch, out, index, finish)
        count = 0
        for tap in range(shifts.shape[1]):
            weight = np.float32(weights[index, tap])
            if weight != 0:
                tap_rows[count] = shifts[index, tap, 0]
                tap_starts[count] = reach - shifts[index, tap, 1]
                tap_weights[count] = weight
                count += 1
        for channel in range(channels):
            plane = images[index, channel]
            for row in range(height):
                padded_row(plane[row], padded[row], reach, edge_cols)
            for row in range(height):
                line[:] = 0.0
                tap = 0
                while tap + 4 <= count:
                    one = padded[min(max(row - tap_rows[tap], 0), height - 1)]
                    two = padded[min(max(row - tap_rows[tap + 1], 0), height - 1)]
                    three = padded[min(max(row - tap_rows[tap + 2], 0), height - 1)]
                    four = padded[min(max(row - tap_rows[tap + 3], 0), height - 1)]
                    _add_four_taps(
                        line,
                        one[tap_starts[tap] : tap_starts[tap] + width],
                        two[tap_starts[tap + 1] : tap_starts[tap + 1] + width],
                        three[tap_starts[tap + 2] : tap_starts[tap + 2] + width],
                        four[tap_starts[tap + 3] : tap_starts[tap + 3] + width],
                        tap_weights,
                        tap,
                    )
                    tap += 4
                for remaining in range(tap, count):
                    weight = tap_weights[remaining]
                    source = padded[min(max(row - tap_rows[remaining], 0), height - 1)]
                    shifted = source[tap_starts[remaining] : tap_starts[remaining] + width]
                    for col in range(width):
                        line[col] += weight * shifted[col]
                target = result[channel, row]
                for col in range(width):
                    target[col] = line[col]
        deliver_image(scratch, out, index, finish)


def motion_blur(
    images: torch.Tensor,
    shifts: torch.Tensor,
    weights: torch.Tensor,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """The compiled twin of :func:`.ops.motion_blur`'s convolution for CPU float32 images
    [B, C, H, W]: per image, taps at ``shifts`` [B, K, (dy, dx)] with ``weights`` [B, K],
    edges replicated. Directly, tap by tap, where the tensor version pads and goes through
    the FFT."""
    return run_image_kernel(
        _motion_blur_share,
        images,
        shifts.contiguous().numpy(),
        weights.contiguous().double().numpy(),
        out=out,
        finish=finish,
    )
