"""Write results/reference/*.csv: published per-cell numbers in the suite's long row schema.

    .venv/bin/python scripts/convert_references.py [--source ../shared/reference]
        [--out results/reference]

Each output row is one (dataset, model, finetune, method, method_params, corruption,
severity) cell with accuracy and error in percent and the row's citation, named the way a
run of the matching experiment preset names it, so that ``rbn-report compare RUN
REFERENCE`` can match them cell by cell. The sources (read from the papers' repositories;
see PAPERS.md):

* Benz et al. 2021 per-cell tables (phibenz/batch_norm_adaptation.pytorch, results/*/
  results_default.csv, commit 743fdb7): source and n=32 BN rectification, top-1 and top-5.
* TENT's CIFAR-10-C severity-5 error table (DequanWang/tent README): source, norm, tent.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Iterator
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
COLUMNS = [
    "dataset",
    "model",
    "finetune",
    "method",
    "method_params",
    "subset",
    "batch_size",
    "corruption",
    "severity",
    "accuracy",
    "error",
    "top5",
    "source_citation",
]
BENZ_CITATION = (
    "Benz, Zhang, Karjauv, Kweon, Revisiting Batch Normalization for Improving Corruption "
    "Robustness, WACV 2021 (arXiv 2010.03630); github phibenz/batch_norm_adaptation.pytorch "
    "results/{folder}/results_default.csv @743fdb7"
)
TENT_CITATION = (
    "Wang, Shelhamer, Liu, Olshausen, Darrell, Tent: Fully Test-Time Adaptation by Entropy "
    "Minimization, ICLR 2021; github DequanWang/tent README (CIFAR-10-C severity 5, "
    "WRN-28-10 Standard, batch 200)"
)
#: The method names and the parameters that define them, as the suite's rows write them.
BN_N32 = {"statistics": "samples", "n_samples": 32}
BENZ_METHODS = {"source": ("source", {}), "bn_samples_n32": ("bn", BN_N32)}
TENT_METHODS = {
    "source": ("source", {}),
    "norm": ("bn", {"statistics": "batch", "prior": 0}),
    "tent": ("tent", {"learning_rate": 0.001, "steps": 1}),
}
BENZ_TABLES = {
    # output file: (source file, dataset, the preset's model config, repository folder)
    "benz2021_resnet20_cifar10c.csv": (
        "benz2021_resnet20_cifar10c.csv",
        "cifar10_c",
        "resnet20_benz2021_cifar10",
        "cifar10_resnet20_cifar10",
    ),
    "benz2021_resnet20_cifar100c.csv": (
        "benz2021_resnet20_cifar100c.csv",
        "cifar100_c",
        "resnet20_benz2021_cifar100",
        "cifar100_resnet20_cifar100",
    ),
    "benz2021_resnet18_imagenetc.csv": (
        "benz2021_resnet18_imagenetc.csv",
        "imagenet_c",
        "resnet18_torchvision",
        "imagenet_resnet18",
    ),
}


def _rows(path: Path) -> Iterator[dict[str, str]]:
    with open(path, newline="") as handle:
        yield from csv.DictReader(line for line in handle if not line.startswith("#"))


def _params(parameters: dict) -> str:
    return json.dumps(parameters, sort_keys=True)


def _percent(value: float) -> str:
    return f"{value:.4g}" if value < 100 else "100"


def convert_benz(source: Path, dataset: str, model: str, folder: str) -> list[dict[str, str]]:
    converted = []
    for row in _rows(source):
        if row["method"] not in BENZ_METHODS:
            raise ValueError(f"{source}: unknown method {row['method']!r}")
        method, parameters = BENZ_METHODS[row["method"]]
        top1 = float(row["top1"])
        converted.append(
            {
                "dataset": dataset,
                "model": model,
                "finetune": "none",
                "method": method,
                "method_params": _params(parameters),
                "subset": "all",
                "batch_size": "",
                "corruption": row["corruption"],
                "severity": row["severity"],
                "accuracy": row["top1"],
                "error": f"{100 - top1:.3f}".rstrip("0").rstrip("."),
                "top5": row["top5"],
                "source_citation": BENZ_CITATION.format(folder=folder),
            }
        )
    return converted


def convert_tent(source: Path) -> list[dict[str, str]]:
    converted = []
    for row in _rows(source):
        method, parameters = TENT_METHODS[row["method"]]
        for corruption, error in row.items():
            if corruption in ("method", "mean"):
                continue  # the mean is not a cell; the header comment gives it
            converted.append(
                {
                    "dataset": "cifar10_c",
                    "model": "wrn28_10_robustbench_standard",
                    "finetune": "none",
                    "method": method,
                    "method_params": _params(parameters),
                    "subset": "all",
                    "batch_size": "200",
                    "corruption": corruption,
                    "severity": "5",
                    "accuracy": f"{100 - float(error):.1f}",
                    "error": error,
                    "top5": "",
                    "source_citation": TENT_CITATION,
                }
            )
    return converted


def write(path: Path, rows: list[dict[str, str]], header: list[str]) -> None:
    columns = [c for c in COLUMNS if any(row[c] for row in rows)]
    with open(path, "w", newline="") as handle:
        for line in header:
            handle.write(f"# {line}\n")
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPOSITORY.parent / "shared" / "reference")
    parser.add_argument("--out", type=Path, default=REPOSITORY / "results" / "reference")
    arguments = parser.parse_args()
    arguments.out.mkdir(parents=True, exist_ok=True)
    for output, (source, dataset, model, folder) in BENZ_TABLES.items():
        rows = convert_benz(arguments.source / source, dataset, model, folder)
        write(
            arguments.out / output,
            rows,
            [
                BENZ_CITATION.format(folder=folder),
                f"Top-1 accuracy (%) per cell on all images of {dataset} (accuracy = top1 of "
                "the source table); method bn = BN statistics re-estimated on n=32 samples of "
                "the same cell (their bn_samples_n32).",
                f"Model as the benz2021 presets name it: {model}. Written by "
                "scripts/convert_references.py.",
            ],
        )
        print(f"wrote {arguments.out / output}: {len(rows)} cells")
    rows = convert_tent(arguments.source / "tent_cifar10c_sev5_error.csv")
    write(
        arguments.out / "wang2021_tent_cifar10c_sev5.csv",
        rows,
        [
            TENT_CITATION,
            "Top-1 error (%) per corruption at severity 5, 10,000 images each; accuracy = "
            "100 - error. Published means over the 15 corruptions: source 43.5, norm 20.4, "
            "tent 18.6. norm = method bn with test-batch statistics.",
            "Written by scripts/convert_references.py.",
        ],
    )
    print(f"wrote {arguments.out / 'wang2021_tent_cifar10c_sev5.csv'}: {len(rows)} cells")


if __name__ == "__main__":
    main()
