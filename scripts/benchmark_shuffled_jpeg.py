"""Reading a JPEG-tree cell in shuffled order against the stored order, same process.

A miniature ImageNet-C-layout tree (``fog/1/<wnid>/*.JPEG``, 224 px noisy textures at quality
85, so that decoding costs what a real file does) is read through
:class:`robustbench_bn.data.released.ImageTreeCorrupted` and
:func:`robustbench_bn.data.streams.iterate_stream` in batches, with ``--workers`` decode
threads, while the caller "computes" on each batch for ``--compute-ms`` (a sleep: a model on
an accelerator, which leaves the CPU to the decoders). Three ways, alternated, best of
``--repeats``:

* ``sequential``: the stored order (the decode threads read ahead along it);
* ``shuffled``: a seeded permutation, the tree following the stream's order;
* ``shuffled, not followed``: the same permutation with the tree not told the order (how
  shuffled cells were read before: each batch decoded on request, nothing ahead).

Prints images/s of each and the ratios.

    PYTHONPATH=. .venv/bin/python scripts/benchmark_shuffled_jpeg.py [--images 600]
        [--workers 2] [--batch-size 50] [--compute-ms 40] [--repeats 3]
"""

from __future__ import annotations

import robustbench_bn  # noqa: F401  (OpenMP settings before torch, as in rbn-run)

# isort: split
import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchvision.io as io

from robustbench_bn.data.benchmark import Cell
from robustbench_bn.data.released import ImageTreeCorrupted
from robustbench_bn.data.streams import build_stream, iterate_stream

SIZE = 224


def make_tree(root: Path, images: int) -> None:
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 255, SIZE)
    for index in range(images):
        folder = root / "fog" / "1" / f"n{index % 2:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = torch.stack(
            [
                ramp[None, :].expand(SIZE, SIZE),
                ramp[:, None].expand(SIZE, SIZE),
                torch.full((SIZE, SIZE), float(index % 256)),
            ]
        )
        noise = torch.randint(-40, 41, (3, SIZE, SIZE), generator=generator)
        image = (base + noise).clamp(0, 255).to(torch.uint8)
        data = io.encode_jpeg(image, quality=85).numpy().tobytes()
        (folder / f"image_{index:05d}.JPEG").write_bytes(data)


def read_cell(root: Path, order: str, *, follow: bool, arguments) -> tuple[float, torch.Tensor]:
    tree = ImageTreeCorrupted(
        name="imagenet_c", root=str(root), num_classes=2, num_workers=arguments.workers
    )
    if not follow:
        tree.expect_order = None  # the tree is not told the order: read batch by batch
    cell = Cell("fog", 1)
    stream = build_stream(tree, [cell], order=order, label_shift_alpha=None, seed=0)
    checksum = torch.zeros((), dtype=torch.int64)
    started = time.perf_counter()
    for images, _, _ in iterate_stream(tree, stream, arguments.batch_size):
        checksum += images[:, :, ::16, ::16].sum()
        time.sleep(arguments.compute_ms / 1000)
    seconds = time.perf_counter() - started
    tree._reader[1].close()
    return seconds, checksum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--compute-ms", type=float, default=40.0)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    setups = {
        "sequential": ("sequential", True),
        "shuffled": ("shuffled", True),
        "shuffled, not followed": ("shuffled", False),
    }
    best = dict.fromkeys(setups, float("inf"))
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_tree(root, arguments.images)
        checksums = {}
        for _ in range(arguments.repeats):
            for name, (order, follow) in setups.items():
                seconds, checksums[name] = read_cell(
                    root, order, follow=follow, arguments=arguments
                )
                best[name] = min(best[name], seconds)
    # Every order reads the same images: the same pixel sum, whatever the order.
    assert len({int(value) for value in checksums.values()}) == 1
    for name, seconds in best.items():
        print(f"{name:>24}: {arguments.images / seconds:8.1f} images/s ({seconds:.2f} s)")
    print(f"ratio shuffled / sequential: {best['sequential'] / best['shuffled']:.2f}x")
    not_followed = best["shuffled, not followed"]
    print(f"ratio shuffled / shuffled not followed: {not_followed / best['shuffled']:.2f}x")


if __name__ == "__main__":
    main()
