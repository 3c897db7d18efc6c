"""The retraining protocol and its default batch entry point."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

__all__ = ["RetrainJob", "Retrainer", "RetrainerBase", "fit_score_many", "fit_task"]


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
        return _loop(self, jobs, progress)


def _loop(retrainer: Any, jobs: Iterable[Any], progress: bool) -> list[float]:
    jobs = [RetrainJob(*job) for job in jobs]
    scores = []
    for job in tqdm(jobs, desc="retraining", disable=not progress, leave=False):
        model = retrainer.fit(job.x_train, job.y_train, seed=job.seed)
        scores.append(float(retrainer.score(model, job.x_test, job.y_test)))
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
        If ``retrainer`` has neither ``fit_score_many`` nor ``fit`` and ``score``.
    """
    method = getattr(retrainer, "fit_score_many", None)
    if callable(method):
        try:
            return list(method(jobs, progress=progress))
        except TypeError as err:  # a user's fit_score_many without the keyword
            if "progress" not in str(err):
                raise
            return list(method(jobs))
    if not isinstance(retrainer, Retrainer):
        raise TypeError(
            "The 'retrainer' must have fit(x, y, *, seed) -> nn.Module and "
            f"score(model, x, y) -> float methods. Got {type(retrainer).__name__} instead."
        )
    return _loop(retrainer, jobs, progress)


def fit_task(retrainer: Any, x: Any, y: Any, seed: int, min_accuracy: float | None = None,
             max_epochs: int | None = None) -> tuple[torch.nn.Module, float]:
    """Train one model and measure its training accuracy: a task for an executor.

    With ``min_accuracy``, a retrainer that has ``fit_until`` (as
    :class:`~quantus_roar.TorchRetrainer`) trains until it reaches it (at most
    ``max_epochs``); any other is called once with ``fit``.

    Returns
    -------
    model, train_accuracy
    """
    fit_until = getattr(retrainer, "fit_until", None)
    if min_accuracy is not None and callable(fit_until):
        model, acc = fit_until(x, y, seed=seed, min_accuracy=min_accuracy,
                               max_epochs=max_epochs)
        return model, float(acc)
    model = retrainer.fit(x, y, seed=seed)
    return model, float(retrainer.score(model, x, y))
