"""Read the rows of many job and multirun folders into one frame, and pivot it into tables.

Aggregation never averages two measurements of the same cell. A cell is identified by the
setup (dataset, model, fine-tune, method and its parameters), the protocol fields every row
carries (n_examples, subset, corruption source, preprocessing, batch size, reset, precision,
seed, and whatever constant fields other datasets add) and the corruption x severity. The same
cell found twice is an error; ``keep="newest"`` keeps the most recently finished row instead.

Setups that differ only in a protocol field (two seeds, two batch sizes) are not duplicates:
they get distinct labels, e.g. ``bn [seed=1]``, so no table silently averages over them.
Averaging over seeds is a separate, explicit step (:mod:`robustbench_bn.report.seeds`): it
merges only setups whose every other column is equal, and says which columns it merged over.
The fine-tune's settings (AdvBN's split point, epochs, attack, ...) are in every row
(``finetune_params``); the model's settings (training epochs, ...) are not, and are read from
the job folder's job.json into ``model_params``, as are the fine-tune's for rows written
before that column existed. Both are treated the same way, e.g.
``advbn+bn [finetune.epochs=0.5]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.results import ROWS_FILE, STRING_COLUMNS, finetune_params

CLEAN = "clean"
SETUP_COLUMNS = ("dataset", "model", "finetune", "method", "method_params")
CELL_COLUMNS = ("corruption", "severity")
#: Protocol fields every row of this suite has; other datasets may add more (found by
#: :func:`protocol_columns`).
KNOWN_PROTOCOL_COLUMNS = (
    "n_examples",
    "subset",
    "corruption_source",
    "data_seed",
    "preprocessing",
    "batch_size",
    "order",
    "label_shift_alpha",
    "stream",
    "reset",
    "precision",
    "seed",
)
#: Protocol columns added after rows were first written, with the value every earlier row was
#: produced under (a gap in label_shift_alpha means the order reads no concentration).
LATER_PROTOCOL_DEFAULTS = {"order": "sequential", "stream": "cells"}
#: Columns that describe how or when a number was measured, or the number itself, never what
#: was measured: two rows that differ only here measure the same cell. channels_last is a
#: memory layout, the same computation.
MEASUREMENT_COLUMNS = frozenset(
    {
        "n",
        "correct",
        "accuracy",
        "error",
        "seconds",
        "images_per_second",
        "finished_at",
        "config_hash",
        "package_version",
        "git_revision",
        "torch_version",
        "device",
        "channels_last",
        "source_folder",
        "label",
    }
)
REQUIRED_COLUMNS = ("dataset", "model", "method", "corruption", "severity")
#: Settings columns filled from job.json when the rows lack them: column -> config section.
CONFIG_COLUMNS = {"model_params": "model", "finetune_params": "finetune"}
#: Keys of the model section that change no number (locations, display) or are recorded
#: already; the fine-tune's are results.FINETUNE_KEYS_NOT_RECORDED.
CONFIG_KEYS_IGNORED = frozenset(
    {"name", "_target_", "cache_dir", "data_dir", "download", "progress", "seed"}
)
#: Config keys that plan which cells a job evaluates, not how a cell is computed.
PLAN_KEYS = ("dataset.corruptions", "dataset.severities", "dataset.include_clean")


class DuplicateCellsError(ConfigurationError):
    """The same cell was measured in more than one folder."""


def find_rows_files(paths: Iterable[str | Path]) -> list[Path]:
    """Every rows.csv under ``paths`` (folders searched recursively), each file once."""
    paths = [Path(path) for path in paths]
    found: dict[Path, Path] = {}
    for path in paths:
        if path.is_file() and (path.name == ROWS_FILE or path.suffix.lower() == ".csv"):
            # Any CSV in the row schema: a job's rows.csv, a committed table, a frame that
            # evaluate() returned and the user saved.
            candidates = [path]
        elif path.is_dir():
            # A report written inside a sweep folder holds a copy of every row (beside its
            # report.md); reading it again would make every cell a duplicate.
            candidates = [
                candidate
                for candidate in sorted(path.rglob(ROWS_FILE))
                if not (candidate.parent / "report.md").is_file()
            ]
        else:
            raise ConfigurationError(
                f"{path} is neither a job folder, a multirun folder nor a CSV file of rows."
            )
        # A multirun folder and one of its job folders may both be named; read each file once.
        for candidate in candidates:
            found.setdefault(candidate.resolve(), candidate)
    if not found:
        raise ConfigurationError(
            f"No {ROWS_FILE} under {', '.join(map(str, paths))}; point rbn-report at the "
            "folders rbn-run wrote (outputs/runs/..., outputs/multirun/...)."
        )
    return list(found.values())


def read_rows_file(path: Path) -> pd.DataFrame:
    """One rows.csv, checked for the columns a report needs; accuracy and error both filled."""
    try:
        frame = pd.read_csv(path, dtype=STRING_COLUMNS)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"{path} cannot be read as CSV ({error}).") from error
    missing = [column for column in REQUIRED_COLUMNS if column not in frame]
    if "accuracy" not in frame and "error" not in frame:
        missing.append("accuracy (or error)")
    if missing:
        raise ConfigurationError(
            f"{path} lacks the columns {missing}; it was not written by rbn-run."
        )
    if "accuracy" not in frame:
        frame["accuracy"] = 100 - frame["error"]
    if "error" not in frame:
        frame["error"] = 100 - frame["accuracy"]
    numbers = frame[["severity", "accuracy", "error"]].apply(pd.to_numeric, errors="coerce")
    if numbers.isna().any().any():
        bad = frame.loc[numbers.isna().any(axis=1), ["corruption", "severity"]]
        raise ConfigurationError(
            f"{path} has rows without a numeric severity/accuracy: "
            f"{bad.values.tolist()[:5]}; repair or remove them."
        )
    frame[["severity", "accuracy", "error"]] = numbers
    frame["severity"] = frame["severity"].astype(int)
    frame["finetune"] = frame.get("finetune", pd.Series("none", index=frame.index)).fillna("none")
    frame["method_params"] = frame.get("method_params", pd.Series("{}", index=frame.index))
    for column, default in LATER_PROTOCOL_DEFAULTS.items():
        frame[column] = frame.get(column, pd.Series(default, index=frame.index)).fillna(default)
    frame["method_params"] = frame["method_params"].fillna("{}").map(normalized_params)
    # A job's rows are known by their folder (its job.json adds the model's settings); any
    # other CSV by its own path, so that two tables in one folder stay two sources.
    in_job_folder = path.name == ROWS_FILE
    frame["source_folder"] = str(path.parent if in_job_folder else path)
    config = _job_config(path.parent) if in_job_folder else {}
    for column, section in CONFIG_COLUMNS.items():
        if column in frame and frame[column].notna().all():
            continue
        # Rows from before the column existed (or left blank where the value is not known):
        # the job's saved config says it; a CSV without job.json reads as no settings.
        settings = config.get(section) or {}
        if column == "finetune_params":
            known = finetune_params(settings)
        else:
            known = json.dumps(
                {k: v for k, v in settings.items() if k not in CONFIG_KEYS_IGNORED},
                sort_keys=True,
            )
        frame[column] = frame.get(column, pd.Series(None, index=frame.index, dtype=object))
        frame[column] = frame[column].fillna(known)
    frame["finetune_params"] = frame["finetune_params"].map(normalized_params)
    if "finished_at" not in frame:
        # Rows without a finish time (older or hand-made) sort by the file's modification time.
        frame["finished_at"] = pd.Timestamp(path.stat().st_mtime, unit="s", tz="UTC").isoformat()
    return frame


def _job_config(folder: Path) -> dict[str, Any]:
    """The resolved config that rbn-run saved in the job folder, or {} without one."""
    try:
        record = json.loads((folder / "job.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    config = record.get("config") if isinstance(record, dict) else None
    return config if isinstance(config, dict) else {}


def parse_params(text: object) -> dict[str, Any]:
    try:
        value = json.loads(str(text))
    except json.JSONDecodeError:
        return {"params": str(text)}
    return value if isinstance(value, dict) else {"params": value}


def normalized_params(text: object) -> str:
    """Canonical JSON of a method_params cell, so key order and spacing never split a setup."""
    return json.dumps(parse_params(text), sort_keys=True)


def protocol_columns(rows: pd.DataFrame) -> list[str]:
    """The protocol fields present: the known ones, plus any extra column that is constant
    within every job folder (a per-job setting, not a per-cell measurement)."""
    columns = [c for c in (*KNOWN_PROTOCOL_COLUMNS, *CONFIG_COLUMNS) if c in rows]
    known = set(SETUP_COLUMNS) | set(CELL_COLUMNS) | MEASUREMENT_COLUMNS | set(columns)
    extras = [column for column in rows.columns if column not in known]
    if extras:
        per_job = rows.groupby("source_folder")[extras].nunique(dropna=False)
        columns += [column for column in extras if (per_job[column] <= 1).all()]
    return columns


def _format_value(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def canonical_value(value: object) -> str:
    """One spelling per protocol value: 2000 and 2000.0 alike, a gap as ""."""
    return "" if pd.isna(value) else _format_value(value)


def _differing_params(variants: list[dict[str, Any]]) -> list[str]:
    """Parameter names whose values differ between variants; those present everywhere first."""
    names = sorted({name for variant in variants for name in variant})
    differing = [
        name
        for name in names
        if len({json.dumps(variant.get(name), sort_keys=True) for variant in variants}) > 1
    ]
    return sorted(differing, key=lambda name: not all(name in v for v in variants))


def _base_labels(rows: pd.DataFrame) -> pd.Series:
    """``[finetune+]method[(params)]``: the parameters shown are only those that tell apart
    several parameter sets of one method within a dataset and model."""
    labels = pd.Series("", index=rows.index, dtype=object)
    for _, group in rows.groupby(["dataset", "model", "finetune", "method"], sort=False):
        first = group.iloc[0]
        prefix = "" if first["finetune"] in ("none", "") else f"{first['finetune']}+"
        variants = {text: parse_params(text) for text in group["method_params"].unique()}
        shown = _differing_params(list(variants.values())) if len(variants) > 1 else []
        names = {}
        for text, params in variants.items():
            names[text] = f"{prefix}{first['method']}"
            if shown:
                names[text] += (
                    "("
                    + ",".join(
                        f"{name}={_format_value(params[name])}" for name in shown if name in params
                    )
                    + ")"
                )
        if len(set(names.values())) < len(names):
            # Values that print alike (1 and "1"): fall back to the full parameters.
            names = {text: f"{prefix}{first['method']}({text})" for text in variants}
        for text, name in names.items():
            labels[group.index[group["method_params"] == text]] = name
    return labels


def _protocol_suffixes(rows: pd.DataFrame, protocol: list[str]) -> pd.Series:
    """`` [seed=1]``-style suffixes for protocol fields that vary within one label."""
    suffixes = pd.Series("", index=rows.index, dtype=object)
    if not protocol:
        return suffixes
    for _, group in rows.groupby(["dataset", "model", "label"], sort=False):
        varying = [c for c in protocol if group[c].astype(str).nunique(dropna=False) > 1]
        if not varying:
            continue
        shown = {
            column: _differing_params([parse_params(v) for v in group[column].unique()])
            for column in varying
            if column in CONFIG_COLUMNS
        }
        for index, row in group.iterrows():
            parts = []
            for column in varying:
                if column in CONFIG_COLUMNS:
                    # Only the settings that differ, e.g. finetune.epochs=0.5.
                    settings = parse_params(row[column])
                    section = CONFIG_COLUMNS[column]
                    parts += [
                        f"{section}.{key}={_format_value(settings.get(key))}"
                        for key in shown[column]
                    ]
                elif row[column] != "":  # a setting this setup does not read
                    parts.append(f"{column}={_format_value(row[column])}")
            suffixes[index] = " [" + ", ".join(parts) + "]"
    return suffixes


def setup_labels(rows: pd.DataFrame, protocol: list[str]) -> pd.Series:
    """Each row's setup label: ``[finetune+]method[(params)]`` plus `` [field=value]`` for the
    protocol fields (of ``protocol``) that tell apart setups of one method."""
    base = _base_labels(rows)
    return base + _protocol_suffixes(rows.assign(label=base), protocol)


def _config_differences(folders: list[str]) -> list[str]:
    """Settings that differ between the job.json configs of ``folders``, leaving out paths,
    display and the cell plan; these are settings that the rows themselves do not record."""
    configs: list[dict[str, Any]] = []
    for folder in folders:
        config = _job_config(Path(folder))
        if config:
            flat = pd.json_normalize(config, sep=".").to_dict("records")[0]
            configs.append(
                {
                    key: value
                    for key, value in flat.items()
                    if not key.startswith(("paths.", "hydra.", "display.")) and key not in PLAN_KEYS
                }
            )
    if len(configs) < 2:
        return []
    keys = sorted({key for config in configs for key in config})
    return [
        f"{key}: " + " vs ".join(repr(config.get(key)) for config in configs)
        for key in keys
        if len({repr(config.get(key)) for config in configs}) > 1
    ]


def _check_duplicates(rows: pd.DataFrame, key: list[str], keep: str) -> pd.DataFrame:
    key_frame = rows[key].astype(str)
    duplicated = key_frame.duplicated(keep=False)
    if not duplicated.any():
        return rows
    if keep == "newest":
        order = rows["finished_at"].astype(str).sort_values(kind="stable").index
        newest = ~key_frame.loc[order].duplicated(keep="last")
        return rows.loc[order[newest.to_numpy()]].sort_index()
    clashing = rows.loc[duplicated].copy()
    clashing["cell_key"] = key_frame[duplicated].agg("|".join, axis=1)
    folders = list(dict.fromkeys(clashing["source_folder"]))
    shown = list(dict.fromkeys(clashing["cell_key"]))[:4]
    sample = clashing[clashing["cell_key"].isin(shown)].sort_values(["cell_key", "source_folder"])
    message = (
        f"{clashing['cell_key'].nunique()} cells were measured in more than one folder "
        "(same setup and protocol; never averaged), e.g.:\n"
        + sample[["label", "corruption", "severity", "accuracy", "source_folder"]].to_string(
            index=False
        )
        + f"\nfolders involved: {', '.join(folders[:6])}"
        + (f" and {len(folders) - 6} more" if len(folders) > 6 else "")
        + "\n"
    )
    # Per set of folders that share cells: which settings their configs disagree on.
    groups = clashing.groupby("cell_key")["source_folder"].agg(lambda f: tuple(sorted(set(f))))
    for group in list(dict.fromkeys(groups))[:3]:
        differences = _config_differences(list(group))
        message += (
            f"{' and '.join(group)}: "
            + (
                "configs differ in " + "; ".join(differences[:8])
                if differences
                else "same settings (the same cells run twice)"
            )
            + "\n"
        )
    message += "Report the folders separately, remove the stale one, or pass --keep newest."
    raise DuplicateCellsError(message)


def load_rows(paths: Iterable[str | Path], *, keep: str = "error") -> pd.DataFrame:
    """Every row under ``paths`` with ``label`` and ``source_folder`` columns added.

    ``keep`` decides what happens to a cell measured in two folders: ``"error"`` raises
    :class:`DuplicateCellsError`, ``"newest"`` keeps the row with the latest ``finished_at``.
    """
    if keep not in ("error", "newest"):
        raise ConfigurationError(f"keep must be 'error' or 'newest', got {keep!r}.")
    frames = [read_rows_file(rows_file) for rows_file in find_rows_files(paths)]
    rows = pd.concat(frames, ignore_index=True)
    protocol = protocol_columns(rows)
    for column in protocol:
        # One spelling per value: 2000 read from one file and 2000.0 from another (a column
        # with gaps reads as float) must be the same setup, not two setups with one label.
        rows[column] = rows[column].map(
            lambda value: "" if pd.isna(value) else _format_value(value)
        )
    rows["label"] = _base_labels(rows)
    rows = _check_duplicates(rows, [*SETUP_COLUMNS, *protocol, *CELL_COLUMNS], keep).reset_index(
        drop=True
    )
    rows["label"] = rows["label"] + _protocol_suffixes(rows, protocol)
    clash = rows.duplicated(["dataset", "model", "label", *CELL_COLUMNS], keep=False)
    if clash.any():
        # Labels are built to be unique per cell; if two setups still print alike, refuse
        # rather than let a table average them.
        raise ConfigurationError(
            "Two setups got the same label; report them separately: "
            f"{sorted(set(rows.loc[clash, 'label']))[:5]}"
        )
    return rows


def ordered_labels(rows: pd.DataFrame) -> list[str]:
    """Setup labels: no fine-tune first, the unadapted ``source`` first within each fine-tune,
    then the methods in alphabetical order."""
    setups = rows.drop_duplicates("label")
    keys = {
        row["label"]: (
            row["finetune"] not in ("none", ""),
            str(row["finetune"]),
            row["method"] != "source",
            str(row["label"]),
        )
        for _, row in setups.iterrows()
    }
    return sorted(keys, key=keys.__getitem__)


def corrupted_rows(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["corruption"] != CLEAN]


def severity_table(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One setup's corruption x severity table with mean column/row and the clean value."""
    table = corrupted_rows(rows).pivot_table(
        index="corruption", columns="severity", values=metric, aggfunc="first", sort=False
    )
    table.columns = [str(column) for column in table.columns]
    table["mean"] = table.mean(axis=1)
    table.loc["mean"] = table.mean(axis=0)
    clean = rows.loc[rows["corruption"] == CLEAN, metric]
    if len(clean):
        table.loc[CLEAN] = float("nan")
        table.loc[CLEAN, "mean"] = float(clean.iloc[0])
    return table


def comparison_tables(rows: pd.DataFrame, metric: str) -> dict[str, pd.DataFrame]:
    """Setups side by side: per corruption (mean over severities), per severity (mean over
    corruptions), and overall (the ``mean`` row of both)."""
    corrupted = corrupted_rows(rows)
    labels = ordered_labels(rows)
    overall = corrupted.groupby("label")[metric].mean().reindex(labels)
    by_corruption = corrupted.pivot_table(
        index="corruption", columns="label", values=metric, aggfunc="mean", sort=False
    ).reindex(columns=labels)
    by_corruption.loc["mean"] = overall
    clean = rows[rows["corruption"] == CLEAN].groupby("label")[metric].first()
    if len(clean):
        by_corruption.loc[CLEAN] = clean.reindex(labels)
    by_severity = corrupted.pivot_table(
        index="severity", columns="label", values=metric, aggfunc="mean"
    ).reindex(columns=labels)
    by_severity.index = [str(index) for index in by_severity.index]
    by_severity.loc["mean"] = overall
    for table in (by_corruption, by_severity):
        table.columns.name = None
    return {"by_corruption": by_corruption, "by_severity": by_severity}


def coverage_note(rows: pd.DataFrame) -> str | None:
    """A warning when setups were evaluated on different cells, so means are not comparable."""
    cells = (
        corrupted_rows(rows)
        .groupby("label")[list(CELL_COLUMNS)]
        .apply(lambda group: frozenset(map(tuple, group.values.tolist())))
    )
    if cells.nunique() <= 1:
        return None
    counts = ", ".join(f"{label}: {len(cells[label])}" for label in ordered_labels(rows))
    return (
        "setups cover different corruption x severity cells, so their means are over "
        f"different cells ({counts}); compare per cell, or re-run on a common grid."
    )
