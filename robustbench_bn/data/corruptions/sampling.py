"""Per-image random draws: each image owns a ``torch.Generator`` seeded from its own seed.

Drawing every random number of an image from its own generator (and in a fixed order per
corruption) is what makes an image's corruption independent of the batch it travels in.
Each helper makes one call per image, so the Python overhead stays at a few microseconds per
image whatever the image size.

The generators are CPU generators whatever device the engine works on, so an image's random
numbers are the same bits on every machine; the draws are then moved to the working device
(:func:`torch.get_default_device`, which the engine sets with a ``torch.device`` context).

A generator fills its numbers one after another on one core (torch's CPU sampling is not
split across threads), so large draws are spread over a thread pool, one image per task,
each writing into its own slice of one preallocated batch: the same bits as a serial loop,
in about 1/threads of the time (torch releases the GIL while it samples).

Draws of 64 numbers or more do not go through torch's samplers but through the compiled ones
of :mod:`.mersenne`, which read the generator's state, produce the same numbers (uniforms and
integers bit for bit, normals within a float rounding step) 5-10 times faster, and write the
advanced state back, so everything after draws from the generator as before.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from robustbench_bn.data.corruptions import mersenne
from robustbench_bn.data.corruptions.common_kernels import RAW

Generators = Sequence[torch.Generator]
CPU = torch.device("cpu")

#: Draws of fewer numbers per image than this run in the calling thread: below it, handing
#: the work to the pool costs more than it saves.
_SMALLEST_THREADED_DRAW = 1 << 14
#: Draws of fewer numbers than this use torch's samplers: reading and writing the generator's
#: state (5 kB, a few microseconds) costs more than the compiled loop saves.
_SMALLEST_COMPILED_DRAW = 64


def generators_for(seeds: torch.Tensor) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds.tolist()]


@functools.cache
def _pool(threads: int, process: int) -> ThreadPoolExecutor:
    # Keyed by process id: a forked child (a DataLoader worker) inherits the parent's pool
    # object but not its threads, and would wait forever on it.
    return ThreadPoolExecutor(threads, thread_name_prefix="corruption-draws")


def run_in_shares(count: int, task: Callable[[int, int], object], threaded: bool = True) -> None:
    """``task(first, step)`` over the pool's threads, each share taking images first,
    first + step, ... of ``count``: one task per thread whatever the batch size (a task per
    image cost more than the work for 32 px images). Serially ``task(0, 1)``."""
    threads = min(torch.get_num_threads(), count)
    if not threaded or threads < 2:
        task(0, 1)
        return
    pool = _pool(threads, os.getpid())
    for future in [pool.submit(task, first, threads) for first in range(threads)]:
        future.result()


def run_per_image(count: int, task: Callable[[int], object], threaded: bool = True) -> None:
    """``task(i)`` for i in range(count), spread over the pool's threads when ``threaded``."""

    def share(first: int, step: int) -> None:
        for index in range(first, count, step):
            task(index)

    run_in_shares(count, share, threaded)


def run_kernel(kernel: Callable[..., None], count: int, *arguments) -> None:
    """A compiled kernel ``kernel(*arguments, first, step)`` over the pool's threads, each
    taking its share of ``count`` images (:func:`run_in_shares`)."""
    run_in_shares(count, lambda first, step: kernel(*arguments, first, step))


def run_image_kernel(
    kernel: Callable[..., None],
    images: torch.Tensor,
    *arguments,
    out: torch.Tensor | None = None,
    finish: int = RAW,
) -> torch.Tensor:
    """Run a per-image kernel ``kernel(images, *arguments, finish, out, first, step)`` over
    the thread shares and return ``out`` (float32 of the images' shape; allocated when not
    given), each image finished as ``finish`` asks (:data:`.common_kernels.RAW` and the
    others)."""
    if out is None:
        out = torch.empty(images.shape, dtype=torch.float32)
    run_kernel(
        kernel, len(images), images.contiguous().numpy(), *arguments, int(finish), out.numpy()
    )
    return out


@contextlib.contextmanager
def generator_states(generators: Generators) -> Iterator[np.ndarray]:
    """The generators' states as one uint8 array [B, 5056] for compiled loops that draw from
    them (:mod:`.mersenne`); on leaving, each generator takes back its advanced state."""
    stacked = torch.stack([generator.get_state() for generator in generators])
    mersenne.check_state_layout(stacked[0].numpy())
    yield stacked.numpy()
    for generator, state in zip(generators, stacked, strict=True):
        generator.set_state(state.clone())


def per_image(
    generators: Generators,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    fill: Callable[[torch.Tensor, torch.Generator], object],
) -> torch.Tensor:
    """[B, *shape] draws, ``fill(slice, generator)`` writing image i's numbers into slice i."""
    draws = torch.empty((len(generators), *shape), dtype=dtype, device=CPU)
    run_per_image(
        len(generators),
        lambda index: fill(draws[index], generators[index]),
        threaded=draws[0].numel() >= _SMALLEST_THREADED_DRAW,
    )
    return draws.to(torch.get_default_device())


def _compiled(
    kernel: Callable[..., None], *arguments
) -> Callable[[torch.Tensor, torch.Generator], None]:
    """A ``fill`` running ``kernel(state, out, *arguments)`` of :mod:`.mersenne` on the
    generator's state, then handing the advanced state back to the generator."""

    def fill(out: torch.Tensor, generator: torch.Generator) -> None:
        state = generator.get_state()
        numbers = state.numpy()
        mersenne.check_state_layout(numbers)
        kernel(numbers, out.view(-1).numpy(), *arguments)
        generator.set_state(state)

    return fill


def _fill(
    shape: tuple[int, ...], draw: Callable[..., object], kernel=None, *arguments
) -> Callable[[torch.Tensor, torch.Generator], None]:
    """The per-image ``fill``: the compiled ``kernel`` of :mod:`.mersenne` (None: there is
    none for this draw) for draws of :data:`_SMALLEST_COMPILED_DRAW` numbers or more, else
    torch's ``draw(shape, generator=..., out=...)``."""
    if kernel is not None and math.prod(shape) >= _SMALLEST_COMPILED_DRAW:
        return _compiled(kernel, *arguments)

    def fill(out: torch.Tensor, generator: torch.Generator) -> None:
        # The device named: inside the engine's device context (a GPU run) torch would
        # otherwise create the draw there, against this CPU ``out`` and CPU generator.
        draw(shape, generator=generator, out=out, device=out.device)

    return fill


def uniform(
    generators: Generators,
    shape: tuple[int, ...],
    low: float = 0.0,
    high: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """[B, *shape] uniform in [low, high), one draw call per image."""
    kernel = {torch.float32: mersenne.uniform_float32, torch.float64: mersenne.uniform_float64}
    if low == 0.0 and high == 1.0:
        # x * 1 + 0 is x: two full passes saved.
        return per_image(generators, shape, dtype, _fill(shape, torch.rand, kernel.get(dtype)))
    if dtype == torch.float32 and math.prod(shape) >= _SMALLEST_COMPILED_DRAW:
        # Scaled in the compiled draw, each number while it is in a register: the same two
        # float32 roundings as the tensor operations below, without their two passes.
        scaled = _compiled(mersenne.uniform_float32_scaled, float(high - low), float(low))
        return per_image(generators, shape, dtype, scaled)
    draws = per_image(generators, shape, dtype, _fill(shape, torch.rand, kernel.get(dtype)))
    return draws * (high - low) + low


def normal(generators: Generators, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """[B, *shape] standard normal, one draw call per image."""
    kernel = {torch.float32: mersenne.normal_float32, torch.float64: mersenne.normal_float64}
    return per_image(generators, shape, dtype, _fill(shape, torch.randn, kernel.get(dtype)))


def integers(generators: Generators, low: int, high: int, shape: tuple[int, ...]) -> torch.Tensor:
    """[B, *shape] int64 in [low, high) (numpy's randint convention)."""
    # torch draws one word per number for spans below 2^28 only, as the compiled loop does.
    kernel = mersenne.integers if 1 <= high - low < 1 << 28 else None
    draw = functools.partial(torch.randint, low, high)
    fill = _fill(shape, draw, kernel, int(low), int(high - low))
    return per_image(generators, shape, torch.int64, fill)
