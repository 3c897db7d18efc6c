"""Embedded datasets: scikit-learn's bundled handwritten digits."""

from __future__ import annotations

import numpy as np

__all__ = ["load_digits_data"]


def load_digits_data(
    seed: int = 0, test_size: float = 0.2
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 1,797 8x8 handwritten digits of scikit-learn, split stratified by class.

    Parameters
    ----------
    seed : int, default 0
        Seed of the split.
    test_size : float, default 0.2
        Fraction of the samples in the test split.

    Returns
    -------
    x_train, y_train, x_test, y_test : numpy.ndarray
        Images as float32 in [0, 1] of shape (N, 1, 8, 8); labels as int64 in
        [0, 10).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    return x_train, y_train, x_test, y_test
