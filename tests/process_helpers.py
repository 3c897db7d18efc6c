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


def sleep_for(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def a_tensor() -> torch.Tensor:
    return torch.arange(4.0)


class NeedsTwo(Exception):
    """An exception that does not unpickle from its args alone."""

    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


def raise_needs_two() -> None:
    raise NeedsTwo(1, 2)


class GpuRetrainer:
    """Says it trains on CUDA; never asked to train."""

    device = "cuda"

    def fit(self, x, y, *, seed):  # pragma: no cover - never called
        raise AssertionError

    def score(self, model, x, y):  # pragma: no cover - never called
        raise AssertionError
