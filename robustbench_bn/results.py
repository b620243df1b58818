"""One job's result rows: one row per cell, written atomically as each cell finishes.

``rows.csv`` in the job folder is rewritten in full (temporary file + atomic rename) after
every cell, so a crash or Ctrl-C leaves the rows of every finished cell and never a half row.
Re-running the job in the same folder skips the cells already there. Rows written under a
different configuration (another ``config_hash``) are refused, never mixed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_bn.data.benchmark import CLEAN, Cell
from robustbench_bn.errors import ConfigurationError
from robustbench_bn.utils.files import atomic_write

ROWS_FILE = "rows.csv"
STRING_COLUMNS = {
    "config_hash": str,
    "corruption": str,
    "method_params": str,
    "finetune_params": str,
    "git_revision": str,
}
#: Keys of a fine-tune's config that change no number: its name (a column of its own), the
#: function that builds it, where it caches and whether it shows progress.
FINETUNE_KEYS_NOT_RECORDED = frozenset(
    {"name", "_target_", "cache_dir", "data_dir", "download", "progress"}
)
log = logging.getLogger(__name__)


def finetune_params(settings: Mapping[str, Any]) -> str:
    """A fine-tune's resolved config as the ``finetune_params`` value of a row: JSON with sorted
    keys, without the keys that change no number; ``"{}"`` for ``finetune=none``.

    The runner writes it into every row, and ``rbn-report`` derives the same value from a job
    folder's job.json for rows written before the column existed, so both spell one setup alike.
    """
    return json.dumps(
        {key: value for key, value in settings.items() if key not in FINETUNE_KEYS_NOT_RECORDED},
        sort_keys=True,
    )


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
            # Hashes such as "12e4..." must stay strings, never become floats.
            frame = pd.read_csv(self.path, dtype=STRING_COLUMNS)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise ConfigurationError(
                f"{self.path} cannot be read as CSV ({error}). Move it away and re-run to "
                "redo every cell, or repair it by hand."
            ) from error
        required = {"corruption", "severity", "config_hash", "correct", "n", "accuracy"}
        if not required <= set(frame.columns):
            raise ConfigurationError(
                f"{self.path} lacks the columns {sorted(required - set(frame.columns))}; "
                "it was not written by this suite. Use another output folder."
            )
        numeric = frame[["severity", "correct", "n", "accuracy"]].apply(
            pd.to_numeric, errors="coerce"
        )
        incomplete = numeric.isna().any(axis=1) | frame["config_hash"].isna()
        if incomplete.any():
            # This suite writes rows atomically, so a cut-off row comes from another writer
            # (a copy interrupted, a full disk). Keep every complete row, redo the rest.
            log.warning(
                "%s: dropping %d incomplete row(s) %s; those cells will be evaluated again.",
                self.path,
                int(incomplete.sum()),
                frame.loc[incomplete, ["corruption", "severity"]].values.tolist(),
            )
            frame = frame.loc[~incomplete].copy()
            frame["severity"] = frame["severity"].astype(int)
        frame["config_hash"] = frame["config_hash"].astype(str)
        foreign = set(frame["config_hash"]) - {self.config_hash}
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
                f"{frame.loc[duplicated, ['corruption', 'severity']].values.tolist()}; "
                "keep one row per cell (or delete the file to redo the job)."
            )
        rows = frame.to_dict("records")
        if incomplete.any():
            self._write(rows)
        return rows

    def done(self) -> set[Cell]:
        return {Cell(str(row["corruption"]), int(row["severity"])) for row in self.rows}

    def add(self, row: dict[str, Any]) -> None:
        self.add_all([row])

    def add_all(self, rows: list[dict[str, Any]]) -> None:
        """Append rows in one atomic write (a mixed stream's cells are saved together)."""
        done = self.done()
        for row in rows:
            cell = Cell(str(row["corruption"]), int(row["severity"]))
            if cell in done:
                raise RuntimeError(f"cell {cell} is already in {self.path}")
            done.add(cell)
        self.rows.extend(rows)
        self._write(self.rows)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        frame = pd.DataFrame(rows)
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
