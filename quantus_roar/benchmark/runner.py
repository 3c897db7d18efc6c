"""The benchmark grid: estimators x metrics x percentages (or layers) x seeds.

:func:`run` loads the data, trains the model to explain, computes every
estimator's attributions once (cached as ``.npy`` in the output folder) and
then works through *units*: groups of cells computed together (all retrains of
one estimator's ROAR curve, one deletion curve, one estimator's sanity
check). Each unit's cells go into the :class:`~.store.ResultStore` in one
transaction as soon as the unit finishes, and a unit whose cells are all
stored is skipped, so an interrupted run resumes where it stopped.

Seeds: the ROAR and KAR retrains use :func:`quantus_roar.splits.retrain_seeds`
of the run's seed (the seeds :class:`quantus_roar.ROAR` uses), shared by every
estimator and percentage; the unmodified baseline (0 % removed for ROAR,
100 % kept for KAR) is trained once with them and shared by both. All other seeds (the explained
model, the sanity checks) derive from the run's seed through
``numpy.random.SeedSequence`` with fixed spawn keys.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from quantus_roar._io import disk_error, write_text
from quantus_roar.benchmark.config import RunConfig, file_name, fingerprint
from quantus_roar.benchmark.context import RunContext, own_dir
from quantus_roar.benchmark.datasets import BenchmarkData, load_dataset
from quantus_roar.benchmark.specs import (
    checked_model_factory,
    explainer,
    import_factory,
    probe_explainers,
    recipe_retrainer,
)
from quantus_roar.benchmark.store import (
    REPEATS,
    STAGING_PREFIX,
    Cell,
    Key,
    OutputFolder,
    ResultStore,
    Samples,
)
from quantus_roar.benchmark.units import Unit, plan, retrain_task
from quantus_roar.exceptions import QuantusRoarWarning
from quantus_roar.executors import (
    Executor,
    LocalExecutor,
    ProcessExecutor,
    RayExecutor,
    check_picklable,
    get_executor,
    one_thread,
)
from quantus_roar.sanity import (
    derived_seed,
)
from quantus_roar.tasks import curve_groups, task_resources

__all__ = ["RunSummary", "derived_seed", "file_name", "probe_explainers", "run"]

logger = logging.getLogger("quantus_roar.benchmark")

#: The phase of the time spent in a unit computed in this process, by metric.
_PHASES = {"roar-noretrain": "deletion", "kar-noretrain": "deletion", "pixel-flipping": "deletion",
           "model-randomisation": "randomisation", "data-randomisation": "randomisation"}



@dataclass
class RunSummary:
    """What a call of :func:`run` did.

    Attributes
    ----------
    out : Path
    computed : list of tuple
        Keys (metric, estimator, param, seed) computed by this call.
    skipped : int
        Cells found already stored and not recomputed.
    wall_s : float
        Seconds of the call before the report (every phase in ``report.md``).
    report_s : float
        Seconds spent building the report (0 without one).
    failed : list of (metric, estimator, error)
        Retraining tasks that failed on every retry; their cells are missing
        and a rerun computes them.
    repeats : list of RunSummary
        The repeats over the explained model (``model_seeds``), in order.
    """

    out: Path
    computed: list[Key] = field(default_factory=list)
    skipped: int = 0
    wall_s: float = 0.0
    report_s: float = 0.0
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    repeats: list[RunSummary] = field(default_factory=list)


# --------------------------------------------------------------------------- run


def _resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"The 'device' setting must be 'cpu', 'cuda' or 'cuda:N'. Got "
                         f"{device!r} ({err}).") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for, but torch sees no CUDA device. Use "
                         "--device cpu.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device} was asked for, but torch sees "
                         f"{torch.cuda.device_count()} CUDA device(s) (cuda:0 to "
                         f"cuda:{torch.cuda.device_count() - 1}).")
    return dev


def _load_streamed(config: RunConfig, out: Path) -> tuple[BenchmarkData, Path]:
    """Streamed data written into a new staging folder of ``out`` (moved into ``cache/data``
    once every check passed, so a failing load leaves the folder as it was)."""
    try:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    except OSError as err:
        raise disk_error(err, out, "create a folder in") from err
    try:
        data = load_dataset(config.dataset, seed=config.seed, cache=staging,
                            image_size=config.image_size)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return data, staging


def _move_staged(data: BenchmarkData, staging: Path, out: Path) -> None:
    """Move the streamed data from ``staging`` to ``out/cache/data`` and reopen it there."""
    target = own_dir(out / "cache" / "data")
    try:
        for name in ("x_train.npy", "x_test.npy"):
            os.replace(staging / name, target / name)
    except OSError as err:
        raise disk_error(err, target) from err
    data.x_train = np.load(target / "x_train.npy", mmap_mode="r")
    data.x_test = np.load(target / "x_test.npy", mmap_mode="r")


def _summary_lines(cells: list[Cell]) -> list[str]:
    """One line per finished cell: its key, every quantity measured, its compute time."""
    by_key: dict[Key, list[Cell]] = {}
    for cell in cells:
        by_key.setdefault(cell.key, []).append(cell)
    return [f"{metric:<20} {estimator:<38} {param:>18} seed {seed}: "
            + " ".join(f"{c.quantity} {c.value:.4f}" for c in group)
            + f" ({group[0].wall_s:.2f} s)"
            for (metric, estimator, param, seed), group in by_key.items()]


def run(
    config: RunConfig,
    out: str | Path = "roar-results",
    *,
    fresh: bool = False,
    progress: bool = True,
    report: bool = True,
    executor: str | Executor | None = None,
    ray_address: str | None = None,
    after_commit: Callable[[list[Cell]], None] | None = None,
) -> RunSummary:
    """Run (or resume) the benchmark of ``config`` into the folder ``out``.

    Parameters
    ----------
    config : RunConfig
    out : path, default "roar-results"
        Output folder: ``results.sqlite``, cached attributions and model
        weights, and the report. It must be missing, empty, or a run's (marked
        by a ``.quantus-roar`` file); while the run works it holds an exclusive
        lock on ``out/.lock``.
    fresh : bool, default False
        Delete the files runs write in the folder (store, caches, report,
        figures) first, once every setting, the data and the model factory
        have been checked; files that runs do not write stay.
    progress : bool, default True
        Progress bars (stderr). One line per finished cell -- its key, values
        and compute time -- goes to the logger ``quantus_roar.benchmark`` at
        level INFO (``quantus-roar run --verbose`` shows them).
    report : bool, default True
        Write the report at the end.
    executor : {None, "processes", "local", "ray"} or quantus_roar.executors.Executor
        Where the ROAR / KAR retraining runs. ``None`` or ``"processes"``:
        every unit of retrains is a task of worker processes, one per usable
        core (pass ``quantus_roar.executors.ProcessExecutor(workers=N)`` for
        another count, and close it when done) while this process
        computes attributions, deletion curves and sanity checks, and stores
        each unit as its task finishes; ``"local"``: all in this process;
        ``"ray"``: tasks on a Ray cluster. Every task and this process compute
        with one torch thread (the thread policy of
        :mod:`quantus_roar.executors`, recorded in the fingerprint), so the
        numbers are the same, bit for bit, on every executor and for any number
        of workers, whatever the machine's core count. Not part of the
        fingerprint: a run may switch executors and resume. A retrainer on a
        GPU trains here by default (one model at a time, as before).
    ray_address : str, optional
        Address of the Ray cluster (``executor="ray"``); default: the cluster
        ``ray.init`` already connected to, else a local one.
    after_commit : callable, optional
        Called with the cells of each unit right after they are committed.

    Returns
    -------
    RunSummary

    Raises
    ------
    quantus_roar.benchmark.ConfigMismatchError
        If ``out`` holds results of another configuration (and not ``fresh``).
    quantus_roar.benchmark.store.OutputFolderError
        A ``ValueError``: ``out`` is a file, a folder of other files, or an unmarked
        folder whose ``results.sqlite`` is not a quantus-roar result store (nothing
        in it is deleted, even with ``fresh``).
    quantus_roar.benchmark.store.FolderInUseError
        Another process runs into ``out``.
    quantus_roar.exceptions.StorageError
        The folder or its store cannot be read or written (damaged store,
        read-only folder, full disk); the message names the file.
    ValueError
        For streamed data on Ray (the memory-mapped files are local to this
        machine), an unknown device, a model factory that cannot be imported
        or built, or an explain function of yours that fails on 2 test samples
        of an untrained model (see :func:`probe_explainers`; checked before
        anything is trained).
    """
    t0 = time.perf_counter()
    out = Path(out)
    if not isinstance(config, RunConfig):
        raise TypeError(f"run() takes a RunConfig. Got {type(config).__name__} instead.")
    if config.stream and (executor == "ray" or isinstance(executor, RayExecutor)):
        raise ValueError("Streamed data (--stream) is read from memory-mapped files on this "
                         "machine and cannot be retrained on Ray; run it with the local "
                         "executor, or without --stream.")
    device, folder, data, factory = _checked(config, out)
    summary = RunSummary(out)
    ex = _executor(config, executor, ray_address, factory, device)
    try:
        with folder.lock(), one_thread():
            data, factory = _prepared(config, folder, data, factory, device, fresh)
            fp, description = fingerprint(config, data.digest, device.type)
            with ResultStore(out) as store:
                store.claim(fp, description)
                write_text(out / "config.toml", config.to_toml())
                ctx = RunContext(config, out, data, device, progress, ex, factory)
                units = _planned(ctx, store)
                bar = tqdm(units, desc="benchmark", unit="unit", disable=not progress)
                loggers = [logging.root, logging.getLogger("quantus_roar")]
                try:
                    with logging_redirect_tqdm(loggers=loggers):
                        _work(ctx, units, bar, store, fp, store.done(), summary, after_commit)
                finally:
                    bar.close()
            for k in range(1, config.model_seeds or 1):  # the repeats over the model
                repeat = config.repeat(k)
                summary.repeats.append(run(
                    repeat, own_dir(out / REPEATS) / str(repeat.pipeline_seed), fresh=fresh,
                    progress=progress, report=report, executor=ex, after_commit=after_commit))
            summary.wall_s = time.perf_counter() - t0
            if report:
                from quantus_roar.benchmark.report import build_report

                build_report(out)
                summary.report_s = time.perf_counter() - t0 - summary.wall_s
    finally:
        if ex is not executor:
            ex.close()
    return summary


def _executor(config: RunConfig, executor: str | Executor | None, address: str | None,
              factory: Callable[[], nn.Module] | None, device: torch.device) -> Executor:
    """The run's executor, decided before the folder is touched. The default is worker
    processes, except where they cannot help: a retrainer on a GPU trains one model at a
    time here, as before, and a retrainer that cannot be sent to a worker (a class defined
    in a notebook, a lambda factory) retrains here with a warning (the numbers are the same:
    one thread per task on both). Asked for explicitly, worker processes that cannot get
    the retrainer raise at once."""
    ex = get_executor("processes" if executor is None else executor, address=address)
    if not isinstance(ex, ProcessExecutor) or factory is None:  # streamed: all done here
        return ex
    retrainer = (config.retrainer if config.retrainer is not None
                 else recipe_retrainer(config, factory, device))
    target = getattr(retrainer, "device", None)
    if executor is None and target is not None and torch.device(target).type == "cuda":
        ex.close()
        return LocalExecutor()
    try:
        check_picklable(retrainer, "the retrainer (with its model factory)")
    except ValueError as err:
        if ex is not executor:  # ours to close; a caller's executor stays open
            ex.close()
        if executor is not None:
            raise
        warnings.warn(f"{err} Retraining in this process instead, one task at a time (the "
                      "same numbers).", QuantusRoarWarning, stacklevel=3)
        return LocalExecutor()
    return ex


def _checked(config: RunConfig, out: Path) -> tuple[torch.device, OutputFolder,
                                                     BenchmarkData | None,
                                                     Callable[[], nn.Module] | None]:
    """Everything that can be checked without writing, before the folder is touched: the
    device, the folder, the data, the model factory and the explain functions (streamed
    data is loaded into the folder, so only its factory's import is checked here)."""
    device = _resolve_device(config.device)
    folder = OutputFolder(out)
    folder.check()
    data: BenchmarkData | None = None
    factory: Callable[[], nn.Module] | None = None
    if config.stream:
        import_factory(config.model)
    else:
        data = (config.dataset if isinstance(config.dataset, BenchmarkData) else
                load_dataset(config.dataset, seed=config.seed, image_size=config.image_size))
        factory = checked_model_factory(config.model, data)
    for estimator in config.estimators:  # imports every explain function named by a spec
        explainer(config, estimator)
    if data is not None and factory is not None:  # streamed data: once it is loaded
        probe_explainers(config, data, factory, device)
    return device, folder, data, factory


def _prepared(config: RunConfig, folder: OutputFolder, data: BenchmarkData | None,
              factory: Callable[[], nn.Module] | None, device: torch.device, fresh: bool
              ) -> tuple[BenchmarkData, Callable[[], nn.Module]]:
    """The data and model factory, with the locked folder cleared (``fresh``) and streamed
    data staged into it."""
    staging = None
    try:
        if data is None:
            data, staging = _load_streamed(config, folder.folder)
            factory = checked_model_factory(config.model, data)
            probe_explainers(config, data, factory, device)
        if fresh:
            folder.clear(keep=[staging] if staging is not None else ())
        if staging is not None:
            _move_staged(data, staging, folder.folder)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return data, cast(Callable[[], nn.Module], factory)  # set with the data above


def _planned(ctx: RunContext, store: ResultStore) -> list[Unit]:
    """Every unit of the run; the store's metadata of the report (layers, classes, the
    number of cells expected) and the example figure written."""
    units = list(plan(ctx))
    if "model-randomisation" in ctx.config.metrics:
        modules = dict(ctx.model.named_modules())
        store.set_meta("layers", ctx.layers)
        store.set_meta("layer_types", {n: type(modules[n]).__name__ for n in ctx.layers})
    store.set_meta("classes", ctx.data.classes)
    store.set_meta("sizes", {"train": ctx.n_train, "test": ctx.n_test})
    if "mask-leakage" in ctx.config.metrics:  # what mask leakage is compared with
        y_tr, y_te = np.asarray(ctx.data.y_train), np.asarray(ctx.data.y_test)
        store.set_meta("chance", float(np.mean(y_te == np.bincount(y_tr).argmax())))
    store.set_meta("expected_cells", sum(len(u.keys) for u in units))
    ctx.save_examples()
    return units


def _work(ctx: RunContext, units: list[Unit], bar: Any, store: ResultStore, fp: str,
          done: set[Key], summary: RunSummary,
          after_commit: Callable[[list[Cell]], None] | None) -> None:
    ex = ctx.executor
    Finish = Callable[[dict], list[Cell | Samples]]
    pending: dict[tuple[str, str, int], tuple[Unit, Finish]] = {}

    def commit(results: list[Cell | Samples]) -> None:
        store.add(results, fp)  # the cells and their per-sample results, together
        cells = [c for c in results if isinstance(c, Cell)]
        summary.computed.extend(dict.fromkeys(c.key for c in cells))
        if logger.isEnabledFor(logging.INFO):
            for line in _summary_lines(cells):
                logger.info(line)
        if after_commit is not None:
            after_commit(cells)

    def collect(block: bool) -> None:
        for result in ex.poll(block=block):
            unit, finish = pending.pop(result.tag)  # type: ignore[arg-type]
            if result.ok:
                for phase, key in (("masks", "removal_time_s"), ("retraining", "retrain_time_s")):
                    value = result.value.get(key, 0.0)
                    spent = sum(value.values()) if isinstance(value, dict) else float(value)
                    ctx.timings[phase] = ctx.timings.get(phase, 0.0) + spent
                commit(finish(result.value))
            else:
                logger.error("%s %s: retraining failed on every retry, its cells are not "
                             "stored (a rerun computes them): %r", unit.metric, unit.estimator,
                             result.error)
                summary.failed.append((unit.metric, unit.estimator, repr(result.error)))

    for unit in bar:
        todo = [k for k in unit.keys if k not in done]
        summary.skipped += len(unit.keys) - len(todo)
        if not todo:
            continue
        bar.set_postfix_str(f"{unit.metric} {unit.estimator}", refresh=True)
        if unit.remote and not ctx.data.streamed:
            # The same tasks on every executor (curve_groups), made from all the unit's
            # keys: a task's cells are stored together, so a resumed unit's tasks are
            # whole groups of the first run and train the same models.
            groups = [keys for keys in ([unit.keys[i] for i in g] for g in curve_groups(
                ctx.retrainer, unit.keys, ctx.data.x_train[:2], isinstance(ex, LocalExecutor)))
                if any(k in todo for k in keys)]
            groups = [[k for k in keys if k in todo] for keys in groups]
            for g, keys in enumerate(groups):
                fn, args, finish = retrain_task(ctx, ex, unit.metric, unit.estimator, keys)
                pending[(unit.metric, unit.estimator, g)] = (unit, finish)
                ex.submit((unit.metric, unit.estimator, g), fn, *args,
                          **task_resources(ctx.retrainer))
        else:
            with ctx.timed(_PHASES.get(unit.metric.partition("@")[0], "retraining")):
                results = unit.compute(todo)
            commit(results)
        collect(block=False)
    if pending:
        bar.set_postfix_str(f"waiting for {len(pending)} retraining task(s)", refresh=True)
    while pending:
        collect(block=True)
    if summary.computed:  # a resume with nothing to do keeps the last call's figures
        remote = any(u.remote for u in units) and not ctx.data.streamed
        store.set_meta("timings", {
            "phases": {k: round(v, 3) for k, v in ctx.timings.items()},
            "executor": type(ex).__name__ if remote else "this process",
            "workers": getattr(ex, "workers", None) if remote else 1})
