"""Killing a run in the middle, for the resume tests."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path


def kill_after_first_cell(args: list[str], out: Path, timeout: float = 120.0) -> None:
    """Run ``python -m quantus_roar *args`` and SIGKILL it as soon as its store in ``out``
    holds a finished cell; fails if the run ends first."""
    proc = subprocess.Popen([sys.executable, "-m", "quantus_roar", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db, deadline = out / "results.sqlite", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            n = 0
            if db.exists():  # connecting first would create the file
                try:
                    with sqlite3.connect(db) as conn:
                        n = conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
                except sqlite3.OperationalError:  # no table yet
                    n = 0
            if n > 0:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
