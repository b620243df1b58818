"""Released corruption benchmarks read from disk in their published layouts.

* CIFAR-10-C (Zenodo record 2535967) and CIFAR-100-C (Zenodo 3555552), Hendrycks &
  Dietterich 2019: ``<root>/<corruption>.npy``, uint8 (50000, 32, 32, 3), severities 1..5
  stacked 10,000 each (severity s = rows [(s-1)*10000, s*10000)), ``labels.npy`` uint8
  (50000,). The files are memory-mapped; a severity is a slice; images stay uint8 until a
  batch is converted. The clean cell needs the clean test set (``clean_dir``, CIFAR's python
  pickle batches); without it, runs must set ``dataset.include_clean=false``.
* ImageNet-C (Zenodo 2235448) and Tiny-ImageNet-C (Zenodo 2536630):
  ``<root>/<corruption>/<severity>/<wnid>/<file>.JPEG``; class index from the sorted wnid
  folders. ``subset`` selects images: ``all`` (default) or ``balanced_5000`` (5 images per
  class, the first 5 of each class folder in sorted order: a deterministic 5,000-image subset
  for ImageNet-C; RobustBench's own 5,000-file list is not shipped here). The choice is
  written into every row.
"""

from __future__ import annotations

import pickle
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_bn.data.benchmark import CLEAN, Cell, check_severity
from robustbench_bn.data.corruptions import BENCHMARK_CORRUPTIONS
from robustbench_bn.errors import ConfigurationError, DatasetNotFoundError

CIFAR_C_RELEASES = {
    "cifar10_c": {
        "archive": "CIFAR-10-C.tar",
        "url": "https://zenodo.org/records/2535967",
        "classes": 10,
        "clean": "cifar-10-batches-py",
    },
    "cifar100_c": {
        "archive": "CIFAR-100-C.tar",
        "url": "https://zenodo.org/records/3555552",
        "classes": 100,
        "clean": "cifar-100-python",
    },
}
#: The release's files: the 15 benchmark corruptions and its 4 extra ones (spatter included,
#: which the suite's engine does not generate yet).
CIFAR_C_CORRUPTIONS = BENCHMARK_CORRUPTIONS + (
    "speckle_noise",
    "gaussian_blur",
    "spatter",
    "saturate",
)
IMAGES_PER_SEVERITY = 10_000


def _missing(name: str, root: Path, detail: str) -> DatasetNotFoundError:
    release = CIFAR_C_RELEASES[name]
    return DatasetNotFoundError(
        f"{name} at {root}: {detail}\nExpected layout: {root}/<corruption>.npy (uint8, "
        f"50000x32x32x3, severities 1-5 stacked) and {root}/labels.npy (uint8, 50000).\n"
        f"Get it: rbn-data download {name} --root {root.parent}   "
        f"(or fetch {release['archive']} from {release['url']} and untar it)."
    )


def _load_array(path: Path, *, name: str, root: Path, shape: tuple[int, ...] | None) -> np.ndarray:
    if not path.is_file():
        raise _missing(name, root, f"{path.name} is missing.")
    try:
        array = np.load(path, mmap_mode="r")
    except ValueError as error:
        raise ConfigurationError(
            f"{path} is not a readable .npy file ({error}); it is probably truncated. "
            f"Delete it and download {name} again (rbn-data verify {name} --root {root})."
        ) from error
    if array.dtype != np.uint8 or (shape is not None and tuple(array.shape) != shape):
        raise ConfigurationError(
            f"{path} has dtype {array.dtype} and shape {tuple(array.shape)}; the release has "
            f"uint8 {shape or 'labels'}. It is not a {name} file: download it again."
        )
    return array


def _read_cifar_test_pickle(clean_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    folder = clean_dir / CIFAR_C_RELEASES[name]["clean"]
    path = folder / "test_batch" if name == "cifar10_c" else folder / "test"
    if not path.is_file():
        raise DatasetNotFoundError(
            f"The clean {name[:-2]} test set is not at {path}. Put the python version of "
            f"CIFAR there (torchvision.datasets.CIFAR{10 if name == 'cifar10_c' else 100}"
            f"(root='{clean_dir}', train=False, download=True)) or run with "
            "dataset.include_clean=false."
        )
    with open(path, "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(batch[b"labels" if b"labels" in batch else b"fine_labels"])
    return images, labels


class CifarCorrupted:
    """CIFAR-10-C / CIFAR-100-C from the released ``.npy`` files (see the module docstring)."""

    def __init__(
        self, *, name: str, root: str, clean_dir: str | None = None, n_examples: int | None = None
    ) -> None:
        if name not in CIFAR_C_RELEASES:
            raise ConfigurationError(f"Unknown release {name!r}; known: {list(CIFAR_C_RELEASES)}.")
        self.name = name
        self.num_classes = CIFAR_C_RELEASES[name]["classes"]
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise _missing(name, self.root, "the folder does not exist.")
        self.clean_dir = Path(clean_dir).expanduser() if clean_dir else None
        labels_path = self.root / "labels.npy"
        labels = _load_array(labels_path, name=name, root=self.root, shape=None)
        if labels.ndim != 1 or len(labels) % 5:
            raise ConfigurationError(
                f"{labels_path} has shape {labels.shape}; the release has one label per image "
                "of five stacked severities (50000,). Download it again."
            )
        # 10,000 in the release; miniature copies for tests keep the layout with fewer.
        self.per_severity = len(labels) // 5
        n_examples = self.per_severity if n_examples is None else n_examples
        if not 1 <= n_examples <= self.per_severity:
            raise ConfigurationError(
                f"dataset.n_examples must be 1..{self.per_severity} (null: all), got {n_examples}."
            )
        self.n_examples = n_examples
        self._labels = torch.from_numpy(np.asarray(labels[: self.per_severity]).astype(np.int64))

    def available_corruptions(self) -> tuple[str, ...]:
        return tuple(c for c in CIFAR_C_CORRUPTIONS if (self.root / f"{c}.npy").is_file()) or (
            CIFAR_C_CORRUPTIONS
        )

    def cell_size(self, cell: Cell) -> int:
        return self.n_examples

    def row_fields(self) -> dict[str, Any]:
        return {
            "n_examples": self.n_examples,
            "subset": f"first_{self.n_examples}",
            "corruption_source": f"released:{self.name}",
        }

    def training_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise ConfigurationError(
            f"{self.name} ships no training split; methods that need source data (dmc, "
            "finetune=advbn) need a clean CIFAR training set, which this loader does not read yet."
        )

    @cache  # noqa: B019  (one array per corruption for the lifetime of the benchmark)
    def _array(self, corruption: str) -> np.ndarray:
        return _load_array(
            self.root / f"{corruption}.npy",
            name=self.name,
            root=self.root,
            shape=(5 * self.per_severity, 32, 32, 3),
        )

    @cache  # noqa: B019
    def _clean(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.clean_dir is None:
            raise ConfigurationError(
                f"The clean cell of {self.name} needs dataset.clean_dir (CIFAR's python "
                "test batches); or set dataset.include_clean=false."
            )
        images, labels = _read_cifar_test_pickle(self.clean_dir, self.name)
        return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))

    def load(self, cell: Cell, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if cell.corruption == CLEAN:
            images, labels = self._clean()
            return images[indices].float().div_(255), labels[indices]
        check_severity(cell.severity)
        offset = (cell.severity - 1) * self.per_severity
        rows = np.asarray(indices) + offset
        # Sorted, contiguous reads from the memory map; uint8 until here, then one conversion.
        block = torch.from_numpy(np.ascontiguousarray(self._array(cell.corruption)[rows]))
        images = block.permute(0, 3, 1, 2).float().div_(255)
        return images, self._labels[indices]


def cifar10_c(
    *, root: str, clean_dir: str | None = None, n_examples: int | None = None
) -> CifarCorrupted:
    """Hydra entry point for ``dataset=cifar10_c``."""
    return CifarCorrupted(name="cifar10_c", root=root, clean_dir=clean_dir, n_examples=n_examples)


def cifar100_c(
    *, root: str, clean_dir: str | None = None, n_examples: int | None = None
) -> CifarCorrupted:
    """Hydra entry point for ``dataset=cifar100_c``."""
    return CifarCorrupted(name="cifar100_c", root=root, clean_dir=clean_dir, n_examples=n_examples)
