"""The one interface the runner needs from a corruption benchmark.

A benchmark is a set of *cells*: the clean test set (``Cell("clean", 0)``) and one cell per
(corruption, severity). The runner asks a benchmark only for a cell's size and for the images
at given indices; how they are made (read from a released ``.npy``, decoded from a JPEG tree,
corrupted on the fly) is the benchmark's own business. Images always leave a benchmark as
float32 [B,3,H,W] in [0, 1]; normalization belongs to the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from robustbench_bn.errors import ConfigurationError

CLEAN = "clean"
SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True, order=True)
class Cell:
    corruption: str
    severity: int

    @property
    def is_clean(self) -> bool:
        return self.corruption == CLEAN

    def __str__(self) -> str:
        return CLEAN if self.is_clean else f"{self.corruption}-{self.severity}"


CLEAN_CELL = Cell(CLEAN, 0)


@runtime_checkable
class CorruptionBenchmark(Protocol):
    """What a dataset config builds (through its ``_target_``) for the runner."""

    name: str
    num_classes: int

    def available_corruptions(self) -> tuple[str, ...]:
        """Corruption names this benchmark can serve."""

    def cell_size(self, cell: Cell) -> int:
        """Number of images in a cell."""

    def load(self, cell: Cell, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and int64 labels at ``indices`` of ``cell``.

        Images are uint8 [B,3,H,W] as stored (the runner converts them to float in [0, 1] on
        the evaluation device, so a quarter of the bytes cross to it), or float32 in [0, 1]
        for a source that is not on the uint8 grid.
        """

    def row_fields(self) -> dict[str, Any]:
        """Choices that change the numbers (subset, image family, ...), for every result row."""

    def training_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The clean training split (uint8 [N,3,H,W], labels), for methods that need it."""


def check_severity(severity: Any) -> int:
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ConfigurationError(
            f"Severity must be an integer from 1 to 5, got {severity!r}. "
            "Example: rbn-run 'dataset.severities=[1,3,5]'."
        )
    return severity


def as_float_images(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] from what ``load`` returns (uint8 0..255 or float already)."""
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images


def iterate_cell(
    benchmark: CorruptionBenchmark, cell: Cell, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The whole cell in order, in batches of ``batch_size``."""
    size = benchmark.cell_size(cell)
    for start in range(0, size, batch_size):
        yield benchmark.load(cell, torch.arange(start, min(start + batch_size, size)))
