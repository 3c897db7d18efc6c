"""The full default benchmark run: ``quantus-roar run`` with no arguments.

Run: ``pytest benchmarks/test_bench_runner.py -s`` (about ten minutes on two
CPU cores: the full run, then the baseline).

Target: the whole default grid on digits (17 estimators with the leakage
controls, ROAR, KAR and mask leakage at 5 percentages x 5 retrains,
no-retrain deletion, both sanity checks, the report's bootstrap) in under
10 minutes. Baselines, measured in the same run: the same grid of retrains
computed as a user would with the public metric, ``quantus_roar.ROAR`` /
``KAR`` called once per estimator (each call retrains its own unmodified
baseline), with attributions given; and (``test_diagnostics_overhead``) the
study without the diagnostics -- the 14 estimators of the paper's grid, no
mask leakage -- against which the diagnostics should add less than 30 %.
"""

from __future__ import annotations

import time

import torch

from quantus_roar import ESTIMATORS, KAR, ROAR, SmallCNN, TorchRetrainer, explain
from quantus_roar.benchmark import ResultStore, RunConfig, run
from quantus_roar.benchmark.config import METRICS
from quantus_roar.benchmark.runner import derived_seed
from quantus_roar.data import load_digits_data
from quantus_roar.explainers import predicted_classes

TARGET_S = 600


def _metric_grid() -> float:
    x_tr, y_tr, x_te, y_te = load_digits_data(seed=0)
    retrainer = TorchRetrainer(SmallCNN())
    model = retrainer.fit(x_tr, y_tr, seed=derived_seed(0, 1))
    start = time.perf_counter()
    for name in ESTIMATORS:
        a_tr = explain(model, x_tr, predicted_classes(model, x_tr), method=name)
        a_te = explain(model, x_te, predicted_classes(model, x_te), method=name)
        for metric in (ROAR, KAR):
            metric(retrainer=retrainer, disable_warnings=True)(
                model, x_tr, y_tr, a_tr, x_test=x_te, y_test=y_te, a_test=a_te)
    return time.perf_counter() - start


def test_full_default_run_under_ten_minutes(benchmark, tmp_path):
    torch.set_num_threads(2)
    out = tmp_path / "roar-results"
    summary = benchmark.pedantic(lambda: run(RunConfig(), out, progress=False), rounds=1,
                                 iterations=1)
    wall = summary.wall_s
    with ResultStore.open_existing(out) as store:
        df = store.frame()
        expected = store.get_meta("expected_cells")
    retrains = int(((df.metric.isin(["roar", "kar", "baseline"])) &
                    (df.quantity == "accuracy")).sum())
    by_metric = df.groupby(["metric", "estimator", "param", "seed"])["wall_s"].first() \
        .groupby("metric").sum()
    t_metrics = _metric_grid()
    benchmark.extra_info.update(wall_s=wall, cells=expected, retrains=retrains,
                                metric_grid_s=t_metrics, **{f"cells_{k}_s": float(v)
                                                            for k, v in by_metric.items()})
    print(f"\nfull default run: {wall:.0f} s wall ({wall / 60:.1f} min, target "
          f"{TARGET_S / 60:.0f} min), {expected} cells, {retrains} retrains")
    for metric, seconds in by_metric.items():
        print(f"  {metric:<22} {seconds:7.1f} s in cells")
    print(f"baseline: ROAR + KAR metrics per estimator (retraining and explaining only) "
          f"{t_metrics:.0f} s")
    assert len(df.groupby(["metric", "estimator", "param", "seed"])) == expected
    assert wall < TARGET_S


# The paper's grid: the study before the leakage diagnostics.
_PAPER_ESTIMATORS = tuple(e for e in ESTIMATORS if e not in ("InputMagnitude", "BlurredRandom"))
_PAPER_METRICS = tuple(m for m in METRICS if m != "mask-leakage")


def test_diagnostics_overhead(benchmark, tmp_path):
    torch.set_num_threads(2)
    full = benchmark.pedantic(lambda: run(RunConfig(), tmp_path / "full", progress=False),
                              rounds=1, iterations=1).wall_s
    plain = run(RunConfig(estimators=_PAPER_ESTIMATORS, metrics=_PAPER_METRICS),
                tmp_path / "plain", progress=False).wall_s
    benchmark.extra_info.update(full_s=full, without_diagnostics_s=plain, ratio=full / plain)
    print(f"\ndefault study {full:.0f} s; without leakage and the three controls {plain:.0f} s: "
          f"the diagnostics add {100 * (full / plain - 1):.0f} % (target: under 30 %)")
    assert full < TARGET_S
