"""The runner on a multi-process Ray cluster: a head node and a worker node started with
``ray start`` on 127.0.0.1, connected to by address, stopped at the end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip(
    "ray", reason="the ray extra is not installed (pip install -e '.[ray]' or '.[dev]')")

from quantus_roar.benchmark import ResultStore, RunConfig, run  # noqa: E402
from quantus_roar.cli import main  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.ray]

CONFIG = dict(estimators=("Gradient", "Random"), percentages=(30, 70), retrains=2,
              metrics=("roar", "kar", "roar-noretrain"), device="cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    if ray.is_initialized():
        ray.shutdown()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    addr = f"127.0.0.1:{port}"
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run([ray_cli, "start", "--head", f"--port={port}",
                        "--include-dashboard=false", *common],
                       env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([ray_cli, "start", f"--address={addr}", *common],
                       env=env, check=True, capture_output=True, timeout=120)
        os.environ["RAY_AUTH_MODE"] = "disabled"
        yield addr
    finally:
        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
        os.environ.pop("RAY_AUTH_MODE", None)


def test_two_node_cluster_by_address_stores_every_cell_once(address, tmp_path, capsys):
    local = tmp_path / "local"
    run(RunConfig(**CONFIG), local, progress=False, report=False)

    out = tmp_path / "cluster"
    args = ["run", "--out", str(out), "--no-progress", "--device", "cpu", "--executor", "ray",
            "--ray-address", address, "--estimators", "Gradient,Random",
            "--percentages", "30,70", "--retrains", "2",
            "--metrics", "roar,kar,roar-noretrain"]
    assert main(args) == 0
    with ResultStore.open_existing(out) as store:
        df = store.frame()
        expected = store.get_meta("expected_cells")
    keys = df.groupby(["metric", "estimator", "param", "seed"])
    assert len(keys) == expected == 2 + 2 * (2 * 2 * 2 + 3)
    assert not df.duplicated(["metric", "estimator", "param", "seed", "quantity"]).any()
    cluster = df.set_index(["metric", "estimator", "param", "seed", "quantity"])["value"]
    with ResultStore.open_existing(local) as store:
        reference = store.frame().set_index(
            ["metric", "estimator", "param", "seed", "quantity"])["value"]
    pd.testing.assert_series_equal(cluster, reference)
    assert "cells computed" in capsys.readouterr().out


def test_ray_executor_connects_by_address_and_runs_tasks_on_it(address):
    from quantus_roar.executors import RayExecutor

    with RayExecutor(address) as ex:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        assert ray.cluster_resources()["CPU"] == 2
        data = ex.put(list(range(10)))
        ex.submit("sum", sum, data)
        ex.submit("max", max, data)
        assert {r.tag: r.value for r in ex.drain()} == {"sum": 45, "max": 9}
    assert not ray.is_initialized()  # the executor disconnected what it connected
