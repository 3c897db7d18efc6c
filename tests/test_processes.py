"""The process executor: worker processes of one thread each, the thread policy, and the
same numbers for any number of workers and on every executor."""

from __future__ import annotations

import numpy as np
import pandas as pd
import process_helpers
import pytest
import torch

from quantus_roar import ROAR, SmallCNN, TorchRetrainer, explain
from quantus_roar.benchmark import RunConfig, run
from quantus_roar.benchmark.config import fingerprint
from quantus_roar.curves import retrain_curve
from quantus_roar.data import load_digits_data
from quantus_roar.executors import (
    LocalExecutor,
    ProcessExecutor,
    get_executor,
    one_thread,
    usable_cores,
)
from quantus_roar.splits import Split

pytestmark = pytest.mark.slow

SMALL = dict(estimators=("Gradient", "Random"), percentages=(30, 70), retrains=2,
             metrics=("roar", "kar", "mask-leakage", "roar-noretrain"), epochs=6, device="cpu")


def _csv(out) -> str:
    """``results.csv`` without its compute times: every key and value, as written."""
    return pd.read_csv(out / "results.csv", dtype=str).drop(columns="wall_s").to_csv()


def test_workers_have_one_thread_are_warm_and_get_shared_memory():
    with ProcessExecutor(workers=2) as ex:
        handle = ex.put(torch.arange(6.0))
        for i in range(4):
            ex.submit(i, process_helpers.worker_state, handle)
        states = [r.value for r in ex.drain()]
    assert {s["threads"] for s in states} == {1}
    assert all(s["removal_loaded"] and s["shared"] and s["sum"] == 15.0 for s in states)
    assert len({s["pid"] for s in states}) <= 2  # started once, reused


def test_errors_are_reported_per_task_and_a_dead_worker_is_replaced(tmp_path):
    with ProcessExecutor(workers=2, max_retries=1) as ex:
        ex.submit("ok", process_helpers.divide, 1.0, 4.0)
        ex.submit("bad", process_helpers.divide, 1.0, 0.0)
        ex.submit("dies", process_helpers.die_once, str(tmp_path / "marker"))
        results = {r.tag: r for r in ex.drain()}
    assert results["ok"].value == 0.25
    assert isinstance(results["bad"].error, ZeroDivisionError)
    assert results["dies"].value == "survived"  # retried on a new worker
    with ProcessExecutor(workers=1, max_retries=0) as ex:
        ex.submit("dies", process_helpers.die_once, str(tmp_path / "other"))
        (result,) = ex.drain()
    assert not result.ok and "its worker process died" in str(result.error)


def test_bad_workers_and_names_fail_before_any_work(tmp_path):
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="'workers' parameter of ProcessExecutor"):
            ProcessExecutor(workers=bad)
    from quantus_roar.cli import main

    assert main(["run", "--quick", "--out", str(tmp_path / "never"), "--workers", "0"]) == 2
    assert main(["run", "--quick", "--out", str(tmp_path / "never"), "--workers", "2",
                 "--executor", "local"]) == 2
    assert not (tmp_path / "never").exists()
    assert ProcessExecutor().workers == usable_cores()
    assert isinstance(get_executor("processes", workers=3), ProcessExecutor)


def test_a_factory_that_does_not_pickle_is_named_before_any_work(tmp_path):
    cfg = RunConfig(**SMALL, model=process_helpers.make_lambda_factory())
    with pytest.raises(ValueError, match=r"cannot be pickled.*importable module"):
        run(cfg, tmp_path / "asked", executor="processes", progress=False)
    assert not (tmp_path / "asked").exists()  # checked before the folder is touched
    # By default the run falls back to this process, says so, and gives the same numbers.
    small = RunConfig(**{**SMALL, "metrics": ("roar",)}, model=cfg.model)
    with pytest.warns(UserWarning, match="Retraining in this process instead"):
        run(small, tmp_path / "default", progress=False)
    run(RunConfig(**{**SMALL, "metrics": ("roar",)}), tmp_path / "named", progress=False)
    assert _csv(tmp_path / "default") == _csv(tmp_path / "named")


def test_the_thread_policy_is_in_the_fingerprint_and_holds_on_the_local_executor():
    _, description = fingerprint(RunConfig(**SMALL), "d", "cpu")
    assert description["threads"] == 1
    assert description["models_per_task"] == 8  # the grouping of a curve's retrains
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        ex = LocalExecutor()
        ex.submit("t", torch.get_num_threads)
        assert ex.drain()[0].value == 1 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_results_are_identical_for_any_number_of_workers_and_the_local_executor(tmp_path):
    outs = {"local": tmp_path / "local"}
    run(RunConfig(**SMALL), outs["local"], progress=False, executor="local")
    for n in (1, 2, 3):
        outs[f"w{n}"] = tmp_path / f"w{n}"
        with ProcessExecutor(workers=n) as ex:
            run(RunConfig(**SMALL), outs[f"w{n}"], progress=False, executor=ex)
    reference = _csv(outs["local"])
    assert len(pd.read_csv(outs["local"] / "results.csv")) > 20
    for name in ("w1", "w2", "w3"):
        assert _csv(outs[name]) == reference, name


def test_the_metric_on_worker_processes_equals_the_local_executor():
    x_tr, y_tr, x_te, y_te = load_digits_data(seed=0)
    x_tr, y_tr = x_tr[:400], y_tr[:400]
    model = TorchRetrainer(SmallCNN(), epochs=3).fit(x_tr, y_tr, seed=0)
    a_tr = explain(model, x_tr, y_tr, method="Gradient")
    a_te = explain(model, x_te, y_te, method="Gradient")
    kw = dict(percentages=(50,), n_retrains=5)  # 10 jobs: two tasks of five models
    retrainer = TorchRetrainer(SmallCNN(), epochs=3)
    local = retrain_curve(retrainer, Split(x_tr, y_tr, a_tr), Split(x_te, y_te, a_te), **kw)
    procs = retrain_curve(retrainer, Split(x_tr, y_tr, a_tr), Split(x_te, y_te, a_te),
                          executor="processes", **kw)
    assert local["accuracy"].tolist() == procs["accuracy"].tolist()
    scores = ROAR(percentages=(50,), n_retrains=2, retrainer=retrainer, executor="processes",
                  disable_warnings=True)(model, x_te, y_te, a_te)
    assert isinstance(scores, dict)


def test_a_curve_is_split_into_the_same_tasks_on_every_executor():
    """A curve's ensemble is split by a rule of the retrainer and the jobs alone
    (curve_groups), so worker processes share it and every executor trains the same
    groups; for a model without dropout or augmentation (SmallCNN), ensembles of two or
    more models train each model with the same bits."""
    from quantus_roar.tasks import CPU_MODELS_PER_TASK, curve_groups, task_groups

    x_tr, y_tr, _, _ = load_digits_data(seed=0)
    x_tr, y_tr = x_tr[:300], y_tr[:300]
    cnn = TorchRetrainer(SmallCNN())
    for n in (1, 2, 8, 9, 17, 30):
        groups = task_groups(cnn, list(range(n)), x_tr[:2])
        assert [i for g in groups for i in g] == list(range(n))  # in order, each once
        assert len(groups) == -(-n // CPU_MODELS_PER_TASK)
        assert max(map(len, groups)) - min(map(len, groups)) <= 1
        assert min(map(len, groups)) >= min(n, 2)
        assert curve_groups(cnn, list(range(n)), x_tr[:2], local=True) == groups
    assert task_groups(cnn, list(range(30)), x_tr[:2]) == [
        list(range(0, 7)), list(range(7, 15)), list(range(15, 22)), list(range(22, 30))]
    capped = TorchRetrainer(SmallCNN(), max_ensemble=4)
    assert task_groups(capped, list(range(6)), x_tr[:2]) == [[0, 1, 2, 3], [4, 5]]
    single = TorchRetrainer(SmallCNN(), ensemble=False)
    assert task_groups(single, list(range(3)), x_tr[:2]) == [[0], [1], [2]]
    assert curve_groups(single, list(range(3)), x_tr[:2], local=True) == [[0, 1, 2]]
    jobs = [(x_tr, y_tr, None, None, s) for s in range(6)]
    with one_thread():
        models = {size: TorchRetrainer(SmallCNN(), epochs=2, max_ensemble=size).fit_many(jobs)
                  for size in (6, 4, 2)}
    for size in (4, 2):
        for a, b in zip(models[6], models[size], strict=True):
            assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(),
                                                         strict=True)), size


def test_results_come_back_by_value_and_odd_errors_are_named():
    with ProcessExecutor(workers=1, max_retries=0) as ex:
        ex.submit("t", process_helpers.a_tensor)
        ex.submit("e", process_helpers.raise_needs_two)
        results = {r.tag: r for r in ex.drain()}
    assert torch.equal(results["t"].value, torch.arange(4.0))
    assert not results["t"].value.is_shared()  # not a handle into the worker's memory
    assert isinstance(results["e"].error, RuntimeError)
    assert "NeedsTwo: 1 and 2" in str(results["e"].error)


def test_a_worker_killed_while_idle_is_replaced_at_the_next_submit():
    import os
    import signal
    import time

    with ProcessExecutor(workers=1, max_retries=0) as ex:
        ex.submit(0, process_helpers.worker_state, ex.put(torch.ones(2)))
        (first,) = ex.drain()
        os.kill(first.value["pid"], signal.SIGKILL)
        time.sleep(1.0)  # the pool notices its dead worker
        ex.submit(1, process_helpers.divide, 3.0, 2.0)
        (second,) = ex.drain()
    assert second.ok and second.value == 1.5


def test_close_ends_running_tasks_at_once():
    import time

    ex = ProcessExecutor(workers=1)
    ex.submit("long", process_helpers.sleep_for, 60.0)
    time.sleep(3.0)  # started
    start = time.perf_counter()
    ex.close()
    assert time.perf_counter() - start < 10 and ex.pending == 0


def test_classes_of_an_interactive_session_are_refused_before_any_work(monkeypatch):
    import sys
    import types

    from quantus_roar.executors import check_picklable

    fake_main = types.ModuleType("__main__")  # a notebook's: no __file__

    class Typed:  # defined "in the notebook"
        pass

    Typed.__module__, Typed.__qualname__ = "__main__", "Typed"
    fake_main.Typed = Typed
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    with pytest.raises(ValueError, match=r"\['Typed'\] defined in an interactive session"):
        check_picklable(Typed(), "the retrainer")
    check_picklable(SmallCNN(), "the retrainer")  # importable: fine


def test_the_default_executor_keeps_gpu_retrainers_in_this_process():
    from quantus_roar.benchmark.runner import _executor

    recipe_free = {k: v for k, v in SMALL.items() if k != "epochs"}
    cfg = RunConfig(**recipe_free, retrainer=process_helpers.GpuRetrainer())
    assert isinstance(_executor(cfg, None, None, lambda: None, torch.device("cpu")),
                      LocalExecutor)


_SCRIPT = """
import json, operator, os, sys
from pathlib import Path

MARKS = Path(sys.argv[1])
(MARKS / str(os.getpid())).touch()  # every process that runs this script leaves a mark


def from_script(x):
    return x + 1


def main():
    from quantus_roar.executors import ProcessExecutor

    def marks():
        return len(list(MARKS.iterdir()))

    out = {}
    with ProcessExecutor(workers=2) as ex:
        for i in range(4):
            ex.submit(("plain", i), operator.add, i, 10)
        out["plain"] = sorted(r.value for r in ex.drain())
        out["marks after plain"] = marks()
        ex.submit("plain again", operator.add, 1, 1)
        ex.submit("from the script", from_script, 1)  # waits for workers with the script
        ex.submit("plain after", operator.add, 2, 2)  # waits behind it
        out["pending"] = ex.pending
        out["mixed"] = sorted([str(r.tag), r.value] for r in ex.drain())
        ex.submit("plain last", operator.add, 3, 3)  # the workers with the script stay
        out["last"] = [r.value for r in ex.drain()]
        out["marks after mixed"] = marks()
    with ProcessExecutor(workers=1) as ex:
        ex.submit("first from the script", from_script, 5)
        out["first"] = [r.value for r in ex.drain()]
        out["marks after first"] = marks()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
"""


def test_workers_run_the_parents_script_only_when_a_task_needs_it(tmp_path):
    """spawn re-runs the parent's script in every worker; tasks that need nothing from it
    skip that, a task that does gets workers that ran it, after the others are done."""
    import json
    import subprocess
    import sys

    script, marks = tmp_path / "script.py", tmp_path / "marks"
    script.write_text(_SCRIPT)
    marks.mkdir()
    done = subprocess.run([sys.executable, str(script), str(marks)], check=True,
                          capture_output=True, text=True, timeout=300)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["plain"] == [10, 11, 12, 13]
    assert out["marks after plain"] == 1  # the parent alone: no worker ran the script
    assert out["pending"] == 3
    assert out["mixed"] == [["from the script", 2], ["plain after", 4], ["plain again", 2]]
    assert out["last"] == [6]
    assert out["marks after mixed"] >= 2  # the new worker ran it
    assert out["first"] == [6]
    assert out["marks after first"] == out["marks after mixed"] + 1


def test_only_tasks_that_refer_to_main_need_it(monkeypatch):
    import sys

    from quantus_roar.executors import _needs_main

    big = torch.zeros(1000)
    assert not _needs_main(process_helpers.divide, (1.0, 2.0))
    assert not _needs_main(process_helpers.worker_state, (big,))
    assert not _needs_main(process_helpers.divide, (SmallCNN(), big.numpy()))
    marker = type("Marker", (), {"__module__": "__main__"})
    monkeypatch.setattr(sys.modules["__main__"], "Marker", marker, raising=False)
    assert _needs_main(process_helpers.divide, ([1, {"deep": marker()}],))  # nested
    assert _needs_main(marker, ())
    lost = type("Lost", (), {"__module__": "__main__"})  # not findable: not for us to judge
    assert _needs_main(process_helpers.divide, (lost,))
    # The name "__main__" pickled before the references (memoised: no literal string)
    assert _needs_main(process_helpers.divide, ("__main__", [marker(), marker()]))
    assert not _needs_main(process_helpers.divide, ("__main__", big.numpy().view(np.memmap)))


def test_workers_run_the_script_where_processes_are_not_launched_by_posix_spawn(monkeypatch):
    import multiprocessing

    from quantus_roar import executors

    monkeypatch.setattr(executors.os, "name", "nt")
    assert executors._popen_without_main.__wrapped__() is None
    monkeypatch.setattr(executors, "_popen_without_main", lambda: None)
    assert executors._spawn_context(False) is multiprocessing.get_context("spawn")
