"""The removal rule as one value: what is removed, how it is ranked, and how it is filled."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from quantus_roar._validation import as_tensor, check_choice, check_seed
from quantus_roar.removal.imputers import ChannelMean, Constant, Imputer, impute
from quantus_roar.removal.ranking import (
    GRANULARITIES,
    ORDERS,
    REDUCES,
    Granularity,
    Order,
    Reduce,
    removal_masks,
)

__all__ = ["Removal"]


@dataclass(frozen=True)
class Removal:
    """One removal rule, passed whole from the metrics and the runner down to the engine.

    Attributes
    ----------
    order : {"remove_top", "keep_top"}, default "remove_top"
        Remove the most important features (ROAR, MoRF deletion), or keep
        them and remove the rest (KAR, LeRF).
    granularity : {"pixel", "value"}, default "pixel"
        Rank spatial positions (all channels of a chosen pixel go) or every
        channel value on its own (see :func:`~quantus_roar.removal.removal_masks`).
    reduce : {"sum_abs", "sum", "max_abs", "l2"}, default "sum_abs"
        How a pixel's channels (or one value) become its score.
    imputer : Imputer or str, default ChannelMean()
        The fill (:mod:`quantus_roar.removal.imputers`); a name is turned
        into its object with default settings.
    seed : int, default 0
        Seeds tie-breaking and imputation noise, keyed per sample id.

    Examples
    --------
    >>> rule = Removal(imputer="noisy_linear")
    >>> rule.imputer
    NoisyLinear(noise=0.01, tol=1e-06, max_iter=1000)
    >>> x_removed, fraction = rule.apply(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), [25])
    >>> x_removed.shape, fraction.tolist()
    (torch.Size([1, 2, 1, 4, 4]), [0.25])
    """

    order: Order = "remove_top"
    granularity: Granularity = "pixel"
    reduce: Reduce = "sum_abs"
    imputer: Imputer = field(default_factory=ChannelMean)
    seed: int = 0

    def __post_init__(self) -> None:
        owner = "Removal"
        check_choice(self.order, "order", owner, ORDERS)
        check_choice(self.granularity, "granularity", owner, GRANULARITIES)
        check_choice(self.reduce, "reduce", owner, REDUCES)
        object.__setattr__(self, "seed", check_seed(self.seed, owner))
        object.__setattr__(self, "imputer", Imputer.ensure(self.imputer, owner=owner))

    @classmethod
    def ensure(cls, removal: Removal | None = None, *, imputer_kwargs: dict | None = None,
               owner: str = "Removal", **rule: Any) -> Removal:
        """``removal`` as it is, or a rule built from the keywords of the old signatures
        (``order``, ``granularity``, ``reduce``, ``imputer``, ``imputer_kwargs``, ``seed``)."""
        if removal is not None:
            if not isinstance(removal, Removal):
                raise TypeError(f"The 'removal' parameter of {owner} must be a "
                                f"quantus_roar.removal.Removal. Got {type(removal).__name__} "
                                "instead.")
            extra = sorted([*rule, *(["imputer_kwargs"] if imputer_kwargs else [])])
            if extra:
                raise TypeError(f"{owner} got a 'removal' rule and the keyword(s) {extra}; give "
                                "one or the other.")
            return removal
        unknown = sorted(set(rule) - {"order", "granularity", "reduce", "imputer", "seed"})
        if unknown:
            raise TypeError(f"{owner} got unexpected keyword argument(s) {unknown}.")
        imputer = Imputer.ensure(rule.pop("imputer", "channel_mean"), imputer_kwargs, owner)
        return cls(imputer=imputer, **rule)

    def describe(self) -> dict[str, Any]:
        """The rule as plain values: for fingerprints, result tables and reports."""
        return {"order": self.order, "granularity": self.granularity, "reduce": self.reduce,
                "imputer": self.imputer.name, "imputer_kwargs": self.imputer.settings(),
                "seed": self.seed}

    def mask_only(self) -> Removal:
        """The rule whose :meth:`apply` to all-zero inputs gives the masks themselves (1
        where removed): ranking, ties and counts of this rule, filled with
        ``Constant(1.0)``. What :class:`~quantus_roar.MaskLeakage` trains on."""
        return replace(self, imputer=Constant(1.0))

    def masks(self, a: Any, percentages: float | Iterable[float], *,
              sample_ids: Any = None) -> torch.Tensor | np.ndarray:
        """:func:`~quantus_roar.removal.removal_masks` under this rule."""
        return removal_masks(a, percentages, order=self.order, granularity=self.granularity,
                             reduce=self.reduce, seed=self.seed, sample_ids=sample_ids)

    def apply(self, x: Any, a: Any, percentages: float | Iterable[float], *,
              stats: Any = None, sample_ids: Any = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs with features removed at every percentage, and the share removed.

        Parameters
        ----------
        x : tensor or array
            Inputs (N, C, H, W), (N, C, T) or (N, F), channel-first.
        a : tensor or array
            Attributions of the shape of ``x`` or with one channel.
        percentages : float or sequence of float
            Each in (0, 100]: removed (``remove_top``) or kept (``keep_top``).
        stats : array-like, optional
            Training-set channel means for :class:`ChannelMean`.
        sample_ids : sequence of int, optional
            Each sample's position in the full dataset (default ``0..N-1``).

        Returns
        -------
        x_removed : torch.Tensor
            Shape (P, *x.shape), on the device of ``x``.
        removed_fraction : torch.Tensor
            Shape (P,): the share of input values actually replaced.
        """
        owner = "Removal.apply"
        x_t = as_tensor(x, "x", owner)
        a_t = as_tensor(a, "a", owner).to(x_t.device)
        x_r, a_r = _layout(x_t, a_t, owner)
        masks = self.masks(a_r, percentages, sample_ids=sample_ids)
        out = impute(x_r, masks, self.imputer, stats=stats, seed=self.seed,
                     sample_ids=sample_ids)
        n_values = x_r[0].numel() * x_r.shape[0]
        per_p = masks.reshape(masks.shape[0], masks.shape[1], -1).sum(dim=(1, 2))
        scale = x_r.shape[1] // masks.shape[2] if masks.ndim == x_r.ndim + 1 else 1
        fraction = per_p.double() * scale / n_values
        return out.reshape(out.shape[0], *x_t.shape), fraction


def _layout(x: torch.Tensor, a: torch.Tensor, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of ``x`` and ``a`` in the engine's layout (time series as height-1 images)."""
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"The 'x' parameter of {owner} must have shape (N, F), (N, C, T) or "
                         f"(N, C, H, W). Got shape {tuple(x.shape)} instead.")
    if a.ndim == x.ndim - 1 and x.ndim >= 3:
        a = a.unsqueeze(1)
    ok = a.shape[0] == x.shape[0] and a.ndim == x.ndim and a.shape[2:] == x.shape[2:] and (
        a.shape[1] in (1, x.shape[1]))
    if not ok:
        raise ValueError(
            f"The 'a' parameter of {owner} must have the shape of the inputs {tuple(x.shape)}, "
            f"or a single channel. Got shape {tuple(a.shape)} instead."
        )
    if x.ndim == 3:
        return x.unsqueeze(2), a.unsqueeze(2)
    return x, a
