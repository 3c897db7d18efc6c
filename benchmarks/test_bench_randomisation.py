"""ModelRandomisation against quantus.MPRT on the same model, inputs, layers and similarity.

Run: ``pytest benchmarks/test_bench_randomisation.py -s``.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import quantus
import torch

import quantus_roar as qr
from quantus_roar.sanity import SanitySeeds

KW = {"explain_func": qr.explain, "explain_func_kwargs": {"method": "Gradient"}}


@pytest.mark.parametrize("batch_size", [64, 256])
def test_model_randomisation_vs_mprt(benchmark, batch_size):
    x_train, y_train, _, _ = qr.load_digits_data(seed=0)
    x, y = x_train[:1000], y_train[:1000]
    model = qr.SmallCNN()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    model.eval()
    a = qr.explain(model, x, y, method="Gradient")
    # quantus.MPRT explains the labels y; so does target="label".
    ours = qr.ModelRandomisation(similarity="spearman", seed=42, target="label")

    def run_ours():
        return ours(model, x, y, a, batch_size=batch_size, **KW)

    def run_mprt():
        mprt = quantus.MPRT(seed=SanitySeeds.derive(42).layers - 1, abs=False, normalise=False,
                            disable_warnings=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mprt(model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu",
                        batch_size=batch_size, **KW)

    benchmark.pedantic(run_ours, rounds=3, iterations=1, warmup_rounds=1)
    t_ours = benchmark.stats.stats.min
    run_mprt()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        theirs = run_mprt()
        times.append(time.perf_counter() - start)
    t_mprt = min(times)
    for layer in ("6", "3", "0"):
        np.testing.assert_allclose(ours.scores["spearman"][layer], theirs[layer], atol=1e-12)
    ratio = t_mprt / t_ours
    benchmark.extra_info.update(ours_s=t_ours, mprt_s=t_mprt, speedup=ratio)
    print(f"\nModelRandomisation vs quantus.MPRT, 1000 digits, Gradient, Spearman, 3 layers, "
          f"batch_size={batch_size}, {torch.get_num_threads()} threads:\n"
          f"  ours {t_ours * 1000:7.1f} ms (includes the fresh-init floor step)\n"
          f"  MPRT {t_mprt * 1000:7.1f} ms\n  speedup {ratio:.1f}x")
    assert ratio >= 5.0
