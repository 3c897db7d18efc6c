"""The sanity checks of Adebayo et al. as functions: one seed scheme, one comparison.

:class:`~quantus_roar.ModelRandomisation`, :class:`~quantus_roar.DataRandomisation`
and the benchmark runner all build their models with these functions and
compare explanations with :func:`compare`, so a change here reaches every one
of them. Plain PyTorch and numpy, no Quantus import.

* :class:`SanitySeeds` -- every seed of one repeat (layer re-initialisation,
  the floor model, the ceiling model, the label permutation, the random-label
  fit), derived from one seed and the repeat's index.
* :func:`model_randomisation_steps` -- the models compared with the original:
  one per randomised layer, then the ``"floor"`` (every layer fresh) and the
  ``"ceiling"`` (another training seed) references.
* :func:`permuted_labels` -- the labels of the data randomisation test.
* :func:`compare` -- per-sample similarity of two batches of explanations.
* :func:`model_randomisation` and :func:`data_randomisation` -- the two
  checks: every model compared, explained by the caller's function and
  compared with the original explanations, one :class:`Comparison` per step.

The metrics and the runner differ only in how they explain (a Quantus
explain_func in batches, or the runner's cached estimators) and in what they
keep of each :class:`Comparison` (per-sample rows, or the mean).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from quantus_roar.exceptions import QuantusRoarWarning
from quantus_roar.randomisation import LayerOrder, fresh_model, randomised_models
from quantus_roar.similarity import SIMILARITIES

__all__ = ["Comparison", "Explain", "SanitySeeds", "compare", "data_randomisation",
           "derived_seed", "model_randomisation", "model_randomisation_steps", "permuted_labels"]

#: ``explain(model, step) -> attributions``: the explanations of the checked samples
#: by ``model``, the model compared at ``step`` (``"original"`` for the trained model).
#: Every call must explain the same samples for the same target classes.
Explain = Callable[[nn.Module, str], torch.Tensor]

# Spawn keys of the derived seeds (1 and 7 are the runner's explained model and
# sanity-sample subset).
_LAYERS, _FLOOR, _CEILING, _PERMUTATION, _RANDOM_FIT = 2, 3, 4, 5, 6


def derived_seed(seed: int, *key: int) -> int:
    """A 32-bit seed drawn from ``SeedSequence(seed, spawn_key=(0x5EED, *key))``.

    Examples
    --------
    >>> derived_seed(0, 2, 0) == derived_seed(0, 2, 0) != derived_seed(0, 2, 1)
    True
    """
    return int(np.random.SeedSequence(int(seed), spawn_key=(0x5EED, *key)).generate_state(1)[0])


@dataclass(frozen=True)
class SanitySeeds:
    """The seeds of one repeat of the sanity checks.

    Attributes
    ----------
    layers : int
        Re-initialisation of the randomised layers (every layer is reset
        under a forked RNG seeded with it).
    floor : int
        Re-initialisation of every layer at once: the floor model.
    ceiling : int
        Training seed of the ceiling model (the same recipe, another seed).
    permutation : int
        The permutation of the training labels (data randomisation).
    fit : int
        Training seed of the random-label model.
    """

    layers: int
    floor: int
    ceiling: int
    permutation: int
    fit: int

    @classmethod
    def derive(cls, seed: int, repeat: int = 0) -> SanitySeeds:
        """The seeds of repeat ``repeat`` of a check seeded with ``seed``.

        The metrics with ``seed=s`` use repeat 0; the runner's repeat ``r``
        of a run seeded ``s`` uses ``derive(s, r)``, so its first repeat is
        the metrics' numbers.
        """
        return cls(*(derived_seed(seed, key, repeat)
                     for key in (_LAYERS, _FLOOR, _CEILING, _PERMUTATION, _RANDOM_FIT)))


def model_randomisation_steps(
    model: nn.Module, layers: list[str], layer_order: LayerOrder, seeds: SanitySeeds,
    ceiling: nn.Module | None = None,
) -> Iterator[tuple[str, nn.Module]]:
    """The models the model randomisation test compares with ``model``, in order.

    Yields ``(layer, model)`` for each step of
    :func:`~quantus_roar.randomisation.randomised_models` (cascading copies
    are changed in place from step to step: use each before advancing), then
    ``("floor", every layer re-initialised)`` and, when given, ``("ceiling",
    ceiling)``. ``model`` itself is never modified.
    """
    yield from randomised_models(model, layers, layer_order, seeds.layers)
    yield "floor", fresh_model(model, layers, seeds.floor)
    if ceiling is not None:
        yield "ceiling", ceiling


def permuted_labels(y: torch.Tensor | np.ndarray, seeds: SanitySeeds) -> np.ndarray:
    """The training labels of the data randomisation test: ``y`` permuted with
    ``seeds.permutation`` (every label count kept)."""
    y_np = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    return np.random.default_rng(seeds.permutation).permutation(y_np)


def compare(original: torch.Tensor, other: torch.Tensor, similarities: Sequence[str]
            ) -> dict[str, np.ndarray]:
    """Per-sample similarity of two batches of explanations, for each named similarity.

    Returns
    -------
    dict
        ``{name: float array of shape (N,)}`` (NaN where a similarity is
        undefined, e.g. Spearman of a constant map).
    """
    out = {name: SIMILARITIES[name](original, other).cpu().numpy() for name in similarities}
    for name, values in out.items():
        n_nan = int(np.isnan(values).sum())
        if n_nan:
            warnings.warn(f"The similarity {name!r} is undefined (NaN) for {n_nan} of "
                          f"{len(values)} samples: their explanations are constant (e.g. all "
                          "zero), so a rank correlation cannot be computed. Means leave them "
                          "out; if every sample is NaN the check has no result. Check the "
                          "explain function.", QuantusRoarWarning, stacklevel=2)
    return out


@dataclass(frozen=True)
class Comparison:
    """One model of a sanity check compared with the original.

    Attributes
    ----------
    step : str
        The model compared: a layer name (model randomisation), ``"floor"``,
        ``"ceiling"`` or ``"random_labels"`` (data randomisation).
    similarities : dict
        ``{similarity: float array of shape (N,)}``, per sample (NaN where
        undefined).
    time_s : float
        Seconds to explain the model and compare.
    """

    step: str
    similarities: dict[str, np.ndarray]
    time_s: float


def _compared(model: nn.Module, explain: Explain, models: Iterable[tuple[str, nn.Module]],
              similarities: Sequence[str], steps: Collection[str] | None
              ) -> Iterator[Comparison]:
    original = None
    for step, changed in models:
        if steps is not None and step not in steps:
            continue
        if original is None:  # only when some step is wanted
            original = explain(model, "original")
        start = time.perf_counter()
        values = compare(original, explain(changed, step), similarities)
        yield Comparison(step, values, time.perf_counter() - start)


def _check_steps(steps: Collection[str] | None, known: Sequence[str], check: str) -> None:
    unknown = [] if steps is None else sorted(set(steps) - set(known))
    if unknown:
        raise ValueError(f"The 'steps' parameter of {check} must name steps of the check "
                         f"{list(known)}. Got {unknown} instead.")


def model_randomisation(
    model: nn.Module, explain: Explain, layers: list[str], *, seeds: SanitySeeds,
    similarities: Sequence[str], layer_order: LayerOrder = "top_down",
    ceiling: nn.Module | None = None, steps: Collection[str] | None = None,
) -> Iterator[Comparison]:
    """The model parameter randomisation test (Adebayo et al., 2018), step by step.

    Explains the samples with ``model`` (step ``"original"``), then with each
    model of :func:`model_randomisation_steps` -- the layers randomised in
    ``layer_order``, the ``"floor"`` and, when given, the ``"ceiling"`` --
    and compares each with the original per sample. Lazy: each step is
    computed when the iterator reaches it, so a caller can show progress,
    and the cascading copies are never held at once.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model; never modified.
    explain : callable
        ``explain(model, step) -> attributions`` (see :data:`Explain`).
    layers : list of str
        The layers to randomise, in execution order
        (:func:`~quantus_roar.randomisation.execution_order`).
    seeds : SanitySeeds
        The seeds of this repeat (``SanitySeeds.derive(seed, repeat)``).
    similarities : sequence of str
        Names in :data:`quantus_roar.similarity.SIMILARITIES`.
    layer_order : {"top_down", "bottom_up", "independent"}, default "top_down"
    ceiling : torch.nn.Module, optional
        A model trained with another seed (the reference an explanation
        that depends on the model still differs from).
    steps : collection of str, optional
        Compute only these steps (the others are still randomised in
        cascade, but not explained).

    Yields
    ------
    Comparison
        One per step, in order.

    References
    ----------
    .. [1] Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018.
    """
    _check_steps(steps, [*layers, "floor"] + (["ceiling"] if ceiling is not None else []),
                 "model_randomisation")
    models = model_randomisation_steps(model, layers, layer_order, seeds, ceiling)
    return _compared(model, explain, models, similarities, steps)


def data_randomisation(
    model: nn.Module, explain: Explain, layers: list[str], *, seeds: SanitySeeds,
    similarities: Sequence[str], random_label_model: nn.Module | None,
    ceiling: nn.Module | None, steps: Collection[str] | None = None,
) -> Iterator[Comparison]:
    """The data (label) randomisation test (Adebayo et al., 2018).

    Compares the original explanations with those of the model trained on
    permuted labels (``"random_labels"``), and of the two references:
    ``"floor"`` (every layer of ``model`` re-initialised with
    ``seeds.floor``) and ``"ceiling"`` (trained on the true labels with
    another seed). The models are trained by the caller (the metric as two
    executor tasks, the runner as units of its own), with
    ``permuted_labels(y, seeds)`` and the seeds ``seeds.fit`` and
    ``seeds.ceiling``.

    Parameters
    ----------
    model, explain, layers, seeds, similarities
        As :func:`model_randomisation`.
    random_label_model, ceiling : torch.nn.Module or None
        The trained models; None skips that step (it must then not be in
        ``steps``).
    steps : collection of str, optional
        Compute only these steps.

    Yields
    ------
    Comparison
        ``"random_labels"``, ``"floor"``, ``"ceiling"``, in that order, for
        the steps computed.

    References
    ----------
    .. [1] Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018.
    """
    trained = {"random_labels": random_label_model, "ceiling": ceiling}
    _check_steps(steps, [k for k in ("random_labels", "floor", "ceiling")
                         if k == "floor" or trained[k] is not None], "data_randomisation")

    def models() -> Iterator[tuple[str, nn.Module]]:
        if random_label_model is not None:
            yield "random_labels", random_label_model
        if steps is None or "floor" in steps:
            yield "floor", fresh_model(model, layers, seeds.floor)
        if ceiling is not None:
            yield "ceiling", ceiling

    return _compared(model, explain, models(), similarities, steps)
