"""Test streams: in which order a cell's images reach a method, and which cells share a stream.

Test-batch statistics assume that every batch is an i.i.d. sample of one domain. The orders
and streams here break that assumption on purpose, the same way for every method:

* ``order=sequential``: the cell's images in their stored order (the suite's default; for the
  released CIFAR-C files and the embedded default that order is already class-mixed).
* ``order=shuffled``: a seeded uniform permutation of the cell.
* ``order=label_shift``: a non-i.i.d. stream in which classes arrive in runs, drawn by a
  Dirichlet distribution over time slots, the protocol of NOTE (Gong et al., "NOTE: Robust
  Continual Test-time Adaptation Against Temporal Correlation", NeurIPS 2022, arXiv
  2208.05117) and RoTTA (Yuan, Xie, Li, "Robust Test-Time Adaptation in Dynamic Scenarios",
  CVPR 2023, arXiv 2303.13899). The stream has as many time slots as classes; every class
  spreads its images over the slots with proportions drawn from Dirichlet(alpha, ..., alpha),
  each slot's images are shuffled, and the slots follow one another. A small ``alpha`` (0.01)
  puts nearly every class into a single slot (long runs of one or two classes: a batch of 64
  holds about two); a large one (100) gives every slot every class evenly (i.i.d.-like).

* ``stream=cells``: every cell is its own stream (reset per cell with ``runner.reset=per_cell``).
* ``stream=mixed``: all corruption cells of one severity form one stream (the method is reset
  once per severity), each image tagged with its cell so that rows stay per cell. With
  ``sequential`` and ``shuffled`` the cells' own orders are interleaved at random positions;
  with ``label_shift`` the Dirichlet order is drawn over the pooled labels, so a class run
  mixes corruptions. The clean cell is never mixed; it is evaluated alone.

Every order is a function of (seed, the cell or the severity's cells, order, alpha) alone,
computed from the labels only, so all methods of a sweep see exactly the same stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from robustbench_bn.data.benchmark import Cell, CorruptionBenchmark
from robustbench_bn.errors import ConfigurationError
from robustbench_bn.utils.files import stable_hash

ORDERS = ("sequential", "shuffled", "label_shift")
STREAMS = ("cells", "mixed")
#: Images per ``load`` call when a benchmark cannot list a cell's labels without its images.
LABEL_READ_BATCH = 512


def check_order(order: str, label_shift_alpha: float | None) -> None:
    """Refuse an unknown order or a label-shift concentration that is not a positive number."""
    if order not in ORDERS:
        raise ConfigurationError(
            f"runner.order must be one of {ORDERS}, got {order!r}. "
            "Example: rbn-run runner.order=label_shift runner.label_shift_alpha=0.01"
        )
    if order == "label_shift" and (
        isinstance(label_shift_alpha, bool)
        or not isinstance(label_shift_alpha, int | float)
        or not np.isfinite(label_shift_alpha)
        or label_shift_alpha <= 0
    ):
        raise ConfigurationError(
            "runner.label_shift_alpha must be a positive number (the Dirichlet "
            f"concentration; 0.01 strongly shifted, 100 nearly i.i.d.), got "
            f"{label_shift_alpha!r}."
        )


def check_stream(stream: str) -> None:
    if stream not in STREAMS:
        raise ConfigurationError(
            f"runner.stream must be one of {STREAMS}, got {stream!r}: 'cells' evaluates each "
            "(corruption, severity) alone, 'mixed' interleaves all corruptions of a severity."
        )


def _generator(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng(int(stable_hash([int(seed), *map(str, parts)], 15), 16))


def cell_labels(benchmark: CorruptionBenchmark, cell: Cell) -> torch.Tensor:
    """The cell's labels in stored order; from ``benchmark.cell_labels`` when it has one."""
    labels_of = getattr(benchmark, "cell_labels", None)
    if labels_of is not None:
        return torch.as_tensor(labels_of(cell), dtype=torch.int64)
    size = benchmark.cell_size(cell)
    parts = [
        benchmark.load(cell, torch.arange(start, min(start + LABEL_READ_BATCH, size)))[1]
        for start in range(0, size, LABEL_READ_BATCH)
    ]
    return torch.cat(parts).to(torch.int64)


def label_shifted_order(
    labels: np.ndarray, alpha: float, generator: np.random.Generator
) -> np.ndarray:
    """Positions of ``labels`` in a Dirichlet label-shifted order (see the module docstring)."""
    classes = np.unique(labels)
    slots: list[list[np.ndarray]] = [[] for _ in classes]
    for label in classes:
        members = generator.permutation(np.flatnonzero(labels == label))
        shares = generator.dirichlet(np.full(len(classes), float(alpha)))
        # Cut points from the cumulative shares; the last slot takes the rounding remainder.
        cuts = np.floor(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for slot, chunk in zip(slots, np.split(members, cuts), strict=True):
            if len(chunk):
                slot.append(chunk)
    ordered = [generator.permutation(np.concatenate(chunks)) for chunks in slots if chunks]
    return np.concatenate(ordered) if ordered else np.zeros(0, dtype=np.int64)


def stream_order(
    labels: torch.Tensor,
    *,
    order: str,
    label_shift_alpha: float | None,
    seed: int,
    key: object,
) -> torch.Tensor:
    """A permutation of ``range(len(labels))``; ``key`` names the cell (or mixed stream)."""
    size = len(labels)
    if order == "sequential":
        return torch.arange(size)
    generator = _generator(seed, "order", order, key, label_shift_alpha)
    if order == "shuffled":
        return torch.from_numpy(generator.permutation(size))
    if order == "label_shift":
        positions = label_shifted_order(labels.numpy(), float(label_shift_alpha), generator)
        return torch.from_numpy(positions)
    check_order(order, label_shift_alpha)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Stream:
    """One stream of images: ``cells[cell_ids[i]]``'s image ``indices[i]`` comes i-th."""

    cells: tuple[Cell, ...]
    cell_ids: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return len(self.indices)

    def counts(self) -> list[int]:
        return torch.bincount(self.cell_ids, minlength=len(self.cells)).tolist()


def build_stream(
    benchmark: CorruptionBenchmark,
    cells: list[Cell] | tuple[Cell, ...],
    *,
    order: str,
    label_shift_alpha: float | None,
    seed: int,
) -> Stream:
    """The stream of one cell (``len(cells) == 1``) or of several mixed cells."""
    cells = tuple(cells)
    if len(cells) == 1:
        cell = cells[0]
        size = benchmark.cell_size(cell)
        if order == "sequential":
            positions = torch.arange(size)
        else:
            positions = stream_order(
                cell_labels(benchmark, cell),
                order=order,
                label_shift_alpha=label_shift_alpha,
                seed=seed,
                key=str(cell),
            )
        return Stream(cells, torch.zeros(size, dtype=torch.int64), positions)
    key = "mixed:" + ",".join(map(str, cells))
    if order == "label_shift":
        labels = [cell_labels(benchmark, cell) for cell in cells]
        pooled_ids = torch.cat([torch.full((len(x),), i) for i, x in enumerate(labels)])
        pooled_indices = torch.cat([torch.arange(len(x)) for x in labels])
        positions = stream_order(
            torch.cat(labels),
            order=order,
            label_shift_alpha=label_shift_alpha,
            seed=seed,
            key=key,
        )
        return Stream(cells, pooled_ids[positions], pooled_indices[positions])
    per_cell = [
        build_stream(
            benchmark, [cell], order=order, label_shift_alpha=label_shift_alpha, seed=seed
        ).indices
        for cell in cells
    ]
    # A random interleaving that keeps every cell's own order: shuffle the cell tags, then
    # hand each cell's images out in order at the positions tagged with it.
    tags = torch.cat([torch.full((len(x),), i) for i, x in enumerate(per_cell)])
    cell_ids = tags[torch.from_numpy(_generator(seed, "interleave", key).permutation(len(tags)))]
    indices = torch.empty_like(cell_ids)
    for i, own in enumerate(per_cell):
        indices[cell_ids == i] = own
    return Stream(cells, cell_ids, indices)


def sample_positions(stream: Stream, count: int, seed: int) -> torch.Tensor:
    """``count`` random positions of a stream, for methods that adapt on a sample first."""
    if count > len(stream):
        where = stream.cells[0] if len(stream.cells) == 1 else "the mixed stream"
        raise ConfigurationError(
            f"The method wants {count} samples of each cell but {where} has only {len(stream)} "
            "images; lower method.n_samples or raise dataset.n_examples."
        )
    key = str(stream.cells[0]) if len(stream.cells) == 1 else [str(c) for c in stream.cells]
    generator = torch.Generator().manual_seed(int(stable_hash([seed, key], 15), 16))
    # Drawn over the images in stored order (cell after cell), then found in the stream: the
    # sample is the same images whatever the order, and for one cell in sequential order the
    # same as before test streams existed.
    chosen = torch.randperm(len(stream), generator=generator)[:count]
    offsets = torch.cumsum(torch.tensor([0, *stream.counts()[:-1]]), 0)
    stored = offsets[stream.cell_ids] + stream.indices
    position_of = torch.empty_like(stored)
    position_of[stored] = torch.arange(len(stream))
    return position_of[chosen]


def load_positions(
    benchmark: CorruptionBenchmark, stream: Stream, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels at ``positions`` of the stream, one ``load`` per cell involved."""
    cell_ids = stream.cell_ids[positions]
    indices = stream.indices[positions]
    if len(stream.cells) == 1:
        return benchmark.load(stream.cells[0], indices)
    present = torch.unique(cell_ids).tolist()
    if len(present) == 1:
        return benchmark.load(stream.cells[present[0]], indices)
    images = labels = None
    for cell_id in present:
        chosen = torch.nonzero(cell_ids == cell_id).squeeze(1)
        part_images, part_labels = benchmark.load(stream.cells[cell_id], indices[chosen])
        if images is None:
            images = part_images.new_empty((len(positions), *part_images.shape[1:]))
            labels = part_labels.new_empty(len(positions))
        images[chosen] = part_images
        labels[chosen] = part_labels
    return images, labels


def iterate_stream(
    benchmark: CorruptionBenchmark, stream: Stream, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batches ``(images, labels, cell_ids)`` of the stream in its order."""
    expect_order = getattr(benchmark, "expect_order", None)
    if expect_order is not None and len(stream.cells) == 1:
        # A benchmark that reads ahead (the JPEG trees' decode threads) follows the stream.
        expect_order(stream.cells[0], stream.indices)
    for start in range(0, len(stream), batch_size):
        positions = torch.arange(start, min(start + batch_size, len(stream)))
        images, labels = load_positions(benchmark, stream, positions)
        yield images, labels, stream.cell_ids[positions]


def plan_units(cells: list[Cell], stream: str) -> list[list[Cell]]:
    """The cells grouped into streams: one per cell, or (mixed) the clean cell alone and one
    stream per severity holding all of that severity's corruptions, in planned order."""
    if stream == "cells":
        return [[cell] for cell in cells]
    units: list[list[Cell]] = []
    by_severity: dict[int, list[Cell]] = {}
    for cell in cells:
        if cell.is_clean:
            units.append([cell])
        else:
            if cell.severity not in by_severity:
                by_severity[cell.severity] = []
                units.append(by_severity[cell.severity])
            by_severity[cell.severity].append(cell)
    return units
