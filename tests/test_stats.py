"""Bootstrap intervals, rank intervals, the paired test and Holm's correction."""

from __future__ import annotations

import numpy as np
import pytest

import quantus_roar as qr
from quantus_roar import stats as st
from quantus_roar.retrain.base import fit_correct_many


def test_resampling_counts_and_replicates_follow_their_definition():
    counts = st.sample_counts(7, 50, seed=3)
    assert counts.shape == (50, 7) and (counts.sum(1) == 7).all() and (counts >= 0).all()
    assert np.array_equal(counts, st.sample_counts(7, 50, seed=3))
    assert not np.array_equal(counts, st.sample_counts(7, 50, seed=4))
    correct = np.random.default_rng(0).random((4, 7)) < 0.6
    slow = np.array([[np.repeat(c, k).mean() for k in counts] for c in correct])
    np.testing.assert_allclose(st.replicate_accuracies(correct, counts, chunk=8), slow, atol=1e-12)
    w = st.seed_weights(3, 20, seed=1)
    assert np.allclose(w.sum(1), 1.0) and set(np.unique(w * 3)) <= {0, 1, 2, 3}


def test_intervals_cover_a_known_accuracy_at_the_nominal_rate():
    """Over 300 synthetic test sets of 200 samples, the 95 % interval of the accuracy holds
    the true 0.8 in 90-99 % of them (binomial noise around 95 %)."""
    rng = np.random.default_rng(0)
    counts = st.sample_counts(200, 400, seed=1)
    hits = 0
    for _ in range(300):
        correct = rng.random((1, 200)) < 0.8
        lo, hi = st.percentile_interval(st.replicate_accuracies(correct, counts)[0])
        hits += lo <= 0.8 <= hi
    assert 0.90 <= hits / 300 <= 0.99


def test_rank_intervals_overlap_for_equals_and_separate_for_clear_differences():
    rng = np.random.default_rng(0)
    reps = np.stack([rng.normal(0.5, 0.01, 1000), rng.normal(0.5, 0.01, 1000),
                     rng.normal(0.9, 0.01, 1000)])
    assert st.rank_interval(reps, lower_better=True) == [(1, 2), (1, 2), (3, 3)]
    assert st.rank_interval(reps, lower_better=False)[2] == (1, 1)


def test_two_sided_p_and_holm():
    from scipy import stats

    rng = np.random.default_rng(0)
    d = rng.normal(0.05, 0.02, 1000)
    z = 0.05 / d.std(ddof=1)
    assert st.two_sided_p(d, 0.05) == pytest.approx(2 * stats.norm.sf(z), rel=1e-9)
    assert st.two_sided_p(np.linspace(-1, 1, 1001)) == pytest.approx(1.0)
    assert (st.two_sided_p(np.full(10, 0.3)), st.two_sided_p(np.zeros(10))) == (0.0, 1.0)
    # Under the null the p-values are uniform: about 5 % of them below 0.05.
    nulls = [st.two_sided_p(rng.normal(0, 1, 200), rng.normal(0, 1)) for _ in range(2000)]
    assert 0.03 < np.mean(np.array(nulls) < 0.05) < 0.07
    assert st.holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx(
        {"a": 0.03, "b": 0.06, "c": 0.06})
    assert st.holm({"a": 0.5}) == {"a": 0.5}


def test_torch_retrainer_gives_per_sample_results_that_average_to_its_accuracies():
    x_tr, y_tr, x_te, y_te = qr.load_digits_data(seed=0)
    jobs = [qr.RetrainJob(x_tr[:300], y_tr[:300], x_te, y_te, s) for s in (0, 1)]
    retrainer = qr.TorchRetrainer(qr.SmallCNN(), epochs=2)
    correct = fit_correct_many(retrainer, jobs)
    assert [c.shape for c in correct] == [(len(y_te),)] * 2
    assert [c.mean() for c in correct] == retrainer.fit_score_many(jobs)

    class OwnScores(qr.TorchRetrainer):
        def fit_score_many(self, jobs, *, progress=False):
            return [0.5] * len(jobs)

    assert fit_correct_many(OwnScores(qr.SmallCNN(), epochs=1), jobs) is None  # theirs wins


def test_mean_and_wilson_intervals_cover_known_values_at_the_nominal_rate():
    """Over 300 synthetic samples each: the bootstrap interval of a mean (with NaNs left
    out) holds the true mean 0.3, and the Wilson interval of a proportion holds the true
    0.1, in 90-99 % of them."""
    rng = np.random.default_rng(1)
    mean_hits = wilson_hits = 0
    for i in range(300):
        v = rng.normal(0.3, 0.2, 150)
        v[rng.random(150) < 0.1] = np.nan
        lo, hi = st.mean_interval(v, n_boot=400, seed=i)
        mean_hits += lo <= 0.3 <= hi
        k = int((rng.random(360) < 0.1).sum())
        lo, hi = st.wilson_interval(k, 360)
        wilson_hits += lo <= 0.1 <= hi
    assert 0.90 <= mean_hits / 300 <= 0.99 and 0.90 <= wilson_hits / 300 <= 0.99
    assert np.isnan(st.mean_interval(np.full(4, np.nan))).all()
    with pytest.raises(ValueError, match="0 <= k <= n"):
        st.wilson_interval(5, 4)
