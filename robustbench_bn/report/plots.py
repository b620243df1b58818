"""Figures (PNG and PDF): accuracy against severity, gain over source, per-corruption curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def _save(figure, folder: Path, stem: str) -> list[Path]:
    paths = [folder / f"{stem}.png", folder / f"{stem}.pdf"]
    for path in paths:
        figure.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(figure)
    return paths


def severity_curves(rows: pd.DataFrame, metric: str, folder: Path, title: str) -> list[Path]:
    corrupted = rows[rows["corruption"] != "clean"]
    means = corrupted.groupby(["label", "severity"])[metric].mean().unstack("label")
    figure, axis = plt.subplots(figsize=(6, 4))
    for label in means.columns:
        axis.plot(means.index, means[label], marker="o", label=label)
    axis.set_xlabel("severity")
    axis.set_ylabel(f"{metric} (%), mean over corruptions")
    axis.set_xticks(sorted(means.index))
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _save(figure, folder, "severity_curves")


def gain_heatmap(rows: pd.DataFrame, metric: str, folder: Path, title: str) -> list[Path]:
    """Corruption x method heatmap of the gain over the source model (accuracy points)."""
    corrupted = rows[rows["corruption"] != "clean"]
    table = corrupted.pivot_table(
        index="corruption", columns="label", values="accuracy", aggfunc="mean", sort=False
    )
    if "source" not in table.columns:
        return []
    gain = table.drop(columns="source").sub(table["source"], axis=0)
    if gain.empty:
        return []
    limit = max(1.0, float(gain.abs().max().max()))
    figure, axis = plt.subplots(figsize=(1.6 + 1.1 * gain.shape[1], 0.35 * len(gain) + 1.5))
    image = axis.imshow(gain.values, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    axis.set_xticks(range(gain.shape[1]), gain.columns, rotation=30, ha="right", fontsize=8)
    axis.set_yticks(range(len(gain)), gain.index, fontsize=8)
    for (row, column), value in pd.DataFrame(gain.values).stack().items():
        colour = "white" if abs(value) > 0.6 * limit else "black"
        axis.text(column, row, f"{value:+.1f}", ha="center", va="center", fontsize=7, color=colour)
    figure.colorbar(image, ax=axis, label="accuracy gain over source (points)")
    axis.set_title(title)
    return _save(figure, folder, "gain_over_source")


def per_corruption_curves(rows: pd.DataFrame, metric: str, folder: Path, title: str) -> list[Path]:
    corrupted = rows[rows["corruption"] != "clean"]
    corruptions = list(dict.fromkeys(corrupted["corruption"]))
    columns = min(5, len(corruptions))
    grid_rows = -(-len(corruptions) // columns)
    figure, axes = plt.subplots(
        grid_rows,
        columns,
        figsize=(3 * columns, 2.4 * grid_rows),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    for axis, corruption in zip(axes.flat, corruptions, strict=False):
        subset = corrupted[corrupted["corruption"] == corruption]
        for label, group in subset.groupby("label", sort=False):
            group = group.sort_values("severity")
            axis.plot(group["severity"], group[metric], marker=".", label=label)
        axis.set_title(corruption, fontsize=9)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(corruptions) :]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    figure.suptitle(title)
    figure.supxlabel("severity")
    figure.supylabel(f"{metric} (%)")
    return _save(figure, folder, "per_corruption_curves")
