"""ResNet-50 at 224 px: the suite's evaluation loop against the bare forward, same process.

Random weights (torchvision's architecture, ImageNet preprocessing), so nothing is downloaded.
For each setting (precision, memory format) and method (source, bn) it times

* ``bare``: ``model(images)`` on float batches already on the device, under inference_mode;
* ``suite``: :func:`robustbench_bn.runner.evaluate_cell` over an in-memory cell of uint8
  images kept on the host, i.e. what a run pays: loading each batch, the host-to-device copy,
  conversion, the method, argmax and counting.

and prints images/s and the overhead suite / bare - 1 (the goal in the sweeps issue: at most
10%). Meant for a GPU (``--device cuda``); on a CPU use a few images.

Then, end to end from JPEG files: an ImageNet-C-layout tree (``--tree-images`` quality-85
JPEGs, made as ``scripts/benchmark_loading.py --dataset imagenet_c`` makes it, or
``--tree-root`` of a real ImageNet-C) read by the suite's reader
(:class:`robustbench_bn.data.released.ImageTreeCorrupted`, ``--workers`` decode threads) and
evaluated by a bf16 channels-last ResNet-50 (source method) through
:func:`robustbench_bn.runner.evaluate_cell`, once per decode device (cpu, and cuda = nvJPEG when
there is a GPU). It prints images/s and what the full ImageNet-C (15 x 5 x 50,000 = 3.75
million images) would take at that rate.

    python scripts/benchmark_resnet50.py --device cuda [--images 4096] [--batch-size 256]
        [--tree-images 8000] [--workers 16]
    python scripts/benchmark_resnet50.py --device cpu --images 8 --batch-size 4 --tree-images 40
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from robustbench_bn.data.benchmark import CLEAN_CELL, Cell
from robustbench_bn.methods.bn import BatchNormAdaptation
from robustbench_bn.methods.source import Source
from robustbench_bn.models.zoo import torchvision_model
from robustbench_bn.runner import _precision, evaluate_cell


class InMemoryCell:
    """A one-cell benchmark over uint8 images held in host memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.num_classes = 1000

    def available_corruptions(self) -> tuple[str, ...]:
        return ()

    def cell_size(self, cell: Cell) -> int:
        return len(self.labels)

    def load(self, cell: Cell, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Like the released-data loaders: uint8 out, a slice for consecutive indices.
        first = int(indices[0])
        if torch.equal(indices, torch.arange(first, first + len(indices))):
            return self.images[first : first + len(indices)], self.labels[indices]
        return self.images[indices], self.labels[indices]

    def row_fields(self) -> dict[str, Any]:
        return {}


def _seconds(device: torch.device, loop) -> float:
    loop()  # warm-up: cuDNN autotuning, allocator growth
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    loop()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--tree-images", type=int, default=8000, help="0: skip the JPEG part")
    parser.add_argument("--tree-root", type=Path, default=None, help="a tree to read or make")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--skip-in-memory", action="store_true", help="only the JPEG part")
    arguments = parser.parse_args()
    if not arguments.skip_in_memory:
        in_memory(arguments)
    if arguments.tree_images:
        from_jpeg_tree(arguments)


FULL_IMAGENET_C = 15 * 5 * 50_000


def from_jpeg_tree(arguments: argparse.Namespace) -> None:
    """Decode + bf16 ResNet-50 from an ImageNet-C-layout tree, per decode device."""
    from benchmark_loading import TREE_CELLS, TREE_MARKER, make_tree

    from robustbench_bn.data.released import ImageTreeCorrupted

    device = torch.device(arguments.device)
    temporary = None
    root = arguments.tree_root
    if root is None:
        temporary = tempfile.TemporaryDirectory(prefix="imagenet_c_tree_")
        root = Path(temporary.name)
    generated = not root.is_dir() or (root / TREE_MARKER).is_file() or not any(root.iterdir())
    if generated:
        root.mkdir(parents=True, exist_ok=True)
        classes = make_tree(root, arguments.tree_images)
        settings: dict[str, Any] = {"num_classes": classes, "subset": "all"}
    else:
        per_class = max(1, arguments.tree_images // (len(TREE_CELLS) * 1000))
        settings = {"subset": "balanced", "images_per_class": per_class}
    cells = [Cell(corruption, severity) for corruption, severity in TREE_CELLS]
    model = torchvision_model(architecture="resnet50", weights=None).to(device).eval()
    model = model.to(memory_format=torch.channels_last)
    method = Source(model=model)
    decode_devices = ["cpu"] + (["cuda"] if device.type == "cuda" else [])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"\nImageNet-C-layout JPEGs ({root if not generated else 'generated'}), bf16 "
        f"channels_last ResNet-50, batch {arguments.batch_size}, {arguments.workers} decode "
        f"threads, device {name}"
    )
    for decode_device in decode_devices:

        def one_pass(decode_device=decode_device) -> int:
            release = ImageTreeCorrupted(
                name="imagenet_c",
                root=str(root),
                num_workers=arguments.workers,
                decode_device=decode_device,
                **settings,
            )
            total = 0
            for cell in cells:
                _, count = evaluate_cell(
                    method,
                    release,
                    cell,
                    batch_size=arguments.batch_size,
                    device=device,
                    precision="bf16",
                    seed=0,
                    channels_last=True,
                )
                total += count
            return total

        one_pass()  # warm-up: page cache, cuDNN autotuning, nvJPEG
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        images = one_pass()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        rate = images / seconds
        print(
            f"decode on {decode_device:4}: {images} images, {rate:8.0f} images/s end to end; "
            f"the full ImageNet-C (3.75M images) at this rate: {FULL_IMAGENET_C / rate / 60:.1f} "
            "min",
            flush=True,
        )
    if temporary is not None:
        temporary.cleanup()


def in_memory(arguments: argparse.Namespace) -> None:
    device = torch.device(arguments.device)
    torch.backends.cudnn.benchmark = True
    generator = torch.Generator().manual_seed(0)
    host_images = torch.randint(0, 256, (arguments.images, 3, 224, 224), generator=generator)
    host_images = host_images.to(torch.uint8)
    labels = torch.randint(0, 1000, (arguments.images,), generator=generator)
    benchmark = InMemoryCell(host_images, labels)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"ResNet-50, 224 px, {arguments.images} images, batch {arguments.batch_size}, "
        f"device {name}, torch {torch.__version__}"
    )
    print(f"{'setting':24} {'method':7} {'bare img/s':>11} {'suite img/s':>12} {'overhead':>9}")
    for precision in ("fp32", "bf16"):
        for channels_last in (False, True):
            memory_format = torch.channels_last if channels_last else torch.contiguous_format
            model = torchvision_model(architecture="resnet50", weights=None).to(device)
            model = model.to(memory_format=memory_format).eval()
            device_batches = [
                batch.to(device).float().div_(255).contiguous(memory_format=memory_format)
                for batch in host_images.split(arguments.batch_size)
            ]
            for method_name in ("source", "bn"):
                if method_name == "source":
                    method = Source(model=model)
                else:
                    method = BatchNormAdaptation(model=model, statistics="batch")

                # Defaults bind this iteration's values (the loops are timed right away).
                def bare(method=method, batches=device_batches, precision=precision) -> None:
                    with torch.inference_mode(), _precision(device, precision):
                        for batch in batches:
                            method.predict(batch).argmax(1)

                def suite(method=method, precision=precision, channels_last=channels_last) -> None:
                    evaluate_cell(
                        method,
                        benchmark,
                        CLEAN_CELL,
                        batch_size=arguments.batch_size,
                        device=device,
                        precision=precision,
                        seed=0,
                        channels_last=channels_last,
                    )

                bare_seconds = _seconds(device, bare)
                suite_seconds = _seconds(device, suite)
                setting = f"{precision} {'channels_last' if channels_last else 'contiguous'}"
                print(
                    f"{setting:24} {method_name:7} {arguments.images / bare_seconds:11.0f} "
                    f"{arguments.images / suite_seconds:12.0f} "
                    f"{100 * (suite_seconds / bare_seconds - 1):+8.1f}%",
                    flush=True,
                )


if __name__ == "__main__":
    main()
