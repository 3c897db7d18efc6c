"""Retraining benchmark: the ROAR grid on digits, ensemble path vs one model at a time.

Run: ``pytest benchmarks/test_bench_retrain.py -s``.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from conftest import KEEP_FREED_MEMORY
from torch.utils.flop_counter import FlopCounterMode

from quantus_roar.data import load_digits_data
from quantus_roar.models import SmallCNN
from quantus_roar.removal import channel_means, impute, removal_masks
from quantus_roar.retrain import RetrainJob, TorchRetrainer

PERCENTAGES = (10, 30, 50, 70, 90)
SEEDS = range(5)


def _grid_jobs() -> list[RetrainJob]:
    x_train, y_train, x_test, y_test = load_digits_data(seed=0)
    g = torch.Generator().manual_seed(0)
    a_train = torch.rand(x_train.shape, generator=g).numpy()  # a Random estimator
    a_test = torch.rand(x_test.shape, generator=g).numpy()
    stats = channel_means(x_train)
    train = impute(x_train, removal_masks(a_train, PERCENTAGES), stats=stats)
    test = impute(x_test, removal_masks(a_test, PERCENTAGES), stats=stats)
    return [RetrainJob(train[i], y_train, test[i], y_test, seed)
            for i in range(len(PERCENTAGES)) for seed in SEEDS]


def _training_flops(retrainer: TorchRetrainer, n_train: int) -> float:
    """FLOPs of one model's full training (forward + backward of every step)."""
    model = retrainer.new_model(0)
    x = torch.rand(retrainer.batch_size, 1, 8, 8)
    y = torch.randint(0, 10, (retrainer.batch_size,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    steps = retrainer.epochs * math.ceil(n_train / retrainer.batch_size)
    return counter.get_total_flops() * steps


def _matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def test_roar_grid_ensemble_vs_sequential(benchmark):
    jobs = _grid_jobs()
    ensemble = TorchRetrainer(SmallCNN(), ensemble=True)
    sequential = TorchRetrainer(SmallCNN(), ensemble=False)

    acc_ens = benchmark.pedantic(lambda: ensemble.fit_score_many(jobs), rounds=1, iterations=1)
    t_ens = benchmark.stats.stats.min
    start = time.perf_counter()
    acc_seq = sequential.fit_score_many(jobs)
    t_seq = time.perf_counter() - start

    flops = _training_flops(ensemble, len(jobs[0].y_train)) * len(jobs)
    matmul = _matmul_gflops()
    speedup = t_seq / t_ens
    benchmark.extra_info.update(
        ensemble_s=t_ens, sequential_s=t_seq, speedup=speedup,
        acc_ensemble=float(np.mean(acc_ens)), acc_sequential=float(np.mean(acc_seq)),
        train_gflops_ensemble=flops / t_ens / 1e9, train_gflops_sequential=flops / t_seq / 1e9,
        matmul_gflops=matmul,
    )
    print(f"\n25 retrains (5 percentages x 5 seeds) of SmallCNN on digits, "
          f"{torch.get_num_threads()} threads, keep_freed_memory {KEEP_FREED_MEMORY}:\n"
          f"  ensemble   {t_ens:6.2f} s  mean acc {np.mean(acc_ens):.4f}  "
          f"{flops / t_ens / 1e9:5.1f} GFLOP/s\n"
          f"  sequential {t_seq:6.2f} s  mean acc {np.mean(acc_seq):.4f}  "
          f"{flops / t_seq / 1e9:5.1f} GFLOP/s\n"
          f"  speedup {speedup:.2f}x (target 3x); torch.matmul 1024^2: {matmul:.1f} GFLOP/s")
    assert abs(np.mean(acc_ens) - np.mean(acc_seq)) <= 0.01
    assert speedup >= 3.0, f"ensemble speedup {speedup:.2f}x is below the 3x target"
