"""The retraining protocol and its default batch entry point."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm

from quantus_roar._validation import _msg

__all__ = ["RetrainJob", "Retrainer", "RetrainerBase", "check_retrainer", "fit_correct_many",
           "fit_score_many", "fit_task"]


class RetrainJob(NamedTuple):
    """One retraining: train a fresh model on ``(x_train, y_train)`` with ``seed``,
    report its accuracy on ``(x_test, y_test)``.

    Arrays are batch-first tensors or numpy arrays: inputs (N, ...), labels (N,)
    integers in [0, n_classes).
    """

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    seed: int


@runtime_checkable
class Retrainer(Protocol):
    """What the metrics need from a training recipe.

    Any object with these two methods is accepted; the metrics call
    :func:`fit_score_many`, which uses the object's own ``fit_score_many``
    when it has one (for example to train several models at once) and
    otherwise loops over ``fit`` and ``score``.
    """

    def fit(self, x: Any, y: Any, *, seed: int) -> torch.nn.Module:
        """Train a freshly initialised model on ``(x, y)``; same seed, same model."""
        ...

    def score(self, model: torch.nn.Module, x: Any, y: Any) -> float:
        """Accuracy of ``model`` on ``(x, y)``, in [0, 1]."""
        ...


class RetrainerBase:
    """Mixin giving a :class:`Retrainer` the default ``fit_score_many`` loop."""

    def fit(self, x: Any, y: Any, *, seed: int) -> torch.nn.Module:  # pragma: no cover
        raise NotImplementedError

    def score(self, model: torch.nn.Module, x: Any, y: Any) -> float:  # pragma: no cover
        raise NotImplementedError

    def fit_score_many(
        self, jobs: Sequence[RetrainJob | tuple], *, progress: bool = False
    ) -> list[float]:
        """Test accuracy of every job, in order, one ``fit`` and ``score`` at a time."""
        return _loop(self, jobs, progress, f"{type(self).__name__}.fit_score_many")


def _check_instance(retrainer: Any, owner: str) -> None:
    """Refuse a retrainer class where an instance belongs."""
    if isinstance(retrainer, type):
        name = retrainer.__name__
        example = ("TorchRetrainer(model)"
                   if any(c.__name__ == "TorchRetrainer" for c in retrainer.__mro__)
                   else f"{name}(...)")
        raise TypeError(_msg("retrainer", owner, "a retrainer instance", f"the class {name}")
                        + f" Pass an instance, e.g. {example}, not the class itself.")


def check_retrainer(retrainer: Any, owner: str) -> Any:
    """``retrainer`` if it is an instance with ``fit_score_many``, or ``fit`` and ``score``.

    Raises
    ------
    TypeError
        For a class instead of an instance, or an object without those methods.
    """
    _check_instance(retrainer, owner)
    if not (callable(getattr(retrainer, "fit_score_many", None))
            or (callable(getattr(retrainer, "fit", None))
                and callable(getattr(retrainer, "score", None)))):
        raise TypeError(f"The 'retrainer' parameter of {owner} must have fit(x, y, *, seed) "
                        "and score(model, x, y) methods (see quantus_roar.Retrainer). Got "
                        f"{type(retrainer).__name__} instead.")
    return retrainer


_JOB = "a RetrainJob or a 5-tuple (x_train, y_train, x_test, y_test, seed)"


def _as_jobs(jobs: Any, owner: str) -> list[RetrainJob]:
    """``jobs`` as a list of :class:`RetrainJob`, refusing anything that is not one or a 5-tuple."""
    expected = "a sequence of RetrainJob or 5-tuples (x_train, y_train, x_test, y_test, seed)"
    if isinstance(jobs, RetrainJob):
        raise TypeError(_msg("jobs", owner, expected, "a single RetrainJob")
                        + " Wrap it in a list: [job].")
    if isinstance(jobs, (str, bytes, dict)) or not isinstance(jobs, Iterable):
        raise TypeError(_msg("jobs", owner, expected, type(jobs).__name__))
    out = []
    for i, job in enumerate(jobs):
        if isinstance(job, RetrainJob):
            out.append(job)
        elif not isinstance(job, (tuple, list)):
            raise TypeError(_msg(f"jobs[{i}]", owner, _JOB, f"a {type(job).__name__}"))
        elif len(job) != 5:
            raise ValueError(_msg(f"jobs[{i}]", owner, _JOB,
                                  f"a {type(job).__name__} of length {len(job)}")
                             + " With torch Datasets as data, pass y_train=None and y_test=None.")
        else:
            out.append(RetrainJob(*job))
    return out


_SCORE_HINT = (" A retrainer's score is the share of test samples classified correctly; a "
               "percentage or a count of correct samples must be divided first, and NaN usually "
               "means the model's weights are NaN (training diverged).")


def check_score(value: Any, where: str, owner: str) -> float:
    """``value`` as a float if it is an accuracy: a real, finite number in [0, 1].

    Python and numpy numbers and 0-d tensors or arrays are accepted; bools,
    tensors or arrays of several values, NaN, inf and values outside [0, 1]
    are not. ``where`` names the job (``"jobs[3]"``).
    """
    v = value
    if isinstance(v, (torch.Tensor, np.ndarray)):
        if v.ndim != 0:
            raise TypeError(f"{owner} got a score for {where} that is not one number: a "
                            f"{type(v).__name__} of shape {tuple(v.shape)} "
                            f"({v.tolist()!r:.80}). The score must be one accuracy in [0, 1] per "
                            "job, e.g. float(correct) / n.")
        v = v.item()
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                            np.floating)):
        raise TypeError(f"{owner} got a score for {where} that is not a real number: "
                        f"{value!r:.80} ({type(value).__name__}). The score must be an accuracy "
                        "in [0, 1].")
    f = float(v)
    if not (math.isfinite(f) and 0.0 <= f <= 1.0):
        raise ValueError(f"{owner} got a score for {where} of {f!r}, which is not an accuracy "
                         "(a finite number in [0, 1])." + _SCORE_HINT)
    return f


def check_scores(scores: Any, n_jobs: int, owner: str) -> list[float]:
    """What a ``fit_score_many`` returned, as one checked accuracy per job (:func:`check_score`)."""
    if (isinstance(scores, (str, bytes, dict)) or not isinstance(scores, Iterable)
            or (isinstance(scores, (torch.Tensor, np.ndarray)) and scores.ndim == 0)):
        raise TypeError(f"{owner} returned {type(scores).__name__} for {n_jobs} jobs; it must "
                        "return one accuracy per job, in order (a list of floats).")
    values = list(scores)
    if len(values) != n_jobs:
        raise RuntimeError(f"{owner} returned {len(values)} scores for {n_jobs} jobs; it must "
                           "return one accuracy per job, in order.")
    return [check_score(v, f"jobs[{i}]", owner) for i, v in enumerate(values)]


def _loop(retrainer: Any, jobs: Iterable[Any], progress: bool,
          owner: str = "fit_score_many") -> list[float]:
    jobs = _as_jobs(jobs, owner)
    scores = []
    name = f"{type(retrainer).__name__}.score"
    for i, job in enumerate(tqdm(jobs, desc="retraining", disable=not progress, leave=False)):
        model = retrainer.fit(job.x_train, job.y_train, seed=job.seed)
        scores.append(check_score(retrainer.score(model, job.x_test, job.y_test),
                                  f"jobs[{i}] (seed {job.seed})", f"{owner} (from {name})"))
    return scores


def fit_score_many(
    retrainer: Any, jobs: Sequence[RetrainJob | tuple], *, progress: bool = False
) -> list[float]:
    """Run every job through ``retrainer`` and return the test accuracies in order.

    Uses ``retrainer.fit_score_many`` when the object has it, else calls
    ``fit`` and ``score`` job by job.

    Raises
    ------
    TypeError
        If ``retrainer`` is a class rather than an instance, has neither
        ``fit_score_many`` nor ``fit`` and ``score``, or a job is not a
        :class:`RetrainJob` or tuple.
    ValueError
        If a job tuple does not have five entries, or a score is NaN, inf or
        outside [0, 1] (the message names the job and the value).
    RuntimeError
        If the retrainer's ``fit_score_many`` returns another number of
        scores than jobs.
    """
    check_retrainer(retrainer, "fit_score_many")
    jobs = _as_jobs(jobs, "fit_score_many")
    method = getattr(retrainer, "fit_score_many", None)
    if callable(method):
        owner = f"{type(retrainer).__name__}.fit_score_many"
        try:
            scores = method(jobs, progress=progress)
        except TypeError as err:  # a user's fit_score_many without the keyword
            if "progress" not in str(err):
                raise
            scores = method(jobs)
        return check_scores(scores, len(jobs), owner)
    return _loop(retrainer, jobs, progress)


def _overrides(cls: type, name: str, other: str) -> bool:
    """Whether ``cls`` defines ``name`` in a subclass of where ``other`` is defined: a
    subclass of TorchRetrainer with its own fit_score_many is used through it."""
    def definer(attr: str) -> type | None:
        return next((k for k in cls.__mro__ if attr in vars(k)), None)

    mine, theirs = definer(name), definer(other)
    return mine is not None and theirs is not None and mine is not theirs and \
        issubclass(mine, theirs)


def fit_correct_many(retrainer: Any, jobs: Sequence[RetrainJob | tuple], *,
                     progress: bool = False) -> list[np.ndarray] | None:
    """Per test sample, whether each job's model is right, when ``retrainer`` can say.

    A retrainer with an optional ``fit_correct_many(jobs, *, progress)`` method (as
    :class:`~quantus_roar.TorchRetrainer`) returns one bool array per job, of its
    test set's length; the accuracies are their means. For any other retrainer
    this returns None and the caller uses :func:`fit_score_many`: its numbers then
    carry intervals over training seeds only, not over test samples. So does a
    subclass that overrides ``fit_score_many`` below the class that defines
    ``fit_correct_many``: its own scoring is the one used.

    Raises
    ------
    TypeError, RuntimeError
        If the method returns another number of arrays than jobs, or an array
        that is not one boolean per test sample.
    """
    method = getattr(retrainer, "fit_correct_many", None)
    if not callable(method) or _overrides(type(retrainer), "fit_score_many",
                                          "fit_correct_many"):
        return None
    jobs = _as_jobs(jobs, "fit_correct_many")
    owner = f"{type(retrainer).__name__}.fit_correct_many"
    out = list(method(jobs, progress=progress))
    if len(out) != len(jobs):
        raise RuntimeError(f"{owner} returned {len(out)} results for {len(jobs)} jobs.")
    checked = []
    for i, (c, job) in enumerate(zip(out, jobs, strict=True)):
        arr = np.asarray(c)
        n = len(job.y_test) if job.y_test is not None else len(arr)
        if arr.dtype != np.bool_ or arr.shape != (n,):
            raise TypeError(f"{owner} must return one boolean per test sample of each job; "
                            f"for job {i} it returned dtype {arr.dtype}, shape {arr.shape} "
                            f"({n} test samples).")
        checked.append(arr)
    return checked


def fit_task(retrainer: Any, x: Any, y: Any, seed: int, min_accuracy: float | None = None,
             max_epochs: int | None = None) -> tuple[torch.nn.Module, float]:
    """Train one model and measure its training accuracy: a task for an executor.

    With ``min_accuracy``, a retrainer that has ``fit_until`` (as
    :class:`~quantus_roar.TorchRetrainer`) trains until it reaches it (at most
    ``max_epochs``); any other is called once with ``fit``.

    Returns
    -------
    model, train_accuracy

    Raises
    ------
    TypeError
        If ``retrainer`` is a class rather than an instance, or has no ``fit``
        and ``score`` methods.
    """
    _check_instance(retrainer, "fit_task")
    if not (callable(getattr(retrainer, "fit", None))
            and callable(getattr(retrainer, "score", None))):
        raise TypeError(_msg("retrainer", "fit_task",
                             "an object with fit(x, y, *, seed) -> nn.Module and "
                             "score(model, x, y) -> float methods", type(retrainer).__name__))
    fit_until = getattr(retrainer, "fit_until", None)
    if min_accuracy is not None and callable(fit_until):
        model, acc = fit_until(x, y, seed=seed, min_accuracy=min_accuracy,
                               max_epochs=max_epochs)
        return model, check_score(acc, f"the model of seed {seed}",
                                  f"fit_task (from {type(retrainer).__name__}.fit_until)")
    model = retrainer.fit(x, y, seed=seed)
    return model, check_score(retrainer.score(model, x, y), f"the model of seed {seed}",
                              f"fit_task (from {type(retrainer).__name__}.score)")
