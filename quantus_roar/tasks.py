"""Units of retraining work for the executors: what one task computes and what it asks for.

:func:`retrain_group` is the unit of ROAR / KAR that :func:`quantus_roar.curves.retrain_curve`
and the benchmark runner hand to an executor. It receives the *unmodified*
data and the attributions and computes its own masks, so only those cross
the network. :func:`task_groups` decides how many units a curve makes and
:func:`task_resources` what each asks for.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from quantus_roar._validation import as_tensor
from quantus_roar.removal import Removal, channel_means
from quantus_roar.retrain.base import RetrainJob, check_scores, fit_correct_many, fit_score_many
from quantus_roar.splits import Split

__all__ = ["CPU_MODELS_PER_TASK", "curve_groups", "retrain_group", "retrain_group_task",
           "task_groups", "task_resources"]


def to_channels_first(t: torch.Tensor, ndim: int, channel_last: bool) -> torch.Tensor:
    """(N, ..., C) -> (N, C, ...) for channel-last inputs and attributions with a channel axis."""
    return t.movedim(-1, 1) if channel_last and ndim >= 3 and t.ndim == ndim else t


def sample_ids(split: Split, n: int, first: int = 0) -> torch.Tensor:
    """The ids of a split's samples: ``split.ids`` as given (an int is the first id), else
    ``first..first+n-1``."""
    ids = split.ids
    if ids is None or isinstance(ids, int):
        start = first if ids is None else int(ids)
        return torch.arange(start, start + n)
    return torch.as_tensor(ids)


def training_means(x: torch.Tensor, channel_last: bool) -> torch.Tensor:
    """Channel means of unmodified training inputs, in the engine's layout."""
    x_cf = to_channels_first(x, x.ndim, channel_last)
    return channel_means(x_cf.unsqueeze(2) if x.ndim == 3 else x_cf)


def retrain_group(
    retrainer: Any,
    train: Split,
    test: Split,
    jobs: Sequence[tuple[float, int]],
    *,
    removal: Removal,
    stats: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Remove features at each job's percentage, retrain and score: one task of ROAR / KAR.

    Trains all its jobs in one ``fit_score_many`` call, so a batching
    retrainer trains them together. Inputs are checked by the caller.

    Parameters
    ----------
    retrainer : Retrainer
    train, test : Split
        The unmodified data and its attributions (sample ids default to
        ``0..N_train-1`` and ``N_train..N_train+N_test-1``).
    jobs : sequence of (percentage, training seed)
        Percentage 0 trains on the unmodified data.
    removal : Removal
        The removal rule.
    stats : array-like, optional
        Channel means for :class:`~quantus_roar.removal.ChannelMean`; default
        those of the training inputs.
    progress : bool, default False

    Returns
    -------
    dict
        ``"accuracy"``: one test accuracy per job, in order; ``"correct"``: per
        job, whether each test sample is classified right (bool arrays), when the
        retrainer has ``fit_correct_many``, else None;
        ``"removed_fraction"`` and ``"removal_time_s"``: per percentage;
        ``"retrain_time_s"``: wall time of the ``fit_score_many`` call.

    Raises
    ------
    TypeError, ValueError, RuntimeError
        If the retrainer does not return one accuracy, a finite number in
        [0, 1], per job (the message names the job and the value).
    """
    owner = "retrain_group"
    x_tr = as_tensor(train.x, "x_train", owner)
    x_te = as_tensor(test.x, "x_test", owner)
    if not x_tr.is_floating_point():
        x_tr, x_te = x_tr.float(), x_te.float()
    n_tr, n_te = len(x_tr), len(x_te)
    train_ids, test_ids = sample_ids(train, n_tr), sample_ids(test, n_te, first=n_tr)
    nd, cl = x_tr.ndim, train.channel_last
    if removal.imputer.name == "channel_mean" and stats is None:
        stats = training_means(x_tr, cl)
    percentages = list(dict.fromkeys(float(p) for p, _ in jobs))
    if any(p != 0.0 for p in percentages):  # no attributions needed for the baseline alone
        a_tr = to_channels_first(as_tensor(train.a, "a_train", owner), nd, cl)
        a_te = to_channels_first(as_tensor(test.a, "a_test", owner), nd, cl)
    data: dict[float, tuple[Any, Any]] = {}
    fractions: dict[float, float] = {}
    times: dict[float, float] = {}
    for p in tqdm(percentages, desc="removing", disable=not progress, leave=False):
        start = time.perf_counter()
        if p == 0.0:
            data[p], fractions[p] = (x_tr, x_te), 0.0
        else:
            xr_tr, f_tr = removal.apply(to_channels_first(x_tr, nd, cl), a_tr, [p],
                                        stats=stats, sample_ids=train_ids)
            xr_te, f_te = removal.apply(to_channels_first(x_te, nd, cl), a_te, [p],
                                        stats=stats, sample_ids=test_ids)
            if cl and nd >= 3:
                xr_tr, xr_te = xr_tr.movedim(2, -1).contiguous(), xr_te.movedim(2, -1).contiguous()
            data[p] = (xr_tr[0], xr_te[0])
            fractions[p] = float((f_tr[0] * n_tr + f_te[0] * n_te) / (n_tr + n_te))
        times[p] = time.perf_counter() - start
    retrain_jobs = [RetrainJob(data[float(p)][0], train.y, data[float(p)][1], test.y, int(s))
                    for p, s in jobs]
    start = time.perf_counter()
    # every score a finite accuracy in [0, 1], one per job (also for retrainers whose
    # fit_score_many is called directly by an executor's wrapper)
    correct = fit_correct_many(retrainer, retrain_jobs, progress=progress)
    if correct is None:
        scores = check_scores(fit_score_many(retrainer, retrain_jobs, progress=progress),
                              len(retrain_jobs), f"{type(retrainer).__name__}.fit_score_many")
    else:
        scores = [int(c.sum()) / max(1, len(c)) for c in correct]
    return {"accuracy": scores, "correct": correct, "removed_fraction": fractions,
            "removal_time_s": times, "retrain_time_s": time.perf_counter() - start}


def retrain_group_task(retrainer: Any, jobs: list, options: dict, *arrays: Any
                       ) -> dict[str, Any]:
    """:func:`retrain_group` as an executor task.

    ``arrays`` are ``x_train, y_train, a_train, x_test, y_test, a_test``,
    passed one by one so that an executor resolves shared references (Ray's
    object refs) before the call; ``options`` holds ``removal``, ``stats``,
    ``train_ids``, ``test_ids``, ``channel_last`` and ``progress``.
    """
    x_tr, y_tr, a_tr, x_te, y_te, a_te = arrays
    cl = bool(options.get("channel_last", False))
    return retrain_group(retrainer, Split(x_tr, y_tr, a_tr, options.get("train_ids"), cl),
                         Split(x_te, y_te, a_te, options.get("test_ids"), cl), jobs,
                         removal=options["removal"], stats=options.get("stats"),
                         progress=bool(options.get("progress", False)))


def task_resources(retrainer: Any) -> dict[str, float]:
    """Resources a retraining task asks of an executor.

    One GPU when the retrainer trains on CUDA, and one CPU: every task runs with
    one torch thread on every executor (:data:`quantus_roar.executors.THREADS_PER_TASK`),
    so it computes the same bits wherever it runs.
    """
    from quantus_roar.executors import THREADS_PER_TASK

    device = getattr(retrainer, "device", None)
    on_gpu = device is not None and torch.device(device).type == "cuda"
    return {"num_cpus": THREADS_PER_TASK, "num_gpus": 1 if on_gpu else 0}


#: Most models one CPU task trains at once when the retrainer sets no ``max_ensemble``:
#: small enough that a curve's retrains spread over several workers, large enough for
#: the ensemble path (ensembles of 4-12 SmallCNNs train equally fast per model).
CPU_MODELS_PER_TASK = 8


def _batches(retrainer: Any, x_example: Any) -> bool:
    """Whether ``retrainer`` trains several models at once on inputs like ``x_example``."""
    batchable = getattr(retrainer, "batchable", None)
    return callable(batchable) and getattr(retrainer, "ensemble", "auto") is not False and bool(
        batchable(x_example)[0])


def task_groups(retrainer: Any, jobs: Sequence[Any], x_example: Any) -> list[list[int]]:
    """Indices of the jobs each task trains.

    A retrainer that can train the jobs at once (``retrainer.batchable(x)``)
    gets them in groups of at most ``max_ensemble`` or, on the CPU without one,
    in ``ceil(n / CPU_MODELS_PER_TASK)`` groups of sizes that differ by one at
    most (so a group has one model only if there is one job); on a GPU in one
    group. Any other retrainer gets one task per job.

    The groups depend on the retrainer and the jobs only, never on the
    executor or its number of workers, and every executor trains the same
    groups, so the numbers are the same everywhere. Dropout and augmentation
    draws are seeded per group, so for a model with either the numbers depend
    on the grouping (which is why ``CPU_MODELS_PER_TASK`` is part of a run's
    fingerprint); without them, a model trained in any group of two or more
    gets the same bits (``tests/test_processes.py``).
    """
    n = len(jobs)
    if not _batches(retrainer, x_example):
        return [[i] for i in range(n)]
    size = getattr(retrainer, "max_ensemble", None)
    if size:
        return [list(range(i, min(i + size, n))) for i in range(0, n, size)]
    device = getattr(retrainer, "device", None)
    if device is not None and torch.device(device).type != "cpu":
        return [list(range(n))]
    k = max(1, -(-n // CPU_MODELS_PER_TASK))
    bounds = [i * n // k for i in range(k + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(k)]


def curve_groups(retrainer: Any, jobs: Sequence[Any], x_example: Any,
                 local: bool) -> list[list[int]]:
    """The tasks of a curve: :func:`task_groups`, except that this process gives a
    retrainer that cannot batch all jobs in one call (its own ``fit_score_many``)."""
    if local and not _batches(retrainer, x_example):
        return [list(range(len(jobs)))]
    return task_groups(retrainer, jobs, x_example)
