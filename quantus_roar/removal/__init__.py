"""Feature ranking, nested removal masks and imputation.

The removal engine behind ROAR, KAR and no-retrain deletion. Plain PyTorch:
everything runs batched on the device of its input, and numpy input gives
numpy output.

* :class:`Removal` -- the removal rule as one frozen value (order,
  granularity, reduce, imputer, seed), passed whole from the metrics and the
  runner to the engine; :meth:`Removal.apply` removes and fills.
* :mod:`~quantus_roar.removal.ranking` -- :func:`feature_ranks`,
  :func:`removal_masks`, :func:`removal_counts`.
* :mod:`~quantus_roar.removal.imputers` -- the fills as small objects
  (:class:`ChannelMean`, :class:`Zero`, :class:`ImageMean`, :class:`Blur`,
  :class:`NoisyLinear`, :class:`Constant`; names are shortcuts,
  :meth:`Imputer.ensure`), :func:`impute` and :func:`gaussian_blur`. ROAD's
  solver lives in ``_solver``.

Layouts
-------
Attributions and inputs are batch-first:

* ``(N, C, H, W)`` images (``(N, C, *spatial)`` in general),
* ``(N, H, W)`` single-channel attribution maps, treated as ``(N, 1, H, W)``,
* ``(N, F)`` tabular features.

Time series ``(N, C, T)`` are images of height one: pass them as
``(N, C, 1, T)`` so that channels are grouped per time step.

Randomness
----------
Tie-breaking order and imputation noise come from a counter-based hash of
``(seed, sample id, feature index)``. A sample's mask therefore depends only
on its own attribution, the seed and its id, not on which batch it came in,
and is the same on every device. ``sample_ids`` defaults to ``0..N-1``; pass
the samples' positions in the full dataset when processing it in chunks.
"""

from quantus_roar.removal.imputers import (
    IMPUTER_KWARGS,
    IMPUTERS,
    Blur,
    ChannelMean,
    Constant,
    ImageMean,
    Imputer,
    NoisyLinear,
    Zero,
    channel_means,
    gaussian_blur,
    impute,
)
from quantus_roar.removal.ranking import (
    GRANULARITIES,
    ORDERS,
    REDUCES,
    feature_ranks,
    removal_counts,
    removal_masks,
)
from quantus_roar.removal.rule import Removal

__all__ = [
    "GRANULARITIES",
    "IMPUTERS",
    "IMPUTER_KWARGS",
    "ORDERS",
    "REDUCES",
    "Blur",
    "ChannelMean",
    "Constant",
    "ImageMean",
    "Imputer",
    "NoisyLinear",
    "Removal",
    "Zero",
    "channel_means",
    "feature_ranks",
    "gaussian_blur",
    "impute",
    "removal_counts",
    "removal_masks",
    "warm_up",
]


def warm_up() -> None:
    """Run the removal engine once on a tiny input: every fill, ranking and mask path, so
    the imports and one-time set-up torch does on first use are paid here (a worker
    process calls it at start), not by the first real call."""
    import torch

    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    for imputer in IMPUTERS:
        for order in ORDERS:
            Removal(order=order, imputer=imputer).apply(x, a, [50.0], stats=channel_means(x))
