"""Removal engine benchmarks, each against a baseline measured in the same run.

Run: ``pytest benchmarks/test_bench_removal.py -s``. Figures are printed and
stored in pytest-benchmark's ``extra_info``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import best_time

from quantus_roar.removal import channel_means, impute, removal_masks

PERCENTAGES = (10, 30, 50, 70, 90)


def _per_sample_removal(x: np.ndarray, a: np.ndarray, fill: np.ndarray) -> list[np.ndarray]:
    """Per-sample numpy loop, the way Quantus' perturbation metrics remove pixels."""
    n, _, h, w = x.shape
    out = []
    for p in PERCENTAGES:
        k = round(p * h * w / 100)
        batch = x.copy()
        for i in range(n):
            top = np.argsort(-np.abs(a[i]).sum(0).reshape(-1), kind="stable")[:k]
            rows, cols = np.unravel_index(top, (h, w))
            batch[i][:, rows, cols] = fill[:, None]
        out.append(batch)
    return out


def test_masks_and_channel_mean_throughput(benchmark):
    """Masks + channel-mean imputation of 10,000 RGB 32x32 images at 5 percentages."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10_000, 3, 32, 32, generator=g)
    a = torch.randn(10_000, 3, 32, 32, generator=g)
    stats = channel_means(x)

    def ours():
        return impute(x, removal_masks(a, PERCENTAGES), "channel_mean", stats=stats)

    result = benchmark.pedantic(ours, rounds=3, warmup_rounds=1)
    assert result.shape == (5, 10_000, 3, 32, 32)
    ours_s = benchmark.stats.stats.min
    n_base = 500  # the per-sample loop is timed on a subset and scaled
    xb, ab = x[:n_base].numpy(), a[:n_base].numpy()
    base_s = best_time(lambda: _per_sample_removal(xb, ab, stats.numpy()), 1) * 10_000 / n_base
    benchmark.extra_info.update(images_per_s=10_000 / ours_s,
                                baseline_images_per_s=10_000 / base_s, speedup=base_s / ours_s)
    print(f"\nmasks+channel_mean: {10_000 / ours_s:,.0f} images/s (5 percentages each); "
          f"per-sample numpy loop: {10_000 / base_s:,.0f} images/s; {base_s / ours_s:.1f}x")
    assert ours_s < base_s


@pytest.mark.parametrize("percentage", PERCENTAGES)
def test_noisy_linear_vs_quantus(benchmark, percentage):
    """Batched ROAD imputation vs Quantus' per-image ``noisy_linear_imputation``."""
    from quantus.functions.perturb_func import noisy_linear_imputation

    rng = np.random.default_rng(percentage)
    x = rng.random((256, 1, 32, 32)).astype(np.float32)
    a = rng.random((256, 1, 32, 32)).astype(np.float32)
    masks = removal_masks(a, [percentage])[0]
    indices = [np.flatnonzero(masks[i, 0].reshape(-1)) for i in range(256)]

    def quantus_loop():
        return np.stack([noisy_linear_imputation(x[i], indices[i], noise=0.0) for i in range(256)])

    def ours_call():
        return impute(x, masks, "noisy_linear", noise=0.0)

    ours = benchmark.pedantic(ours_call, rounds=5, warmup_rounds=1)
    reference = quantus_loop()
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    # Both sides are timed in turns, so that a slow spell of the machine (seen
    # here: seconds at about a third of the speed) falls on both of them.
    ours_s, base_s = benchmark.stats.stats.min, float("inf")
    for _ in range(2):
        base_s = min(base_s, best_time(quantus_loop, 1))
        ours_s = min(ours_s, best_time(ours_call, 5))
    benchmark.extra_info.update(quantus_s=base_s, ours_s=ours_s, speedup=base_s / ours_s)
    print(f"\nnoisy_linear p={percentage}: ours {ours_s * 1e3:.1f} ms, Quantus per image "
          f"{base_s * 1e3:.0f} ms, speedup {base_s / ours_s:.1f}x (target 50x)")
    assert base_s / ours_s >= 50, f"speedup {base_s / ours_s:.1f}x is below the 50x target"
