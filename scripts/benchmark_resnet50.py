"""ResNet-50 at 224 px: the suite's evaluation loop against the bare forward, same process.

Random weights (torchvision's architecture, ImageNet preprocessing), so nothing is downloaded.
For each setting (precision, memory format) and method (source, bn) it times

* ``bare``: ``model(images)`` on float batches already on the device, under inference_mode;
* ``suite``: :func:`robustbench_bn.runner.evaluate_cell` over an in-memory cell of uint8
  images kept on the host, i.e. what a run pays: loading each batch, the host-to-device copy,
  conversion, the method, argmax and counting.

and prints images/s and the overhead suite / bare - 1 (the goal in the sweeps issue: at most
10%). Meant for a GPU (``--device cuda``); on a CPU use a few images.

    python scripts/benchmark_resnet50.py --device cuda [--images 4096] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import time
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
    arguments = parser.parse_args()
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
