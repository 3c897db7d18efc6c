"""Accuracy against the share of features removed: with retraining and without.

The procedures behind the ROAR / KAR and no-retrain deletion metrics, in plain
PyTorch (no Quantus import), so that the metrics, the benchmark runner and the
distributed executors share one implementation.

* :func:`retrain_curve` -- remove features from train *and* test data by the
  attributions of the original model, train fresh models on every modified
  training set, report their test accuracy (Hooker et al., 2019).
* :func:`deletion_curve` -- the same removal, scored with the original model
  (MoRF / LeRF deletion).

Inputs may be images ``(N, C, H, W)``, time series ``(N, C, T)`` (handled as
images of height one) or tabular ``(N, F)``; attributions have the shape of
the inputs or a single channel.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from quantus_roar._validation import (
    INPUT_HINT,
    as_tensor,
    check_batch_size,
    check_choice,
    check_finite,
    check_labels,
    check_model,
    check_percentages,
    check_seed,
    model_device,
)
from quantus_roar.removal import (
    GRANULARITIES,
    IMPUTERS,
    ORDERS,
    REDUCES,
    Removal,
    channel_means,
)
from quantus_roar.retrain.base import RetrainJob, fit_score_many

__all__ = [
    "deletion_curve",
    "normalised_auc",
    "removed_inputs",
    "retrain_curve",
    "retrain_group",
    "retrain_group_task",
    "retrain_seeds",
    "stratified_split",
    "task_groups",
    "task_resources",
    "unmodified_point",
]


def retrain_seeds(seed: int, n: int) -> list[int]:
    """The training seeds of ``n`` retrains for a run seeded with ``seed``.

    Each is drawn from ``numpy.random.SeedSequence(seed, spawn_key=(i,))``, so
    runs with neighbouring seeds share no training seed, and the first ``k``
    seeds do not depend on ``n``. The same seeds are used at every
    percentage (common random numbers), so differences between percentages
    are not confounded with initialisation.
    """
    return [int(np.random.SeedSequence(int(seed), spawn_key=(i,)).generate_state(1)[0])
            for i in range(int(n))]


def stratified_split(
    y: Any, test_size: float, seed: int, owner: str = "stratified_split"
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of the sample indices keeping every class in both parts.

    Class ``c`` with ``n_c`` samples puts ``round(test_size * n_c)`` of them
    (at least one, at most ``n_c - 1``) in the test part, chosen by a
    ``numpy.random.Generator`` seeded with ``seed``.

    Returns
    -------
    train_idx, test_idx : numpy.ndarray
        Sorted int64 indices into ``y``.

    Raises
    ------
    ValueError
        If ``test_size`` is not in (0, 1) or a class has fewer than two samples.
    """
    if not 0.0 < float(test_size) < 1.0:
        raise ValueError(f"The 'test_size' parameter of {owner} must be in (0, 1). Got "
                         f"{test_size!r} instead.")
    y_np = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y).astype(np.int64).ravel()
    classes, counts = np.unique(y_np, return_counts=True)
    small = classes[counts < 2]
    if small.size:
        raise ValueError(
            f"{owner} needs at least 2 samples of every class for a stratified train/test split. "
            f"Class(es) {small.tolist()} have fewer. Pass more samples, or an explicit test set "
            "with x_test, y_test."
        )
    rng = np.random.default_rng(int(seed))
    test = []
    for c, n_c in zip(classes, counts, strict=True):
        idx = np.flatnonzero(y_np == c)
        k = min(max(1, round(float(test_size) * n_c)), n_c - 1)
        test.append(rng.permutation(idx)[:k])
    test_idx = np.sort(np.concatenate(test))
    train_mask = np.ones(y_np.size, dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask), test_idx


def unmodified_point(order: str) -> int:
    """Where the unmodified data sits on a curve of ``order``: 0 % removed for
    ``"remove_top"`` (ROAR, MoRF deletion), 100 % kept for ``"keep_top"`` (KAR, LeRF)."""
    return 100 if order == "keep_top" else 0


def _without_unmodified(ps: tuple[float, ...], order: str) -> tuple[float, ...]:
    """``ps`` without 100 % kept: the unmodified data is that point of a KAR curve."""
    return tuple(p for p in ps if order != "keep_top" or float(p) != 100.0)


def normalised_auc(percentages: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoidal area under ``values`` over ``percentages``, divided by their span.

    The result is in the units of ``values`` (an average accuracy over the
    removal range), so curves over different percentage grids compare.
    """
    p = np.asarray(percentages, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(p)
    p, v = p[order], v[order]
    if p.size < 2 or p[-1] == p[0]:
        return float(v.mean())
    return float(np.sum((p[1:] - p[:-1]) * (v[1:] + v[:-1]) / 2.0) / (p[-1] - p[0]))


# --------------------------------------------------------------------------- removal


def _check_data(x: Any, y: Any, x_name: str, y_name: str, owner: str
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs as a finite floating tensor and labels as int64, one per input."""
    x_t = as_tensor(x, x_name, owner)
    if x_t.ndim < 2 or len(x_t) == 0:
        raise ValueError(f"The '{x_name}' parameter of {owner} must be a non-empty batch of shape "
                         f"(N, F), (N, C, T) or (N, C, H, W). Got shape {tuple(x_t.shape)} "
                         "instead.")
    if not x_t.is_floating_point():
        x_t = x_t.float()
    check_finite(x_t, x_name, owner, hint=INPUT_HINT)
    y_t = check_labels(as_tensor(y, y_name, owner), len(x_t), y_name, owner, x_name=x_name)
    return x_t, y_t


def _check_removal_args(order: str, granularity: str, reduce: str, imputer: str,
                        owner: str, seed: int = 0) -> None:
    check_seed(seed, owner)
    check_choice(order, "order", owner, ORDERS)
    check_choice(granularity, "granularity", owner, GRANULARITIES)
    check_choice(reduce, "reduce", owner, REDUCES)
    check_choice(imputer, "imputer", owner, IMPUTERS)


def removed_inputs(
    x: torch.Tensor | np.ndarray,
    a: torch.Tensor | np.ndarray,
    percentages: float | Iterable[float],
    *,
    order: str = "remove_top",
    granularity: str = "pixel",
    reduce: str = "sum_abs",
    imputer: str = "channel_mean",
    imputer_kwargs: dict | None = None,
    stats: Any = None,
    seed: int = 0,
    sample_ids: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs with features removed at every percentage, and the share removed.

    Parameters
    ----------
    x : tensor or array
        Inputs (N, C, H, W), (N, C, T) or (N, F).
    a : tensor or array
        Attributions of the shape of ``x`` or with one channel.
    percentages, order, granularity, reduce, seed, sample_ids
        As :func:`quantus_roar.removal.removal_masks`.
    imputer, imputer_kwargs, stats
        As :func:`quantus_roar.removal.impute`.

    Returns
    -------
    x_removed : torch.Tensor
        Shape (P, *x.shape), on the device of ``x``.
    removed_fraction : torch.Tensor
        Shape (P,): the share of input values actually replaced, per percentage.
    """
    rule = Removal.ensure(order=order, granularity=granularity, reduce=reduce, imputer=imputer,
                          imputer_kwargs=imputer_kwargs, seed=seed, owner="removed_inputs")
    return rule.apply(x, a, percentages, stats=stats, sample_ids=sample_ids)


# --------------------------------------------------------------------------- curves


def _to_channels_first(t: torch.Tensor, ndim: int, channel_last: bool) -> torch.Tensor:
    """(N, ..., C) -> (N, C, ...) for channel-last inputs and attributions with a channel axis."""
    return t.movedim(-1, 1) if channel_last and ndim >= 3 and t.ndim == ndim else t


def _key(p: float) -> int | float:
    return int(p) if float(p).is_integer() else float(p)


def retrain_group(
    retrainer: Any,
    x_train: Any,
    y_train: Any,
    a_train: Any,
    x_test: Any,
    y_test: Any,
    a_test: Any,
    jobs: Sequence[tuple[float, int]],
    *,
    order: str = "remove_top",
    granularity: str = "pixel",
    reduce: str = "sum_abs",
    imputer: str = "channel_mean",
    imputer_kwargs: dict | None = None,
    stats: Any = None,
    seed: int = 0,
    train_ids: Any = None,
    test_ids: Any = None,
    channel_last: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Remove features at each job's percentage, retrain and score: one task of ROAR / KAR.

    The unit of work that :func:`retrain_curve` and the benchmark runner hand
    to an executor: it receives the *unmodified* data and the attributions,
    computes its own masks for the percentages of its jobs, and trains all
    its jobs in one ``fit_score_many`` call (so a batching retrainer trains
    them together). Inputs are checked by the caller.

    Parameters
    ----------
    retrainer : Retrainer
    x_train, y_train, a_train, x_test, y_test, a_test : tensor or array
    jobs : sequence of (percentage, training seed)
        Percentage 0 trains on the unmodified data.
    order, granularity, reduce, imputer, imputer_kwargs, seed, train_ids, test_ids
        As :func:`retrain_curve`.
    stats : array-like, optional
        Channel means for ``"channel_mean"``; default those of ``x_train``.
    channel_last, progress
        As :func:`retrain_curve`.

    Returns
    -------
    dict
        ``"accuracy"``: one test accuracy per job, in order;
        ``"removed_fraction"`` and ``"removal_time_s"``: per percentage;
        ``"retrain_time_s"``: wall time of the ``fit_score_many`` call.
    """
    owner = "retrain_group"
    x_tr = as_tensor(x_train, "x_train", owner)
    x_te = as_tensor(x_test, "x_test", owner)
    if not x_tr.is_floating_point():
        x_tr, x_te = x_tr.float(), x_te.float()
    n_tr, n_te = len(x_tr), len(x_te)
    if train_ids is None:
        train_ids = torch.arange(n_tr)
    if test_ids is None:
        test_ids = torch.arange(n_tr, n_tr + n_te)
    nd = x_tr.ndim
    x_tr_cf = _to_channels_first(x_tr, nd, channel_last)
    x_te_cf = _to_channels_first(x_te, nd, channel_last)
    if imputer == "channel_mean" and stats is None:
        stats = channel_means(x_tr_cf.unsqueeze(2) if nd == 3 else x_tr_cf)
    kw = dict(order=order, granularity=granularity, reduce=reduce, imputer=imputer,
              imputer_kwargs=imputer_kwargs, stats=stats, seed=seed)
    percentages = list(dict.fromkeys(float(p) for p, _ in jobs))
    if any(p != 0.0 for p in percentages):  # no attributions needed for the baseline alone
        a_tr = _to_channels_first(as_tensor(a_train, "a_train", owner), nd, channel_last)
        a_te = _to_channels_first(as_tensor(a_test, "a_test", owner), nd, channel_last)
    data: dict[float, tuple[Any, Any]] = {}
    fractions: dict[float, float] = {}
    times: dict[float, float] = {}
    for p in tqdm(percentages, desc="removing", disable=not progress, leave=False):
        start = time.perf_counter()
        if p == 0.0:
            data[p], fractions[p] = (x_tr, x_te), 0.0
        else:
            xr_tr, f_tr = removed_inputs(x_tr_cf, a_tr, [p], sample_ids=train_ids, **kw)
            xr_te, f_te = removed_inputs(x_te_cf, a_te, [p], sample_ids=test_ids, **kw)
            if channel_last and nd >= 3:
                xr_tr, xr_te = xr_tr.movedim(2, -1).contiguous(), xr_te.movedim(2, -1).contiguous()
            data[p] = (xr_tr[0], xr_te[0])
            fractions[p] = float((f_tr[0] * n_tr + f_te[0] * n_te) / (n_tr + n_te))
        times[p] = time.perf_counter() - start
    retrain_jobs = [RetrainJob(data[float(p)][0], y_train, data[float(p)][1], y_test, int(s))
                    for p, s in jobs]
    start = time.perf_counter()
    scores = fit_score_many(retrainer, retrain_jobs, progress=progress)
    if len(scores) != len(retrain_jobs):
        raise RuntimeError(f"The retrainer's fit_score_many returned {len(scores)} scores for "
                           f"{len(retrain_jobs)} jobs; it must return one accuracy per job, in "
                           "order.")
    return {"accuracy": [float(v) for v in scores], "removed_fraction": fractions,
            "removal_time_s": times, "retrain_time_s": time.perf_counter() - start}


def task_resources(retrainer: Any) -> dict[str, float]:
    """Resources a retraining task asks of an executor.

    One GPU when the retrainer trains on CUDA. As many CPUs as this process
    uses torch threads (``torch.get_num_threads()``), and the task runs with
    that many threads: CPU sums are split by thread, so a task computes the
    same bits as the local executor would. Change it with
    ``torch.set_num_threads`` before the run.
    """
    device = getattr(retrainer, "device", None)
    on_gpu = device is not None and torch.device(device).type == "cuda"
    return {"num_cpus": torch.get_num_threads(), "num_gpus": 1 if on_gpu else 0}


def task_groups(retrainer: Any, jobs: Sequence[Any], x_example: Any) -> list[list[int]]:
    """Indices of the jobs each task trains: all together when the retrainer can train
    them at once (``retrainer.batchable(x)``, honouring ``max_ensemble``), else one per task."""
    batchable = getattr(retrainer, "batchable", None)
    can = callable(batchable) and getattr(retrainer, "ensemble", "auto") is not False and bool(
        batchable(x_example)[0])
    if not can:
        return [[i] for i in range(len(jobs))]
    size = getattr(retrainer, "max_ensemble", None) or len(jobs)
    return [list(range(i, min(i + size, len(jobs)))) for i in range(0, len(jobs), size)]


def retrain_curve(
    retrainer: Any,
    x_train: Any,
    y_train: Any,
    a_train: Any,
    x_test: Any,
    y_test: Any,
    a_test: Any,
    percentages: float | Iterable[float] = (10, 30, 50, 70, 90),
    *,
    order: str = "remove_top",
    n_retrains: int = 5,
    granularity: str = "pixel",
    reduce: str = "sum_abs",
    imputer: str = "channel_mean",
    imputer_kwargs: dict | None = None,
    seed: int = 0,
    train_ids: Any = None,
    test_ids: Any = None,
    channel_last: bool = False,
    progress: bool = False,
    executor: Any = None,
) -> pd.DataFrame:
    """Test accuracy of models retrained on data with features removed (ROAR / KAR).

    Train and test inputs are modified with the same rule at every percentage
    (the unmodified baseline is 0 % removed for ROAR and 100 % kept for KAR,
    see :func:`unmodified_point`), ``n_retrains`` fresh models are trained per
    percentage with the seeds :func:`retrain_seeds` gives. Locally all
    ``(percentage x seed)`` jobs go to ``retrainer`` in one ``fit_score_many``
    call so that a batching retrainer trains them together; on Ray they are
    split into tasks by :func:`task_groups` (one task for a batchable model,
    one per retrain otherwise), each computing its own masks
    (:func:`retrain_group`). ``"channel_mean"`` imputation uses the means of
    the unmodified training inputs for both splits.

    Parameters
    ----------
    retrainer : Retrainer
        Any object with ``fit``/``score`` (see :mod:`quantus_roar.retrain`).
    x_train, y_train, a_train, x_test, y_test, a_test : tensor or array
        Inputs, integer labels and attributions of each split.
    percentages : float or sequence of float, default (10, 30, 50, 70, 90)
        Each in (0, 100]: the share removed (``order="remove_top"``) or kept
        (``"keep_top"``).
    order : {"remove_top", "keep_top"}
        ROAR or KAR.
    n_retrains : int, default 5
    granularity, reduce, imputer, imputer_kwargs
        The removal rule (see :func:`removed_inputs`).
    seed : int, default 0
        Seeds tie-breaking, imputation noise and the training seeds.
    train_ids, test_ids : sequence of int, optional
        Sample ids for tie-breaking and noise (default ``0..N_train-1`` and
        ``N_train..N_train+N_test-1``).
    channel_last : bool, default False
        Inputs (and attributions with a channel axis) are (N, H, W, C) or
        (N, T, C); the retrainer receives them in that layout.
    progress : bool, default False
        Show progress bars.
    executor : {None, "local", "ray"} or quantus_roar.executors.Executor
        Where the retrains run (see :mod:`quantus_roar.executors`); the same
        seeds give the same numbers on every executor.

    Returns
    -------
    pandas.DataFrame
        One row per (percentage, retrain), the unmodified data at
        :func:`unmodified_point`: ``percentage``, ``retrain``,
        ``seed`` (training seed), ``accuracy``, ``removed_fraction`` (share of
        input values replaced in train and test together), ``removal_time_s``
        (masking and imputation of that percentage) and ``retrain_time_s``
        (the retraining wall time of its task divided evenly among its jobs).

    Raises
    ------
    RuntimeError
        If a task failed on every retry; the message names its percentages and
        seeds and the error.
    """
    from quantus_roar.executors import LocalExecutor, get_executor

    owner = "retrain_curve"
    ps = check_percentages(percentages, owner)
    _check_removal_args(order, granularity, reduce, imputer, owner, seed)
    if not isinstance(n_retrains, (int, np.integer)) or n_retrains < 1:
        raise ValueError(f"The 'n_retrains' parameter of {owner} must be a positive integer. "
                         f"Got {n_retrains!r} instead.")
    x_tr, y_train = _check_data(x_train, y_train, "x_train", "y_train", owner)
    x_te, y_test = _check_data(x_test, y_test, "x_test", "y_test", owner)
    if x_te.shape[1:] != x_tr.shape[1:]:
        raise ValueError(f"The 'x_test' parameter of {owner} must have the per-sample shape of "
                         f"x_train {tuple(x_tr.shape[1:])}. Got {tuple(x_te.shape[1:])} instead.")
    unseen = sorted(set(torch.unique(y_test).tolist()) - set(torch.unique(y_train).tolist()))
    if unseen:
        raise ValueError(f"The 'y_test' parameter of {owner} holds class(es) {unseen[:10]} that "
                         "no training label has: a retrained model cannot predict them, so its "
                         "accuracy would count them as errors whatever the attributions. Pass "
                         "train and test splits of the same classes.")
    if int(torch.unique(y_train).numel()) < 2:
        raise ValueError(f"The 'y_train' parameter of {owner} must hold at least 2 classes: a "
                         "model trained on one class predicts it always, so every accuracy "
                         "would be 1.0 whatever the attributions.")
    x_te = x_te.to(x_tr.dtype)
    a_tr = check_finite(as_tensor(a_train, "a_train", owner), "a_train", owner)
    a_te = check_finite(as_tensor(a_test, "a_test", owner), "a_test", owner)
    nd = x_tr.ndim
    stats = None
    if imputer == "channel_mean":
        x_tr_cf = _to_channels_first(x_tr, nd, channel_last)
        stats = channel_means(x_tr_cf.unsqueeze(2) if nd == 3 else x_tr_cf)
    seeds = retrain_seeds(seed, n_retrains)
    # Percentage 0.0 is the unmodified data in a job; it is reported at unmodified_point.
    jobs = [(float(p), s) for p in (0.0, *_without_unmodified(ps, order)) for s in seeds]
    kw = dict(order=order, granularity=granularity, reduce=reduce, imputer=imputer,
              imputer_kwargs=imputer_kwargs, stats=stats, seed=seed, train_ids=train_ids,
              test_ids=test_ids, channel_last=channel_last)
    ex = get_executor(executor)
    local = isinstance(ex, LocalExecutor)
    groups = [list(range(len(jobs)))] if local else task_groups(retrainer, jobs, x_tr[:2])
    try:
        shared = [ex.put(v) for v in (x_tr, y_train, a_tr, x_te, y_test, a_te)]
        for g, members in enumerate(groups):
            ex.submit(g, retrain_group_task, retrainer, *shared, [jobs[i] for i in members],
                      kw, progress and local, **task_resources(retrainer))
        results = {r.tag: r for r in ex.drain()}
    finally:
        if ex is not executor:
            ex.close()
    failed = [results[g] for g in range(len(groups)) if not results[g].ok]
    if failed and local:
        raise failed[0].error  # type: ignore[misc]
    if failed:
        what = "; ".join(f"jobs {[jobs[i] for i in groups[r.tag]]}: {r.error!r}"
                         for r in failed)
        raise RuntimeError(f"{owner}: {len(failed)} of {len(groups)} retraining task(s) failed "
                           f"on every retry ((percentage, seed) {what}).") from failed[0].error
    rows = []
    for g, members in enumerate(groups):
        out = results[g].value
        per_job = out["retrain_time_s"] / len(members)
        for i, acc in zip(members, out["accuracy"], strict=True):
            p, s = jobs[i]
            rows.append({"percentage": _key(p) if p else unmodified_point(order),
                         "retrain": seeds.index(s), "seed": s,
                         "accuracy": acc, "removed_fraction": out["removed_fraction"][p],
                         "removal_time_s": out["removal_time_s"][p], "retrain_time_s": per_job})
    return pd.DataFrame(rows).sort_values(["percentage", "retrain"], kind="stable") \
        .reset_index(drop=True)


def retrain_group_task(retrainer: Any, x_train: Any, y_train: Any, a_train: Any, x_test: Any,
                        y_test: Any, a_test: Any, jobs: list, kw: dict,
                       progress: bool) -> dict[str, Any]:
    """:func:`retrain_group` with its keyword arguments as one dict (an executor task)."""
    return retrain_group(retrainer, x_train, y_train, a_train, x_test, y_test, a_test, jobs,
                         progress=progress, **kw)


@torch.no_grad()
def deletion_curve(
    model: torch.nn.Module,
    x: Any,
    y: Any,
    a: Any,
    percentages: float | Iterable[float] = (10, 30, 50, 70, 90),
    *,
    order: str = "remove_top",
    granularity: str = "pixel",
    reduce: str = "sum_abs",
    imputer: str = "channel_mean",
    imputer_kwargs: dict | None = None,
    stats: Any = None,
    seed: int = 0,
    first_id: int = 0,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    softmax: bool = True,
    channel_last: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Accuracy of the original model on inputs with features removed (MoRF / LeRF deletion).

    Works through the data in chunks of ``batch_size`` samples; each chunk is
    modified at every percentage at once and the ``P x batch_size`` modified
    inputs go through the model together. Chunking does not change the
    result: tie-breaking and noise depend on each sample's id (its position in
    ``x`` plus ``first_id``).

    Parameters
    ----------
    model : torch.nn.Module
        The trained model, put in ``eval()`` mode for the call (its mode is
        restored afterwards).
    x, y, a : tensor or array
        Inputs, integer labels and attributions.
    percentages, order, granularity, reduce, imputer, imputer_kwargs, seed
        The removal rule (see :func:`removed_inputs`).
    stats : array-like, optional
        Channel means for ``"channel_mean"``; default the means of ``x``.
    first_id : int, default 0
        Sample id of ``x[0]`` for tie-breaking and noise (sample ``i`` has id
        ``first_id + i``), so that the curve of a chunk of a larger set can
        be computed on its own.
    batch_size : int, default 64
    device : str or torch.device, optional
        Default: the device of the model's parameters.
    softmax : bool, default True
        Score the true class by its softmax probability (``True``) or by the
        raw model output (``False``, for models that end in a softmax).
    channel_last : bool, default False
        Inputs (and attributions with a channel axis) are (N, H, W, C) or
        (N, T, C), and so is what the model receives.
    progress : bool, default False

    Returns
    -------
    pandas.DataFrame
        One row per percentage in increasing order, the unmodified data at
        :func:`unmodified_point` (0 % removed, or 100 % kept): ``percentage``, ``accuracy``,
        ``true_class_score`` (mean over samples), ``removed_fraction``.
    """
    owner = "deletion_curve"
    ps = _without_unmodified(check_percentages(percentages, owner), order)
    _check_removal_args(order, granularity, reduce, imputer, owner, seed)
    check_model(model, owner)
    check_batch_size(batch_size, owner)
    device = model_device(model, device)
    x_t, y_t = _check_data(x, y, "x", "y", owner)
    a_t = check_finite(as_tensor(a, "a", owner), "a", owner)
    nd = x_t.ndim
    if imputer == "channel_mean" and stats is None:
        x_cf = _to_channels_first(x_t, nd, channel_last)
        stats = channel_means(x_cf.unsqueeze(2) if nd == 3 else x_cf)
    n = len(x_t)
    n_p = len(ps) + 1
    correct = torch.zeros(n_p, dtype=torch.float64, device=device)
    score = torch.zeros(n_p, dtype=torch.float64, device=device)
    removed = torch.zeros(n_p, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, n, batch_size), desc="deleting", disable=not progress,
                          leave=False):
            xb = x_t[start : start + batch_size].to(device)
            ab = a_t[start : start + batch_size].to(device)
            yb = y_t[start : start + batch_size].to(device)
            ids = torch.arange(first_id + start, first_id + start + len(xb), device=device)
            batch = xb[None]
            if ps:
                xr, frac = removed_inputs(_to_channels_first(xb, nd, channel_last),
                                          _to_channels_first(ab, nd, channel_last), ps,
                                          order=order, granularity=granularity, reduce=reduce,
                                          imputer=imputer, imputer_kwargs=imputer_kwargs,
                                          stats=stats, seed=seed, sample_ids=ids)
                if channel_last and nd >= 3:
                    xr = xr.movedim(2, -1)
                batch = torch.cat([batch, xr])
                removed[1:] += frac.to(device) * len(xb)
            out = model(batch.flatten(0, 1)).unflatten(0, (n_p, len(xb)))
            if start == 0 and int(y_t.max()) >= out.shape[-1]:
                raise ValueError(f"The 'y' parameter of {owner} must hold class labels in [0, "
                                 f"{out.shape[-1]}) for a model with {out.shape[-1]} outputs. "
                                 f"Got labels up to {int(y_t.max())} instead.")
            correct += (out.argmax(-1) == yb).sum(dim=1).double()
            probs = out.softmax(-1) if softmax else out
            score += probs.gather(-1, yb.expand(n_p, -1)[..., None])[..., 0].sum(dim=1).double()
    finally:
        model.train(was_training)
    return pd.DataFrame({
        "percentage": [unmodified_point(order), *(_key(p) for p in ps)],
        "accuracy": (correct / n).tolist(),
        "true_class_score": (score / n).tolist(),
        "removed_fraction": (removed / n).tolist(),
    }).sort_values("percentage", kind="stable").reset_index(drop=True)
