"""Weather corruptions of Hendrycks & Dietterich 2019: snow, frost, fog.

Algorithms as in hendrycks/robustness make_*_c.py; parameters in :mod:`.parameters`. The frost
photographs are read at run time from the installed imagecorruptions-imaug package
(Apache-2.0), never copied into this repository. Functions take float images [B, 3, H, W] in
[0, 1], the severity's parameter, one generator per image and the family.
"""

from __future__ import annotations

import math
from importlib import resources

import torch

from robustbench_bn.data.corruptions import ops, sampling, weather_kernels
from robustbench_bn.data.corruptions.parameters import FROST_RESIZE
from robustbench_bn.data.corruptions.sampling import Generators

#: The reference draws from the first five photographs only (np.random.randint(5)).
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")


def snow(images: torch.Tensor, parameter, generators: Generators, family: str, **finishing):
    mean, std, zoom, threshold, blur_radius, blur_sigma, image_weight = parameter
    batch, _, height, width = images.shape
    layer = sampling.normal(generators, (1, height, width)).mul_(std).add_(mean)
    angles = sampling.uniform(generators, (), -135, -45, dtype=torch.float64)
    layer = ops.clipped_zoom(layer, zoom)
    # The reference hands the layer to ImageMagick as an 8-bit image (truncated) and reads
    # the blurred result back as 8 bits (rounded).
    compiled = images.device.type == "cpu" and images.dtype == torch.float32
    if compiled:
        layer = weather_kernels.zeroed_levels(layer, threshold)  # the two steps below in one pass
    else:
        layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
        layer = ops.quantize(layer)
    layer = ops.motion_blur(layer, int(blur_radius), float(blur_sigma), angles)
    if compiled:
        # The blend rounds the layer to 8 bits as it reads it.
        return weather_kernels.snow_blend(images, layer, float(image_weight), **finishing)
    layer = torch.round(layer.clamp(0, 1) * 255) / 255
    return ops.deliver(snow_blend_by_tensor_operations(images, layer, image_weight), **finishing)


def snow_blend_by_tensor_operations(images: torch.Tensor, layer: torch.Tensor, image_weight):
    """:func:`snow`'s final blend in tensor operations (any device)."""
    whitened = torch.maximum(images, ops.luma(images) * 1.5 + 0.5)
    images = image_weight * images + (1 - image_weight) * whitened
    return images + layer + layer.flip(-2, -1)


def _linear_resize_matrix(size_in: int, size_out: int, scale: float) -> torch.Tensor:
    """cv2.resize INTER_LINEAR along one axis at scale ``scale`` (half-pixel centres, edges
    clamped, no anti-aliasing): [size_out, size_in]."""
    source = ((torch.arange(size_out, dtype=torch.float64) + 0.5) / scale - 0.5).clamp(
        0, size_in - 1
    )
    below = source.floor().long()
    above = (below + 1).clamp(max=size_in - 1)
    fraction = source - below
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    matrix.scatter_add_(1, below.view(-1, 1), (1 - fraction).view(-1, 1))
    matrix.scatter_add_(1, above.view(-1, 1), fraction.view(-1, 1))
    return matrix.float()


@ops.cached_per_device
def _frost_photographs() -> tuple[torch.Tensor, ...]:
    """The five frost photographs as float [3, h, w] in [0, 1], alpha dropped like cv2.imread."""
    import numpy
    from PIL import Image

    folder = resources.files("imagecorruptions") / "frost"
    loaded = []
    for name in FROST_FILES:
        with resources.as_file(folder / name) as path, Image.open(path) as image:
            pixels = numpy.array(image.convert("RGB"))
        loaded.append(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    return tuple(loaded)


@ops.cached_per_device
def frost_photographs(family: str, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """The photographs resized as the family's reference does, and enlarged if still smaller
    than the image (needed only for images larger than the reference's): cached per size."""
    resized = []
    for photograph in _frost_photographs():
        scale = FROST_RESIZE[family]
        photo_height, photo_width = photograph.shape[-2:]
        # The reference crops with randint(0, side - size), so it needs one spare pixel.
        needed = max((height + 1) / (photo_height * scale), (width + 1) / (photo_width * scale))
        if needed > 1:
            scale *= needed * 1.1  # imagecorruptions' 10% margin for small frost images
        if scale != 1:
            # cv2.resize(fx=scale) output size: round half to even, as Python's round.
            out_height = round(photo_height * scale)
            out_width = round(photo_width * scale)
            rows = _linear_resize_matrix(photo_height, out_height, scale)
            cols = _linear_resize_matrix(photo_width, out_width, scale)
            photograph = rows @ photograph @ cols.T
            # cv2 returns uint8 for uint8 input.
            photograph = torch.round(photograph.clamp(0, 1) * 255) / 255
        resized.append(photograph)
    return tuple(resized)


@ops.cached_per_device
def _stacked_frost_photographs(family: str, height: int, width: int) -> torch.Tensor:
    """:func:`frost_photographs` zero-padded to one [5, 3, h, w] tensor for the compiled blend
    (a crop never reaches the padding)."""
    photographs = frost_photographs(family, height, width)
    tallest = max(photograph.shape[1] for photograph in photographs)
    widest = max(photograph.shape[2] for photograph in photographs)
    stacked = torch.zeros((len(photographs), 3, tallest, widest), dtype=torch.float32)
    for slot, photograph in zip(stacked, photographs, strict=True):
        slot[:, : photograph.shape[1], : photograph.shape[2]] = photograph
    return stacked


def frost(images: torch.Tensor, parameter, generators: Generators, family: str, **finishing):
    image_weight, frost_weight = parameter
    height, width = images.shape[-2:]
    photographs = frost_photographs(family, height, width)
    draws = sampling.uniform(generators, (3,), dtype=torch.float64)
    picks = []  # (photograph, top, left) per image
    for choice_draw, row_draw, col_draw in draws.tolist():
        choice = min(int(choice_draw * len(photographs)), len(photographs) - 1)
        photograph = photographs[choice]
        top = int(row_draw * (photograph.shape[1] - height))
        left = int(col_draw * (photograph.shape[2] - width))
        picks.append((choice, top, left))
    if images.device.type == "cpu" and images.dtype == torch.float32:
        # The crops read in place from one padded stack of the photographs: no batch of them.
        corners = torch.tensor(picks, dtype=torch.int64).view(-1, 3)
        stacked = _stacked_frost_photographs(family, height, width)
        weights = (float(image_weight), float(frost_weight))
        return weather_kernels.frost_blend(images, stacked, corners, *weights, **finishing)
    crops = [
        photographs[choice][:, top : top + height, left : left + width]
        for choice, top, left in picks
    ]
    return ops.deliver(image_weight * images + frost_weight * torch.stack(crops), **finishing)


def plasma_fractal(generators: Generators, size: int, wibble_decay: float) -> torch.Tensor:
    """Diamond-square fractal noise on a toroidal size x size grid (size a power of two),
    normalised to [0, 1]: [B, size, size] float64. Every cell is filled exactly once, so each
    image draws its size^2 - 1 uniforms in one call."""
    draws = sampling.uniform(generators, (size * size - 1,), dtype=torch.float64)
    if draws.device.type == "cpu":
        return weather_kernels.plasma_fractal(draws, size, wibble_decay)
    return _plasma_by_tensor_operations(draws, size, wibble_decay)


def _plasma_by_tensor_operations(
    draws: torch.Tensor, size: int, wibble_decay: float
) -> torch.Tensor:
    """:func:`plasma_fractal` from its draws in whole-grid tensor operations (any device)."""
    batch = len(draws)
    grid = torch.zeros(batch, size, size, dtype=torch.float64)
    used = 0
    step = size
    wibble = 100.0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        nonlocal used
        count = total.shape[1] * total.shape[2]
        noise = draws[:, used : used + count].view_as(total)
        used += count
        return total / 4 + wibble * (noise * 2 * wibble - wibble)

    while step >= 2:
        half = step // 2
        corners = grid[:, 0:size:step, 0:size:step]
        square_total = corners + corners.roll(-1, 1)
        square_total = square_total + square_total.roll(-1, 2)
        grid[:, half:size:step, half:size:step] = wibbled_mean(square_total)
        centres = grid[:, half:size:step, half:size:step]
        left_total = centres + centres.roll(1, 1) + corners + corners.roll(-1, 2)
        grid[:, 0:size:step, half:size:step] = wibbled_mean(left_total)
        top_total = centres + centres.roll(1, 2) + corners + corners.roll(-1, 1)
        grid[:, half:size:step, 0:size:step] = wibbled_mean(top_total)
        step //= 2
        wibble /= wibble_decay
    grid -= grid.amin((1, 2), keepdim=True)
    return grid / grid.amax((1, 2), keepdim=True)


def fog(images: torch.Tensor, parameter, generators: Generators, family: str, **finishing):
    amount, wibble_decay = parameter
    height, width = images.shape[-2:]
    size = 1 << math.ceil(math.log2(max(height, width)))
    plasma = plasma_fractal(generators, size, float(wibble_decay))
    if images.device.type == "cpu" and images.dtype == torch.float32:
        return weather_kernels.fog_blend(images, plasma, float(amount), **finishing)
    plasma = plasma[:, None, :height, :width]
    peak = images.amax((1, 2, 3), keepdim=True)
    fogged = images + amount * plasma.to(images.dtype)
    return ops.deliver(fogged * peak / (peak + amount), **finishing)
