"""Bootstrap intervals over test samples and training seeds, vectorised.

A ROAR number is uncertain in two ways: which test images happened to be in
the test set, and which training seeds the retrains had. :func:`replicates`
draws both at once -- every replicate resamples the test samples (the same
resample for every cell, so comparisons stay paired) and the seeds -- from
the per-sample results stored with every cell, so nothing is retrained.
Plain numpy; no Quantus, no torch.

* :func:`sample_counts` -- multinomial resampling counts of ``n`` samples.
* :func:`replicate_accuracies` -- accuracy of each cell in each replicate.
* :func:`seed_weights` -- multinomial resampling weights of ``S`` seeds.
* :func:`percentile_interval`, :func:`rank_interval` -- what is reported.
* :func:`mean_interval` -- the interval of a mean over samples (the sanity
  checks' similarities); :func:`wilson_interval` -- of a proportion given only
  its count (the random-label model's accuracies).
* :func:`two_sided_p`, :func:`holm` -- tests against a control (Wald, with the
  bootstrap standard error), corrected for many comparisons.
"""

from __future__ import annotations

import math

import numpy as np

from quantus_roar._validation import Int, Real, validated

__all__ = ["BOOTSTRAP_SEED", "N_BOOT", "holm", "mean_interval", "percentile_interval",
           "rank_interval", "replicate_accuracies", "sample_counts", "seed_weights", "two_sided_p",
           "wilson_interval"]

#: The seed of every bootstrap of a run's results (fixed: the same store gives the same
#: intervals).
BOOTSTRAP_SEED = 0
#: Replicates of the report's bootstrap.
N_BOOT = 1000


@validated(n=Int(1), n_boot=Int(1), seed=Int(0))
def sample_counts(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """How often each of ``n`` samples is drawn in each of ``n_boot`` resamples with
    replacement: int32 array (n_boot, n), every row summing to ``n``."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.int32)


def replicate_accuracies(correct: np.ndarray, counts: np.ndarray, chunk: int = 256
                         ) -> np.ndarray:
    """Accuracy of each cell in each replicate: ``correct`` (K, N) bool (whether each
    test sample was classified right) weighted by ``counts`` (B, N); float64 (K, B).

    One matrix product per chunk of replicates, so 1,000 replicates of a whole study
    (a few thousand cells of a few hundred samples) take well under a second.

    Examples
    --------
    >>> correct = np.array([[True, False, True, True]])
    >>> replicate_accuracies(correct, np.array([[1, 1, 1, 1], [0, 4, 0, 0]])).tolist()
    [[0.75, 0.0]]
    """
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 2 or counts.ndim != 2 or counts.shape[1] != correct.shape[1]:
        raise ValueError(f"replicate_accuracies needs correct (K, N) and counts (B, N); got "
                         f"shapes {correct.shape} and {counts.shape}.")
    n = correct.shape[1]
    c = correct.astype(np.float32)
    out = np.empty((len(c), len(counts)), dtype=np.float64)
    for start in range(0, len(counts), chunk):
        block = counts[start : start + chunk].astype(np.float32)
        out[:, start : start + chunk] = c @ block.T  # exact: integer sums below 2**24
    return out / n


@validated(n_seeds=Int(1), n_boot=Int(1), seed=Int(0))
def seed_weights(n_seeds: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """Resampling weights of ``n_seeds`` training seeds per replicate: float64
    (n_boot, n_seeds), rows summing to 1 (each seed's share of a resample)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds),
                           size=n_boot).astype(np.float64) / n_seeds


@validated(level=Real(0, 1, open="both"))
def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap replicates (percentile method)."""
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), [tail, 100.0 - tail])
    return float(lo), float(hi)


def mean_interval(values: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float]:
    """Bootstrap percentile interval of the mean of ``values`` over its samples, NaN left
    out (a sample whose similarity is undefined); ``(nan, nan)`` when none is finite.

    Examples
    --------
    >>> lo, hi = mean_interval(np.array([0.2, 0.4, np.nan, 0.6]))
    >>> 0.2 <= lo < 0.4 < hi <= 0.6
    True
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    valid = np.isfinite(v)
    if not valid.any():
        return math.nan, math.nan
    counts = sample_counts(len(v), n_boot, seed).astype(np.float64)  # (B, n)
    weight = counts @ valid  # (B,)
    sums = counts @ np.where(valid, v, 0.0)
    means = sums[weight > 0] / weight[weight > 0]
    return percentile_interval(means, level)


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (a classifier's accuracy when only
    its count of right answers is known).

    Examples
    --------
    >>> [round(v, 3) for v in wilson_interval(36, 360)]
    [0.073, 0.135]
    """
    from statistics import NormalDist

    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n and n > 0. Got k={k}, n={n}.")
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rank_interval(replicates: np.ndarray, lower_better: bool, level: float = 0.95
                  ) -> list[tuple[int, int]]:
    """Per row of ``replicates`` (K, B) -- one estimator's AUC in each replicate -- the
    central ``level`` interval of its rank among the K (1 is best; ties share the
    better rank)."""
    values = np.asarray(replicates, dtype=np.float64)
    keys = values if lower_better else -values
    # rank = 1 + how many others are strictly better, per replicate
    ranks = 1 + (keys[None, :, :] < keys[:, None, :]).sum(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    lo = np.floor(np.percentile(ranks, tail, axis=1)).astype(int)
    hi = np.ceil(np.percentile(ranks, 100.0 - tail, axis=1)).astype(int)
    return list(zip(lo.tolist(), hi.tolist(), strict=True))


def two_sided_p(differences: np.ndarray, observed: float | None = None) -> float:
    """p-value of "the difference is 0" from its bootstrap replicates: a two-sided
    Wald test, ``observed`` (default the replicates' mean) over their standard
    deviation (the bootstrap standard error), against the normal distribution.

    Unlike the share of replicates beyond 0, it is not limited to multiples of
    ``1 / n_boot``, so Holm's correction over many estimators keeps its power.
    Identical replicates (no spread) give 1.0 for an observed 0 and 0.0 otherwise.

    Examples
    --------
    >>> round(two_sided_p(np.array([0.9, 1.1, 1.0, 0.95, 1.05])), 6)  # z = 1 / 0.079
    0.0
    >>> round(two_sided_p(np.array([-1.0, 1.0])), 3)
    1.0
    """
    d = np.asarray(differences, dtype=np.float64)
    effect = float(d.mean()) if observed is None else float(observed)
    sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    if sd == 0.0:
        return 1.0 if effect == 0.0 else 0.0
    return float(math.erfc(abs(effect) / sd / math.sqrt(2.0)))


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment of several p-values (family-wise error).

    Examples
    --------
    >>> holm({"a": 0.01, "b": 0.04, "c": 0.03})
    {'a': 0.03, 'b': 0.06, 'c': 0.06}
    """
    order = sorted(p_values, key=lambda k: p_values[k])
    m, running, out = len(order), 0.0, {}
    for i, name in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[name]))
        out[name] = running
    return {k: out[k] for k in p_values}
