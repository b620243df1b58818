"""Figures, each as PNG and PDF: the metric against severity (mean over corruptions), a
corruption x setup heatmap of the accuracy gain over the unadapted source model, and one
severity curve per corruption. Every figure gives a setup the same colour and legend order."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from robustbench_bn.report.aggregate import corrupted_rows, ordered_labels  # noqa: E402


def _save(figure: Figure, folder: Path, stem: str) -> list[Path]:
    paths = [folder / f"{stem}.png", folder / f"{stem}.pdf"]
    for path in paths:
        figure.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(figure)
    return paths


def _colours(labels: list[str]) -> dict[str, object]:
    palette = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {label: palette(index % palette.N) for index, label in enumerate(labels)}


def _wrapped(label: str) -> str:
    # Labels with parameters and protocol suffixes get long; keep ticks and legends narrow.
    return textwrap.fill(label, width=32, break_long_words=False)


def _style(label: str) -> str:
    # Unadapted setups dashed, so "before" and "after" read apart at a glance.
    return "--" if label.split("+")[-1].startswith("source") else "-"


def severity_curves(rows: pd.DataFrame, metric: str, folder: Path, title: str) -> list[Path]:
    """``metric`` against severity, mean over the corruptions, one line per setup."""
    labels = ordered_labels(rows)
    colours = _colours(labels)
    means = corrupted_rows(rows).groupby(["label", "severity"])[metric].mean().unstack("label")
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for label in labels:
        if label in means:
            axis.plot(
                means.index,
                means[label],
                marker="o",
                linestyle=_style(label),
                color=colours[label],
                label=_wrapped(label),
            )
    axis.set_xlabel("severity")
    axis.set_ylabel(f"{metric} (%), mean over corruptions")
    axis.set_xticks(sorted(means.index))
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return _save(figure, folder, "severity_curves")


def source_label(rows: pd.DataFrame) -> str | None:
    """The label of the unadapted, not fine-tuned model, if exactly one setup is that."""
    plain = rows[(rows["method"] == "source") & rows["finetune"].isin(["none", ""])]
    labels = list(dict.fromkeys(plain["label"]))
    return labels[0] if len(labels) == 1 else None


def gain_heatmap(rows: pd.DataFrame, folder: Path, title: str) -> list[Path]:
    """Corruption x setup heatmap of the accuracy gain over the source model (points), with
    a mean row; empty when there is no single source setup to compare with."""
    baseline = source_label(rows)
    if baseline is None:
        return []
    corrupted = corrupted_rows(rows)
    table = corrupted.pivot_table(
        index="corruption", columns="label", values="accuracy", aggfunc="mean", sort=False
    )
    others = [label for label in ordered_labels(rows) if label != baseline and label in table]
    if not others:
        return []
    gain = table[others].sub(table[baseline], axis=0)
    gain.loc["mean"] = gain.mean(axis=0)
    limit = max(1.0, float(gain.abs().max().max()))
    figure, axis = plt.subplots(figsize=(2.2 + 1.1 * gain.shape[1], 0.35 * len(gain) + 1.6))
    # Grey: a cell the setup did not evaluate, told apart from a zero gain.
    colour_map = plt.get_cmap("RdBu").with_extremes(bad="lightgrey")
    image = axis.imshow(
        np.ma.masked_invalid(gain.to_numpy(dtype=float)),
        cmap=colour_map,
        vmin=-limit,
        vmax=limit,
        aspect="auto",
    )
    axis.set_xticks(
        range(gain.shape[1]),
        [_wrapped(label) for label in gain.columns],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    axis.set_yticks(range(len(gain)), gain.index, fontsize=8)
    axis.axhline(len(gain) - 1.5, color="black", linewidth=0.8)
    for row_index, row in enumerate(gain.values):
        for column_index, value in enumerate(row):
            if pd.isna(value):
                continue
            colour = "white" if abs(value) > 0.6 * limit else "black"
            axis.text(
                column_index,
                row_index,
                f"{value:+.1f}",
                ha="center",
                va="center",
                fontsize=7,
                color=colour,
            )
    figure.colorbar(image, ax=axis, label=f"accuracy gain over {baseline} (points)")
    axis.set_title(title)
    return _save(figure, folder, "gain_over_source")


def per_corruption_curves(rows: pd.DataFrame, metric: str, folder: Path, title: str) -> list[Path]:
    """One panel per corruption: ``metric`` against severity, one line per setup."""
    labels = ordered_labels(rows)
    colours = _colours(labels)
    corrupted = corrupted_rows(rows)
    corruptions = list(dict.fromkeys(corrupted["corruption"]))
    severities = sorted(corrupted["severity"].unique())
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
        for label in labels:
            group = subset[subset["label"] == label].sort_values("severity")
            if len(group):
                axis.plot(
                    group["severity"],
                    group[metric],
                    marker=".",
                    linestyle=_style(label),
                    color=colours[label],
                    label=_wrapped(label),
                )
        axis.set_title(corruption, fontsize=9)
        axis.set_xticks(severities)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(corruptions) :]:
        axis.set_visible(False)
    handles, names = axes.flat[0].get_legend_handles_labels()
    for axis in list(axes.flat)[1 : len(corruptions)]:
        # A setup missing from the first panel still needs its legend entry.
        for handle, name in zip(*axis.get_legend_handles_labels(), strict=True):
            if name not in names:
                handles.append(handle)
                names.append(name)
    figure.suptitle(title)
    figure.supxlabel("severity")
    figure.supylabel(f"{metric} (%)")
    figure.tight_layout()
    figure.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _save(figure, folder, "per_corruption_curves")


def sweep_curve(
    table: pd.DataFrame, axis_title: str, metric: str, folder: Path, stem: str, title: str
) -> list[Path]:
    """``metric`` against a swept setting (rows: its values, columns: lines), values at even
    steps in sorted order (see :mod:`robustbench_bn.report.sweeps`)."""
    labels = list(table.columns)
    colours = _colours(labels)
    positions = np.arange(len(table.index))
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for label in labels:
        values = table[label]
        present = values.notna().to_numpy()
        axis.plot(
            positions[present],
            values.to_numpy()[present],
            marker="o",
            linestyle=_style(label),
            color=colours[label],
            label=_wrapped(label),
        )
    axis.set_xticks(positions)
    axis.set_xticklabels(
        [
            v
            if isinstance(v, str)
            else ("inf" if np.isinf(v) else (str(int(v)) if float(v).is_integer() else f"{v:g}"))
            for v in table.index
        ]
    )
    axis.set_xlabel(axis_title)
    axis.set_ylabel(f"{metric} (%), mean over corrupted cells")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return _save(figure, folder, stem)
