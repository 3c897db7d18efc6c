"""A training recipe: how :class:`~quantus_roar.retrain.TorchRetrainer` trains, as one value."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch

from quantus_roar._validation import Choice, Constraint, Func, Int, Real, _msg, check_params

__all__ = ["Augment", "Recipe", "recipe_from"]

#: ``augment(x_batch, generator) -> x_batch``, on whole mini-batches on the device.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

# What each field must be; the messages name the owner that was given the value.
_CONSTRAINTS: dict[str, Constraint] = {
    "epochs": Int(1),
    "batch_size": Int(1),
    "optimizer": Choice(("adam", "sgd")),
    "lr": Real(0, open="low"),
    "weight_decay": Real(0),
    "momentum": Real(0, 1, open="high"),
    "schedule": Choice((None, "onecycle", "cosine", "step")),
    "label_smoothing": Real(0, 1, open="high"),
    "augment": Func("callable (x_batch, generator) -> x_batch, or None", optional=True),
    "validation_split": Real(0, 1, open="high"),
}


@dataclass(frozen=True)
class Recipe:
    """How each model is trained: the settings of a :class:`TorchRetrainer` that decide the
    weights, apart from the model, the data and the seed.

    Parameters
    ----------
    epochs : int, default 12
        Passes over the training data; a positive integer (not a bool).
    batch_size : int, default 64
        Samples per mini-batch (per model); a positive integer.
    optimizer : {"adam", "sgd"}, default "adam"
        Adam (``weight_decay`` as L2, as torch's Adam) or SGD with ``momentum``.
    lr : float, default 1e-2
        (Peak) learning rate per optimizer step; finite and > 0.
    weight_decay : float, default 0.0
        L2 coefficient added to each gradient; finite and >= 0.
    momentum : float, default 0.9
        SGD momentum in [0, 1), constant through every schedule (ignored by Adam).
    schedule : {None, "onecycle", "cosine", "step"}, default "onecycle"
        Learning-rate schedule over all steps, stepped after every mini-batch.
        ``"step"`` divides the rate by 10 after each third of training.
        ``"onecycle"`` is torch's ``OneCycleLR``; with Adam it also cycles
        Adam's ``beta1`` between 0.95 and 0.85 (torch's default
        ``cycle_momentum=True``, part of the default recipe), while SGD keeps
        its ``momentum`` as given.
    label_smoothing : float, default 0.0
        Probability mass spread evenly over all classes, in [0, 1).
    augment : callable, optional
        ``augment(x_batch, generator) -> x_batch`` on whole mini-batches on the
        device; it must return a finite tensor of the shape and dtype it was
        given. In the ensemble path it receives the batches of all models at
        once, flattened to (M * B, ...), so its draws differ from the
        one-at-a-time path.
    validation_split : float, default 0.0
        Fraction in [0, 1) of each job's training samples held out (seeded by
        the job's seed) to select the epoch with the best validation accuracy.

    Raises
    ------
    TypeError
        If a number field has the wrong type (bools are not numbers) or
        ``augment`` is not callable.
    ValueError
        If a number is out of range or not finite, or ``optimizer`` or
        ``schedule`` is not one of its choices.

    Notes
    -----
    The defaults are the recipe chosen for :class:`~quantus_roar.models.SmallCNN`
    on the embedded digits (the fewest epochs that reach 97% mean test
    accuracy); set them deliberately for any other model or data. A recipe is
    frozen: derive another with :func:`dataclasses.replace`.

    Examples
    --------
    >>> import dataclasses
    >>> recipe = Recipe(epochs=3, lr=1e-3)
    >>> recipe.epochs, recipe.optimizer, recipe.schedule
    (3, 'adam', 'onecycle')
    >>> dataclasses.replace(recipe, optimizer="sgd").momentum
    0.9
    >>> Recipe(lr=0)
    Traceback (most recent call last):
    ...
    ValueError: The 'lr' parameter of Recipe must be a finite number > 0. Got 0 instead.
    """

    epochs: int = 12  # passes over the training data
    batch_size: int = 64  # samples per mini-batch, per model
    optimizer: Literal["adam", "sgd"] = "adam"  # Adam (L2 weight decay) or SGD with momentum
    lr: float = 1e-2  # peak learning rate, per optimizer step
    weight_decay: float = 0.0  # L2 coefficient, added to each gradient
    momentum: float = 0.9  # SGD momentum, fraction of the last update kept; unused by Adam
    schedule: Literal["onecycle", "cosine", "step"] | None = "onecycle"  # lr over all steps
    label_smoothing: float = 0.0  # probability mass spread over all classes, in [0, 1)
    augment: Augment | None = None  # (x_batch, generator) -> x_batch, on the device
    validation_split: float = 0.0  # fraction of each job's training samples held out

    def __post_init__(self) -> None:
        checked = check_params("Recipe", _CONSTRAINTS, _values(self))
        for name, value in checked.items():  # the cleaned values: int, float, the choice
            object.__setattr__(self, name, value)


def _values(recipe: Recipe) -> dict[str, Any]:
    return {f.name: getattr(recipe, f.name) for f in fields(recipe)}


def _unknown_keywords(names: list[str], owner: str, others: tuple[str, ...]) -> TypeError:
    """The error for keywords that are neither ``owner``'s own (``others``) nor recipe fields."""
    hints = [f"'{n}' (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(
        n, [*others, *_CONSTRAINTS], n=1)) else f"'{n}'" for n in names]
    return TypeError(f"{owner} got unexpected keyword argument(s) {', '.join(hints)}. Its "
                     f"keywords are {', '.join(others)} and the fields of Recipe: "
                     f"{', '.join(_CONSTRAINTS)}.")


def recipe_from(recipe: Any, overrides: Mapping[str, Any], owner: str,
                others: tuple[str, ...] = ()) -> Recipe:
    """``recipe`` (the default :class:`Recipe` if None) with the fields in ``overrides``
    replaced, every value checked with ``owner`` named in the messages.

    Raises
    ------
    TypeError
        If ``recipe`` is not a Recipe, or a key of ``overrides`` is not one of its
        fields (the message lists the fields and ``owner``'s own keywords, ``others``).
    """
    if recipe is not None and not isinstance(recipe, Recipe):
        raise TypeError(_msg("recipe", owner, "a quantus_roar.retrain.Recipe or None",
                             type(recipe).__name__))
    unknown = [name for name in overrides if name not in _CONSTRAINTS]
    if unknown:
        raise _unknown_keywords(unknown, owner, others)
    return replace(recipe if recipe is not None else Recipe(),
                   **check_params(owner, _CONSTRAINTS, overrides))
