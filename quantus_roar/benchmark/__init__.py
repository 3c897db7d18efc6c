"""The benchmark runner: the grid of Hooker et al. from one call, resumable, with a report.

>>> from quantus_roar.benchmark import RunConfig, run
>>> run(RunConfig.quick(), "roar-results")          # doctest: +SKIP

or from the shell, ``quantus-roar run --quick``.
"""

from quantus_roar.benchmark.config import METRICS, RunConfig
from quantus_roar.benchmark.datasets import BenchmarkData, DatasetError, load_dataset
from quantus_roar.benchmark.report import build_report
from quantus_roar.benchmark.runner import RunSummary, run
from quantus_roar.benchmark.store import Cell, ConfigMismatchError, ResultStore

__all__ = [
    "METRICS",
    "BenchmarkData",
    "Cell",
    "ConfigMismatchError",
    "DatasetError",
    "ResultStore",
    "RunConfig",
    "RunSummary",
    "build_report",
    "load_dataset",
    "run",
]
