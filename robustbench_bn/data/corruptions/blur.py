"""Blur corruptions of Hendrycks & Dietterich 2019: defocus, glass, motion, zoom, gaussian.

Algorithms as in hendrycks/robustness make_*_c.py (motion blur as re-implemented by the
imagecorruptions package, since the original calls ImageMagick); parameters in
:mod:`.parameters`. Functions take float images [B, 3, H, W] in [0, 1], the severity's
parameter, one generator per image and the family.
"""

from __future__ import annotations

import functools

import torch

from robustbench_bn.data.corruptions import blur_kernels, ops, sampling
from robustbench_bn.data.corruptions.sampling import Generators


def _disk_grid(radius: float, alias_blur: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's ``disk`` before its blur: the normalised disk x^2 + y^2 <= r^2 on the
    grid -8..8 (or -r..r when r > 8), and cv2.GaussianBlur's taps (3, or 5 when r > 8)."""
    if radius <= 8:
        half, blur_size = 8, 3
    else:
        half, blur_size = int(radius), 5
    offsets = torch.arange(-half, half + 1, dtype=torch.float64)
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")
    disk = ((x**2 + y**2) <= radius**2).double()
    disk /= disk.sum()
    return disk, ops.opencv_gaussian_taps(blur_size, float(alias_blur))


@ops.cached_per_device
def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The reference's ``disk``: a normalised disk x^2 + y^2 <= r^2 on the grid -8..8 (or
    -r..r when r > 8), anti-aliased by cv2.GaussianBlur (3x3, or 5x5 when r > 8), trimmed to
    its non-zero support."""
    disk, taps = _disk_grid(radius, alias_blur)
    size = disk.shape[0]
    blurred = ops.correlate1d(disk, taps, -1, "mirror")
    blurred = ops.correlate1d(blurred, taps, -2, "mirror")
    nonzero = blurred.abs() > 0
    rows = torch.nonzero(nonzero.any(1)).view(-1)
    cols = torch.nonzero(nonzero.any(0)).view(-1)
    # Keep the kernel centred: trim the same amount on both sides.
    trim = int(min(rows[0], size - 1 - rows[-1], cols[0], size - 1 - cols[-1]))
    return blurred[trim : size - trim, trim : size - trim].float()


@functools.cache
def disk_columns(
    radius: float, alias_blur: float
) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
    """:func:`disk_kernel` as a disk and a separable blur: each disk column's half height
    (rows -h..h, for columns -reach..reach) and the blur's taps; None where the reference's
    mirrored blur reaches the grid's edge, so its kernel is not the disk's plain blur."""
    disk, taps = _disk_grid(radius, alias_blur)
    half = disk.shape[0] // 2
    column_heights = (disk > 0).sum(0)  # each column of a disk is one centred run
    reach = int(torch.nonzero(column_heights).view(-1)[-1]) - half
    if reach + len(taps) // 2 > half:
        return None
    heights = tuple(int(count) // 2 for count in column_heights[half - reach : half + reach + 1])
    return heights, tuple(taps.tolist())


def defocus_blur(images: torch.Tensor, parameter, generators: Generators, family: str, **finishing):
    radius, alias_blur = parameter
    columns = disk_columns(float(radius), float(alias_blur))
    if columns is not None and images.device.type == "cpu" and images.dtype == torch.float32:
        heights, taps = columns
        return blur_kernels.disk_blur(images, heights, taps, **finishing)
    # cv2.filter2D's default border is BORDER_REFLECT_101.
    kernel = disk_kernel(float(radius), float(alias_blur))
    return ops.correlate2d(images, kernel, "mirror", **finishing)


def gaussian_blur(
    images: torch.Tensor, sigma: float, generators: Generators, family: str, **finishing
):
    # skimage.filters.gaussian: scipy's gaussian_filter, mode "nearest", truncate 4.
    return ops.gaussian_filter(images, sigma, mode="nearest", **finishing)


def glass_blur(images: torch.Tensor, parameter, generators: Generators, family: str, **finishing):
    """Gaussian blur, truncation to uint8, ``iterations`` sweeps of local pixel moves, blur.

    A sweep visits rows S-delta .. delta+1 and, within each, columns S-delta .. delta+1, both
    downwards, and copies pixel (h + dy, w + dx) into (h, w) with dx, dy drawn from
    [-delta, delta). (The reference's tuple "swap" of numpy views only copies.) A copy reads
    the source's final value when the sweep has already passed the source, else its value
    before the sweep. On the CPU a compiled loop runs the sweep as written
    (:func:`.blur_kernels.glass_sweeps`); elsewhere, following those links to their end (pointer
    doubling, log2(H*W) steps) gives the whole sweep at once, exactly as the loop would.
    """
    sigma, delta, iterations = parameter
    blurred = ops.gaussian_filter(images, sigma, mode="nearest")
    batch, channels, height, width = blurred.shape
    rows = torch.arange(delta + 1, height - delta + 1)
    cols = torch.arange(delta + 1, width - delta + 1)
    compiled = blurred.device.type == "cpu" and blurred.dtype == torch.float32 and delta < 64
    if compiled and len(rows) and len(cols):
        # Quantized and swept image by image in one compiled loop, drawing the shifts there:
        # the same numbers as the steps below.
        shuffled = blur_kernels.glass_sweeps_drawing(
            blurred, generators, delta, iterations, quantize=True
        )
        return ops.gaussian_filter(shuffled, sigma, mode="nearest", **finishing)
    pixels = ops.quantize(blurred)
    if len(rows) == 0 or len(cols) == 0:
        return ops.gaussian_filter(pixels, sigma, mode="nearest", **finishing)
    shifts = sampling.integers(generators, -delta, delta, (iterations, len(rows), len(cols), 2))
    shuffled = _glass_sweeps_by_pointer_doubling(pixels, shifts, delta)
    return ops.gaussian_filter(shuffled, sigma, mode="nearest", **finishing)


def _glass_sweeps_by_pointer_doubling(
    pixels: torch.Tensor, shifts: torch.Tensor, delta: int
) -> torch.Tensor:
    """The sweeps of :func:`glass_blur` in parallel tensor operations (any device)."""
    batch, channels, height, width = pixels.shape
    iterations = shifts.shape[1]
    rows = torch.arange(delta + 1, height - delta + 1)
    cols = torch.arange(delta + 1, width - delta + 1)
    grid_rows = rows.view(-1, 1).expand(len(rows), len(cols))
    grid_cols = cols.view(1, -1).expand(len(rows), len(cols))
    visited = grid_rows * width + grid_cols
    identity = torch.arange(height * width).expand(batch, -1)
    flat = pixels.reshape(batch, channels, height * width)
    for iteration in range(iterations):
        source_rows = grid_rows + shifts[:, iteration, ..., 1]
        source_cols = grid_cols + shifts[:, iteration, ..., 0]
        # The sweep has passed (r, c) before (h, w) iff r > h, or r == h and c > w; every
        # source lies inside the image, and a source inside the visited block has been moved.
        already_moved = (
            ((source_rows > grid_rows) | ((source_rows == grid_rows) & (source_cols > grid_cols)))
            & (source_rows <= rows[-1])
            & (source_cols <= cols[-1])
            & (source_cols >= cols[0])
        )
        pointer = identity.clone()
        pointer[:, visited.reshape(-1)] = (source_rows * width + source_cols).view(batch, -1)
        follow = torch.zeros(batch, height * width, dtype=torch.bool)
        follow[:, visited.reshape(-1)] = already_moved.view(batch, -1)
        while bool(follow.any()):
            next_pointer = pointer.gather(1, pointer)
            next_follow = follow.gather(1, pointer)
            pointer = torch.where(follow, next_pointer, pointer)
            follow = follow & next_follow
        flat = flat.gather(2, pointer.unsqueeze(1).expand(-1, channels, -1))
    return flat.view(batch, channels, height, width)


def motion_blur(images: torch.Tensor, parameter, generators: Generators, family: str, **finishing):
    radius, sigma = parameter
    angles = sampling.uniform(generators, (), -45, 45, dtype=torch.float64)
    return ops.motion_blur(images, int(radius), float(sigma), angles, **finishing)


def zoom_blur(images: torch.Tensor, factors, generators: Generators, family: str, **finishing):
    if images.device.type == "cpu" and images.dtype == torch.float32:
        height, width = images.shape[-2:]
        factors = tuple(float(factor) for factor in factors)
        tables = ops.clipped_zoom_tables(height, width, factors)
        return blur_kernels.zoom_blur(images, tables, **finishing)
    return ops.deliver(zoom_blur_by_tensor_operations(images, factors), **finishing)


def zoom_blur_by_tensor_operations(images: torch.Tensor, factors) -> torch.Tensor:
    """:func:`zoom_blur` with F.interpolate (any device)."""
    total = images.clone()
    for factor in factors:
        total += ops.clipped_zoom(images, factor)
    return total / (len(factors) + 1)
