"""The leakage controls (InputMagnitude, BlurredRandom, FixedPrior) and MaskLeakage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

import quantus_roar as qr
from quantus_roar.explainers import FixedPrior
from quantus_roar.removal import Removal, removal_masks


@pytest.fixture(scope="module")
def digits():
    return qr.load_digits_data(seed=0)


def test_input_magnitude_is_the_absolute_input():
    x = np.random.default_rng(0).normal(size=(5, 3, 6, 7)).astype(np.float32)
    a = qr.explain(qr.SmallCNN(in_channels=3), x, 0, method="InputMagnitude")
    np.testing.assert_array_equal(a, np.abs(x))


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_blurred_random_is_random_blurred_as_scipy_does(sigma):
    x = np.random.default_rng(1).random((4, 2, 9, 11)).astype(np.float32)
    model = qr.SmallCNN(in_channels=2)
    noise = qr.explain(model, x, 0, method="Random", seed=3)
    blurred = qr.explain(model, x, 0, method="BlurredRandom", seed=3, sigma=sigma)
    reference = ndimage.gaussian_filter(noise.astype(np.float64), sigma=(0, 0, sigma, sigma),
                                        mode="nearest", truncate=3.0)
    np.testing.assert_allclose(blurred, reference, atol=1e-6)
    assert blurred.std() < 0.6 * noise.std()  # smoother, not a copy
    series_x = x[:, :, 0]  # (N, C, T): blurred along time only
    series = qr.explain(torch.nn.Identity(), series_x, 0, method="BlurredRandom", seed=3,
                        sigma=sigma)
    series_noise = qr.explain(torch.nn.Identity(), series_x, 0, method="Random", seed=3)
    np.testing.assert_allclose(series, ndimage.gaussian_filter1d(
        series_noise.astype(np.float64), sigma, axis=-1, mode="nearest", truncate=3.0),
        atol=1e-6)
    with pytest.raises(ValueError, match="tabular data"):
        qr.explain(torch.nn.Linear(5, 2), x[:, 0, 0, :5], 0, method="BlurredRandom")


def test_fixed_prior_removes_the_same_pixels_from_every_image(digits):
    x_tr, _, x_te, _ = digits
    a_tr = np.random.default_rng(2).random(x_tr.shape).astype(np.float32) * x_tr  # ink-shaped
    prior = FixedPrior.from_attributions(a_tr, chunk=100)
    np.testing.assert_allclose(prior.prior.numpy(), np.abs(a_tr.astype(np.float64)).mean(0),
                               rtol=1e-12)
    a = prior(None, x_te, np.zeros(len(x_te), dtype=int))
    masks = removal_masks(torch.from_numpy(a), (10, 50, 90), seed=0,
                          sample_ids=torch.arange(len(a)))
    assert masks.shape[:2] == (3, len(x_te))
    assert bool((masks == masks[:, :1]).all())  # one mask for every image
    counts = masks[:, 0].reshape(3, -1).sum(1).tolist()
    assert counts == [round(p / 100 * 64) for p in (10, 50, 90)]
    # The most important pixels of the mean map go first.
    mean_map = np.abs(a_tr).mean(0)[0].ravel()
    first = masks[0, 0, 0].reshape(-1).numpy()
    assert mean_map[first].min() >= np.sort(mean_map)[-first.sum()]


def _encoding_attributions(y, rng):
    """Random maps plus a block of 3 pixels that names the class: masks encode y."""
    a = rng.random((len(y), 1, 8, 8)).astype(np.float32)
    for k in range(10):
        rows = y == k
        a[rows, 0, k % 8, (3 * (k // 8)) : (3 * (k // 8)) + 3] += 10.0
    return a


def test_mask_leakage_is_chance_for_random_masks_and_high_for_masks_that_encode_the_label(
        digits):
    x_tr, y_tr, x_te, y_te = digits
    rng = np.random.default_rng(0)
    retrainer = qr.TorchRetrainer(qr.SmallCNN(), epochs=12)
    common = dict(percentages=(5,), n_retrains=1, retrainer=retrainer, disable_warnings=True)
    encoded = qr.MaskLeakage(**common)(
        qr.SmallCNN(), x_tr, y_tr, _encoding_attributions(y_tr, rng), x_test=x_te,
        y_test=y_te, a_test=_encoding_attributions(y_te, rng))
    assert encoded[5] >= 0.95
    metric = qr.MaskLeakage(**common)
    random = metric(qr.SmallCNN(), x_tr, y_tr, rng.random(x_tr.shape), x_test=x_te,
                    y_test=y_te, a_test=rng.random(x_te.shape))
    chance = np.bincount(y_te).max() / len(y_te)
    assert metric.chance == pytest.approx((y_te == np.bincount(y_tr).argmax()).mean())
    assert abs(random[5] - chance) < 0.08
    assert abs(random[0] - chance) < 0.08  # all-zero masks: nothing to learn
    assert set(metric.results["chance"]) == {metric.chance}


def test_mask_leakage_measures_masks_and_takes_no_fill():
    metric = qr.MaskLeakage(granularity="value", reduce="sum", disable_warnings=True)
    assert metric.removal == Removal(order="remove_top", granularity="value", reduce="sum",
                                     imputer=qr.removal.Constant(1.0))
    with pytest.raises(TypeError, match="takes no 'imputer'"):
        qr.MaskLeakage(imputer="zero")
