"""Embedded datasets: scikit-learn's bundled handwritten digits and a synthetic set
with known ground-truth features."""

from __future__ import annotations

import numpy as np

__all__ = ["load_digits_data", "make_synthetic"]


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


def make_synthetic(
    n_samples: int = 1000,
    n_classes: int = 4,
    image_size: int = 8,
    channels: int = 1,
    evidence_fraction: float = 0.25,
    signal: float = 1.0,
    noise: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images whose class evidence lives in a known subset of pixels; the rest is noise.

    A fixed random set of ``round(evidence_fraction * image_size**2)`` pixel
    positions (the same for every image) carries a class template: each class
    has its own random +-``signal`` pattern on those pixels, plus Gaussian
    noise of std ``0.25 * noise``. All other pixels are pure Gaussian noise
    of std ``noise``, independent of the class. Removing every evidence pixel
    therefore leaves no information about the class (chance accuracy), while
    keeping only them loses none.

    Parameters
    ----------
    n_samples : int, default 1000
        Balanced over the classes (class of sample ``i`` is ``i % n_classes``
        before shuffling).
    n_classes : int, default 4
    image_size : int, default 8
    channels : int, default 1
        Every channel carries the same template (and independent noise).
    evidence_fraction : float, default 0.25
        Share of pixel positions that carry evidence, in (0, 1).
    signal, noise : float, default 1.0
    seed : int, default 0

    Returns
    -------
    x : numpy.ndarray
        float32, shape (n_samples, channels, image_size, image_size).
    y : numpy.ndarray
        int64 labels in [0, n_classes).
    evidence : numpy.ndarray
        bool, shape (n_samples, 1, image_size, image_size): True on evidence
        pixels -- the oracle attribution.
    """
    if not 0.0 < evidence_fraction < 1.0:
        raise ValueError("The 'evidence_fraction' parameter of make_synthetic must be in (0, 1). "
                         f"Got {evidence_fraction!r} instead.")
    if n_classes < 2 or n_samples < n_classes:
        raise ValueError("make_synthetic needs n_classes >= 2 and n_samples >= n_classes. Got "
                         f"n_classes={n_classes}, n_samples={n_samples}.")
    rng = np.random.default_rng(seed)
    n_pix = image_size * image_size
    k = max(1, round(evidence_fraction * n_pix))
    support = np.zeros(n_pix, dtype=bool)
    support[rng.choice(n_pix, size=k, replace=False)] = True
    templates = signal * rng.choice([-1.0, 1.0], size=(n_classes, k))
    y = rng.permutation(np.arange(n_samples) % n_classes).astype(np.int64)
    x = noise * rng.standard_normal((n_samples, channels, n_pix))
    x[:, :, support] = templates[y][:, None, :] + 0.25 * noise * rng.standard_normal(
        (n_samples, channels, k))
    x = x.reshape(n_samples, channels, image_size, image_size).astype(np.float32)
    evidence = np.broadcast_to(support.reshape(1, 1, image_size, image_size),
                               (n_samples, 1, image_size, image_size)).copy()
    return x, y, evidence
