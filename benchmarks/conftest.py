"""Shared helpers for the benchmarks: run with ``pytest benchmarks/``."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch

from quantus_roar.retrain import keep_freed_memory

# As the quantus-roar command does: CPU training reuses freed blocks instead of
# page-faulting fresh ones every step (quantus_roar.retrain.allocator). Every
# benchmark compares against a baseline measured in the same process, so both
# sides run with the same allocator settings.
KEEP_FREED_MEMORY = keep_freed_memory()


@pytest.fixture(autouse=True)
def _threads():
    """Use every core of the machine, set deliberately, and restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    yield
    torch.set_num_threads(before)


def best_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call, in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
