"""Spatter, an extra corruption of Hendrycks & Dietterich 2019: water drops or mud.

The reference (hendrycks/robustness make_*_c.py) builds a liquid layer (gaussian noise,
smoothed, thresholded), then, for water, an embossed glare from OpenCV calls: Canny edges,
distance transform, box blurs, histogram equalisation and a 3x3 emboss filter. Those calls are
re-implemented here batched; the distance transform is exact Euclidean where OpenCV's
(DIST_L2, mask 5) is a chamfer approximation, a difference of at most a few percent of a pixel
distance before the result is truncated to 20 and to uint8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustbench_bn.data.corruptions import ops, sampling, spatter_kernels
from robustbench_bn.data.corruptions.sampling import Generators

#: cv2.threshold(dist, 20, 20, THRESH_TRUNC): distances beyond 20 px do not matter.
_DISTANCE_CAP = 20
_WATER_COLOUR = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise
_MUD_COLOUR = (63 / 255, 42 / 255, 20 / 255)
_EMBOSS = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])


def spatter(images: torch.Tensor, parameter, generators: Generators, family: str, **finishing):
    mean, std, liquid_sigma, threshold, strength, mode = parameter
    _, _, height, width = images.shape
    liquid = sampling.normal(generators, (1, height, width), dtype=torch.float64)
    liquid = ops.gaussian_filter(liquid.mul_(std).add_(mean), liquid_sigma, mode="nearest")
    compiled = images.device.type == "cpu" and images.dtype == torch.float32
    if compiled and mode == 0:
        # The kernel zeroes the liquid below the threshold as it reads it.
        return spatter_kernels.water(
            images, liquid, strength, _WATER_COLOUR, _DISTANCE_CAP, threshold=threshold, **finishing
        )
    if compiled:
        # Zeroing the liquid below a non-negative threshold puts none above it: the drops are
        # then where the liquid itself is above the threshold, with no zeroing pass.
        if threshold < 0:
            liquid = torch.where(liquid < threshold, torch.zeros_like(liquid), liquid)
        mask = ops.gaussian_filter((liquid > threshold).float(), strength, mode="nearest")
        return spatter_kernels.mud_blend(images, mask, _MUD_COLOUR, **finishing)
    liquid = torch.where(liquid < threshold, torch.zeros_like(liquid), liquid)
    if mode == 0:
        return ops.deliver(_water(images, liquid, strength), **finishing)
    return ops.deliver(_mud(images, liquid, threshold, strength), **finishing)


def _mud(images: torch.Tensor, liquid: torch.Tensor, threshold: float, sigma: float):
    mask = ops.gaussian_filter((liquid > threshold).float(), sigma, mode="nearest")
    mask = torch.where(mask < 0.8, torch.zeros_like(mask), mask)
    colour = torch.tensor(_MUD_COLOUR, dtype=images.dtype).view(1, 3, 1, 1)
    return images * (1 - mask) + colour * mask


def _water(images: torch.Tensor, liquid: torch.Tensor, strength: float):
    # (liquid * 255).astype(np.uint8); values above 1 are rare and clamped here.
    liquid_u8 = torch.floor(liquid.clamp(0, 1) * 255)
    edges = canny(liquid_u8, 50, 150)
    distance = distance_to_edges(edges).clamp(max=_DISTANCE_CAP)
    distance = torch.floor(_box3(distance))  # cv2.blur, then astype(np.uint8)
    distance = equalize_histogram(distance)
    # cv2.filter2D(dist, cv2.CV_8U, ker): rounded and saturated to uint8.
    embossed = ops.correlate2d(distance, _EMBOSS.double(), "mirror")
    embossed = torch.round(embossed).clamp(0, 255)
    distance = torch.round(_box3(embossed))  # cv2.blur of a uint8 image rounds
    glare = liquid_u8 * distance
    peak = glare.amax((2, 3), keepdim=True)
    glare = torch.where(peak > 0, glare / peak.clamp(min=1e-12), torch.zeros_like(glare))
    colour = torch.tensor(_WATER_COLOUR, dtype=torch.float64).view(1, 3, 1, 1)
    return images + (glare * strength * colour).to(images.dtype)


def _box3(planes: torch.Tensor) -> torch.Tensor:
    """cv2.blur(x, (3, 3)): 3x3 mean, BORDER_REFLECT_101."""
    return ops.separable_correlate(planes, torch.full((3,), 1 / 3, dtype=torch.float64), "mirror")


def canny(planes: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """cv2.Canny(uint8, low, high) on [B, 1, H, W] integer-valued planes: bool edges.

    3x3 Sobel gradients (replicated borders), L1 magnitude, non-maximum suppression with
    OpenCV's fixed-point 22.5/67.5 degree sectors and tie rules, then hysteresis: weak pixels
    (> low) joined 8-connected to strong ones (> high).
    """
    # The compiled kernel computes in int32, exact for uint8 levels (0..255).
    if planes.device.type == "cpu" and (
        not planes.numel() or 0 <= planes.min() <= planes.max() <= 255
    ):
        return spatter_kernels.canny(planes, int(low), int(high))
    return canny_by_tensor_operations(planes, low, high)


def canny_by_tensor_operations(planes: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """:func:`canny` in whole-image tensor operations (any device)."""
    # Integer pixels and Sobel weights: every sum is an integer below 2^24, exact in float32.
    # The 3x3 Sobel kernels are separable, [1, 2, 1] x [-1, 0, 1]: four slice passes instead
    # of a single-channel convolution, which oneDNN runs several times slower here.
    padded = ops.pad(planes.float(), 1, 1, 1, 1, "nearest")
    across = padded[..., :, 2:] - padded[..., :, :-2]
    gradient_x = (across[..., :-2, :] + 2 * across[..., 1:-1, :] + across[..., 2:, :]).long()
    down = padded[..., 2:, :] - padded[..., :-2, :]
    gradient_y = (down[..., :, :-2] + 2 * down[..., :, 1:-1] + down[..., :, 2:]).long()
    magnitude = gradient_x.abs() + gradient_y.abs()
    low, high = int(low), int(high)  # cvFloor of the thresholds for the L1 norm

    # Outside the image the magnitude counts as 0.
    around = F.pad(magnitude, (1, 1, 1, 1))
    height, width = magnitude.shape[-2:]

    def neighbour(dy: int, dx: int) -> torch.Tensor:
        return around[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    shift = 15
    tan22 = 13573  # int(tan(22.5 deg) * 2^15 + 0.5)
    abs_x = gradient_x.abs()
    scaled_y = gradient_y.abs() << shift
    tan22_x = abs_x * tan22
    tan67_x = tan22_x + (abs_x << (shift + 1))
    horizontal = scaled_y < tan22_x
    vertical = ~horizontal & (scaled_y > tan67_x)
    same_sign = (gradient_x ^ gradient_y) >= 0
    diagonal_before = torch.where(same_sign, neighbour(-1, -1), neighbour(-1, 1))
    diagonal_after = torch.where(same_sign, neighbour(1, 1), neighbour(1, -1))
    is_peak = torch.where(
        horizontal,
        (magnitude > neighbour(0, -1)) & (magnitude >= neighbour(0, 1)),
        torch.where(
            vertical,
            (magnitude > neighbour(-1, 0)) & (magnitude >= neighbour(1, 0)),
            (magnitude > diagonal_before) & (magnitude > diagonal_after),
        ),
    )
    candidate = is_peak & (magnitude > low)
    edges = candidate & (magnitude > high)
    candidate = candidate.float()
    edges = edges.float()
    while True:
        grown = F.max_pool2d(edges, 3, stride=1, padding=1) * candidate
        grown = torch.maximum(grown, edges)
        if torch.equal(grown, edges):
            return edges.bool()
        edges = grown


def distance_to_edges(edges: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of every pixel to the nearest edge pixel, capped just above
    :data:`_DISTANCE_CAP` (cv2.distanceTransform of 255 - edges), [B, 1, H, W] float64."""
    cap = _DISTANCE_CAP + 1
    if edges.device.type == "cpu":
        return spatter_kernels.distance_to_edges(edges, cap)
    return distance_by_tensor_operations(edges)


def distance_by_tensor_operations(edges: torch.Tensor) -> torch.Tensor:
    """:func:`distance_to_edges` in whole-image tensor operations (any device)."""
    cap = _DISTANCE_CAP + 1
    height, width = edges.shape[-2:]
    columns = torch.arange(width).expand_as(edges)
    never = torch.full_like(columns, -(10**6))
    last_left = torch.cummax(torch.where(edges, columns, never), -1).values
    flipped = edges.flip(-1)
    last_right = width - 1 - torch.cummax(torch.where(flipped, columns, never), -1).values.flip(-1)
    # Squared distances are integers below 2 * 21^2: exact in float32, which halves the
    # memory traffic of the column pass below; the square root is taken in float64.
    along_row = torch.minimum(columns - last_left, last_right - columns).clamp(max=cap).float()
    squared = along_row**2
    best = squared.clone()
    padded = F.pad(squared, (0, 0, cap, cap), value=float(cap**2))
    for offset in range(-cap, cap + 1):
        if offset == 0:
            continue
        shifted = padded[..., cap + offset : cap + offset + height, :]
        best = torch.minimum(best, shifted + offset**2)
    return best.double().sqrt()


def equalize_histogram(planes: torch.Tensor) -> torch.Tensor:
    """cv2.equalizeHist per [H, W] plane of integer values 0..255."""
    batch = planes.shape[0]
    values = planes.reshape(batch, -1).long()
    total = values.shape[1]
    histogram = torch.zeros(batch, 256, dtype=torch.long).scatter_add_(
        1, values, torch.ones_like(values)
    )
    first = (histogram > 0).long().argmax(1, keepdim=True)
    first_count = histogram.gather(1, first)
    cumulative = histogram.cumsum(1) - histogram.cumsum(1).gather(1, first)
    scale = 255.0 / (total - first_count).clamp(min=1).float()
    table = torch.round(cumulative.float() * scale).clamp(0, 255)
    table = torch.where(torch.arange(256).view(1, -1) <= first, torch.zeros_like(table), table)
    constant = first_count == total
    table = torch.where(constant, first.float().expand(-1, 256), table)
    return table.gather(1, values).view_as(planes).double()
