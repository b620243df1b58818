"""The corruption algorithms of Hendrycks & Dietterich 2019, batched over [B,3,H,W] in torch.

Each function takes float images in [0, 1], the severity's parameter from
:mod:`parameters`, and one ``torch.Generator`` per image: every random draw for an image
comes from its own generator, so an image's corruption does not depend on its batch. The
algorithms follow the reference description (hendrycks/robustness make_cifar_c.py and
imagecorruptions), re-implemented here; where they are random, results match the reference
in distribution, not pixel for pixel.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from robustbench_bn.data.corruptions import filters

Generators = Sequence[torch.Generator]


def _per_image(generators: Generators, draw) -> torch.Tensor:
    return torch.stack([draw(generator) for generator in generators])


def _uniform(generators: Generators, shape: tuple[int, ...], low: float, high: float):
    return _per_image(generators, lambda g: torch.rand(shape, generator=g) * (high - low) + low)


# --- noise -----------------------------------------------------------------------------------


def gaussian_noise(images, scale, generators):
    noise = _per_image(generators, lambda g: torch.randn(images.shape[1:], generator=g))
    return images + noise * scale


def shot_noise(images, photons, generators):
    rates = images * photons
    counts = torch.stack(
        [torch.poisson(rate, generator=g) for rate, g in zip(rates, generators, strict=True)]
    )
    return counts / photons


def impulse_noise(images, amount, generators):
    # Salt and pepper per element and channel: Bernoulli(amount) picks the pixel, then a fair
    # coin picks salt (1) or pepper (0), as skimage.util.random_noise(mode="s&p").
    hit = _uniform(generators, images.shape[1:], 0, 1) < amount
    salt = _uniform(generators, images.shape[1:], 0, 1) < 0.5
    return torch.where(hit, salt.to(images.dtype), images)


def speckle_noise(images, scale, generators):
    noise = _per_image(generators, lambda g: torch.randn(images.shape[1:], generator=g))
    return images + images * noise * scale


# --- blur ------------------------------------------------------------------------------------


@functools.cache
def _disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    if radius <= 8:
        span, blur_size = 8, 3
    else:
        span, blur_size = math.ceil(radius), 5
    offsets = torch.arange(-span, span + 1, dtype=torch.float32)
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")
    disk = ((x**2 + y**2) <= radius**2).float()
    disk /= disk.sum()
    # OpenCV's GaussianBlur with a fixed small kernel size anti-aliases the disk.
    half = blur_size // 2
    taps = torch.exp(
        -(torch.arange(-half, half + 1, dtype=torch.float32) ** 2) / (2 * alias_blur**2)
    )
    taps /= taps.sum()
    blurred = filters.separable_filter(disk[None, None], taps, "reflect")[0, 0]
    return blurred


def defocus_blur(images, parameter, generators):
    radius, alias_blur = parameter
    kernel = _disk_kernel(float(radius), float(alias_blur))
    size = kernel.shape[0] // 2
    channels = images.shape[1]
    padded = F.pad(images, (size,) * 4, mode="reflect")
    weight = kernel.view(1, 1, *kernel.shape).expand(channels, 1, -1, -1)
    return F.conv2d(padded, weight, groups=channels)


def gaussian_blur(images, sigma, generators):
    return filters.gaussian_filter(images, sigma, mode="nearest")


def glass_blur(images, parameter, generators):
    sigma, max_delta, iterations = parameter
    blurred = filters.gaussian_filter(images, sigma, mode="nearest")
    # The reference rounds down to uint8 before shuffling pixels.
    pixels = torch.floor(blurred.clamp(0, 1) * 255)
    batch, _, height, width = pixels.shape
    rows = list(range(height - max_delta - 1, max_delta - 1, -1))
    cols = list(range(width - max_delta - 1, max_delta - 1, -1))
    # Offsets in [-delta, delta) for every visit, drawn per image before the sweep.
    offsets = _per_image(
        generators,
        lambda g: torch.randint(
            -max_delta, max_delta, (iterations, len(rows), len(cols), 2), generator=g
        ),
    )
    image_index = torch.arange(batch)
    # Each visited pixel takes the value of a random neighbour, sequentially, so later visits
    # can read already moved pixels, as the reference's in-place loop does.
    for iteration in range(iterations):
        for row_position, row in enumerate(rows):
            for col_position, col in enumerate(cols):
                offset = offsets[:, iteration, row_position, col_position]
                pixels[:, :, row, col] = pixels[
                    image_index, :, row + offset[:, 0], col + offset[:, 1]
                ]
    return filters.gaussian_filter(pixels / 255, sigma, mode="nearest")


@functools.cache
def _motion_kernel(radius: int, sigma: float) -> torch.Tensor:
    width = 2 * radius + 1
    taps = torch.exp(-(torch.arange(width, dtype=torch.float64) ** 2) / (2 * sigma**2))
    return (taps / taps.sum()).float()


def _motion_blur_with_angles(images, radius, sigma, angles_degrees: torch.Tensor):
    """One-sided motion blur along each image's angle, edges replicated (ImageMagick style)."""
    kernel = _motion_kernel(int(radius), float(sigma))
    radians = torch.deg2rad(angles_degrees.double())
    height, width = images.shape[-2:]
    blurred = torch.zeros_like(images)
    for step, weight in enumerate(kernel.tolist()):
        dy = -torch.ceil(step * torch.sin(radians) - 0.5).long()
        dx = -torch.ceil(step * torch.cos(radians) - 0.5).long()
        if bool(((dy.abs() >= height) | (dx.abs() >= width)).all()):
            break
        blurred += weight * filters.shift_replicate(images, dx, dy)
    return blurred


def motion_blur(images, parameter, generators):
    radius, sigma = parameter
    angles = _uniform(generators, (), -45, 45)
    return _motion_blur_with_angles(images, radius, sigma, angles)


def zoom_blur(images, factors, generators):
    total = images.clone()
    for factor in factors:
        total += filters.clipped_zoom(images, factor)
    return total / (len(factors) + 1)


# --- weather ---------------------------------------------------------------------------------


def snow(images, parameter, generators):
    mean, std, zoom, threshold, blur_radius, blur_sigma, image_weight = parameter
    batch, _, height, width = images.shape
    layer = _per_image(generators, lambda g: torch.randn((1, height, width), generator=g))
    layer = filters.clipped_zoom(layer * std + mean, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    # The reference blurs the snow layer as an 8-bit image.
    layer = torch.floor(layer.clamp(0, 1) * 255) / 255
    angles = _uniform(generators, (), -135, -45)
    layer = _motion_blur_with_angles(layer, blur_radius, blur_sigma, angles)
    layer = torch.floor(layer.clamp(0, 1) * 255) / 255
    whitened = torch.maximum(images, filters.grayscale(images) * 1.5 + 0.5)
    images = image_weight * images + (1 - image_weight) * whitened
    return images + layer + torch.rot90(layer, 2, dims=(-2, -1))


@functools.cache
def _frost_images(resize: float) -> tuple[torch.Tensor, ...]:
    """The five frost photographs of the imagecorruptions-imaug package, shrunk by ``resize``."""
    import imagecorruptions
    from torchvision.io import ImageReadMode, decode_image, read_file

    folder = Path(imagecorruptions.__file__).parent / "frost"
    names = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
    loaded = []
    for name in names:
        image = decode_image(read_file(str(folder / name)), mode=ImageReadMode.RGB).float() / 255
        size = (round(image.shape[1] * resize), round(image.shape[2] * resize))
        loaded.append(F.interpolate(image[None], size=size, mode="area")[0])
    return tuple(loaded)


def make_frost(resize: float):
    def frost(images, parameter, generators):
        image_weight, frost_weight = parameter
        height, width = images.shape[-2:]
        frosts = _frost_images(resize)
        crops = []
        for generator in generators:
            chosen = frosts[int(torch.randint(len(frosts), (), generator=generator))]
            top = int(torch.randint(chosen.shape[1] - height + 1, (), generator=generator))
            left = int(torch.randint(chosen.shape[2] - width + 1, (), generator=generator))
            crops.append(chosen[:, top : top + height, left : left + width])
        return image_weight * images + frost_weight * torch.stack(crops)

    return frost


def _plasma_fractal(generators: Generators, size: int, wibble_decay: float) -> torch.Tensor:
    """Diamond-square fractal noise on a toroidal size x size grid, normalized to [0, 1]."""
    batch = len(generators)
    grid = torch.zeros(batch, size, size, dtype=torch.float64)
    step = size
    wibble = 100.0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        noise = _per_image(
            generators, lambda g: torch.rand(total.shape[1:], generator=g, dtype=torch.float64)
        )
        return total / 4 + wibble * (noise * 2 * wibble - wibble)

    while step >= 2:
        half = step // 2
        corners = grid[:, 0:size:step, 0:size:step]
        square_sum = corners + corners.roll(-1, 1)
        square_sum = square_sum + square_sum.roll(-1, 2)
        grid[:, half:size:step, half:size:step] = wibbled_mean(square_sum)
        centres = grid[:, half:size:step, half:size:step]
        corners = grid[:, 0:size:step, 0:size:step]
        left_sum = centres + centres.roll(1, 1) + corners + corners.roll(-1, 2)
        grid[:, 0:size:step, half:size:step] = wibbled_mean(left_sum)
        top_sum = centres + centres.roll(1, 2) + corners + corners.roll(-1, 1)
        grid[:, half:size:step, 0:size:step] = wibbled_mean(top_sum)
        step //= 2
        wibble /= wibble_decay
    grid -= grid.amin((1, 2), keepdim=True)
    grid /= grid.amax((1, 2), keepdim=True)
    return grid.float()


def fog(images, parameter, generators):
    amount, wibble_decay = parameter
    height, width = images.shape[-2:]
    size = 1 << max(height - 1, width - 1).bit_length()
    plasma = _plasma_fractal(generators, size, wibble_decay)[:, None, :height, :width]
    peak = images.amax((1, 2, 3), keepdim=True)
    fogged = images + amount * plasma
    return fogged * peak / (peak + amount)


def frost_cifar(images, parameter, generators):
    return make_frost(0.2)(images, parameter, generators)


# --- digital ---------------------------------------------------------------------------------


def brightness(images, shift, generators):
    # Raising V in HSV with H and S kept scales each pixel's RGB by V'/V (grey if V was 0).
    value = images.amax(1, keepdim=True)
    new_value = (value + shift).clamp(max=1)
    scaled = images * (new_value / value.clamp(min=1e-12))
    return torch.where(value > 0, scaled, new_value.expand_as(images))


def contrast(images, factor, generators):
    means = images.mean((2, 3), keepdim=True)
    return (images - means) * factor + means


def saturate(images, parameter, generators):
    scale, offset = parameter
    hsv = filters.rgb_to_hsv(images)
    hsv[:, 1] = (hsv[:, 1] * scale + offset).clamp(0, 1)
    return filters.hsv_to_rgb(hsv)


def pixelate(images, fraction, generators):
    height, width = images.shape[-2:]
    small = filters.box_resize(images, int(height * fraction), int(width * fraction))
    return filters.box_resize(small, height, width)


def jpeg_compression(images, quality, generators):
    from torchvision.io import decode_jpeg, encode_jpeg

    pixels = [image for image in torch.floor(images.clamp(0, 1) * 255).to(torch.uint8)]
    encoded = encode_jpeg(pixels, quality=int(quality))
    return torch.stack(decode_jpeg(encoded)).float() / 255


def elastic_transform(images, parameter, generators):
    batch, _, height, width = images.shape
    size = min(height, width)
    alpha, sigma, affine_jitter = (value * size for value in parameter)
    # Random affine: three points around the centre, each moved by U(-jitter, jitter).
    centre_x, centre_y = width // 2, height // 2
    half = size // 3
    source = torch.tensor(
        [
            [centre_x + half, centre_y + half],
            [centre_x + half, centre_y - half],
            [centre_x - half, centre_y - half],
        ],
        dtype=torch.float64,
    )
    moved = source + _uniform(generators, (3, 2), -affine_jitter, affine_jitter).double()
    ones = torch.ones(batch, 3, 1, dtype=torch.float64)
    # Solve [x y 1] @ A = [x' y'] for the forward map, then invert it for sampling.
    forward = torch.linalg.solve(torch.cat([source.expand(batch, -1, -1), ones], 2), moved)
    forward_matrix = torch.cat(
        [forward.transpose(1, 2), torch.tensor([0.0, 0.0, 1.0]).double().expand(batch, 1, 3)], 1
    )
    inverse = torch.linalg.inv(forward_matrix)
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )
    pixels = torch.stack([cols, rows, torch.ones_like(rows)], -1).view(1, -1, 3)
    mapped = pixels @ inverse.transpose(1, 2)
    warped = _sample(
        images, mapped[..., 1].view(batch, height, width), mapped[..., 0].view(batch, height, width)
    )
    if alpha == 0:
        return warped
    displacement = _uniform(generators, (2, height, width), -1, 1)
    displacement = filters.gaussian_filter(displacement, sigma, mode="reflect", truncate=3) * alpha
    return _sample(warped, rows + displacement[:, 0].double(), cols + displacement[:, 1].double())


def _sample(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling at pixel coordinates, mirrored at the borders."""
    height, width = images.shape[-2:]
    grid = torch.stack([cols / (width - 1) * 2 - 1, rows / (height - 1) * 2 - 1], -1)
    return F.grid_sample(
        images,
        grid.to(images.dtype),
        mode="bilinear",
        padding_mode="reflection",
        align_corners=True,
    )
