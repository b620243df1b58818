"""The corruption engine: shape, range, uint8 grid, determinism, seed dependence, batch
independence, strength growing with severity, parameter tables, and clear errors."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustbench_bn.data import corruptions
from robustbench_bn.data.corruptions import (
    ALL_CORRUPTIONS,
    BENCHMARK_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    FAMILIES,
    RANDOM_CORRUPTIONS,
    corrupt,
    family_for_size,
    image_seeds,
)
from robustbench_bn.data.corruptions.parameters import TABLES

FASHION_TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")

#: Corruptions whose reference parameter table is itself not monotone in mean absolute change
#: (measured values in docs/CORRUPTIONS.md): these only need to corrupt clearly at the top
#: severities.
NOT_MONOTONE_BY_DESIGN = {
    "cifar": {"glass_blur", "frost", "elastic_transform", "saturate", "spatter", "pixelate"},
    "tiny_imagenet": {
        "glass_blur",
        "frost",
        "elastic_transform",
        "saturate",
        "spatter",
        "pixelate",
    },
}


def _fashion_images(count: int) -> torch.Tensor:
    """The first Fashion-MNIST test images (IDX: 16-byte header, uint8 28x28), padded to
    32x32 and repeated over 3 channels; synthetic ones if the Debian dataset is missing."""
    if not FASHION_TEST_IMAGES.is_file():
        generator = torch.Generator().manual_seed(0)
        blocks = torch.randint(0, 256, (count, 1, 8, 8), generator=generator).float() / 255
        blocks = blocks.repeat_interleave(4, -1).repeat_interleave(4, -2)
        return blocks.expand(-1, 3, -1, -1).contiguous()
    with gzip.open(FASHION_TEST_IMAGES, "rb") as stream:
        header = stream.read(16)
        data = stream.read(count * 28 * 28)
    assert int.from_bytes(header[:4], "big") == 2051
    pixels = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(count, 1, 28, 28)
    return F.pad(pixels.float() / 255, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()


def _colourful_images(size: int) -> torch.Tensor:
    """Synthetic colour images on the uint8 grid: a hue wheel with a dark-to-bright ramp, and
    colour bars with sharp edges over a smooth gradient."""
    coordinates = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(coordinates, coordinates, indexing="ij")
    angle = torch.atan2(y, x)
    radius = (x**2 + y**2).sqrt().clamp(max=1)
    wheel = torch.stack([0.5 + 0.5 * torch.cos(angle + shift) for shift in (0, 2.1, 4.2)])
    wheel = wheel * (0.2 + 0.8 * radius)
    bars = torch.zeros(3, size, size)
    palette = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.2, 0.3, 0.9], [0.9, 0.9, 0.2]])
    for index, colour in enumerate(palette):
        bars[:, :, index * size // 4 : (index + 1) * size // 4] = colour.view(3, 1, 1)
    bars = bars * (0.4 + 0.6 * (y + 1) / 2)
    return torch.floor(torch.stack([wheel, bars]) * 255) / 255


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """The batches here are small: one thread avoids thread start-up and contention costs
    that dominate on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """A CIFAR-sized batch: 10 Fashion-MNIST images and 2 colourful synthetic ones."""
    return torch.cat([_fashion_images(10), _colourful_images(32)])


def _seeds(name: str, severity: int, count: int, seed: int = 0) -> torch.Tensor:
    return image_seeds("test", name, severity, seed, torch.arange(count))


def test_public_lists():
    assert len(BENCHMARK_CORRUPTIONS) == 15 and len(EXTRA_CORRUPTIONS) == 4
    assert ALL_CORRUPTIONS == BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS
    assert RANDOM_CORRUPTIONS.issubset(ALL_CORRUPTIONS)
    for family in FAMILIES:
        assert set(TABLES[family]) == set(ALL_CORRUPTIONS)
        assert all(len(values) == 5 for values in TABLES[family].values())


def test_family_for_size():
    assert [family_for_size(size) for size in (32, 47, 48, 64, 127, 128, 224, 512)] == [
        "cifar",
        "cifar",
        "tiny_imagenet",
        "tiny_imagenet",
        "tiny_imagenet",
        "imagenet",
        "imagenet",
        "imagenet",
    ]


def test_zoom_factors_are_numpys_float_aranges():
    numpy = pytest.importorskip("numpy")
    cifar = TABLES["cifar"]["zoom_blur"]
    assert [len(factors) for factors in cifar] == [7, 12, 16, 21, 26]
    assert list(cifar[0]) == numpy.arange(1, 1.06, 0.01).tolist()
    imagenet = TABLES["imagenet"]["zoom_blur"]
    assert list(imagenet[4]) == numpy.arange(1, 1.31, 0.03).tolist()


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_shape_dtype_range_and_uint8_grid(name, images):
    for severity in (1, 5):
        out = corrupt(images, name, severity, seeds=_seeds(name, severity, len(images)))
        assert out.shape == images.shape and out.dtype == torch.float32
        assert float(out.min()) >= 0 and float(out.max()) <= 1
        assert torch.equal(out, torch.round(out * 255) / 255)
    raw = corrupt(images[:2], name, 3, seeds=_seeds(name, 3, 2), quantize=False)
    assert float(raw.min()) >= 0 and float(raw.max()) <= 1


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_other_sizes_and_families(name):
    # A Tiny-ImageNet-sized and a non-square image, each with its size's family.
    for height, width in ((64, 64), (40, 56)):
        batch = F.interpolate(_colourful_images(32), size=(height, width), mode="bilinear")
        batch = torch.floor(batch * 255) / 255
        out = corrupt(batch, name, 4, seeds=_seeds(name, 4, 2))
        assert out.shape == batch.shape
        assert float(out.min()) >= 0 and float(out.max()) <= 1


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_deterministic_for_a_seed_and_batch_independent(name, images):
    seeds = _seeds(name, 3, len(images))
    first = corrupt(images, name, 3, seeds=seeds)
    assert torch.equal(first, corrupt(images, name, 3, seeds=seeds))
    alone = corrupt(images[10:11], name, 3, seeds=seeds[10:11])
    assert torch.equal(alone[0], first[10])
    halves = torch.cat(
        [
            corrupt(images[:5], name, 3, seeds=seeds[:5]),
            corrupt(images[5:], name, 3, seeds=seeds[5:]),
        ]
    )
    assert torch.equal(halves, first)


@pytest.mark.parametrize("name", sorted(RANDOM_CORRUPTIONS))
def test_random_corruptions_vary_with_the_seed(name, images):
    first = corrupt(images, name, 5, seeds=_seeds(name, 5, len(images), seed=0))
    other = corrupt(images, name, 5, seeds=_seeds(name, 5, len(images), seed=1))
    assert not torch.equal(first, other)


@pytest.mark.parametrize("name", sorted(set(ALL_CORRUPTIONS) - RANDOM_CORRUPTIONS))
def test_deterministic_corruptions_ignore_the_seed(name, images):
    first = corrupt(images, name, 5, seeds=_seeds(name, 5, len(images), seed=0))
    other = corrupt(images, name, 5, seeds=_seeds(name, 5, len(images), seed=1))
    assert torch.equal(first, other)


def _changes(name: str, batch: torch.Tensor, family: str) -> list[float]:
    # The same seeds at every severity: random draws are shared, only parameters differ.
    seeds = _seeds(name, 1, len(batch))
    return [
        float((corrupt(batch, name, s, seeds=seeds, family=family) - batch).abs().mean())
        for s in range(1, 6)
    ]


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_strength_grows_with_severity(name, images):
    tiny = F.interpolate(images, size=(64, 64), mode="bilinear").clamp(0, 1)
    for family, batch in (("cifar", images), ("tiny_imagenet", tiny)):
        changes = _changes(name, batch, family)
        assert changes[-1] > 0.005, (family, changes)
        if name in NOT_MONOTONE_BY_DESIGN[family]:
            continue
        assert all(b >= a - 1e-4 for a, b in zip(changes, changes[1:], strict=False)), (
            family,
            changes,
        )
        assert changes[-1] > changes[0], (family, changes)


def test_strength_grows_with_severity_with_imagenet_parameters():
    batch = F.interpolate(_colourful_images(32), size=(128, 128), mode="bilinear")
    batch = torch.floor(batch * 255) / 255
    for name in ("gaussian_noise", "defocus_blur", "zoom_blur", "fog", "contrast", "pixelate"):
        changes = _changes(name, batch, "imagenet")
        assert all(b >= a - 1e-4 for a, b in zip(changes, changes[1:], strict=False)), (
            name,
            changes,
        )


def test_image_seeds_differ_per_index_and_key_and_are_stable():
    seeds = image_seeds("d", "fog", 1, 0, torch.arange(1000))
    assert seeds.dtype == torch.int64 and len(set(seeds.tolist())) == 1000
    assert int(seeds.min()) >= 0
    assert not torch.equal(seeds, image_seeds("d", "fog", 2, 0, torch.arange(1000)))
    assert not torch.equal(seeds, image_seeds("d", "fog", 1, 1, torch.arange(1000)))
    assert torch.equal(seeds[10:20], image_seeds("d", "fog", 1, 0, torch.arange(10, 20)))
    # Fixed values: a change here silently changes every corrupted dataset.
    assert image_seeds("fashion_mnist_c", "fog", 3, 0, torch.tensor([0, 1])).tolist() == [
        int(value) for value in _expected_seeds()
    ]


def _expected_seeds() -> list[int]:
    import hashlib

    base = int.from_bytes(
        hashlib.blake2b(b"fashion_mnist_c|fog|3|0", digest_size=8).digest(), "little"
    )
    mask = (1 << 64) - 1
    values = []
    for index in (0, 1):
        value = (base + 0x9E3779B97F4A7C15 * (index + 1)) & mask
        value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & mask
        value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & mask
        values.append((value ^ (value >> 31)) >> 1)
    return values


def test_jpeg_round_trip_changes_images_slightly(images):
    again = corruptions.jpeg_round_trip(images)
    assert again.shape == images.shape and again.dtype == torch.float32
    assert 0 < float((again - images).abs().mean()) < 0.03
    direct = corrupt(images, "contrast", 2, seeds=_seeds("contrast", 2, len(images)))
    stored = corrupt(
        images, "contrast", 2, seeds=_seeds("contrast", 2, len(images)), jpeg_round_trip=True
    )
    assert torch.equal(stored, corruptions.jpeg_round_trip(direct))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"corruption": "gausian_noise"}, "Did you mean 'gaussian_noise'"),
        ({"corruption": "rain"}, "Expected one of: gaussian_noise, shot_noise"),
        ({"severity": 0}, "from 1 to 5"),
        ({"severity": 6}, "from 1 to 5"),
        ({"severity": 2.0}, "from 1 to 5"),
        ({"severity": True}, "from 1 to 5"),
        ({"images": torch.zeros(2, 1, 32, 32)}, r"\[B,3,H,W\]"),
        ({"images": torch.zeros(3, 32, 32)}, r"\[B,3,H,W\]"),
        ({"images": torch.zeros(2, 3, 32, 32, dtype=torch.uint8)}, r"\[B,3,H,W\].*uint8"),
        ({"images": torch.zeros(2, 3, 16, 16)}, "at least 32x32"),
        ({"family": "mnist"}, "Unknown corruption family 'mnist'; expected one of cifar"),
        ({"seeds": torch.arange(3)}, "one seed per image"),
    ],
)
def test_bad_arguments_are_explained(kwargs, message):
    arguments = {
        "images": torch.rand(2, 3, 32, 32),
        "corruption": "fog",
        "severity": 1,
        "seeds": torch.arange(2),
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        corrupt(
            arguments.pop("images"),
            arguments.pop("corruption"),
            arguments.pop("severity"),
            **arguments,
        )


def test_glass_blur_matches_the_sequential_sweep():
    """The pointer-doubling sweep equals the reference's in-place loop, move for move."""
    from robustbench_bn.data.corruptions import ops, sampling

    batch = _colourful_images(32)[:1]
    sigma, delta, iterations = TABLES["imagenet"]["glass_blur"][4]
    seeds = torch.tensor([123])
    fast = corrupt(batch, "glass_blur", 5, seeds=seeds, family="imagenet", quantize=False)

    pixels = ops.quantize(ops.gaussian_filter(batch, sigma, mode="nearest"))[0].clone()
    size = 32
    shifts = sampling.integers(
        sampling.generators_for(seeds),
        -delta,
        delta,
        (iterations, size - 2 * delta, size - 2 * delta, 2),
    )[0]
    for iteration in range(iterations):
        for row_index, row in enumerate(range(size - delta, delta, -1)):
            for col_index, col in enumerate(range(size - delta, delta, -1)):
                # The fast path lists rows and columns upwards; the sweep runs downwards.
                dx, dy = shifts[iteration, -1 - row_index, -1 - col_index].tolist()
                pixels[:, row, col] = pixels[:, row + dy, col + dx]
    slow = ops.gaussian_filter(pixels[None], sigma, mode="nearest")
    assert torch.allclose(fast, slow.clamp(0, 1), atol=1e-6)


def test_plasma_fractal_fills_every_cell_once():
    from robustbench_bn.data.corruptions import sampling, weather

    plasma = weather.plasma_fractal(sampling.generators_for(torch.tensor([1, 2])), 32, 2.0)
    assert plasma.shape == (2, 32, 32)
    assert float(plasma.min()) == 0 and float(plasma.max()) == 1
    assert not math.isclose(float(plasma[0].std()), float(plasma[1].std()), rel_tol=1e-9)


def test_corruption_device_is_checked_and_recorded():
    from robustbench_bn.data.on_the_fly import resolve_corruption_device
    from robustbench_bn.errors import ConfigurationError

    assert resolve_corruption_device("cpu") == "cpu"
    expected_auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_corruption_device("auto") == expected_auto
    with pytest.raises(ConfigurationError, match="not a device"):
        resolve_corruption_device("graphics card")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigurationError, match="no CUDA device"):
            resolve_corruption_device("cuda")


def test_cpu_draws_ignore_the_engine_device_context():
    """On a GPU the engine works inside ``torch.device("cuda")`` while the per-image draws
    run on the CPU generators; torch's samplers must not follow the context (they did, and
    motion blur, snow, frost and elastic failed on CUDA input). The meta device stands in for
    the GPU here: the draws must consume the same numbers as outside any context."""
    from robustbench_bn.data.corruptions import sampling

    plain = sampling.generators_for(torch.tensor([3, 4]))
    in_context = sampling.generators_for(torch.tensor([3, 4]))
    expected = sampling.uniform(plain, (3, 2), -1.0, 1.0)
    with torch.device("meta"):
        drawn = sampling.uniform(in_context, (3, 2), -1.0, 1.0)
        sampling.normal(in_context, (5,))
    sampling.normal(plain, (5,))
    assert drawn.device.type == "meta" and drawn.shape == expected.shape
    for left, right in zip(plain, in_context, strict=True):
        assert torch.equal(left.get_state(), right.get_state())


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_input_device_work_matches_cpu_work(name, images):
    """device=None works where the images are; on a CPU machine that must be the CPU result,
    and on a GPU machine the two may differ only by float rounding (one uint8 step)."""
    batch = images[:4]
    seeds = _seeds(name, 3, len(batch))
    on_cpu = corrupt(batch, name, 3, seeds=seeds, device="cpu")
    target = "cuda" if torch.cuda.is_available() else "cpu"
    on_input_device = corrupt(batch.to(target), name, 3, seeds=seeds, device=None).cpu()
    assert on_input_device.device.type == "cpu"
    difference = (on_input_device - on_cpu).abs()
    if target == "cpu":
        assert torch.equal(on_input_device, on_cpu)
    else:
        # A rounding flip moves a pixel by 1/255; allow a few such pixels, never a real change.
        assert float(difference.mean()) < 2e-3, float(difference.mean())
