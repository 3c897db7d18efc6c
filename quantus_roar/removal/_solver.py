"""ROAD's noisy-linear fill: a batched conjugate-gradient solve of the neighbour-average system.

Every removed value equals the weighted mean of its 8 neighbours (1/6 edge,
1/12 diagonal, renormalised at the border), solved jointly for every channel
plane of every image in one run (Rong et al., 2022).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from quantus_roar.exceptions import QuantusRoarWarning

__all__ = ["noisy_linear_fill"]



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


def noisy_linear_fill(
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


def _threshold(rhs: torch.Tensor, tol: float) -> torch.Tensor:
    """Squared residual norm per plane at which CG stops: ``tol`` times the right-hand
    side's norm. Below a few float eps the residual stagnates; stopping there keeps CG
    stable."""
    info = torch.finfo(rhs.dtype)
    # Floored at the smallest normal number: a plane whose right-hand side is 0 (every
    # kept neighbour 0) is solved by its start, and a residual of rounding dust must not
    # keep it iterating into 0 / 0.
    return ((max(tol, 16 * info.eps) * torch.linalg.vector_norm(rhs, dim=1)) ** 2) \
        .clamp_min(info.tiny)


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
    threshold = _threshold(rhs, tol)
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
        # A is positive definite: pap is 0 only for a zero direction, which stops its plane
        alpha = torch.where(active & (pap > 0), rr / pap.clamp_min(tiny), 0)
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

