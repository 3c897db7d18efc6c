"""Feature ranking, nested removal masks and imputation.

The removal engine behind ROAR, KAR and no-retrain deletion. Plain PyTorch:
everything runs batched on the device of its input, and numpy input gives
numpy output.

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

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from quantus_roar._validation import (
    INPUT_HINT,
    as_tensor,
    check_choice,
    check_finite,
    check_int,
    check_number,
    check_percentages,
    check_seed,
    like_input,
)
from quantus_roar.exceptions import QuantusRoarWarning

__all__ = [
    "IMPUTERS",
    "IMPUTER_KWARGS",
    "REDUCES",
    "channel_means",
    "feature_ranks",
    "impute",
    "removal_counts",
    "removal_masks",
]

Order = Literal["remove_top", "keep_top"]
Granularity = Literal["pixel", "value"]
Reduce = Literal["sum_abs", "sum", "max_abs", "l2"]
Imputer = Literal["channel_mean", "zero", "image_mean", "blur", "noisy_linear"]

ORDERS: tuple[str, ...] = ("remove_top", "keep_top")
GRANULARITIES: tuple[str, ...] = ("pixel", "value")
REDUCES: tuple[str, ...] = ("sum_abs", "sum", "max_abs", "l2")
IMPUTERS: tuple[str, ...] = ("channel_mean", "zero", "image_mean", "blur", "noisy_linear")
# Keyword arguments each imputer accepts.
IMPUTER_KWARGS: dict[str, frozenset[str]] = {
    "channel_mean": frozenset(), "zero": frozenset(), "image_mean": frozenset(),
    "blur": frozenset({"sigma"}), "noisy_linear": frozenset({"noise", "tol", "max_iter"}),
}

# ROAD's neighbour weights: 1/6 for edge neighbours, 1/12 for diagonal ones.
_ROAD_KERNEL = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))
_M32 = 0xFFFFFFFF
_STREAM_TIES, _STREAM_NOISE_A, _STREAM_NOISE_B = 0x5EED7135, 0x0B5E55ED, 0x7A11C0DE


# --------------------------------------------------------------------------- randomness


def _mix32(x: Any) -> Any:
    """Bijective 32-bit integer hash (works on Python ints and int64 tensors)."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return (x >> 16) ^ x


def _hash_keys(
    seed: int, stream: int, sample_ids: torch.Tensor, n_features: int
) -> torch.Tensor:
    """Pseudo-random int64 keys in [0, 2**32), shape (N, n_features).

    Keys within one sample are all distinct (the hash is a bijection), so
    sorting by them gives a uniformly shuffled order without ties.
    """
    seed = int(seed)
    h0 = _mix32(_mix32((seed & _M32) ^ stream) ^ ((seed >> 32) & _M32))
    h = _mix32(_mix32((sample_ids.to(torch.int64) & _M32) ^ h0))
    features = torch.arange(n_features, device=sample_ids.device, dtype=torch.int64)
    return _mix32(h[:, None] ^ features[None, :])


def _hash_normal(
    seed: int, sample_ids: torch.Tensor, n_features: int, dtype: torch.dtype
) -> torch.Tensor:
    """Standard normal draws of shape (N, n_features) by Box-Muller on hashed uniforms."""
    u1 = (_hash_keys(seed, _STREAM_NOISE_A, sample_ids, n_features).double() + 0.5) / 2.0**32
    u2 = (_hash_keys(seed, _STREAM_NOISE_B, sample_ids, n_features).double() + 0.5) / 2.0**32
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)).to(dtype)


def _sample_ids(sample_ids: Any, n: int, device: torch.device, owner: str) -> torch.Tensor:
    if sample_ids is None:
        return torch.arange(n, device=device)
    ids = torch.as_tensor(np.asarray(sample_ids) if not isinstance(sample_ids, torch.Tensor)
                          else sample_ids).to(device=device)
    if ids.shape != (n,) or ids.is_floating_point():
        raise ValueError(
            f"The 'sample_ids' parameter of {owner} must be {n} integers, one per sample."
            f" Got shape {tuple(ids.shape)} and dtype {ids.dtype} instead."
        )
    return ids


# --------------------------------------------------------------------------- ranking


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
    return [round(float(p) * n_features / 100.0) for p in percentages]


def _check_channel_first(shape: tuple[int, ...], name: str, owner: str) -> None:
    """Refuse a 4-d batch that is plainly channel-last, (N, H, W, 1) or (N, H, W, 3)."""
    if len(shape) == 4 and shape[-1] in (1, 3) and shape[1] > 4 and shape[2] > 4:
        raise ValueError(
            f"The '{name}' parameter of {owner} must be channel-first, (N, C, H, W). Got shape "
            f"{tuple(shape)}, which looks channel-last (N, H, W, C) with C = {shape[-1]}: read "
            f"as channel-first it would be {shape[1]} channels of {shape[2]}x{shape[3]} "
            "pixels. Move the channel axis first, e.g. a.permute(0, 3, 1, 2) or "
            "np.moveaxis(a, -1, 1)."
        )


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
    _check_channel_first(tuple(a_t.shape), "a", owner)
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
        perm = torch.argsort(_hash_keys(seed, _STREAM_TIES, ids[rows], f), dim=1)
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
    k = torch.tensor(removal_counts(f, ps), device=ranks.device)[:, None, None]
    masks = ranks[None] < k if order == "remove_top" else ranks[None] >= k
    masks = masks.reshape(len(ps), n, *mask_shape).expand(len(ps), n, *full_shape)
    return like_input(masks, a)


# --------------------------------------------------------------------------- imputation


def channel_means(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Mean of each channel over samples and positions: shape (C,) for (N, C, ...) input.

    For (N, F) tabular input the mean of each feature, shape (F,). Computed in
    float64 and returned in the dtype of ``x`` (float32 for integer input).
    """
    x_t = as_tensor(x, "x", "channel_means")
    if x_t.ndim < 2 or x_t.shape[0] == 0:
        raise ValueError("The 'x' parameter of channel_means must be a non-empty batch of shape "
                         f"(N, C, ...) or (N, F). Got shape {tuple(x_t.shape)} instead.")
    dims = [0, *range(2, x_t.ndim)]
    out_dtype = x_t.dtype if x_t.is_floating_point() else torch.float32
    return like_input(x_t.double().mean(dim=dims).to(out_dtype), x)


def _check_stats(stats: Any, x: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(stats, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[1])
    if s.shape != (x.shape[1],) or not bool(torch.isfinite(s).all()):
        raise ValueError(
            "The 'stats' parameter of impute must be finite per-channel means of the training "
            f"set, shape ({x.shape[1]},) for inputs of shape {tuple(x.shape)} (see "
            f"channel_means). Got shape {tuple(s.shape)} instead."
        )
    return s.reshape(1, -1, *([1] * (x.ndim - 2)))


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) images, edges replicated."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    b, c, h, w = x.shape
    planes = x.reshape(b * c, 1, h, w)
    planes = F.conv2d(F.pad(planes, (radius, radius, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
    planes = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode="replicate"), g.view(1, 1, -1, 1))
    return planes.reshape(b, c, h, w)


def _kept_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mean over the kept (unmasked) positions of each sample and channel; 0 if none kept."""
    dims = tuple(range(2, x.ndim)) if x.ndim > 2 else (1,)
    kept = (~m).to(x.dtype)
    total = (x * kept).sum(dim=dims, keepdim=True)
    count = kept.sum(dim=dims, keepdim=True)
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros((), dtype=x.dtype,
                                                                              device=x.device))


def _stencil(p: torch.Tensor, wp: int, rows: torch.Tensor, out: torch.Tensor) -> Callable[[], None]:
    """Unweighted [1, 2, 1] x [1, 2, 1] neighbourhood sum ``S(p)`` of padded, flattened planes.

    Planes of shape (H, W) are stored zero-padded to (H + 2, W + 2) and
    flattened to rows of length ``L``, so every neighbour is a fixed offset
    and each pass is one contiguous slice operation (about 10x faster than
    ``conv2d`` on CPU for single-channel planes). ROAD's kernel -- 1/6 for
    edge neighbours, 1/12 for diagonal ones -- is ``(S(v) - 4 v) / 12``.

    p : (..., L) input; rows : (..., L) scratch; out : (..., L) receives
    ``S(p)`` at every position but the first and last ``wp + 1`` of each row,
    which are left as they are. Values on padding positions are meaningless
    and must be masked by the caller. Returns a function that computes ``S``
    of the current contents of ``p`` into ``out``: its slices are made once,
    because in an iterative solver making them costs as much as the
    arithmetic on small planes.
    """
    n = p.shape[-1]
    rows = rows[..., : n - 2]  # rows[j]: horizontal sum centred at j + 1
    left, right, mid = p[..., :-2], p[..., 2:], p[..., 1:-1]
    up, down, level = rows[..., : -2 * wp], rows[..., 2 * wp :], rows[..., wp:-wp]
    centre = out[..., wp + 1 : n - wp - 1]

    def apply() -> None:
        torch.add(left, right, out=rows)
        rows.add_(mid, alpha=2)
        torch.add(up, down, out=centre)
        centre.add_(level, alpha=2)

    return apply


# Planes solved together on CPU. Measured on 256 planes of 32x32: one chunk
# is fastest; chunking only bounds the buffers (ten of the padded size).
_CHUNK_VALUES = 2**20


def _noisy_linear_fill(
    x: torch.Tensor, m: torch.Tensor, tol: float, max_iter: int
) -> torch.Tensor:
    """:func:`_noisy_linear_solve` over chunks of planes (B, H, W), sizes within 1 of each other."""
    b, h, w = x.shape
    n_chunks = 1 if x.device.type != "cpu" else -(-b * (h + 2) * (w + 2) // _CHUNK_VALUES)
    if n_chunks <= 1:
        return _noisy_linear_solve(x, m, tol, max_iter)
    out = torch.empty_like(x)  # each chunk's buffers are freed before the next is solved
    for dst, xs, ms in zip(out.tensor_split(n_chunks), x.tensor_split(n_chunks),
                           m.tensor_split(n_chunks), strict=True):
        dst.copy_(_noisy_linear_solve(xs, ms, tol, max_iter))
    return out


def _noisy_linear_solve(
    x: torch.Tensor, m: torch.Tensor, tol: float, max_iter: int
) -> torch.Tensor:
    """Solve ROAD's neighbour-average system for every channel plane at once.

    Each removed value equals the weighted mean of its 8 neighbours (weights
    renormalised at the border). With ``S`` the [1, 2, 1] x [1, 2, 1] sum
    (:func:`_stencil`) and ``c = S(1) / 12``, the system for removed mask
    ``r`` and the removed values ``v`` (zero on kept positions) reads
    ``A v = c * v - r * S(v) / 12 = r * S(kept) / 12``: symmetric, positive
    definite on the removed positions and block diagonal over planes, so one
    conjugate gradient run serves the whole batch with per-plane step sizes.
    The residual and every search direction are zero on kept positions, so
    kept values come out exactly as they went in; a plane stops moving once
    its residual is below ``tol`` times its right-hand side. (Jacobi
    preconditioning is left out: the diagonal is 1 except on the image border.)

    CG starts from each removed value's weighted mean over its *kept*
    neighbours -- exact, up to the ``delta`` below, for a removed pixel
    without removed neighbours --, or from the mean of the plane's kept
    values where no neighbour is kept; the latter is also what a plane with
    nothing kept keeps.

    An iteration is nine elementwise passes over preallocated (B, L) buffers
    plus two reductions: the filled planes and the residual sit in one
    stacked buffer, as do the search direction and its image under ``A``,
    and move together in one of those passes.

    x, m : (B, H, W) planes and their removed masks. Returns the filled
    planes, shape (B, H, W).
    """
    b, h, w = x.shape
    dt, dev = x.dtype, x.device
    wp, length = w + 2, (h + 2) * (w + 2)
    tiny = torch.finfo(dt).tiny
    # Every buffer is allocated once: a fresh one per iteration costs page
    # faults that take as long as the arithmetic.
    pa = torch.zeros(2, b + 1, length, dtype=dt, device=dev)  # (p, A p); borders stay zero
    ur = torch.empty(2, b, length, dtype=dt, device=dev)  # (filled planes u, residual)
    sums = torch.empty(2, b + 1, length, dtype=dt, device=dev)
    spare = torch.empty(2, b + 1, length, dtype=dt, device=dev)
    nr12 = torch.empty(b, length, dtype=dt, device=dev)
    tmp = torch.empty(b, length, dtype=dt, device=dev)
    p, ap, u, res = pa[0, :b], pa[1, :b], ur[0], ur[1]
    sums[..., : wp + 1] = 0  # the stencil leaves these alone
    sums[..., -wp - 1 :] = 0
    # Plane b of pa holds 1 inside the image, so that the set-up stencil also
    # gives c = S(1) / 12, the row weight of the renormalised kernel.
    grid = pa.view(2, b + 1, h + 2, wp)
    grid[0, b, 1:-1, 1:-1] = 1
    # Kept values and the removed mask r, padded (bool to float conversions
    # are slow on CPU, uint8 ones are not), and their neighbour sums in one
    # stencil call.
    grid[0, :b, 1:-1, 1:-1] = x
    grid[1, :b, 1:-1, 1:-1] = m.view(torch.uint8)
    p.addcmul_(p, ap, value=-1)
    _stencil(pa, wp, spare, sums)()
    c = sums[0, b].div_(12)
    mean = p.sum(1) / ((h * w) - ap.sum(1)).clamp_min(1)
    torch.mul(ap, -1 / 12, out=nr12)
    rhs = torch.mul(sums[0, :b], ap, out=res).div_(12)  # zero on kept positions
    # Below a few float eps the residual stagnates; stopping there keeps CG stable.
    threshold = (max(tol, 16 * torch.finfo(dt).eps)
                 * torch.linalg.vector_norm(rhs, dim=1).clamp_min(1e-30)) ** 2
    u.copy_(p)
    # The start: each removed value's mean over its kept neighbours, whose
    # weight is c - S(r) / 12 (at least 1/12 where one is kept), or the
    # plane's kept mean where none is. With delta much below 1/12, one
    # expression gives both, close enough for a start.
    delta = 1e-3
    kept_w = torch.mul(sums[1, :b], -1 / 12, out=tmp).add_(c + delta)
    torch.add(rhs, mean[:, None], alpha=delta, out=p).div_(kept_w).mul_(ap)
    u.add_(p)
    stencil = _stencil(p, wp, spare[0, :b], ap)  # ap held r, so its border is 0

    def a_times_p() -> torch.Tensor:
        stencil()
        return ap.mul_(nr12).addcmul_(c, p)

    res.sub_(a_times_p())
    p.copy_(res)
    rr = torch.linalg.vector_norm(res, dim=1).square_()
    sign = torch.tensor([1.0, -1.0], dtype=dt, device=dev).view(2, 1, 1)
    pa_b = pa[:, :b]
    # On CPU a convergence check costs one reduction; on an accelerator it is a
    # host sync, so check less often there.
    check_every = 1 if dev.type == "cpu" else 8
    for it in range(max_iter):
        active = rr > threshold  # converged planes are frozen
        if it % check_every == 0 and not bool(active.any()):
            break
        pap = torch.mul(p, a_times_p(), out=tmp).sum(1)
        alpha = torch.where(active, rr / pap, 0)  # pap > 0 on every active plane
        ur.addcmul_(sign * alpha[:, None], pa_b)  # u += alpha p, res -= alpha A p
        rr_new = torch.linalg.vector_norm(res, dim=1).square_()
        # rr is 0 on a plane with nothing removed: clamped, its beta is 0, not NaN.
        torch.addcmul(res, (rr_new / rr.clamp_min(tiny))[:, None], p, out=p)
        rr = rr_new
    unconverged = int((rr > threshold).sum())
    if unconverged:
        warnings.warn(f"impute(imputer='noisy_linear') stopped after max_iter={max_iter} "
                      f"iterations with {unconverged} of {b} channel planes above the relative "
                      f"residual tol={tol:g}; their fill is not the neighbour average yet. Raise "
                      "max_iter (imputer_kwargs={'max_iter': ...}).", QuantusRoarWarning,
                      stacklevel=4)
    return u.view(b, h + 2, wp)[:, 1:-1, 1:-1]


def impute(
    x: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    imputer: Imputer = "channel_mean",
    *,
    stats: Any = None,
    seed: int = 0,
    sample_ids: Any = None,
    **kwargs: Any,
) -> torch.Tensor | np.ndarray:
    """Replace the removed features of ``x``; ``x`` itself is never modified.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray
        Inputs, shape (N, C, H, W) (or (N, C, *spatial), or (N, F)).
    masks : torch.Tensor or numpy.ndarray
        Bool, True where a feature is removed: shape broadcastable to
        ``x.shape``, or with a leading percentage axis (P, N, ...) as returned
        by :func:`removal_masks`; a (N, 1, H, W) mask removes every channel.
    imputer : {"channel_mean", "zero", "image_mean", "blur", "noisy_linear"}
        * ``"channel_mean"`` (default): the per-channel mean of the training
          set, ``stats`` -- the ROAR paper's choice. Computed from ``x`` when
          ``stats`` is not given.
        * ``"zero"``: 0.
        * ``"image_mean"``: the mean of the sample's *kept* features per
          channel (0 where nothing is kept).
        * ``"blur"``: the Gaussian-blurred image (keyword ``sigma``, default
          1.0 pixel). It is blurred from the full image, so some information of
          the removed pixels leaks into the fill.
        * ``"noisy_linear"``: ROAD's imputation (Rong et al., 2022): every
          removed value is the weighted mean of its 8 neighbours (1/6 edge,
          1/12 diagonal, renormalised at borders), solved jointly, plus
          Gaussian noise of std ``noise`` (default 0.01). Every channel plane
          of every image is solved in one batched conjugate-gradient run
          (keywords ``tol``, default 1e-6 relative residual, and ``max_iter``,
          default 1000). A removed region with no kept neighbour at all is
          filled with the image mean of the kept values.
    stats : array-like of shape (C,) or float, optional
        Training-set channel means for ``"channel_mean"`` (see
        :func:`channel_means`).
    seed : int, default 0
        Seed of the ``noisy_linear`` noise.
    sample_ids : sequence of int, optional
        Position of each sample in the full dataset, so that chunked
        processing draws the same noise as one call.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        Shape ``x.shape``, or (P, *x.shape) for masks with a percentage axis;
        floating dtype of ``x`` (float32 for integer input).

    Raises
    ------
    ValueError
        Empty batch, NaN or inf in ``x``, channel-last images, masks that do
        not fit ``x``, an unknown imputer, bad ``stats``, ``"blur"`` /
        ``"noisy_linear"`` on non-image input, or keyword values out of range
        (``sigma`` > 0, ``noise`` >= 0, ``tol`` in (0, 1), ``max_iter`` >= 1).
    TypeError
        Non-boolean masks or unknown keyword arguments.

    Warns
    -----
    QuantusRoarWarning
        ``"noisy_linear"`` stopped at ``max_iter`` before every plane
        converged.

    References
    ----------
    .. [1] Hooker et al., "A Benchmark for Interpretability Methods in Deep
       Neural Networks", NeurIPS 2019.
    .. [2] Rong et al., "A Consistent and Efficient Evaluation Strategy for
       Attribution Methods", ICML 2022.
    """
    owner = "impute"
    check_choice(imputer, "imputer", owner, IMPUTERS)
    allowed = IMPUTER_KWARGS[imputer]
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"impute(imputer={imputer!r}) got unexpected keyword argument(s) "
                        f"{unknown}; it accepts {sorted(allowed) or 'none'}.")
    x_t = as_tensor(x, "x", owner)
    m_t = as_tensor(masks, "masks", owner)
    if x_t.ndim < 2 or x_t.shape[0] == 0:
        raise ValueError(f"The 'x' parameter of {owner} must be a non-empty batch of shape "
                         f"(N, C, H, W) or (N, F). Got shape {tuple(x_t.shape)} instead.")
    if m_t.dtype != torch.bool:
        raise TypeError(f"The 'masks' parameter of {owner} must be a boolean tensor or array "
                        f"(True = removed). Got dtype {m_t.dtype} instead.")
    m_t = m_t.to(x_t.device)
    has_p = m_t.ndim == x_t.ndim + 1
    m_p = m_t if has_p else m_t[None]
    try:
        fits = torch.broadcast_shapes(m_p.shape[1:], x_t.shape) == x_t.shape
    except RuntimeError:
        fits = False
    if m_p.ndim != x_t.ndim + 1 or not fits or m_p.shape[1] != x_t.shape[0]:
        raise ValueError(
            f"The 'masks' parameter of {owner} must have the shape of x {tuple(x_t.shape)} (size-1 "
            f"channel axis allowed), optionally with a leading percentage axis. Got shape "
            f"{tuple(m_t.shape)} instead."
        )
    if not x_t.is_floating_point():
        x_t = x_t.float()
    _check_channel_first(tuple(x_t.shape), "x", owner)
    check_seed(seed, owner)
    check_finite(x_t, "x", owner, hint=INPUT_HINT)
    n_p = m_p.shape[0]
    m_full = m_p.expand(n_p, *x_t.shape)
    if imputer in ("blur", "noisy_linear") and x_t.ndim != 4:
        raise ValueError(f"impute(imputer={imputer!r}) needs images of shape (N, C, H, W). Got "
                         f"shape {tuple(x_t.shape)}; pass time series (N, C, T) as (N, C, 1, T).")

    if imputer == "zero":
        fill: torch.Tensor = torch.zeros((), dtype=x_t.dtype, device=x_t.device)
    elif imputer == "channel_mean":
        fill = _check_stats(channel_means(x_t) if stats is None else stats, x_t)
    elif imputer == "image_mean":
        fill = _kept_mean(x_t[None].expand_as(m_full).flatten(0, 1), m_full.flatten(0, 1))
        fill = fill.unflatten(0, (n_p, x_t.shape[0]))
    elif imputer == "blur":
        sigma = check_number(kwargs.get("sigma", 1.0), "sigma", "impute(imputer='blur')",
                             low=0.0, low_open=True)
        fill = _gaussian_blur(x_t, sigma)
    else:  # noisy_linear
        owner_nl = "impute(imputer='noisy_linear')"
        noise = check_number(kwargs.get("noise", 0.01), "noise", owner_nl, low=0.0)
        tol = check_number(kwargs.get("tol", 1e-6), "tol", owner_nl, low=0.0, high=1.0,
                           low_open=True, high_open=True)
        max_iter = check_int(kwargs.get("max_iter", 1000), "max_iter", owner_nl, low=1)
        n, c, h, w = x_t.shape
        planes = x_t[None].expand(n_p, n, c, h, w).reshape(-1, h, w)
        solved = _noisy_linear_fill(planes, m_full.reshape(-1, h, w), tol, max_iter)
        fill = solved.reshape(n_p, n, c, h, w)
        if not noise:  # the solver returns kept values exactly as they came
            return like_input(fill if has_p else fill[0], x)
        ids = _sample_ids(sample_ids, n, x_t.device, owner)
        fill = fill + noise * _hash_normal(seed, ids, c * h * w, x_t.dtype).view(n, c, h, w)
    out = torch.where(m_full, fill, x_t[None])
    return like_input(out if has_p else out[0], x)
