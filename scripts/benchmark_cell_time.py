"""Seconds per cell of test-time methods against source, alternating in one process.

One corruption cell of the embedded default (gaussian_noise, severity 3, 2,000 images,
batch 128), evaluated through :func:`robustbench_bn.runner.evaluate_cell` (adaptation
included), source and the method taking turns ``--repeats`` times; the minimum of each is
compared, so load from other processes on a shared machine distorts the ratio less.

    .venv/bin/python scripts/benchmark_cell_time.py [--methods eata sar lame dua] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra import compose, initialize_config_module

import robustbench_bn.run  # noqa: F401  (registers the config-hash resolver)
from robustbench_bn.data.benchmark import Cell
from robustbench_bn.runner import _builder_arguments, evaluate_cell, instantiate

CELL = Cell("gaussian_noise", 3)


def build(method_name: str, cache_dir: str):
    with initialize_config_module(config_module="robustbench_bn.conf", version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[f"method={method_name}", f"paths.cache_dir={cache_dir}"],
        )
    benchmark = instantiate(_builder_arguments(cfg.dataset))
    model = instantiate(_builder_arguments(cfg.model)).eval()
    method = instantiate(_builder_arguments(cfg.method), _partial_=True)(model=model)
    if method.needs_training_data:
        method.prepare(benchmark.training_images, cache_key=model.cache_key, cache_dir=cache_dir)
    return benchmark, method


def seconds(benchmark, method) -> float:
    method.reset()
    started = time.perf_counter()
    evaluate_cell(
        method,
        benchmark,
        CELL,
        batch_size=128,
        device=torch.device("cpu"),
        precision="fp32",
        seed=0,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["eata", "sar", "lame", "dua"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", default=".cache/robustbench_bn")
    arguments = parser.parse_args()
    source = build("source", arguments.cache_dir)
    seconds(*source)  # corrupts the cell once, outside the timing
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cell {CELL}")
    for name in arguments.methods:
        other = build(name, arguments.cache_dir)
        seconds(*other)
        source_times, method_times = [], []
        for _ in range(arguments.repeats):
            source_times.append(seconds(*source))
            method_times.append(seconds(*other))
        ratio = min(method_times) / min(source_times)
        print(
            f"{name:6} source {min(source_times):6.2f} s  {name} {min(method_times):6.2f} s  "
            f"{ratio:5.2f}x source"
        )


if __name__ == "__main__":
    main()
