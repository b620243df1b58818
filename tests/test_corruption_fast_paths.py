"""The engine's fast paths against the plain implementations they replace: padding by slices
against index gathers, the compiled CPU kernels against their torch twins (which other devices
run), threaded draws against a serial loop, FFT lengths, and chunking."""

from __future__ import annotations

import itertools
import platform
import sys

import pytest
import torch

from robustbench_bn.data.corruptions import (
    allocation,
    blur,
    blur_kernels,
    corrupt,
    digital_kernels,
    image_seeds,
    noise,
    noise_kernels,
    ops,
    ops_kernels,
    sampling,
    spatter_kernels,
    weather_kernels,
)


@pytest.mark.parametrize("mode", ops.BORDER_MODES)
def test_padding_by_slices_equals_padding_by_gathers(mode):
    images = torch.rand(2, 3, 9, 11)
    for top, bottom, left, right in itertools.product([0, 1, 7, 12], [0, 7], [0, 1, 9], [0, 4, 30]):
        rows = ops.border_index(torch.arange(-top, 9 + bottom), 9, mode)
        cols = ops.border_index(torch.arange(-left, 11 + right), 11, mode)
        expected = images.index_select(-2, rows).index_select(-1, cols)
        # A batch [B, C, H, W] goes through the compiled copy, a 3-D tensor through slices.
        assert torch.equal(ops.pad(images, top, bottom, left, right, mode), expected)
        assert torch.equal(ops.pad(images[0], top, bottom, left, right, mode), expected[0])


def test_fast_fft_size_has_only_small_prime_factors():
    assert ops.fast_fft_size(236) == 240  # 236 = 4 x 59
    assert ops.fast_fft_size(284) == 288  # 284 = 4 x 71
    assert ops.fast_fft_size(256) == 256
    for size in range(1, 400):
        fast = ops.fast_fft_size(size)
        assert fast >= size
        remainder = fast
        for prime in (2, 3, 5, 7):
            while remainder % prime == 0:
                remainder //= prime
        assert remainder == 1


@pytest.mark.parametrize("delta,iterations", [(1, 2), (2, 3), (4, 2)])
def test_compiled_glass_sweeps_equal_pointer_doubling(delta, iterations):
    pixels = ops.quantize(torch.rand(3, 3, 40, 36))
    rows, cols = 40 - 2 * delta, 36 - 2 * delta
    generators = sampling.generators_for(torch.tensor([5, 6, 7]))
    shifts = sampling.integers(generators, -delta, delta, (iterations, rows, cols, 2))
    compiled = blur_kernels.glass_sweeps(pixels, shifts, delta)
    doubled = blur._glass_sweeps_by_pointer_doubling(pixels, shifts, delta)
    assert torch.equal(compiled, doubled)
    assert not torch.equal(compiled, pixels)  # the sweep moved pixels


@pytest.mark.parametrize("photons", [3.0, 60.0, 500.0])
def test_compiled_shot_noise_equals_the_table_search(photons):
    images = ops.quantize(torch.rand(4, 3, 33, 35))
    uniforms = sampling.uniform(
        sampling.generators_for(torch.arange(4)), (3, 33, 35), dtype=torch.float64
    )
    # The lowest and highest uniforms a float64 draw can give reach the table's ends.
    uniforms[0, 0, 0, :2] = torch.tensor([0.0, 1 - 2**-53], dtype=torch.float64)
    table = noise._poisson_level_table(photons)
    guide = noise._poisson_guide(photons)
    compiled, on_grid = noise_kernels.shot_noise(images, uniforms, table, guide, photons)
    levels = torch.round(images * 255)
    positions = torch.searchsorted(
        table.view(-1), (levels.double() + uniforms).reshape(-1), right=True
    ).view_as(levels)
    searched = (positions - levels.long() * table.shape[1]).clamp(0, table.shape[1] - 1)
    assert on_grid.all()
    assert torch.equal(noise._invert_level_cdfs(table, guide, levels, uniforms), searched)
    assert torch.equal(compiled, searched.float() / photons)


def test_shot_noise_falls_back_per_image_off_the_uint8_grid():
    on_grid = ops.quantize(torch.rand(1, 3, 32, 32))
    off_grid = torch.rand(1, 3, 32, 32) * 0.9 + 0.05
    seeds = torch.tensor([11, 12])
    alone = corrupt(on_grid, "shot_noise", 3, seeds=seeds[:1])
    together = corrupt(torch.cat([on_grid, off_grid]), "shot_noise", 3, seeds=seeds)
    assert torch.equal(together[:1], alone)
    # The off-grid image takes torch.poisson's route: noisy, and not the on-grid one's noise.
    change = (together[1] - off_grid[0]).abs().mean()
    assert 0.05 < float(change) < 0.5


def test_threaded_draws_equal_a_serial_loop():
    seeds = torch.tensor([3, 1, 4, 1, 5])
    threaded = sampling.uniform(sampling.generators_for(seeds), (3, 128, 128))
    serial = torch.stack(
        [torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    )
    assert torch.equal(threaded, serial)


def _torch_and_compiled(count, already_drawn, torch_draw, kernel, dtype, *arguments):
    """(torch's numbers, the compiled ones, whether both generators end in the same state)
    for ``count`` numbers drawn after ``already_drawn`` uniforms."""
    reference = torch.Generator().manual_seed(2024 + count)
    compiled = torch.Generator().manual_seed(2024 + count)
    torch.rand(already_drawn, generator=reference)
    torch.rand(already_drawn, generator=compiled)
    expected = torch_draw(count, reference)
    state = compiled.get_state()
    out = torch.empty(count, dtype=dtype)
    kernel(state.numpy(), out.numpy(), *arguments)
    compiled.set_state(state)
    # The generator carries on exactly where torch's would.
    same_after = torch.equal(torch.rand(7, generator=compiled), torch.rand(7, generator=reference))
    return expected, out, same_after


@pytest.mark.parametrize("count", [16, 33, 624, 1000, 1249, 3 * 64 * 64 + 5])
@pytest.mark.parametrize("already_drawn", [0, 7, 623])
def test_compiled_draws_equal_torchs_samplers(count, already_drawn):
    from robustbench_bn.data.corruptions import mersenne

    def exact(torch_draw, kernel, dtype, *arguments):
        expected, out, same_after = _torch_and_compiled(
            count, already_drawn, torch_draw, kernel, dtype, *arguments
        )
        assert torch.equal(out, expected), kernel
        assert same_after, kernel

    exact(lambda n, g: torch.rand(n, generator=g), mersenne.uniform_float32, torch.float32)
    exact(
        lambda n, g: torch.rand(n, generator=g, dtype=torch.float64),
        mersenne.uniform_float64,
        torch.float64,
    )
    for span, low in [(2.0, -1.0), (8.96, -4.48), (0.3, 0.1), (1e3, -7.7)]:
        # Scaled inside the draw: the bits of the two tensor operations.
        exact(
            lambda n, g, low=low, span=span: torch.rand(n, generator=g) * span + low,
            mersenne.uniform_float32_scaled,
            torch.float32,
            span,
            low,
        )
    for low, span in [
        (0, 1),
        (-3, 6),
        (5, 1000),
        (0, 1 << 20),
        (-7, (1 << 20) + 3),
        (0, (1 << 28) - 1),
    ]:
        exact(
            lambda n, g, low=low, span=span: torch.randint(low, low + span, (n,), generator=g),
            mersenne.integers,
            torch.int64,
            low,
            span,
        )
    for dtype, kernel, tolerance in [
        # torch's float32 normals use vectorized log / sin / cos, which differ from the
        # correctly rounded ones by up to one unit in the last place.
        (torch.float32, mersenne.normal_float32, 2.5e-7),
        (torch.float64, mersenne.normal_float64, 1e-14),
    ]:
        expected, out, same_after = _torch_and_compiled(
            count,
            already_drawn,
            lambda n, g, dtype=dtype: torch.randn(n, generator=g, dtype=dtype),
            kernel,
            dtype,
        )
        assert same_after, kernel
        assert torch.allclose(out, expected, rtol=tolerance, atol=tolerance), (
            kernel,
            float((out - expected).abs().max()),
        )


def test_engine_draws_use_the_compiled_samplers_with_torchs_numbers():
    seeds = torch.tensor([11, 12])
    drawn = sampling.integers(sampling.generators_for(seeds), -2, 2, (3, 40, 40))
    by_torch = torch.stack(
        [
            torch.randint(-2, 2, (3, 40, 40), generator=torch.Generator().manual_seed(int(s)))
            for s in seeds
        ]
    )
    assert torch.equal(drawn, by_torch)
    normals = sampling.normal(sampling.generators_for(seeds), (1, 40, 40), dtype=torch.float64)
    assert torch.allclose(
        normals,
        torch.stack(
            [
                torch.randn(
                    1, 40, 40, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64
                )
                for s in seeds
            ]
        ),
        rtol=1e-14,
        atol=1e-14,
    )


@pytest.mark.parametrize(
    "name",
    [
        "glass_blur",
        "shot_noise",
        "gaussian_blur",
        "spatter",
        "jpeg_compression",
        "motion_blur",
        "zoom_blur",
        "elastic_transform",
        "fog",
        "impulse_noise",
        "gaussian_noise",
        "speckle_noise",
        "snow",
        "pixelate",
        "contrast",
    ],
)
def test_chunking_does_not_change_results(name, monkeypatch):
    import robustbench_bn.data.corruptions as engine

    images = ops.quantize(torch.rand(6, 3, 48, 48))
    seeds = image_seeds("chunks", name, 4, 0, torch.arange(6))
    whole = corrupt(images, name, 4, seeds=seeds)
    monkeypatch.setattr(engine, "_CHUNK_PIXELS", 48 * 48 * 2)  # two images per chunk
    monkeypatch.setattr(engine, "_CHUNK_PIXELS_FOR", {})
    monkeypatch.setattr(engine, "_UNCHUNKED", frozenset())
    assert torch.equal(corrupt(images, name, 4, seeds=seeds), whole)


def test_compiled_canny_and_distance_equal_the_tensor_versions():
    from robustbench_bn.data.corruptions import spatter

    generators = sampling.generators_for(torch.arange(3))
    liquid = sampling.normal(generators, (1, 61, 67), dtype=torch.float64) * 0.3 + 0.65
    liquid = ops.gaussian_filter(liquid, 1.0, mode="nearest")
    planes = torch.floor(torch.where(liquid < 0.69, 0.0, liquid).clamp(0, 1) * 255)
    edges = spatter.canny(planes, 50, 150)
    assert torch.equal(edges, spatter.canny_by_tensor_operations(planes, 50, 150))
    assert 0 < edges.float().mean() < 0.5
    # Integers past uint8's range (int32 would overflow the kernel's sector test) take the
    # tensor path: the same edges as it gives.
    huge = planes * 2**20
    assert torch.equal(
        spatter.canny(huge, 50, 150), spatter.canny_by_tensor_operations(huge, 50, 150)
    )
    distance = spatter.distance_to_edges(edges)
    # Squared distances are the same integers; torch's AVX-512 float64 square root (seen on
    # an Intel Xeon here) is one unit in the last place below the correctly rounded one that
    # the compiled kernel takes.
    assert torch.allclose(
        distance, spatter.distance_by_tensor_operations(edges), rtol=1e-15, atol=0
    )
    no_edges = torch.zeros(1, 1, 30, 30, dtype=torch.bool)
    assert torch.allclose(
        spatter.distance_to_edges(no_edges),
        spatter.distance_by_tensor_operations(no_edges),
        rtol=1e-15,
        atol=0,
    )


def test_compiled_finish_equals_clamp_and_quantize():
    corrupted = torch.rand(3, 3, 20, 30) * 1.4 - 0.2
    corrupted[0, 0, 0, :3] = torch.tensor([7 / 255, 1.0, 0.0])  # exact levels stay put
    for quantize in (True, False):
        out = torch.empty_like(corrupted)
        ops_kernels.finish(corrupted, out, quantize)
        expected = corrupted.clamp(0, 1)
        expected = ops.quantize_(expected) if quantize else expected
        assert torch.equal(out, expected)
    strided = corrupted[:, :, ::2, 1:]  # a crop, as blurs return
    out = torch.empty(strided.shape)
    ops_kernels.finish(strided, out, True)
    assert torch.equal(out, ops.quantize_(strided.clamp(0, 1)))


@pytest.mark.parametrize("size,target", [(224, 112), (224, 134), (32, 9), (37, 16), (16, 37)])
def test_compiled_box_resize_equals_the_sparse_and_dense_products(size, target):
    images = ops.quantize(torch.rand(2, 3, size, size))
    compiled = ops.pil_box_resize(images, target, target)
    rows = ops.pil_box_matrix(size, target)
    sparse = ops.apply_sparse(ops.apply_sparse(images, rows, -2), rows, -1)
    assert torch.equal(compiled, sparse)
    dense = rows @ images @ rows.T
    assert torch.allclose(compiled, dense, atol=1e-6)


def test_compiled_interleaved_levels_equal_to_uint8():
    images = torch.rand(3, 3, 20, 30) * 1.4 - 0.2
    images[0, 0, 0, :3] = torch.tensor([7 / 255, 1.0, 0.0])  # exact levels stay put
    for image in (images[0], images[1, :, ::2, 1:]):  # contiguous, and strided
        expected = ops.to_uint8(image.clone()).permute(1, 2, 0)
        interleaved = torch.empty(expected.shape, dtype=torch.uint8)
        digital_kernels.interleaved_levels(image.numpy(), interleaved.numpy())
        assert torch.equal(interleaved, expected)


def test_compiled_planes_from_levels_equal_torch_division():
    levels = torch.arange(256, dtype=torch.uint8).repeat(2, 3, 1).permute(0, 2, 1)  # [2,256,3]
    levels = levels.contiguous()
    out = torch.empty(3, 2, 256)
    digital_kernels.planes_from_levels(levels.numpy(), out.numpy())
    assert torch.equal(out, torch.div(levels.permute(2, 0, 1), 255))


def test_jpeg_matches_a_pil_round_trip():
    import io

    import numpy as np
    from PIL import Image

    from robustbench_bn.data.corruptions import digital

    images = ops.quantize(ops.gaussian_filter(torch.rand(3, 3, 40, 56), 2.0, mode="reflect"))
    decoded = digital.jpeg(images, 80)
    for image, ours in zip(images, decoded, strict=True):
        levels = np.ascontiguousarray(ops.to_uint8(image.clone()).permute(1, 2, 0).numpy())
        stored = io.BytesIO()
        Image.fromarray(levels).save(stored, "JPEG", quality=80)
        reloaded = np.asarray(Image.open(io.BytesIO(stored.getvalue())))
        expected = torch.div(torch.from_numpy(reloaded.copy()).permute(2, 0, 1), 255)
        assert torch.equal(ours, expected)
    # The tensor-operation path (any dtype or device) and writing over the input agree.
    assert torch.equal(digital.jpeg(images.double(), 80), decoded)
    assert torch.equal(digital.jpeg(images, 80, out=images), decoded)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_image_by_image_fft_correlation_equals_the_batched_torch_fft(dtype):
    from robustbench_bn.data.corruptions.blur import disk_kernel

    images = torch.rand(3, 3, 41, 50, dtype=dtype)
    kernel = disk_kernel(6.0, 0.5)  # 15 x 15: past the direct path's size
    assert kernel.numel() > 25
    ours = ops.correlate2d(images, kernel, "mirror")
    batched = ops.correlate2d(images[None], kernel, "mirror")[0]  # 5-D: torch's batched FFT
    # Direct correlation of the mirror-padded image, tap by tap.
    top = kernel.shape[0] // 2
    padded = ops.pad(images, top, top, top, top, "mirror")
    direct = torch.zeros_like(images)
    for row in range(kernel.shape[0]):
        for col in range(kernel.shape[1]):
            direct += kernel[row, col].to(dtype) * padded[..., row : row + 41, col : col + 50]
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    assert ours.dtype == dtype and ours.shape == images.shape
    assert torch.allclose(ours, batched, atol=tolerance)
    assert torch.allclose(ours, direct, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ops.BORDER_MODES)
def test_compiled_separable_filter_equals_shifted_adds(dtype, mode):
    images = torch.rand(2, 3, 45, 38, dtype=dtype)
    for sigma in (0.7, 2.0, 30.0):  # the last reaches past the image: borders fold repeatedly
        taps = ops.gaussian_taps(sigma)
        compiled = ops_kernels.separable_filter(images, taps, mode)
        shifted = ops.correlate1d(ops.correlate1d(images, taps, -1, mode), taps, -2, mode)
        # The shifted-add path takes a dense matrix product for kernels long against the
        # axis, with float32 weights also for float64 images.
        tolerance = 1e-6 if dtype == torch.float32 else 1e-7
        assert torch.allclose(compiled, shifted, rtol=0, atol=tolerance), (sigma, mode)
    # gaussian_filter takes the compiled path for short kernels on large CPU images.
    large = torch.rand(1, 3, 96, 96, dtype=dtype)
    taps = ops.gaussian_taps(1.5)
    assert torch.allclose(
        ops.gaussian_filter(large, 1.5, mode),
        ops.correlate1d(ops.correlate1d(large, taps, -1, mode), taps, -2, mode),
        rtol=0,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    ("size", "sigma", "compiled"),
    [(224, 4.0, True), (224, 6.0, True), (224, 19.52, False), (32, 0.4, False), (32, 0.2, True)],
)
def test_gaussian_filter_path_by_kernel_length_and_image_size(monkeypatch, size, sigma, compiled):
    # From 128 px on the compiled filter takes kernels up to a third of the axis (33 and 49
    # taps at 224 px), smaller images keep the one-eighth rule, so their numbers stay; both
    # paths agree within float32 rounding.
    images = torch.rand(1, 3, size, size)
    calls = []
    original = ops_kernels.separable_filter
    monkeypatch.setattr(
        ops_kernels,
        "separable_filter",
        lambda *arguments, **finishing: calls.append(1) or original(*arguments, **finishing),
    )
    filtered = ops.gaussian_filter(images, sigma, "nearest")
    assert bool(calls) == compiled
    taps = ops.gaussian_taps(sigma)
    by_tensors = ops.correlate1d(ops.correlate1d(images, taps, -1, "nearest"), taps, -2, "nearest")
    assert torch.allclose(filtered, by_tensors, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [32, 64, 256])
def test_compiled_plasma_fractal_equals_the_grid_version(size):
    from robustbench_bn.data.corruptions import weather

    generators = sampling.generators_for(torch.arange(3))
    draws = sampling.uniform(generators, (size * size - 1,), dtype=torch.float64)
    compiled = weather_kernels.plasma_fractal(draws, size, 1.7)
    assert torch.equal(compiled, weather._plasma_by_tensor_operations(draws, size, 1.7))
    assert float(compiled.amin()) == 0.0 and float(compiled.amax()) == 1.0


def test_compiled_fog_blend_equals_the_tensor_steps():
    images = ops.quantize(torch.rand(3, 3, 40, 36))
    plasma = torch.rand(3, 64, 64, dtype=torch.float64)
    peak = images.amax((1, 2, 3), keepdim=True)
    expected = (images + 2.5 * plasma[:, None, :40, :36].float()) * peak / (peak + 2.5)
    assert torch.equal(weather_kernels.fog_blend(images, plasma, 2.5), expected)


@pytest.mark.parametrize("family,size", [("imagenet", 224), ("cifar", 32), ("cifar", 45)])
def test_compiled_elastic_resampling_equals_grid_sample(family, size, monkeypatch):
    from robustbench_bn.data.corruptions import digital
    from robustbench_bn.data.corruptions.parameters import TABLES

    images = ops.quantize(ops.gaussian_filter(torch.rand(3, 3, size, size), 1.0))
    captured = []
    compiled_resample = digital_kernels.elastic_resample

    def spy(*arguments):
        captured.append(arguments)
        return compiled_resample(*arguments)

    monkeypatch.setattr(digital_kernels, "elastic_resample", spy)
    for severity in (1, 2, 5):
        parameter = TABLES[family]["elastic_transform"][severity - 1]
        seeds = image_seeds("elastic", "elastic_transform", severity, 0, torch.arange(3))
        generators = sampling.generators_for(seeds)
        compiled = digital.elastic_transform(images, parameter, generators, family)
        tensor_version = digital.elastic_by_tensor_operations(*captured[-1])
        # grid_sample normalises coordinates in float32: positions agree to ~1e-6 pixels.
        assert torch.allclose(compiled, tensor_version, rtol=0, atol=1e-4), severity
        assert float((compiled - images).abs().mean()) > 0.01  # the warp moved pixels


@pytest.mark.parametrize("family,size", [("imagenet", 224), ("tiny_imagenet", 64), ("cifar", 45)])
def test_compiled_zoom_blur_equals_interpolate(family, size):
    from robustbench_bn.data.corruptions.parameters import TABLES

    images = ops.quantize(ops.gaussian_filter(torch.rand(2, 3, size, size), 1.0))
    for factors in TABLES[family]["zoom_blur"]:
        compiled = blur.zoom_blur(images, factors, None, family)
        interpolated = blur.zoom_blur_by_tensor_operations(images, factors)
        # The same taps and weights; the blend's rounding order differs (float32).
        assert torch.allclose(compiled, interpolated, rtol=0, atol=1e-6)
        assert float((compiled - images).abs().mean()) > 1e-3


def test_compiled_impulse_noise_equals_the_selection():
    images = ops.quantize(torch.rand(3, 3, 40, 36))
    draws = sampling.uniform(sampling.generators_for(torch.arange(3)), (2, 3, 40, 36))
    for amount in (0.03, 0.27):
        expected = torch.where(draws[:, 0] < amount, (draws[:, 1] < 0.5).float(), images)
        assert torch.equal(noise_kernels.impulse_noise(images, draws, amount), expected)


@pytest.mark.parametrize("size", [224, 45])
def test_compiled_motion_blur_equals_the_fft_convolution(size, monkeypatch):
    images = ops.quantize(torch.rand(3, 3, size, size))
    angles = torch.tensor([-44.0, 7.5, 30.0], dtype=torch.float64)
    for radius, sigma in ((10, 3.0), (20, 15.0)):  # at 45 px some taps leave the image
        compiled = ops.motion_blur(images, radius, sigma, angles)
        with monkeypatch.context() as patched:
            patched.setattr(
                ops_kernels,
                "motion_blur",
                lambda x, shifts, weights, out, finish: ops._motion_blur_by_fft(
                    x, shifts[..., 0], shifts[..., 1], weights
                ),
            )
            by_fft = ops.motion_blur(images, radius, sigma, angles)
        assert torch.allclose(compiled, by_fft, rtol=0, atol=2e-6)
        assert float((compiled - images).abs().mean()) > 0.05


@pytest.mark.parametrize("family", ["cifar", "imagenet"])
def test_compiled_colour_corruptions_equal_the_tensor_versions(family):
    from robustbench_bn.data.corruptions import digital
    from robustbench_bn.data.corruptions.parameters import TABLES

    images = ops.quantize(torch.rand(4, 3, 40, 36))
    images[0, :, :5, :5] = 0  # black: hue and saturation 0
    images[1, :, :5, :5] = 0.5  # grey: saturation 0
    for severity in range(5):
        shift = TABLES[family]["brightness"][severity]
        assert torch.equal(
            digital_kernels.brightness(images, shift),
            digital.brightness_by_tensor_operations(images, shift),
        )
        scale, offset = TABLES[family]["saturate"][severity]
        assert torch.equal(
            digital_kernels.saturate(images, scale, offset),
            digital.saturate_by_tensor_operations(images, scale, offset),
        )
        factor = TABLES[family]["contrast"][severity]
        means = images.mean((2, 3), keepdim=True)
        assert torch.equal(
            digital_kernels.contrast(images, means, factor), (images - means) * factor + means
        )


@pytest.mark.parametrize("family", ["cifar", "imagenet"])
def test_compiled_snow_blend_equals_the_tensor_steps(family):
    from robustbench_bn.data.corruptions import weather
    from robustbench_bn.data.corruptions.parameters import TABLES

    images = ops.quantize(torch.rand(3, 3, 40, 44))
    # A blurred layer before its 8-bit rounding (which the compiled blend does), some of it
    # outside [0, 1] and some exactly half a level off the grid.
    blurred = (torch.rand(3, 1, 40, 44) * 1.4 - 0.2) * (torch.rand(3, 1, 40, 44) > 0.5)
    blurred[0, 0, 0, :8] = (torch.arange(8) + 0.5) / 255
    layer = torch.round(blurred.clamp(0, 1) * 255) / 255
    for parameter in TABLES[family]["snow"]:
        image_weight = parameter[-1]
        assert torch.equal(
            weather_kernels.snow_blend(images, blurred, image_weight),
            weather.snow_blend_by_tensor_operations(images, layer, image_weight),
        )


def test_compiled_zeroed_levels_equal_where_then_quantize():
    values = torch.rand(2, 1, 30, 40) * 1.4 - 0.2
    for threshold in (0.5, 0.45, 0.7, 0.85):
        # float32 neighbours of the threshold: torch compares with it rounded to float32.
        near = torch.tensor(threshold, dtype=torch.float32)
        values[0, 0, 0, :3] = torch.stack(
            [
                near,
                torch.nextafter(near, torch.tensor(0.0)),
                torch.nextafter(near, torch.tensor(1.0)),
            ]
        )
        view = values[..., 3:27, 5:35]  # strided, as the clipped zoom's trim
        expected = ops.quantize(torch.where(view < threshold, torch.zeros_like(view), view))
        assert torch.equal(weather_kernels.zeroed_levels(view, threshold), expected), threshold
    assert float((expected == 0).float().mean()) > 0.2


def test_compiled_snow_equals_the_tensor_steps():
    from robustbench_bn.data.corruptions import weather
    from robustbench_bn.data.corruptions.parameters import TABLES

    images = ops.quantize(ops.gaussian_filter(torch.rand(2, 3, 64, 64), 1.0))
    seeds = torch.tensor([3, 8])
    for parameter in TABLES["imagenet"]["snow"]:
        mean, std, zoom, threshold, blur_radius, blur_sigma, image_weight = parameter
        generators = sampling.generators_for(seeds)
        layer = sampling.normal(generators, (1, 64, 64)) * std + mean
        angles = sampling.uniform(generators, (), -135, -45, dtype=torch.float64)
        layer = ops.clipped_zoom(layer, zoom)
        layer = ops.quantize(torch.where(layer < threshold, torch.zeros_like(layer), layer))
        layer = ops.motion_blur(layer, int(blur_radius), float(blur_sigma), angles)
        layer = torch.round(layer.clamp(0, 1) * 255) / 255
        expected = weather.snow_blend_by_tensor_operations(images, layer, image_weight)
        compiled = weather.snow(images, parameter, sampling.generators_for(seeds), "imagenet")
        assert torch.equal(compiled, expected), parameter


@pytest.mark.parametrize("family,size", [("cifar", (32, 32)), ("imagenet", (64, 70))])
def test_compiled_water_glare_equals_the_tensor_steps(family, size):
    from robustbench_bn.data.corruptions import spatter
    from robustbench_bn.data.corruptions.parameters import TABLES

    images = ops.quantize(torch.rand(3, 3, *size))
    for mean, std, liquid_sigma, threshold, strength, mode in TABLES[family]["spatter"]:
        if mode != 0:  # mud
            continue
        generators = sampling.generators_for(torch.tensor([1, 2, 3]))
        liquid = sampling.normal(generators, (1, *size), dtype=torch.float64) * std + mean
        unthresholded = ops.gaussian_filter(liquid, liquid_sigma, mode="nearest")
        unthresholded[2] = 0  # no drops: no edges, a constant distance map
        liquid = torch.where(
            unthresholded < threshold, torch.zeros_like(unthresholded), unthresholded
        )
        compiled = spatter_kernels.water(
            images, liquid, strength, spatter._WATER_COLOUR, spatter._DISTANCE_CAP
        )
        assert torch.equal(compiled, spatter._water(images, liquid, strength))
        # Zeroing the liquid below the threshold inside the kernel: the same result.
        zeroed_inside = spatter_kernels.water(
            images,
            unthresholded,
            strength,
            spatter._WATER_COLOUR,
            spatter._DISTANCE_CAP,
            threshold=threshold,
        )
        assert torch.equal(zeroed_inside, compiled)
        assert not torch.equal(compiled[0], images[0])  # glare was added


@pytest.mark.parametrize("size", [32, 64])
def test_corruptions_leave_their_input_untouched(size):
    # In-range CPU images reach the corruptions as views of the caller's tensor.
    from robustbench_bn.data.corruptions import ALL_CORRUPTIONS

    images = ops.quantize(torch.rand(3, 3, size, size))
    original = images.clone()
    for name in ALL_CORRUPTIONS:
        corrupted = corrupt(
            images, name, 5, seeds=image_seeds("input", name, 5, 0, torch.arange(3))
        )
        assert torch.equal(images, original), name
        assert not torch.equal(corrupted, images), name


@pytest.mark.parametrize("size", [(33, 35), (64, 70)])
def test_shot_noise_drawing_in_the_loop_equals_the_batch_draw(size):
    images = ops.quantize(torch.rand(3, 3, *size))
    images[2, 0, 0, 0] = 0.5 / 255  # off the grid: its result is unset, its draws still made
    table = noise._poisson_level_table(25.0)
    guide = noise._poisson_guide(25.0)
    drawing = sampling.generators_for(torch.tensor([4, 5, 6]))
    batch = sampling.generators_for(torch.tensor([4, 5, 6]))
    uniforms = sampling.uniform(batch, (3, *size), dtype=torch.float64)
    expected, expected_on_grid = noise_kernels.shot_noise(images, uniforms, table, guide, 25.0)
    noisy, on_grid = noise_kernels.shot_noise_drawing(images, drawing, table, guide, 25.0)
    assert torch.equal(on_grid, torch.tensor([True, True, False]))
    assert torch.equal(on_grid, expected_on_grid)
    assert torch.equal(noisy[:2], expected[:2])
    for ours, theirs in zip(drawing, batch, strict=True):
        assert torch.equal(ours.get_state(), theirs.get_state())


@pytest.mark.parametrize("delta,iterations", [(1, 2), (4, 3)])
def test_glass_sweeps_drawing_in_the_loop_equal_the_batch_draw(delta, iterations):
    pixels = ops.quantize(torch.rand(3, 3, 40, 36))
    drawing = sampling.generators_for(torch.tensor([5, 6, 7]))
    batch = sampling.generators_for(torch.tensor([5, 6, 7]))
    shifts = sampling.integers(
        batch, -delta, delta, (iterations, 40 - 2 * delta, 36 - 2 * delta, 2)
    )
    expected = blur_kernels.glass_sweeps(pixels, shifts, delta)
    assert torch.equal(
        blur_kernels.glass_sweeps_drawing(pixels, drawing, delta, iterations), expected
    )
    for ours, theirs in zip(drawing, batch, strict=True):
        assert torch.equal(ours.get_state(), theirs.get_state())
    # Quantizing in the same loop (the glass blur's CPU path) starts from the same levels.
    blurred = torch.rand(3, 3, 40, 36) * 1.2 - 0.1
    quantizing = sampling.generators_for(torch.tensor([5, 6, 7]))
    reference = sampling.generators_for(torch.tensor([5, 6, 7]))
    fused = blur_kernels.glass_sweeps_drawing(blurred, quantizing, delta, iterations, quantize=True)
    stepwise = blur_kernels.glass_sweeps_drawing(
        ops.quantize(blurred), reference, delta, iterations
    )
    assert torch.equal(fused, stepwise)
    assert not torch.equal(fused, ops.quantize(blurred))  # the sweeps moved pixels


@pytest.mark.parametrize("speckle", [False, True])
@pytest.mark.parametrize("size", [(32, 32), (33, 35)])
def test_normal_noise_drawing_in_the_loop_equals_the_tensor_steps(speckle, size):
    images = ops.quantize(torch.rand(3, 3, *size))
    drawing = sampling.generators_for(torch.tensor([8, 9, 10]))
    batch = sampling.generators_for(torch.tensor([8, 9, 10]))
    normals = sampling.normal(batch, (3, *size))
    expected = images + images * normals * 0.3 if speckle else images + normals * 0.3
    assert torch.equal(noise_kernels.normal_noise(images, drawing, 0.3, speckle), expected)
    for ours, theirs in zip(drawing, batch, strict=True):
        assert torch.equal(ours.get_state(), theirs.get_state())


@pytest.mark.parametrize("size", [(32, 32), (33, 35)])
def test_impulse_noise_drawing_in_the_loop_equals_the_batch_draw(size):
    images = ops.quantize(torch.rand(3, 3, *size))
    drawing = sampling.generators_for(torch.tensor([1, 2, 3]))
    batch = sampling.generators_for(torch.tensor([1, 2, 3]))
    draws = sampling.uniform(batch, (2, 3, *size))
    expected = noise_kernels.impulse_noise(images, draws, 0.2)
    assert torch.equal(noise_kernels.impulse_noise_drawing(images, drawing, 0.2), expected)
    for ours, theirs in zip(drawing, batch, strict=True):
        assert torch.equal(ours.get_state(), theirs.get_state())


def _page_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _faults_of_a_fresh_64_mb_buffer() -> int:
    before = _page_faults()
    buffer = torch.empty(64 << 20, dtype=torch.uint8)
    buffer.fill_(1)  # touches every page
    faults = _page_faults() - before
    del buffer
    return faults


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt thresholds are glibc's",
)
def test_freed_batch_buffers_are_reused_without_page_faults():
    # Above 32 MB glibc maps every block afresh by default: 16,384 faults per 64 MB buffer,
    # every time. Kept in the heap, the buffers settle into reused space within a few rounds
    # (the first ones land above small blocks allocated in between).
    assert allocation.keep_freed_memory()
    faults = [_faults_of_a_fresh_64_mb_buffer() for _ in range(16)]
    assert sum(faults[-4:]) < 4_096, faults


def test_keeping_freed_memory_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(allocation.ENVIRONMENT_VARIABLE, "0")
    assert allocation.keep_freed_memory.__wrapped__() is False


def _wait_policy_after(imports: str, preset: str | None) -> str:
    import os
    import subprocess

    environment = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if preset is not None:
        environment["OMP_WAIT_POLICY"] = preset
    code = f"import os; {imports}; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
    finished = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    )
    return finished.stdout.strip()


@pytest.mark.parametrize("preset,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_the_package_before_torch_makes_openmp_wait_passively(preset, expected):
    assert _wait_policy_after("import robustbench_bn, torch", preset) == expected


def test_importing_the_package_after_torch_leaves_openmp_alone():
    # libgomp has already read its setting by then; changing the variable would only mislead.
    assert _wait_policy_after("import torch, robustbench_bn", None) == "unset"


@pytest.mark.parametrize("size", [224, 45])
@pytest.mark.parametrize("finish", [ops.CLAMPED, ops.QUANTIZED])
def test_finishing_inside_the_kernels_equals_a_separate_finishing_pass(size, finish):
    # Each corruption finishes its images into the engine's result (the compiled kernels
    # image by image in the cache): the same bits as corrupting, then one finishing pass.
    import robustbench_bn.data.corruptions as engine
    from robustbench_bn.data.corruptions.parameters import TABLES

    images = ops.quantize(ops.gaussian_filter(torch.rand(3, 3, size, size), 1.5) * 1.3 - 0.1)
    images[2] = (images[2] + 1e-3).clamp(0, 1)  # off the uint8 grid: shot noise's fallback
    family = engine.family_for_size(size)
    for name, function in engine._FUNCTIONS.items():
        for severity in (1, 5):
            parameter = TABLES[family][name][severity - 1]
            seeds = image_seeds("finish", name, severity, 0, torch.arange(3))
            raw = function(images, parameter, sampling.generators_for(seeds), family)
            expected = ops.deliver(raw, finish=finish)
            out = torch.full(images.shape, float("nan"))
            returned = function(
                images, parameter, sampling.generators_for(seeds), family, out=out, finish=finish
            )
            assert returned is out, name
            assert torch.equal(out, expected), (name, severity)
            assert float(out.amin()) >= 0 and float(out.amax()) <= 1, name


def test_deliver_finishes_on_every_path():
    values = torch.tensor([[-0.5, 0.2, 0.5019608, 1.7]]).view(1, 1, 2, 2)
    assert ops.deliver(values) is values  # left as computed: untouched, no copy
    levels = torch.tensor([[0.0, 51 / 255, 128 / 255, 1.0]]).view(1, 1, 2, 2)
    clamped = torch.tensor([[0.0, 0.2, 0.5019608, 1.0]]).view(1, 1, 2, 2)
    for corrupted in (values, values.double()):  # compiled pass, then the tensor one
        assert torch.equal(ops.deliver(corrupted, finish=ops.CLAMPED), clamped)
        out = torch.empty(1, 1, 2, 2)
        assert ops.deliver(corrupted, out, ops.QUANTIZED) is out
        assert torch.allclose(out, levels, rtol=0, atol=1e-7)
        assert torch.equal(ops.deliver(corrupted, torch.empty(1, 1, 2, 2)), corrupted.float())


def test_compiled_frost_blend_equals_the_tensor_steps():
    images = torch.rand(3, 3, 20, 24)
    photographs = torch.rand(2, 3, 30, 40)
    corners = torch.tensor([[0, 0, 0], [1, 10, 16], [1, 3, 7]])
    crops = torch.stack(
        [photographs[p, :, top : top + 20, left : left + 24] for p, top, left in corners.tolist()]
    )
    expected = 0.35 * images + 0.75 * crops
    assert torch.equal(
        weather_kernels.frost_blend(images, photographs, corners, 0.35, 0.75), expected
    )


@pytest.mark.parametrize("density", [0.0, 0.002, 0.02, 0.3])
def test_compiled_distance_is_the_exact_euclidean_distance_capped(density):
    from scipy import ndimage

    from robustbench_bn.data.corruptions import spatter

    edges = torch.rand(2, 1, 70, 90, generator=torch.Generator().manual_seed(3)) < density
    edges[1, 0, 35, 45] = True  # at least one edge in the second plane
    cap = spatter._DISTANCE_CAP + 1
    distance = spatter.distance_to_edges(edges)
    for plane, edge_plane in zip(distance[:, 0], edges[:, 0], strict=True):
        if edge_plane.any():
            exact = ndimage.distance_transform_edt(~edge_plane.numpy())
        else:
            exact = torch.full(edge_plane.shape, float(cap), dtype=torch.float64).numpy()
        assert torch.equal(plane, torch.from_numpy(exact).clamp(max=cap))


def test_compiled_mud_blend_equals_the_tensor_steps():
    from robustbench_bn.data.corruptions import spatter

    images = torch.rand(3, 3, 40, 36)
    generators = sampling.generators_for(torch.arange(3))
    liquid = sampling.normal(generators, (1, 40, 36), dtype=torch.float64) * 0.3 + 0.6
    liquid = ops.gaussian_filter(liquid, 1.0, mode="nearest")
    mask = ops.gaussian_filter((liquid > 0.65).float(), 1.0, mode="nearest")
    compiled = spatter_kernels.mud_blend(images, mask, spatter._MUD_COLOUR)
    assert torch.equal(compiled, spatter._mud(images, liquid, 0.65, 1.0))
    assert bool((compiled != images).any()) and bool((compiled == images).any())


@pytest.mark.parametrize("family", ["imagenet", "tiny_imagenet", "cifar"])
def test_compiled_disk_blur_equals_correlating_with_the_disk_kernel(family):
    # Defocus blur's disk as running column sums of the blurred image: the reference's kernel
    # wherever its mirrored blur stays inside the grid (it does not for ImageNet's radii 8
    # and 10, which keep the FFT).
    import torch.nn.functional as F

    from robustbench_bn.data.corruptions.parameters import TABLES

    images = torch.rand(2, 3, 41, 50) * 1.4 - 0.2
    for radius, alias_blur in TABLES[family]["defocus_blur"]:
        columns = blur.disk_columns(float(radius), float(alias_blur))
        kernel = blur.disk_kernel(float(radius), float(alias_blur))
        if columns is None:
            assert family == "imagenet" and radius >= 8
            continue
        heights, taps = columns
        disk = torch.zeros(2 * len(heights) - 1 + 2, 2 * len(heights) - 1 + 2, dtype=torch.float64)
        centre = disk.shape[0] // 2
        for offset, half_height in enumerate(heights):
            column = centre + offset - len(heights) // 2
            disk[centre - half_height : centre + half_height + 1, column] = 1
        disk /= disk.sum()
        blur_taps = torch.tensor(taps, dtype=torch.float64)
        rebuilt = F.conv2d(
            disk[None, None], torch.outer(blur_taps, blur_taps)[None, None], padding=1
        )
        trim = (rebuilt.shape[-1] - kernel.shape[-1]) // 2
        rebuilt = rebuilt[0, 0, trim : rebuilt.shape[-2] - trim, trim : rebuilt.shape[-1] - trim]
        assert rebuilt.shape == kernel.shape, (radius, alias_blur)
        # disk_kernel blurs through a float32 matrix product: equal within its rounding.
        assert torch.allclose(rebuilt.float(), kernel, rtol=0, atol=1e-7)
        compiled = blur_kernels.disk_blur(images, heights, taps)
        expected = ops.correlate2d(images, kernel, "mirror")
        assert torch.allclose(compiled, expected, rtol=0, atol=2e-6), (radius, alias_blur)


def test_compiled_spatter_equals_the_tensor_steps_at_every_severity():
    # The CPU path zeroes the liquid inside the water kernel and skips the zeroing for mud
    # (a non-negative threshold): the same images as the plain steps.
    from robustbench_bn.data.corruptions import spatter
    from robustbench_bn.data.corruptions.parameters import TABLES

    images = ops.quantize(ops.gaussian_filter(torch.rand(2, 3, 64, 60), 1.0))
    seeds = torch.tensor([4, 9])
    for parameter in TABLES["imagenet"]["spatter"]:
        mean, std, liquid_sigma, threshold, strength, mode = parameter
        generators = sampling.generators_for(seeds)
        liquid = sampling.normal(generators, (1, 64, 60), dtype=torch.float64) * std + mean
        liquid = ops.gaussian_filter(liquid, liquid_sigma, mode="nearest")
        liquid = torch.where(liquid < threshold, torch.zeros_like(liquid), liquid)
        if mode == 0:
            expected = spatter._water(images, liquid, strength)
        else:
            expected = spatter._mud(images, liquid, threshold, strength)
        compiled = spatter.spatter(images, parameter, sampling.generators_for(seeds), "imagenet")
        assert torch.equal(compiled, expected), parameter
