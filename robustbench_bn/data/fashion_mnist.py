"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, arXiv 1708.07747), the suite's embedded default.

Read from the original IDX files, found in this order: the configured data directory, the
Debian package ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist), and, when the
configuration allows downloads, torchvision's downloader. Images become 3x32x32: the 28x28
image is zero-padded by 2 pixels on each side (the background of Fashion-MNIST is black,
so padding adds no edge) and the single channel is replicated, so the CIFAR (32 px)
corruption parameters apply unchanged.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustbench_bn.errors import ConfigurationError, DatasetNotFoundError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SIZE = 32
_PAD = (IMAGE_SIZE - 28) // 2


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 [N,3,H,W] with int64 labels; converted to float only in batches."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ConfigurationError(
            f"{path} is not an IDX file of unsigned bytes (bad magic number); "
            "delete it and fetch Fashion-MNIST again."
        )
    dimensions = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dimensions))
    offset = 4 + 4 * dimensions
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise ConfigurationError(
            f"{path} is truncated or corrupt: its header promises shape {shape} "
            f"({expected} bytes) but it holds {len(data) - offset}; fetch it again."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _find_file(stem: str, directories: list[Path]) -> Path | None:
    for directory in directories:
        for name in (stem, stem + ".gz"):
            candidate = directory / name
            if candidate.is_file():
                return candidate
            nested = directory / "FashionMNIST" / "raw" / name
            if nested.is_file():
                return nested
    return None


def _missing_message(directories: list[Path]) -> str:
    searched = "\n".join(f"  - {d}" for d in directories)
    return (
        "Fashion-MNIST was not found. Looked for the IDX files "
        "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) in:\n"
        f"{searched}\n"
        "Get it one of two ways:\n"
        "  1. sudo apt-get install -y dataset-fashion-mnist   "
        "(Debian/Ubuntu; installs into /usr/share/datasets/fashion-mnist)\n"
        "  2. allow the download: rbn-run dataset.download=true   "
        "(torchvision fetches it into dataset.data_dir)"
    )


def load_fashion_mnist(
    split: str, *, data_dir: str | Path | None = None, download: bool = False
) -> ImageSet:
    """Load a split as 3x32x32 uint8 images; see the module docstring for the search order."""
    if split not in SPLIT_FILES:
        raise ConfigurationError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}.")
    directories = [Path(data_dir).expanduser()] if data_dir else []
    directories.append(DEBIAN_DIR)
    image_stem, label_stem = SPLIT_FILES[split]
    image_path = _find_file(image_stem, directories)
    label_path = _find_file(label_stem, directories)
    if (image_path is None or label_path is None) and download:
        if not data_dir:
            raise ConfigurationError(
                "dataset.download=true needs dataset.data_dir to say where to put the files."
            )
        _download_with_torchvision(Path(data_dir).expanduser())
        image_path = _find_file(image_stem, directories)
        label_path = _find_file(label_stem, directories)
    if image_path is None or label_path is None:
        raise DatasetNotFoundError(_missing_message(directories))
    raw_images = _read_idx(image_path)
    raw_labels = _read_idx(label_path)
    if raw_images.ndim != 3 or raw_images.shape[1:] != (28, 28):
        raise ConfigurationError(
            f"{image_path} holds images of shape {raw_images.shape[1:]}, expected 28x28."
        )
    if raw_images.shape[0] != raw_labels.shape[0]:
        raise ConfigurationError(
            f"{image_path} has {raw_images.shape[0]} images but {label_path} has "
            f"{raw_labels.shape[0]} labels; one of them is damaged, fetch both again."
        )
    images = torch.from_numpy(np.pad(raw_images, ((0, 0), (_PAD, _PAD), (_PAD, _PAD))))
    images = images.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(raw_labels.astype(np.int64))
    return ImageSet(images=images, labels=labels)


def _download_with_torchvision(root: Path) -> None:
    from torchvision.datasets import FashionMNIST

    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        FashionMNIST(root=str(root), train=train, download=True)
