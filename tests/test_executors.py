"""Executors without a cluster: the local executor, and the error when Ray is missing."""

from __future__ import annotations

import sys

import pytest

from quantus_roar import ROAR
from quantus_roar.executors import LocalExecutor, RayExecutor, TaskResult, get_executor


def _div(a: float, b: float) -> float:
    return a / b


def test_local_executor_reports_results_and_errors_by_tag():
    with LocalExecutor() as ex:
        assert ex.put([1, 2]) == [1, 2]
        ex.submit("ok", _div, 1.0, 4.0)
        ex.submit("bad", _div, 1.0, 0.0)
        assert ex.pending == 2
        results = {r.tag: r for r in ex.drain()}
        assert ex.pending == 0 and ex.poll() == []
    assert results["ok"] == TaskResult("ok", 0.25)
    assert not results["bad"].ok and isinstance(results["bad"].error, ZeroDivisionError)


def test_local_executor_lets_keyboard_interrupt_through():
    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        LocalExecutor().submit("x", interrupt)


def test_asking_for_ray_without_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'quantus-roar\[ray\]'"):
        RayExecutor()
    with pytest.raises(ImportError, match=r"pip install 'quantus-roar\[ray\]'"):
        get_executor("ray")
    with pytest.raises(ImportError, match=r"pip install 'quantus-roar\[ray\]'"):
        ROAR(executor="ray", disable_warnings=True)  # at construction, before any work


def test_executor_names():
    assert isinstance(get_executor(None), LocalExecutor)
    ex = LocalExecutor()
    assert get_executor(ex) is ex
    with pytest.raises(ValueError, match="Unknown executor 'dask'"):
        get_executor("dask")
    with pytest.raises(ValueError, match="executor is not 'ray'"):
        get_executor("local", address="127.0.0.1:6379")
