"""Why LAME does or does not beat the source model on the embedded default: its kNN graph.

LAME (methods/lame.py) pulls each image's assignment towards those of its ``knn`` nearest
neighbours in the batch (features: the classifier's input, L2-normalized). That can only help
where the neighbours are more often right than the classifier. For every cell (15 corruptions
x 5 severities, and clean) and each batch size, this prints, averaged over the cells:

* ``source``, ``lame``: accuracy of the source model and of LAME (the method's defaults);
* ``true-label purity``: the share of each image's ``knn`` neighbours that have its true
  label;
* ``prediction agreement``: the share that have its source prediction;
* ``oracle vote``: the accuracy of a majority vote over the neighbours' true labels, an upper
  bound on what smoothing over this graph can reach.

Then LAME's accuracy with each affinity of the reference (``--settings``, batch 128 unless
``--settings-batch-size``) on the same cells. The images go in their stored (i.i.d.) order,
as ``rbn-run method=lame`` takes them.

    .venv/bin/python scripts/lame_diagnostics.py [--n-examples 1000] [--batch-sizes 64 128 256 1000]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

import robustbench_bn.run  # noqa: F401  (registers the config-hash resolver)
from robustbench_bn.data.benchmark import CLEAN_CELL, Cell, as_float_images
from robustbench_bn.methods.lame import (
    AFFINITIES,
    LaplacianAdjustedMaximumLikelihood,
    laplacian_assignments,
)
from robustbench_bn.runner import _builder_arguments, instantiate


def cell_outputs(benchmark, model, method, cell: Cell) -> tuple[torch.Tensor, ...]:
    """Features (the classifier's input), logits and labels of the whole cell, in order."""
    images, labels = benchmark.load(cell, torch.arange(benchmark.cell_size(cell)))
    features, logits = [], []
    with torch.inference_mode():
        for start in range(0, len(images), 250):
            logits.append(model(as_float_images(images[start : start + 250])))
            features.append(method._features)
    return torch.cat(features).flatten(1), torch.cat(logits), labels


def batch_statistics(features, logits, labels, method, batch_size: int) -> torch.Tensor:
    """source, lame, true-label purity, prediction agreement, oracle vote (% of the cell)."""
    totals = torch.zeros(5)
    for start in range(0, len(labels), batch_size):
        batch = slice(start, start + batch_size)
        normalized = F.normalize(features[batch].float(), p=2, dim=1)
        probabilities = logits[batch].float().softmax(1)
        truth, predicted = labels[batch], probabilities.argmax(1)
        affinity = AFFINITIES[method.affinity](normalized, method.knn)
        neighbours = (affinity > 0).float()
        degree = neighbours.sum(1).clamp(min=1)
        lame = laplacian_assignments(
            probabilities,
            affinity,
            bound_lambda=method.bound_lambda,
            max_steps=method.max_steps,
        ).argmax(1)
        oracle = (neighbours @ F.one_hot(truth, logits.shape[1]).float()).argmax(1)
        totals += torch.tensor(
            [
                (predicted == truth).sum(),
                (lame == truth).sum(),
                ((neighbours * (truth[:, None] == truth[None, :])).sum(1) / degree).sum(),
                ((neighbours * (predicted[:, None] == predicted[None, :])).sum(1) / degree).sum(),
                (oracle == truth).sum(),
            ],
            dtype=torch.float,
        )
    return 100 * totals / len(labels)


def lame_accuracy(features, logits, labels, *, affinity: str, knn: int, batch_size: int) -> float:
    correct = 0
    for start in range(0, len(labels), batch_size):
        batch = slice(start, start + batch_size)
        normalized = F.normalize(features[batch].float(), p=2, dim=1)
        assignments = laplacian_assignments(
            logits[batch].float().softmax(1),
            AFFINITIES[affinity](normalized, knn),
            bound_lambda=1.0,
            max_steps=100,
        )
        correct += int((assignments.argmax(1) == labels[batch]).sum())
    return 100 * correct / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-examples", type=int, default=1000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 1000])
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["knn:1", "knn:3", "knn:5", "rbf:3", "rbf:5", "linear:5"],
        help="affinity:knn pairs for the second table",
    )
    parser.add_argument("--settings-batch-size", type=int, default=128)
    parser.add_argument("--cache-dir", default=".cache/robustbench_bn")
    arguments = parser.parse_args()
    with initialize_config_module(config_module="robustbench_bn.conf", version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "method=lame",
                f"paths.cache_dir={arguments.cache_dir}",
                f"dataset.n_examples={arguments.n_examples}",
            ],
        )
    benchmark = instantiate(_builder_arguments(cfg.dataset))
    model = instantiate(_builder_arguments(cfg.model)).eval()
    method = instantiate(_builder_arguments(cfg.method), _partial_=True)(model=model)
    assert isinstance(method, LaplacianAdjustedMaximumLikelihood)
    corrupted = [
        Cell(corruption, severity)
        for corruption in cfg.dataset.corruptions
        for severity in cfg.dataset.severities
    ]
    outputs = {cell: cell_outputs(benchmark, model, method, cell) for cell in corrupted}
    outputs[CLEAN_CELL] = cell_outputs(benchmark, model, method, CLEAN_CELL)
    print(
        f"{arguments.n_examples} images per cell, stored order, lame affinity={method.affinity} "
        f"knn={method.knn} bound_lambda={method.bound_lambda}; means over the cells (%)"
    )
    print(
        f"{'cells':10} {'batch':>5} {'source':>7} {'lame':>7} {'purity':>7} "
        f"{'agreement':>9} {'oracle':>7}"
    )
    for batch_size in arguments.batch_sizes:
        for name, cells in (("corrupted", corrupted), ("clean", [CLEAN_CELL])):
            means = torch.stack(
                [batch_statistics(*outputs[cell], method, batch_size) for cell in cells]
            ).mean(0)
            widths = (7, 7, 7, 9, 7)
            values = " ".join(f"{v:{w}.2f}" for v, w in zip(means, widths, strict=True))
            print(f"{name:10} {batch_size:5} {values}")

    print(f"\nlame by affinity, batch {arguments.settings_batch_size}: mean accuracy (%)")
    for setting in arguments.settings:
        affinity, knn = setting.split(":")
        means = [
            sum(
                lame_accuracy(
                    *outputs[cell],
                    affinity=affinity,
                    knn=int(knn),
                    batch_size=arguments.settings_batch_size,
                )
                for cell in cells
            )
            / len(cells)
            for cells in (corrupted, [CLEAN_CELL])
        ]
        print(f"{affinity:7} knn={knn}  corrupted {means[0]:6.2f}  clean {means[1]:6.2f}")


if __name__ == "__main__":
    main()
