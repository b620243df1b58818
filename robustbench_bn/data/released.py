"""Released corruption benchmarks read from disk in their published layouts.

* CIFAR-10-C (Zenodo record 2535967) and CIFAR-100-C (Zenodo 3555552), Hendrycks &
  Dietterich 2019: ``<root>/<corruption>.npy``, uint8 (50000, 32, 32, 3), severities 1..5
  stacked 10,000 each (severity s = rows [(s-1)*10000, s*10000)), ``labels.npy`` uint8
  (50000,). The files are memory-mapped; a severity is a slice; images stay uint8 until a
  batch is converted, in one step, to float. The clean cell reads CIFAR's python pickles
  (``clean_dir``, see :mod:`.clean_sets`); without them, set ``dataset.include_clean=false``.
* ImageNet-C (Zenodo 2235448) and Tiny-ImageNet-C (Zenodo 2536630):
  ``<root>/<corruption>/<severity>/<wnid>/<file>.JPEG`` (224 px, resp. 64 px); the class
  index comes from the sorted wnid folders. ``subset`` selects the images (``all`` by
  default; ``balanced`` with ``images_per_class=5`` is a deterministic 5,000-image subset of
  ImageNet-C; ``file`` reads a user-given list such as RobustBench's, which is not shipped
  here). The choice is written into every row. JPEGs are decoded by
  :mod:`robustbench_bn.data.jpeg`: ``num_workers`` threads decode ahead of the runner, with
  libjpeg-turbo on the CPU or nvJPEG on the GPU (``decode_device``, written into every row);
  images that are already at the release's size are never resized or cropped again.

Release facts (URLs, archives, checksums where they can be cited, shapes) live in the JSON
manifests next to this module; ``rbn-data`` downloads and verifies with them.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_bn.data.benchmark import CLEAN, Cell, check_severity
from robustbench_bn.data.clean_sets import (
    IMAGENET_CROP,
    IMAGENET_RESIZE,
    ImageSubset,
    cifar_folder,
    list_class_folders,
    load_cifar,
    load_image_folder,
)
from robustbench_bn.data.jpeg import JpegFiles, resolve_decode_device
from robustbench_bn.errors import ConfigurationError, DatasetNotFoundError

MANIFEST_DIR = Path(__file__).parent / "manifests"


@cache
def release_manifest(name: str) -> dict[str, Any]:
    """The shipped manifest of a release: URLs, archives, layout, shapes, known checksums."""
    path = MANIFEST_DIR / f"{name}.json"
    if not path.is_file():
        raise ConfigurationError(f"Unknown release {name!r}; known: {', '.join(release_names())}.")
    return json.loads(path.read_text())


def release_names() -> tuple[str, ...]:
    return tuple(sorted(path.stem for path in MANIFEST_DIR.glob("*.json")))


#: The CIFAR-C release's 19 files: the 15 benchmark corruptions and the 4 extra ones.
CIFAR_C_CORRUPTIONS: tuple[str, ...] = tuple(release_manifest("cifar10_c")["corruptions"])


def download_hint(name: str, root: Path) -> str:
    """How to get a release into ``root`` (the folder that holds its files)."""
    manifest = release_manifest(name)
    return (
        f"Get it: rbn-data download {name} --root {root.parent}   (or fetch "
        f"{', '.join(a['file'] for a in manifest['archives'])} from {manifest['record']} and "
        f"untar into {root.parent}); then check it: rbn-data verify {name} --root {root}"
    )


# --------------------------------------------------------------------------- CIFAR-10/100-C


def _missing(name: str, root: Path, detail: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{name} at {root}: {detail}\nExpected layout: {root}/<corruption>.npy (uint8, "
        f"50000x32x32x3, severities 1-5 stacked) and {root}/labels.npy (uint8, 50000).\n"
        + download_hint(name, root)
    )


def _load_array(path: Path, *, name: str, root: Path, shape: tuple[int, ...] | None) -> np.ndarray:
    if not path.is_file():
        raise _missing(name, root, f"{path.name} is missing.")
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as error:
        raise ConfigurationError(
            f"{path} is not a readable .npy file ({error}); it is probably truncated. "
            f"Delete it and fetch {name} again; rbn-data verify {name} --root {root} lists "
            "every damaged file."
        ) from error
    if array.dtype != np.uint8 or (shape is not None and tuple(array.shape) != shape):
        raise ConfigurationError(
            f"{path} has dtype {array.dtype} and shape {tuple(array.shape)}; the release has "
            f"uint8 {shape or 'labels'}. It is not a {name} file: fetch it again "
            f"(rbn-data verify {name} --root {root})."
        )
    return array


def _as_range(indices: torch.Tensor) -> slice | None:
    """``indices`` as a slice when they are consecutive, for a plain copy out of the map."""
    if indices.numel() == 0:
        return None
    start, stop = int(indices[0]), int(indices[-1]) + 1
    if stop - start == indices.numel() and bool((indices.diff() == 1).all()):
        return slice(start, stop)
    return None


class CifarCorrupted:
    """CIFAR-10-C / CIFAR-100-C from the released ``.npy`` files (see the module docstring)."""

    def __init__(
        self, *, name: str, root: str, clean_dir: str | None = None, n_examples: int | None = None
    ) -> None:
        manifest = release_manifest(name)
        if manifest["layout"] != "npy":
            raise ConfigurationError(f"{name} is not an .npy release; use its own loader.")
        self.name = name
        self.num_classes = int(manifest["num_classes"])
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise _missing(name, self.root, "the folder does not exist.")
        self.clean_dir = Path(clean_dir).expanduser() if clean_dir else None
        labels_path = self.root / "labels.npy"
        labels = _load_array(labels_path, name=name, root=self.root, shape=None)
        if labels.ndim != 1 or len(labels) == 0 or len(labels) % 5:
            raise ConfigurationError(
                f"{labels_path} has shape {labels.shape}; the release has one label per image "
                f"of five stacked severities (50000,). Fetch it again."
            )
        # 10,000 in the release; miniature and regenerated (rbn-data make-c) copies keep the
        # layout with fewer.
        self.per_severity = len(labels) // 5
        n_examples = self.per_severity if n_examples is None else n_examples
        if isinstance(n_examples, bool) or not isinstance(n_examples, int):
            raise ConfigurationError(
                f"dataset.n_examples must be an integer or null, got {n_examples!r}."
            )
        if not 1 <= n_examples <= self.per_severity:
            raise ConfigurationError(
                f"dataset.n_examples must be 1..{self.per_severity} (null: all), got {n_examples}."
            )
        self.n_examples = n_examples
        first_block = np.asarray(labels[: self.per_severity]).astype(np.int64)
        if first_block.max() >= self.num_classes:
            raise ConfigurationError(
                f"{labels_path} has labels up to {first_block.max()}, but {name} has "
                f"{self.num_classes} classes: is it the labels file of another release?"
            )
        self._labels = torch.from_numpy(first_block)

    def available_corruptions(self) -> tuple[str, ...]:
        # Every release name, present or not: a missing file is reported with its layout and
        # download command when its cell is loaded, not as an unknown name.
        return CIFAR_C_CORRUPTIONS

    def cell_size(self, cell: Cell) -> int:
        return self.n_examples

    def cell_labels(self, cell: Cell) -> torch.Tensor:
        """The release's labels (the clean test labels, checked equal) for test streams."""
        return self._labels[: self.n_examples]

    def row_fields(self) -> dict[str, Any]:
        subset = "all" if self.n_examples == self.per_severity else f"first_{self.n_examples}"
        return {
            "n_examples": self.n_examples,
            "subset": subset,
            "corruption_source": f"released:{self.name}",
        }

    def training_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.clean_dir is None:
            raise ConfigurationError(
                f"{self.name} ships no training split; methods that need clean source data "
                "(dmc, finetune=advbn) read the CIFAR training batches from dataset.clean_dir."
            )
        training = load_cifar(self.clean_dir, dataset=self._clean_set, split="train")
        return training.images, training.labels

    @property
    def _clean_set(self) -> str:
        return release_manifest(self.name)["clean_set"]

    @cache  # noqa: B019  (one memory map per corruption for the lifetime of the benchmark)
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
                f"The clean cell of {self.name} needs dataset.clean_dir (the folder holding "
                f"{cifar_folder('.', self._clean_set).name}/); or set dataset.include_clean=false."
            )
        clean = load_cifar(self.clean_dir, dataset=self._clean_set, split="test")
        if len(clean) < self.n_examples:
            raise ConfigurationError(
                f"The clean test set in {self.clean_dir} has {len(clean)} images, fewer than "
                f"the {self.n_examples} of each {self.name} cell."
            )
        # The release's labels are the test labels in order; a mismatch means the clean set
        # and the release are not the same dataset (e.g. CIFAR-100 pickles for CIFAR-10-C).
        if not torch.equal(clean.labels[: self.n_examples], self._labels[: self.n_examples]):
            raise ConfigurationError(
                f"The labels of the clean test set in {self.clean_dir} differ from "
                f"{self.root / 'labels.npy'}: they are not the same dataset."
            )
        return clean.images[: self.n_examples], clean.labels[: self.n_examples]

    def load(self, cell: Cell, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if cell.corruption == CLEAN:
            images, labels = self._clean()
            return images[indices], labels[indices]
        check_severity(cell.severity)
        if int(indices.max()) >= self.n_examples or int(indices.min()) < 0:
            raise ConfigurationError(f"Indices outside 0..{self.n_examples - 1} for cell {cell}.")
        array = self._array(cell.corruption)
        offset = (cell.severity - 1) * self.per_severity
        rows = _as_range(indices)
        if rows is not None:
            # A plain copy of consecutive rows out of the memory map: the fast path the runner
            # takes for every evaluation batch.
            block = np.array(array[offset + rows.start : offset + rows.stop])
        else:
            # A shuffled or label-shifted batch: one gathered read of the map per batch, never
            # one read per image. Gathering in ascending file order and putting the images back
            # measured 3x slower on a page-cached file (argsort and a second scatter copy).
            block = array[np.asarray(indices) + offset]
        # HWC -> CHW, still uint8 (a quarter of float32's bytes to copy to the device); the
        # runner converts to float there. The permuted copy makes it contiguous for conv.
        images = torch.from_numpy(block).permute(0, 3, 1, 2).contiguous()
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


# --------------------------------------------------------------------------- JPEG trees


class ImageTreeCorrupted:
    """ImageNet-C / Tiny-ImageNet-C from the released JPEG trees (see the module docstring)."""

    def __init__(
        self,
        *,
        name: str,
        root: str,
        subset: str = "all",
        images_per_class: int = 5,
        subset_seed: int = 0,
        subset_file: str | None = None,
        clean_dir: str | None = None,
        train_dir: str | None = None,
        train_images_per_class: int = 10,
        num_classes: int | None = None,
        num_workers: int = 0,
        decode_device: str = "cpu",
    ) -> None:
        manifest = release_manifest(name)
        if manifest["layout"] != "jpeg_tree":
            raise ConfigurationError(f"{name} is not a JPEG-tree release; use its own loader.")
        self.name = name
        # The release's class count; a miniature tree for tests may declare fewer.
        self.num_classes = int(num_classes or manifest["num_classes"])
        self.image_size = int(manifest["image_size"])
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"{name} at {self.root}: the folder does not exist.\nExpected layout: "
                f"{self.root}/<corruption>/<1..5>/<wnid>/<file>.JPEG "
                f"({self.image_size}x{self.image_size}).\n" + download_hint(name, self.root)
            )
        self.subset = ImageSubset(
            mode=subset, images_per_class=images_per_class, seed=subset_seed, file=subset_file
        )
        self._subset_description = self.subset.describe()
        self.clean_dir = Path(clean_dir).expanduser() if clean_dir else None
        self.train_dir = Path(train_dir).expanduser() if train_dir else None
        self.train_images_per_class = train_images_per_class
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigurationError(f"dataset.num_workers must be >= 0, got {num_workers!r}.")
        self.num_workers = num_workers
        self.decode_device = resolve_decode_device(decode_device)
        self._cells: dict[Cell, tuple[list[Path], torch.Tensor]] = {}
        self._classes: list[str] | None = None
        self._reader: tuple[Cell, JpegFiles] | None = None
        self._clean_images: tuple[torch.Tensor, torch.Tensor] | None = None

    def available_corruptions(self) -> tuple[str, ...]:
        return tuple(release_manifest(self.name)["corruptions"])

    def _hint(self) -> str:
        return (
            f"Expected layout: {self.root}/<corruption>/<1..5>/<wnid>/<file>.JPEG.\n"
            + download_hint(self.name, self.root)
        )

    def _cell_files(self, cell: Cell) -> tuple[list[Path], torch.Tensor]:
        if cell in self._cells:
            return self._cells[cell]
        if cell.corruption == CLEAN:
            raise AssertionError("the clean cell is decoded whole, see _clean")
        check_severity(cell.severity)
        corruption_dir = self.root / cell.corruption
        if not corruption_dir.is_dir():
            raise DatasetNotFoundError(
                f"{self.name}: the corruption folder {corruption_dir} is missing. " + self._hint()
            )
        folder = corruption_dir / str(cell.severity)
        files = list_class_folders(
            folder, expected_classes=self.num_classes, missing_hint=self._hint()
        )
        classes = sorted(files)
        if self._classes is None:
            self._classes = classes
        elif classes != self._classes:
            raise DatasetNotFoundError(
                f"The class folders of {folder} differ from those of the cells read before; "
                "class indices would not match. " + self._hint()
            )
        chosen = self.subset.select(files, folder)
        paths = [folder / entry for _, entry in chosen]
        labels = torch.tensor([label for label, _ in chosen], dtype=torch.int64)
        self._cells[cell] = (paths, labels)
        return paths, labels

    def cell_size(self, cell: Cell) -> int:
        if cell.corruption == CLEAN:
            return len(self._clean()[1])
        return len(self._cell_files(cell)[0])

    def cell_labels(self, cell: Cell) -> torch.Tensor:
        """A cell's labels from its file list, without decoding (for test streams)."""
        if cell.corruption == CLEAN:
            return self._clean()[1]
        return self._cell_files(cell)[1]

    def row_fields(self) -> dict[str, Any]:
        return {
            "subset": self._subset_description,
            "corruption_source": f"released:{self.name}",
            "decode_device": self.decode_device,
        }

    def _clean(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._clean_images is None:
            if self.clean_dir is None:
                raise ConfigurationError(
                    f"The clean cell of {self.name} needs dataset.clean_dir (the validation "
                    "images in class folders, <clean_dir>/<wnid>/*.JPEG); or set "
                    "dataset.include_clean=false."
                )
            # ImageNet-C's preparation for full-size validation images; a 64 px set is used
            # as it is.
            prepared = self.image_size == IMAGENET_CROP
            clean = load_image_folder(
                self.clean_dir,
                subset=self.subset,
                expected_classes=self.num_classes,
                missing_hint="Expected the clean validation images in <wnid> class folders.",
                num_workers=self.num_workers,
                resize=IMAGENET_RESIZE if prepared else None,
                crop=IMAGENET_CROP if prepared else None,
            )
            self._clean_images = (clean.images, clean.labels)
        return self._clean_images

    def training_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.train_dir is None:
            raise ConfigurationError(
                f"{self.name} ships no training split; methods that need clean source data "
                "(dmc, finetune=advbn) read dataset.train_dir (training images in class "
                f"folders), dataset.train_images_per_class={self.train_images_per_class} "
                "of each class."
            )
        prepared = self.image_size == IMAGENET_CROP
        training = load_image_folder(
            self.train_dir,
            subset=ImageSubset(mode="balanced", images_per_class=self.train_images_per_class),
            expected_classes=self.num_classes,
            missing_hint="Expected training images in <wnid> class folders.",
            num_workers=self.num_workers,
            resize=IMAGENET_RESIZE if prepared else None,
            crop=IMAGENET_CROP if prepared else None,
        )
        return training.images, training.labels

    def _cell_reader(self, cell: Cell, paths: list[Path]) -> JpegFiles:
        # One reader per cell: its threads decode the cell's next images while the runner
        # evaluates this batch (robustbench_bn.data.jpeg).
        if self._reader is None or self._reader[0] != cell:
            if self._reader is not None:
                self._reader[1].close()
            reader = JpegFiles(
                paths,
                size=self.image_size,
                threads=self.num_workers,
                device=self.decode_device,
            )
            self._reader = (cell, reader)
        return self._reader[1]

    def expect_order(self, cell: Cell, indices: torch.Tensor) -> None:
        """The cell's images will be asked for in this order (a shuffled or label-shifted
        stream): the decode threads read ahead along it as they do along the stored order."""
        if cell.corruption == CLEAN:
            return  # decoded whole, in memory
        paths, _ = self._cell_files(cell)
        self._cell_reader(cell, paths).follow(indices.tolist())

    def _decode(self, cell: Cell, paths: list[Path], indices: torch.Tensor) -> torch.Tensor:
        return self._cell_reader(cell, paths).read(indices.tolist())

    def load(self, cell: Cell, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if cell.corruption == CLEAN:
            images, labels = self._clean()
            return images[indices], labels[indices]
        paths, labels = self._cell_files(cell)
        if int(indices.max()) >= len(paths) or int(indices.min()) < 0:
            raise ConfigurationError(f"Indices outside 0..{len(paths) - 1} for cell {cell}.")
        images = self._decode(cell, paths, indices)
        return images, labels[indices]


def imagenet_c(**options: Any) -> ImageTreeCorrupted:
    """Hydra entry point for ``dataset=imagenet_c``; the options are
    :class:`ImageTreeCorrupted`'s (root, subset, clean_dir, train_dir,
    num_workers, decode_device, ...)."""
    return ImageTreeCorrupted(name="imagenet_c", **options)


def tiny_imagenet_c(**options: Any) -> ImageTreeCorrupted:
    """Hydra entry point for ``dataset=tiny_imagenet_c``; the options are
    :class:`ImageTreeCorrupted`'s (root, subset, clean_dir, train_dir,
    num_workers, decode_device, ...)."""
    return ImageTreeCorrupted(name="tiny_imagenet_c", **options)
