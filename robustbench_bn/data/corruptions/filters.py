"""Batched image operations shared by the corruptions: filters, shifts, zooms, colour spaces."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel_1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage's sampled Gaussian: radius int(truncate * sigma + 0.5), normalized."""
    radius = int(truncate * sigma + 0.5)
    if radius == 0 or sigma <= 0:
        return torch.ones(1)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def separable_filter(images: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Filter every channel of [B,C,H,W] with ``kernel`` along both axes.

    ``mode`` is a torch padding mode: "replicate" is scipy's "nearest", "reflect" is scipy's
    "mirror" (OpenCV's REFLECT_101).
    """
    radius = kernel.numel() // 2
    if radius == 0:
        return images
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode=mode)
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1).to(images)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1).to(images)
    return F.conv2d(F.conv2d(padded, horizontal, groups=channels), vertical, groups=channels)


def symmetric_pad(images: torch.Tensor, radius: int) -> torch.Tensor:
    """scipy's "reflect" mode (edge sample repeated: d c b a | a b c d)."""
    if radius == 0:
        return images
    height, width = images.shape[-2:]
    rows = torch.arange(-radius, height + radius)
    cols = torch.arange(-radius, width + radius)
    rows = torch.where(
        rows < 0, -rows - 1, torch.where(rows >= height, 2 * height - rows - 1, rows)
    )
    cols = torch.where(cols < 0, -cols - 1, torch.where(cols >= width, 2 * width - cols - 1, cols))
    return images[..., rows.clamp(0, height - 1), :][..., cols.clamp(0, width - 1)]


def gaussian_filter(
    images: torch.Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0
) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter over H and W of [B,C,H,W] (modes nearest, reflect, mirror)."""
    kernel = gaussian_kernel_1d(sigma, truncate)
    if mode == "nearest":
        return separable_filter(images, kernel, "replicate")
    if mode == "mirror":
        return separable_filter(images, kernel, "reflect")
    radius = kernel.numel() // 2
    padded = symmetric_pad(images, radius)
    channels = images.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1).to(images)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1).to(images)
    return F.conv2d(F.conv2d(padded, horizontal, groups=channels), vertical, groups=channels)


def shift_replicate(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """out[b, :, y, x] = images[b, :, clamp(y - dy[b]), clamp(x - dx[b])] (edge replicated)."""
    batch, channels, height, width = images.shape
    rows = (torch.arange(height).view(1, -1, 1) - dy.view(-1, 1, 1)).clamp(0, height - 1)
    cols = (torch.arange(width).view(1, 1, -1) - dx.view(-1, 1, 1)).clamp(0, width - 1)
    flat_index = (rows * width + cols).view(batch, 1, height * width).expand(-1, channels, -1)
    return images.reshape(batch, channels, -1).gather(2, flat_index).view_as(images)


def clipped_zoom(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Centre crop of size ceil(S/factor), bilinear zoom by ``factor``, centre trim back to S.

    scipy.ndimage.zoom(order=1) aligns corners, hence ``align_corners=True``.
    """
    height, width = images.shape[-2:]
    crop_h = math.ceil(height / factor)
    crop_w = math.ceil(width / factor)
    top = (height - crop_h) // 2
    left = (width - crop_w) // 2
    crop = images[..., top : top + crop_h, left : left + crop_w]
    out_h = round(crop_h * factor)
    out_w = round(crop_w * factor)
    zoomed = F.interpolate(crop, size=(out_h, out_w), mode="bilinear", align_corners=True)
    trim_top = (out_h - height) // 2
    trim_left = (out_w - width) // 2
    return zoomed[..., trim_top : trim_top + height, trim_left : trim_left + width]


def box_resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """[size_out, size_in] weights of PIL's BOX filter: each output pixel averages the input
    interval it covers, partial pixels weighted by their overlap."""
    scale = size_in / size_out
    starts = torch.arange(size_out, dtype=torch.float64) * scale
    ends = starts + scale
    pixel_starts = torch.arange(size_in, dtype=torch.float64)
    overlap = (
        torch.minimum(ends[:, None], pixel_starts[None, :] + 1)
        - torch.maximum(starts[:, None], pixel_starts[None, :])
    ).clamp(min=0)
    return (overlap / overlap.sum(1, keepdim=True)).float()


def box_resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    rows = box_resize_matrix(images.shape[-2], height).to(images)
    cols = box_resize_matrix(images.shape[-1], width).to(images)
    return rows @ images @ cols.T


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, as OpenCV's RGB2GRAY: [B,1,H,W]."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    red, green, blue = images.unbind(1)
    value, _ = images.max(1)
    minimum, _ = images.min(1)
    delta = value - minimum
    saturation = torch.where(value > 0, delta / value.clamp(min=1e-12), torch.zeros_like(value))
    safe = delta.clamp(min=1e-12)
    hue = torch.where(
        value == red,
        ((green - blue) / safe) % 6,
        torch.where(value == green, (blue - red) / safe + 2, (red - green) / safe + 4),
    )
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = hsv.unbind(1)
    sector = hue * 6
    index = torch.floor(sector) % 6
    fraction = sector - torch.floor(sector)
    p = value * (1 - saturation)
    q = value * (1 - saturation * fraction)
    t = value * (1 - saturation * (1 - fraction))
    choices = [
        (value, t, p),
        (q, value, p),
        (p, value, t),
        (p, q, value),
        (t, p, value),
        (value, p, q),
    ]
    red = torch.zeros_like(value)
    green = torch.zeros_like(value)
    blue = torch.zeros_like(value)
    for sector_index, (r, g, b) in enumerate(choices):
        mask = index == sector_index
        red = torch.where(mask, r, red)
        green = torch.where(mask, g, green)
        blue = torch.where(mask, b, blue)
    return torch.stack([red, green, blue], 1)
