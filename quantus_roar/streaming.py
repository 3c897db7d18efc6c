"""Removal applied batch by batch as data is read, for datasets larger than memory.

:class:`RemovedDataset` wraps inputs and attributions that live on disk
(``numpy.memmap`` arrays from ``numpy.load(path, mmap_mode="r")``) and
returns samples with features removed, computing masks and imputation per
batch when read through a ``torch.utils.data.DataLoader``. Ties and noise are
keyed by each sample's id, so a streamed sample is exactly the sample that
:meth:`quantus_roar.removal.Removal.apply` produces in memory.

Plain PyTorch and numpy, no Quantus import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from quantus_roar.removal import Removal

__all__ = ["RemovedDataset", "chunked_channel_means"]

_CHUNK = 4096


def chunked_channel_means(x: np.ndarray, chunk: int = _CHUNK) -> np.ndarray:
    """Per-channel means of (N, C, ...) data read ``chunk`` samples at a time, in float64.

    Returns float32 of shape (C,), as :func:`quantus_roar.removal.channel_means`.
    """
    if x.ndim < 2 or len(x) == 0:
        raise ValueError("chunked_channel_means needs a non-empty batch of shape (N, C, ...). Got "
                         f"shape {tuple(x.shape)}.")
    axes = (0, *range(2, x.ndim))
    total = np.zeros(x.shape[1], dtype=np.float64)
    for start in range(0, len(x), chunk):
        total += np.asarray(x[start : start + chunk], dtype=np.float64).sum(axis=axes)
    per_channel = len(x) * int(np.prod(x.shape[2:]))
    return (total / per_channel).astype(np.float32)


class RemovedDataset(Dataset):
    """``(input, label)`` pairs read from (memory-mapped) arrays, with features removed.

    Without ``a`` it serves the unmodified samples, so one class streams every
    split of the benchmark.

    Parameters
    ----------
    x : numpy.ndarray
        Inputs (N, C, H, W), typically a ``numpy.memmap``.
    y : numpy.ndarray
        Integer labels (N,).
    a : numpy.ndarray, optional
        Attributions of the shape of ``x`` or with one channel.
    percentage : float, optional
        Required with ``a``: share removed (``remove_top``) or kept (``keep_top``).
    first_id : int, default 0
        Sample id of ``x[0]``; sample ``i`` has id ``first_id + i``.
    removal : Removal, optional
        The removal rule (default ``Removal()``); the keywords ``order``,
        ``granularity``, ``reduce``, ``imputer``, ``imputer_kwargs`` and
        ``seed`` build one instead.
    stats : array-like
        The training set's channel means, required for ``"channel_mean"``: a
        batch's own mean is not the paper's imputation.

    Notes
    -----
    ``DataLoader`` calls :meth:`__getitems__` with a batch of indices, so
    masks and imputation run once per batch, vectorised; only that batch is
    read from disk.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, a: np.ndarray | None = None,
                 percentage: float | None = None, *, first_id: int = 0,
                 removal: Removal | None = None, stats: Any = None, **rule: Any):
        if len(x) != len(y) or (a is not None and len(a) != len(x)):
            got = f"{len(x)} inputs, {len(y)} labels" + (
                "" if a is None else f", {len(a)} attributions")
            raise ValueError(f"RemovedDataset needs one label (and attribution) per input. Got "
                             f"{got}.")
        if a is not None and percentage is None:
            raise ValueError("RemovedDataset needs a 'percentage' when attributions are given.")
        self.removal = Removal.ensure(removal, owner="RemovedDataset", **rule)
        if a is not None and self.removal.imputer.name == "channel_mean" and stats is None:
            raise ValueError("RemovedDataset with imputer='channel_mean' needs stats=<per-channel "
                             "means of the training set> (see chunked_channel_means).")
        self.x, self.y, self.a = x, y, a
        self.percentage = percentage
        self.first_id = int(first_id)
        self.stats = stats

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (B, ...) and labels (B,) of ``indices``, with features removed."""
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")  # sorted reads are sequential on disk
        sorted_idx = idx[order]
        x = torch.from_numpy(np.ascontiguousarray(self.x[sorted_idx], dtype=np.float32))
        y = torch.from_numpy(np.asarray(self.y[sorted_idx], dtype=np.int64))
        if self.a is not None:
            a = torch.from_numpy(np.ascontiguousarray(self.a[sorted_idx], dtype=np.float32))
            x = self.removal.apply(x, a, [self.percentage], stats=self.stats,
                                   sample_ids=sorted_idx + self.first_id)[0][0]
        inverse = torch.from_numpy(np.argsort(order))
        return x[inverse], y[inverse]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.batch(indices)
        return list(zip(x.unbind(0), y.unbind(0), strict=True))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch([int(index)])
        return x[0], y[0]
