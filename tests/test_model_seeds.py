"""Repeats over the explained model (``model_seeds``), the leakage seeds, the model-free
estimators' sanity checks and the intervals of the sanity checks and random-label model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from quantus_roar import stats as st
from quantus_roar.benchmark import RunConfig, run
from quantus_roar.benchmark.config import fingerprint
from quantus_roar.benchmark.report import _accuracy_rows, _auc_per_seed, model_seed_table
from quantus_roar.benchmark.store import ResultStore
from quantus_roar.explainers import model_free

pytestmark = pytest.mark.slow

TINY = dict(estimators=("Gradient", "Random", "Sobel"), percentages=(50,), retrains=2,
            metrics=("roar", "data-randomisation"), sanity_samples=30, max_epochs=16,
            min_train_accuracy=0.5, epochs=4, device="cpu")


def _frame(out: Path) -> pd.DataFrame:
    with ResultStore.open_existing(out) as store:
        return store.frame()


def _values(out: Path) -> pd.Series:
    return _frame(out).set_index(["metric", "estimator", "param", "seed", "quantity"])["value"]


@pytest.fixture(scope="module")
def repeated(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("repeated")
    return out, run(RunConfig(**TINY, model_seeds=2), out, progress=False)


def test_a_repeat_is_the_run_with_the_next_model_seed(repeated, tmp_path):
    out, summary = repeated
    sub = out / "model-seeds" / "1"
    assert len(summary.repeats) == 1 and summary.repeats[0].out == sub
    # The repeat equals a run given model_seed=1 directly, bit for bit...
    run(RunConfig(**TINY, model_seed=1), tmp_path, progress=False, report=False)
    pd.testing.assert_series_equal(_values(sub).sort_index(), _values(tmp_path).sort_index())
    # ... on the same data, with another model: Gradient's ROAR cells differ.
    with ResultStore.open_existing(out) as a, ResultStore.open_existing(sub) as b:
        assert a.get_meta("run")["data_digest"] == b.get_meta("run")["data_digest"]
    main_v, rep_v = _values(out), _values(sub)
    key = ("roar", "Gradient", "50", 0, "accuracy")
    assert main_v[key] != rep_v[key]
    # Resuming computes nothing, in the run and in its repeat.
    again = run(RunConfig(**TINY, model_seeds=2), out, progress=False, report=False)
    assert again.computed == [] and again.repeats[0].computed == []


def test_the_report_has_each_model_seed_and_an_independent_t_interval(repeated):
    out, _ = repeated
    report = (out / "report.md").read_text()
    assert "## Repeats over the explained model" in report and "model seeds 0, 1" in report
    frames = {0: _frame(out), 1: _frame(out / "model-seeds" / "1")}
    table, rho, _ = model_seed_table(frames, "roar", ["Gradient", "Random", "Sobel"])
    auc = {s: _auc_per_seed(_accuracy_rows(f, "roar")).groupby("estimator")["auc"].mean()
           for s, f in frames.items()}
    row = table.set_index("estimator").loc["Gradient"]
    a = np.array([auc[0]["Gradient"], auc[1]["Gradient"]])
    half = sps.t.ppf(0.975, 1) * a.std(ddof=1) / math.sqrt(2)
    expected = f"{a.mean():.3f} [{max(0, a.mean() - half):.3f}, {min(1, a.mean() + half):.3f}]"
    assert row["mean [95 % t-interval]"] == expected
    assert row["model seed 0"] == f"{a[0]:.3f}" and row["model seed 1"] == f"{a[1]:.3f}"
    expected_rho = np.mean([sps.spearmanr([auc[0][e] for e in table["estimator"]],
                                          [auc[1][e] for e in table["estimator"]]).statistic])
    assert rho == pytest.approx(expected_rho)


def test_model_seeds_stay_out_of_the_fingerprint_and_model_seed_in_it():
    base = fingerprint(RunConfig(**TINY), "d", "cpu")[0]
    assert fingerprint(RunConfig(**TINY, model_seeds=3), "d", "cpu")[0] == base
    assert fingerprint(RunConfig(**TINY, model_seed=1), "d", "cpu")[0] != base
    assert RunConfig(**TINY, model_seed=7).pipeline_seed == 7
    assert RunConfig(**TINY, seed=5).repeat(2).model_seed == 7
    assert RunConfig(**TINY, seed=2**32 - 1).repeat(1).model_seed == 0
    for bad in (0, -1, 1.5, True):
        with pytest.raises((ValueError, TypeError), match="model_seeds"):
            RunConfig(**TINY, model_seeds=bad)


def test_the_flags_reach_the_config(tmp_path, monkeypatch):
    from quantus_roar import cli
    from quantus_roar.benchmark.runner import RunSummary

    seen = {}

    def fake_run(config, out, **kwargs):
        seen["config"] = config
        return RunSummary(Path(out))

    monkeypatch.setattr("quantus_roar.benchmark.runner.run", fake_run)
    cli.main(["run", "--quick", "--out", str(tmp_path), "--model-seeds", "3",
              "--leakage-retrains", "1", "--model-seed", "9", "--no-progress"])
    cfg = seen["config"]
    assert (cfg.model_seeds, cfg.leakage_retrains, cfg.model_seed) == (3, 1, 9)


def test_sanity_checks_skip_model_free_estimators_and_carry_intervals(repeated):
    out, _ = repeated
    df = _frame(out)
    dr = df[df.metric == "data-randomisation"]
    assert set(dr.estimator) == {"Gradient", "-"}  # Random and Sobel: 1 by construction
    assert model_free("Random") and model_free("Sobel") and not model_free("Gradient")
    v = dr[dr.estimator == "Gradient"].set_index(["param", "quantity"])["value"]
    for step in ("random_labels", "floor", "ceiling"):
        lo, mean, hi = (v[(step, q)] for q in ("spearman_abs.lo", "spearman_abs",
                                                "spearman_abs.hi"))
        assert lo < mean < hi and hi - lo < 0.5
    report = (out / "report.md").read_text()
    assert "Not computed for the model-free estimators (Random, Sobel)" in report
    with ResultStore.open_existing(out) as store:
        sizes = store.get_meta("sizes")
    test_acc = float(dr[dr.quantity == "test_accuracy"]["value"].iloc[0])
    lo, hi = st.wilson_interval(round(test_acc * sizes["test"]), sizes["test"])
    assert f"scores {test_acc:.3f} [95 % interval {lo:.3f}, {hi:.3f}; n = {sizes['test']}]" \
        in report


def test_leakage_seeds_default_to_two_and_follow_the_setting():
    assert RunConfig(**TINY).leakage_seeds == 2
    assert RunConfig(**{**TINY, "retrains": 5}).leakage_seeds == 2
    assert RunConfig(**{**TINY, "retrains": 5}, leakage_retrains=4).leakage_seeds == 4
    assert RunConfig(**{**TINY, "retrains": 1}, leakage_retrains=4).leakage_seeds == 1
