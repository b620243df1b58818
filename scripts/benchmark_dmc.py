"""dmc cost and accuracy: exact and approx modes against source, same batches, one process.

Embedded default (Fashion-MNIST-C, the suite's small ResNet from
``robustbench_bn.models.training.trained_small_resnet``): the same corrupted cells for every
method. The methods take turns, one full pass over all cells each per round, and each
method's time is its fastest round, so a burst of load from other processes on a shared
machine hits every method alike instead of whichever happened to be running. Both
wall-clock and CPU time (all threads) are printed; CPU time is disturbed less by a busy
machine, most of all with ``--threads 1``. Prints each mode's evaluation time as a ratio to
source and its accuracy, so the approx mode's speed-up and its accuracy cost are read side
by side. Source quantiles are measured (or loaded from the cache) before timing starts:
``prepare`` is a once-per-model cost, not evaluation.

    .venv/bin/python scripts/benchmark_dmc.py [--n-examples 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from robustbench_bn.data.benchmark import Cell, as_float_images, iterate_cell
from robustbench_bn.data.on_the_fly import fashion_mnist_c
from robustbench_bn.methods.base import Method
from robustbench_bn.methods.dmc import DistributionMismatchCorrection
from robustbench_bn.methods.source import Source
from robustbench_bn.models.training import trained_small_resnet

CELLS = (Cell("gaussian_noise", 3), Cell("fog", 3), Cell("contrast", 3), Cell("clean", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-examples", type=int, default=1000, help="images per cell")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per method")
    parser.add_argument("--approx-samples", type=int, default=16384)
    parser.add_argument("--approx-bins", type=int, default=1024)
    parser.add_argument("--modes", default="exact,approx", help="dmc modes to time")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--cache-dir", default=".cache/robustbench_bn")
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    benchmark = fashion_mnist_c(n_examples=arguments.n_examples, cache_dir=arguments.cache_dir)
    batches = [
        (as_float_images(images), labels)
        for cell in CELLS
        for images, labels in iterate_cell(benchmark, cell, arguments.batch_size)
    ]

    def build(kind: str) -> Method:
        model = trained_small_resnet(cache_dir=arguments.cache_dir, progress=False)
        if kind == "source":
            return Source(model=model)
        method = DistributionMismatchCorrection(
            model=model,
            mode=kind,
            approx_samples=arguments.approx_samples,
            approx_bins=arguments.approx_bins,
        )
        method.prepare(
            benchmark.training_images, cache_key=model.cache_key, cache_dir=arguments.cache_dir
        )
        return method

    kinds = ["source", *arguments.modes.split(",")]
    methods = {kind: build(kind) for kind in kinds}
    seconds = {kind: float("inf") for kind in kinds}
    cpu_seconds = {kind: float("inf") for kind in kinds}
    accuracy = {}
    for _ in range(arguments.rounds):
        for kind, method in methods.items():
            correct = total = 0
            started, cpu_started = time.perf_counter(), time.process_time()
            for images, labels in batches:
                correct += int((method.predict(images).argmax(1) == labels).sum())
                total += len(labels)
            seconds[kind] = min(seconds[kind], time.perf_counter() - started)
            cpu_seconds[kind] = min(cpu_seconds[kind], time.process_time() - cpu_started)
            accuracy[kind] = 100 * correct / total

    print(
        f"{torch.get_num_threads()} threads; cells {', '.join(map(str, CELLS))}; "
        f"{arguments.n_examples} images each, batch {arguments.batch_size}; "
        f"fastest of {arguments.rounds} rounds"
    )
    print("        wall-clock             CPU time (all threads)   accuracy")
    for kind in kinds:
        print(
            f"{kind:7} {seconds[kind]:7.3f} s {seconds[kind] / seconds['source']:5.2f}x source"
            f"  {cpu_seconds[kind]:7.3f} s {cpu_seconds[kind] / cpu_seconds['source']:5.2f}x source"
            f"  {accuracy[kind]:6.2f}%"
        )
    if "exact" in accuracy and "approx" in accuracy:
        print(f"approx - exact accuracy: {accuracy['approx'] - accuracy['exact']:+.2f} points")


if __name__ == "__main__":
    main()
