"""The Ray executor on a real in-process Ray cluster (``ray.init(num_cpus=2)``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip(
    "ray", reason="the ray extra is not installed (pip install -e '.[ray]' or '.[dev]')")

import ray_helpers  # noqa: E402
from ray import cloudpickle  # noqa: E402

from quantus_roar import KAR, ROAR, DataRandomisation, SmallCNN, TorchRetrainer, explain  # noqa: E402
from quantus_roar.benchmark import ResultStore, RunConfig, run  # noqa: E402
from quantus_roar.benchmark import runner as runner_module  # noqa: E402
from quantus_roar.curves import retrain_curve  # noqa: E402
from quantus_roar.data import load_digits_data  # noqa: E402
from quantus_roar.executors import RayExecutor  # noqa: E402
from quantus_roar.splits import Split  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SMALL = dict(estimators=("Gradient", "Random"), percentages=(50,), retrains=2,
             metrics=("roar", "kar", "roar-noretrain", "data-randomisation"),
             sanity_samples=40, max_epochs=24, min_train_accuracy=0.5, device="cpu")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    cloudpickle.register_pickle_by_value(ray_helpers)
    yield
    cloudpickle.unregister_pickle_by_value(ray_helpers)
    ray.shutdown()


@pytest.fixture(scope="module")
def digits():
    x_tr, y_tr, x_te, y_te = load_digits_data(seed=0)
    x_tr, y_tr = x_tr[:600], y_tr[:600]
    model = TorchRetrainer(SmallCNN(), epochs=4).fit(x_tr, y_tr, seed=0)
    return model, x_tr, y_tr, x_te, y_te


def _values(out) -> pd.Series:
    with ResultStore.open_existing(out) as store:
        df = store.frame()
    return df.set_index(["metric", "estimator", "param", "seed", "quantity"])["value"]


@pytest.mark.parametrize("ensemble", [True, False])
def test_roar_and_kar_on_ray_equal_the_local_executor(digits, ensemble):
    model, x_tr, y_tr, x_te, y_te = digits
    a_tr = explain(model, x_tr, y_tr, method="Gradient")
    a_te = explain(model, x_te, y_te, method="Gradient")
    retrainer = TorchRetrainer(SmallCNN(), epochs=4, ensemble=ensemble)
    for metric in (ROAR, KAR):
        kw = dict(percentages=(30, 70), n_retrains=2, retrainer=retrainer, disable_warnings=True)
        local = metric(**kw)
        on_ray = metric(**kw, executor="ray")
        assert on_ray(model, x_tr, y_tr, a_tr, x_test=x_te, y_test=y_te, a_test=a_te) == local(
            model, x_tr, y_tr, a_tr, x_test=x_te, y_test=y_te, a_test=a_te)
        cols = ["percentage", "retrain", "seed", "accuracy", "removed_fraction"]
        pd.testing.assert_frame_equal(on_ray.results[cols], local.results[cols])
    assert ray.is_initialized()  # the metric used the cluster it found and left it running


def test_tasks_follow_the_retrainers_batching(digits):
    from quantus_roar.tasks import task_groups, task_resources

    _, x_tr, *_ = digits
    jobs = list(range(6))
    assert task_groups(TorchRetrainer(SmallCNN()), jobs, x_tr[:2]) == [jobs]
    assert task_groups(TorchRetrainer(SmallCNN(), max_ensemble=4), jobs, x_tr[:2]) == [
        [0, 1, 2, 3], [4, 5]]
    assert task_groups(TorchRetrainer(SmallCNN(), ensemble=False), jobs, x_tr[:2]) == [
        [i] for i in jobs]
    assert task_resources(TorchRetrainer(SmallCNN(), device="cpu")) == {
        "num_cpus": 1, "num_gpus": 0}  # one thread per task


def test_data_randomisation_on_ray_equals_local(digits):
    model, x_tr, y_tr, x_te, y_te = digits
    kw = dict(retrainer=TorchRetrainer(SmallCNN(), epochs=4), min_train_accuracy=0.5,
              max_epochs=8, similarity=("spearman", "ssim"), disable_warnings=True)
    call = dict(x_test=x_te[:50], y_test=y_te[:50], explain_func=explain,
                explain_func_kwargs={"method": "Gradient"})
    local = DataRandomisation(**kw)
    on_ray = DataRandomisation(**kw, executor="ray")
    got, want = on_ray(model, x_tr, y_tr, **call), local(model, x_tr, y_tr, **call)
    assert got == want
    assert on_ray.train_accuracy == local.train_accuracy
    assert on_ray.test_accuracy == local.test_accuracy


def test_a_task_failing_on_every_retry_is_named(digits):
    class Broken(TorchRetrainer):
        def fit_score_many(self, jobs, *, progress=False):
            raise RuntimeError("injected failure")

    _, x_tr, y_tr, x_te, y_te = digits
    a = np.ones_like(x_tr)
    with RayExecutor(max_retries=1) as ex:
        with pytest.raises(RuntimeError, match=r"1 of 1 retraining task\(s\) failed.*"
                                               r"\(50.0, \d+\).*injected failure"):
            retrain_curve(Broken(SmallCNN(), epochs=1), Split(x_tr, y_tr, a),
                          Split(x_te, y_te, np.ones_like(x_te)), (50,), n_retrains=1,
                          executor=ex)


def test_runner_on_ray_equals_local_and_resumes_across_executors(tmp_path):
    local = tmp_path / "local"
    run(RunConfig(**SMALL), local, progress=False, report=False)
    mixed = tmp_path / "mixed"
    stop_after = []

    def stop(cells):
        stop_after.append(cells)
        if len(stop_after) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(RunConfig(**SMALL), mixed, progress=False, report=False, after_commit=stop)
    summary = run(RunConfig(**SMALL), mixed, progress=False, report=False, executor="ray")
    assert summary.skipped > 0 and not summary.failed
    resumed = _values(mixed)
    assert not resumed.index.duplicated().any()
    pd.testing.assert_series_equal(resumed, _values(local), check_exact=True)


def test_a_killed_worker_is_retried_and_nothing_is_lost_or_duplicated(tmp_path, monkeypatch,
                                                                      uninterrupted_small):
    marker = tmp_path / "killed-once"
    original = runner_module.retrain_task

    def kill_in_kar(ctx, ex, metric, estimator, keys):
        fn, args, finish = original(ctx, ex, metric, estimator, keys)
        if (metric, estimator) == ("kar", "Gradient"):
            return ray_helpers.kill_worker_once, (str(marker), *args), finish
        return fn, args, finish

    monkeypatch.setattr(runner_module, "retrain_task", kill_in_kar)
    out = tmp_path / "run"
    summary = run(RunConfig(**SMALL), out, progress=False, report=False, executor="ray")
    assert marker.exists(), "the worker was not killed"
    assert not summary.failed
    values = _values(out)
    assert not values.index.duplicated().any()
    pd.testing.assert_series_equal(values, _values(uninterrupted_small), check_exact=True)


def test_a_unit_that_keeps_failing_is_reported_and_the_others_are_stored(
        tmp_path, monkeypatch, uninterrupted_small, caplog):
    original = runner_module.retrain_task

    def fail_roar_random(ctx, ex, metric, estimator, keys):
        fn, args, finish = original(ctx, ex, metric, estimator, keys)
        if (metric, estimator) == ("roar", "Random"):
            return ray_helpers.always_fail, args, finish
        return fn, args, finish

    monkeypatch.setattr(runner_module, "retrain_task", fail_roar_random)
    out = tmp_path / "run"
    ex = RayExecutor(max_retries=1)
    summary = run(RunConfig(**SMALL), out, progress=False, report=True, executor=ex)
    assert [(m, e) for m, e, _ in summary.failed] == [("roar", "Random")]
    assert "injected failure" in summary.failed[0][2]
    assert "roar Random: retraining failed on every retry" in caplog.text
    values = _values(out)
    missing = values.index.droplevel(-1).isin([("roar", "Random", "50", s) for s in (0, 1)])
    assert not missing.any()
    reference = _values(uninterrupted_small)
    expected = reference[~reference.index.droplevel(-1).isin(
        [("roar", "Random", "50", s) for s in (0, 1)])]
    pd.testing.assert_series_equal(values, expected, check_exact=True)
    assert "cells stored of" in (out / "report.md").read_text()

    monkeypatch.setattr(runner_module, "retrain_task", original)
    again = run(RunConfig(**SMALL), out, progress=False, report=False, executor="ray")
    assert sorted(set(again.computed)) == [("roar", "Random", "50", s) for s in (0, 1)]
    pd.testing.assert_series_equal(_values(out), reference, check_exact=True)


@pytest.fixture(scope="module")
def uninterrupted_small(tmp_path_factory):
    out = tmp_path_factory.mktemp("small")
    run(RunConfig(**SMALL), out, progress=False, report=False)
    return out


def test_executor_errors():
    with pytest.raises(ValueError, match="'executor' parameter of ROAR"):
        ROAR(executor="spark", disable_warnings=True)
    with pytest.raises(ValueError, match="cannot be retrained on Ray"):
        run(RunConfig(**SMALL, stream=True), "unused", executor="ray")


def test_a_model_that_cannot_be_batched_runs_one_retrain_per_task(tmp_path):
    cfg = RunConfig(model="smallresnet", estimators=("Random",), percentages=(50,), retrains=2,
                    metrics=("roar",), epochs=2, device="cpu")
    commits: dict[str, list] = {"local": [], "ray": []}
    run(cfg, tmp_path / "local", progress=False, report=False, executor="local",
        after_commit=commits["local"].append)
    run(cfg, tmp_path / "ray", progress=False, report=False, executor="ray",
        after_commit=commits["ray"].append)
    # locally one commit per unit (baseline, roar); on Ray one per retrain (BatchNorm)
    assert [len(c) for c in commits["local"]] == [2, 2]
    assert sorted(len(c) for c in commits["ray"]) == [1, 1, 1, 1]
    pd.testing.assert_series_equal(_values(tmp_path / "ray"), _values(tmp_path / "local"),
                                   check_exact=True)
