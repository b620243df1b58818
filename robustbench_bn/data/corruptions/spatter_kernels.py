"""The compiled kernels of :mod:`.spatter`: Canny edges, the capped distance transform,
histogram equalization, the water branch image by image and mud's blend. Conventions in
:mod:`.common_kernels`."""

from __future__ import annotations

import numba
import numpy as np
import torch

from robustbench_bn.data.corruptions.common_kernels import (
    RAW,
    border_index,
    deliver_image,
    extremes,
    image_target,
    padded_row,
)
from robustbench_bn.data.corruptions.ops_kernels import separable_filter_plane
from robustbench_bn.data.corruptions.sampling import run_image_kernel, run_kernel


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
def _canny_share(planes, low, high, edges, first, step):
    for index in range(first, planes.shape[0], step):  # pragma: no cover - compiled
        _canny(planes[index, 0], low, high, edges[index, 0])


@numba.njit(nogil=True, cache=True)
def _distance_share(edges, cap, distance, first, step):
    for index in range(first, edges.shape[0], step):  # pragma: no cover - compiled
        _distance_to_edges(edges[index, 0], cap, distance[index, 0])


def canny(planes: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """The compiled twin of :func:`.spatter.canny` for CPU tensors: [B, 1, H, W] planes of
    uint8 levels (integers 0..255) to bool edges."""
    integers = planes.to(torch.int64).contiguous()
    edges = torch.zeros(planes.shape, dtype=torch.bool)
    run_kernel(_canny_share, len(edges), integers.numpy(), low, high, edges.numpy())
    return edges


def distance_to_edges(edges: torch.Tensor, cap: int) -> torch.Tensor:
    """The compiled twin of :func:`.spatter.distance_to_edges` for CPU tensors."""
    distance = torch.empty(edges.shape, dtype=torch.float64)
    run_kernel(_distance_share, len(edges), edges.contiguous().numpy(), cap, distance.numpy())
    return distance


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
        result = image_target(scratch, out, index, finish)
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
        separable_filter_plane(distance, box, row_sources, col_sources, across, padded, blurred)
        # cv2.blur, then astype(np.uint8); cv2.equalizeHist of that.
        for row in range(height):
            blurred_row = blurred[row]
            for col in range(width):
                blurred_row[col] = np.floor(blurred_row[col])
        _equalize_histogram(blurred, distance)
        # The equalized plane mirrored by one pixel, for the emboss below.
        for row in range(height + 2):
            padded_row(distance[row_sources[row]], mirrored[row], 1, col_sources)
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
        separable_filter_plane(blurred, box, row_sources, col_sources, across, padded, distance)
        for row in range(height):
            level_row, distance_row, glare_row = levels[row], distance[row], glare[row]
            for col in range(width):
                glare_row[col] = level_row[col] * np.rint(distance_row[col])
        peak = extremes(glare)[1]
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
        deliver_image(scratch, out, index, finish)


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
    return run_image_kernel(
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
        result = image_target(scratch, out, index, finish)
        for channel in range(channels):
            shade = colour[channel]
            for row in range(height):
                weights = mask[index, 0, row]
                source = images[index, channel, row]
                target = result[channel, row]
                for col in range(width):
                    weight = zero if weights[col] < floor else weights[col]
                    target[col] = source[col] * (one - weight) + shade * weight
        deliver_image(scratch, out, index, finish)


def mud_blend(
    images: torch.Tensor,
    mask: torch.Tensor,
    colour,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """The compiled twin of :func:`.spatter._mud`'s blend of CPU float32 images [B, 3, H, W]
    with their smoothed mud masks [B, 1, H, W] (float32) in ``colour`` (RGB in [0, 1])."""
    return run_image_kernel(
        _mud_share,
        images,
        mask.contiguous().numpy(),
        np.asarray(colour, dtype=np.float32),
        out=out,
        finish=finish,
    )
