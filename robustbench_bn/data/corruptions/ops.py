"""Batched image operations the corruptions share: filters with the reference's border modes,
convolution with one kernel per image, zooms, PIL's BOX resampling, colour conversions.

All operate on [..., H, W] float tensors (any leading batch and channel dimensions) and were
written to reproduce the library calls of the reference implementations (scipy.ndimage,
OpenCV, PIL) that Hendrycks & Dietterich 2019 used; each docstring names the call it mirrors.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F

from robustbench_bn.data.corruptions import ops_kernels, sampling

# The finishing flags and border modes are defined beside the kernels that share them; the
# corruptions use them as ops.RAW, ops.border_index, ...
from robustbench_bn.data.corruptions.common_kernels import (  # noqa: F401
    BORDER_MODES,
    CLAMPED,
    QUANTIZED,
    RAW,
    border_index,
)

Result = TypeVar("Result")

#: A 1-D kernel is applied by shifted adds while taps * this < the axis length, otherwise as a
#: dense [N, N] matrix product: matrix products run near peak speed, so they win unless the
#: kernel is much shorter than the axis (measured on CPU at 32 and 224 px).
_MATRIX_SPEEDUP = 8
#: The compiled separable filter (:func:`separable_correlate` on the CPU) against the matrix
#: product, at 224 px here (ms per image, compiled vs matrix): 33 taps 0.49 vs 1.16, 49 taps
#: 0.66 vs 1.11, 119 taps 1.41 vs 1.02; so from 128 px on it takes kernels up to a third of
#: the axis. Smaller images keep the tensor rule above (both are cheap there), so 32 and 64 px
#: results stay as they were.
_COMPILED_FILTER_SPEEDUP = 3
_COMPILED_FILTER_FROM_SIZE = 128

#: 2-D kernels with more taps than this are applied through the FFT, smaller ones by shifted
#: adds (torch's CPU conv2d is slower than either for single-channel planes).
_LARGEST_DIRECT_KERNEL = 25


def cached_per_device(function: Callable[..., Result]) -> Callable[..., Result]:
    """``functools.cache`` for the engine's constant tables (kernels, resize matrices, frost
    photographs), kept once per working device.

    The table is always computed on the CPU, so every device gets the same numbers, then moved
    to the device the engine works on (:func:`torch.get_default_device`).
    """

    @functools.cache
    def on_device(device: str, *arguments):
        # A table argument (a matrix from another cached table) is already on the device.
        arguments = tuple(
            argument.cpu() if isinstance(argument, torch.Tensor) else argument
            for argument in arguments
        )
        with torch.device("cpu"):
            result = function(*arguments)
        if isinstance(result, tuple):
            return tuple(item.to(device) for item in result)
        return result.to(device)

    @functools.wraps(function)
    def wrapper(*arguments):
        return on_device(str(torch.get_default_device()), *arguments)

    return wrapper


@functools.cache
def fast_fft_size(size: int) -> int:
    """The smallest length >= ``size`` with no prime factor above 7.

    FFT time depends on the factors of the length: at 224 px a defocus blur pads to 236 (4 x
    59), whose transform took 2.7x as long here as that of 240 = 2^4 x 3 x 5.
    """
    candidate = size
    while True:
        remainder = candidate
        for prime in (2, 3, 5, 7):
            while remainder % prime == 0:
                remainder //= prime
        if remainder == 1:
            return candidate
        candidate += 1


def _pad_axis(images: torch.Tensor, before: int, after: int, axis: int, mode: str):
    """Pad one axis by less than its length with slices and one concatenation (copies only,
    so the same values as :func:`border_index`, several times faster than a gather)."""
    if before == 0 and after == 0:
        return images
    size = images.shape[axis]
    if mode not in BORDER_MODES:
        raise ValueError(f"Unknown border mode {mode!r}; expected one of {BORDER_MODES}.")
    parts = []
    if before:
        if mode == "nearest":
            parts.append(images.narrow(axis, 0, 1).expand_as(images.narrow(axis, 0, before)))
        else:
            start = 1 if mode == "mirror" else 0
            parts.append(images.narrow(axis, start, before).flip(axis))
    parts.append(images)
    if after:
        if mode == "nearest":
            parts.append(images.narrow(axis, size - 1, 1).expand_as(images.narrow(axis, 0, after)))
        else:
            end = size - 1 if mode == "mirror" else size
            parts.append(images.narrow(axis, end - after, after).flip(axis))
    return torch.cat(parts, axis)


_COMPILED_PAD_TYPES = (torch.float32, torch.float64)


def pad(images: torch.Tensor, top: int, bottom: int, left: int, right: int, mode: str):
    """Pad the last two axes by any amount (also more than the image size) in ``mode``."""
    height, width = images.shape[-2:]
    if images.device.type == "cpu" and images.dim() == 4 and images.dtype in _COMPILED_PAD_TYPES:
        rows = border_index(torch.arange(-top, height + bottom), height, mode)
        cols = border_index(torch.arange(-left, width + right), width, mode)
        return ops_kernels.pad(images, rows, cols, left)
    # "mirror" reads one pixel further in than the others: it needs pad < size - 1.
    if max(top, bottom) < height - 1 and max(left, right) < width - 1:
        return _pad_axis(_pad_axis(images, left, right, -1, mode), top, bottom, -2, mode)
    rows = border_index(torch.arange(-top, height + bottom), height, mode)
    cols = border_index(torch.arange(-left, width + right), width, mode)
    return images.index_select(-2, rows.to(images.device)).index_select(-1, cols.to(images.device))


@cached_per_device
def gaussian_taps(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter1d's kernel: radius int(truncate*sigma + 0.5), float64."""
    radius = int(truncate * float(sigma) + 0.5)
    if sigma <= 0 or radius == 0:
        return torch.ones(1, dtype=torch.float64)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


@cached_per_device
def opencv_gaussian_taps(size: int, sigma: float) -> torch.Tensor:
    """cv2.getGaussianKernel(size, sigma) for sigma > 0, float64."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-(offsets**2) / (2 * sigma**2))
    return taps / taps.sum()


@cached_per_device
def _filter_matrix(size: int, taps: tuple[float, ...], mode: str) -> torch.Tensor:
    """[size, size] matrix M with (M @ signal)[i] = sum_t taps[t] * signal[border(i + t - r)]."""
    radius = len(taps) // 2
    outputs = torch.arange(size).view(-1, 1)
    offsets = torch.arange(len(taps)).view(1, -1) - radius
    sources = border_index(outputs + offsets, size, mode)
    weights = torch.tensor(taps, dtype=torch.float64).expand(size, -1)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    matrix.scatter_add_(1, sources, weights)
    return matrix.float()


def correlate1d(images: torch.Tensor, taps: torch.Tensor, axis: int, mode: str) -> torch.Tensor:
    """Correlate the last (axis=-1) or second-to-last (axis=-2) axis with ``taps``, borders in
    ``mode`` (scipy.ndimage.correlate1d)."""
    weights = taps.tolist()
    if len(weights) == 1:
        return images * weights[0]
    size = images.shape[axis]
    radius = len(weights) // 2
    if len(weights) * _MATRIX_SPEEDUP >= size or radius >= size:
        matrix = _filter_matrix(size, tuple(weights), mode).to(images)
        if axis == -1:
            return images @ matrix.T
        return matrix @ images
    if axis == -1:
        padded = pad(images, 0, 0, radius, radius, mode)
    else:
        padded = pad(images, radius, radius, 0, 0, mode)
    filtered = padded.narrow(axis, 0, size) * weights[0]
    for tap in range(1, len(weights)):
        filtered.add_(padded.narrow(axis, tap, size), alpha=weights[tap])
    return filtered


def gaussian_filter(
    images: torch.Tensor,
    sigma: float,
    mode: str = "nearest",
    truncate: float = 4.0,
    *,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter over the last two axes (skimage.filters.gaussian's core);
    the result finished as ``finish`` asks into ``out`` (:func:`deliver`)."""
    taps = gaussian_taps(float(sigma), float(truncate))
    return separable_correlate(images, taps, mode, out=out, finish=finish)


def _compiled_filter_speedup(size: int) -> int:
    return _COMPILED_FILTER_SPEEDUP if size >= _COMPILED_FILTER_FROM_SIZE else _MATRIX_SPEEDUP


def separable_correlate(
    images: torch.Tensor,
    taps: torch.Tensor,
    mode: str,
    *,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """Correlate the last axis, then the second-to-last, with the same odd-length ``taps``,
    borders in ``mode``: compiled on the CPU where the shifted adds would make a memory
    pass per tap. The result is finished as ``finish`` asks into ``out`` (:func:`deliver`)."""
    if (
        images.device.type == "cpu"
        and images.dtype in (torch.float32, torch.float64)
        and len(taps) > 1
        and len(taps) * _compiled_filter_speedup(min(images.shape[-2:])) < min(images.shape[-2:])
    ):
        # Where the tensor version would make a memory pass per tap: both axes compiled
        # (finishing inside the kernel needs float32 planes).
        if finish == RAW or images.dtype == torch.float32:
            return ops_kernels.separable_filter(images, taps, mode, out=out, finish=finish)
        return deliver(ops_kernels.separable_filter(images, taps, mode), out, finish)
    return deliver(correlate1d(correlate1d(images, taps, -1, mode), taps, -2, mode), out, finish)


def correlate2d(
    images: torch.Tensor,
    kernel: torch.Tensor,
    mode: str,
    *,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """cv2.filter2D: correlate every [H, W] plane with one odd-sized 2-D kernel (anchor at
    its centre), borders in ``mode``. Large kernels go through the FFT. The result is
    finished as ``finish`` asks into ``out`` (:func:`deliver`)."""
    kernel_height, kernel_width = kernel.shape
    top, left = kernel_height // 2, kernel_width // 2
    if kernel.numel() > _LARGEST_DIRECT_KERNEL:
        # Extra border below and to the right, up to a fast FFT length: circular wrap-around
        # reaches at most ``top`` / ``left`` pixels into the border, so the crop is unchanged.
        bottom = fast_fft_size(images.shape[-2] + 2 * top) - images.shape[-2] - top
        right = fast_fft_size(images.shape[-1] + 2 * left) - images.shape[-1] - left
        padded = pad(images, top, bottom, left, right, mode)
        # Convolution with the flipped kernel is correlation with the kernel.
        flipped = kernel.flip(0, 1)
        offsets = torch.stack(
            torch.meshgrid(
                torch.arange(kernel_height) - top, torch.arange(kernel_width) - left, indexing="ij"
            ),
            -1,
        ).view(-1, 2)
        circular = _circular_kernel(
            flipped.reshape(1, -1), offsets.expand(1, -1, -1), padded.shape[-2:]
        )
        if padded.device.type == "cpu" and padded.dim() == 4 and padded.dtype == torch.float32:
            return _fft_convolve_per_image(
                padded, circular[0], top, left, images.shape[-2:], out, finish
            )
        filtered = fft_convolve(
            padded, circular.view(*((1,) * (padded.dim() - 2)), *circular.shape[-2:])
        )
        filtered = filtered[..., top : top + images.shape[-2], left : left + images.shape[-1]]
        return deliver(filtered, out, finish)
    padded = pad(images, top, top, left, left, mode)
    height, width = images.shape[-2:]
    filtered = torch.zeros_like(images)
    for row in range(kernel_height):
        for col in range(kernel_width):
            weight = float(kernel[row, col])
            if weight != 0:
                filtered.add_(padded[..., row : row + height, col : col + width], alpha=weight)
    return deliver(filtered, out, finish)


def _fft_convolve_per_image(
    padded: torch.Tensor,
    kernel: torch.Tensor,
    top: int,
    left: int,
    size: torch.Size,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """:func:`fft_convolve` of CPU float32 images [B, C, H', W'] with one circular kernel
    [H', W'], image by image on the draw pool's threads, cropped to ``size`` from (``top``,
    ``left``) and finished as ``finish`` asks into ``out`` while in the cache.

    scipy's FFT runs without the GIL and without OpenMP, so the two threads each transform
    their own images. With torch's batched FFT, split over OpenMP's threads, defocus blur took
    1.8 ms per image at 224 px here against 1.5 this way (both on whole batches). The rounding
    differs from torch's: 0.002-0.016% of defocus blur's pixels at 224 px land one uint8 step
    apart.
    """
    import scipy.fft

    shape = tuple(padded.shape[-2:])
    height, width = size
    sources = padded.numpy()
    spectrum = scipy.fft.rfft2(kernel.to(padded.dtype).numpy())
    filtered = torch.empty((*padded.shape[:2], height, width), dtype=padded.dtype)
    if out is not None:
        filtered = out
    targets = filtered.numpy()

    def one_image(index: int) -> None:
        image = scipy.fft.irfft2(scipy.fft.rfft2(sources[index]) * spectrum, s=shape)
        ops_kernels.finish_crop(image, top, left, targets[index], finish)

    sampling.run_per_image(len(sources), one_image)
    return filtered


def _circular_kernel(
    weights: torch.Tensor, offsets: torch.Tensor, shape: torch.Size | tuple[int, int]
) -> torch.Tensor:
    """[B, H, W] kernels for circular convolution: weights [B, K] at offsets [B, K, (dy, dx)]."""
    batch = weights.shape[0]
    height, width = shape
    kernels = torch.zeros(batch, height * width, dtype=weights.dtype)
    flat = offsets[..., 0].remainder(height) * width + offsets[..., 1].remainder(width)
    kernels.scatter_add_(1, flat.long(), weights)
    return kernels.view(batch, height, width)


def fft_convolve(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Circular convolution of [..., H, W] planes with [..., H, W] kernels (broadcast)."""
    shape = images.shape[-2:]
    spectrum = torch.fft.rfft2(images) * torch.fft.rfft2(kernels.to(images.dtype))
    return torch.fft.irfft2(spectrum, s=shape)


def motion_blur(
    images: torch.Tensor,
    radius: int,
    sigma: float,
    angles_degrees: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """One-sided motion blur of [B, C, H, W] along each image's angle, edges replicated.

    The imagecorruptions package's re-implementation of ImageMagick's MotionBlurImage: tap i
    (i = 0 .. 2*radius) weighs exp(-i^2 / 2 sigma^2) (normalised) and reads the image shifted
    by (ceil(i*cos(a) - 0.5), ceil(i*sin(a) - 0.5)) pixels towards the origin, stopping at
    the first shift as large as the image. All images share one padded FFT convolution, each
    with its own sparse kernel.
    """
    height, width = images.shape[-2:]
    kernel_width = 2 * radius + 1
    steps = torch.arange(kernel_width, dtype=torch.float64)
    weights = torch.exp(-(steps**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    radians = torch.deg2rad(angles_degrees.double()).view(-1, 1)
    shift_y = -torch.ceil(steps * torch.sin(radians) - 0.5).long()
    shift_x = -torch.ceil(steps * torch.cos(radians) - 0.5).long()
    too_far = (shift_y.abs() >= height) | (shift_x.abs() >= width)
    # The reference stops at the first tap that leaves the image; later taps only go further.
    keep = torch.cumsum(too_far.long(), 1) == 0
    batch_weights = torch.where(keep, weights.expand_as(shift_x), torch.zeros(()).double())
    if images.device.type == "cpu" and images.dtype == torch.float32 and images.dim() == 4:
        shifts = torch.stack([shift_y, shift_x], -1)
        return ops_kernels.motion_blur(images, shifts, batch_weights, out=out, finish=finish)
    return deliver(_motion_blur_by_fft(images, shift_y, shift_x, batch_weights), out, finish)


def _motion_blur_by_fft(
    images: torch.Tensor, shift_y: torch.Tensor, shift_x: torch.Tensor, batch_weights
) -> torch.Tensor:
    """:func:`motion_blur`'s convolution through one padded FFT (any device)."""
    height, width = images.shape[-2:]
    kernel_width = shift_y.shape[1]
    margin = kernel_width - 1
    # Taps reach back ``margin`` pixels at most; the far border only rounds the FFT length up.
    bottom = fast_fft_size(height + 2 * margin) - height - margin
    right = fast_fft_size(width + 2 * margin) - width - margin
    padded = pad(images, margin, bottom, margin, right, "nearest")
    # blurred(p) = sum_i w_i x(p - shift_i): a convolution with w_i placed at shift_i.
    kernels = _circular_kernel(
        batch_weights, torch.stack([shift_y, shift_x], -1), padded.shape[-2:]
    )
    blurred = fft_convolve(padded, kernels[:, None])
    return blurred[..., margin : margin + height, margin : margin + width]


def clipped_zoom(images: torch.Tensor, factor: float) -> torch.Tensor:
    """The reference's clipped_zoom: centre crop ceil(S / factor), scipy.ndimage.zoom(order=1)
    by ``factor`` (corner-aligned linear interpolation, size round(crop * factor)), centre trim
    back to the input size."""
    height, width = images.shape[-2:]
    crop_height = math.ceil(height / factor)
    crop_width = math.ceil(width / factor)
    # The reference takes the vertical crop offset and trim for both axes (square images).
    top = (height - crop_height) // 2
    left = (width - crop_width) // 2
    crop = images[..., top : top + crop_height, left : left + crop_width]
    zoomed_height = round(crop_height * factor)
    zoomed_width = round(crop_width * factor)
    leading = crop.shape[:-2]
    zoomed = F.interpolate(
        crop.reshape(-1, 1, crop_height, crop_width),
        size=(zoomed_height, zoomed_width),
        mode="bilinear",
        align_corners=True,
    ).view(*leading, zoomed_height, zoomed_width)
    trim_top = (zoomed_height - height) // 2
    trim_left = (zoomed_width - width) // 2
    return zoomed[..., trim_top : trim_top + height, trim_left : trim_left + width]


def _zoom_axis_table(size: int, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One axis of :func:`clipped_zoom` as (source pixel pairs [size, 2], weight of the
    second [size]), in the original image's coordinates: F.interpolate's align_corners
    source positions, computed in float32 as torch does."""
    crop = math.ceil(size / factor)
    start = (size - crop) // 2
    zoomed = round(crop * factor)
    trim = (zoomed - size) // 2
    scale = torch.tensor((crop - 1) / (zoomed - 1) if zoomed > 1 else 0.0, dtype=torch.float32)
    positions = scale * torch.arange(trim, trim + size, dtype=torch.float32)
    first = positions.long()
    second = first + (first < crop - 1).long()
    pairs = torch.stack([first, second], 1) + start
    return pairs, positions - first


@cached_per_device
def clipped_zoom_tables(
    height: int, width: int, factors: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows [F, H, 2], row weights [F, H], source columns [F, W, 2] and column weights
    [F, W] of :func:`clipped_zoom` at each factor (the compiled zoom blur's tables)."""
    row_tables = [_zoom_axis_table(height, factor) for factor in factors]
    col_tables = [_zoom_axis_table(width, factor) for factor in factors]
    return (
        torch.stack([pairs for pairs, _ in row_tables]),
        torch.stack([weights for _, weights in row_tables]),
        torch.stack([pairs for pairs, _ in col_tables]),
        torch.stack([weights for _, weights in col_tables]),
    )


@cached_per_device
def pil_box_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """[size_out, size_in] weights of PIL's Image.resize(..., Image.BOX) along one axis.

    PIL averages, with equal weights, the input pixels whose centres fall in
    (centre - support, centre + support] around each output pixel's mapped centre, support
    being half a pixel times max(1, scale) (Pillow's precompute_coeffs with box_filter). When
    enlarging this reads exactly one input pixel per output pixel.
    """
    scale = size_in / size_out
    support = 0.5 * max(scale, 1.0)
    centres = (torch.arange(size_out, dtype=torch.float64) + 0.5) * scale
    pixel_centres = torch.arange(size_in, dtype=torch.float64) + 0.5
    relative = (pixel_centres.view(1, -1) - centres.view(-1, 1)) / max(scale, 1.0)
    inside = (relative > -0.5) & (relative <= 0.5)
    # Pillow only visits pixels from int(centre - support + 0.5) to int(centre + support + 0.5).
    first = (centres - support + 0.5).floor().clamp(min=0).view(-1, 1)
    last = (centres + support + 0.5).floor().clamp(max=size_in).view(-1, 1)
    index = torch.arange(size_in, dtype=torch.float64).view(1, -1)
    inside &= (index >= first) & (index < last)
    weights = inside.double()
    return (weights / weights.sum(1, keepdim=True).clamp(min=1)).float()


@cached_per_device
def sparse_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A matrix with few non-zeros per row as (columns [rows, taps], weights [rows, taps]),
    each row's non-zero columns in increasing order, padded with weight-0 taps."""
    size = matrix.shape[1]
    nonzero = matrix != 0
    taps = int(nonzero.sum(1).max())
    positions = torch.arange(size)
    order = torch.where(nonzero, positions, positions + size).argsort(1)[:, :taps]
    present = nonzero.gather(1, order)
    columns = torch.where(present, order, torch.zeros_like(order))
    values = torch.where(present, matrix.gather(1, order), torch.zeros(()))
    return columns, values


def apply_sparse(images: torch.Tensor, matrix: torch.Tensor, axis: int) -> torch.Tensor:
    """``matrix @ images`` along ``axis`` (-1 or -2) for a matrix with a few non-zeros per
    row, tap by tap: the dense product ran at 4 GFLOP/s in this machine's BLAS for the
    resize matrices, which are mostly zeros."""
    columns, values = sparse_rows(matrix)
    shape = [1] * images.dim()
    shape[axis] = columns.shape[0]
    result = None
    for tap in range(columns.shape[1]):
        term = images.index_select(axis, columns[:, tap]) * values[:, tap].to(images).view(shape)
        result = term if result is None else result.add_(term)
    return result


def pil_box_resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    rows = pil_box_matrix(images.shape[-2], height)
    cols = pil_box_matrix(images.shape[-1], width)
    if images.device.type == "cpu" and images.dtype == torch.float32 and images.dim() == 4:
        return ops_kernels.resize_separable(images, sparse_rows(rows), sparse_rows(cols))
    return apply_sparse(apply_sparse(images, rows, -2), cols, -1)


def luma(images: torch.Tensor) -> torch.Tensor:
    """cv2.COLOR_RGB2GRAY of [B, 3, H, W]: 0.299 R + 0.587 G + 0.114 B, as [B, 1, H, W]."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    return (images * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Truncate onto the uint8 grid like the reference's ``np.uint8(x * 255)``.

    The small allowance keeps a pixel that is mathematically on level k (an untouched clean
    pixel, say) from dropping to k - 1 through float32 rounding.
    """
    return quantize_(images.clamp(0, 1))


def quantize_(images: torch.Tensor) -> torch.Tensor:
    """:func:`quantize` in place on an image batch the caller owns, already in [0, 1]: the
    same operations in the same order (bit-identical), one buffer instead of five."""
    return images.mul_(255).add_(1e-4).floor_().clamp_(max=255).div_(255)


def deliver(
    corrupted: torch.Tensor, out: torch.Tensor | None = None, finish: int = RAW
) -> torch.Tensor:
    """``corrupted`` finished as ``finish`` asks, written into ``out`` when given (float32, the
    same shape), else returned (a new tensor unless ``finish`` is :data:`RAW`)."""
    if out is None:
        if finish == RAW:
            return corrupted
        out = torch.empty(corrupted.shape, dtype=torch.float32, device=corrupted.device)
    on_cpu = out.device.type == "cpu" and corrupted.device.type == "cpu"
    if finish != RAW and on_cpu and corrupted.dtype == torch.float32:
        ops_kernels.finish(corrupted, out, finish == QUANTIZED)
        return out
    corrupted = corrupted.float()
    if finish != RAW:
        corrupted = corrupted.clamp(0, 1)
        if finish == QUANTIZED:
            corrupted = quantize_(corrupted)
    return out.copy_(corrupted)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    levels = images.clamp(0, 1).mul_(255).add_(1e-4).floor_().clamp_(max=255)
    return levels.to(torch.uint8)
