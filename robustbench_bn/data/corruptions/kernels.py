"""CPU kernels compiled with numba for the kinds of step torch does slowly: a table walk per
pixel (shot noise's inverse-CDF lookup), a sequential sweep whose every step reads the previous
ones (glass blur's local pixel moves), the per-pixel neighbourhood logic of spatter's Canny
edges and capped distance transform, and chains of whole-tensor passes that one loop does with
the data in cache (separable filters, defocus blur's disk sums, motion and zoom blur, bilinear
resampling, fog's plasma fractal, the final clamp-and-quantize).

Each kernel handles one image and releases the GIL; a compiled loop per thread's share of the
batch runs it on the draw pool's threads. The torch implementations beside them (used on other
devices) compute the same numbers, bit for bit or within float32 rounding as each says;
tests/test_corruption_fast_paths.py checks that they agree. Inner loops index slices from 0,
which lets numba drop its negative-index wraparound and vectorize them. Compiled code is
cached on disk (numba's ``cache=True``), so only the first use on a machine pays the
compilation (a few seconds).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numba
import numpy as np
import torch

from robustbench_bn.data.corruptions import mersenne
from robustbench_bn.data.corruptions.ops import CLAMPED, QUANTIZED, RAW, border_index
from robustbench_bn.data.corruptions.sampling import run_in_shares


@numba.njit(nogil=True, cache=True)
def _shot_noise_block(pixels, uniforms, table, guide, photons, noisy, rows, keys, slices, counts):
    # pragma: no cover - compiled
    # float32 arithmetic where the torch path computes in float32, so both give the same bits.
    # Three passes over a block that stays in the cache: the levels, keys and guide slices
    # (which vectorize), the table walk (which cannot), the counts to values (vectorized);
    # 0.9 -> 0.6 ms per 224 px image here against one loop doing all three.
    width = table.shape[1]
    bins = guide.shape[1] - 1
    scale = np.float32(255.0)
    tolerance = np.float32(1e-6)
    count = pixels.shape[0]
    off_grid = False
    for index in range(count):
        value = pixels[index]
        level = np.rint(value * scale)
        off_grid |= abs(level / scale - value) > tolerance
        key = np.float64(level) + uniforms[index]
        rows[index] = np.int64(level)
        keys[index] = key
        slices[index] = np.int64((key - rows[index]) * bins)
    if off_grid:
        return False
    last = width - 1
    for index in range(count):
        row, key = rows[index], keys[index]
        found = guide[row, slices[index]]
        while found < width and table[row, found] <= key:
            found += 1
        counts[index] = min(found, last)
    for index in range(count):
        noisy[index] = np.float32(counts[index]) / photons
    return True


@numba.njit(nogil=True, cache=True)
def _shot_noise(pixels, uniforms, table, guide, photons, noisy):  # pragma: no cover - compiled
    # :func:`_shot_noise_block` block by block: False as soon as a pixel is off the grid.
    size = min(pixels.shape[0], mersenne.CHUNK)
    rows = np.empty(size, np.int64)
    keys = np.empty(size, np.float64)
    slices = np.empty(size, np.int64)
    counts = np.empty(size, np.int32)
    for start in range(0, pixels.shape[0], size):
        stop = min(start + size, pixels.shape[0])
        if not _shot_noise_block(
            pixels[start:stop],
            uniforms[start:stop],
            table,
            guide,
            photons,
            noisy[start:stop],
            rows,
            keys,
            slices,
            counts,
        ):
            return False
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
    # L1 magnitude (0 outside the image), OpenCV's fixed-point sectors and tie rules. Levels
    # 0..255 keep every product below 2^31 (|gradient| <= 1020), so int32 is exact; the
    # replicated border is copied once, so the rows are contiguous slices and the sector test
    # is a select, and both loops vectorize (0.15 against 0.25 ms per 224 px plane here).
    height, width = plane.shape
    padded = np.empty((height + 2, width + 2), np.int32)
    for row in range(height + 2):
        source = plane[min(max(row - 1, 0), height - 1)]
        target = padded[row]
        inner = target[1 : width + 1]
        for col in range(width):
            inner[col] = source[col]
        target[0] = source[0]
        target[width + 1] = source[width - 1]
    magnitude = np.zeros((height + 2, width + 2), np.int32)
    gradient_x = np.empty((height, width), np.int32)
    gradient_y = np.empty((height, width), np.int32)
    for row in range(height):
        above, here, below = padded[row], padded[row + 1], padded[row + 2]
        above_left, above_centre, above_right = above[:width], above[1 : width + 1], above[2:]
        left, right = here[:width], here[2:]
        below_left, below_centre, below_right = below[:width], below[1 : width + 1], below[2:]
        row_x, row_y = gradient_x[row], gradient_y[row]
        strength = magnitude[row + 1, 1 : width + 1]
        for col in range(width):
            across = (
                (above_right[col] - above_left[col])
                + 2 * (right[col] - left[col])
                + (below_right[col] - below_left[col])
            )
            down = (
                (below_left[col] - above_left[col])
                + 2 * (below_centre[col] - above_centre[col])
                + (below_right[col] - above_right[col])
            )
            row_x[col] = across
            row_y[col] = down
            strength[col] = abs(across) + abs(down)
    candidate = np.zeros((height, width), np.bool_)
    strong = np.zeros((height, width), np.bool_)
    for row in range(height):
        above, middle, below = magnitude[row], magnitude[row + 1], magnitude[row + 2]
        row_x, row_y = gradient_x[row], gradient_y[row]
        row_candidate, row_strong = candidate[row], strong[row]
        for col in range(width):
            here = middle[col + 1]
            abs_x = abs(row_x[col])
            scaled_y = abs(row_y[col]) << 15
            tan22_x = abs_x * 13573
            tan67_x = tan22_x + (abs_x << 16)
            same_sign = (row_x[col] ^ row_y[col]) >= 0
            diagonal_before = above[col] if same_sign else above[col + 2]
            diagonal_after = below[col + 2] if same_sign else below[col]
            horizontal = (here > middle[col]) & (here >= middle[col + 2])
            vertical = (here > above[col + 1]) & (here >= below[col + 1])
            diagonal = (here > diagonal_before) & (here > diagonal_after)
            if scaled_y < tan22_x:
                peak = horizontal
            elif scaled_y > tan67_x:
                peak = vertical
            else:
                peak = diagonal
            kept = peak & (here > low)
            row_candidate[col] = kept
            row_strong[col] = kept & (here > high)
    _hysteresis(candidate, strong, edges)


@numba.njit(nogil=True, cache=True, fastmath=True)
def _capped_column_minimum(squares, cap, out):  # pragma: no cover - compiled
    # out[row, col] = min over |k| <= cap of squares[row + k, col] + k^2. Every value is a
    # small integer in float32 and a minimum does not depend on order, so no fast-math
    # liberty can change a bit. The loops vectorize only with the flags on and the running
    # minimum in a local row that cannot alias the inputs: 0.19 against 0.40-0.45 ms per
    # 224 px plane here.
    height, width = squares.shape
    best = np.empty(width, np.float32)
    for row in range(height):
        here = squares[row]
        for col in range(width):
            best[col] = here[col]
        for offset in range(1, cap + 1):
            lift = np.float32(offset * offset)
            if row - offset >= 0:
                other = squares[row - offset]
                for col in range(width):
                    best[col] = min(best[col], other[col] + lift)
            if row + offset < height:
                other = squares[row + offset]
                for col in range(width):
                    best[col] = min(best[col], other[col] + lift)
        target = out[row]
        for col in range(width):
            target[col] = best[col]


@numba.njit(nogil=True, cache=True)
def _distance_to_edges(edges, cap, distance):  # pragma: no cover - compiled
    # min(cap, Euclidean distance to the nearest edge): the torch path's capped row distances,
    # then per pixel the minimum of along[row + k]^2 + k^2 over |k| <= cap. Sources further
    # away cannot win (a pixel's own capped value is at most cap^2), so this is the exact
    # capped minimum. Squares are small integers, exact in float32; row by row across the
    # columns, so the loops vectorize: faster here than the lower envelope of parabolas
    # (Felzenszwalb & Huttenlocher 2012), with the same result.
    height, width = edges.shape
    squares = np.empty((height, width), np.float32)
    along = np.empty(width, np.int64)
    for row in range(height):
        last = -(10**6)
        for col in range(width):
            if edges[row, col]:
                last = col
            along[col] = col - last
        last = width - 1 + 10**6
        line = squares[row]
        for col in range(width - 1, -1, -1):
            if edges[row, col]:
                last = col
            nearest = min(min(along[col], last - col), cap)
            line[col] = np.float32(nearest * nearest)
    best = np.empty((height, width), np.float32)
    _capped_column_minimum(squares, cap, best)
    for row in range(height):
        target, line = distance[row], best[row]
        for col in range(width):
            target[col] = np.sqrt(np.float64(line[col]))


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


@numba.njit(nogil=True, cache=True)
def _resize_separable(image, row_columns, row_weights, col_columns, col_weights, out):
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


@numba.njit(inline="always")
def _clamped_level(value):  # pragma: no cover - compiled
    # The engine's clamp_(0, 1) and quantize_ up to the level (mul 255, add 1e-4, floor,
    # clamp 255) in float32, in the same order: the same bits as the torch steps.
    value = np.float32(0.0) if value < 0 else (np.float32(1.0) if value > 1 else value)
    return min(np.floor(value * np.float32(255.0) + np.float32(1e-4)), np.float32(255.0))


@numba.njit(inline="always")
def _finish_row(source, start, target, finish):  # pragma: no cover - compiled
    # target[col] = source[start + col] clamped, and quantized (the level divided by 255), or
    # copied (RAW); the flag outside the loops and the offset index (no strided view), so
    # each loop vectorizes.
    low, high = np.float32(0.0), np.float32(1.0)
    if finish == RAW:
        for col in range(target.shape[0]):
            target[col] = source[start + col]
    elif finish == QUANTIZED:
        for col in range(target.shape[0]):
            target[col] = _clamped_level(source[start + col]) / np.float32(255.0)
    else:
        for col in range(target.shape[0]):
            value = source[start + col]
            target[col] = low if value < low else (high if value > high else value)


@numba.njit(nogil=True, cache=True)
def _finish(corrupted, out, quantize):  # pragma: no cover - compiled
    # Clamp, and quantize, fused into one pass writing the result, row by row (a crop's rows
    # are contiguous where the whole is not: no copy).
    finish = QUANTIZED if quantize else CLAMPED
    channels, height = corrupted.shape[0], corrupted.shape[1]
    for channel in range(channels):
        for row in range(height):
            _finish_row(corrupted[channel, row], 0, out[channel, row], finish)


@numba.njit(inline="always")
def _image_target(scratch, out, index, finish):  # pragma: no cover - compiled
    # Where a share computes image ``index``: straight into the result when it is left as
    # computed, else into a per-thread scratch image that :func:`_deliver` then finishes
    # into the result while it is in the cache (in place, the loop did not vectorize: 8x
    # slower).
    return out[index] if finish == RAW else scratch


@numba.njit(inline="always")
def _deliver(scratch, out, index, finish):  # pragma: no cover - compiled
    # Image ``index`` finished from the scratch into the result, both contiguous, of any shape
    # (a 3-D image, a 2-D plane, a flat row), as one run of values.
    if finish != RAW:
        _finish_row(scratch.ravel(), 0, out[index].ravel(), finish)


@numba.njit(nogil=True, cache=True)
def finish_crop(image, top, left, out, finish):  # pragma: no cover - compiled
    """``image`` [C, H', W'] cropped to ``out``'s [C, H, W] from (``top``, ``left``) and
    finished as ``finish`` asks (:data:`.ops.RAW` copies): rows indexed from an offset, so
    the loops vectorize where a strided view of the crop would not."""
    channels, height = out.shape[0], out.shape[1]
    for channel in range(channels):
        for row in range(height):
            _finish_row(image[channel, top + row], left, out[channel, row], finish)


@numba.njit(inline="always")
def _padded_row(source, target, left, cols):  # pragma: no cover - compiled
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


@numba.njit(nogil=True, cache=True)
def _pad_share(images, rows, cols, left, out, first, step):  # pragma: no cover - compiled
    # out[..., r, c] = images[..., rows[r], cols[c]], row by row (:func:`_padded_row`).
    for index in range(first, images.shape[0], step):
        for channel in range(images.shape[1]):
            for row in range(out.shape[2]):
                _padded_row(images[index, channel, rows[row]], out[index, channel, row], left, cols)


def pad(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, left: int) -> torch.Tensor:
    """The compiled twin of :func:`.ops.pad` for CPU [B, C, H, W] tensors: ``rows`` / ``cols``
    are the padded positions' sources (:func:`.ops.border_index`), ``left`` the left pad."""
    source = images.contiguous()
    out = torch.empty(
        (*source.shape[:2], len(rows), len(cols)), dtype=source.dtype, device=source.device
    )
    _in_shares(
        _pad_share, len(source), source.numpy(), rows.numpy(), cols.numpy(), left, out.numpy()
    )
    return out


@numba.njit(nogil=True, cache=True)
def interleaved_levels(image, out):  # pragma: no cover - compiled
    """:func:`.ops.to_uint8` of one float32 RGB image [3, H, W] written interleaved into
    C-contiguous uint8 ``out`` [H, W, 3], for an encoder that reads interleaved pixels."""
    # Flat indices with the channel stride spelled out let LLVM vectorize the interleaving
    # stores: 2.6x faster here than row by row over 3-D indices.
    red, green, blue = image[0].ravel(), image[1].ravel(), image[2].ravel()
    pixels = out.ravel()
    for index in range(red.shape[0]):
        pixels[3 * index] = np.uint8(_clamped_level(red[index]))
        pixels[3 * index + 1] = np.uint8(_clamped_level(green[index]))
        pixels[3 * index + 2] = np.uint8(_clamped_level(blue[index]))


@numba.njit(nogil=True, cache=True)
def planes_from_levels(levels, out):  # pragma: no cover - compiled
    """Interleaved uint8 RGB ``levels`` [H, W, 3] (a decoder's output) as float32 level / 255,
    the bits of ``torch.div(levels, 255)``, written into C-contiguous ``out`` [3, H, W]."""
    pixels = levels.ravel()
    red, green, blue = out[0].ravel(), out[1].ravel(), out[2].ravel()
    scale = np.float32(255.0)
    for index in range(red.shape[0]):
        red[index] = np.float32(pixels[3 * index]) / scale
        green[index] = np.float32(pixels[3 * index + 1]) / scale
        blue[index] = np.float32(pixels[3 * index + 2]) / scale


# One compiled loop per thread's share of a batch (images first, first + step, ...), so the
# Python call overhead is per thread, not per image.


@numba.njit(nogil=True, cache=True)
def _shot_noise_share(pixels, uniforms, table, guide, photons, noisy, on_grid, first, step):
    for index in range(first, pixels.shape[0], step):  # pragma: no cover - compiled
        on_grid[index] = _shot_noise(
            pixels[index], uniforms[index], table, guide, photons, noisy[index]
        )


@numba.njit(nogil=True, cache=True)
def _glass_sweeps_share(pixels, shifts, delta, first, step):
    for index in range(first, pixels.shape[0], step):  # pragma: no cover - compiled
        _glass_sweeps(pixels[index], shifts[index], delta)


@numba.njit(nogil=True, cache=True)
def _canny_share(planes, low, high, edges, first, step):
    for index in range(first, planes.shape[0], step):  # pragma: no cover - compiled
        _canny(planes[index, 0], low, high, edges[index, 0])


@numba.njit(nogil=True, cache=True)
def _distance_share(edges, cap, distance, first, step):
    for index in range(first, edges.shape[0], step):  # pragma: no cover - compiled
        _distance_to_edges(edges[index, 0], cap, distance[index, 0])


@numba.njit(nogil=True, cache=True)
def _resize_share(images, row_columns, row_weights, col_columns, col_weights, out, first, step):
    for index in range(first, images.shape[0], step):  # pragma: no cover - compiled
        _resize_separable(
            images[index], row_columns, row_weights, col_columns, col_weights, out[index]
        )


@numba.njit(nogil=True, cache=True)
def _finish_share(corrupted, out, quantize, first, step):
    for index in range(first, corrupted.shape[0], step):  # pragma: no cover - compiled
        _finish(corrupted[index], out[index], quantize)


@contextlib.contextmanager
def _generator_states(generators) -> Iterator[np.ndarray]:
    """The generators' states as one uint8 array [B, 5056] for compiled loops that draw from
    them (:mod:`.mersenne`); on leaving, each generator takes back its advanced state."""
    stacked = torch.stack([generator.get_state() for generator in generators])
    mersenne.check_state_layout(stacked[0].numpy())
    yield stacked.numpy()
    for generator, state in zip(generators, stacked, strict=True):
        generator.set_state(state.clone())


def _in_shares(kernel: Callable[..., None], count: int, *arguments) -> None:
    run_in_shares(count, lambda first, step: kernel(*arguments, first, step))


def _images_from(
    kernel: Callable[..., None],
    images: torch.Tensor,
    *arguments,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """Run a per-image kernel ``kernel(images, *arguments, finish, out, first, step)`` over
    the thread shares and return ``out`` (float32 of the images' shape; allocated when not
    given), each image finished as ``finish`` asks (:data:`.ops.RAW` and the others)."""
    if out is None:
        out = torch.empty(images.shape, dtype=torch.float32)
    _in_shares(
        kernel, len(images), images.contiguous().numpy(), *arguments, int(finish), out.numpy()
    )
    return out


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
    _in_shares(
        _shot_noise_share,
        batch,
        pixels.numpy(),
        flat_uniforms.numpy(),
        table.numpy(),
        guide.numpy(),
        np.float32(photons),
        noisy.numpy(),
        on_grid.numpy(),
    )
    return noisy.view_as(images), on_grid


@numba.njit(nogil=True, cache=True)
def _shot_noise_drawing_share(
    pixels, states, table, guide, photons, on_grid, finish, noisy, first, step
):  # pragma: no cover - compiled
    # :func:`_shot_noise` with each image's float64 uniforms drawn chunk by chunk from its
    # generator's state (the numbers ``sampling.uniform`` would return) instead of read from
    # a batch of them: no pass through memory. An image off the grid still consumes all its
    # uniforms, as the batch draw did, before its torch.poisson fallback (whose result the
    # caller finishes: an image off the grid is left unset).
    count = pixels.shape[1]
    buffer = np.empty(2 * mersenne.CHUNK, np.uint32)
    uniforms = np.empty(mersenne.CHUNK, np.float64)
    scratch = np.empty(count, np.float32)
    rows = np.empty(mersenne.CHUNK, np.int64)
    keys = np.empty(mersenne.CHUNK, np.float64)
    slices = np.empty(mersenne.CHUNK, np.int64)
    counts = np.empty(mersenne.CHUNK, np.int32)
    for index in range(first, pixels.shape[0], step):
        target = _image_target(scratch, noisy, index, finish)
        words, position = mersenne.open_state(states[index])
        grid = True
        for start in range(0, count, mersenne.CHUNK):
            stop = min(start + mersenne.CHUNK, count)
            chunk = uniforms[: stop - start]
            mersenne.float64_uniforms(words, position, buffer, chunk)
            if grid:
                grid = _shot_noise_block(
                    pixels[index, start:stop],
                    chunk,
                    table,
                    guide,
                    photons,
                    target[start:stop],
                    rows,
                    keys,
                    slices,
                    counts,
                )
        mersenne.close_state(states[index], words, position)
        on_grid[index] = grid
        if grid:
            _deliver(scratch, noisy, index, finish)


def shot_noise_drawing(
    images: torch.Tensor,
    generators,
    table: torch.Tensor,
    guide: torch.Tensor,
    photons: float,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`shot_noise` drawing each image's float64 uniforms (shape of the image) from its
    generator inside the compiled loop, then advancing the generators as the draw would.
    The images on the grid are finished as ``finish`` asks into ``out`` (when given)."""
    batch = images.shape[0]
    pixels = images.reshape(batch, -1).contiguous()
    noisy = torch.empty_like(pixels) if out is None else out.view(batch, -1)
    on_grid = torch.zeros(batch, dtype=torch.bool)
    with _generator_states(generators) as states:
        _in_shares(
            _shot_noise_drawing_share,
            batch,
            pixels.numpy(),
            states,
            table.numpy(),
            guide.numpy(),
            np.float32(photons),
            on_grid.numpy(),
            int(finish),
            noisy.numpy(),
        )
    return (noisy.view_as(images) if out is None else out), on_grid


def finish(corrupted: torch.Tensor, out: torch.Tensor, quantize: bool) -> None:
    """Clamp float32 ``corrupted`` [B, C, H, W] to [0, 1], quantize it like
    :func:`.ops.quantize_` if asked, and write it into ``out``: one pass instead of six."""
    # A crop (the FFT paths') is copied first: over arrays of unknown strides the loop does
    # not vectorize, and ran 3x slower than the copy and the contiguous pass together.
    _in_shares(_finish_share, len(corrupted), corrupted.contiguous().numpy(), out.numpy(), quantize)


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
    _in_shares(
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


def canny(planes: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """The compiled twin of :func:`.spatter.canny` for CPU tensors: [B, 1, H, W] planes of
    uint8 levels (integers 0..255) to bool edges."""
    integers = planes.to(torch.int64).contiguous()
    edges = torch.zeros(planes.shape, dtype=torch.bool)
    _in_shares(_canny_share, len(edges), integers.numpy(), low, high, edges.numpy())
    return edges


def distance_to_edges(edges: torch.Tensor, cap: int) -> torch.Tensor:
    """The compiled twin of :func:`.spatter.distance_to_edges` for CPU tensors."""
    distance = torch.empty(edges.shape, dtype=torch.float64)
    _in_shares(_distance_share, len(edges), edges.contiguous().numpy(), cap, distance.numpy())
    return distance


@numba.njit(nogil=True, cache=True)
def _glass_sweeps_drawing_share(sources, states, delta, iterations, quantize, moved, first, step):
    # pragma: no cover - compiled
    # :func:`_glass_sweeps` drawing each iteration's shifts (rows x cols x (dx, dy) in
    # [-delta, delta), the numbers ``sampling.integers`` would return) from the image's
    # generator into a small int8 buffer that stays in the cache. Each image is first copied
    # (or clamped and quantized, :func:`_finish`) into ``moved`` by the same thread, so the
    # sweeps find it in the cache.
    channels, height, width = sources.shape[1:]
    rows, cols = height - 2 * delta, width - 2 * delta
    shifts = np.empty((1, rows, cols, 2), np.int8)
    flat = shifts.ravel()
    buffer = np.empty(mersenne.CHUNK, np.uint32)
    for index in range(first, sources.shape[0], step):
        if quantize:
            _finish(sources[index], moved[index], True)
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
    ``quantize``, ``pixels`` (float32) are first clamped and quantized as :func:`finish` does,
    in the same loop."""
    sources = pixels.contiguous()
    moved = torch.empty_like(sources)
    with _generator_states(generators) as states:
        _in_shares(
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


@numba.njit(nogil=True, cache=True)
def _normal_noise_share(images, states, scale, speckle, finish, out, first, step):
    # pragma: no cover - compiled
    # :func:`.noise.gaussian_noise` (x + n * scale) or :func:`.noise.speckle_noise`
    # (x + x * n * scale) with the image's float32 normals drawn into a buffer that stays in
    # the cache, in float32 like the tensor steps.
    noise = np.empty(images[0].size, np.float32)
    scratch = np.empty(out.shape[1:], np.float32)
    for index in range(first, images.shape[0], step):
        words, position = mersenne.open_state(states[index])
        mersenne.normal_fill_float32(words, position, noise)
        mersenne.close_state(states[index], words, position)
        pixels = images[index].ravel()
        target = _image_target(scratch, out, index, finish).ravel()
        if speckle:
            for position in range(pixels.shape[0]):
                target[position] = pixels[position] + pixels[position] * noise[position] * scale
        else:
            for position in range(pixels.shape[0]):
                target[position] = pixels[position] + noise[position] * scale
        _deliver(scratch, out, index, finish)


def normal_noise(
    images: torch.Tensor,
    generators,
    scale: float,
    speckle: bool,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """Gaussian (or, with ``speckle``, speckle) noise on CPU float32 images [B, C, H, W] of 16
    or more numbers each, drawing the normals ``sampling.normal`` would return inside the
    compiled loop and advancing the generators as that draw would."""
    with _generator_states(generators) as states:
        return _images_from(
            _normal_noise_share,
            images,
            states,
            np.float32(scale),
            speckle,
            out=out,
            finish=finish,
        )


def glass_sweeps(pixels: torch.Tensor, shifts: torch.Tensor, delta: int) -> torch.Tensor:
    """The compiled twin of glass blur's sweeps (see :func:`.blur.glass_blur`) for CPU
    tensors: pixels [B, C, H, W] (moved in place on a copy), shifts [B, iterations, rows,
    cols, (dx, dy)]."""
    moved = pixels.contiguous().clone()
    shifts = shifts.contiguous()
    _in_shares(_glass_sweeps_share, len(moved), moved.numpy(), shifts.numpy(), delta)
    return moved


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
def _separable_filter(plane, taps, row_sources, col_sources, across, padded, out):
    # pragma: no cover - compiled
    # Along rows, then along columns, each output the sum of its taps in increasing order
    # (:func:`.ops.correlate1d`'s shifted adds), tap by tap over contiguous rows. The loops
    # index slices from 0 so numba drops its negative-index wraparound and they vectorize.
    # ``row_sources`` / ``col_sources`` map padded positions to image ones.
    height, width = plane.shape
    count = taps.shape[0]
    radius = count // 2
    for row in range(height):
        _padded_row(plane[row], padded, radius, col_sources)
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
        target = _image_target(scratch, out, index, finish)
        _separable_filter(planes[index], taps, row_sources, col_sources, across, padded, target)
        _deliver(scratch, out, index, finish)


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
    _in_shares(
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
        result = _image_target(scratch, out, index, finish)
        for channel in range(channels):
            plane = images[index, channel]
            for row in range(padded.shape[0]):
                _padded_row(plane[row_sources[row]], padded[row], pad, col_sources)
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
        _deliver(scratch, out, index, finish)


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
    return _images_from(
        _disk_blur_share,
        images,
        border_index(torch.arange(-pad, height + pad), height, "mirror").numpy(),
        border_index(torch.arange(-pad, width + pad), width, "mirror").numpy(),
        np.asarray(heights, dtype=np.int64),
        np.asarray(taps, dtype=np.float64),
        out=out,
        finish=finish,
    )


@numba.njit(nogil=True, cache=True, fastmath=True)
def _extremes(plane):  # pragma: no cover - compiled
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
    lowest, peak = _extremes(grid)
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
        target = _image_target(scratch, out, index, finish)
        image = images[index]
        peak = _extremes(image.reshape(channels * height, width))[1]
        divisor = peak + amount
        for row in range(height):
            source = plasma[index, row]
            for col in range(width):
                fog[col] = amount * np.float32(source[col])
            for channel in range(channels):
                pixels, line = image[channel, row], target[channel, row]
                for col in range(width):
                    line[col] = (pixels[col] + fog[col]) * peak / divisor
        _deliver(scratch, out, index, finish)


def plasma_fractal(draws: torch.Tensor, size: int, wibble_decay: float) -> torch.Tensor:
    """The compiled twin of :func:`.weather.plasma_fractal` from its uniform draws
    [B, size^2 - 1] (float64): [B, size, size] float64, the same bits."""
    grids = torch.empty((len(draws), size, size), dtype=torch.float64)
    _in_shares(
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
    return _images_from(
        _fog_share, images, plasma.numpy(), np.float32(amount), out=out, finish=finish
    )


@numba.njit(inline="always")
def _reflected(coordinate, low, span, size):  # pragma: no cover - compiled
    # torch.grid_sample's padding_mode="reflection": reflect about [low, low + span] (edge
    # pixel centres, or their outer edges), then clip onto the pixel centres [0, size - 1].
    if 0.0 <= coordinate <= size - 1.0:
        return coordinate  # inside: neither reflected nor clipped
    if span <= 0:
        return 0.0
    distance = abs(coordinate - low)
    flips = np.floor(distance / span)
    extra = distance - flips * span
    if flips % 2 == 0:
        coordinate = low + extra
    else:
        coordinate = low + span - extra
    return min(max(coordinate, 0.0), size - 1.0)


@numba.njit(inline="always")
def _bilinear_row(image, out, row, source_rows, source_cols, offsets, steps, stay):
    # pragma: no cover - compiled
    # One output row, every channel, from source positions already inside the pixel
    # centres: per column once, the flat offset of the top-left tap, the steps to its right
    # and lower neighbours and the weights (``source_rows`` / ``source_cols`` become the
    # fractions); then per channel only the gather (a tap past the last pixel has weight 0 and
    # reads the last pixel instead). The same arithmetic as indexing the taps per channel
    # (0.87 -> 0.76 ms per 224 px image for elastic transform's two resamplings here).
    channels, height, width = image.shape
    right_steps, below_steps = steps[0], steps[1]
    for col in range(out.shape[2]):
        top, left = np.int64(source_rows[col]), np.int64(source_cols[col])
        offsets[col] = top * width + left
        right_steps[col] = np.int64(left + 1 < width)
        below_steps[col] = np.int64(top + 1 < height) * width
        source_rows[col] -= top
        source_cols[col] -= left
        stay[col] = 1 - source_cols[col]
    planes = image.reshape(channels, height * width)
    for channel in range(channels):
        plane = planes[channel]
        target = out[channel, row]
        for col in range(out.shape[2]):
            start, right, below = offsets[col], steps[0, col], steps[1, col]
            down, across, keep = source_rows[col], source_cols[col], stay[col]
            target[col] = np.float32(
                (1 - down) * (keep * plane[start] + across * plane[start + right])
                + down * (keep * plane[start + below] + across * plane[start + below + right])
            )


@numba.njit(nogil=True, cache=True)
def _elastic_share(images, inverse, fields, alpha, finish, out, first, step):
    # pragma: no cover - compiled
    # Per image: the affine warp sampled at every pixel (align_corners: reflection about the
    # edge pixels' centres), then the warped image sampled at pixel + alpha * field
    # (reflection about the outer edges), both bilinear as torch.grid_sample.
    channels, height, width = images.shape[1:]
    warped = np.empty((channels, height, width), np.float32)
    scratch = np.empty((channels, height, width), np.float32)
    source_rows = np.empty(width, np.float64)
    source_cols = np.empty(width, np.float64)
    offsets = np.empty(width, np.int64)
    steps = np.empty((2, width), np.int64)
    stay = np.empty(width, np.float64)
    for index in range(first, images.shape[0], step):
        matrix = inverse[index]
        image = images[index]
        result = _image_target(scratch, out, index, finish)
        target = warped if alpha != 0 else result
        for row in range(height):
            # Positions first, in a loop that vectorizes; the reflection only for a row
            # with a position outside the pixel centres (it leaves the others as they are).
            inside = True
            for col in range(width):
                x = matrix[0, 0] * col + matrix[0, 1] * row + matrix[0, 2]
                y = matrix[1, 0] * col + matrix[1, 1] * row + matrix[1, 2]
                source_rows[col] = y
                source_cols[col] = x
                inside &= (y >= 0.0) & (y <= height - 1.0) & (x >= 0.0) & (x <= width - 1.0)
            if not inside:
                for col in range(width):
                    source_rows[col] = _reflected(source_rows[col], 0.0, height - 1.0, height)
                    source_cols[col] = _reflected(source_cols[col], 0.0, width - 1.0, width)
            _bilinear_row(image, target, row, source_rows, source_cols, offsets, steps, stay)
        if alpha != 0:
            for row in range(height):
                inside = True
                down, across = fields[index, 1, row], fields[index, 0, row]
                for col in range(width):
                    y = row + np.float64(np.float32(down[col] * alpha))
                    x = col + np.float64(np.float32(across[col] * alpha))
                    source_rows[col] = y
                    source_cols[col] = x
                    inside &= (y >= 0.0) & (y <= height - 1.0) & (x >= 0.0) & (x <= width - 1.0)
                if not inside:
                    for col in range(width):
                        source_rows[col] = _reflected(source_rows[col], -0.5, float(height), height)
                        source_cols[col] = _reflected(source_cols[col], -0.5, float(width), width)
                _bilinear_row(warped, result, row, source_rows, source_cols, offsets, steps, stay)
        _deliver(scratch, out, index, finish)


def elastic_resample(
    images: torch.Tensor,
    inverse: torch.Tensor,
    fields: torch.Tensor | None,
    alpha: float,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """The compiled twin of :func:`.digital.elastic_transform`'s two bilinear resamplings
    for CPU float32 images [B, C, H, W]: ``inverse`` [B, 3, 3] maps output pixels (x, y, 1)
    to affine-warp sources, ``fields`` [B, 2 (dx, dy), H, W] are the displacements
    before scaling by ``alpha`` (None when alpha is 0)."""
    if fields is None:
        fields = torch.zeros((len(images), 2, 1, 1), dtype=torch.float32)
        alpha = 0.0
    return _images_from(
        _elastic_share,
        images,
        inverse[:, :2].contiguous().double().numpy(),
        fields.contiguous().numpy(),
        float(alpha),
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
        result = _image_target(scratch, out, index, finish)
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
        _deliver(scratch, out, index, finish)


def zoom_blur(
    images: torch.Tensor, tables, out: torch.Tensor | None = None, finish: int = RAW
) -> torch.Tensor:
    """The compiled twin of :func:`.blur.zoom_blur` for CPU float32 images [B, C, H, W]:
    ``tables`` from :func:`.ops.clipped_zoom_tables` for every factor."""
    rows, row_weights, cols, col_weights = tables
    return _images_from(
        _zoom_blur_share,
        images,
        rows.numpy(),
        row_weights.numpy(),
        cols.contiguous().numpy(),
        col_weights.numpy(),
        out=out,
        finish=finish,
    )


@numba.njit(nogil=True, cache=True)
def _impulse_share(images, draws, amount, finish, out, first, step):
    # pragma: no cover - compiled
    # :func:`.noise.impulse_noise`'s selection: replaced where the first draw < amount, by
    # salt (1) where the second < 0.5, else pepper (0).
    scratch = np.empty(out.shape[1:], np.float32)
    for index in range(first, images.shape[0], step):
        pixels = images[index].ravel()
        replace = draws[index, 0].ravel()
        salt = draws[index, 1].ravel()
        target = _image_target(scratch, out, index, finish).ravel()
        for position in range(pixels.shape[0]):
            if replace[position] < amount:
                target[position] = np.float32(1.0) if salt[position] < 0.5 else np.float32(0.0)
            else:
                target[position] = pixels[position]
        _deliver(scratch, out, index, finish)


def impulse_noise(
    images: torch.Tensor,
    draws: torch.Tensor,
    amount: float,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """The compiled twin of :func:`.noise.impulse_noise`'s selection for CPU float32 images
    [B, C, H, W] and their uniform draws [B, 2, C, H, W]."""
    return _images_from(
        _impulse_share,
        images,
        draws.contiguous().numpy(),
        np.float32(amount),
        out=out,
        finish=finish,
    )


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
        result = _image_target(scratch, out, index, finish)
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
                _padded_row(plane[row], padded[row], reach, edge_cols)
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
        _deliver(scratch, out, index, finish)


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
    return _images_from(
        _motion_blur_share,
        images,
        shifts.contiguous().numpy(),
        weights.contiguous().double().numpy(),
        out=out,
        finish=finish,
    )


@numba.njit(nogil=True, cache=True, inline="always")
def _rgb_planes(images, index):  # pragma: no cover - compiled
    return images[index, 0].ravel(), images[index, 1].ravel(), images[index, 2].ravel()


@numba.njit(nogil=True, cache=True)
def _brightness_share(images, shift, finish, out, first, step):  # pragma: no cover - compiled
    # :func:`.digital.brightness` in float32, operation for operation.
    tiny = np.float32(1e-12)
    scratch = np.empty(out.shape[1:], np.float32)
    for index in range(first, images.shape[0], step):
        red, green, blue = _rgb_planes(images, index)
        result = _image_target(scratch, out, index, finish)
        out_red, out_green, out_blue = result[0].ravel(), result[1].ravel(), result[2].ravel()
        for position in range(red.shape[0]):
            r, g, b = red[position], green[position], blue[position]
            value = max(max(r, g), b)
            new_value = min(max(value + shift, np.float32(0.0)), np.float32(1.0))
            ratio = new_value / max(value, tiny)
            positive = value > 0
            out_red[position] = r * ratio if positive else new_value
            out_green[position] = g * ratio if positive else new_value
            out_blue[position] = b * ratio if positive else new_value
        _deliver(scratch, out, index, finish)


def brightness(
    images: torch.Tensor, shift: float, out: torch.Tensor | None = None, finish: int = RAW
) -> torch.Tensor:
    """The compiled twin of :func:`.digital.brightness` for CPU float32 images [B, 3, H, W]."""
    return _images_from(_brightness_share, images, np.float32(shift), out=out, finish=finish)


@numba.njit(nogil=True, cache=True)
def _saturate_share(images, scale, offset, finish, out, first, step):
    # pragma: no cover - compiled
    # :func:`.digital.saturate` in float32, operation for operation.
    tiny, zero, one = np.float32(1e-12), np.float32(0.0), np.float32(1.0)
    scratch = np.empty(out.shape[1:], np.float32)
    for index in range(first, images.shape[0], step):
        red, green, blue = _rgb_planes(images, index)
        result = _image_target(scratch, out, index, finish)
        out_red, out_green, out_blue = result[0].ravel(), result[1].ravel(), result[2].ravel()
        for position in range(red.shape[0]):
            r, g, b = red[position], green[position], blue[position]
            value = max(max(r, g), b)
            spread = value - min(min(r, g), b)
            saturation = spread / max(value, tiny) if value > 0 else zero
            new_saturation = min(max(saturation * scale + offset, zero), one)
            ratio = new_saturation / max(saturation, tiny)
            if spread > 0:
                out_red[position] = value - (value - r) * ratio
                out_green[position] = value - (value - g) * ratio
                out_blue[position] = value - (value - b) * ratio
            else:
                grey = value * (one - new_saturation)
                out_red[position] = value
                out_green[position] = grey
                out_blue[position] = grey
        _deliver(scratch, out, index, finish)


def saturate(
    images: torch.Tensor,
    scale: float,
    offset: float,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """The compiled twin of :func:`.digital.saturate` for CPU float32 images [B, 3, H, W]."""
    return _images_from(
        _saturate_share, images, np.float32(scale), np.float32(offset), out=out, finish=finish
    )


@numba.njit(nogil=True, cache=True)
def _contrast_share(images, means, factor, finish, out, first, step):
    # pragma: no cover - compiled
    # (x - mean) * factor + mean per channel, as :func:`.digital.contrast` computes it.
    scratch = np.empty(out.shape[1:], np.float32)
    for index in range(first, images.shape[0], step):
        result = _image_target(scratch, out, index, finish)
        for channel in range(images.shape[1]):
            pixels = images[index, channel].ravel()
            target = result[channel].ravel()
            mean = means[index, channel]
            for position in range(pixels.shape[0]):
                target[position] = (pixels[position] - mean) * factor + mean
        _deliver(scratch, out, index, finish)


def contrast(
    images: torch.Tensor,
    means: torch.Tensor,
    factor: float,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """The compiled twin of :func:`.digital.contrast` given the per-channel means [B, 3]."""
    return _images_from(
        _contrast_share,
        images,
        means.reshape(len(images), -1).contiguous().numpy(),
        np.float32(factor),
        out=out,
        finish=finish,
    )


@numba.njit(nogil=True, cache=True)
def _pixelate_share(
    images,
    row_columns,
    row_weights,
    col_columns,
    col_weights,
    up_rows,
    up_cols,
    finish,
    out,
    first,
    step,
):  # pragma: no cover - compiled
    # The BOX reduction of :func:`_resize_separable`, then the enlargement as the selection it
    # is (one source pixel per output pixel, weight 1: the same bits).
    channels = images.shape[1]
    small = np.empty((channels, row_columns.shape[0], col_columns.shape[0]), np.float32)
    scratch = np.empty(out.shape[1:], np.float32)
    for index in range(first, images.shape[0], step):
        _resize_separable(images[index], row_columns, row_weights, col_columns, col_weights, small)
        result = _image_target(scratch, out, index, finish)
        for channel in range(channels):
            for row in range(out.shape[2]):
                target = result[channel, row]
                if row > 0 and up_rows[row] == up_rows[row - 1]:
                    # The same small row as the row above: a contiguous copy, which
                    # vectorizes where the column selection does not.
                    above = result[channel, row - 1]
                    for col in range(out.shape[3]):
                        target[col] = above[col]
                    continue
                source = small[channel, up_rows[row]]
                for col in range(out.shape[3]):
                    target[col] = source[up_cols[col]]
        _deliver(scratch, out, index, finish)


def pixelate(
    images: torch.Tensor,
    rows: tuple[torch.Tensor, torch.Tensor],
    cols: tuple[torch.Tensor, torch.Tensor],
    up_rows: torch.Tensor,
    up_cols: torch.Tensor,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """The compiled twin of :func:`.digital.pixelate`'s two resizes for CPU float32 images:
    ``rows`` and ``cols`` are the reduction's (columns, weights) tap tables, ``up_rows`` and
    ``up_cols`` the small image's row and column each output pixel reads when enlarging."""
    return _images_from(
        _pixelate_share,
        images,
        rows[0].numpy(),
        rows[1].float().numpy(),
        cols[0].numpy(),
        cols[1].float().numpy(),
        up_rows.contiguous().numpy(),
        up_cols.contiguous().numpy(),
        out=out,
        finish=finish,
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
                    target[col] = _clamped_level(value) / scale


def zeroed_levels(planes: torch.Tensor, threshold: float) -> torch.Tensor:
    """CPU float32 [B, C, H, W] (any strides) with the values below ``threshold`` zeroed, then
    truncated onto the uint8 grid (:func:`.ops.quantize`): a new contiguous tensor."""
    out = torch.empty(planes.shape, dtype=torch.float32)
    _in_shares(_zeroed_levels_share, len(planes), planes.numpy(), float(threshold), out.numpy())
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
        result = _image_target(scratch, out, index, finish)
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
        _deliver(scratch, out, index, finish)


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
    return _images_from(
        _snow_blend_share,
        images,
        layer.contiguous().numpy(),
        np.float32(image_weight),
        np.float32(1 - image_weight),
        out=out,
        finish=finish,
    )


@numba.njit(nogil=True, cache=True)
def _equalize_histogram(values, out):  # pragma: no cover - compiled
    # :func:`.spatter.equalize_histogram` (cv2.equalizeHist) of one plane of integer values
    # 0..255, the lookup table in float32 like the torch steps.
    histogram = np.zeros(256, np.int64)
    flat = values.ravel()
    for position in range(flat.shape[0]):
        histogram[np.int64(flat[position])] += 1
    total = flat.shape[0]
    first = 0
    while histogram[first] == 0:
        first += 1
    first_count = histogram[first]
    scale = np.float32(255.0) / np.float32(max(total - first_count, 1))
    table = np.empty(256, np.float64)
    running = 0
    below_first = 0
    for level in range(256):
        running += histogram[level]
        if level == first:
            below_first = running
    running = 0
    for level in range(256):
        running += histogram[level]
        if first_count == total:
            table[level] = first
        elif level <= first:
            table[level] = 0.0
        else:
            value = np.rint(np.float32(running - below_first) * scale)
            table[level] = min(max(value, np.float32(0.0)), np.float32(255.0))
    target = out.ravel()
    for position in range(flat.shape[0]):
        target[position] = table[np.int64(flat[position])]


@numba.njit(nogil=True, cache=True)
def _water_share(
    images,
    liquid,
    threshold,
    strength,
    colour,
    box,
    row_sources,
    col_sources,
    cap,
    finish,
    out,
    first,
    step,
):
    # pragma: no cover - compiled
    # :func:`.spatter._water` image by image: the same steps on one float64 plane, the filters
    # through the compiled kernels the torch path runs on the CPU, the rest in the same
    # operations and order (the emboss sums are small integers, exact in any order). Loops
    # run over contiguous rows into row buffers of their own, so they vectorize.
    height, width = liquid.shape[2], liquid.shape[3]
    levels = np.empty((height, width), np.float64)
    integers = np.empty((height, width), np.int64)
    edges = np.zeros((height, width), np.bool_)
    distance = np.empty((height, width), np.float64)
    blurred = np.empty((height, width), np.float64)
    across = np.empty((height, width), np.float64)
    padded = np.empty(width + 2, np.float64)
    mirrored = np.empty((height + 2, width + 2), np.float64)
    glare = np.empty((height, width), np.float64)
    line = np.empty(width, np.float64)
    scratch = np.empty(out.shape[1:], np.float32)
    for index in range(first, images.shape[0], step):
        result = _image_target(scratch, out, index, finish)
        plane = liquid[index, 0]
        for row in range(height):
            source, level_row, integer_row = plane[row], levels[row], integers[row]
            for col in range(width):
                value = source[col]
                value = 0.0 if value < threshold else value  # the liquid below the threshold
                value = 0.0 if value < 0.0 else (1.0 if value > 1.0 else value)
                level = np.floor(value * 255.0)
                level_row[col] = level
                integer_row[col] = np.int64(level)
        edges[:, :] = False
        _canny(integers, 50, 150, edges)
        _distance_to_edges(edges, cap + 1, distance)
        ceiling = np.float64(cap)
        for row in range(height):
            distance_row = distance[row]
            for col in range(width):
                value = distance_row[col]
                distance_row[col] = value if value < ceiling else ceiling
        _separable_filter(distance, box, row_sources, col_sources, across, padded, blurred)
        # cv2.blur, then astype(np.uint8); cv2.equalizeHist of that.
        for row in range(height):
            blurred_row = blurred[row]
            for col in range(width):
                blurred_row[col] = np.floor(blurred_row[col])
        _equalize_histogram(blurred, distance)
        # The equalized plane mirrored by one pixel, for the emboss below.
        for row in range(height + 2):
            _padded_row(distance[row_sources[row]], mirrored[row], 1, col_sources)
        # cv2.filter2D with the emboss kernel [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], borders
        # mirrored, rounded and saturated to uint8.
        for row in range(height):
            above, here, below = mirrored[row], mirrored[row + 1], mirrored[row + 2]
            above_left, above_centre = above[:width], above[1 : width + 1]
            left, centre, right = here[:width], here[1 : width + 1], here[2:]
            below_centre, below_right = below[1 : width + 1], below[2:]
            target = blurred[row]
            for col in range(width):
                total = (
                    -2.0 * above_left[col]
                    - above_centre[col]
                    - left[col]
                    + centre[col]
                    + right[col]
                    + below_centre[col]
                    + 2.0 * below_right[col]
                )
                total = np.rint(total)
                target[col] = 0.0 if total < 0.0 else (255.0 if total > 255.0 else total)
        _separable_filter(blurred, box, row_sources, col_sources, across, padded, distance)
        for row in range(height):
            level_row, distance_row, glare_row = levels[row], distance[row], glare[row]
            for col in range(width):
                glare_row[col] = level_row[col] * np.rint(distance_row[col])
        peak = _extremes(glare)[1]
        for row in range(height):
            glare_row = glare[row]
            if peak > 0:
                divisor = max(peak, 1e-12)
                for col in range(width):
                    line[col] = glare_row[col] / divisor
            else:
                line[:] = 0.0
            for channel in range(3):
                weight = colour[channel]
                source = images[index, channel, row]
                target = result[channel, row]
                for col in range(width):
                    target[col] = source[col] + np.float32(line[col] * strength * weight)
        _deliver(scratch, out, index, finish)


def water(
    images: torch.Tensor,
    liquid: torch.Tensor,
    strength: float,
    colour,
    cap: int,
    out: torch.Tensor | None = None,
    finish: int = RAW,
    threshold: float = -np.inf,
) -> torch.Tensor:
    """The compiled twin of :func:`.spatter._water` for CPU float32 images [B, 3, H, W] and
    their float64 liquid layers [B, 1, H, W]; distances capped at ``cap``. Liquid below
    ``threshold`` counts as none (the zeroing :func:`.spatter.spatter` does first)."""
    height, width = liquid.shape[-2:]
    return _images_from(
        _water_share,
        images,
        liquid.contiguous().numpy(),
        float(threshold),
        float(strength),
        np.asarray(colour, dtype=np.float64),
        np.full(3, 1 / 3, dtype=np.float64),
        border_index(torch.arange(-1, height + 1), height, "mirror").numpy(),
        border_index(torch.arange(-1, width + 1), width, "mirror").numpy(),
        int(cap),
        out=out,
        finish=finish,
    )


@numba.njit(nogil=True, cache=True)
def _mud_share(images, mask, colour, finish, out, first, step):  # pragma: no cover - compiled
    # :func:`.spatter._mud`'s blend in float32 as the tensor steps compute it: the mask
    # zeroed below 0.8, then x * (1 - mask) + colour * mask.
    channels, height, width = images.shape[1:]
    scratch = np.empty(out.shape[1:], np.float32)
    zero, one, floor = np.float32(0.0), np.float32(1.0), np.float32(0.8)
    for index in range(first, images.shape[0], step):
        result = _image_target(scratch, out, index, finish)
        for channel in range(channels):
            shade = colour[channel]
            for row in range(height):
                weights = mask[index, 0, row]
                source = images[index, channel, row]
                target = result[channel, row]
                for col in range(width):
                    weight = zero if weights[col] < floor else weights[col]
                    target[col] = source[col] * (one - weight) + shade * weight
        _deliver(scratch, out, index, finish)


def mud_blend(
    images: torch.Tensor,
    mask: torch.Tensor,
    colour,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """The compiled twin of :func:`.spatter._mud`'s blend of CPU float32 images [B, 3, H, W]
    with their smoothed mud masks [B, 1, H, W] (float32) in ``colour`` (RGB in [0, 1])."""
    return _images_from(
        _mud_share,
        images,
        mask.contiguous().numpy(),
        np.asarray(colour, dtype=np.float32),
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
        result = _image_target(scratch, out, index, finish)
        choice, top, left = corners[index, 0], corners[index, 1], corners[index, 2]
        for channel in range(channels):
            for row in range(height):
                source = images[index, channel, row]
                crop = photographs[choice, channel, top + row, left : left + width]
                target = result[channel, row]
                for col in range(width):
                    target[col] = keep * source[col] + frost * crop[col]
        _deliver(scratch, out, index, finish)


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
    return _images_from(
        _frost_share,
        images,
        photographs.contiguous().numpy(),
        corners.contiguous().numpy(),
        np.float32(image_weight),
        np.float32(frost_weight),
        out=out,
        finish=finish,
    )


@numba.njit(nogil=True, cache=True)
def _impulse_drawing_share(images, states, amount, finish, out, first, step):
    # pragma: no cover - compiled
    # :func:`_impulse_share` with the image's two blocks of float32 uniforms (which pixels,
    # then salt or pepper) drawn from its generator: the first block into a buffer that stays
    # in the cache, the second chunk by chunk as it is used.
    count = images[0].size
    replace = np.empty(count, np.float32)
    salt = np.empty(mersenne.CHUNK, np.float32)
    buffer = np.empty(mersenne.CHUNK, np.uint32)
    scratch = np.empty(out.shape[1:], np.float32)
    for index in range(first, images.shape[0], step):
        words, position = mersenne.open_state(states[index])
        for start in range(0, count, mersenne.CHUNK):
            mersenne.float32_uniforms(
                words, position, buffer, replace[start : start + mersenne.CHUNK]
            )
        pixels = images[index].ravel()
        target = _image_target(scratch, out, index, finish).ravel()
        for start in range(0, count, mersenne.CHUNK):
            stop = min(start + mersenne.CHUNK, count)
            chunk = salt[: stop - start]
            mersenne.float32_uniforms(words, position, buffer, chunk)
            for offset in range(stop - start):
                spot = start + offset
                if replace[spot] < amount:
                    target[spot] = np.float32(1.0) if chunk[offset] < 0.5 else np.float32(0.0)
                else:
                    target[spot] = pixels[spot]
        mersenne.close_state(states[index], words, position)
        _deliver(scratch, out, index, finish)


def impulse_noise_drawing(
    images: torch.Tensor,
    generators,
    amount: float,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """:func:`impulse_noise` drawing each image's uniforms [2, C, H, W] (the numbers
    ``sampling.uniform`` would return) inside the compiled loop, then advancing the
    generators as that draw would."""
    with _generator_states(generators) as states:
        return _images_from(
            _impulse_drawing_share, images, states, np.float32(amount), out=out, finish=finish
        )
