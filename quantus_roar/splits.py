"""Seeds and train/test splits shared by the metrics, the runner and the datasets."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = ["Split", "retrain_seeds", "stratified_split"]


class Split(NamedTuple):
    """One split of a removal experiment: inputs, labels, attributions and sample ids.

    Attributes
    ----------
    x : tensor or array
        Inputs (N, C, H, W), (N, C, T) or (N, F); (N, H, W, C) or (N, T, C)
        with ``channel_last``.
    y : tensor or array
        Integer class labels (N,).
    a : tensor or array, optional
        Attributions of ``x``: its shape, or one channel.
    ids : int or sequence of int, optional
        Each sample's id for tie-breaking and imputation noise: a sequence of
        N ids, or the id of ``x[0]`` (the others follow). Default: the
        positions ``0..N-1`` (for a test split after a training split of
        ``N_train`` samples, ``N_train..``).
    channel_last : bool, default False
        ``x`` (and ``a`` with a channel axis) have the channel axis last; the
        model and the retrainer receive them in that layout.
    """

    x: Any
    y: Any
    a: Any = None
    ids: Any = None
    channel_last: bool = False


def retrain_seeds(seed: int, n: int) -> list[int]:
    """The training seeds of ``n`` retrains for a run seeded with ``seed``.

    Each is drawn from ``numpy.random.SeedSequence(seed, spawn_key=(i,))``, so
    runs with neighbouring seeds share no training seed, and the first ``k``
    seeds do not depend on ``n``. The same seeds are used at every
    percentage (common random numbers), so differences between percentages
    are not confounded with initialisation.
    """
    return [int(np.random.SeedSequence(int(seed), spawn_key=(i,)).generate_state(1)[0])
            for i in range(int(n))]


def stratified_split(
    y: Any, test_size: float, seed: int, owner: str = "stratified_split"
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of the sample indices keeping every class in both parts.

    Class ``c`` with ``n_c`` samples puts ``round(test_size * n_c)`` of them
    (at least one, at most ``n_c - 1``) in the test part, chosen by a
    ``numpy.random.Generator`` seeded with ``seed``.

    Returns
    -------
    train_idx, test_idx : numpy.ndarray
        Sorted int64 indices into ``y``.

    Raises
    ------
    ValueError
        If ``test_size`` is not in (0, 1) or a class has fewer than two samples.
    """
    if not 0.0 < float(test_size) < 1.0:
        raise ValueError(f"The 'test_size' parameter of {owner} must be in (0, 1). Got "
                         f"{test_size!r} instead.")
    y_np = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y).astype(np.int64).ravel()
    classes, counts = np.unique(y_np, return_counts=True)
    small = classes[counts < 2]
    if small.size:
        raise ValueError(
            f"{owner} needs at least 2 samples of every class for a stratified train/test split. "
            f"Class(es) {small.tolist()} have fewer. Pass more samples, or an explicit test set "
            "with x_test, y_test."
        )
    rng = np.random.default_rng(int(seed))
    test = []
    for c, n_c in zip(classes, counts, strict=True):
        idx = np.flatnonzero(y_np == c)
        k = min(max(1, round(float(test_size) * n_c)), n_c - 1)
        test.append(rng.permutation(idx)[:k])
    test_idx = np.sort(np.concatenate(test))
    train_mask = np.ones(y_np.size, dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask), test_idx
