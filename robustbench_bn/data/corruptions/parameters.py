"""Corruption parameters per severity (1..5), one table per resolution family.

Values are those of Hendrycks & Dietterich 2019 (ICLR, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations"), read from hendrycks/robustness
``ImageNet-C/create_c/``: ``make_imagenet_c.py`` (imagenet, 224 px), ``make_tinyimagenet_c.py``
(tiny_imagenet, 64 px) and ``make_cifar_c.py`` (cifar, 32 px), as recorded in the suite's
CORRUPTIONS reference. Adding a family is adding a table here and a size to
:data:`NATIVE_SIZE`; the algorithms take every size-dependent value from these tables.
"""

from __future__ import annotations

import math
from typing import Any


def numpy_arange(start: float, stop: float, step: float) -> tuple[float, ...]:
    """The values of ``numpy.arange(start, stop, step)`` for floats, computed the same way.

    The reference writes zoom_blur's factors as float aranges whose rounding sometimes keeps
    the end point (``arange(1, 1.06, 0.01)`` has 7 values), so the lists are reproduced with
    numpy's own length and value formulas rather than typed out.
    """
    length = math.ceil((stop - start) / step)
    # numpy fills with start + i * ((start + step) - start), not start + i * step.
    delta = (start + step) - start
    return tuple(start + index * delta for index in range(length))


#: The image size each family's table was written for. elastic_transform's pixel distances
#: are scaled by image size / native size; every other value applies as is at any size, as in
#: the imagecorruptions package.
NATIVE_SIZE = {"cifar": 32, "tiny_imagenet": 64, "imagenet": 224}

#: Frost photographs are shrunk by this factor before the random crop (make_cifar_c.py 0.2,
#: make_tinyimagenet_c.py 0.3, make_imagenet_c.py none).
FROST_RESIZE = {"cifar": 0.2, "tiny_imagenet": 0.3, "imagenet": 1.0}

_IMAGENET_ELASTIC = 244  # the reference's typo for 224, kept: its values define ImageNet-C

IMAGENET: dict[str, tuple[Any, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),
    # (disk radius, anti-alias sigma)
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    # (sigma, max pixel shift, iterations)
    "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
    # (radius, sigma)
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
    "zoom_blur": (
        numpy_arange(1, 1.11, 0.01),
        numpy_arange(1, 1.16, 0.01),
        numpy_arange(1, 1.21, 0.02),
        numpy_arange(1, 1.26, 0.02),
        numpy_arange(1, 1.31, 0.03),
    ),
    "gaussian_blur": (1, 2, 3, 4, 6),
    # (mean, std, zoom, threshold, blur radius, blur sigma, image weight)
    "snow": (
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ),
    # (image weight, frost weight)
    "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
    # (amount, wibble decay)
    "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    # (displacement scale alpha, displacement smoothing sigma, affine jitter), in pixels
    "elastic_transform": (
        (_IMAGENET_ELASTIC * 2, _IMAGENET_ELASTIC * 0.7, _IMAGENET_ELASTIC * 0.1),
        (_IMAGENET_ELASTIC * 2, _IMAGENET_ELASTIC * 0.08, _IMAGENET_ELASTIC * 0.2),
        (_IMAGENET_ELASTIC * 0.05, _IMAGENET_ELASTIC * 0.01, _IMAGENET_ELASTIC * 0.02),
        (_IMAGENET_ELASTIC * 0.07, _IMAGENET_ELASTIC * 0.01, _IMAGENET_ELASTIC * 0.02),
        (_IMAGENET_ELASTIC * 0.12, _IMAGENET_ELASTIC * 0.01, _IMAGENET_ELASTIC * 0.02),
    ),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
    "jpeg_compression": (25, 18, 15, 10, 7),
    # (liquid mean, liquid std, liquid sigma, threshold, intensity or mud sigma, mode 0 water /
    # 1 mud)
    "spatter": (
        (0.65, 0.3, 4, 0.69, 0.6, 0),
        (0.65, 0.3, 3, 0.68, 0.6, 0),
        (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1),
        (0.67, 0.4, 1, 0.65, 1.5, 1),
    ),
    # (saturation scale, saturation offset)
    "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
}

_TINY = NATIVE_SIZE["tiny_imagenet"]

TINY_IMAGENET: dict[str, tuple[Any, ...]] = {
    "gaussian_noise": (0.04, 0.08, 0.12, 0.15, 0.18),
    "shot_noise": (250, 100, 50, 30, 15),
    "impulse_noise": (0.01, 0.02, 0.05, 0.08, 0.14),
    "speckle_noise": (0.15, 0.2, 0.25, 0.3, 0.35),
    "defocus_blur": ((0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)),
    "glass_blur": ((0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)),
    "motion_blur": ((10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)),
    "zoom_blur": (
        numpy_arange(1, 1.06, 0.01),
        numpy_arange(1, 1.11, 0.01),
        numpy_arange(1, 1.16, 0.01),
        numpy_arange(1, 1.21, 0.01),
        numpy_arange(1, 1.26, 0.01),
    ),
    "gaussian_blur": (0.5, 0.75, 1, 1.25, 1.5),
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.8),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.8),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6),
    ),
    "frost": ((1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)),
    "fog": ((0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "elastic_transform": (
        (_TINY * 0, _TINY * 0, _TINY * 0.08),
        (_TINY * 0.05, _TINY * 0.3, _TINY * 0.06),
        (_TINY * 0.1, _TINY * 0.08, _TINY * 0.06),
        (_TINY * 0.1, _TINY * 0.03, _TINY * 0.03),
        (_TINY * 0.16, _TINY * 0.03, _TINY * 0.02),
    ),
    "pixelate": (0.9, 0.8, 0.7, 0.6, 0.5),
    "jpeg_compression": (65, 58, 50, 40, 25),
    "spatter": (
        (0.62, 0.1, 0.7, 0.7, 0.6, 0),
        (0.65, 0.1, 0.8, 0.7, 0.6, 0),
        (0.65, 0.3, 1, 0.69, 0.6, 0),
        (0.65, 0.1, 0.7, 0.68, 0.6, 1),
        (0.65, 0.1, 0.5, 0.67, 0.6, 1),
    ),
    "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (30, 0.2)),
}

_CIFAR = NATIVE_SIZE["cifar"]

CIFAR: dict[str, tuple[Any, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "zoom_blur": (
        numpy_arange(1, 1.06, 0.01),
        numpy_arange(1, 1.11, 0.01),
        numpy_arange(1, 1.16, 0.01),
        numpy_arange(1, 1.21, 0.01),
        numpy_arange(1, 1.26, 0.01),
    ),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "elastic_transform": (
        (_CIFAR * 0, _CIFAR * 0, _CIFAR * 0.08),
        (_CIFAR * 0.05, _CIFAR * 0.2, _CIFAR * 0.07),
        (_CIFAR * 0.08, _CIFAR * 0.06, _CIFAR * 0.06),
        (_CIFAR * 0.1, _CIFAR * 0.04, _CIFAR * 0.05),
        (_CIFAR * 0.1, _CIFAR * 0.03, _CIFAR * 0.03),
    ),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg_compression": (80, 65, 58, 50, 40),
    "spatter": (
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
}

TABLES: dict[str, dict[str, tuple[Any, ...]]] = {
    "cifar": CIFAR,
    "tiny_imagenet": TINY_IMAGENET,
    "imagenet": IMAGENET,
}
