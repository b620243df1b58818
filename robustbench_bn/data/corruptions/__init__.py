"""The suite's corruption engine: the common corruptions of Hendrycks & Dietterich 2019 (ICLR,
"Benchmarking Neural Network Robustness to Common Corruptions and Perturbations"), batched
in torch over [B,3,H,W] float images in [0, 1], seeded per image.

``corrupt(images, name, severity, seeds=...)`` draws every random number of an image from a
generator seeded by that image's own seed, so (dataset, index, corruption, severity, seed)
always gives the same image whatever the batch (see :func:`image_seeds`). Outputs are
truncated to the uint8 grid like the reference's ``np.uint8`` cast. Parameters per family are
in :mod:`.parameters`.
"""

from __future__ import annotations

import difflib
import hashlib

import torch

from robustbench_bn.data.corruptions import functions
from robustbench_bn.data.corruptions.parameters import TABLES
from robustbench_bn.errors import ConfigurationError

BENCHMARK_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
#: The extra corruptions of the benchmark's validation set (spatter is not implemented yet).
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "saturate")
ALL_CORRUPTIONS = BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS
FAMILIES = ("cifar", "tiny_imagenet", "imagenet")
#: Corruptions whose output depends on the random seed.
RANDOM_CORRUPTIONS = frozenset(
    {
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "speckle_noise",
        "glass_blur",
        "motion_blur",
        "snow",
        "frost",
        "fog",
        "elastic_transform",
    }
)

_FUNCTIONS = {
    "gaussian_noise": functions.gaussian_noise,
    "shot_noise": functions.shot_noise,
    "impulse_noise": functions.impulse_noise,
    "speckle_noise": functions.speckle_noise,
    "defocus_blur": functions.defocus_blur,
    "glass_blur": functions.glass_blur,
    "motion_blur": functions.motion_blur,
    "zoom_blur": functions.zoom_blur,
    "gaussian_blur": functions.gaussian_blur,
    "snow": functions.snow,
    "frost": functions.frost_cifar,
    "fog": functions.fog,
    "brightness": functions.brightness,
    "contrast": functions.contrast,
    "saturate": functions.saturate,
    "elastic_transform": functions.elastic_transform,
    "pixelate": functions.pixelate,
    "jpeg_compression": functions.jpeg_compression,
}


def family_for_size(image_size: int) -> str:
    """The parameter family the reference uses for this image size: <48 px cifar (32),
    <128 px tiny_imagenet (64), else imagenet (224)."""
    if image_size < 48:
        return "cifar"
    if image_size < 128:
        return "tiny_imagenet"
    return "imagenet"


def check_corruption_name(corruption: str) -> None:
    if corruption not in ALL_CORRUPTIONS:
        close = difflib.get_close_matches(str(corruption), ALL_CORRUPTIONS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigurationError(
            f"Unknown corruption {corruption!r}.{hint} Available: {', '.join(ALL_CORRUPTIONS)}."
        )


def image_seeds(
    dataset: str, corruption: str, severity: int, seed: int, indices: torch.Tensor
) -> torch.Tensor:
    """One int64 seed per image index, stable across processes, platforms and Python versions."""
    key = hashlib.blake2b(f"{dataset}|{corruption}|{severity}|{seed}".encode(), digest_size=8)
    base = int.from_bytes(key.digest(), "little")
    seeds = []
    for index in indices.tolist():
        # splitmix64 of (base + index): neighbouring indices get unrelated seeds.
        value = (base + 0x9E3779B97F4A7C15 * (int(index) + 1)) & 0xFFFFFFFFFFFFFFFF
        value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        seeds.append((value ^ (value >> 31)) >> 1)
    return torch.tensor(seeds, dtype=torch.int64)


def corrupt(
    images: torch.Tensor,
    corruption: str,
    severity: int,
    *,
    seeds: torch.Tensor,
    family: str | None = None,
    quantize: bool = True,
) -> torch.Tensor:
    """Corrupt float images [B,3,H,W] in [0, 1]; ``seeds`` holds one int seed per image."""
    check_corruption_name(corruption)
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ConfigurationError(f"Severity must be an integer from 1 to 5, got {severity!r}.")
    if (
        not isinstance(images, torch.Tensor)
        or images.dim() != 4
        or images.shape[1] != 3
        or not images.is_floating_point()
    ):
        raise ConfigurationError(
            "corrupt() expects float images of shape [B,3,H,W] in [0, 1], got "
            f"{getattr(images, 'dtype', type(images))} {tuple(getattr(images, 'shape', ()))}."
        )
    if min(images.shape[-2:]) < 32:
        raise ConfigurationError(f"Images must be at least 32x32, got {tuple(images.shape[-2:])}.")
    if len(seeds) != images.shape[0]:
        raise ConfigurationError(f"Got {len(seeds)} seeds for {images.shape[0]} images.")
    family = family or family_for_size(int(images.shape[-1]))
    if family not in FAMILIES:
        raise ConfigurationError(
            f"Unknown corruption family {family!r}; expected one of {FAMILIES}."
        )
    if family not in TABLES:
        raise ConfigurationError(
            f"The {family} parameter table is not available yet; available: {tuple(TABLES)}. "
            "Use dataset.family=cifar."
        )
    parameter = TABLES[family][corruption][severity - 1]
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds.tolist()]
    device = images.device
    with torch.no_grad():
        corrupted = _FUNCTIONS[corruption](images.detach().float().cpu(), parameter, generators)
        corrupted = corrupted.clamp_(0, 1)
        if quantize:
            corrupted = torch.floor(corrupted * 255) / 255
    return corrupted.to(device)
