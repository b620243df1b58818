"""Corruption benchmarks made on the fly from a clean test set by the suite's corruption engine.

Used for datasets without a released "-C" and for the embedded default, Fashion-MNIST-C. A
cell is the first ``n_examples`` clean test images corrupted at one severity; every image's
randomness comes from (dataset, index, corruption, severity, seed), so a cell is the same
whatever the batch size, the method or the process that asks for it.

A corrupted cell is computed once per process and, with ``cache_dir`` set, stored on disk as
uint8 (lossless, since the engine quantizes to the uint8 grid like the released sets) under a
key that includes a hash of the engine's source, so a change to the engine never serves stale
images.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from functools import cache
from pathlib import Path
from typing import Any

import torch

from robustbench_bn.data import corruptions as engine
from robustbench_bn.data.benchmark import CLEAN, Cell, check_severity
from robustbench_bn.data.fashion_mnist import ImageSet, load_fashion_mnist
from robustbench_bn.errors import ConfigurationError
from robustbench_bn.utils.devices import resolve_device
from robustbench_bn.utils.files import atomic_write, stable_hash

log = logging.getLogger(__name__)
_CORRUPTION_CHUNK = 512
#: Corrupted cells kept in memory at once. A mixed stream (runner.stream=mixed) reads all
#: corruptions of a severity batch by batch; on the embedded default (2,000 images, 3 KB each)
#: 15 cells are 92 MB. At least the newest cell is always kept.
_CELL_MEMORY_BYTES = 1 << 30


@cache
def engine_source_hash() -> str:
    """Hash of the corruption engine's source files, part of every on-disk cache key."""
    digest = hashlib.sha256()
    for path in sorted(Path(engine.__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def resolve_corruption_device(device: str) -> str:
    """ "cpu" (the default: the same images on every machine), "auto" (CUDA when available)
    or an explicit torch device such as "cuda:1". The device is written into every row; on
    an H200 the embedded default's 152 cells had the same correct counts with the engine on
    the CPU and on the GPU (results/gpu/README_h200.md)."""
    return str(resolve_device(device, setting="dataset.corruption_device"))


class OnTheFlyCorruptions:
    """A corruption benchmark over any clean uint8 test set; see the module docstring."""

    def __init__(
        self,
        *,
        name: str,
        test_set: ImageSet,
        num_classes: int,
        n_examples: int | None = None,
        seed: int = 0,
        family: str | None = None,
        cache_dir: str | None = None,
        corruption_device: str = "cpu",
        training_loader: Any = None,
    ) -> None:
        available = len(test_set)
        if n_examples is None:
            n_examples = available
        if not isinstance(n_examples, int) or n_examples < 1:
            raise ConfigurationError(
                f"dataset.n_examples must be a positive integer or null (all), got {n_examples!r}."
            )
        if n_examples > available:
            raise ConfigurationError(
                f"dataset.n_examples={n_examples} but the {name} test set has only {available} "
                f"images; use dataset.n_examples={available} or less (null means all)."
            )
        self.name = name
        self.num_classes = num_classes
        self.n_examples = n_examples
        self.seed = seed
        image_size = int(test_set.images.shape[-1])
        self.family = family or engine.family_for_size(image_size)
        if self.family not in engine.FAMILIES:
            raise ConfigurationError(
                f"Unknown corruption family {self.family!r}; expected one of {engine.FAMILIES}."
            )
        self.corruption_device = resolve_corruption_device(corruption_device)
        self._clean_images = test_set.images[:n_examples]
        self._labels = test_set.labels[:n_examples]
        self._cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self._training_loader = training_loader
        self._in_memory: OrderedDict[Cell, torch.Tensor] = OrderedDict()

    def available_corruptions(self) -> tuple[str, ...]:
        return engine.ALL_CORRUPTIONS

    def cell_size(self, cell: Cell) -> int:
        return self.n_examples

    def cell_labels(self, cell: Cell) -> torch.Tensor:
        """Every cell holds the same test images, so the same labels (for test streams)."""
        return self._labels

    def row_fields(self) -> dict[str, Any]:
        return {
            "n_examples": self.n_examples,
            "subset": f"first_{self.n_examples}",
            "corruption_source": f"on_the_fly:{self.family}",
            "data_seed": self.seed,
            "corruption_device": self.corruption_device,
        }

    def training_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._training_loader is None:
            raise ConfigurationError(f"The {self.name} benchmark has no training split configured.")
        training = self._training_loader()
        return training.images, training.labels

    def load(self, cell: Cell, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cell_images = self._cell_images(cell)
        first = int(indices[0]) if len(indices) else 0
        if torch.equal(indices, torch.arange(first, first + len(indices))):
            # The evaluation batches: a slice, not a gather. uint8; the runner converts.
            return cell_images[first : first + len(indices)], self._labels[indices]
        return cell_images[indices], self._labels[indices]

    def _cell_images(self, cell: Cell) -> torch.Tensor:
        if cell in self._in_memory:
            self._in_memory.move_to_end(cell)
            return self._in_memory[cell]
        if cell.corruption == CLEAN:
            images = self._clean_images
        else:
            images = self._load_or_corrupt(cell)
        self._in_memory[cell] = images
        while len(self._in_memory) > 1 and (
            sum(kept.nbytes for kept in self._in_memory.values()) > _CELL_MEMORY_BYTES
        ):
            self._in_memory.popitem(last=False)
        return images

    def _cache_path(self, cell: Cell) -> Path | None:
        if self._cache_dir is None:
            return None
        key = stable_hash(
            {
                "dataset": self.name,
                "n": self.n_examples,
                "seed": self.seed,
                "family": self.family,
                "cell": str(cell),
                "engine": engine_source_hash(),
                "device": self.corruption_device,
            }
        )
        return self._cache_dir / "corrupted" / self.name / f"{cell}-{key}.pt"

    def _load_or_corrupt(self, cell: Cell) -> torch.Tensor:
        check_severity(cell.severity)
        path = self._cache_path(cell)
        if path is not None and path.is_file():
            try:
                return torch.load(path, weights_only=True)
            except Exception:  # a damaged cache entry is recomputed, never trusted
                log.warning("Ignoring unreadable cache entry %s", path)
        corrupted = torch.empty_like(self._clean_images)
        for start in range(0, self.n_examples, _CORRUPTION_CHUNK):
            stop = min(start + _CORRUPTION_CHUNK, self.n_examples)
            indices = torch.arange(start, stop)
            seeds = engine.image_seeds(
                self.name, cell.corruption, cell.severity, self.seed, indices
            )
            clean = self._clean_images[start:stop].float().div_(255)
            images = engine.corrupt(
                clean,
                cell.corruption,
                cell.severity,
                seeds=seeds,
                family=self.family,
                device=self.corruption_device,
            )
            # The engine quantizes to the uint8 grid, so rounding here is exact.
            corrupted[start:stop] = images.mul_(255).round_().to(torch.uint8)
        if path is not None:
            atomic_write(path, lambda temporary: torch.save(corrupted, temporary))
        return corrupted


def fashion_mnist_c(
    *,
    data_dir: str | None = None,
    download: bool = False,
    n_examples: int | None = None,
    seed: int = 0,
    family: str | None = None,
    cache_dir: str | None = None,
    corruption_device: str = "cpu",
) -> OnTheFlyCorruptions:
    """Fashion-MNIST-C: the Fashion-MNIST test set, padded to 3x32x32, corrupted on the fly."""
    test_set = load_fashion_mnist("test", data_dir=data_dir, download=download)
    return OnTheFlyCorruptions(
        name="fashion_mnist_c",
        test_set=test_set,
        num_classes=10,
        n_examples=n_examples,
        seed=seed,
        family=family,
        cache_dir=cache_dir,
        corruption_device=corruption_device,
        training_loader=lambda: load_fashion_mnist("train", data_dir=data_dir, download=download),
    )
