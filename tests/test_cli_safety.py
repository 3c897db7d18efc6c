"""The runner's folder, store, config and CLI under bad input and faults.

Every run here is tiny (one estimator, the no-retrain deletion curve, one epoch):
a few seconds each.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from quantus_roar.benchmark import ResultStore, RunConfig, run
from quantus_roar.benchmark.config import SettingTypeError
from quantus_roar.benchmark.store import (
    LOCK,
    MARKER,
    Cell,
    FolderInUseError,
    OutputFolder,
    OutputFolderError,
)
from quantus_roar.cli import main
from quantus_roar.exceptions import StorageError

TINY = ["--estimators", "Random", "--metrics", "roar-noretrain", "--percentages", "50",
        "--retrains", "1", "--epochs", "1", "--device", "cpu", "--no-progress"]
TINY_CONFIG = dict(estimators=("Random",), metrics=("roar-noretrain",), percentages=(50,),
                   retrains=1, epochs=1, device="cpu")


def _run(out: Path, *extra: str) -> int:
    return main(["run", "--out", str(out), *TINY, *extra])


def _one_line_error(err: str, *needles: str) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("quantus-roar: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)


def _cells(out: Path) -> int:
    with ResultStore.open_existing(out) as store:
        return store.count()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny run (copied by the tests that change it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", "--out", str(out), *TINY]) == 0
    return out


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(LOCK))
    return dst


# --------------------------------------------------------------------------- 1. --fresh


def test_fresh_on_a_folder_of_other_files_deletes_nothing(tmp_path, capsys):
    folder = tmp_path / "D"
    (folder / "cache").mkdir(parents=True)
    (folder / "cache" / "important.txt").write_text("x")
    (folder / "report.md").write_text("my notes")
    code = main(["run", "--fresh", "--dataset", "imagefolder:/nonexistent", "--out",
                 str(folder)])
    assert code == 2
    _one_line_error(capsys.readouterr().err, f"'{folder}' is not a quantus-roar output folder",
                    "cache", "choose another --out")
    assert (folder / "cache" / "important.txt").read_text() == "x"
    assert (folder / "report.md").read_text() == "my notes"
    # valid settings: still refused, nothing trained, nothing written
    assert _run(folder, "--fresh") == 2
    _one_line_error(capsys.readouterr().err, "is not a quantus-roar output folder")
    assert sorted(p.name for p in folder.rglob("*")) == ["cache", "important.txt", "report.md"]


def _own_database(path: Path, tables: dict[str, list[str]]) -> None:
    """A SQLite file of another program: each table with one row."""
    with sqlite3.connect(path) as conn:
        for table, columns in tables.items():
            conn.execute(f"CREATE TABLE {table} ({', '.join(columns)})")
            conn.execute(f"INSERT INTO {table} VALUES ({', '.join('?' for _ in columns)})",
                         [f"{table}-{c}" for c in columns])
    conn.close()


def _rows(path: Path, table: str) -> list[tuple]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute(f"SELECT * FROM {table}").fetchall()
    conn.close()
    return rows


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("store", ["another program's", "damaged", "meta and cells, no run"])
def test_fresh_on_a_folder_with_its_own_results_sqlite_deletes_nothing(tmp_path, capsys, store):
    folder = tmp_path / "F"
    folder.mkdir()
    db = folder / "results.sqlite"
    if store == "damaged":
        db.write_bytes(b"SQLite format 3\x00" + os.urandom(2000))
    elif store == "another program's":
        _own_database(db, {"experiments": ["name", "score"]})
    else:
        _own_database(db, {"meta": ["key", "value"], "cells": ["metric"]})
    (folder / "notes.txt").write_text("my notes")
    (folder / "report.md").write_text("my report")
    before = _listing(folder)
    assert _run(folder, "--fresh") == 2
    err = capsys.readouterr().err
    _one_line_error(err, f"'{folder}' is not a quantus-roar output folder",
                    "its results.sqlite is not a quantus-roar result store",
                    "Choose another --out")
    assert "--fresh" not in err  # --fresh could never be used here
    assert _listing(folder) == before  # nor any -wal, -shm, marker or lock file
    if store == "another program's":
        assert _rows(db, "experiments") == [("experiments-name", "experiments-score")]
    with pytest.raises(OutputFolderError, match="not a quantus-roar result store"):
        OutputFolder(folder).clear()
    with pytest.raises(OutputFolderError, match="not a quantus-roar result store"), \
            OutputFolder(folder).lock():
        pass
    assert _listing(folder) == before


def test_a_refused_folder_is_not_marked_so_a_later_fresh_deletes_nothing(tmp_path, capsys):
    folder = tmp_path / "F"
    folder.mkdir()
    _own_database(folder / "results.sqlite", {"meta": ["key", "value"],
                                              "cells": ["metric", "value"]})
    for name in ("report.md", "results.csv", "config.toml"):
        (folder / name).write_text(f"my {name}")
    before = _listing(folder)
    assert _run(folder) == 2
    _one_line_error(capsys.readouterr().err, "is not a quantus-roar output folder")
    assert not (folder / MARKER).exists() and not (folder / LOCK).exists()
    assert _listing(folder) == before
    assert _run(folder, "--fresh") == 2
    _one_line_error(capsys.readouterr().err, "is not a quantus-roar output folder")
    assert _listing(folder) == before
    assert _rows(folder / "results.sqlite", "meta") == [("meta-key", "meta-value")]


def test_a_folder_refused_once_locked_keeps_no_lock_or_marker(tmp_path, monkeypatch):
    folder = tmp_path / "F"
    folder.mkdir()
    real = OutputFolder._acquire

    def meanwhile(self):  # another program writes into the folder while the lock is taken
        fd = real(self)
        (self.folder / "theirs.txt").write_text("theirs")
        return fd

    monkeypatch.setattr(OutputFolder, "_acquire", meanwhile)
    with pytest.raises(OutputFolderError, match=r"theirs\.txt"), OutputFolder(folder).lock():
        pass
    assert sorted(p.name for p in folder.iterdir()) == ["theirs.txt"]


def test_a_run_made_before_the_marker_is_still_a_runs_folder(finished, tmp_path, capsys):
    out = _copy_run(finished, tmp_path / "run")
    (out / MARKER).unlink()
    n = _cells(out)
    (out / "attributions" / "mine-a-0123abcd.test.npy").write_bytes(b"stale")
    assert _run(out) == 0  # resumes: nothing to compute
    assert f"0 cells computed, {n // 2} already stored" in capsys.readouterr().out
    (out / MARKER).unlink()
    assert _run(out, "--fresh") == 0
    assert _cells(out) == n
    assert not (out / "attributions" / "mine-a-0123abcd.test.npy").exists()


def test_a_file_as_out_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert _run(target) == 2
    _one_line_error(capsys.readouterr().err, "is a file, not a folder")
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        run(RunConfig(**TINY_CONFIG), target, progress=False)
    assert target.read_text() == "x"


def test_fresh_on_a_finished_run_clears_only_its_files_and_recomputes(
        finished, tmp_path, capsys):
    out = _copy_run(finished, tmp_path / "run")
    n = _cells(out)
    (out / "cache" / "notes.txt").write_text("mine")
    (out / "figures" / "extra.png").write_bytes(b"mine")
    (out / "attributions" / "Random.test.partial.npy").write_bytes(b"stale")
    capsys.readouterr()
    assert _run(out, "--fresh") == 0
    printed = capsys.readouterr().out
    assert f"{n // 2} cells computed, 0 already stored" in printed
    assert re.search(r", report \d+\.\d s\. Report: ", printed)  # the report's own time
    assert _cells(out) == n
    assert (out / "cache" / "notes.txt").read_text() == "mine"
    assert (out / "figures" / "extra.png").read_bytes() == b"mine"
    assert not (out / "attributions" / "Random.test.partial.npy").exists()
    assert (out / MARKER).is_file()


def test_fresh_deletes_nothing_when_the_settings_are_bad(finished, tmp_path, capsys):
    out = _copy_run(finished, tmp_path / "run")
    n = _cells(out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    for bad in (["--model", "nosuchmodule:factory"], ["--dataset", "imagefolder:/nonexistent"],
                ["--device", "bogus"]):
        assert _run(out, "--fresh", *bad) == 2
        _one_line_error(capsys.readouterr().err)
        assert _cells(out) == n
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.name != LOCK) == [b for b in before if b != LOCK]


def test_clear_removes_only_listed_files_and_links_not_their_targets(tmp_path):
    out = tmp_path / "run"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.npz").write_bytes(b"keep")
    with OutputFolder(out).lock() as folder:
        (out / "results.sqlite").write_bytes(b"")
        (out / ".report.md.abc123.partial").write_bytes(b"")
        (out / "attributions").symlink_to(elsewhere)  # a link in place of a run's folder
        (out / "cache").mkdir()
        (out / "cache" / "model.npz").symlink_to(elsewhere / "model.npz")
        (out / "own.txt").write_text("mine")
        folder.clear()
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, LOCK, "own.txt"])
    assert (elsewhere / "model.npz").read_bytes() == b"keep"


# --------------------------------------------------------------------------- 2. links


def test_links_planted_in_the_output_folder_are_replaced_not_followed(
        finished, tmp_path, capsys):
    out = _copy_run(finished, tmp_path / "run")
    targets = {}
    for name in ("results.csv", "report.md", "figures/curves.png", "config.toml",
                 "cache/examples.npz"):
        target = tmp_path / "targets" / name.replace("/", "_")
        target.parent.mkdir(exist_ok=True)
        target.write_text(f"do not overwrite {name}")
        (out / name).unlink()
        (out / name).symlink_to(target)
        targets[name] = target
    assert main(["report", str(out)]) == 0
    assert _run(out) == 0  # resumes: nothing to compute, config.toml and the report again
    for name, target in targets.items():
        assert target.read_text() == f"do not overwrite {name}", name
        if name != "cache/examples.npz" or (out / name).exists():
            assert not (out / name).is_symlink(), name
    assert (out / "figures" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_attribution_partial_file_is_removed_on_failure_and_a_planted_one_ignored(
        tmp_path, monkeypatch):
    import quantus_roar.benchmark.specs as specs

    out = tmp_path / "run"
    victim = tmp_path / "victim.npy"
    victim.write_bytes(b"keep")
    with OutputFolder(out).lock():  # a run's folder
        pass
    (out / "attributions").mkdir()
    (out / "attributions" / "Random.test.partial.npy").symlink_to(victim)
    calls = []
    real = specs.explain

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure in the second chunk")
        return real(*args, **kwargs)

    monkeypatch.setattr(specs, "explain", failing)
    cfg = RunConfig(**TINY_CONFIG, explain_batch_size=16)  # the test split in chunks of 128
    with pytest.raises(RuntimeError, match="injected failure"):
        run(cfg, out, progress=False)
    assert len(calls) == 2
    assert victim.read_bytes() == b"keep"
    assert list((out / "attributions").iterdir()) == []


# --------------------------------------------------------------------------- 3. lock


_HOLD = textwrap.dedent("""
    import sys, time
    from quantus_roar.benchmark.store import OutputFolder
    with OutputFolder(sys.argv[1]).lock():
        print("locked", flush=True)
        time.sleep(120)
""")


def test_a_second_run_on_a_locked_folder_fails_at_once_and_a_killed_holder_does_not_block(
        tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        assert _run(out) == 2
        assert time.monotonic() - start < 30
        _one_line_error(capsys.readouterr().err,
                        f"The output folder {out} is in use by process {holder.pid}",
                        "started", "wait for it or use another --out")
        assert not (out / "results.sqlite").exists()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert (out / LOCK).exists()  # left behind by the killed process
        assert _run(out) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert _cells(out) > 0


def test_a_lock_file_without_a_holder_does_not_block_and_the_lock_is_released(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text('{"pid": 999999, "host": "gone", "started": "long ago"}\n')
    folder = OutputFolder(out)
    with folder.lock():
        with pytest.raises(FolderInUseError, match=f"in use by process {os.getpid()}"), \
                OutputFolder(out).lock():
            pass
    with pytest.raises(ZeroDivisionError), folder.lock():
        raise ZeroDivisionError
    with folder.lock():  # released after the exception
        pass


# --------------------------------------------------------------------------- 4. store


@pytest.mark.parametrize("damage", ["random bytes", "truncated"])
def test_a_damaged_store_is_a_clear_error_and_fresh_recovers(finished, tmp_path, capsys,
                                                             damage):
    out = _copy_run(finished, tmp_path / "run")
    db = out / "results.sqlite"
    for extra in ("results.sqlite-wal", "results.sqlite-shm"):
        (out / extra).unlink(missing_ok=True)
    data = db.read_bytes()
    db.write_bytes(os.urandom(4096) if damage == "random bytes" else data[:100])
    assert main(["report", str(out)]) == 2
    _one_line_error(capsys.readouterr().err, f"'{db}'", "damaged", "--fresh", "another --out")
    assert _run(out) == 2
    _one_line_error(capsys.readouterr().err, f"'{db}'", "--fresh")
    assert _run(out, "--fresh") == 0
    assert _cells(out) > 0


def test_a_sqlite_file_of_another_program_is_not_written(tmp_path):
    db = tmp_path / "results.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
    conn.close()
    with pytest.raises(StorageError, match="not a quantus-roar result store"):
        ResultStore(tmp_path)
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    conn.close()
    assert tables == ["customers"]


@pytest.mark.parametrize("statement, needles", [
    ("UPDATE meta SET value = '\"a string\"' WHERE key = 'run'",
     ["holds a run description that is not a quantus-roar one", "'a string'"]),
    ("UPDATE meta SET value = json_set(value, '$.percentages', 'abc') WHERE key = 'run'",
     ["holds a run description that is not a quantus-roar one", "percentages: 'abc'",
      "not a list of numbers"]),
    ("UPDATE meta SET value = '{\"seed\": 0,' WHERE key = 'run'",
     ["holds a value of 'run' in its meta table that is not JSON"]),
    ("UPDATE meta SET value = 'not json' WHERE key = 'layers'",
     ["holds a value of 'layers' in its meta table that is not JSON"]),
    ("UPDATE cells SET value = 'high' WHERE rowid = (SELECT MIN(rowid) FROM cells)",
     ["holds a cell whose value is not a number", "'high'"]),
    ("UPDATE cells SET param = 'half' WHERE rowid = (SELECT MIN(rowid) FROM cells)",
     ["cell whose percentage is not a number", "'half'"]),
])
def test_a_tampered_store_is_a_one_line_error_of_report(finished, tmp_path, capsys,
                                                        statement, needles):
    out = _copy_run(finished, tmp_path / "run")
    db = out / "results.sqlite"
    with sqlite3.connect(db) as conn:
        if "'layers'" in statement:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('layers', '[]')")
        assert conn.execute(statement).rowcount == 1
    conn.close()
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    _one_line_error(err, f"The result store '{db}'", *needles)
    if "JSON" not in needles[0]:
        assert "Rebuild it with 'quantus-roar run --fresh'" in err and "another folder" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_a_clear_error(finished, tmp_path, capsys):
    out = _copy_run(finished, tmp_path / "run")
    os.chmod(out, 0o555)
    try:
        assert _run(out, "--fresh") == 2
        _one_line_error(capsys.readouterr().err, str(out))
    finally:
        os.chmod(out, 0o755)
    empty = tmp_path / "ro"
    empty.mkdir(mode=0o555)
    try:
        assert _run(empty / "new") == 2
        _one_line_error(capsys.readouterr().err, "another --out")
    finally:
        os.chmod(empty, 0o755)


def test_a_store_that_cannot_be_written_names_the_file(tmp_path, monkeypatch):
    import quantus_roar.benchmark.store as store_module

    with ResultStore(tmp_path) as store:
        store.add([Cell("roar", "Random", "50", 0, "accuracy", 0.5, 1.0)], "fp")
    real = sqlite3.connect

    def read_only(path, *args, **kwargs):  # what a read-only file system gives
        return real(f"file:{path}?mode=ro", *args, uri=True, **kwargs)

    monkeypatch.setattr(store_module.sqlite3, "connect", read_only)
    with pytest.raises(StorageError) as info:
        with ResultStore(tmp_path) as store:
            store.add([Cell("roar", "Random", "50", 1, "accuracy", 0.5, 1.0)], "fp")
    assert str(tmp_path / "results.sqlite") in info.value.strerror
    assert "another --out" in info.value.strerror


def test_a_full_disk_while_storing_names_the_file_and_keeps_what_was_committed(tmp_path):
    with ResultStore(tmp_path) as store:
        store.add([Cell("roar", "Random", "50", 0, "accuracy", 0.5, 1.0)], "fp")
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")  # no room for another page
        many = [Cell("roar", "Random", str(p), s, "accuracy", 0.5, 1.0)
                for p in range(200) for s in range(20)]
        with pytest.raises(StorageError, match="disk is full") as info:
            store.add(many, "fp")
        assert "results.sqlite" in info.value.strerror
        assert store.count() == 1


# --------------------------------------------------------------------------- 5. config


@pytest.mark.parametrize("line, error, match", [
    ('quick = "no"', SettingTypeError, "'quick' setting must be true or false"),
    ('stream = "false"', SettingTypeError, "'stream' setting must be true or false"),
    ("batch_size = true", SettingTypeError, "'batch_size' setting must be a positive integer"),
    ("percentages = [10, 10]", ValueError, r"duplicate percentages \[10\]"),
    ('device = "bogus"', ValueError, "'device' setting must be 'cpu', 'cuda' or 'cuda:N'"),
    ("dataset = 5", SettingTypeError, "'dataset' setting must be a non-empty string"),
    ("model = 5", SettingTypeError, "'model' setting must be a non-empty string"),
    ('percentages = "abc"', SettingTypeError, "'percentages' setting must be a list of numbers"),
    ('retrains = "3"', SettingTypeError, "'retrains' setting must be a positive integer"),
    ("retrains = 2.0", SettingTypeError, "'retrains' setting must be a positive integer"),
    ('lr = "0.1"', SettingTypeError, "'lr' setting must be a finite number"),
    ('min_train_accuracy = "high"', SettingTypeError, "'min_train_accuracy' setting"),
    ("sanity_samples = -1", ValueError, "'sanity_samples' setting must be an integer >= 0"),
    ("seed = -1", ValueError, r"'seed' setting must be an integer in \[0, 2\*\*32\)"),
    ("seed = 4294967295", None, None),
    ("seed = 4294967296", ValueError, r"'seed' setting must be an integer in \[0, 2\*\*32\)"),
    ("seed = 9223372036854775807", ValueError, "scikit-learn"),
    ("seed = 1.5", SettingTypeError, "'seed' setting must be an integer"),
    ('estimators = ["Random", "Random"]', ValueError, r"names \['Random'\] more than once"),
    ("estimators = [1]", SettingTypeError, "'estimators' setting must be a list"),
    ("target = 1", ValueError, "'target' setting must be one of"),
    ("run = 5", SettingTypeError, "'run' setting must be a table"),
])
def test_config_file_values_are_type_checked_naming_the_key(tmp_path, line, error, match):
    path = tmp_path / "c.toml"
    path.write_text(line + "\n" if line.startswith("run =") else f"[run]\n{line}\n")
    if error is None:
        RunConfig.from_toml(path)
        return
    with pytest.raises(error, match=match) as info:
        RunConfig.from_toml(path)
    assert str(path) in str(info.value)


def test_seed_of_2_to_the_63_is_refused():
    with pytest.raises(ValueError, match="'seed' setting"):
        RunConfig(seed=2**63)


def test_seeds_from_2_to_the_32_are_refused_saying_why(tmp_path, capsys):
    for seed in (2**32, 2**40, 2**63 - 1):
        with pytest.raises(ValueError, match=r"'seed' setting must be an integer in "
                           r"\[0, 2\*\*32\), the seeds numpy's legacy generator and "
                           r"scikit-learn accept") as info:
            RunConfig(seed=seed)
        assert str(seed) in str(info.value)
    assert RunConfig(seed=2**32 - 1).seed == 2**32 - 1
    out = tmp_path / "run"
    assert _run(out, "--seed", str(2**32)) == 2
    _one_line_error(capsys.readouterr().err, "'seed' setting must be an integer in [0, 2**32)",
                    "scikit-learn", "4294967296")
    assert "random_state" not in capsys.readouterr().err
    assert not out.exists()


def test_a_binary_config_file_is_not_valid_toml(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(ValueError, match=f"Config file '{path}' is not valid TOML"):
        RunConfig.from_toml(path)
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys.readouterr().err, f"Config file '{path}' is not valid TOML",
                    "not UTF-8")
    assert main(["run", "--config", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys.readouterr().err, "is not a file")
    assert not (tmp_path / "o").exists()


def test_keys_outside_the_run_table_are_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("retrains = 3\n[run]\nseed = 1\n")
    with pytest.raises(ValueError, match=r"key\(s\) \['retrains'\] outside its \[run\] table"):
        RunConfig.from_toml(path)


def test_a_bad_flag_is_not_blamed_on_the_config_file(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("[run]\nretrains = 2\n")
    assert main(["run", "--config", str(path), "--seed", "-3", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    _one_line_error(err, "'seed' setting")
    assert "c.toml" not in err


# --------------------------------------------------------------------------- 6. CLI


def test_abbreviated_flags_are_refused(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--retrain", "3"])
    assert info.value.code == 2
    assert "unrecognized arguments: --retrain" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--est", "Random"])


def _factory_module(where: Path, body: str) -> str:
    name = f"factories_{abs(hash(body)) % 10**8}"
    (where / f"{name}.py").write_text(textwrap.dedent(body))
    return name


def test_a_bad_model_factory_writes_nothing_and_the_corrected_command_runs(
        tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    name = _factory_module(tmp_path, """
        from quantus_roar.models import SmallCNN

        def wrong(channels, classes):
            return SmallCNN(in_channels=channels, n_classes=classes)

        def not_a_model(in_channels, n_classes, image_size):
            return "a string"

        def good(in_channels, n_classes, image_size):
            return SmallCNN(in_channels=in_channels, n_classes=n_classes,
                            image_size=image_size)

        value = 5
    """)
    out = tmp_path / "run"
    for spec, needle in ((f"{name}:wrong", "unexpected keyword argument"),
                         (f"{name}:not_a_model", "returned a str"),
                         (f"{name}:missing", "has no 'missing'"),
                         (f"{name}:value", "is an int, not a callable"),
                         ("nosuchmodule_xyz:f", "No module named 'nosuchmodule_xyz'"),
                         ("resnet50", "Unknown model 'resnet50'")):
        assert _run(out, "--model", spec) == 2
        _one_line_error(capsys.readouterr().err, needle)
        assert not out.exists()
    assert _run(out, "--model", f"{name}:good") == 0
    assert _cells(out) > 0


def test_a_failing_explain_function_is_one_line_before_anything_is_trained(
        tmp_path, monkeypatch, capsys):
    import quantus_roar.retrain.torch_retrainer as torch_retrainer

    monkeypatch.syspath_prepend(str(tmp_path))
    name = _factory_module(tmp_path, """
        import numpy as np

        def flat(model, inputs, targets):
            return np.ones(len(inputs))

        def broken(model, inputs, targets):
            raise RuntimeError("my bug\\nsecond line")
    """)

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the explain functions were checked")

    monkeypatch.setattr(torch_retrainer.TorchRetrainer, "fit", no_training)
    out = tmp_path / "run"
    for spec, needles in (
            ("os:getcwd", ["The explain function 'os:getcwd' failed on 2 samples: TypeError: "]),
            (f"{name}:flat", [f"The explain function '{name}:flat' failed on 2 samples: "
                              "ValueError: ", "returned shape (2,)"]),
            (f"{name}:broken", [f"The explain function '{name}:broken' failed on 2 samples: "
                                "RuntimeError: my bug second line"])):
        assert main(["run", "--out", str(out), *TINY, "--estimators", f"Random,{spec}",
                     "--fresh"]) == 2
        _one_line_error(capsys.readouterr().err, *needles)
        assert not out.exists()


def test_a_model_module_that_fails_to_import_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    name = _factory_module(tmp_path, "raise RuntimeError('broken module')\n")
    assert _run(tmp_path / "run", "--model", f"{name}:f") == 2
    _one_line_error(capsys.readouterr().err, "RuntimeError: broken module")


def test_interrupt_during_start_up_is_one_line(tmp_path, monkeypatch, capsys):
    import quantus_roar.benchmark.runner as runner
    import quantus_roar.cli as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_config", interrupted)
    assert _run(tmp_path / "a") == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted" in err
    monkeypatch.undo()
    monkeypatch.setattr(runner, "load_dataset", interrupted)
    assert _run(tmp_path / "b") == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


_SIGINT_AT_START = textwrap.dedent("""
    import os, signal, sys, time
    import quantus_roar.benchmark.runner as runner

    def load(*args, **kwargs):  # SIGINT while the data loads
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)

    runner.load_dataset = load
    from quantus_roar.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_sigint_during_data_loading_exits_130_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-c", _SIGINT_AT_START, "run", "--out",
                           str(tmp_path / "o"), *TINY], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "interrupted" in done.stderr


def test_unexpected_exceptions_keep_their_traceback(tmp_path, monkeypatch):
    import quantus_roar.benchmark.runner as runner

    def bug(*args, **kwargs):
        raise TypeError("a bug in the runner")

    monkeypatch.setattr(runner, "run", bug)
    with pytest.raises(TypeError, match="a bug in the runner"):
        _run(tmp_path / "o")


# --------------------------------------------------------------------------- 7. Ray


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_ray_address_where_nothing_listens_fails_at_once(tmp_path, capsys):
    pytest.importorskip("ray")
    port = _closed_port()
    start = time.monotonic()
    code = main(["run", "--out", str(tmp_path / "o"), *TINY, "--executor", "ray",
                 "--ray-address", f"127.0.0.1:{port}"])
    assert code == 2
    assert time.monotonic() - start < 30
    _one_line_error(capsys.readouterr().err,
                    f"No Ray cluster answers at 127.0.0.1:{port} (connection refused)",
                    "ray start --head")
    assert not (tmp_path / "o").exists()


def test_ray_address_auto_without_a_cluster_is_one_line(monkeypatch):
    import quantus_roar.executors as executors

    class NoCluster:
        @staticmethod
        def is_initialized():
            return False

        @staticmethod
        def init(**kwargs):
            raise ConnectionError("Could not find any running Ray instance. Please specify "
                                  "the one to connect to.\nmore lines")

    monkeypatch.setattr(executors, "_import_ray", lambda: NoCluster)
    with pytest.raises(ConnectionError) as info:
        executors.RayExecutor("auto")
    message = str(info.value)
    assert "\n" not in message
    assert "No Ray cluster answers at address 'auto'" in message
    assert "ray start --head" in message
    with pytest.raises(ValueError, match="no valid port"):
        executors.RayExecutor("127.0.0.1:port")


# --------------------------------------------------------------------------- 8. imports


def test_a_builtin_model_imports_nothing_from_the_working_folder(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evilmod.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\ndef f(**kw): pass\n")
    (tmp_path / "smallcnn.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # what python -m does with the current folder
    assert _run(tmp_path / "out", "--model", "smallcnn") == 0
    assert not marker.exists()
    assert "evilmod" not in sys.modules and "smallcnn" not in sys.modules


def test_the_summary_times_the_report_apart(tmp_path):
    with_report = run(RunConfig(**TINY_CONFIG), tmp_path / "a", progress=False)
    without = run(RunConfig(**TINY_CONFIG), tmp_path / "b", progress=False, report=False)
    assert with_report.report_s > 0 and (tmp_path / "a" / "report.md").is_file()
    assert without.report_s == 0 and not (tmp_path / "b" / "report.md").exists()
    assert "quantus-roar run` prints its time" in (tmp_path / "a" / "report.md").read_text()
