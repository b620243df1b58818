"""Mean error, and mean corruption error (Hendrycks & Dietterich 2019) normalized by AlexNet.

CE_c = sum_s E(f, s, c) / sum_s E(AlexNet, s, c); mCE = mean of CE_c over the 15 benchmark
corruptions. Relative mCE uses (E(f, s, c) - E_clean(f)) over the same for AlexNet. Both are
given in percent (AlexNet = 100).

AlexNet's errors ship as package data (robustbench_bn/report/baselines/, with citations):
ImageNet-C per severity (hendrycks/robustness issue #10) and CIFAR-10-C / CIFAR-100-C as
means over severities (Benz et al. 2021, github phibenz/batch_norm_adaptation.pytorch,
eval.py). Relative mCE also needs AlexNet's clean error: for ImageNet the widely used value
0.4345 (43.45 % top-1) is taken as given, not verified against a primary source; for CIFAR
no clean AlexNet error is shipped, so relative mCE is not computed there (a note says so).
Datasets without a declared baseline (e.g. fashion_mnist_c) get mean error and a note.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from robustbench_bn.data.corruptions import BENCHMARK_CORRUPTIONS
from robustbench_bn.report.aggregate import CLEAN, corrupted_rows, ordered_labels

#: Dataset name (lower case, without "-" and "_") -> (baseline file, column of AlexNet's mean
#: error over severities 1-5).
BASELINES = {
    "imagenetc": ("alexnet_imagenet_c_err.csv", "mean"),
    "cifar10c": ("alexnet_cifar_c_err.csv", "cifar10c"),
    "cifar100c": ("alexnet_cifar_c_err.csv", "cifar100c"),
}
#: AlexNet's clean top-1 error (fraction). ImageNet: the widely used value, unverified.
ALEXNET_CLEAN_ERROR = {"imagenetc": 0.4345}
SEVERITIES = (1, 2, 3, 4, 5)


def normalized_dataset(dataset: str) -> str:
    """``ImageNet-C``, ``imagenet_c`` and ``imagenetc`` all become ``imagenetc``."""
    return str(dataset).lower().replace("-", "").replace("_", "")


def _baseline_file(name: str) -> pd.DataFrame:
    with resources.files("robustbench_bn.report.baselines").joinpath(name).open() as handle:
        return pd.read_csv(handle, comment="#").set_index("corruption")


def alexnet_errors(dataset: str) -> pd.Series | None:
    """AlexNet's mean error (fraction) per corruption for ``dataset``, or None if none is
    declared for it."""
    declared = BASELINES.get(normalized_dataset(dataset))
    if declared is None:
        return None
    file_name, column = declared
    return _baseline_file(file_name)[column]


def alexnet_clean_error(dataset: str) -> float | None:
    return ALEXNET_CLEAN_ERROR.get(normalized_dataset(dataset))


def _mce_of_setup(setup: pd.DataFrame, baseline: pd.Series, clean_error: float | None) -> tuple:
    """(mCE, relative mCE, reason it is missing or None) for one setup's rows."""
    corrupted = setup[setup["corruption"].isin(BENCHMARK_CORRUPTIONS)]
    missing = [c for c in BENCHMARK_CORRUPTIONS if c not in set(corrupted["corruption"])]
    if missing:
        return None, None, f"mCE needs all 15 benchmark corruptions; missing {missing}"
    severities = corrupted.groupby("corruption")["severity"].apply(set)
    incomplete = [c for c, found in severities.items() if not set(SEVERITIES) <= found]
    if incomplete:
        return None, None, f"mCE needs severities 1-5 of every corruption; not of {incomplete}"
    corrupted = corrupted[corrupted["severity"].isin(SEVERITIES)]
    # The mean over the five severities: sum_s E / sum_s E_AlexNet with five terms on both sides.
    errors = corrupted.groupby("corruption")["error"].mean() / 100
    alexnet = baseline.reindex(errors.index)
    mce = 100 * float((errors / alexnet).mean())
    clean = setup.loc[setup["corruption"] == CLEAN, "error"]
    if clean_error is None or clean.empty:
        return mce, None, None
    relative = (errors - float(clean.iloc[0]) / 100) / (alexnet - clean_error)
    return mce, 100 * float(relative.mean()), None


def mce_table(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """mCE and relative mCE (in %) per dataset, model and setup label; plus notes on what
    could not be computed and why."""
    notes: list[str] = []
    results = []
    for (dataset, model, label), setup in rows.groupby(["dataset", "model", "label"], sort=False):
        baseline = alexnet_errors(str(dataset))
        if baseline is None:
            note = (
                f"{dataset}: no AlexNet baseline is declared for this dataset, so no mCE; "
                "the tables give mean error."
            )
            if note not in notes:
                notes.append(note)
            continue
        clean_error = alexnet_clean_error(str(dataset))
        if clean_error is None:
            note = (
                f"{dataset}: AlexNet's clean error is not available for this dataset, so no "
                "relative mCE (mCE only)."
            )
            if note not in notes:
                notes.append(note)
        mce, relative, reason = _mce_of_setup(setup, baseline, clean_error)
        if reason is not None:
            notes.append(f"{dataset} {label}: {reason}.")
        elif relative is None and clean_error is not None:
            notes.append(f"{dataset} {label}: no clean cell, so no relative mCE.")
        results.append(
            {
                "dataset": dataset,
                "model": model,
                "label": label,
                "mCE": float("nan") if mce is None else mce,
                "relative_mCE": float("nan") if relative is None else relative,
            }
        )
    return pd.DataFrame(
        results, columns=["dataset", "model", "label", "mCE", "relative_mCE"]
    ), notes


def summary_table(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per setup of one dataset and model: clean error, mean error over the corrupted cells,
    and mCE / relative mCE where a baseline is declared (columns left out where not)."""
    labels = ordered_labels(rows)
    table = pd.DataFrame(index=labels)
    clean = rows[rows["corruption"] == CLEAN].groupby("label")["error"].first()
    table["clean error"] = clean.reindex(labels)
    table["mean error"] = corrupted_rows(rows).groupby("label")["error"].mean().reindex(labels)
    mce, notes = mce_table(rows)
    if not mce.empty:
        indexed = mce.set_index("label")
        table["mCE"] = indexed["mCE"].reindex(labels)
        if indexed["relative_mCE"].notna().any():
            table["relative mCE"] = indexed["relative_mCE"].reindex(labels)
    return table, notes
