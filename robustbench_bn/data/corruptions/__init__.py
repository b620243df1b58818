"""The suite's corruption engine: the common corruptions of Hendrycks & Dietterich 2019 (ICLR,
"Benchmarking Neural Network Robustness to Common Corruptions and Perturbations"), batched in
torch over float images [B, 3, H, W] in [0, 1] and seeded per image.

``corrupt(images, name, severity, seeds=...)`` draws every random number of an image from a
generator seeded with that image's own seed, so (dataset, index, corruption, severity, seed)
gives the same image whatever the batch (see :func:`image_seeds`). Outputs are truncated to the
uint8 grid like the reference's ``np.uint8`` cast. Parameters, one table per resolution family
(cifar 32 px, tiny_imagenet 64 px, imagenet 224 px), are in :mod:`.parameters`, read from
hendrycks/robustness ``ImageNet-C/create_c/make_{cifar,tinyimagenet,imagenet}_c.py``; the
algorithms are in :mod:`.noise`, :mod:`.blur`, :mod:`.weather`, :mod:`.digital` and
:mod:`.spatter`. docs/CORRUPTIONS.md records how each compares with the reference.

Each corruption is a function ``(images, parameter, generators, family, out=None,
finish=ops.RAW)``: it corrupts the chunk and writes it into ``out`` finished as ``finish`` asks
(clamped, or clamped and quantized). A new corruption can end with
``return ops.deliver(result, out, finish)``; the compiled kernels finish each image while it is
still in the cache instead.

Where things are (each family's torch steps, and beside them the CPU kernels compiled with
numba that the steps call on the CPU):

- ``noise.py``, ``noise_kernels.py``: gaussian_noise, shot_noise, impulse_noise,
  speckle_noise.
- ``blur.py``, ``blur_kernels.py``: defocus_blur, glass_blur, zoom_blur; motion_blur and
  gaussian_blur, whose filters are shared steps of ``ops``.
- ``weather.py``, ``weather_kernels.py``: snow, frost, fog.
- ``digital.py``, ``digital_kernels.py``: brightness, contrast, saturate, elastic_transform,
  pixelate, jpeg_compression (and :func:`jpeg_round_trip`).
- ``spatter.py``, ``spatter_kernels.py``: spatter (Canny edges, the distance transform, water
  and mud).
- ``ops.py``, ``ops_kernels.py``: the shared steps: padding, filters, FFT convolution, motion
  blur (snow's too), zooms, BOX resizing, and finishing (``ops.deliver``).
- ``common_kernels.py``: what every kernel shares (the ``finish`` flags and the row loops that
  apply them, padded rows, extremes, border positions); it imports nothing of the engine.
- ``sampling.py``, ``mersenne.py``: per-image generators and the thread pool that runs draws
  and kernels; MT19937 draws compiled (torch's numbers, faster).
- ``parameters.py``: the reference's parameters, one table per family.
- ``allocation.py``: the heap setting that lets batch-sized buffers reuse freed memory.

Adding a corruption: write its torch steps first, in the family's module (they run on every
device and are the definition), its parameters in :mod:`.parameters`, and register it below
(``_FUNCTIONS`` and the name tuples). Add a compiled kernel to the family's ``*_kernels``
module only with a measured reason (``scripts/benchmark_corruptions.py`` before and after),
keep the torch steps as its twin, and test the two against each other in
tests/test_corruption_fast_paths.py. Kernel modules import ``common_kernels``, ``sampling``,
``mersenne`` and ``ops_kernels``, never ``ops`` or a corruption module, so the engine's imports
stay free of cycles; ``scripts/corruption_fingerprints.py`` checks that a change moves no bit.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
from collections.abc import Callable

import torch

from robustbench_bn.data.corruptions import (
    allocation,
    blur,
    digital,
    noise,
    ops,
    spatter,
    weather,
)
from robustbench_bn.data.corruptions.parameters import TABLES
from robustbench_bn.data.corruptions.sampling import generators_for
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
#: The benchmark's four held-out validation corruptions.
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS: tuple[str, ...] = BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS
FAMILIES: tuple[str, ...] = ("cifar", "tiny_imagenet", "imagenet")
#: Corruptions whose output depends on the seed; the others are deterministic.
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
        "spatter",
    }
)
#: Quality of the JPEG files of the released ImageNet-C / Tiny-ImageNet-C.
RELEASE_JPEG_QUALITY = 85

CorruptionFunction = Callable[..., torch.Tensor]

_FUNCTIONS: dict[str, CorruptionFunction] = {
    "gaussian_noise": noise.gaussian_noise,
    "shot_noise": noise.shot_noise,
    "impulse_noise": noise.impulse_noise,
    "speckle_noise": noise.speckle_noise,
    "defocus_blur": blur.defocus_blur,
    "glass_blur": blur.glass_blur,
    "motion_blur": blur.motion_blur,
    "zoom_blur": blur.zoom_blur,
    "gaussian_blur": blur.gaussian_blur,
    "snow": weather.snow,
    "frost": weather.frost,
    "fog": weather.fog,
    "brightness": digital.brightness,
    "contrast": digital.contrast,
    "saturate": digital.saturate,
    "elastic_transform": digital.elastic_transform,
    "pixelate": digital.pixelate,
    "jpeg_compression": digital.jpeg_compression,
    "spatter": spatter.spatter,
}

#: Images per internal chunk are capped at this many pixels, bounding peak memory (FFT
#: buffers, pointer tables) at large sizes. Chunking never changes results: each image's
#: randomness is its own.
_CHUNK_PIXELS = 1 << 18
#: Larger chunks for corruptions done mostly in compiled kernels or per-image draws, which
#: keep little in the cache between passes: fewer thread-pool rounds with evener shares
#: (2-3 images per thread at 224 px otherwise). Measured in one process, interleaved, at
#: 224 px (ms per image, 2^18 -> this size): motion blur 2.46 -> 1.38, zoom blur 7.07 -> 4.41,
#: elastic 5.20 -> 3.71, fog 2.61 -> 1.93, impulse noise 4.12 -> 3.06, spatter 6.94 -> 5.46;
#: snow 2.40 -> 1.86, contrast 0.43 -> 0.35 once compiled (brightness, saturate, pixelate
#: within noise, kept with them). Defocus blur's FFTs run image by image on the threads:
#: 2.0 -> 1.5 ms per image with whole batches. Frost (in torch operations slower with larger
#: chunks) once compiled: 0.207 -> 0.145 ms per image.
_CHUNK_PIXELS_FOR = {
    **dict.fromkeys(
        (
            "defocus_blur",
            "motion_blur",
            "zoom_blur",
            "elastic_transform",
            "fog",
            "gaussian_noise",
            "snow",
            "pixelate",
            "brightness",
            "saturate",
            "contrast",
            "frost",
        ),
        1 << 22,
    ),
    **dict.fromkeys(
        (
            "impulse_noise",
            "shot_noise",
            "speckle_noise",
            "glass_blur",
            "gaussian_blur",
            "spatter",
        ),
        1 << 20,
    ),
}
#: Corruptions done image by image with no batch-sized intermediates, which chunking would
#: only split into more, unevenly shared, thread-pool rounds.
_UNCHUNKED = frozenset({"jpeg_compression"})


def family_for_size(image_size: int) -> str:
    """The parameter family for an image side: below 48 px "cifar" (made for 32 px), below
    128 px "tiny_imagenet" (64 px), otherwise "imagenet" (224 px). The thresholds sit between
    the native sizes, near their geometric means (45 and 120)."""
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
            f"Unknown corruption {corruption!r}.{hint} Expected one of: "
            f"{', '.join(ALL_CORRUPTIONS)}."
        )


def _check_severity(severity: object) -> None:
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ConfigurationError(f"Severity must be an integer from 1 to 5, got {severity!r}.")


def _check_images(images: object) -> None:
    if (
        not isinstance(images, torch.Tensor)
        or images.dim() != 4
        or images.shape[1] != 3
        or not images.is_floating_point()
    ):
        description = (
            f"{images.dtype} tensor of shape {tuple(images.shape)}"
            if isinstance(images, torch.Tensor)
            else type(images).__name__
        )
        raise ConfigurationError(
            f"Expected float images of shape [B,3,H,W] with values in [0, 1], got {description}."
        )
    if min(images.shape[-2:]) < 32:
        raise ConfigurationError(
            f"Images must be at least 32x32 pixels, got {tuple(images.shape[-2:])}."
        )


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ConfigurationError(
            f"Unknown corruption family {family!r}; expected one of {', '.join(FAMILIES)}."
        )


def image_seeds(
    dataset: str, corruption: str, severity: int, seed: int, indices: torch.Tensor
) -> torch.Tensor:
    """One int64 seed (non-negative, 63 bits) per image index.

    BLAKE2b of "dataset|corruption|severity|seed" gives a base; splitmix64 of base + index
    spreads neighbouring indices apart. Pure integer arithmetic on hashlib output, so seeds are
    the same on every platform, process and Python version.
    """
    key = hashlib.blake2b(f"{dataset}|{corruption}|{severity}|{seed}".encode(), digest_size=8)
    base = int.from_bytes(key.digest(), "little")
    mask = 0xFFFFFFFFFFFFFFFF
    seeds = []
    for index in torch.as_tensor(indices).reshape(-1).tolist():
        value = (base + 0x9E3779B97F4A7C15 * (int(index) + 1)) & mask
        value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & mask
        value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & mask
        seeds.append((value ^ (value >> 31)) >> 1)
    return torch.tensor(seeds, dtype=torch.int64)


def jpeg_round_trip(images: torch.Tensor, quality: int = RELEASE_JPEG_QUALITY) -> torch.Tensor:
    """Save and reload float images [B,3,H,W] in [0, 1] as JPEG at ``quality``.

    The released ImageNet-C and Tiny-ImageNet-C store every corrupted image as a quality-85
    JPEG, which changes accuracy measurably (hendrycks/robustness issues #14 and #16); apply
    this after :func:`corrupt` to regenerate images the way the release stores them.
    """
    _check_images(images)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigurationError(f"JPEG quality must be an integer from 1 to 100, got {quality!r}.")
    device = images.device
    return digital.jpeg(images.detach().float().cpu(), quality).to(device)


def corrupt(
    images: torch.Tensor,
    corruption: str,
    severity: int,
    *,
    seeds: torch.Tensor,
    family: str | None = None,
    quantize: bool = True,
    jpeg_round_trip: bool = False,
    device: str | torch.device | None = "cpu",
) -> torch.Tensor:
    """Corrupt float images [B,3,H,W] in [0, 1] (H, W >= 32) at ``severity`` 1..5.

    ``seeds`` holds one integer seed per image (see :func:`image_seeds`); all of an image's
    randomness comes from it. ``family`` picks the parameter table (default: by image height,
    :func:`family_for_size`). ``quantize`` truncates the result onto the uint8 grid like the
    reference; ``jpeg_round_trip`` also stores and reloads it as a quality-85 JPEG like the
    released ImageNet-C files. Returns float32 images of the same shape in [0, 1] on the
    input's device.

    ``device`` is where the work runs: "cpu" (the default), a device such as "cuda", or None
    for the input's device. Random numbers come from per-image CPU generators on every device,
    so a GPU draws the same noise; only floating-point rounding in filters and resampling
    differs, which can move a pixel by one uint8 step after quantization.
    """
    check_corruption_name(corruption)
    _check_severity(severity)
    _check_images(images)
    seeds = torch.as_tensor(seeds).reshape(-1)
    if len(seeds) != images.shape[0]:
        raise ConfigurationError(
            f"Expected one seed per image: got {len(seeds)} seeds for {images.shape[0]} images."
        )
    family = family or family_for_size(int(images.shape[-2]))
    _check_family(family)
    parameter = TABLES[family][corruption][severity - 1]
    function = _FUNCTIONS[corruption]
    output_device = images.device
    work_device = torch.device(device) if device is not None else images.device
    clean = images.detach().to(work_device, torch.float32)
    if work_device.type == "cpu":
        # Batch-sized buffers reuse freed heap memory instead of page-faulting fresh pages
        # on every call (see :mod:`.allocation`; once per process, no number changes).
        allocation.keep_freed_memory()
    chunk_pixels = _CHUNK_PIXELS_FOR.get(corruption, _CHUNK_PIXELS)
    chunk = max(1, chunk_pixels // (clean.shape[-1] * clean.shape[-2]))
    if corruption in _UNCHUNKED and not jpeg_round_trip:
        chunk = len(clean)
    result = torch.empty(clean.shape, dtype=torch.float32, device=work_device)
    finish = ops.QUANTIZED if quantize or jpeg_round_trip else ops.CLAMPED
    # The device context makes tensors the corruptions create land on the work device; it is
    # a Python-level function mode that taxes every torch call (fog makes thousands), so it is
    # entered only when the default device is not already the work device.
    placement = (
        contextlib.nullcontext()
        if torch.get_default_device() == work_device
        else torch.device(work_device)
    )
    with torch.no_grad(), placement:
        # Chunks of about 3 MB per float tensor (by default) keep a corruption's intermediates in
        # the CPU cache; whole 224 px batches ran several passes from main memory instead.
        # The corruptions never write to their input, so on the CPU images already in [0, 1]
        # (every decoded dataset) go in as views, saving a copy per chunk.
        in_range = False
        if work_device.type == "cpu" and clean.numel():
            lowest, highest = torch.aminmax(clean)
            in_range = bool(lowest >= 0) and bool(highest <= 1)
        for start in range(0, len(clean), chunk):
            batch = clean[start : start + chunk]
            if not in_range:
                batch = batch.clamp(0, 1)
            generators = generators_for(seeds[start : start + chunk])
            target = result[start : start + chunk]
            # Every corruption writes its chunk into the result, clamped (and quantized):
            # the compiled kernels image by image while each is in the cache, the others
            # through one finishing pass (:func:`.ops.deliver`).
            function(batch, parameter, generators, family, out=target, finish=finish)
            if jpeg_round_trip:
                digital.jpeg(target, RELEASE_JPEG_QUALITY, out=target)
    return result.to(output_device)
