"""Corruption parameters per severity (1..5) and resolution family.

Values from Hendrycks & Dietterich 2019 (ICLR, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations"), as read from hendrycks/robustness
(ImageNet-C/create_c/make_cifar_c.py) and recorded in the suite's CORRUPTIONS reference.
One table per family; a family missing here is reported as not available.
"""

from __future__ import annotations

CIFAR_ZOOM_LENGTHS = (7, 12, 16, 21, 26)

CIFAR: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    # (radius, alias_blur)
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    # (sigma, max_delta, iterations)
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    # (radius, sigma)
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    # zoom factors 1.00, 1.01, ... (numpy's float arange includes the end point here)
    "zoom_blur": tuple(
        tuple(round(1 + 0.01 * i, 2) for i in range(length)) for length in CIFAR_ZOOM_LENGTHS
    ),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    # (mean, std, zoom, threshold, blur radius, blur sigma, image weight)
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    # (image weight, frost weight)
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    # (amount, wibble decay)
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    # (alpha, sigma, affine jitter) as fractions of the image size (32 px in the reference)
    "elastic_transform": (
        (0, 0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    ),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg_compression": (80, 65, 58, 50, 40),
    # (scale, offset) of the HSV saturation
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
}

#: Frost images are shrunk by this factor before cropping (make_cifar_c.py: 0.2).
FROST_RESIZE = {"cifar": 0.2}

TABLES: dict[str, dict[str, tuple]] = {"cifar": CIFAR}
