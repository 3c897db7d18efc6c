"""The runner on a multi-process Ray cluster: a head node and a worker node started with
``ray start`` on 127.0.0.1, connected to by address, stopped at the end.

The drivers run in fresh processes, as a user's would (this test process may
have run an in-process Ray session already).
"""

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

pytestmark = [pytest.mark.slow, pytest.mark.ray]

CONFIG = dict(estimators=("Gradient", "Random"), percentages=(50,), retrains=2,
              metrics=("roar", "kar", "roar-noretrain"), device="cpu")


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    if ray.is_initialized():
        ray.shutdown()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    env = _env()
    port = _free_port()
    addr = f"127.0.0.1:{port}"
    # Two CPUs per node: two one-thread tasks at once on each.
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--disable-usage-stats"]
    try:
        subprocess.run([ray_cli, "start", "--head", f"--port={port}",
                        "--include-dashboard=false", *common],
                       env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([ray_cli, "start", f"--address={addr}", *common],
                       env=env, check=True, capture_output=True, timeout=120)
        yield addr
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_two_node_cluster_by_address_stores_every_cell_once(address, tmp_path):
    local = tmp_path / "local"
    run(RunConfig(**CONFIG), local, progress=False, report=False)

    out = tmp_path / "cluster"
    args = ["run", "--out", str(out), "--no-progress", "--device", "cpu", "--executor", "ray",
            "--ray-address", address, "--estimators", "Gradient,Random",
            "--percentages", "50", "--retrains", "2",
            "--metrics", "roar,kar,roar-noretrain"]
    done = subprocess.run([sys.executable, "-m", "quantus_roar", *args], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cells computed" in done.stdout
    with ResultStore.open_existing(out) as store:
        df = store.frame()
        expected = store.get_meta("expected_cells")
    keys = df.groupby(["metric", "estimator", "param", "seed"])
    # the shared baseline's 2 retrains, then per estimator ROAR and KAR at 50 % x 2
    # retrains and the deletion curve's 2 points
    assert len(keys) == expected == 2 + 2 * (2 * 1 * 2 + 2)
    assert not df.duplicated(["metric", "estimator", "param", "seed", "quantity"]).any()
    cluster = df.set_index(["metric", "estimator", "param", "seed", "quantity"])["value"]
    with ResultStore.open_existing(local) as store:
        reference = store.frame().set_index(
            ["metric", "estimator", "param", "seed", "quantity"])["value"]
    pd.testing.assert_series_equal(cluster, reference, check_exact=True)


_EXECUTOR_SCRIPT = """
import sys, ray
from quantus_roar.executors import RayExecutor
with RayExecutor(sys.argv[1]) as ex:
    nodes = len([n for n in ray.nodes() if n["Alive"]])
    data = ex.put(list(range(10)))
    ex.submit("sum", sum, data)
    ex.submit("max", max, data)
    results = {r.tag: r.value for r in ex.drain()}
    print(nodes, int(ray.cluster_resources()["CPU"]), results["sum"], results["max"])
print(ray.is_initialized())
"""


def test_ray_executor_connects_by_address_and_runs_tasks_on_it(address):
    done = subprocess.run([sys.executable, "-c", _EXECUTOR_SCRIPT, address], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # two alive nodes, four CPUs, both tasks' results; disconnected afterwards
    assert done.stdout.split() == ["2", "4", "45", "9", "False"]
