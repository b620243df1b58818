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
"""

from __future__ import annotations

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000, help="images per severity")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--architecture", default="resnet20", help="a CIFAR architecture or tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
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
