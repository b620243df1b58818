"""The compiled kernels of :mod:`.noise`: shot noise's inverse-CDF table walk, gaussian
and speckle noise, impulse noise's selection, each also drawing its random numbers from the
images' generators inside the loop (:mod:`.mersenne`). Conventions in
:mod:`.common_kernels`."""

from __future__ import annotations

import numba
import numpy as np
import torch

from robustbench_bn.data.corruptions import mersenne
from robustbench_bn.data.corruptions.common_kernels import RAW, deliver_image, image_target
from robustbench_bn.data.corruptions.sampling import generator_states, run_image_kernel, run_kernel


@numba.njit(nogil=True, cache=True)
def _shot_noise_block(pixels, uniforms, table, guide, photons, noisy, rows, keys, slices, counts):
    # pragma: no cover - compiled
    # float32 arithmetic where the torch path computes in float32, so both give the same bits.
    # Three passes over a block that stays in the cache: the levels, keys and guide slices
    # (which vectorize), the table walk (which cannot), the counts to values (vectorized);
    # 0.9 -> 0.6 ms per 224 px image here against one loop doing all three.
    width = table.shape[1]
    bins = guide.shape[1] - 1
    scale = np.float32(255.0)
    tolerance = np.float32(1e-6)
    count = pixels.shape[0]
    off_grid = False
    for index in range(count):
        value = pixels[index]
        level = np.rint(value * scale)
        off_grid |= abs(level / scale - value) > tolerance
        key = np.float64(level) + uniforms[index]
        rows[index] = np.int64(level)
        keys[index] = key
        slices[index] = np.int64((key - rows[index]) * bins)
    if off_grid:
        return False
    last = width - 1
    for index in range(count):
        row, key = rows[index], keys[index]
        found = guide[row, slices[index]]
        while found < width and table[row, found] <= key:
            found += 1
        counts[index] = min(found, last)
    for index in range(count):
        noisy[index] = np.float32(counts[index]) / photons
    return True


@numba.njit(nogil=True, cache=True)
def _shot_noise(pixels, uniforms, table, guide, photons, noisy):  # pragma: no cover - compiled
    # :func:`_shot_noise_block` block by block: False as soon as a pixel is off the grid.
    size = min(pixels.shape[0], mersenne.CHUNK)
    rows = np.empty(size, np.int64)
    keys = np.empty(size, np.float64)
    slices = np.empty(size, np.int64)
    counts = np.empty(size, np.int32)
    for start in range(0, pixels.shape[0], size):
        stop = min(start + size, pixels.shape[0])
        if not _shot_noise_block(
            pixels[start:stop],
            uniforms[start:stop],
            table,
            guide,
            photons,
            noisy[start:stop],
            rows,
            keys,
            slices,
            counts,
        ):
            return False
    return True


@numba.njit(nogil=True, cache=True)
def _shot_noise_share(pixels, uniforms, table, guide, photons, noisy, on_grid, first, step):
    for index in range(first, pixels.shape[0], step):  # pragma: no cover - compiled
        on_grid[index] = _shot_noise(
            pixels[index], uniforms[index], table, guide, photons, noisy[index]
        )


def shot_noise(
    images: torch.Tensor,
    uniforms: torch.Tensor,
    table: torch.Tensor,
    guide: torch.Tensor,
    photons: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled twin of :func:`.noise.shot_noise`'s table path for CPU tensors: the noisy
    images and, per image, whether it was on the uint8 grid (if not, its result is unset)."""
    batch = images.shape[0]
    pixels = images.reshape(batch, -1).contiguous()
    flat_uniforms = uniforms.reshape(batch, -1).contiguous()
    noisy = torch.empty_like(pixels)
    on_grid = torch.zeros(batch, dtype=torch.bool)
    run_kernel(
        _shot_noise_share,
        batch,
        pixels.numpy(),
        flat_uniforms.numpy(),
        table.numpy(),
        guide.numpy(),
        np.float32(photons),
        noisy.numpy(),
        on_grid.numpy(),
    )
    return noisy.view_as(images), on_grid


@numba.njit(nogil=True, cache=True)
def _shot_noise_drawing_share(
    pixels, states, table, guide, photons, on_grid, finish, noisy, first, step
):  # pragma: no cover - compiled
    # :func:`_shot_noise` with each image's float64 uniforms drawn chunk by chunk from its
    # generator's state (the numbers ``sampling.uniform`` would return) instead of read from
    # a batch of them: no pass through memory. An image off the grid still consumes all its
    # uniforms, as the batch draw did, before its torch.poisson fallback (whose result the
    # caller finishes: an image off the grid is left unset).
    count = pixels.shape[1]
    buffer = np.empty(2 * mersenne.CHUNK, np.uint32)
    uniforms = np.empty(mersenne.CHUNK, np.float64)
    scratch = np.empty(count, np.float32)
    rows = np.empty(mersenne.CHUNK, np.int64)
    keys = np.empty(mersenne.CHUNK, np.float64)
    slices = np.empty(mersenne.CHUNK, np.int64)
    counts = np.empty(mersenne.CHUNK, np.int32)
    for index in range(first, pixels.shape[0], step):
        target = image_target(scratch, noisy, index, finish)
        words, position = mersenne.open_state(states[index])
        grid = True
        for start in range(0, count, mersenne.CHUNK):
            stop = min(start + mersenne.CHUNK, count)
            chunk = uniforms[: stop - start]
            mersenne.float64_uniforms(words, position, buffer, chunk)
            if grid:
                grid = _shot_noise_block(
                    pixels[index, start:stop],
                    chunk,
                    table,
                    guide,
                    photons,
                    target[start:stop],
                    rows,
                    keys,
                    slices,
                    counts,
                )
        mersenne.close_state(states[index], words, position)
        on_grid[index] = grid
        if grid:
            deliver_image(scratch, noisy, index, finish)


def shot_noise_drawing(
    images: torch.Tensor,
    generators,
    table: torch.Tensor,
    guide: torch.Tensor,
    photons: float,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`shot_noise` drawing each image's float64 uniforms (shape of the image) from its
    generator inside the compiled loop, then advancing the generators as the draw would.
    The images on the grid are finished as ``finish`` asks into ``out`` (when given)."""
    batch = images.shape[0]
    pixels = images.reshape(batch, -1).contiguous()
    noisy = torch.empty_like(pixels) if out is None else out.view(batch, -1)
    on_grid = torch.zeros(batch, dtype=torch.bool)
    with generator_states(generators) as states:
        run_kernel(
            _shot_noise_drawing_share,
            batch,
            pixels.numpy(),
            states,
            table.numpy(),
            guide.numpy(),
            np.float32(photons),
            on_grid.numpy(),
            int(finish),
            noisy.numpy(),
        )
    return (noisy.view_as(images) if out is None else out), on_grid


@numba.njit(nogil=True, cache=True)
def _normal_noise_share(images, states, scale, speckle, finish, out, first, step):
    # pragma: no cover - compiled
    # :func:`.noise.gaussian_noise` (x + n * scale) or :func:`.noise.speckle_noise`
    # (x + x * n * scale) with the image's float32 normals drawn into a buffer that stays in
    # the cache, in float32 like the tensor steps.
    noise = np.empty(images[0].size, np.float32)
    scratch = np.empty(out.shape[1:], np.float32)
    for index in range(first, images.shape[0], step):
        words, position = mersenne.open_state(states[index])
        mersenne.normal_fill_float32(words, position, noise)
        mersenne.close_state(states[index], words, position)
        pixels = images[index].ravel()
        target = image_target(scratch, out, index, finish).ravel()
        if speckle:
            for position in range(pixels.shape[0]):
                target[position] = pixels[position] + pixels[position] * noise[position] * scale
        else:
            for position in range(pixels.shape[0]):
                target[position] = pixels[position] + noise[position] * scale
        deliver_image(scratch, out, index, finish)


def normal_noise(
    images: torch.Tensor,
    generators,
    scale: float,
    speckle: bool,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """Gaussian (or, with ``speckle``, speckle) noise on CPU float32 images [B, C, H, W] of 16
    or more numbers each, drawing the normals ``sampling.normal`` would return inside the
    compiled loop and advancing the generators as that draw would."""
    with generator_states(generators) as states:
        return run_image_kernel(
            _normal_noise_share,
            images,
            states,
            np.float32(scale),
            speckle,
            out=out,
            finish=finish,
        )


@numba.njit(nogil=True, cache=True)
def _impulse_share(images, draws, amount, finish, out, first, step):
    # pragma: no cover - compiled
    # :func:`.noise.impulse_noise`'s selection: replaced where the first draw < amount, by
    # salt (1) where the second < 0.5, else pepper (0).
    scratch = np.empty(out.shape[1:], np.float32)
    for index in range(first, images.shape[0], step):
        pixels = images[index].ravel()
        replace = draws[index, 0].ravel()
        salt = draws[index, 1].ravel()
        target = image_target(scratch, out, index, finish).ravel()
        for position in range(pixels.shape[0]):
            if replace[position] < amount:
                target[position] = np.float32(1.0) if salt[position] < 0.5 else np.float32(0.0)
            else:
                target[position] = pixels[position]
        deliver_image(scratch, out, index, finish)


def impulse_noise(
    images: torch.Tensor,
    draws: torch.Tensor,
    amount: float,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """The compiled twin of :func:`.noise.impulse_noise`'s selection for CPU float32 images
    [B, C, H, W] and their uniform draws [B, 2, C, H, W]."""
    return run_image_kernel(
        _impulse_share,
        images,
        draws.contiguous().numpy(),
        np.float32(amount),
        out=out,
        finish=finish,
    )


@numba.njit(nogil=True, cache=True)
def _impulse_drawing_share(images, states, amount, finish, out, first, step):
    # pragma: no cover - compiled
    # :func:`_impulse_share` with the image's two blocks of float32 uniforms (which pixels,
    # then salt or pepper) drawn from its generator: the first block into a buffer that stays
    # in the cache, the second chunk by chunk as it is used.
    count = images[0].size
    replace = np.empty(count, np.float32)
    salt = np.empty(mersenne.CHUNK, np.float32)
    buffer = np.empty(mersenne.CHUNK, np.uint32)
    scratch = np.empty(out.shape[1:], np.float32)
    for index in range(first, images.shape[0], step):
        words, position = mersenne.open_state(states[index])
        for start in range(0, count, mersenne.CHUNK):
            mersenne.float32_uniforms(
                words, position, buffer, replace[start : start + mersenne.CHUNK]
            )
        pixels = images[index].ravel()
        target = image_target(scratch, out, index, finish).ravel()
        for start in range(0, count, mersenne.CHUNK):
            stop = min(start + mersenne.CHUNK, count)
            chunk = salt[: stop - start]
            mersenne.float32_uniforms(words, position, buffer, chunk)
            for offset in range(stop - start):
                spot = start + offset
                if replace[spot] < amount:
                    target[spot] = np.float32(1.0) if chunk[offset] < 0.5 else np.float32(0.0)
                else:
                    target[spot] = pixels[spot]
        mersenne.close_state(states[index], words, position)
        deliver_image(scratch, out, index, finish)


def impulse_noise_drawing(
    images: torch.Tensor,
    generators,
    amount: float,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """:func:`impulse_noise` drawing each image's uniforms [2, C, H, W] (the numbers
    ``sampling.uniform`` would return) inside the compiled loop, then advancing the
    generators as that draw would."""
    with generator_states(generators) as states:
        return run_image_kernel(
            _impulse_drawing_share, images, states, np.float32(amount), out=out, finish=finish
        )
