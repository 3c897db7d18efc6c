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
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from quantus_roar.exceptions import QuantusRoarWarning
from quantus_roar.randomisation import LayerOrder, fresh_model, randomised_models
from quantus_roar.similarity import SIMILARITIES

__all__ = ["SanitySeeds", "compare", "derived_seed", "model_randomisation_steps",
           "permuted_labels"]

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
