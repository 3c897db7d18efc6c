"""The result store: one SQLite file per output folder, one row per finished cell.

A *cell* is one measured quantity of the benchmark grid: a metric, an
estimator, a parameter (a percentage, a layer, or a reference step such as
``"floor"``), a seed, and the quantity measured (``"accuracy"``, or a
similarity name). Cells are written in transactions as soon as they finish,
in WAL mode, so a run killed at any moment keeps every committed cell and a
rerun skips them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["Cell", "ConfigMismatchError", "ResultStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cells (
    metric TEXT NOT NULL,
    estimator TEXT NOT NULL,
    param TEXT NOT NULL,
    seed INTEGER NOT NULL,
    quantity TEXT NOT NULL,
    value REAL,
    wall_s REAL NOT NULL,
    fingerprint TEXT NOT NULL,
    finished_at REAL NOT NULL,
    PRIMARY KEY (metric, estimator, param, seed, quantity)
);
"""

Key = tuple[str, str, str, int]


@dataclass(frozen=True)
class Cell:
    """One finished measurement.

    ``param`` is text so that percentages (``"30"``), layers (``"3"``) and
    reference steps (``"floor"``) share one column; ``seed`` is the index of
    the repeat (0, 1, ...), not the training seed it maps to.
    """

    metric: str
    estimator: str
    param: str
    seed: int
    quantity: str
    value: float
    wall_s: float

    @property
    def key(self) -> Key:
        return (self.metric, self.estimator, self.param, self.seed)


class ConfigMismatchError(RuntimeError):
    """The output folder holds results of a run with another configuration."""


class ResultStore:
    """SQLite store of finished cells in ``folder/results.sqlite``.

    Parameters
    ----------
    folder : path
        Output folder; created if missing.

    Notes
    -----
    Every :meth:`add` is one transaction, committed before it returns. The
    database is opened in WAL mode with ``synchronous=NORMAL``: a killed
    process (even ``kill -9``) loses no committed transaction; a power cut may
    lose the last few.
    """

    filename = "results.sqlite"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / self.filename
        self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)

    # ------------------------------------------------------------------ meta

    def get_meta(self, key: str) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        with self._transaction():
            self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                               (key, json.dumps(value, sort_keys=True)))

    def claim(self, fingerprint: str, description: dict[str, Any]) -> None:
        """Bind the folder to a run fingerprint, or check that it already is.

        Raises
        ------
        ConfigMismatchError
            If the folder holds results of another fingerprint; the message
            lists what differs.
        """
        with self._transaction():
            row = self._conn.execute(
                "SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
            if row is None:
                self._conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)",
                                   ("fingerprint", json.dumps(fingerprint)))
                self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                   ("run", json.dumps(description, sort_keys=True)))
                return
        stored = json.loads(row[0])
        if stored == fingerprint:
            return
        old = self.get_meta("run") or {}
        differ = sorted(k for k in set(old) | set(description) if old.get(k) != description.get(k))
        details = "; ".join(f"{k}: {old.get(k)!r} -> {description.get(k)!r}" for k in differ[:8])
        raise ConfigMismatchError(
            f"The output folder {self.folder} holds results of another run "
            f"(fingerprint {stored[:12]}, this run {fingerprint[:12]}). Differences: "
            f"{details or 'none recorded'}. Use another --out folder, or --fresh to delete "
            "the stored results and start anew."
        )

    # ------------------------------------------------------------------ cells

    def add(self, cells: Iterable[Cell], fingerprint: str) -> int:
        """Write ``cells`` in one transaction; returns how many were new.

        A cell already stored (same metric, estimator, param, seed and
        quantity) is left as it is, so adding twice never duplicates a row.
        """
        now = time.time()
        rows = [(c.metric, c.estimator, c.param, int(c.seed), c.quantity,
                 None if c.value is None else float(c.value), float(c.wall_s), fingerprint, now)
                for c in cells]
        with self._transaction():
            before = self._conn.total_changes
            self._conn.executemany(
                "INSERT OR IGNORE INTO cells (metric, estimator, param, seed, quantity, value, "
                "wall_s, fingerprint, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            return self._conn.total_changes - before

    def done(self) -> set[Key]:
        """Keys (metric, estimator, param, seed) with at least one stored quantity."""
        return set(self._conn.execute(
            "SELECT DISTINCT metric, estimator, param, seed FROM cells").fetchall())

    def count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0]

    def frame(self) -> pd.DataFrame:
        """Every stored cell as a DataFrame, in a stable order."""
        return pd.read_sql_query(
            "SELECT metric, estimator, param, seed, quantity, value, wall_s, fingerprint, "
            "finished_at FROM cells ORDER BY metric, estimator, param, seed, quantity",
            self._conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)

    @staticmethod
    def open_existing(folder: str | Path) -> ResultStore:
        """Open the store of a finished or interrupted run; a clear error if there is none."""
        path = Path(folder) / ResultStore.filename
        if not path.is_file():
            raise FileNotFoundError(
                f"No results in {folder}: expected {path}, written by 'quantus-roar run "
                f"--out {folder}'.")
        return ResultStore(folder)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")

