"""The result store: one SQLite file per output folder, one row per finished cell.

A *cell* is one measured quantity of the benchmark grid: a metric, an
estimator, a parameter (a percentage, a layer, or a reference step such as
``"floor"``), a seed, and the quantity measured (``"accuracy"``, or a
similarity name). Cells are written in transactions as soon as they finish,
in WAL mode, so a run killed at any moment keeps every committed cell and a
rerun skips them.

:class:`OutputFolder` guards the folder around the store: a run writes only
into a new or empty folder or one a run created (marked by a ``.quantus-roar``
file), holds an exclusive lock on it while it runs, and ``--fresh`` deletes
only the files runs write there.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import re
import socket
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quantus_roar._io import disk_error, remove_quietly, write_text
from quantus_roar.exceptions import StorageError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no folder lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["Cell", "ConfigMismatchError", "FolderInUseError", "OutputFolder",
           "OutputFolderError", "ResultStore", "Samples", "StorageError"]

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
CREATE TABLE IF NOT EXISTS samples (
    metric TEXT NOT NULL,
    estimator TEXT NOT NULL,
    param TEXT NOT NULL,
    seed INTEGER NOT NULL,
    n INTEGER NOT NULL,
    correct BLOB NOT NULL,
    PRIMARY KEY (metric, estimator, param, seed)
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


@dataclass(frozen=True, eq=False)
class Samples:
    """Per test sample, whether a cell's model classified it right (bool array (N,)): what
    the report bootstraps intervals over test samples from. Stored beside the cell's
    accuracy, in the same transaction."""

    metric: str
    estimator: str
    param: str
    seed: int
    correct: np.ndarray

    @property
    def key(self) -> Key:
        return (self.metric, self.estimator, self.param, self.seed)


class ConfigMismatchError(RuntimeError):
    """The output folder holds results of a run with another configuration."""


class OutputFolderError(ValueError):
    """The output folder cannot be used: not a folder, or a folder quantus-roar did not create."""


class FolderInUseError(OutputFolderError):
    """Another process runs into the same output folder."""


_RECOVER = "Run again with --fresh to delete it and start anew, or use another --out folder."


def _sqlite_error(err: sqlite3.Error, path: Path, action: str) -> StorageError:
    """A :class:`StorageError` naming ``path``, what went wrong and the way out."""
    name = getattr(err, "sqlite_errorname", None) or ""
    text = str(err)
    if (name == "SQLITE_NOTADB" or name.startswith("SQLITE_CORRUPT")
            or "not a database" in text or "malformed" in text):
        return StorageError(errno.EIO, f"The result store '{path}' is damaged or not a SQLite "
                            f"file ({text}); its results cannot be read. {_RECOVER}")
    if (name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH"))
            or "readonly" in text or "unable to open" in text):
        return StorageError(errno.EACCES, f"Cannot {action} the result store '{path}': the file "
                            f"or its folder is not writable ({text}). Make the folder writable, "
                            "or use another --out folder.")
    if name == "SQLITE_FULL" or "is full" in text:
        return StorageError(errno.ENOSPC, f"Cannot {action} the result store '{path}': the disk "
                            f"is full ({text}). Free some space and run the same command again "
                            "to resume, or use another --out folder.")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return StorageError(errno.EBUSY, f"Cannot {action} the result store '{path}': another "
                            f"process holds it ({text}). Wait for it, or use another --out "
                            "folder.")
    if name.startswith("SQLITE_IOERR") or "I/O error" in text:
        return StorageError(errno.EIO, f"Cannot {action} the result store '{path}': disk I/O "
                            f"error ({text}). Check the disk (full, removed, read-only) and run "
                            "the same command again, or use another --out folder.")
    return StorageError(errno.EIO, f"Cannot {action} the result store '{path}': {text}. "
                        f"{_RECOVER}")


def _is_storage_failure(err: BaseException) -> bool:
    """SQLite errors of the file or the disk, not of the statements (constraints, misuse)."""
    return isinstance(err, sqlite3.OperationalError) or type(err) is sqlite3.DatabaseError


class ResultStore:
    """SQLite store of finished cells in ``folder/results.sqlite``.

    Parameters
    ----------
    folder : path
        Output folder; created if missing.

    Raises
    ------
    StorageError
        When the store cannot be opened, read or written: a damaged file or one
        that is not a result store, a read-only folder, a full disk. The message
        names the file and the way out (``--fresh``, another ``--out``).

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
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise disk_error(err, self.folder, "create the folder") from err
        self.path = self.folder / self.filename
        if self.path.is_symlink():
            raise StorageError(errno.ELOOP, f"The result store '{self.path}' is a symbolic "
                               "link; quantus-roar keeps its store only as a file of the output "
                               "folder. Remove the link, or use another --out folder.")
        if self.path.exists() and not self.path.is_file():
            raise StorageError(errno.EISDIR, f"The result store '{self.path}' is not a file. "
                               "Use another --out folder.")
        with self._guard("open"):
            self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            with self._guard("open"):
                # The tables first: a file of another program is left as it was (not even
                # switched to WAL).
                tables = {row[0] for row in self._conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
                if tables and not {"meta", "cells"} <= tables:
                    raise StorageError(errno.EINVAL, f"'{self.path}' is a SQLite file but not a "
                                       f"quantus-roar result store (its tables: "
                                       f"{sorted(tables)}). Use another --out folder.")
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.executescript(_SCHEMA)
        except BaseException:
            self._conn.close()
            raise

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """SQLite and pandas errors of the file or the disk as a :class:`StorageError`."""
        try:
            yield
        except sqlite3.Error as err:
            if not _is_storage_failure(err):
                raise
            raise _sqlite_error(err, self.path, action) from err
        except pd.errors.DatabaseError as err:  # pandas wraps the sqlite error
            cause = err.__cause__ or err.__context__
            if isinstance(cause, sqlite3.Error) and _is_storage_failure(cause):
                raise _sqlite_error(cause, self.path, action) from err
            raise

    # ------------------------------------------------------------------ meta

    def get_meta(self, key: str) -> Any:
        """The stored value of ``key`` (``None`` if absent).

        Raises
        ------
        StorageError
            If the stored value is not JSON (a damaged or edited store); the
            message names the file and the key.
        """
        with self._guard("read"):
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except (TypeError, ValueError) as err:  # JSONDecodeError is a ValueError
            shown = repr(row[0]) if len(repr(row[0])) <= 60 else repr(row[0])[:57] + "..."
            raise StorageError(errno.EINVAL, f"The result store '{self.path}' holds a value "
                               f"of '{key}' in its meta table that is not JSON ({shown}: "
                               f"{err}); it was damaged or edited. {_RECOVER}") from None

    def set_meta(self, key: str, value: Any) -> None:
        with self._guard("write"), self._transaction():
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
        with self._guard("write"), self._transaction():
            row = self._conn.execute(
                "SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
            if row is None:
                self._conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)",
                                   ("fingerprint", json.dumps(fingerprint)))
                self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                   ("run", json.dumps(description, sort_keys=True)))
                return
        stored = self.get_meta("fingerprint")
        if stored == fingerprint:
            return
        old = self.get_meta("run")
        old = old if isinstance(old, dict) else {}
        differ = sorted(k for k in set(old) | set(description) if old.get(k) != description.get(k))
        details = "; ".join(f"{k}: {old.get(k)!r} -> {description.get(k)!r}" for k in differ[:8])
        raise ConfigMismatchError(
            f"The output folder {self.folder} holds results of another run "
            f"(fingerprint {str(stored)[:12]}, this run {fingerprint[:12]}). Differences: "
            f"{details or 'none recorded'}. Use another --out folder, or --fresh to delete "
            "the stored results and start anew."
        )

    # ------------------------------------------------------------------ cells

    def add(self, cells: Iterable[Cell | Samples], fingerprint: str) -> int:
        """Write ``cells`` (and the :class:`Samples` among them) in one transaction;
        returns how many cells were new.

        A cell already stored (same metric, estimator, param, seed and
        quantity) is left as it is, so adding twice never duplicates a row.
        """
        now = time.time()
        items = list(cells)
        rows = [(c.metric, c.estimator, c.param, int(c.seed), c.quantity,
                 None if c.value is None else float(c.value), float(c.wall_s), fingerprint, now)
                for c in items if isinstance(c, Cell)]
        packed = [(s.metric, s.estimator, s.param, int(s.seed), len(s.correct),
                   np.packbits(np.asarray(s.correct, dtype=bool)).tobytes())
                  for s in items if isinstance(s, Samples)]
        with self._guard("write"), self._transaction():
            before = self._conn.total_changes
            self._conn.executemany(
                "INSERT OR IGNORE INTO cells (metric, estimator, param, seed, quantity, value, "
                "wall_s, fingerprint, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            new = self._conn.total_changes - before
            self._conn.executemany(
                "INSERT OR IGNORE INTO samples (metric, estimator, param, seed, n, correct) "
                "VALUES (?, ?, ?, ?, ?, ?)", packed)
            return new

    def samples(self) -> dict[Key, np.ndarray]:
        """Every stored :class:`Samples` array by key (empty for a store written before
        they were kept)."""
        with self._guard("read"):
            tables = {r[0] for r in self._conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "samples" not in tables:
                return {}
            rows = self._conn.execute(
                "SELECT metric, estimator, param, seed, n, correct FROM samples").fetchall()
        out = {}
        for metric, estimator, param, seed, n, blob in rows:
            bits = np.unpackbits(np.frombuffer(blob, dtype=np.uint8))
            if not isinstance(n, int) or n < 0 or len(bits) < n:
                raise StorageError(errno.EINVAL, f"The result store '{self.path}' holds "
                                   f"damaged per-sample results ({metric} {estimator} {param} "
                                   f"seed {seed}). Delete the folder or use --fresh.")
            out[(metric, estimator, param, int(seed))] = bits[:n].astype(bool)
        return out

    def done(self) -> set[Key]:
        """Keys (metric, estimator, param, seed) with at least one stored quantity."""
        with self._guard("read"):
            return set(self._conn.execute(
                "SELECT DISTINCT metric, estimator, param, seed FROM cells").fetchall())

    def count(self) -> int:
        with self._guard("read"):
            return self._conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0]

    def frame(self) -> pd.DataFrame:
        """Every stored cell as a DataFrame, in a stable order."""
        with self._guard("read"):
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
        if exc_type is None:
            self.conn.execute("COMMIT")
            return
        # SQLite may have rolled back already (a full disk does); the error in flight counts.
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")


# --------------------------------------------------------------------------- the folder


#: The marker of a folder a run created or adopted; ``--fresh`` clears only marked folders.
MARKER = ".quantus-roar"
#: The lock file: ``flock`` held by the running process, with its pid, host and start time.
LOCK = ".lock"

_STORE_FILES = ("results.sqlite", "results.sqlite-wal", "results.sqlite-shm",
                "results.sqlite-journal")
_TOP_FILES = (*_STORE_FILES, "config.toml", "report.md", "results.csv")
_FIGURES = ("curves.png", "examples.png", "model_randomisation.png")


def _written(*names: str) -> re.Pattern[str]:
    """Names of files a run writes, with the temporary files of their atomic writes."""
    alt = "|".join(re.escape(n) for n in names)
    return re.compile(rf"(?:{alt})|\.(?:{alt})\.[^/]+\.partial")


#: Every file a run writes, by folder (relative to the output folder). ``--fresh`` deletes
#: these and nothing else; a folder left empty is removed.
_MANIFEST: dict[str, re.Pattern[str]] = {
    "": _written(*_TOP_FILES),
    "cache/data": re.compile(r"x_(?:train|test)\.npy(?:\.partial)?"),
    "cache": _written("model.npz", "examples.npz"),
    "attributions": re.compile(r"[A-Za-z0-9._-]+\.(?:train|test)(?:\.partial)?\.npy"),
    "figures": _written(*_FIGURES),
}
#: Folders the runner creates for staging streamed data (removed after the run moves them).
STAGING_PREFIX = ".data.partial-"
#: The folder of a run's repeats over the explained model (``model_seeds``), one run each.
REPEATS = "model-seeds"


def _foreign_store(path: Path) -> str | None:
    """Why ``path`` is not a quantus-roar result store, or ``None`` if it is one.

    A result store is a SQLite file with the tables ``meta`` and ``cells`` and a
    ``fingerprint`` row in ``meta``. The file is only read: opened read-only, and
    as immutable when it has no write-ahead log (so no ``-wal`` or ``-shm`` file
    is created beside another program's database).
    """
    if path.is_symlink() or not path.is_file():
        return "it is not a plain file"
    try:
        with open(path, "rb") as f:
            header = f.read(16)
    except OSError as err:
        return f"it cannot be read: {err.strerror or err}"
    if header != b"SQLite format 3\x00":
        return "it is not a SQLite file"
    wal = path.with_name(path.name + "-wal")
    mode = "mode=ro" if os.path.lexists(wal) else "mode=ro&immutable=1"
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?{mode}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
    except sqlite3.Error as err:
        return f"it cannot be opened: {err}"
    try:
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"meta", "cells"} <= tables:
            return f"its tables are {sorted(tables)}"
        if conn.execute("SELECT 1 FROM meta WHERE key = 'fingerprint'").fetchone() is None:
            return "it has no run fingerprint"
    except sqlite3.Error as err:
        return f"it cannot be read: {err}"
    finally:
        conn.close()
    return None


class OutputFolder:
    """The output folder of a run: who may write into it, its lock, ``--fresh``.

    A run writes only into a folder that is missing, empty, or marked as a run's
    (a ``.quantus-roar`` file, or a ``results.sqlite`` that is a quantus-roar result
    store, from a run made before the marker existed); anything else is refused,
    so a mistyped ``--out`` never mixes results into, or deletes from, a folder of
    other files.

    Parameters
    ----------
    folder : path
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._fd: int | None = None

    # ------------------------------------------------------------------ checks

    def _names(self) -> list[str]:
        try:
            return sorted(os.listdir(self.folder))
        except OSError as err:
            raise disk_error(err, self.folder, "read the folder") from err

    def check(self) -> None:
        """Raise unless the folder is missing, empty, or a run's; never writes.

        Raises
        ------
        OutputFolderError
            For a file in place of the folder, or a folder of other files.
        """
        if not os.path.lexists(self.folder):
            return
        if not self.folder.is_dir():
            raise OutputFolderError(f"The output folder '{self.folder}' is a file, not a "
                                    "folder; choose another --out.")
        self._recognise(self._names())

    def _recognise(self, names: list[str]) -> bool:
        """``True`` for a run's folder, ``False`` for an empty one; raise for any other.

        A run's folder has the marker, or (a run made before the marker existed) a
        ``results.sqlite`` that is a quantus-roar result store, checked read-only.
        """
        if MARKER in names:
            return True
        if ResultStore.filename in names:
            path = self.folder / ResultStore.filename
            why = _foreign_store(path)
            if why is None:
                return True
            raise OutputFolderError(
                f"'{self.folder}' is not a quantus-roar output folder: its "
                f"{ResultStore.filename} is not a quantus-roar result store ({why}), and the "
                f"folder has no {MARKER} marker. Runs write only in a new or empty folder or "
                "one a run created; nothing was changed. Choose another --out.")
        others = [n for n in names if n != LOCK]
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5
                                             else "")
            raise OutputFolderError(
                f"'{self.folder}' is not a quantus-roar output folder; it holds {shown}. Runs "
                "write (and --fresh deletes) only in a new or empty folder or one a run "
                "created; choose another --out.")
        return False

    @property
    def has_store(self) -> bool:
        return (self.folder / ResultStore.filename).is_file()

    # ------------------------------------------------------------------ lock

    @contextlib.contextmanager
    def lock(self) -> Iterator[OutputFolder]:
        """Create the folder if needed, mark it, and hold its exclusive lock for the block.

        The lock is ``flock`` on ``.lock``: released when the block ends, on an
        exception, or by the system when the process dies (so a lock file left
        by a killed process never blocks).

        Raises
        ------
        FolderInUseError
            If another process holds the lock; the message names its pid.
        OutputFolderError, StorageError
            If the folder is not a run's, or cannot be created or written.
        """
        self.check()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise disk_error(err, self.folder, "create the folder") from err
        fd, created = self._acquire()
        try:
            try:
                self.check()  # again, now that no other run can change it
            except BaseException:  # refused: no lock file of ours stays behind
                if created:
                    remove_quietly(self.folder / LOCK)
                raise
            if not os.path.lexists(self.folder / MARKER):
                write_text(self.folder / MARKER, json.dumps({
                    "written_by": "quantus-roar",
                    "note": "An output folder of 'quantus-roar run'. --fresh deletes only the "
                            "files runs write here.",
                }, indent=1) + "\n")
            self._fd = fd
            yield self
        finally:
            self._fd = None
            if fcntl is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _acquire(self) -> tuple[int, bool]:
        """The locked file descriptor of ``.lock``, and whether this call created the file."""
        path = self.folder / LOCK
        flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        created = False
        for attempt in range(4):
            try:
                try:
                    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
                    created = True
                except FileExistsError:
                    fd = os.open(path, flags)
                break
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOENT) and attempt < 3:
                    if err.errno == errno.ELOOP:  # a link in place of the lock
                        remove_quietly(path)
                    continue  # ENOENT: removed between the two opens
                raise disk_error(err, path, "create the lock file") from err
        if fcntl is None:  # pragma: no cover
            return fd, created
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise disk_error(err, path, "lock") from err
            raise FolderInUseError(self._in_use(holder)) from None
        try:
            started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "started": started}) + "\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode(), 0)
        except OSError:  # the lock holds without its description
            pass
        return fd, created

    def _in_use(self, holder: str) -> str:
        try:
            info = json.loads(holder)
            who = f"process {info['pid']} on {info['host']} (started {info['started']})"
        except (ValueError, KeyError, TypeError):
            who = "another process"
        return (f"The output folder {self.folder} is in use by {who}; wait for it or use "
                "another --out.")

    # ------------------------------------------------------------------ --fresh

    def clear(self, keep: Iterable[str | Path] = ()) -> list[Path]:
        """Delete every file a run writes here (``--fresh``), nothing else; call under :meth:`lock`.

        Folders left empty are removed; a file the runs do not write stays, and
        so does its folder. Links in place of the run's folders are removed, never
        followed. Returns the paths deleted.

        Raises
        ------
        OutputFolderError
            If the folder is not marked as a run's (nor holds a quantus-roar result
            store); nothing is deleted.
        StorageError
            If a file cannot be deleted.
        """
        names = self._names() if self.folder.is_dir() else []
        if names:
            self._recognise(names)  # raises for a folder that is not a run's
        kept = {Path(k).name for k in keep}
        deleted: list[Path] = []

        def delete(path: Path) -> None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                return
            except OSError as err:
                raise disk_error(err, path, "delete") from err
            deleted.append(path)

        for sub, pattern in _MANIFEST.items():
            where = self.folder / sub if sub else self.folder
            if sub and where.is_symlink():  # a link planted in place of a run's folder
                delete(where)
                continue
            if not where.is_dir():
                continue
            try:
                entries = sorted(os.scandir(where), key=lambda e: e.name)
            except OSError as err:
                raise disk_error(err, where, "read the folder") from err
            for entry in entries:
                if entry.name in kept or not pattern.fullmatch(entry.name):
                    continue
                if entry.is_symlink() or entry.is_file(follow_symlinks=False):
                    delete(Path(entry.path))
            if sub:
                with contextlib.suppress(OSError):  # not empty: files that are not the run's
                    os.rmdir(where)
        for name in names:  # staging folders of streamed data left by a killed run
            if name.startswith(STAGING_PREFIX) and name not in kept:
                staging = self.folder / name
                if staging.is_dir() and not staging.is_symlink():
                    for entry in os.scandir(staging):
                        if _MANIFEST["cache/data"].fullmatch(entry.name):
                            delete(Path(entry.path))
                    with contextlib.suppress(OSError):
                        os.rmdir(staging)
        return deleted
