"""Suite overhead: images/s of the runner's evaluation loop against bare forwards, same process.

For each method, three loops over the same cell of the embedded default (Fashion-MNIST, the
cell already in memory, so corruption cost is excluded):

* ``bare model``: the source model's forward on preloaded float tensors, nothing else;
* ``bare method``: ``method.predict`` on the same preloaded tensors (the method's own cost);
* ``suite``: :func:`robustbench_bn.runner.evaluate_cell`, i.e. indexing the cell, uint8 to
  float conversion, prediction, argmax and counting.

The overhead of the suite is ``suite / bare method``; the goal is at most 10%.

``--orders`` measures instead what a test stream costs (runner.order, issue 20), each order
against ``sequential`` in the same process, alternating, best of ``--repeats``:

* the embedded default: :func:`evaluate_cell` with the source model on a corrupted cell held
  in memory, ``order=shuffled`` and ``order=label_shift`` against ``sequential``;
* a released CIFAR-C layout: a synthetic ``<corruption>.npy`` (uint8 50,000x32x32x3, random)
  and ``labels.npy`` written to a temporary folder and read through the memory map by
  :class:`~robustbench_bn.data.released.CifarCorrupted`: a whole 10,000-image cell read in
  batches through ``load`` (one gathered read per batch; for comparison, label_shift's
  batches read image by image, as a per-sample Dataset would), the map access alone (best of
  30, whatever ``--repeats``), then the full evaluation
  with the source model on its first ``--n-examples`` images. The file was just written, so
  it is in the page cache: this measures the gather, not the disk.

``--against-source`` measures instead each method's time per cell against source's: one
corrupted cell (gaussian_noise severity 3, held in memory) through :func:`evaluate_cell`,
adaptation included (eata's Fisher and dmc's quantiles are prepared once, outside the
timing, as a job caches them), source and the method taking turns ``--repeats`` times, best
of each, so load from other processes on a shared machine falls on both alike.

    .venv/bin/python scripts/benchmark_evaluation.py [--methods source bn ... dua] [--repeats 3]
    .venv/bin/python scripts/benchmark_evaluation.py --orders [--repeats 5]
    .venv/bin/python scripts/benchmark_evaluation.py --against-source [--methods eata ...]
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
    parser.add_argument(
        "--orders", action="store_true", help="label_shift/shuffled against sequential"
    )
    parser.add_argument(
        "--against-source", action="store_true", help="seconds per cell, each method vs source"
    )
    arguments = parser.parse_args()
    if arguments.orders:
        measure_orders(arguments)
        return
    if arguments.against_source:
        measure_against_source(arguments)
        return
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
        cfg = _compose(method_name, arguments)
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


def _compose(method_name: str, arguments) -> object:
    with initialize_config_module(config_module="robustbench_bn.conf", version_base="1.3"):
        return compose(
            config_name="config",
            overrides=[
                f"method={method_name}",
                f"paths.cache_dir={arguments.cache_dir}",
                f"dataset.n_examples={arguments.n_examples}",
                f"runner.batch_size={arguments.batch_size}",
                "display.progress=false",
            ],
        )


def measure_against_source(arguments) -> None:
    from robustbench_bn.data.benchmark import Cell

    cell = Cell("gaussian_noise", 3)
    cfg = _compose("source", arguments)
    benchmark = instantiate(_builder_arguments(cfg.dataset))
    benchmark.load(cell, torch.arange(2))  # corrupt (or read from the cache) once, untimed

    def evaluation(method_name: str):
        cfg = _compose(method_name, arguments)
        model = instantiate(_builder_arguments(cfg.model)).eval()
        method = instantiate(_builder_arguments(cfg.method), _partial_=True)(model=model)
        if method.needs_training_data:
            method.prepare(
                benchmark.training_images, cache_key=model.cache_key, cache_dir=arguments.cache_dir
            )

        def loop() -> None:
            method.reset()
            evaluate_cell(
                method,
                benchmark,
                cell,
                batch_size=arguments.batch_size,
                device=torch.device("cpu"),
                precision="fp32",
                seed=0,
            )

        return loop

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, cell {cell}, "
        f"{arguments.n_examples} images, batch {arguments.batch_size}, best of "
        f"{arguments.repeats}, alternating with source"
    )
    source = evaluation("source")
    for method_name in arguments.methods:
        if method_name == "source":
            continue
        method = evaluation(method_name)
        seconds = _alternating_best(arguments.repeats, {"source": source, method_name: method})
        print(
            f"{method_name:8} source {seconds['source']:6.2f} s  {method_name} "
            f"{seconds[method_name]:6.2f} s  {seconds[method_name] / seconds['source']:5.2f}x "
            "source"
        )


ORDERS = ("sequential", "shuffled", "label_shift")


def _alternating_best(repeats: int, loops: dict[str, object]) -> dict[str, float]:
    """Best time of each loop, the loops taking turns so that load from other processes on a
    shared machine falls on all of them alike."""
    best = dict.fromkeys(loops, float("inf"))
    for _ in range(repeats):
        for name, loop in loops.items():
            started = time.perf_counter()
            loop()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def _print_ratios(title: str, seconds: dict[str, float], images: int) -> None:
    baseline = seconds["sequential"]
    for name, value in seconds.items():
        print(
            f"  {title:34} {name:12} {images / value:9.0f} images/s   "
            f"{value / baseline:5.3f}x sequential's time"
        )


def measure_orders(arguments) -> None:
    import tempfile

    import numpy as np

    from robustbench_bn.data.benchmark import Cell
    from robustbench_bn.data.released import CifarCorrupted
    from robustbench_bn.data.streams import build_stream

    batch_size, repeats = arguments.batch_size, arguments.repeats
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch_size}, "
        f"best of {repeats}, orders alternating in one process"
    )
    with initialize_config_module(config_module="robustbench_bn.conf", version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                f"paths.cache_dir={arguments.cache_dir}",
                f"dataset.n_examples={arguments.n_examples}",
                "display.progress=false",
            ],
        )
    benchmark = instantiate(_builder_arguments(cfg.dataset))
    model = instantiate(_builder_arguments(cfg.model)).eval()
    method = instantiate(_builder_arguments(cfg.method), _partial_=True)(model=model)
    cell = Cell("gaussian_noise", 5)
    benchmark.load(cell, torch.arange(2))  # corrupt (or read from the cache) once, untimed

    def evaluation(source, order: str):
        def loop() -> None:
            evaluate_cell(
                method,
                source,
                cell,
                batch_size=batch_size,
                device=torch.device("cpu"),
                precision="fp32",
                seed=0,
                order=order,
                label_shift_alpha=0.01,
            )

        return loop

    seconds = _alternating_best(repeats, {o: evaluation(benchmark, o) for o in ORDERS})
    _print_ratios("embedded default, source evaluation", seconds, arguments.n_examples)

    per_severity = 10_000
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "CIFAR-10-C"
        root.mkdir()
        generator = np.random.default_rng(0)
        np.save(
            root / "labels.npy",
            np.tile(generator.integers(0, 10, per_severity), 5).astype(np.uint8),
        )
        np.save(
            root / "gaussian_noise.npy",
            generator.integers(0, 256, (5 * per_severity, 32, 32, 3), dtype=np.uint8),
        )
        release = CifarCorrupted(name="cifar10_c", root=str(root))
        streams = {
            order: build_stream(release, [cell], order=order, label_shift_alpha=0.01, seed=0)
            for order in ORDERS
        }

        array = release._array("gaussian_noise")
        offset = 4 * per_severity
        batches = {
            order: [
                streams[order].indices[start : start + batch_size]
                for start in range(0, per_severity, batch_size)
            ]
            for order in ORDERS
        }

        def read(order: str):
            def loop() -> None:
                for indices in batches[order]:
                    release.load(cell, indices)

            return loop

        def per_image_reads() -> None:
            # What a per-sample Dataset does: one read of the map per image.
            for indices in batches["label_shift"]:
                block = np.stack([array[int(index) + offset] for index in indices])
                torch.from_numpy(block).permute(0, 3, 1, 2).contiguous()
                release._labels[indices]

        loops = {order: read(order) for order in ORDERS}
        loops["label_shift, per-image reads"] = per_image_reads
        seconds = _alternating_best(repeats, loops)
        _print_ratios("released CIFAR-C layout, read only", seconds, per_severity)

        def raw(order: str):
            # The map access alone, as load() does it: a slice or one gathered read per batch.
            def loop() -> None:
                for indices in batches[order]:
                    if order == "sequential":
                        start = int(indices[0]) + offset
                        np.array(array[start : start + len(indices)])
                    else:
                        array[np.asarray(indices) + offset]

            return loop

        seconds = _alternating_best(30, {order: raw(order) for order in ORDERS})
        _print_ratios("released CIFAR-C layout, map access", seconds, per_severity)
        # The evaluation on the first --n-examples images of the cell, as dataset.n_examples.
        subset = CifarCorrupted(name="cifar10_c", root=str(root), n_examples=arguments.n_examples)
        seconds = _alternating_best(repeats, {o: evaluation(subset, o) for o in ORDERS})
        _print_ratios("released CIFAR-C layout, evaluation", seconds, arguments.n_examples)


if __name__ == "__main__":
    main()
