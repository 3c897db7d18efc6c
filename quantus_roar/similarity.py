"""Batched similarity of explanation maps, for the randomisation sanity checks.

Every function takes two batches of maps of the same shape (N, ...) and
returns (N,) float64 similarities, one per pair. Spearman and SSIM run
batched on the device of the input; HOG uses scikit-image per map.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["SIMILARITIES", "average_ranks", "hog", "spearman", "spearman_abs", "ssim"]


def _flat(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(len(a), -1).double()


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks along dim 1 of a (N, F) batch, ties given their average rank (0-based)."""
    s, idx = x.sort(dim=1)
    left = torch.searchsorted(s, s, right=False)
    right = torch.searchsorted(s, s, right=True)
    ranks_sorted = (left + right - 1).double() / 2.0
    return torch.empty_like(ranks_sorted).scatter_(1, idx, ranks_sorted)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / torch.sqrt((a * a).sum(1) * (b * b).sum(1))


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps (NaN where a map is constant)."""
    return _pearson(average_ranks(_flat(a)), average_ranks(_flat(b)))


def spearman_abs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of the absolute values of each pair of maps."""
    return spearman(a.abs(), b.abs())


def _planes(a: torch.Tensor) -> torch.Tensor:
    """(N, H, W) maps from (N, C, H, W) (channels summed) or (N, H, W)."""
    if a.ndim == 4:
        return a.double().sum(1)
    if a.ndim == 3:
        return a.double()
    raise ValueError("SSIM and HOG similarity need image maps of shape (N, C, H, W) or "
                     f"(N, H, W). Got shape {tuple(a.shape)}; use 'spearman' for other data.")


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity of each pair of maps, as ``skimage.metrics.structural_similarity``.

    Channels are summed first. The defaults of scikit-image: a uniform 7x7
    window (the largest odd size that fits smaller maps), K1 = 0.01,
    K2 = 0.03, sample covariance, the mean over positions whose window lies
    inside the map; ``data_range`` is the joint range of the two maps (as in
    Quantus' ``ssim``).
    """
    x, y = _planes(a), _planes(b)
    n, h, w = x.shape
    win = min(7, h if h % 2 else h - 1, w if w % 2 else w - 1)
    win_h = win if h > 1 else 1
    both = torch.cat([x.reshape(n, -1), y.reshape(n, -1)], dim=1)
    data_range = (both.amax(1) - both.amin(1)).clamp_min(1e-12)[:, None, None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    stack = torch.stack([x, y, x * x, y * y, x * y], dim=1)  # (N, 5, H, W)
    means = F.avg_pool2d(stack, (win_h, win), stride=1)
    ux, uy, uxx, uyy, uxy = means.unbind(1)
    n_pts = win_h * win
    cov_norm = n_pts / (n_pts - 1) if n_pts > 1 else 1.0
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2))


def hog(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the HOG features of each pair of maps (Adebayo et al., 2018).

    Channels are summed and every map is scaled to [0, 1] first; features
    from ``skimage.feature.hog`` with 9 orientations, cells of
    ``max(2, min(H, W) // 4)`` pixels and 2x2-cell blocks. Computed per map
    with scikit-image.
    """
    from skimage.feature import hog as sk_hog

    x, y = _planes(a).cpu().numpy(), _planes(b).cpu().numpy()
    _, h, w = x.shape
    if min(h, w) < 4:
        raise ValueError(f"HOG similarity needs maps of at least 4x4 pixels. Got {h}x{w}.")
    cell = max(2, min(h, w) // 4)

    def features(m: np.ndarray) -> np.ndarray:
        span = m.max() - m.min()
        m = (m - m.min()) / span if span > 0 else np.zeros_like(m)
        return sk_hog(m, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2),
                      feature_vector=True)

    fa = torch.from_numpy(np.stack([features(m) for m in x]))
    fb = torch.from_numpy(np.stack([features(m) for m in y]))
    return _pearson(fa, fb).to(a.device)


SIMILARITIES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "spearman_abs": spearman_abs,
    "spearman": spearman,
    "ssim": ssim,
    "hog": hog,
}
