"""What the seed changes in the embedded default's images: per corruption and severity, the
share of images that differ between two seeds and their mean absolute pixel difference.

A standard deviation over seeds (rbn-report, experiment=seeds) means something only for the
corruptions whose images the seed redraws; this lists which those are.

    python scripts/seed_draws.py                      # seeds 0 and 1, 200 images, severities 1-5
    python scripts/seed_draws.py --images 1000 --seeds 0 2
"""

from __future__ import annotations

import argparse

import torch

from robustbench_bn.data.benchmark import Cell
from robustbench_bn.data.corruptions import BENCHMARK_CORRUPTIONS
from robustbench_bn.data.on_the_fly import fashion_mnist_c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs=2, default=(0, 1))
    parser.add_argument("--severities", type=int, nargs="+", default=(1, 2, 3, 4, 5))
    parser.add_argument("--data-dir", default="data")
    arguments = parser.parse_args()
    first, second = (
        fashion_mnist_c(data_dir=arguments.data_dir, n_examples=arguments.images, seed=seed)
        for seed in arguments.seeds
    )
    indices = torch.arange(arguments.images)
    print(
        f"seed {arguments.seeds[0]} vs seed {arguments.seeds[1]}, first {arguments.images} "
        "Fashion-MNIST test images: share of images that differ (%), and the mean absolute "
        "difference of their pixels (uint8 levels) over all images"
    )
    header = "corruption".ljust(18) + "".join(
        f"  severity {severity:<10}" for severity in arguments.severities
    )
    print(header)
    for corruption in BENCHMARK_CORRUPTIONS:
        line = corruption.ljust(18)
        for severity in arguments.severities:
            cell = Cell(corruption, severity)
            images_first, _ = first.load(cell, indices)
            images_second, _ = second.load(cell, indices)
            difference = (images_first.float() - images_second.float()).abs()
            differing = difference.flatten(1).amax(dim=1).gt(0).float().mean().item()
            line += f"  {100 * differing:5.1f}% {difference.mean().item():6.2f}  "
        print(line)


if __name__ == "__main__":
    main()
