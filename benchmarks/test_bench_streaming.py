"""Streaming benchmark: a ROAR retrain on a dataset larger than a set memory budget.

Run: ``pytest benchmarks/test_bench_streaming.py -s``.

Inputs and attributions (together about 330 MB) are ``.npy`` files opened
memory-mapped. The streamed path (:class:`quantus_roar.streaming.RemovedDataset`
through :class:`~quantus_roar.TorchRetrainer`'s DataLoader path) must train
and score with a peak of anonymous memory (RssAnon: the process's own memory,
not the page cache of the mapped files) below a 64 MB budget above the
starting level, on a quarter of the data and on all of it, while the
in-memory path, measured in the same run, holds the data, its attributions
and the modified copy at once. One streamed retrain on 2,000 samples first
takes the one-time costs (thread pools, kernels' workspaces) out of the
measurement.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from quantus_roar.curves import removed_inputs
from quantus_roar.models import SmallCNN
from quantus_roar.retrain import TorchRetrainer
from quantus_roar.streaming import RemovedDataset, chunked_channel_means

N, SIZE = 40_000, 32
BUDGET_MB = 64


def _rss_anon_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def _peak_growth_mb(fn: Callable[[], object]) -> tuple[float, object, float]:
    """Peak RssAnon above the level at the start of ``fn``, sampled every 2 ms."""
    start = _rss_anon_mb()
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_anon_mb())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        result = fn()
    finally:
        wall = time.perf_counter() - t0
        stop.set()
        thread.join()
    return max(peak[0], _rss_anon_mb()) - start, result, wall


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    folder = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(0)
    y = (np.arange(N) % 10).astype(np.int64)
    x = np.lib.format.open_memmap(folder / "x.npy", "w+", np.float32, (N, 1, SIZE, SIZE))
    a = np.lib.format.open_memmap(folder / "a.npy", "w+", np.float32, (N, 1, SIZE, SIZE))
    for lo in range(0, N, 4096):  # class evidence in a class-specific 8x8 block
        hi = min(N, lo + 4096)
        block = rng.random((hi - lo, 1, SIZE, SIZE), dtype=np.float32)
        for c in range(10):
            rows = np.flatnonzero(y[lo:hi] == c)
            r, col = 8 * (c // 4), 8 * (c % 4)
            block[rows, :, r : r + 8, col : col + 8] += 1.0
        x[lo:hi] = block
        a[lo:hi] = rng.random((hi - lo, 1, SIZE, SIZE), dtype=np.float32)
    x.flush()
    a.flush()
    del x, a
    return folder / "x.npy", folder / "a.npy", y


def test_streamed_retrain_stays_within_the_memory_budget(on_disk, benchmark):
    torch.set_num_threads(2)
    x_path, a_path, y = on_disk
    data_mb = (x_path.stat().st_size + a_path.stat().st_size) / 2**20
    assert data_mb > 4 * BUDGET_MB
    retrainer = TorchRetrainer(SmallCNN(image_size=SIZE, width=8), epochs=1, batch_size=256)

    def streamed(n: int = N) -> float:
        x = np.load(x_path, mmap_mode="r")[:n]
        a = np.load(a_path, mmap_mode="r")[:n]
        stats = chunked_channel_means(x)
        t = n // 10
        train = RemovedDataset(x[: n - t], y[: n - t], a[: n - t], 50, stats=stats)
        test = RemovedDataset(x[n - t :], y[n - t : n], a[n - t :], 50, stats=stats,
                              first_id=n - t)
        model = retrainer.fit(train, None, seed=0)
        return retrainer.score(model, test, None)

    def in_memory() -> float:
        x = np.load(x_path)
        a = np.load(a_path)
        stats = torch.from_numpy(chunked_channel_means(x))
        xr, _ = removed_inputs(x, a, [50], stats=stats)
        t = N // 10
        model = retrainer.fit(xr[0][: N - t], y[: N - t], seed=0)
        return retrainer.score(model, xr[0][N - t :], y[N - t :])

    streamed(2000)  # one-time allocations
    growth_quarter, _, _ = _peak_growth_mb(lambda: streamed(N // 4))
    growth_stream, acc_stream, t_stream = benchmark.pedantic(
        lambda: _peak_growth_mb(streamed), rounds=1, iterations=1)
    growth_memory, acc_memory, t_memory = _peak_growth_mb(in_memory)
    benchmark.extra_info.update(data_mb=data_mb, budget_mb=BUDGET_MB,
                                peak_growth_stream_mb=growth_stream,
                                peak_growth_stream_quarter_mb=growth_quarter,
                                peak_growth_memory_mb=growth_memory, acc_stream=acc_stream,
                                acc_memory=acc_memory, t_stream_s=t_stream, t_memory_s=t_memory)
    print(f"\nROAR retrain at 50% of {N} 1x{SIZE}x{SIZE} images ({data_mb:.0f} MB of inputs and "
          f"attributions on disk), one epoch:\n"
          f"  streamed, {N // 4} images  peak RssAnon +{growth_quarter:6.1f} MB\n"
          f"  streamed   peak RssAnon +{growth_stream:6.1f} MB  {t_stream:5.1f} s  "
          f"acc {acc_stream:.3f}\n"
          f"  in memory  peak RssAnon +{growth_memory:6.1f} MB  {t_memory:5.1f} s  "
          f"acc {acc_memory:.3f}\n  budget {BUDGET_MB} MB")
    assert max(growth_stream, growth_quarter) < BUDGET_MB < data_mb < growth_memory
    assert acc_stream == pytest.approx(acc_memory, abs=0.02)
