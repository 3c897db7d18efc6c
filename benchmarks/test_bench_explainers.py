"""Explainer benchmark: every estimator, and our SmoothGrad against captum's NoiseTunnel.

Run: ``pytest benchmarks/test_bench_explainers.py -s``.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
from captum.attr import NoiseTunnel, Saliency

from benchmarks.conftest import best_time
from quantus_roar.data import load_digits_data
from quantus_roar.explainers import ESTIMATORS, explain
from quantus_roar.models import SmallCNN

N_SAMPLES, STDEV = 15, 0.15


def _digits_case():
    x_train, y_train, x_test, y_test = load_digits_data(seed=0)
    x = np.concatenate([x_train, x_test])[:1000]
    y = np.concatenate([y_train, y_test])[:1000]
    return SmallCNN().eval(), x, y


def _rgb_case():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 3, 32, 32, generator=g).numpy()
    y = torch.randint(0, 10, (256,), generator=g).numpy()
    return SmallCNN(in_channels=3, image_size=32).eval(), x, y


CASES = {"digits 1000x1x8x8": _digits_case, "rgb 256x3x32x32": _rgb_case}


def _time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.mark.parametrize("case", list(CASES))
def test_every_estimator(benchmark, case):
    model, x, y = CASES[case]()
    times = {}
    for name in ESTIMATORS:
        explain(model, x[:8], y[:8], method=name)  # warm-up
        times[name] = _time_once(lambda name=name: explain(model, x, y, method=name))
    benchmark.pedantic(lambda: explain(model, x, y, method="Gradient"), rounds=3, iterations=1)
    benchmark.extra_info.update({f"{k}_s": v for k, v in times.items()})
    print(f"\n{case}, {torch.get_num_threads()} threads, n_samples={N_SAMPLES}:")
    for name, t in times.items():
        print(f"  {name:38s} {t * 1000:9.1f} ms")
    # The noise ensembles cost about n_samples base calls, not more.
    for base in ("Gradient", "GuidedBackprop", "IntegratedGradients"):
        assert times[f"{base}_SmoothGrad"] < 2.0 * N_SAMPLES * times[base] + 0.05


@pytest.mark.parametrize("case", list(CASES))
def test_smoothgrad_vs_captum_noise_tunnel(benchmark, case):
    model, x, y = CASES[case]()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    # captum takes one absolute std: use ours times the data's range (the same on average).
    abs_std = float(STDEV * (x.max() - x.min()))
    tunnel = NoiseTunnel(Saliency(model))

    def captum(batch=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tunnel.attribute(xt, target=yt, nt_type="smoothgrad", nt_samples=N_SAMPLES,
                                    stdevs=abs_std, abs=False, nt_samples_batch_size=batch)

    ours = benchmark.pedantic(
        lambda: explain(model, x, y, method="Gradient", noise="SmoothGrad",
                        n_samples=N_SAMPLES, stdev=STDEV), rounds=3, iterations=1)
    t_ours = benchmark.stats.stats.min
    t_default = best_time(captum)
    t_one = best_time(lambda: captum(1))
    benchmark.extra_info.update(ours_s=t_ours, captum_default_s=t_default,
                                captum_one_sample_batch_s=t_one,
                                ratio_default=t_default / t_ours, ratio_one=t_one / t_ours)
    print(f"\n{case} SmoothGrad (Gradient, {N_SAMPLES} samples), "
          f"{torch.get_num_threads()} threads:\n"
          f"  ours                                   {t_ours * 1000:8.1f} ms\n"
          f"  captum NoiseTunnel default             {t_default * 1000:8.1f} ms "
          f"({t_default / t_ours:.2f}x ours)\n"
          f"  captum NoiseTunnel nt_samples_batch=1  {t_one * 1000:8.1f} ms "
          f"({t_one / t_ours:.2f}x ours)")
    assert ours.shape == x.shape
    # Both are the same estimator: the maps agree up to the noise draws.
    ref = captum().detach().numpy()
    corr = np.corrcoef(ours.ravel(), ref.ravel())[0, 1]
    assert corr > 0.9
    assert t_ours < 1.5 * t_default


#: PruneGrad's target: at most this many times Gradient's time on the same inputs.
PRUNEGRAD_FACTOR = 3.0


@pytest.mark.parametrize("case", list(CASES))
def test_prunegrad_against_gradient(benchmark, case):
    """PruneGrad (scoring pass + pruned pass, batched) against the plain gradient, measured
    alternately in the same run, best of five each."""
    model, x, y = CASES[case]()
    explain(model, x[:8], y[:8], method="PruneGrad")  # warm-up
    explain(model, x[:8], y[:8], method="Gradient")
    prune, grad = [], []
    for _ in range(5):
        prune.append(_time_once(lambda: explain(model, x, y, method="PruneGrad")))
        grad.append(_time_once(lambda: explain(model, x, y, method="Gradient")))
    benchmark.pedantic(lambda: explain(model, x, y, method="PruneGrad"), rounds=1, iterations=1)
    ratio = min(prune) / min(grad)
    benchmark.extra_info.update(prunegrad_s=min(prune), gradient_s=min(grad), ratio=ratio)
    print(f"\n{case}: PruneGrad {min(prune) * 1000:.1f} ms, Gradient {min(grad) * 1000:.1f} ms "
          f"({ratio:.2f}x; target at most {PRUNEGRAD_FACTOR}x)")
    assert ratio <= PRUNEGRAD_FACTOR


@pytest.mark.parametrize("case", list(CASES))
def test_noise_ensembles_together(benchmark, case):
    """A method's three noise ensembles from one set of noisy maps (explain_ensembles)
    against three explain calls, in the same run; the maps are the same bit for bit.
    Target: the three together cost about one ensemble (under 0.5x the three calls)."""
    from quantus_roar.explainers import NOISE_TYPES, explain_ensembles

    model, x, y = CASES[case]()
    together = benchmark.pedantic(
        lambda: explain_ensembles(model, x, y, method="Gradient"), rounds=3, iterations=1)
    t_together = best_time(lambda: explain_ensembles(model, x, y, method="Gradient"))
    t_apart = best_time(lambda: [explain(model, x, y, method="Gradient", noise=n)
                                 for n in NOISE_TYPES])
    for noise in NOISE_TYPES:
        assert np.array_equal(together[noise], explain(model, x, y, method="Gradient",
                                                       noise=noise))
    ratio = t_together / t_apart
    benchmark.extra_info.update(together_s=t_together, apart_s=t_apart, ratio=ratio)
    print(f"\n{case}: Gradient's SmoothGrad, SmoothGrad² and VarGrad together "
          f"{t_together * 1000:.0f} ms, as three explain calls {t_apart * 1000:.0f} ms "
          f"({ratio:.2f}x; target under 0.5x)")
    assert ratio < 0.5
