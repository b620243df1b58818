"""dmc cost and accuracy: exact and approx modes against source, same batches, one process.

Embedded default (Fashion-MNIST-C, the suite's small ResNet), the same corrupted cells for
every method, best-of-N evaluation time. Prints each mode's time as a ratio to source and its
accuracy, so the approx mode's speed-up and its accuracy cost are read side by side.

    .venv/bin/python scripts/benchmark_dmc.py [--n-examples 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from robustbench_bn.data.benchmark import Cell, iterate_cell
from robustbench_bn.data.on_the_fly import fashion_mnist_c
from robustbench_bn.methods.dmc import DistributionMismatchCorrection
from robustbench_bn.methods.source import Source
from robustbench_bn.models.training import trained_small_resnet

CELLS = (Cell("gaussian_noise", 3), Cell("fog", 3), Cell("contrast", 3), Cell("clean", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-examples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--approx-samples", type=int, default=4096)
    parser.add_argument("--cache-dir", default=".cache/robustbench_bn")
    arguments = parser.parse_args()
    benchmark = fashion_mnist_c(n_examples=arguments.n_examples, cache_dir=arguments.cache_dir)
    batches = {cell: list(iterate_cell(benchmark, cell, arguments.batch_size)) for cell in CELLS}
    training = benchmark.training_images

    def build(kind: str):
        model = trained_small_resnet(cache_dir=arguments.cache_dir, progress=False)
        if kind == "source":
            return Source(model=model)
        method = DistributionMismatchCorrection(
            model=model, mode=kind, approx_samples=arguments.approx_samples
        )
        method.prepare(training, cache_key=model.cache_key, cache_dir=arguments.cache_dir)
        return method

    def evaluate(method) -> tuple[float, float]:
        best, correct, total = float("inf"), 0, 0
        for _ in range(arguments.repeats):
            correct = total = 0
            started = time.perf_counter()
            for cell_batches in batches.values():
                for images, labels in cell_batches:
                    correct += int((method.predict(images).argmax(1) == labels).sum())
                    total += len(labels)
            best = min(best, time.perf_counter() - started)
        return best, 100 * correct / total

    print(
        f"{torch.get_num_threads()} threads; cells {', '.join(map(str, CELLS))}; "
        f"{arguments.n_examples} images each; best of {arguments.repeats}"
    )
    results = {kind: evaluate(build(kind)) for kind in ("source", "exact", "approx")}
    source_seconds = results["source"][0]
    for kind, (seconds, accuracy) in results.items():
        print(
            f"{kind:7} {seconds:7.3f} s  {seconds / source_seconds:5.2f}x source  "
            f"accuracy {accuracy:6.2f}%"
        )
    print(f"approx - exact accuracy: {results['approx'][1] - results['exact'][1]:+.2f} points")


if __name__ == "__main__":
    main()
