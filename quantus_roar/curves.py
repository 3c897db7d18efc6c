"""Accuracy against the share of features removed: with retraining and without.

The procedures behind the ROAR / KAR and no-retrain deletion metrics, in plain
PyTorch (no Quantus import), so that the metrics, the benchmark runner and the
distributed executors share one implementation.

* :func:`retrain_curve` -- remove features from train *and* test data by the
  attributions of the original model, train fresh models on every modified
  training set, report their test accuracy (Hooker et al., 2019).
* :func:`deletion_curve` -- the same removal, scored with the original model
  (MoRF / LeRF deletion).

Data comes as :class:`~quantus_roar.splits.Split` values (inputs, labels,
attributions, sample ids, layout) and the removal rule as one
:class:`~quantus_roar.removal.Removal`. Inputs may be images ``(N, C, H, W)``,
time series ``(N, C, T)`` (handled as images of height one) or tabular
``(N, F)``; attributions have the shape of the inputs or a single channel.
The units a curve hands to an executor live in :mod:`quantus_roar.tasks`.
"""

from __future__ import annotations

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
    check_finite,
    check_int,
    check_labels,
    check_model,
    check_percentages,
    evaluating,
    model_device,
    model_dtype,
)
from quantus_roar.removal import Removal
from quantus_roar.splits import Split, retrain_seeds
from quantus_roar.tasks import (
    curve_groups,
    retrain_group_task,
    sample_ids,
    task_resources,
    to_channels_first,
    training_means,
)

__all__ = [
    "Split",
    "deletion_curve",
    "normalised_auc",
    "removed_inputs",
    "retrain_curve",
    "unmodified_point",
]


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


# --------------------------------------------------------------------------- inputs


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


def _check_split(split: Any, name: str, owner: str, *, need_a: bool = True
                 ) -> tuple[Split, torch.Tensor, torch.Tensor]:
    """A :class:`Split` with checked inputs and labels (finite attributions when needed)."""
    if isinstance(split, tuple) and not isinstance(split, Split):
        split = Split(*split)
    if not isinstance(split, Split):
        raise TypeError(f"The '{name}' parameter of {owner} must be a quantus_roar.splits.Split "
                        f"(x, y, a, ids, channel_last). Got {type(split).__name__} instead.")
    x, y = _check_data(split.x, split.y, f"{name}.x", f"{name}.y", owner)
    if not isinstance(split.channel_last, (bool, np.bool_)):
        raise TypeError(f"The '{name}.channel_last' parameter of {owner} must be True or False. "
                        f"Got {split.channel_last!r} instead.")
    ids = split.ids
    if isinstance(ids, (np.integer, int)) and not isinstance(ids, (bool, np.bool_)):
        ids = check_int(ids, f"{name}.ids", owner, low=0)
    elif ids is not None:
        ids_t = as_tensor(ids if isinstance(ids, torch.Tensor) else np.asarray(ids),
                          f"{name}.ids", owner)
        if ids_t.shape != (len(x),) or ids_t.is_floating_point() or ids_t.dtype == torch.bool:
            raise ValueError(f"The '{name}.ids' parameter of {owner} must be {len(x)} integer "
                             f"sample ids, or the id of the first sample. Got shape "
                             f"{tuple(ids_t.shape)} and dtype {ids_t.dtype} instead.")
        ids = ids_t
    split = split._replace(ids=ids, channel_last=bool(split.channel_last))
    if need_a:
        if split.a is None:
            raise ValueError(f"The '{name}' parameter of {owner} needs attributions (a).")
        check_finite(as_tensor(split.a, f"{name}.a", owner), f"{name}.a", owner)
    return split, x, y


def removed_inputs(
    x: torch.Tensor | np.ndarray,
    a: torch.Tensor | np.ndarray,
    percentages: float | Iterable[float],
    *,
    removal: Removal | None = None,
    stats: Any = None,
    sample_ids: Any = None,
    **rule: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs with features removed at every percentage, and the share removed.

    :meth:`Removal.apply <quantus_roar.removal.Removal.apply>` of ``removal``,
    or of the rule built from the keywords ``order``, ``granularity``,
    ``reduce``, ``imputer``, ``imputer_kwargs`` and ``seed``.

    Returns
    -------
    x_removed : torch.Tensor
        Shape (P, *x.shape), on the device of ``x``.
    removed_fraction : torch.Tensor
        Shape (P,): the share of input values actually replaced, per percentage.
    """
    rule_ = Removal.ensure(removal, owner="removed_inputs", **rule)
    return rule_.apply(x, a, percentages, stats=stats, sample_ids=sample_ids)


# --------------------------------------------------------------------------- curves


def _key(p: float) -> int | float:
    return int(p) if float(p).is_integer() else float(p)


def _check_splits(train: Any, test: Any, owner: str) -> tuple[Split, Split, torch.Tensor,
                                                               torch.Tensor, torch.Tensor,
                                                               torch.Tensor]:
    """The checked train and test splits of :func:`retrain_curve` and their inputs and
    labels: the same layout and per-sample shape, every test class seen in training,
    at least two training classes."""
    train, x_tr, y_tr = _check_split(train, "train", owner)
    test, x_te, y_te = _check_split(test, "test", owner)
    if test.channel_last != train.channel_last:
        raise ValueError(f"The 'train' and 'test' parameters of {owner} must have the same "
                         f"layout. Got channel_last={train.channel_last} and "
                         f"{test.channel_last}.")
    if x_te.shape[1:] != x_tr.shape[1:]:
        raise ValueError(f"The 'test' parameter of {owner} must have the per-sample shape of "
                         f"the training inputs {tuple(x_tr.shape[1:])}. Got "
                         f"{tuple(x_te.shape[1:])} instead.")
    unseen = sorted(set(torch.unique(y_te).tolist()) - set(torch.unique(y_tr).tolist()))
    if unseen:
        raise ValueError(f"The 'test' parameter of {owner} holds class(es) {unseen[:10]} that "
                         "no training label has: a retrained model cannot predict them, so its "
                         "accuracy would count them as errors whatever the attributions. Pass "
                         "train and test splits of the same classes.")
    if int(torch.unique(y_tr).numel()) < 2:
        raise ValueError(f"The 'train' parameter of {owner} must hold at least 2 classes: a "
                         "model trained on one class predicts it always, so every accuracy "
                         "would be 1.0 whatever the attributions.")
    return train, test, x_tr, y_tr, x_te, y_te


def retrain_curve(
    retrainer: Any,
    train: Split,
    test: Split,
    percentages: float | Iterable[float] = (10, 30, 50, 70, 90),
    *,
    removal: Removal | None = None,
    n_retrains: int = 5,
    executor: Any = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Test accuracy of models retrained on data with features removed (ROAR / KAR).

    Train and test inputs are modified with the same rule at every percentage
    (the unmodified baseline is 0 % removed for ROAR and 100 % kept for KAR,
    see :func:`unmodified_point`), ``n_retrains`` fresh models are trained per
    percentage with the seeds :func:`~quantus_roar.splits.retrain_seeds` gives
    for ``removal.seed``. The ``(percentage x seed)`` jobs are trained in the
    tasks :func:`~quantus_roar.tasks.curve_groups` makes: a retrainer that
    batches (``TorchRetrainer``) trains groups of up to
    ``CPU_MODELS_PER_TASK`` models at once on the CPU, the same groups on
    every executor; one that cannot gets every job in one ``fit_score_many``
    call in this process, and one task per job on worker processes and Ray.
    Each task computes its own masks (:func:`~quantus_roar.tasks.retrain_group`). ``"channel_mean"``
    imputation uses the means of the unmodified training inputs for both
    splits.

    Parameters
    ----------
    retrainer : Retrainer
        Any object with ``fit``/``score`` (see :mod:`quantus_roar.retrain`).
    train, test : Split
        Inputs, integer labels and attributions of each split (a plain tuple
        ``(x, y, a)`` works too); sample ids default to ``0..N_train-1`` and
        ``N_train..N_train+N_test-1``.
    percentages : float or sequence of float, default (10, 30, 50, 70, 90)
        Each in (0, 100]: the share removed (``order="remove_top"``) or kept
        (``"keep_top"``).
    removal : Removal, optional
        The removal rule (default ``Removal()``: ROAR, pixels, channel mean);
        ``Removal(order="keep_top")`` for KAR. Its seed also seeds training.
    n_retrains : int, default 5
    executor : {None, "local", "processes", "ray"} or quantus_roar.executors.Executor
        Where the retrains run (see :mod:`quantus_roar.executors`); the same
        seeds give the same numbers on every executor.
    progress : bool, default False
        Show progress bars.

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
    from quantus_roar.executors import (
        LocalExecutor,
        ProcessExecutor,
        check_picklable,
        get_executor,
    )

    owner = "retrain_curve"
    ps = check_percentages(percentages, owner)
    rule = Removal.ensure(removal, owner=owner)
    n_retrains = check_int(n_retrains, "n_retrains", owner, low=1)
    train, test, x_tr, y_tr, x_te, y_te = _check_splits(train, test, owner)
    x_te = x_te.to(x_tr.dtype)
    cl = train.channel_last
    stats = training_means(x_tr, cl) if rule.imputer.name == "channel_mean" else None
    seeds = retrain_seeds(rule.seed, n_retrains)
    # Percentage 0.0 is the unmodified data in a job; it is reported at unmodified_point.
    jobs = [(float(p), s) for p in (0.0, *_without_unmodified(ps, rule.order)) for s in seeds]
    ex = get_executor(executor)
    local = isinstance(ex, LocalExecutor)
    options = {"removal": rule, "stats": stats, "train_ids": train.ids, "test_ids": test.ids,
               "channel_last": cl, "progress": progress and local}
    groups = curve_groups(retrainer, jobs, x_tr[:2], local)
    try:
        if isinstance(ex, ProcessExecutor):
            check_picklable(retrainer, f"the retrainer of {owner}")
        shared = [ex.put(v) for v in (x_tr, y_tr, as_tensor(train.a, "a", owner), x_te, y_te,
                                      as_tensor(test.a, "a", owner))]
        for g, members in enumerate(groups):
            ex.submit(g, retrain_group_task, retrainer, [jobs[i] for i in members], options,
                      *shared, **task_resources(retrainer))
        results = {r.tag: r for r in ex.drain()}
    finally:
        if ex is not executor:
            ex.close()
    return _curve_frame(results, groups, jobs, seeds, rule.order, owner, local)


def _curve_frame(results: dict, groups: list[list[int]], jobs: list[tuple[float, int]],
                 seeds: list[int], order: str, owner: str, local: bool) -> pd.DataFrame:
    """The rows of :func:`retrain_curve` from its tasks' results; failed tasks raise."""
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


def _scored(model: torch.nn.Module, batch: torch.Tensor, y: torch.Tensor, softmax: bool,
            owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of the ``P`` versions of a chunk, ``batch`` of shape (P, B, ...): whether
    each sample is predicted right, (P, B) bool, and the number right and the summed
    true-class score, (2, P) float64."""
    n_p, n_b = batch.shape[:2]
    raw = model(batch.flatten(0, 1))
    if not isinstance(raw, torch.Tensor) or raw.ndim != 2:
        shape = tuple(raw.shape) if isinstance(raw, torch.Tensor) else type(raw).__name__
        raise ValueError(f"{owner} needs a classifier returning (N, n_classes) scores. The "
                         f"model returned {shape} for {n_p * n_b} inputs.")
    if not bool(torch.isfinite(raw).all()):
        raise ValueError(f"The model given to {owner} returned NaN or inf scores; its weights "
                         "or inputs are broken, so no accuracy can be measured.")
    out = raw.unflatten(0, (n_p, n_b))
    if int(y.max()) >= out.shape[-1]:
        raise ValueError(f"The 'data.y' parameter of {owner} must hold class labels in "
                         f"[0, {out.shape[-1]}) for a model with {out.shape[-1]} outputs. Got "
                         f"labels up to {int(y.max())} instead.")
    correct = out.argmax(-1) == y
    probs = out.softmax(-1) if softmax else out
    score = probs.gather(-1, y.expand(n_p, -1)[..., None])[..., 0].sum(dim=1).double()
    return correct, torch.stack([correct.sum(dim=1).double(), score])


@torch.no_grad()
def deletion_curve(
    model: torch.nn.Module,
    data: Split,
    percentages: float | Iterable[float] = (10, 30, 50, 70, 90),
    *,
    removal: Removal | None = None,
    stats: Any = None,
    batch_size: int = 64,
    softmax: bool = True,
    progress: bool = False,
) -> pd.DataFrame:
    """Accuracy of the original model on inputs with features removed (MoRF / LeRF deletion).

    Works through the data in chunks of ``batch_size`` samples on the model's
    device; each chunk is modified at every percentage at once and the ``P x
    batch_size`` modified inputs go through the model together. Chunking
    does not change the result: tie-breaking and noise depend on each
    sample's id.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model, put in ``eval()`` mode for the call (its mode is
        restored afterwards).
    data : Split
        Inputs, integer labels and attributions (a tuple ``(x, y, a)`` works
        too). ``data.ids`` as an int is the id of ``x[0]``, so that the curve
        of a chunk of a larger set can be computed on its own.
    percentages : float or sequence of float
        Each in (0, 100]: removed (``remove_top``) or kept (``keep_top``).
    removal : Removal, optional
        The removal rule (default ``Removal()``).
    stats : array-like, optional
        Channel means for ``"channel_mean"``; default the means of ``x``.
    batch_size : int, default 64
    softmax : bool, default True
        Score the true class by its softmax probability (``True``) or by the
        raw model output (``False``, for models that end in a softmax).
    progress : bool, default False

    Returns
    -------
    pandas.DataFrame
        One row per percentage in increasing order, the unmodified data at
        :func:`unmodified_point` (0 % removed, or 100 % kept): ``percentage``,
        ``accuracy``, ``true_class_score`` (mean over samples),
        ``removed_fraction``. ``frame.attrs["correct"]``: whether each sample is
        classified right, a bool array (rows of the frame, samples), from which
        :mod:`quantus_roar.stats` bootstraps intervals over samples.
    """
    owner = "deletion_curve"
    rule = Removal.ensure(removal, owner=owner)
    ps = _without_unmodified(check_percentages(percentages, owner), rule.order)
    check_model(model, owner)
    check_batch_size(batch_size, owner)
    device = model_device(model)
    data, x_t, y_t = _check_split(data, "data", owner)
    x_t = x_t.to(model_dtype(model))
    a_t = as_tensor(data.a, "data.a", owner)
    nd, cl = x_t.ndim, data.channel_last
    if rule.imputer.name == "channel_mean" and stats is None:
        stats = training_means(x_t, cl)
    ids = sample_ids(data, len(x_t)).to(device)
    n, n_p = len(x_t), len(ps) + 1
    totals = torch.zeros(3, n_p, dtype=torch.float64, device=device)  # correct, score, removed
    correct: list[torch.Tensor] = []
    with evaluating(model):
        for start in tqdm(range(0, n, batch_size), desc="deleting", disable=not progress,
                          leave=False):
            xb = x_t[start : start + batch_size].to(device)
            ab = a_t[start : start + batch_size].to(device)
            yb = y_t[start : start + batch_size].to(device)
            batch = xb[None]
            if ps:
                xr, frac = rule.apply(to_channels_first(xb, nd, cl),
                                      to_channels_first(ab, nd, cl), ps, stats=stats,
                                      sample_ids=ids[start : start + batch_size])
                if cl and nd >= 3:
                    xr = xr.movedim(2, -1)
                batch = torch.cat([batch, xr])
                totals[2, 1:] += frac.to(device) * len(xb)
            right, sums = _scored(model, batch, yb, softmax, owner)
            totals[:2] += sums
            correct.append(right.cpu())
    accuracy, score, removed = (totals / n).tolist()
    frame = pd.DataFrame({
        "percentage": [unmodified_point(rule.order), *(_key(p) for p in ps)],
        "accuracy": accuracy, "true_class_score": score, "removed_fraction": removed,
    })
    order = np.argsort(frame["percentage"].to_numpy(), kind="stable")
    frame = frame.iloc[order].reset_index(drop=True)
    frame.attrs["correct"] = torch.cat(correct, dim=1).numpy()[order]
    return frame
