"""Loading throughput: a CIFAR-10-C-format evaluation through the suite against the usual
per-sample torchvision DataLoader over the same arrays, same model, same process.

A CIFAR-10-C-format folder (``fog.npy`` uint8 [5n, 32, 32, 3] and ``labels.npy``; random
pixels, since only speed is measured) is written to a temporary folder. Then, for one cell
(fog, severity 5, n images):

* ``suite``: :class:`robustbench_bn.data.released.CifarCorrupted` (memory-mapped, a batch is
  one slice, kept uint8) and :func:`robustbench_bn.runner.evaluate_cell` with the source
  method, whose model normalizes inside its forward, in batches;
* ``per-sample DataLoader``: a ``Dataset`` over the same memory map returning
  ``Normalize(ToTensor(image))`` per image, batched by ``torch.utils.data.DataLoader``
  (``num_workers`` 0 and 2), fed to the bare network (the same weights without the suite's
  normalization, so both compute the same logits).

Both count correct predictions of a ResNet-20 (or, with ``--architecture tiny``, a one-layer
network, where loading decides the speed) with random weights (the published weights are
not needed for speed), under inference_mode, on the CPU unless ``--device`` says otherwise.
It prints images/s and the ratio suite / DataLoader (the goal in the real-benchmarks issue:
at least 1.5x on this CPU).

    .venv/bin/python scripts/benchmark_loading.py [--images 10000] [--batch-size 200]

``--dataset imagenet_c``: the JPEG-tree reader. An ImageNet-C-layout tree
(``<corruption>/<severity>/<wnid>/<file>.JPEG``, 224 px, quality 85 like the release) is made
from the photographs bundled with scikit-image (random crops, resized to 224 px, flipped),
corrupted by the suite's own engine (gaussian_noise, motion_blur, fog, brightness at severity
3, so that the files have ImageNet-C's mix of noisy and smooth content and a realistic decode
cost), spread over 100 class folders; or, with ``--root`` pointing at a real ImageNet-C, the
same cells of it (a balanced subset of ``--images`` in all). Then, the same files both ways,
with the same number of workers:

* ``suite``: :class:`robustbench_bn.data.released.ImageTreeCorrupted` read cell by cell in
  the runner's batches (:func:`robustbench_bn.data.benchmark.iterate_cell`), converted to
  float [0, 1] as the runner does (``--workers`` decode threads);
* ``ImageFolder + PIL ToTensor``: ``torchvision.datasets.ImageFolder`` per cell folder (the
  same files, through ``Subset``) with ``transforms.ToTensor()``, batched by a DataLoader with
  ``--workers`` worker processes.

Every image's decoded pixels are compared first (the suite's uint8 against ToTensor's float
times 255); then the two are timed alternately, best of ``--repeats``. Last line:
``ratio X.XXx`` (suite images/s / ImageFolder images/s).

    .venv/bin/python scripts/benchmark_loading.py --dataset imagenet_c [--images 4000]
        [--root DIR] [--workers 2] [--batch-size 100] [--repeats 3]
"""

from __future__ import annotations

# Before torch, as in rbn-run: importing the package chooses OpenMP's passive waiting, which
# libgomp reads only when torch loads (see robustbench_bn/__init__.py).
import robustbench_bn  # noqa: F401

# isort: split
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from robustbench_bn.data.benchmark import Cell
from robustbench_bn.data.released import CifarCorrupted
from robustbench_bn.methods.source import Source
from robustbench_bn.models.normalized import NormalizedModel
from robustbench_bn.models.zoo import CIFAR10_MEAN, CIFAR10_STD, cifar_model
from robustbench_bn.runner import evaluate_cell

CELL = Cell("fog", 5)


class PerSampleArrays(Dataset):
    """The way many robustness repositories read CIFAR-10-C: index the array, then
    ToTensor and Normalize one image at a time."""

    def __init__(self, root: Path, severity: int, per_severity: int) -> None:
        self.images = np.load(root / "fog.npy", mmap_mode="r")
        self.labels = np.load(root / "labels.npy")
        self.offset = (severity - 1) * per_severity
        self.count = per_severity
        self.transform = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
        )

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        position = self.offset + index
        return self.transform(np.array(self.images[position])), int(self.labels[position])


def write_release(root: Path, per_severity: int) -> None:
    generator = np.random.default_rng(0)
    pixels = generator.integers(0, 256, (5 * per_severity, 32, 32, 3), dtype=np.uint8)
    np.save(root / "fog.npy", pixels)
    labels = generator.integers(0, 10, per_severity, dtype=np.uint8)
    np.save(root / "labels.npy", np.tile(labels, 5))


def best_seconds(repeats: int, loop) -> tuple[float, int]:
    best, correct = float("inf"), 0
    for _ in range(repeats):
        started = time.perf_counter()
        correct = loop()
        best = min(best, time.perf_counter() - started)
    return best, correct


# --------------------------------------------------------------------------- ImageNet-C

TREE_CELLS = (("gaussian_noise", 3), ("motion_blur", 3), ("fog", 3), ("brightness", 3))
TREE_CLASSES = 100
TREE_SIZE = 224
TREE_MARKER = "benchmark_tree.json"
#: scikit-image's bundled colour photographs (no download needed).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field",
          "immunohistochemistry", "retina", "colorwheel")  # fmt: skip


def _photographs() -> list[torch.Tensor]:
    import skimage.data

    photos = []
    for name in PHOTOS:
        array = np.asarray(getattr(skimage.data, name)())
        if array.ndim == 3 and array.shape[2] >= 3:
            photos.append(torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1))
    photos.append(torch.from_numpy(skimage.data.stereo_motorcycle()[0].copy()).permute(2, 0, 1))
    # Shorter side 320 px, once: crops then need only a small resize each.
    return [_resized(photo, 320 / min(photo.shape[1:])) for photo in photos]


def _resized(photo: torch.Tensor, scale: float) -> torch.Tensor:
    import torch.nn.functional as F

    if scale >= 1:
        return photo
    size = [round(side * scale) for side in photo.shape[1:]]
    smaller = F.interpolate(photo[None].float(), size=size, mode="bilinear", antialias=True)
    return smaller[0].round().clamp(0, 255).to(torch.uint8)


def _crops(photos: list[torch.Tensor], count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random 224 px views of the photographs, float [0, 1]."""
    import torch.nn.functional as F

    views = []
    for _ in range(count):
        photo = photos[int(torch.randint(len(photos), (1,), generator=generator))]
        height, width = photo.shape[1:]
        side = int(min(height, width) * (0.5 + 0.5 * float(torch.rand(1, generator=generator))))
        top = int(torch.randint(height - side + 1, (1,), generator=generator))
        left = int(torch.randint(width - side + 1, (1,), generator=generator))
        view = photo[None, :, top : top + side, left : left + side].float() / 255
        view = F.interpolate(
            view, size=(TREE_SIZE, TREE_SIZE), mode="bilinear", antialias=True, align_corners=False
        )
        if float(torch.rand(1, generator=generator)) < 0.5:
            view = view.flip(-1)
        views.append(view.clamp(0, 1))
    return torch.cat(views)


def make_tree(root: Path, images: int) -> int:
    """An ImageNet-C-layout tree of ``images`` quality-85 JPEGs over TREE_CELLS (see the
    module docstring), kept for the next run (``TREE_MARKER`` says what it holds); returns
    its number of class folders (TREE_CLASSES, fewer for a tiny tree)."""
    import json

    import torchvision.io as io

    from robustbench_bn.data.corruptions import corrupt, image_seeds

    marker = root / TREE_MARKER
    wanted = {"cells": [list(cell) for cell in TREE_CELLS], "images": images, "version": 1}
    per_cell = images // len(TREE_CELLS)
    classes = max(1, min(TREE_CLASSES, per_cell))
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return classes
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    photos = _photographs()
    for corruption, severity in TREE_CELLS:
        for start in range(0, per_cell, 100):
            stop = min(start + 100, per_cell)
            clean = _crops(photos, stop - start, generator)
            seeds = image_seeds(
                "benchmark_tree", corruption, severity, 0, torch.arange(start, stop)
            )
            corrupted = corrupt(clean, corruption, severity, seeds=seeds)
            pixels = (corrupted * 255).round().to(torch.uint8)
            for offset, image in enumerate(pixels):
                index = start + offset
                folder = root / corruption / str(severity) / f"n{index % classes:08d}"
                folder.mkdir(parents=True, exist_ok=True)
                name = f"ILSVRC2012_val_{index:08d}.JPEG"
                (folder / name).write_bytes(bytes(io.encode_jpeg(image, quality=85).numpy()))
    marker.write_text(json.dumps(wanted))
    print(
        f"made {per_cell * len(TREE_CELLS)} JPEGs in {root} ({time.perf_counter() - started:.0f} s)"
    )
    return classes


def imagenet_c_benchmark(
    *, root: Path | None, images: int, batch_size: int, workers: int, repeats: int
) -> None:
    from torch.utils.data import Subset
    from torchvision.datasets import ImageFolder

    from robustbench_bn.data.benchmark import as_float_images, iterate_cell
    from robustbench_bn.data.released import ImageTreeCorrupted

    temporary = None
    if root is None:
        temporary = tempfile.TemporaryDirectory(prefix="imagenet_c_tree_")
        root = Path(temporary.name)
    generated = not root.is_dir() or (root / TREE_MARKER).is_file() or not any(root.iterdir())
    if generated:
        root.mkdir(parents=True, exist_ok=True)
        classes = make_tree(root, images)
        reader_settings = {"num_classes": classes, "subset": "all"}
    else:
        # A real ImageNet-C: a balanced subset of the same cells, --images in all.
        per_class = max(1, images // (len(TREE_CELLS) * 1000))
        reader_settings = {"subset": "balanced", "images_per_class": per_class}
    cells = [Cell(corruption, severity) for corruption, severity in TREE_CELLS]

    def suite_reader() -> ImageTreeCorrupted:
        return ImageTreeCorrupted(
            name="imagenet_c", root=str(root), num_workers=workers, **reader_settings
        )

    release = suite_reader()
    folders = {}
    for cell in cells:
        paths, _ = release._cell_files(cell)
        folder = ImageFolder(str(root / cell.corruption / str(cell.severity)))
        position = {Path(path): index for index, (path, _) in enumerate(folder.samples)}
        folders[cell] = (folder, [position[Path(path)] for path in paths])
    total = sum(len(indices) for _, indices in folders.values())

    def baseline_loader(cell: Cell, transform) -> DataLoader:
        folder, indices = folders[cell]
        folder.transform = transform
        return DataLoader(Subset(folder, indices), batch_size=batch_size, num_workers=workers)

    # Identical decoded pixels, every image (this pass also warms the page cache for both).
    checker = suite_reader()
    for cell in cells:
        suite_batches = iterate_cell(checker, cell, batch_size)
        for (expected, labels), (found, suite_labels) in zip(
            baseline_loader(cell, transforms.ToTensor()), suite_batches, strict=True
        ):
            as_uint8 = (expected * 255).round().to(torch.uint8)
            if not torch.equal(as_uint8, found) or not torch.equal(labels, suite_labels):
                differing = int((as_uint8 != found).any(1).sum())
                raise SystemExit(f"{cell}: decoded pixels differ ({differing} pixels).")
    print(
        f"torch {torch.__version__}, {total} ImageNet-C-layout JPEGs ({TREE_SIZE} px, "
        f"{len(cells)} cells{', generated' if generated else ' of ' + str(root)}), batch "
        f"{batch_size}, {workers} workers each, best of {repeats}; decoded pixels identical"
    )

    def suite() -> int:
        reader = suite_reader()
        count = 0
        for cell in cells:
            for batch, _ in iterate_cell(reader, cell, batch_size):
                count += len(as_float_images(batch))
        return count

    def baseline() -> int:
        count = 0
        for cell in cells:
            for batch, _ in baseline_loader(cell, transforms.ToTensor()):
                count += len(batch)
        return count

    suite_best, baseline_best = float("inf"), float("inf")
    for _ in range(repeats):
        # Alternated, so that load from other processes on the machine hits both alike.
        for name, loop in (("suite", suite), ("baseline", baseline)):
            started = time.perf_counter()
            if loop() != total:
                raise SystemExit(f"{name} read the wrong number of images.")
            seconds = time.perf_counter() - started
            if name == "suite":
                suite_best = min(suite_best, seconds)
            else:
                baseline_best = min(baseline_best, seconds)
    print(f"{'suite (decode threads)':32} {total / suite_best:9.0f} images/s")
    print(f"{'ImageFolder + PIL ToTensor':32} {total / baseline_best:9.0f} images/s")
    if temporary is not None:
        temporary.cleanup()
    print(f"ratio {baseline_best / suite_best:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("cifar10_c", "imagenet_c"), default="cifar10_c")
    parser.add_argument(
        "--images",
        type=int,
        default=None,
        help="cifar10_c: images per severity (10000); imagenet_c: images in all (4000)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="200; imagenet_c: 100")
    parser.add_argument("--architecture", default="resnet20", help="a CIFAR architecture or tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", type=Path, default=None, help="imagenet_c: tree to use/make")
    parser.add_argument("--workers", type=int, default=2, help="imagenet_c: decode workers")
    arguments = parser.parse_args()
    if arguments.dataset == "imagenet_c":
        imagenet_c_benchmark(
            root=arguments.root,
            images=arguments.images or 4000,
            batch_size=arguments.batch_size or 100,
            workers=arguments.workers,
            repeats=arguments.repeats,
        )
        return
    arguments.images = arguments.images or 10000
    arguments.batch_size = arguments.batch_size or 200
    device = torch.device(arguments.device)
    torch.manual_seed(0)
    if arguments.architecture == "tiny":
        # One strided convolution: a model so cheap that loading decides the speed.
        tiny = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(16, 10),
        )  # fmt: skip
        model = NormalizedModel(tiny, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    else:
        model = cifar_model(architecture=arguments.architecture)
    model = model.to(device).eval()
    network = model.network  # the same weights without the suite's normalization
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {arguments.architecture}, "
        f"{arguments.images} images, batch {arguments.batch_size}, device {device}, "
        f"best of {arguments.repeats}"
    )
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_release(root, arguments.images)
        release = CifarCorrupted(name="cifar10_c", root=str(root))
        method = Source(model=model)

        def suite() -> int:
            correct, _ = evaluate_cell(
                method,
                release,
                CELL,
                batch_size=arguments.batch_size,
                device=device,
                precision="fp32",
                seed=0,
            )
            return correct

        def per_sample(workers: int):
            loader = DataLoader(
                PerSampleArrays(root, CELL.severity, arguments.images),
                batch_size=arguments.batch_size,
                num_workers=workers,
                pin_memory=device.type == "cuda",
            )

            def loop() -> int:
                correct = 0
                with torch.inference_mode():
                    for images, labels in loader:
                        logits = network(images.to(device))
                        correct += int((logits.argmax(1).cpu() == labels).sum())
                return correct

            return loop

        suite_seconds, suite_correct = best_seconds(arguments.repeats, suite)
        print(f"{'suite':32} {arguments.images / suite_seconds:9.0f} images/s")
        for workers in (0, 2):
            seconds, correct = best_seconds(arguments.repeats, per_sample(workers))
            if correct != suite_correct:
                raise SystemExit(f"The two paths disagree: {correct} vs {suite_correct} correct.")
            print(
                f"{f'per-sample DataLoader, {workers} workers':32} "
                f"{arguments.images / seconds:9.0f} images/s   suite / this = "
                f"{seconds / suite_seconds:.2f}x"
            )
        print(f"(both paths counted {suite_correct} correct: same logits)")


if __name__ == "__main__":
    main()
