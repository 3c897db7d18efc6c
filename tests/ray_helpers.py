"""Task functions the Ray tests inject in place of the runner's retraining task.

Registered with ``cloudpickle.register_pickle_by_value`` by the tests, so Ray
workers receive them by value and need not import the tests folder.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from quantus_roar.tasks import retrain_group_task


def kill_worker_once(marker: str, *args: Any) -> dict:
    """Kill this worker process (SIGKILL) the first time; later attempts do the work."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return retrain_group_task(*args)


def always_fail(*args: Any) -> dict:
    """A retraining task that raises on every attempt."""
    raise RuntimeError("injected failure: out of GPU memory")
