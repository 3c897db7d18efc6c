"""Ranking features by their attributions and the nested masks of the removal."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch

from quantus_roar._hashing import STREAM_TIES, hash_keys
from quantus_roar._validation import (
    as_tensor,
    check_channel_first,
    check_choice,
    check_finite,
    check_int,
    check_percentages,
    check_seed,
    like_input,
)
from quantus_roar.exceptions import QuantusRoarWarning

__all__ = ["GRANULARITIES", "ORDERS", "REDUCES", "feature_ranks", "removal_counts",
           "removal_masks"]

Order = Literal["remove_top", "keep_top"]
Granularity = Literal["pixel", "value"]
Reduce = Literal["sum_abs", "sum", "max_abs", "l2"]

ORDERS: tuple[str, ...] = ("remove_top", "keep_top")
GRANULARITIES: tuple[str, ...] = ("pixel", "value")
REDUCES: tuple[str, ...] = ("sum_abs", "sum", "max_abs", "l2")


def _sample_ids(sample_ids: Any, n: int, device: torch.device, owner: str) -> torch.Tensor:
    if sample_ids is None:
        return torch.arange(n, device=device)
    ids = as_tensor(sample_ids if isinstance(sample_ids, torch.Tensor)
                    else np.asarray(sample_ids), "sample_ids", owner).to(device=device)
    if ids.shape != (n,) or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(
            f"The 'sample_ids' parameter of {owner} must be {n} integers, one per sample."
            f" Got shape {tuple(ids.shape)} and dtype {ids.dtype} instead."
        )
    return ids


def removal_counts(n_features: int, percentages: Iterable[float]) -> list[int]:
    """Number of features selected at each percentage: ``round(p / 100 * n_features)``.

    Rounding is Python's (half to even), so 2.5 features rounds to 2. The
    original ROAR code and Quantus take the floor instead: 70 % of 64 pixels
    is 45 here and 44 there (``docs/index.md``, "Where we differ").

    Examples
    --------
    >>> removal_counts(64, [10, 70])
    [6, 45]
    """
    n = check_int(n_features, "n_features", "removal_counts", low=1)
    return [round(p * n / 100.0) for p in check_percentages(percentages, "removal_counts")]


def _mask_shapes(shape: tuple[int, ...], granularity: str) -> tuple[tuple, tuple]:
    """Per-sample shape of the ranked features and of the mask they expand to."""
    if len(shape) == 2:
        return shape[1:], shape[1:]
    per_sample = (1, *shape[1:]) if len(shape) == 3 else tuple(shape[1:])
    if granularity == "value":
        return per_sample, per_sample
    return (1, *per_sample[1:]), per_sample


def _value_scores(a: torch.Tensor, reduce: str) -> torch.Tensor:
    """``reduce`` applied to each value on its own: a channel of one."""
    if reduce in ("sum_abs", "max_abs"):
        return a.abs()
    if reduce == "l2":  # the square ranks as the norm, and as the original code's a**2
        return a.square()
    return a


def _scores(a: torch.Tensor, granularity: str, reduce: str) -> torch.Tensor:
    """Per-feature scores of shape (N, F)."""
    if a.ndim == 2:  # tabular: every feature is one value
        return _value_scores(a, reduce)
    a4 = a[:, None] if a.ndim == 3 else a
    if granularity == "value":
        return _value_scores(a4.flatten(1), reduce)
    # (torch.linalg.vector_norm over dim 1 is ~40x slower on CPU than these.)
    if reduce == "sum_abs":
        s = a4.abs().sum(dim=1)
    elif reduce == "sum":
        s = a4.sum(dim=1)
    elif reduce == "max_abs":
        s = a4.abs().amax(dim=1)
    else:  # "l2": the squared norm ranks the same
        s = a4.square().sum(dim=1)
    return s.flatten(1)


def feature_ranks(
    a: torch.Tensor | np.ndarray,
    *,
    granularity: Granularity = "pixel",
    reduce: Reduce = "sum_abs",
    seed: int = 0,
    sample_ids: Any = None,
) -> torch.Tensor:
    """Rank of every feature by importance, 0 being the most important.

    Ties (equal scores) are ordered by a seeded random permutation that is
    fixed per sample, never by position.

    Parameters
    ----------
    a, granularity, reduce, seed, sample_ids
        As in :func:`removal_masks`.

    Returns
    -------
    torch.Tensor
        int64 tensor of shape (N, F) on the device of ``a``, F being the number
        of ranked features (pixels for ``granularity="pixel"``, else values).
    """
    owner = "feature_ranks"
    a_t = as_tensor(a, "a", owner)
    if a_t.ndim < 2:
        raise ValueError(f"The 'a' parameter of {owner} must be batch-first with at least 2 "
                         "dimensions, (N, F) or (N, C, H, W). "
                         f"Got shape {tuple(a_t.shape)} instead.")
    if a_t.shape[0] == 0:
        raise ValueError(f"The 'a' parameter of {owner} must hold at least one sample. "
                         f"Got an empty batch of shape {tuple(a_t.shape)} instead.")
    check_choice(granularity, "granularity", owner, GRANULARITIES)
    check_choice(reduce, "reduce", owner, REDUCES)
    check_seed(seed, owner)
    check_channel_first(tuple(a_t.shape), "a", owner)
    check_finite(a_t, "a", owner)
    if not a_t.is_floating_point():
        a_t = a_t.float()
    scores = _scores(a_t, granularity, reduce)
    return _ranks_from_scores(scores, seed, _sample_ids(sample_ids, len(scores), scores.device,
                                                        owner))


def _ranks_from_scores(scores: torch.Tensor, seed: int, ids: torch.Tensor) -> torch.Tensor:
    n, f = scores.shape
    values, order = torch.sort(scores, dim=1, descending=True)
    tied = (values[:, 1:] == values[:, :-1]).any(dim=1)
    if bool(tied.any()):
        # Rows with ties: a seeded random permutation per sample, then a stable
        # sort by score, so equal scores keep the random order. Rows without
        # ties have a unique order and skip this.
        rows = torch.nonzero(tied).flatten()
        perm = torch.argsort(hash_keys(seed, STREAM_TIES, ids[rows], f), dim=1)
        by_score = torch.sort(torch.gather(scores[rows], 1, perm), dim=1, descending=True,
                              stable=True).indices
        order[rows] = torch.gather(perm, 1, by_score)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(f, device=scores.device).expand(n, f))
    return ranks


def removal_masks(
    a: torch.Tensor | np.ndarray,
    percentages: float | Iterable[float],
    *,
    order: Order = "remove_top",
    granularity: Granularity = "pixel",
    reduce: Reduce = "sum_abs",
    seed: int = 0,
    sample_ids: Any = None,
) -> torch.Tensor | np.ndarray:
    """Boolean masks of the features to remove, one per percentage.

    Parameters
    ----------
    a : torch.Tensor or numpy.ndarray
        Attributions, shape (N, C, H, W), (N, H, W) or (N, F); larger means
        more important (after ``reduce``). Must be finite.
    percentages : float or sequence of float
        Each in (0, 100]. For ``order="remove_top"`` the percentage of
        features removed (ROAR); for ``"keep_top"`` the percentage kept (KAR).
    order : {"remove_top", "keep_top"}, default "remove_top"
        Remove the most important features, or keep them and remove the rest.
    granularity : {"pixel", "value"}, default "pixel"
        ``"pixel"`` scores each spatial position by combining its channels
        with ``reduce`` and removes all channels of a chosen position;
        ``"value"`` ranks every channel value on its own, scored by
        ``reduce`` applied to that value alone (tabular (N, F) features
        likewise).
    reduce : {"sum_abs", "sum", "max_abs", "l2"}, default "sum_abs"
        How channels are combined for ``granularity="pixel"``; per value
        ``"sum_abs"`` and ``"max_abs"`` rank by ``|a|``, ``"l2"`` by ``a²``
        (the original ROAR code ranks squared values: the same order) and
        ``"sum"`` by the signed value.
    seed : int, default 0
        Seed of the random order that breaks ties.
    sample_ids : sequence of int, optional
        Position of each sample in the full dataset (default ``0..N-1``), so
        that chunked processing gives the same masks as one call.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        Bool, shape (P, N, *a.shape[1:]) -- (P, N, 1, H, W) for (N, H, W)
        input -- True where a feature is removed. Exactly
        ``removal_counts(n_features, percentages)`` features are selected per
        sample (times the number of channels for ``granularity="pixel"``).
        Masks are nested: a larger ``remove_top`` percentage removes a
        superset, a larger ``keep_top`` percentage removes a subset. For pixel
        granularity the channel axis is a broadcast (read-only) view.

    Raises
    ------
    ValueError
        On an empty batch, non-finite attributions, a channel-last map
        (N, H, W, 1) or (N, H, W, 3), percentages outside (0, 100], or an
        unknown ``order``, ``granularity`` or ``reduce``.

    Examples
    --------
    >>> a = torch.tensor([[[[0.1, 0.9], [0.5, 0.3]]]])  # (1, 1, 2, 2)
    >>> removal_masks(a, [25, 50])[:, 0, 0].int().tolist()
    [[[0, 1], [0, 0]], [[0, 1], [1, 0]]]
    """
    owner = "removal_masks"
    ps = check_percentages(percentages, owner)
    check_choice(order, "order", owner, ORDERS)
    ranks = feature_ranks(a, granularity=granularity, reduce=reduce, seed=seed,
                          sample_ids=sample_ids)
    mask_shape, full_shape = _mask_shapes(tuple(a.shape), granularity)
    n, f = ranks.shape
    counts = removal_counts(f, ps)
    empty = [p for p, c in zip(ps, counts, strict=True) if c == 0]
    if empty:
        what = "nothing is removed" if order == "remove_top" else "everything is removed"
        warnings.warn(f"removal_masks: percentage(s) {empty} select 0 of {f} features "
                      f"(round(p / 100 * {f}) = 0), so at those points {what}. Use larger "
                      "percentages, or check that they are percentages, not fractions.",
                      QuantusRoarWarning, stacklevel=2)
    k = torch.tensor(counts, device=ranks.device)[:, None, None]
    masks = ranks[None] < k if order == "remove_top" else ranks[None] >= k
    masks = masks.reshape(len(ps), n, *mask_shape).expand(len(ps), n, *full_shape)
    return like_input(masks, a)

