"""The report's bootstrap over a whole study's stored per-sample results.

Run: ``pytest benchmarks/test_bench_diagnostics.py -s``.

Target: 1,000 resamples of every cell of the default digits study (its size:
17 estimators x 5 percentages x 5 retrains for ROAR, KAR and mask leakage,
deletion at 6 points for two orders, 5 baseline retrains; 360 test samples)
and every ROAR/KAR table built from them in under 5 s. Baseline, measured in
the same run: the obvious bootstrap, indexing each cell's results with each
resample's indices.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from quantus_roar.benchmark.report import curve_table, replicates
from quantus_roar.stats import N_BOOT

N_TEST, ESTIMATORS, PCTS, SEEDS = 360, 17, (10, 30, 50, 70, 90), 5
TARGET_S = 5.0


def _study() -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(0)
    names = [f"E{i}" for i in range(ESTIMATORS - 1)] + ["Random"]
    rows, samples = [], {}

    def cell(metric: str, e: str, p: str, s: int, acc: float) -> None:
        correct = rng.random(N_TEST) < acc
        samples[(metric, e, p, s)] = correct
        rows.append({"metric": metric, "estimator": e, "param": p, "seed": s,
                     "quantity": "accuracy", "value": correct.mean(), "wall_s": 1.0})

    for s in range(SEEDS):
        cell("baseline", "-", "0", s, 0.97)
    for e in names:
        for metric in ("roar", "kar", "mask-leakage"):
            for p in PCTS:
                for s in range(SEEDS):
                    cell(metric, e, str(p), s, 0.3 + 0.6 * rng.random())
        for metric, unmodified in (("roar-noretrain", "0"), ("kar-noretrain", "100")):
            for p in (unmodified, *map(str, PCTS)):
                cell(metric, e, p, 0, 0.5 + 0.4 * rng.random())
    return pd.DataFrame(rows), samples


def _naive(samples: dict) -> dict:
    rng = np.random.default_rng(0)
    idx = rng.integers(0, N_TEST, size=(N_BOOT, N_TEST))
    return {k: np.array([v[i].mean() for i in idx]) for k, v in samples.items()}


def test_bootstrap_of_a_whole_study_under_five_seconds(benchmark):
    df, samples = _study()
    names = sorted(set(df.estimator) - {"-"})

    def report_bootstrap() -> None:
        reps = replicates(samples)
        for metric in ("roar", "kar"):
            curve_table(df, metric, names, reps)

    benchmark.pedantic(report_bootstrap, rounds=1, iterations=1)
    ours = benchmark.stats.stats.max
    start = time.perf_counter()
    _naive(samples)
    naive = time.perf_counter() - start
    benchmark.extra_info.update(cells=len(samples), ours_s=ours, naive_replicates_s=naive)
    print(f"\n{len(samples)} cells x {N_TEST} samples, {N_BOOT} resamples: replicates and "
          f"both tables {ours:.2f} s (target {TARGET_S:.0f} s); the replicates alone by "
          f"indexing {naive:.2f} s ({naive / ours:.1f}x)")
    assert ours < TARGET_S
