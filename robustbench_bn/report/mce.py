"""Mean corruption error (Hendrycks & Dietterich 2019), normalized by AlexNet's errors.

CE_c = sum_s E(f, s, c) / sum_s E(AlexNet, s, c); mCE = mean of CE_c over the 15 benchmark
corruptions; relative mCE uses (E - E_clean) in both numerator and denominator. AlexNet's
errors ship as package data: ImageNet-C per severity (hendrycks/robustness issue #10) and
CIFAR-10-C / CIFAR-100-C as means over severities (Benz et al. 2021's eval.py). AlexNet's
clean ImageNet error 0.4345 is the widely used value (unverified); no clean AlexNet error is
shipped for CIFAR, so relative mCE is not computed there.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from robustbench_bn.data.corruptions import BENCHMARK_CORRUPTIONS

ALEXNET_CLEAN_ERROR = {"imagenet_c": 0.4345}


def _baseline_file(name: str) -> pd.DataFrame:
    with resources.files("robustbench_bn.report.baselines").joinpath(name).open() as handle:
        return pd.read_csv(handle, comment="#").set_index("corruption")


def alexnet_errors(dataset: str) -> pd.Series | None:
    """AlexNet's mean error (fraction) per corruption for ``dataset``, or None if unknown."""
    normalized = dataset.lower().replace("-", "_")
    if normalized in ("imagenet_c", "imagenetc"):
        return _baseline_file("alexnet_imagenet_c_err.csv")["mean"]
    columns = {
        "cifar10_c": "cifar10c",
        "cifar10c": "cifar10c",
        "cifar100_c": "cifar100c",
        "cifar100c": "cifar100c",
    }
    if normalized in columns:
        return _baseline_file("alexnet_cifar_c_err.csv")[columns[normalized]]
    return None


def mce_table(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """mCE and relative mCE (in %) per dataset, model and setup label; plus notes."""
    notes: list[str] = []
    results = []
    for (dataset, model, label), group in rows.groupby(["dataset", "model", "label"], sort=False):
        baseline = alexnet_errors(str(dataset))
        if baseline is None:
            note = f"{dataset}: no AlexNet baseline is declared, so no mCE (mean error only)."
            if note not in notes:
                notes.append(note)
            continue
        corrupted = group[group["corruption"].isin(BENCHMARK_CORRUPTIONS)]
        severities = corrupted.groupby("corruption")["severity"].nunique()
        if len(severities) and int(severities.min()) < 5:
            notes.append(f"{dataset} {label}: mCE needs severities 1-5 of every corruption.")
            continue
        errors = corrupted.groupby("corruption")["error"].mean() / 100
        missing = [c for c in BENCHMARK_CORRUPTIONS if c not in errors.index]
        if missing:
            notes.append(f"{dataset} {label}: mCE needs all 15 corruptions; missing {missing}.")
            continue
        corruption_errors = errors / baseline.reindex(errors.index)
        entry = {
            "dataset": dataset,
            "model": model,
            "label": label,
            "mCE": 100 * corruption_errors.mean(),
            "relative_mCE": float("nan"),
        }
        clean = group.loc[group["corruption"] == "clean", "error"]
        alexnet_clean = ALEXNET_CLEAN_ERROR.get(str(dataset).lower())
        if len(clean) and alexnet_clean is not None:
            clean_error = float(clean.iloc[0]) / 100
            relative = (errors - clean_error) / (baseline.reindex(errors.index) - alexnet_clean)
            entry["relative_mCE"] = 100 * relative.mean()
        elif alexnet_clean is None:
            note = f"{dataset}: AlexNet's clean error is not shipped; no relative mCE."
            if note not in notes:
                notes.append(note)
        results.append(entry)
    return pd.DataFrame(results), notes
