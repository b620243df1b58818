"""One job's result rows: one row per cell, written atomically as each cell finishes.

``rows.csv`` in the job folder is rewritten in full (temporary file + atomic rename) after
every cell, so a crash or Ctrl-C leaves the rows of every finished cell and never a half row.
Re-running the job in the same folder skips the cells already there. Rows written under a
different configuration (another ``config_hash``) are refused, never mixed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_bn.data.benchmark import CLEAN, Cell
from robustbench_bn.errors import ConfigurationError
from robustbench_bn.utils.files import atomic_write

ROWS_FILE = "rows.csv"


class JobRows:
    """The rows of one job folder."""

    def __init__(self, folder: str | Path, *, config_hash: str) -> None:
        self.path = Path(folder) / ROWS_FILE
        self.config_hash = config_hash
        self.rows: list[dict[str, Any]] = []
        # A write cut short by kill -9 leaves only its temporary file; rows.csv is intact.
        for leftover in self.path.parent.glob(f".{ROWS_FILE}.*.tmp"):
            leftover.unlink(missing_ok=True)
        if self.path.is_file():
            self.rows = self._read_existing()

    def _read_existing(self) -> list[dict[str, Any]]:
        try:
            frame = pd.read_csv(self.path, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise ConfigurationError(
                f"{self.path} is damaged ({error}). It was written atomically, so this is not "
                "an interrupted run: move it away and re-run to redo every cell."
            ) from error
        required = {"corruption", "severity", "config_hash", "correct", "n"}
        if not required <= set(frame.columns):
            raise ConfigurationError(
                f"{self.path} lacks the columns {sorted(required - set(frame.columns))}; "
                "it was not written by this suite. Use another output folder."
            )
        foreign = set(frame["config_hash"].astype(str)) - {self.config_hash}
        if foreign:
            raise ConfigurationError(
                f"{self.path} holds rows from a different configuration (config_hash "
                f"{sorted(foreign)} != {self.config_hash}). Resuming would mix numbers from two "
                "setups: run in a new folder (hydra.run.dir=...) or delete that folder."
            )
        duplicated = frame.duplicated(["corruption", "severity"])
        if duplicated.any():
            raise ConfigurationError(
                f"{self.path} has duplicated cells: "
                f"{frame.loc[duplicated, ['corruption', 'severity']].values.tolist()}."
            )
        return frame.to_dict("records")

    def done(self) -> set[Cell]:
        return {Cell(str(row["corruption"]), int(row["severity"])) for row in self.rows}

    def add(self, row: dict[str, Any]) -> None:
        cell = Cell(str(row["corruption"]), int(row["severity"]))
        if cell in self.done():
            raise RuntimeError(f"cell {cell} is already in {self.path}")
        self.rows.append(row)
        frame = pd.DataFrame(self.rows)
        atomic_write(self.path, lambda temporary: frame.to_csv(temporary, index=False))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def accuracy_table(rows: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """Corruption x severity table of ``value`` with a ``mean`` column and row, plus clean.

    The ``mean`` row and column average the corruption cells only; the clean accuracy is its
    own row, as in the papers.
    """
    corrupted = rows[rows["corruption"] != CLEAN]
    table = corrupted.pivot_table(
        index="corruption", columns="severity", values=value, aggfunc="first", sort=False
    )
    table.columns = [str(column) for column in table.columns]
    table["mean"] = table.mean(axis=1)
    table.loc["mean"] = table.mean(axis=0)
    clean = rows[rows["corruption"] == CLEAN]
    if len(clean):
        table.loc[CLEAN] = float("nan")
        table.loc[CLEAN, "mean"] = float(clean[value].iloc[0])
    return table
