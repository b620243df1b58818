"""Suite overhead: images/s of the runner's evaluation loop against bare forwards, same process.

For each method, three loops over the same cell of the embedded default (Fashion-MNIST, the
cell already in memory, so corruption cost is excluded):

* ``bare model``: the source model's forward on preloaded float tensors, nothing else;
* ``bare method``: ``method.predict`` on the same preloaded tensors (the method's own cost);
* ``suite``: :func:`robustbench_bn.runner.evaluate_cell`, i.e. indexing the cell, uint8 to
  float conversion, prediction, argmax and counting.

The overhead of the suite is ``suite / bare method``; the goal is at most 10%.

    .venv/bin/python scripts/benchmark_evaluation.py [--methods source bn ... dua] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

import robustbench_bn.run  # noqa: F401  (registers the config-hash resolver)
from robustbench_bn.data.benchmark import CLEAN_CELL, as_float_images, iterate_cell
from robustbench_bn.runner import _builder_arguments, evaluate_cell, instantiate


def _best_of(repeats: int, loop) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        loop()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["source", "bn", "dmc", "tent", "eata", "sar", "lame", "dua"],
    )
    parser.add_argument("--n-examples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", default=".cache/robustbench_bn")
    arguments = parser.parse_args()
    available = {
        path.stem for path in Path(robustbench_bn.run.__file__).parent.glob("conf/method/*.yaml")
    }

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{arguments.n_examples} images, batch {arguments.batch_size}, best of {arguments.repeats}"
    )
    print(f"{'method':8} {'bare model':>12} {'bare method':>12} {'suite':>12} {'overhead':>9}")
    for method_name in arguments.methods:
        if method_name not in available:
            print(f"{method_name:8} (no conf/method/{method_name}.yaml; skipped)")
            continue
        with initialize_config_module(config_module="robustbench_bn.conf", version_base="1.3"):
            cfg = compose(
                config_name="config",
                overrides=[
                    f"method={method_name}",
                    f"paths.cache_dir={arguments.cache_dir}",
                    f"dataset.n_examples={arguments.n_examples}",
                    f"runner.batch_size={arguments.batch_size}",
                    "display.progress=false",
                ],
            )
        seconds = measure(cfg, arguments.batch_size, arguments.repeats, arguments.cache_dir)
        bare_model_seconds, bare_method_seconds, suite_seconds = seconds
        rate = arguments.n_examples
        print(
            f"{method_name:8} {rate / bare_model_seconds:10.0f}/s "
            f"{rate / bare_method_seconds:10.0f}/s {rate / suite_seconds:10.0f}/s "
            f"{100 * (suite_seconds / bare_method_seconds - 1):+8.1f}%"
        )


def measure(cfg, batch_size: int, repeats: int, cache_dir: str) -> tuple[float, float, float]:
    """Seconds for the bare model, the bare method and the suite on the clean cell."""
    benchmark = instantiate(_builder_arguments(cfg.dataset))
    model = instantiate(_builder_arguments(cfg.model)).eval()
    method = instantiate(_builder_arguments(cfg.method), _partial_=True)(model=model)
    if method.needs_training_data:
        method.prepare(benchmark.training_images, cache_key=model.cache_key, cache_dir=cache_dir)
    batches = [
        as_float_images(images) for images, _ in iterate_cell(benchmark, CLEAN_CELL, batch_size)
    ]

    def bare_model() -> None:
        with torch.inference_mode():
            for images in batches:
                model(images)

    def bare_method() -> None:
        method.reset()
        for images in batches:
            method.predict(images)

    def suite() -> None:
        method.reset()
        evaluate_cell(
            method,
            benchmark,
            CLEAN_CELL,
            batch_size=batch_size,
            device=torch.device("cpu"),
            precision="fp32",
            seed=0,
        )

    method.reset()
    return (
        _best_of(repeats, bare_model),
        _best_of(repeats, bare_method),
        _best_of(repeats, suite),
    )


if __name__ == "__main__":
    main()
