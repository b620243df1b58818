"""What the engine's compiled kernels share: how a result is finished (the ``finish=`` flags
and the row loops that apply them), padded rows, a plane's extremes, and the border positions
of scipy's modes. It imports nothing of the engine, so any module of it may import this one.

The kernels (``*_kernels.py``, each beside the torch steps it serves) are CPU code compiled
with numba for the kinds of step torch does slowly: a table walk per pixel, a sequential sweep
whose every step reads the previous ones, per-pixel neighbourhood logic, and chains of
whole-tensor passes that one loop does with the data in the cache. Each kernel handles one
image and releases the GIL; a compiled loop per thread's share of the batch (images first,
first + step, ...) runs it on the draw pool's threads (:func:`.sampling.run_kernel`), so the
Python call overhead is per thread, not per image. The torch steps beside them (used on other
devices) compute the same numbers, bit for bit or within float32 rounding as each says;
tests/test_corruption_fast_paths.py checks that they agree. Inner loops index slices from 0,
which lets numba drop its negative-index wraparound and vectorize them. Compiled code is
cached on disk (numba's ``cache=True``), so only the first use on a machine pays the
compilation (a few seconds). numba does not notice when a function that a cached kernel calls
changes in another file: after editing this module, clear the ``__pycache__`` folders' ``*.nbi``
and ``*.nbc`` files (or point ``NUMBA_CACHE_DIR`` at an empty folder).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

#: How a corruption leaves its result (``finish=``): as computed, clamped to [0, 1], or clamped
#: and quantized (:func:`.ops.quantize`). The engine asks for one of the last two; the compiled
#: kernels apply it to each image while it is still in the cache, which saved a full pass over
#: the batch (about 0.04 of 0.5 ms per 224 px image for elastic transform's resampling).
RAW, CLAMPED, QUANTIZED = 0, 1, 2

#: Border modes by their scipy.ndimage names. OpenCV's BORDER_REFLECT_101 is "mirror",
#: BORDER_REPLICATE is "nearest".
BORDER_MODES = ("nearest", "reflect", "mirror")


def border_index(positions: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Map integer positions (any, also far outside) onto [0, size) like scipy's ``mode``."""
    if mode == "nearest":
        return positions.clamp(0, size - 1)
    if mode == "reflect":  # d c b a | a b c d | d c b a
        period = positions.remainder(2 * size)
        return torch.where(period >= size, 2 * size - 1 - period, period)
    if mode == "mirror":  # d c b | a b c d | c b a
        if size == 1:
            return torch.zeros_like(positions)
        period = positions.remainder(2 * size - 2)
        return torch.where(period >= size, 2 * size - 2 - period, period)
    raise ValueError(f"Unknown border mode {mode!r}; expected one of {BORDER_MODES}.")


@numba.njit(inline="always")
def clamped_level(value):  # pragma: no cover - compiled
    # The engine's clamp_(0, 1) and quantize_ up to the level (mul 255, add 1e-4, floor,
    # clamp 255) in float32, in the same order: the same bits as the torch steps.
    value = np.float32(0.0) if value < 0 else (np.float32(1.0) if value > 1 else value)
    return min(np.floor(value * np.float32(255.0) + np.float32(1e-4)), np.float32(255.0))


@numba.njit(inline="always")
def finish_row(source, start, target, finish):  # pragma: no cover - compiled
    # target[col] = source[start + col] clamped, and quantized (the level divided by 255), or
    # copied (RAW); the flag outside the loops and the offset index (no strided view), so
    # each loop vectorizes.
    low, high = np.float32(0.0), np.float32(1.0)
    if finish == RAW:
        for col in range(target.shape[0]):
            target[col] = source[start + col]
    elif finish == QUANTIZED:
        for col in range(target.shape[0]):
            target[col] = clamped_level(source[start + col]) / np.float32(255.0)
    else:
        for col in range(target.shape[0]):
            value = source[start + col]
            target[col] = low if value < low else (high if value > high else value)


@numba.njit(nogil=True, cache=True)
def finish_image(corrupted, out, quantize):  # pragma: no cover - compiled
    # Clamp, and quantize, fused into one pass writing the result, row by row (a crop's rows
    # are contiguous where the whole is not: no copy).
    finish = QUANTIZED if quantize else CLAMPED
    channels, height = corrupted.shape[0], corrupted.shape[1]
    for channel in range(channels):
        for row in range(height):
            finish_row(corrupted[channel, row], 0, out[channel, row], finish)


@numba.njit(inline="always")
def image_target(scratch, out, index, finish):  # pragma: no cover - compiled
    # Where a share computes image ``index``: straight into the result when it is left as
    # computed, else into a per-thread scratch image that :func:`deliver_image` then finishes
    # into the result while it is in the cache (in place, the loop did not vectorize: 8x
    # slower).
    return out[index] if finish == RAW else scratch


@numba.njit(inline="always")
def deliver_image(scratch, out, index, finish):  # pragma: no cover - compiled
    # Image ``index`` finished from the scratch into the result, both contiguous, of any shape
    # (a 3-D image, a 2-D plane, a flat row), as one run of values.
    if finish != RAW:
        finish_row(scratch.ravel(), 0, out[index].ravel(), finish)


@numba.njit(inline="always")
def padded_row(source, target, left, cols):  # pragma: no cover - compiled
    # target[c] = source[cols[c]] for a row padded by ``left`` columns before it: inside the
    # row a padded column is its own source, so the interior is a contiguous (vectorized)
    # copy and only the border columns are gathered.
    width = source.shape[0]
    for col in range(left):
        target[col] = source[cols[col]]
    inner = target[left : left + width]
    for col in range(width):
        inner[col] = source[col]
    for col in range(left + width, target.shape[0]):
        target[col] = source[cols[col]]


@numba.njit(nogil=True, cache=True, fastmath=True)
def extremes(plane):  # pragma: no cover - compiled
    # The smallest and largest values of a plane of finite values, in its dtype: neither
    # depends on order, so the fast-math flags (which let the loop vectorize) cannot change
    # them.
    lowest = plane[0, 0]
    peak = plane[0, 0]
    for row in range(plane.shape[0]):
        line = plane[row]
        for col in range(line.shape[0]):
            lowest = min(lowest, line[col])
            peak = max(peak, line[col])
    return lowest, peak
