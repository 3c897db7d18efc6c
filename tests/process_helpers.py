"""Task functions for the worker-process tests (importable by spawned workers)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch


def worker_state(x: torch.Tensor) -> dict:
    """What a worker looks like from inside a task."""
    return {"threads": torch.get_num_threads(), "pid": os.getpid(),
            "removal_loaded": "quantus_roar.removal" in sys.modules,
            "shared": bool(x.is_shared()), "sum": float(x.sum())}


def divide(a: float, b: float) -> float:
    return a / b


def die_once(marker: str) -> str:
    """Kill the worker the first time (no exception: the process is gone), then succeed."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died")
        os._exit(1)
    return "survived"


def make_lambda_factory():
    from quantus_roar import SmallCNN

    return lambda **kw: SmallCNN(**kw)
