"""Digital corruptions of Hendrycks & Dietterich 2019: brightness, contrast, saturate,
pixelate, JPEG compression, elastic transform.

Algorithms as in hendrycks/robustness make_*_c.py; parameters in :mod:`.parameters`. Functions
take float images [B, 3, H, W] in [0, 1], the severity's parameter, one generator per image and
the family.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustbench_bn.data.corruptions import digital_kernels, ops, sampling
from robustbench_bn.data.corruptions.parameters import NATIVE_SIZE
from robustbench_bn.data.corruptions.sampling import Generators


def brightness(
    images: torch.Tensor, shift: float, generators: Generators, family: str, **finishing
):
    """HSV value + shift (skimage rgb2hsv / hsv2rgb). With hue and saturation kept, each
    pixel's RGB scales by V'/V; a black pixel (hue and saturation 0) becomes grey V'."""
    if images.device.type == "cpu" and images.dtype == torch.float32:
        return digital_kernels.brightness(images, float(shift), **finishing)
    return ops.deliver(brightness_by_tensor_operations(images, shift), **finishing)


def brightness_by_tensor_operations(images: torch.Tensor, shift: float) -> torch.Tensor:
    """:func:`brightness` in tensor operations (any device)."""
    value = images.amax(1, keepdim=True)
    new_value = (value + shift).clamp(0, 1)
    scaled = images * (new_value / value.clamp(min=1e-12))
    return torch.where(value > 0, scaled, new_value.expand_as(images))


def saturate(images: torch.Tensor, parameter, generators: Generators, family: str, **finishing):
    """HSV saturation * scale + offset, clipped (skimage rgb2hsv / hsv2rgb), in closed form.

    With hue and value V kept, every channel c moves along V - (V - c) * S'/S. A grey pixel
    (S = 0) has hue 0 (red) in skimage, so a positive offset tints it: R = V, G = B = V(1-S').
    """
    scale, offset = parameter
    if images.device.type == "cpu" and images.dtype == torch.float32:
        return digital_kernels.saturate(images, float(scale), float(offset), **finishing)
    return ops.deliver(saturate_by_tensor_operations(images, scale, offset), **finishing)


def saturate_by_tensor_operations(
    images: torch.Tensor, scale: float, offset: float
) -> torch.Tensor:
    """:func:`saturate` in tensor operations (any device)."""
    value = images.amax(1, keepdim=True)
    minimum = images.amin(1, keepdim=True)
    spread = value - minimum
    saturation = torch.where(value > 0, spread / value.clamp(min=1e-12), torch.zeros_like(value))
    new_saturation = (saturation * scale + offset).clamp(0, 1)
    ratio = new_saturation / saturation.clamp(min=1e-12)
    coloured = value - (value - images) * ratio
    grey_red = value
    grey_others = value * (1 - new_saturation)
    grey = torch.cat([grey_red, grey_others, grey_others], 1)
    return torch.where(spread > 0, coloured, grey)


def contrast(images: torch.Tensor, factor: float, generators: Generators, family: str, **finishing):
    means = images.mean((2, 3), keepdim=True)
    if images.device.type == "cpu" and images.dtype == torch.float32:
        return digital_kernels.contrast(images, means, float(factor), **finishing)
    return ops.deliver((images - means) * factor + means, **finishing)


def pixelate(
    images: torch.Tensor, fraction: float, generators: Generators, family: str, **finishing
):
    """PIL BOX resize to int(S * fraction) and BOX back up (the original; imagecorruptions
    enlarges with NEAREST, which picks the same pixel except at exact ties)."""
    height, width = images.shape[-2:]
    small_height, small_width = int(height * fraction), int(width * fraction)
    if images.device.type == "cpu" and images.dtype == torch.float32:
        # Enlarging, PIL's BOX filter reads one input pixel per output pixel (weight 1): the
        # first column of each enlargement's tap table.
        return digital_kernels.pixelate(
            images,
            ops.sparse_rows(ops.pil_box_matrix(height, small_height)),
            ops.sparse_rows(ops.pil_box_matrix(width, small_width)),
            ops.sparse_rows(ops.pil_box_matrix(small_height, height))[0][:, 0],
            ops.sparse_rows(ops.pil_box_matrix(small_width, width))[0][:, 0],
            **finishing,
        )
    small = ops.pil_box_resize(images, small_height, small_width)
    # Enlarging, PIL's BOX filter reads exactly one input pixel per output pixel (weight 1),
    # which the sparse resize applies as a selection.
    return ops.deliver(ops.pil_box_resize(small, height, width), **finishing)


def jpeg(images: torch.Tensor, quality: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Encode and decode every image as JPEG at ``quality`` (libjpeg-turbo through
    torchvision; the same bytes as the reference's PIL save).

    Returns float32 images on the uint8 grid (level / 255, as ``torch.div`` computes it) on the
    input's device, written into ``out`` when given; ``out`` may be ``images`` itself, since
    each image is read before it is written. The codec always runs on the CPU: the released
    files were written by libjpeg, and GPU JPEG codecs do not promise the same bits.
    """
    from torchvision.io import decode_jpeg, encode_jpeg

    quality = int(quality)
    if out is None:
        out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    on_cpu = images.device.type == "cpu" and out.device.type == "cpu"
    if not (on_cpu and images.dtype == out.dtype == torch.float32 and out.is_contiguous()):
        levels = ops.to_uint8(images).cpu()
        decoded = [decode_jpeg(encode_jpeg(image, quality=quality)) for image in levels]
        return torch.div(torch.stack(decoded).to(out.device), 255, out=out)

    sources, targets = images.contiguous().numpy(), out.numpy()
    batch, channels, height, width = images.shape

    def share(first: int, step: int) -> None:
        # Image by image, from the float image to the float result, so each pass reads what
        # the last one left in the cache; batch-wide passes before and after the codec ran
        # from main memory (0.72-0.80 -> 0.63-0.67 ms per 224 px image here).
        interleaved = torch.empty((height, width, channels), dtype=torch.uint8)
        scratch = interleaved.numpy()
        # libjpeg reads interleaved pixels: given this channel-first view of them, the
        # encoder's own interleaving copy is a no-op.
        pixels = interleaved.permute(2, 0, 1)
        for index in range(first, batch, step):
            digital_kernels.interleaved_levels(sources[index], scratch)
            decoded = decode_jpeg(encode_jpeg(pixels, quality=quality))
            digital_kernels.planes_from_levels(decoded.permute(1, 2, 0).numpy(), targets[index])

    # libjpeg runs without the GIL, so the images share the two threads.
    sampling.run_in_shares(batch, share)
    return out


def jpeg_compression(
    images: torch.Tensor,
    quality: int,
    generators: Generators,
    family: str,
    out: torch.Tensor | None = None,
    finish: int = ops.RAW,
):
    # Decoded levels / 255: on the uint8 grid and in [0, 1] whatever ``finish`` asks.
    return jpeg(images, quality, out)


def elastic_transform(
    images: torch.Tensor, parameter, generators: Generators, family: str, **finishing
):
    """Random affine warp (three points around the centre jittered by U(-jitter, jitter),
    cv2.warpAffine, bilinear, BORDER_REFLECT_101), then a smooth random displacement field
    (uniform(-1, 1) noise, gaussian_filter(sigma, mode reflect, truncate 3) * alpha) resampled
    bilinearly (scipy map_coordinates order 1, mode reflect).

    The parameters are pixels at the family's native size and scale with the image size.
    """
    batch, _, height, width = images.shape
    size_scale = min(height, width) / NATIVE_SIZE[family]
    alpha, sigma, jitter = (float(value) * size_scale for value in parameter)
    affine_draws = sampling.uniform(generators, (3, 2), -jitter, jitter)
    field_draws = sampling.uniform(generators, (2, height, width), -1, 1)

    # The reference builds its points from shape order (rows, cols) but cv2 reads them as
    # (x, y); identical for square images, and kept as is for the others.
    centre = torch.tensor([height // 2, width // 2], dtype=torch.float64)
    half = min(height, width) // 3
    source = torch.stack(
        [
            centre + half,
            torch.stack([centre[0] + half, centre[1] - half]),
            centre - half,
        ]
    ).float()
    moved = (source + affine_draws).double()
    ones = torch.ones(batch, 3, 1, dtype=torch.float64)
    # cv2.getAffineTransform: the 2x3 map taking the source points onto the moved ones.
    forward = torch.linalg.solve(
        torch.cat([source.double().expand(batch, -1, -1), ones], 2), moved
    ).transpose(1, 2)
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(batch, 1, 3)
    inverse = torch.linalg.inv(torch.cat([forward, bottom], 1))
    fields = None
    if alpha != 0:
        # float32 like the draws: the fields are scaled and cast to float32 anyway.
        fields = ops.gaussian_filter(field_draws, sigma, mode="reflect", truncate=3.0)
    if images.device.type == "cpu" and images.dtype == torch.float32:
        return digital_kernels.elastic_resample(images, inverse, fields, alpha, **finishing)
    return ops.deliver(elastic_by_tensor_operations(images, inverse, fields, alpha), **finishing)


def elastic_by_tensor_operations(
    images: torch.Tensor, inverse: torch.Tensor, fields: torch.Tensor | None, alpha: float
) -> torch.Tensor:
    """:func:`elastic_transform`'s two resamplings with torch.grid_sample (any device):
    ``inverse`` [B, 3, 3] maps output pixels (x, y, 1) to affine-warp sources, ``fields``
    [B, 2 (dx, dy), H, W] are the smoothed displacements before scaling by ``alpha``."""
    batch, _, height, width = images.shape
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )
    pixels = torch.stack([cols, rows, torch.ones_like(rows)], -1).view(1, -1, 3)
    mapped = (pixels @ inverse.transpose(1, 2)).view(batch, height, width, 3)
    warped = _resample(images, mapped[..., 1], mapped[..., 0], align_corners=True)
    if fields is None:
        return warped
    fields = (fields * alpha).float()
    return _resample(warped, rows + fields[:, 1], cols + fields[:, 0], align_corners=False)


def _resample(
    images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, *, align_corners: bool
) -> torch.Tensor:
    """Bilinear sampling at pixel coordinates with mirrored borders: about the edge pixels'
    centres (OpenCV's BORDER_REFLECT_101) with ``align_corners``, else about their outer edges
    (scipy's "reflect")."""
    height, width = images.shape[-2:]
    if align_corners:
        grid_x = cols / (width - 1) * 2 - 1
        grid_y = rows / (height - 1) * 2 - 1
    else:
        grid_x = (2 * cols + 1) / width - 1
        grid_y = (2 * rows + 1) / height - 1
    grid = torch.stack([grid_x, grid_y], -1).to(images.dtype)
    return F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=align_corners
    )
