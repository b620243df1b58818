"""Clean test sets as sources for on-the-fly corruption, and the image-folder tools they share
with the released JPEG trees.

* CIFAR-10 and CIFAR-100 (Krizhevsky 2009), the "python version" as released at
  https://www.cs.toronto.edu/~kriz/cifar.html: ``cifar-10-batches-py/{data_batch_1..5,
  test_batch}`` and ``cifar-100-python/{train,test}``, pickled dicts with ``data`` (uint8
  N x 3072, each row the red, green and blue 32x32 planes) and ``labels`` (CIFAR-10) or
  ``fine_labels`` (CIFAR-100). This is also the layout torchvision's CIFAR10/CIFAR100
  downloaders leave behind.
* An ImageNet validation folder (Russakovsky et al. 2015) in class folders,
  ``<root>/<wnid>/<file>.JPEG`` (the layout of torchvision's ImageFolder; the flat val
  archive needs its images moved into wnid folders first). Images are prepared the way
  ImageNet-C was made (hendrycks/robustness, ImageNet-C/create_c/make_imagenet_c.py):
  Resize(256) then CenterCrop(224).

Image folders (ImageNet val, ImageNet-C, Tiny-ImageNet-C) take their class index from the
sorted wnid folder names, which is torchvision's ImageFolder order and so the order of the
ImageNet classifiers' outputs. ``subset`` picks the images: ``all``; ``balanced`` (per class
the ``images_per_class`` files whose keyed hash ``blake2b(seed:wnid/file)`` is smallest:
deterministic, independent of the file system's listing order and of every other class); or
``file`` (a user-given list of ``<wnid>/<file>`` lines, e.g. RobustBench's 5,000-image list).
The choice is reported by :meth:`ImageSubset.describe` and written into every row.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_bn.data.fashion_mnist import ImageSet
from robustbench_bn.data.on_the_fly import OnTheFlyCorruptions
from robustbench_bn.errors import ConfigurationError, DatasetNotFoundError

CIFAR_RELEASES = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
        "label_key": b"labels",
        "classes": 10,
        "archive": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "torchvision": "CIFAR10",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ("train",),
        "test": ("test",),
        "label_key": b"fine_labels",
        "classes": 100,
        "archive": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "torchvision": "CIFAR100",
    },
}
SUBSET_MODES = ("all", "balanced", "file")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
#: ImageNet-C's preparation of a validation image (make_imagenet_c.py).
IMAGENET_RESIZE = 256
IMAGENET_CROP = 224


# --------------------------------------------------------------------------- CIFAR pickles


def cifar_folder(root: str | Path, dataset: str) -> Path:
    """The folder holding the batches: ``root`` itself or ``root/<release folder>``."""
    release = CIFAR_RELEASES[dataset]
    root = Path(root).expanduser()
    if (root / release["test"][0]).is_file() or root.name == release["folder"]:
        return root
    return root / release["folder"]


def _cifar_missing(dataset: str, path: Path, detail: str) -> DatasetNotFoundError:
    release = CIFAR_RELEASES[dataset]
    return DatasetNotFoundError(
        f"The clean {dataset} set: {detail}\n"
        f"Expected layout: {path.parent}/{release['folder']}/"
        f"{{{','.join(release['train'] + release['test'])}}} (python pickles as released).\n"
        f'Get it: python -c "import torchvision; torchvision.datasets.{release["torchvision"]}'
        f"(root='{path.parent}', train=False, download=True)\"   (or fetch "
        f"{release['archive']} and untar it into {path.parent})."
    )


def _read_cifar_batch(path: Path, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise _cifar_missing(dataset, path.parent, f"{path} is missing.")
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise ConfigurationError(
            f"{path} is not a readable CIFAR pickle ({type(error).__name__}: {error}); it is "
            f"probably truncated. Delete {path.parent} and fetch {dataset} again "
            f"({CIFAR_RELEASES[dataset]['archive']})."
        ) from error
    label_key = CIFAR_RELEASES[dataset]["label_key"]
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise ConfigurationError(
            f"{path} lacks the keys b'data' and {label_key!r}: it is not a {dataset} batch "
            "(CIFAR-10 and CIFAR-100 folders mixed up?)."
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ConfigurationError(
            f"{path} holds data of {data.dtype} {data.shape}, expected uint8 (N, 3072)."
        )
    if len(labels) != len(data):
        raise ConfigurationError(
            f"{path} has {len(data)} images but {len(labels)} labels; fetch it again."
        )
    classes = CIFAR_RELEASES[dataset]["classes"]
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise ConfigurationError(
            f"{path} has labels outside 0..{classes - 1}: it is not a {dataset} batch."
        )
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(root: str | Path, *, dataset: str, split: str) -> ImageSet:
    """CIFAR-10/100 ``train`` or ``test`` as uint8 [N,3,32,32] with int64 labels."""
    if dataset not in CIFAR_RELEASES:
        raise ConfigurationError(f"Unknown CIFAR set {dataset!r}; known: {list(CIFAR_RELEASES)}.")
    if split not in ("train", "test"):
        raise ConfigurationError(f"CIFAR split must be 'train' or 'test', got {split!r}.")
    folder = cifar_folder(root, dataset)
    if not folder.is_dir():
        raise _cifar_missing(dataset, folder, f"{folder} does not exist.")
    parts = [_read_cifar_batch(folder / name, dataset) for name in CIFAR_RELEASES[dataset][split]]
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    return ImageSet(images=torch.from_numpy(images), labels=torch.from_numpy(labels))


# --------------------------------------------------------------------------- image folders


@dataclass(frozen=True)
class ImageSubset:
    """Which images of an image folder a benchmark uses (see the module docstring)."""

    mode: str = "all"
    images_per_class: int = 5
    seed: int = 0
    file: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in SUBSET_MODES:
            raise ConfigurationError(
                f"dataset.subset must be one of {SUBSET_MODES}, got {self.mode!r}. "
                "'all': every image; 'balanced': dataset.images_per_class per class; "
                "'file': the <wnid>/<file> lines of dataset.subset_file."
            )
        if self.mode == "balanced" and (
            isinstance(self.images_per_class, bool)
            or not isinstance(self.images_per_class, int)
            or self.images_per_class < 1
        ):
            raise ConfigurationError(
                f"dataset.images_per_class must be a positive integer, got "
                f"{self.images_per_class!r}."
            )
        if self.mode == "file":
            if not self.file:
                raise ConfigurationError(
                    "dataset.subset=file needs dataset.subset_file=<a text file of "
                    "<wnid>/<file name> lines>."
                )
            if not Path(self.file).expanduser().is_file():
                raise ConfigurationError(f"dataset.subset_file={self.file} does not exist.")

    def listed_files(self) -> list[str]:
        assert self.file is not None
        lines = Path(self.file).expanduser().read_text().splitlines()
        entries = [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]
        malformed = [entry for entry in entries if entry.count("/") != 1]
        if malformed:
            raise ConfigurationError(
                f"dataset.subset_file={self.file}: every line must be <wnid>/<file name>, "
                f"got {malformed[0]!r}."
            )
        return entries

    def describe(self) -> str:
        """The subset as written into every result row."""
        if self.mode == "balanced":
            return f"balanced:{self.images_per_class}_per_class:seed{self.seed}"
        if self.mode == "file":
            digest = hashlib.sha256(Path(self.file).expanduser().read_bytes()).hexdigest()
            return f"file:{Path(self.file).name}:sha256={digest[:12]}"
        return "all"

    def select(self, files_by_class: dict[str, list[str]], where: Path) -> list[tuple[int, str]]:
        """``(class index, "<wnid>/<file>")`` of the chosen images, in class then name order."""
        classes = sorted(files_by_class)
        index = {wnid: i for i, wnid in enumerate(classes)}
        if self.mode == "all":
            return [(index[w], f"{w}/{name}") for w in classes for name in files_by_class[w]]
        if self.mode == "balanced":
            chosen = []
            for wnid in classes:
                names = files_by_class[wnid]
                if len(names) < self.images_per_class:
                    raise ConfigurationError(
                        f"{where / wnid} has {len(names)} images, fewer than "
                        f"dataset.images_per_class={self.images_per_class}."
                    )
                ranked = sorted(names, key=lambda name, w=wnid: self._rank(w, name))
                chosen += [
                    (index[wnid], f"{wnid}/{n}") for n in sorted(ranked[: self.images_per_class])
                ]
            return chosen
        listed = self.listed_files()
        unknown = [entry for entry in listed if entry.split("/")[0] not in index]
        if unknown:
            raise ConfigurationError(
                f"dataset.subset_file lists {unknown[0]!r}, but {where} has no class folder "
                f"{unknown[0].split('/')[0]!r}."
            )
        present = {f"{w}/{name}" for w in classes for name in files_by_class[w]}
        absent = [entry for entry in listed if entry not in present]
        if absent:
            raise DatasetNotFoundError(
                f"{len(absent)} images of dataset.subset_file are missing from {where}, e.g. "
                f"{absent[0]}; the folder is incomplete (rbn-data verify ...) or the list "
                "belongs to another dataset."
            )
        return sorted((index[entry.split("/")[0]], entry) for entry in listed)

    def _rank(self, wnid: str, name: str) -> bytes:
        return hashlib.blake2b(f"{self.seed}:{wnid}/{name}".encode(), digest_size=8).digest()


def list_class_folders(
    root: Path, *, expected_classes: int | None, missing_hint: str
) -> dict[str, list[str]]:
    """``{wnid: sorted image file names}`` of ``root/<wnid>/``; refuses empty or missing classes.

    A missing class folder would shift every later class index, and an empty one would leave a
    class silently unevaluated, so both are errors.
    """
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root} does not exist. {missing_hint}")
    files: dict[str, list[str]] = {}
    with os.scandir(root) as entries:
        folders = sorted(entry.name for entry in entries if entry.is_dir())
    for wnid in folders:
        with os.scandir(root / wnid) as entries:
            names = sorted(
                entry.name
                for entry in entries
                if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES)
            )
        if not names:
            raise DatasetNotFoundError(
                f"The class folder {root / wnid} is empty: the extraction was cut short or "
                f"files were deleted. {missing_hint}"
            )
        files[wnid] = names
    if not files:
        raise DatasetNotFoundError(
            f"{root} has no class folders (<wnid>/<image>.JPEG). {missing_hint}"
        )
    if expected_classes is not None and len(files) != expected_classes:
        raise DatasetNotFoundError(
            f"{root} has {len(files)} class folders, expected {expected_classes}; a missing "
            f"folder would shift every later class index. {missing_hint}"
        )
    return files


def decode_image(path: Path, *, resize: int | None = None, crop: int | None = None) -> torch.Tensor:
    """One image file as uint8 [3,H,W] RGB, optionally Resize(resize) then CenterCrop(crop)."""
    import torchvision.io as io
    import torchvision.transforms.v2.functional as F

    data = io.read_file(str(path))
    # A JPEG cut short loses its end-of-image marker; say so instead of decoding half a picture.
    if path.suffix.lower() in (".jpeg", ".jpg") and (
        len(data) < 4 or bytes(data[-2:].numpy()) != b"\xff\xd9"
    ):
        raise ConfigurationError(
            f"{path} is truncated (no JPEG end marker, {len(data)} bytes). Delete it and "
            "extract the archive again."
        )
    try:
        image = io.decode_image(data, mode=io.ImageReadMode.RGB)
    except RuntimeError as error:
        raise ConfigurationError(
            f"{path} cannot be decoded ({error}); the file is truncated or not an image. "
            "Delete it and extract the archive again."
        ) from error
    if resize is not None:
        image = F.resize(image, [resize], antialias=True)
    if crop is not None:
        image = F.center_crop(image, [crop, crop])
    return image


class _DecodeFiles(torch.utils.data.Dataset):
    """Files decoded one by one; used inside DataLoader worker processes."""

    def __init__(
        self, paths: Sequence[Path], *, size: int | None, resize: int | None, crop: int | None
    ):
        self.paths = list(paths)
        self.size = size
        self.resize = resize
        self.crop = crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = decode_image(self.paths[index], resize=self.resize, crop=self.crop)
        if self.size is not None and tuple(image.shape[1:]) != (self.size, self.size):
            raise ConfigurationError(
                f"{self.paths[index]} is {image.shape[2]}x{image.shape[1]} pixels, expected "
                f"{self.size}x{self.size}: the file does not belong to this release."
            )
        return image


def decode_files(
    paths: Sequence[Path],
    *,
    size: int | None = None,
    resize: int | None = None,
    crop: int | None = None,
    num_workers: int = 0,
    chunk: int = 64,
) -> torch.Tensor:
    """Decode ``paths`` into one uint8 [N,3,H,W] tensor, in DataLoader workers if asked."""
    dataset = _DecodeFiles(paths, size=size, resize=resize, crop=crop)
    if num_workers <= 0 or len(paths) <= chunk:
        return torch.stack([dataset[i] for i in range(len(dataset))])
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=chunk, num_workers=num_workers, collate_fn=torch.stack
    )
    return torch.cat(list(loader))


def load_image_folder(
    root: str | Path,
    *,
    subset: ImageSubset,
    expected_classes: int | None,
    missing_hint: str,
    num_workers: int = 0,
    resize: int | None = IMAGENET_RESIZE,
    crop: int | None = IMAGENET_CROP,
) -> ImageSet:
    """A class-folder tree (ImageNet val or train), by default prepared as ImageNet-C's
    source images were: Resize(256) then CenterCrop(224)."""
    root = Path(root).expanduser()
    files = list_class_folders(root, expected_classes=expected_classes, missing_hint=missing_hint)
    chosen = subset.select(files, root)
    images = decode_files(
        [root / entry for _, entry in chosen],
        size=crop,
        resize=resize,
        crop=crop,
        num_workers=num_workers,
    )
    labels = torch.tensor([label for label, _ in chosen], dtype=torch.int64)
    return ImageSet(images=images, labels=labels)


# --------------------------------------------------------------------------- on-the-fly sets


class _SelectedOnTheFly(OnTheFlyCorruptions):
    """On-the-fly corruptions of a clean set whose rows name the subset that was chosen."""

    def __init__(self, *, subset_description: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._subset_description = subset_description

    def row_fields(self) -> dict[str, Any]:
        fields = super().row_fields()
        fields["subset"] = self._subset_description
        return fields


def _on_the_fly_cifar(
    dataset: str, *, data_dir: str, n_examples: int | None = None, **options: Any
) -> OnTheFlyCorruptions:
    """The test set of ``dataset`` (CIFAR pickles under ``data_dir``) corrupted on the fly;
    the other options (seed, family, cache_dir, corruption_device) are
    :class:`OnTheFlyCorruptions`'."""
    test_set = load_cifar(data_dir, dataset=dataset, split="test")
    available = len(test_set)
    count = available if n_examples is None else n_examples
    return _SelectedOnTheFly(
        name=f"{dataset}_c_on_the_fly",
        test_set=test_set,
        num_classes=CIFAR_RELEASES[dataset]["classes"],
        n_examples=n_examples,
        training_loader=lambda: load_cifar(data_dir, dataset=dataset, split="train"),
        subset_description="all" if count == available else f"first_{count}",
        **options,
    )


def cifar10_on_the_fly(**options: Any) -> OnTheFlyCorruptions:
    """The CIFAR-10 test set corrupted on the fly by the suite's engine (CIFAR parameters);
    the options (data_dir, n_examples, seed, family, ...) are :func:`_on_the_fly_cifar`'s."""
    return _on_the_fly_cifar("cifar10", **options)


def cifar100_on_the_fly(**options: Any) -> OnTheFlyCorruptions:
    """The CIFAR-100 test set corrupted on the fly by the suite's engine (CIFAR parameters);
    the options (data_dir, n_examples, seed, family, ...) are :func:`_on_the_fly_cifar`'s."""
    return _on_the_fly_cifar("cifar100", **options)


def imagenet_val_on_the_fly(
    *,
    val_dir: str,
    train_dir: str | None = None,
    subset: str = "balanced",
    images_per_class: int = 5,
    subset_seed: int = 0,
    subset_file: str | None = None,
    train_images_per_class: int = 10,
    num_classes: int = 1000,
    seed: int = 0,
    family: str | None = "imagenet",
    cache_dir: str | None = None,
    num_workers: int = 0,
    corruption_device: str = "cpu",
) -> OnTheFlyCorruptions:
    """An ImageNet validation folder, 256/224-prepared, corrupted on the fly.

    The selected images are decoded into memory as uint8 (150 KB each: the default balanced
    5,000-image subset takes 750 MB), hence ``subset=balanced`` by default here.
    """
    selection = ImageSubset(
        mode=subset, images_per_class=images_per_class, seed=subset_seed, file=subset_file
    )
    hint = (
        "Expected an ImageNet validation folder in class folders, <val_dir>/<wnid>/*.JPEG "
        "(ILSVRC2012_img_val.tar from image-net.org, sorted into wnid folders, e.g. with "
        "torchvision.datasets.ImageNet(root, split='val'))."
    )
    description = selection.describe()
    test_set = load_image_folder(
        val_dir,
        subset=selection,
        expected_classes=num_classes,
        missing_hint=hint,
        num_workers=num_workers,
    )
    train_selection = ImageSubset(mode="balanced", images_per_class=train_images_per_class)
    training_loader = None
    if train_dir:

        def training_loader() -> ImageSet:
            return load_image_folder(
                train_dir,
                subset=train_selection,
                expected_classes=num_classes,
                missing_hint=hint.replace("validation", "training"),
                num_workers=num_workers,
            )

    # The selection is part of the cache folder, so another subset never reuses these cells.
    subset_key = hashlib.sha256(description.encode()).hexdigest()[:8]
    return _SelectedOnTheFly(
        name="imagenet_c_on_the_fly",
        test_set=test_set,
        num_classes=num_classes,
        seed=seed,
        family=family,
        cache_dir=str(Path(cache_dir) / f"subset-{subset_key}") if cache_dir else None,
        corruption_device=corruption_device,
        training_loader=training_loader,
        subset_description=description,
    )
