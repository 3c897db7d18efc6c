"""Tests of the removal engine: ranking, nested masks and imputation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch

from quantus_roar.removal import (
    channel_means,
    feature_ranks,
    impute,
    removal_counts,
    removal_masks,
)


def _tie_free(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(int(np.prod(shape)), generator=g).reshape(shape).float()


# --------------------------------------------------------------------------- counts


@pytest.mark.parametrize("shape", [(3, 1, 8, 8), (2, 3, 5, 7), (4, 6, 6), (5, 13), (2, 3, 1, 11)])
@pytest.mark.parametrize("granularity", ["pixel", "value"])
def test_exact_count_per_sample(shape, granularity):
    percentages = [1, 10, 12.5, 33.3, 50, 66.7, 90, 99, 100]
    a = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    masks = removal_masks(a, percentages, granularity=granularity)
    n = shape[0]
    if len(shape) == 2:
        n_features, per_feature = shape[1], 1
    elif granularity == "pixel":
        n_features = int(np.prod(shape[2:])) if len(shape) == 4 else int(np.prod(shape[1:]))
        per_feature = shape[1] if len(shape) == 4 else 1
    else:
        n_features, per_feature = int(np.prod(shape[1:])), 1
    expected = [round(p * n_features / 100) * per_feature for p in percentages]
    counted = masks.reshape(len(percentages), n, -1).sum(-1)
    assert counted.tolist() == [[e] * n for e in expected]


def test_counts_round_half_to_even_and_non_integer():
    assert removal_counts(10, [25, 35, 33.3, 100]) == [2, 4, 3, 10]  # 2.5 -> 2, 3.5 -> 4
    assert removal_counts(64, [10, 30, 50, 70, 90]) == [6, 19, 32, 45, 58]


def test_output_shapes():
    assert removal_masks(torch.rand(2, 3, 4, 5), [10, 20]).shape == (2, 2, 3, 4, 5)
    assert removal_masks(torch.rand(2, 4, 5), [10]).shape == (1, 2, 1, 4, 5)
    assert removal_masks(torch.rand(2, 7), [10, 20, 30]).shape == (3, 2, 7)
    assert removal_masks(torch.rand(2, 3, 4, 5), 50, granularity="value").shape == (1, 2, 3, 4, 5)


# --------------------------------------------------------------------------- semantics


def test_removes_most_important_first():
    a = torch.tensor([[[[0.1, 0.9], [0.5, 0.3]]]])
    masks = removal_masks(a, [25, 50, 75])[:, 0, 0]
    assert masks[0].tolist() == [[False, True], [False, False]]
    assert masks[1].tolist() == [[False, True], [True, False]]
    assert masks[2].tolist() == [[False, True], [True, True]]
    kept = removal_masks(a, [25], order="keep_top")[0, 0, 0]
    assert kept.tolist() == [[True, False], [True, True]]


@pytest.mark.parametrize("order", ["remove_top", "keep_top"])
@pytest.mark.parametrize("granularity", ["pixel", "value"])
def test_masks_are_nested(order, granularity):
    a = torch.randn(6, 3, 9, 9, generator=torch.Generator().manual_seed(2))
    a[:, :, :4] = 0.0  # many ties
    masks = removal_masks(a, [10, 30, 50, 70, 90], order=order, granularity=granularity, seed=3)
    for small, large in itertools.pairwise(masks):
        if order == "remove_top":
            assert bool((large | ~small).all())  # small subset of large
        else:
            assert bool((small | ~large).all())  # kept sets grow, removed sets shrink


def test_keep_top_is_remove_top_of_the_lowest():
    a = _tie_free((5, 1, 8, 8))
    for p in [10, 30, 50, 70, 90]:
        kar = removal_masks(a, [p], order="keep_top", reduce="sum")
        roar_low = removal_masks(-a, [100 - p], order="remove_top", reduce="sum")
        assert torch.equal(kar, roar_low)


@pytest.mark.parametrize("reduce", ["sum_abs", "sum", "max_abs", "l2"])
def test_pixel_reduce_matches_reference(reduce):
    a = _tie_free((3, 3, 6, 6)) - 50.0
    ref = {
        "sum_abs": a.abs().sum(1),
        "sum": a.sum(1),
        "max_abs": a.abs().amax(1),
        "l2": a.pow(2).sum(1).sqrt(),
    }[reduce]
    masks = removal_masks(a, [25], reduce=reduce)[0]
    k = round(0.25 * 36)
    expected = ref.flatten(1) >= ref.flatten(1).topk(k, dim=1).values[:, -1:]
    assert torch.equal(masks[:, 0].flatten(1), expected)
    assert torch.equal(masks[:, 0], masks[:, 2])  # all channels of a pixel together


def test_value_granularity_ranks_channels_separately():
    a = torch.zeros(1, 3, 2, 2)
    a[0, 1, 0, 0] = 5.0
    a[0, 2, 1, 1] = 4.0
    m = removal_masks(a, [2 / 12 * 100], granularity="value")[0, 0]
    assert m.sum() == 2 and m[1, 0, 0] and m[2, 1, 1]


def test_constant_map_spreads_removals_uniformly():
    a = torch.ones(400, 1, 16, 16)
    masks = removal_masks(a, [10], seed=7)[0, :, 0]
    rows, cols = torch.nonzero(masks, as_tuple=True)[1:]
    # Index-order tie-breaking would put every removal in the top rows (mean ~0.8).
    assert abs(rows.float().mean().item() - 7.5) < 0.25
    assert abs(cols.float().mean().item() - 7.5) < 0.25
    per_pixel = masks.float().mean(0)  # each pixel removed in ~10% of images
    assert per_pixel.min() > 0.03 and per_pixel.max() < 0.2


def test_seeds_reproduce_and_differ():
    a = torch.zeros(8, 1, 8, 8)
    m1 = removal_masks(a, [30], seed=1)
    assert torch.equal(m1, removal_masks(a, [30], seed=1))
    assert not torch.equal(m1, removal_masks(a, [30], seed=2))
    assert not torch.equal(m1[0, 0], m1[0, 1])  # each image its own order


def test_masks_independent_of_batching():
    a = torch.randint(0, 3, (10, 2, 6, 6)).float()  # heavy ties
    full = removal_masks(a, [20, 60], seed=5)
    chunks = [removal_masks(a[i : i + 3], [20, 60], seed=5, sample_ids=range(i, min(i + 3, 10)))
              for i in range(0, 10, 3)]
    assert torch.equal(full, torch.cat(chunks, dim=1))


def test_ranks_are_a_permutation():
    ranks = feature_ranks(torch.zeros(4, 3, 5, 5))
    assert torch.equal(ranks.sort(dim=1).values, torch.arange(25).expand(4, 25))


def test_numpy_in_numpy_out_and_inputs_untouched():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3, 6, 6)).astype(np.float32)
    x = rng.random((3, 3, 6, 6)).astype(np.float32)
    a0, x0 = a.copy(), x.copy()
    masks = removal_masks(a, [30, 60])
    assert isinstance(masks, np.ndarray) and masks.dtype == bool
    for imputer in ["channel_mean", "zero", "image_mean", "blur", "noisy_linear"]:
        out = impute(x, masks, imputer)
        assert isinstance(out, np.ndarray) and out.shape == (2, *x.shape)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(x, x0)
    xt, at = torch.from_numpy(x), torch.from_numpy(a)
    impute(xt, removal_masks(at, [50]), "noisy_linear")
    np.testing.assert_array_equal(xt.numpy(), x0)


# --------------------------------------------------------------------------- imputers


def test_channel_mean_uses_training_statistics():
    x = torch.rand(4, 3, 5, 5)
    train_means = torch.tensor([10.0, 20.0, 30.0])
    m = removal_masks(torch.rand(4, 1, 5, 5), [40])[0]
    out = impute(x, m, "channel_mean", stats=train_means)
    removed = m.expand_as(x)
    for c in range(3):
        assert torch.all(out[:, c][removed[:, c]] == train_means[c])
    assert torch.equal(out[~removed], x[~removed])
    # Without stats the means come from x itself.
    own = impute(x, m, "channel_mean")
    assert torch.allclose(own[:, 1][removed[:, 1]], x[:, 1].mean().expand(int(removed[:, 1].sum())))


def test_channel_means_reference():
    x = np.random.default_rng(1).random((6, 3, 4, 4))
    np.testing.assert_allclose(channel_means(x), x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(channel_means(x[:, :, 0, 0]), x[:, :, 0, 0].mean(axis=0))


def test_zero_and_image_mean():
    x = torch.arange(2 * 2 * 4, dtype=torch.float32).reshape(2, 2, 2, 2)
    m = torch.zeros(2, 1, 2, 2, dtype=torch.bool)
    m[:, :, 0, 0] = True
    assert torch.all(impute(x, m, "zero")[:, :, 0, 0] == 0)
    out = impute(x, m, "image_mean")
    expected = x.flatten(2)[:, :, 1:].mean(-1)  # mean of the three kept values
    assert torch.allclose(out[:, :, 0, 0], expected)
    all_removed = impute(x, torch.ones(2, 1, 2, 2, dtype=torch.bool), "image_mean")
    assert torch.all(all_removed == 0)


def test_image_mean_with_percentage_axis_matches_per_percentage():
    x = torch.rand(3, 3, 6, 6)
    masks = removal_masks(torch.rand(3, 1, 6, 6), [20, 70])
    together = impute(x, masks, "image_mean")
    for i in range(2):
        assert torch.allclose(together[i], impute(x, masks[i], "image_mean"))


def test_blur_fill_is_gaussian_smoothing():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    m = torch.ones(1, 1, 9, 9, dtype=torch.bool)
    out = impute(x, m, "blur", sigma=1.0)[0, 0]
    assert torch.isclose(out.sum(), torch.tensor(1.0), atol=1e-5)  # mass preserved
    assert out[4, 4] == out.max() and torch.isclose(out[4, 3], out[3, 4])
    ratio = (out[4, 5] / out[4, 4]).item()
    assert abs(ratio - np.exp(-0.5)) < 1e-4


def _road_reference(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Independent ROAD solve for one (C, H, W) image with a (H, W) removed mask."""
    c, h, w = img.shape
    idx = np.flatnonzero(removed.reshape(-1))
    var = -np.ones(h * w, dtype=int)
    var[idx] = np.arange(len(idx))
    weights = {(-1, -1): 1 / 12, (-1, 0): 1 / 6, (-1, 1): 1 / 12, (0, -1): 1 / 6,
               (0, 1): 1 / 6, (1, -1): 1 / 12, (1, 0): 1 / 6, (1, 1): 1 / 12}
    rows, cols, vals = [], [], []
    b = np.zeros((len(idx), c))
    for k, flat in enumerate(idx):
        i, j = divmod(flat, w)
        total = 0.0
        for (di, dj), wt in weights.items():
            ii, jj = i + di, j + dj
            if 0 <= ii < h and 0 <= jj < w:
                total += wt
                if removed[ii, jj]:
                    rows.append(k)
                    cols.append(var[ii * w + jj])
                    vals.append(-wt)
                else:
                    b[k] += wt * img[:, ii, jj]
        rows.append(k)
        cols.append(k)
        vals.append(total)
    a = scipy.sparse.csc_matrix((vals, (rows, cols)), shape=(len(idx), len(idx)))
    sol = scipy.sparse.linalg.spsolve(a, b).reshape(len(idx), c)
    out = img.copy().reshape(c, -1)
    out[:, idx] = sol.T
    return out.reshape(c, h, w)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("percentage", [10, 50, 90])
def test_noisy_linear_matches_sparse_reference(channels, percentage):
    rng = np.random.default_rng(percentage + channels)
    x = rng.random((4, channels, 12, 10)).astype(np.float32)
    a = rng.random((4, 1, 12, 10)).astype(np.float32)
    masks = removal_masks(a, [percentage])[0]
    ours = impute(x, masks, "noisy_linear", noise=0.0)
    for i in range(4):
        ref = _road_reference(x[i].astype(np.float64), masks[i, 0])
        np.testing.assert_allclose(ours[i], ref, atol=1e-4)


@pytest.mark.parametrize("shape", [(3, 2, 1, 10), (3, 1, 7, 1), (4, 1, 40, 3)])
@pytest.mark.parametrize("percentage", [10, 50, 90])
def test_noisy_linear_thin_planes_match_reference(shape, percentage):
    """Rows, columns and tall narrow planes: the padded stencil must not wrap."""
    rng = np.random.default_rng(percentage)
    x = rng.random(shape)
    masks = removal_masks(rng.random((shape[0], 1, *shape[2:])), [percentage])[0]
    ours = impute(x, masks, "noisy_linear", noise=0.0)
    for i in range(shape[0]):
        np.testing.assert_allclose(ours[i], _road_reference(x[i], masks[i, 0]), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noisy_linear_without_noise_returns_kept_values_exactly(dtype):
    g = torch.Generator().manual_seed(7)
    x = torch.rand(5, 3, 9, 11, generator=g, dtype=dtype)
    m = removal_masks(torch.rand(5, 1, 9, 11, generator=g), [10, 60])
    out = impute(x, m, "noisy_linear", noise=0.0)
    kept = ~m.expand_as(out)
    assert out.dtype == dtype
    assert torch.equal(out[kept], x[None].expand_as(out)[kept])
    assert not torch.equal(out[~kept], x[None].expand_as(out)[~kept])


def test_noisy_linear_removed_values_do_not_change_the_fill():
    x = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(8))
    m = removal_masks(torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(9)), [40])[0]
    other = torch.where(m, 1e6, x)  # different values at removed positions only
    torch.testing.assert_close(impute(other, m, "noisy_linear", noise=0.0),
                               impute(x, m, "noisy_linear", noise=0.0), rtol=0, atol=1e-6)


def test_noisy_linear_batch_mixing_untouched_partial_and_fully_removed_planes():
    rng = np.random.default_rng(12)
    x = rng.random((4, 2, 7, 6))
    m = np.zeros((4, 1, 7, 6), dtype=bool)
    m[0, 0, 1:4, 2:5] = True  # partly removed
    m[2] = True  # fully removed: the kept mean of nothing is 0
    m[3, 0, ::2, ::3] = True
    out = impute(x, m, "noisy_linear", noise=0.0)
    assert np.isfinite(out).all()
    assert np.array_equal(out[1], x[1])
    assert np.array_equal(out[2], np.zeros_like(x[2]))
    for i in (0, 3):
        np.testing.assert_allclose(out[i], _road_reference(x[i], m[i, 0]), atol=1e-6)


def test_noisy_linear_chunks_equal_one_solve(monkeypatch):
    """Chunks of 4 and 5 planes give what one batched solve gives."""
    from quantus_roar.removal import _solver

    rng = np.random.default_rng(11)
    x = rng.random((7, 3, 10, 9))
    masks = removal_masks(rng.random((7, 1, 10, 9)), [30, 80])
    whole = impute(x, masks, "noisy_linear", noise=0.0)
    monkeypatch.setattr(_solver, "_CHUNK_VALUES", 5 * 12 * 11)  # 42 planes in 9 chunks
    chunked = impute(x, masks, "noisy_linear", noise=0.0)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-9)
    for i in (0, 6):
        np.testing.assert_allclose(chunked[1, i], _road_reference(x[i], masks[1, i, 0]), atol=1e-5)


def test_noisy_linear_value_granularity_solves_each_channel_plane():
    rng = np.random.default_rng(3)
    x = rng.random((2, 3, 8, 8))
    masks = removal_masks(rng.random((2, 3, 8, 8)), [40], granularity="value")[0]
    ours = impute(x, masks, "noisy_linear", noise=0.0)
    for i in range(2):
        for c in range(3):
            ref = _road_reference(x[i, c : c + 1], masks[i, c])
            np.testing.assert_allclose(ours[i, c : c + 1], ref, atol=1e-6)


def test_isolated_removed_pixel_is_weighted_neighbour_mean():
    x = torch.rand(1, 2, 5, 5, dtype=torch.float64)
    m = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    m[0, 0, 2, 2] = True
    m[0, 0, 0, 4] = True  # corner: weights renormalised over 3 neighbours
    out = impute(x, m, "noisy_linear", noise=0.0)
    nb = x[0, :, 1:4, 1:4]
    w = torch.tensor([[1, 2, 1], [2, 0, 2], [1, 2, 1]], dtype=torch.float64) / 12
    assert torch.allclose(out[0, :, 2, 2], (nb * w).sum((1, 2)))
    corner = (x[0, :, 0, 3] / 6 + x[0, :, 1, 4] / 6 + x[0, :, 1, 3] / 12) / (1 / 6 + 1 / 6 + 1 / 12)
    assert torch.allclose(out[0, :, 0, 4], corner)


def test_noisy_linear_noise_is_seeded_and_only_on_removed():
    x = torch.rand(3, 1, 8, 8)
    m = removal_masks(torch.rand(3, 1, 8, 8), [50])[0]
    clean = impute(x, m, "noisy_linear", noise=0.0)
    noisy = impute(x, m, "noisy_linear", noise=0.1, seed=4)
    assert torch.equal(noisy, impute(x, m, "noisy_linear", noise=0.1, seed=4))
    assert not torch.equal(noisy, impute(x, m, "noisy_linear", noise=0.1, seed=5))
    diff = (noisy - clean)[m.expand_as(x)]
    assert abs(diff.std().item() - 0.1) < 0.02 and abs(diff.mean().item()) < 0.02
    assert torch.equal(noisy[~m.expand_as(x)], x[~m.expand_as(x)])


def test_noisy_linear_fully_removed_image_gets_no_nan():
    x = torch.rand(2, 1, 6, 6)
    out = impute(x, torch.ones(2, 1, 6, 6, dtype=torch.bool), "noisy_linear", noise=0.0)
    assert torch.isfinite(out).all()


def test_tabular_imputation():
    x = torch.rand(5, 7)
    m = removal_masks(torch.rand(5, 7), [30])[0]
    out = impute(x, m, "channel_mean", stats=torch.arange(7.0))
    assert torch.equal(out[m], torch.arange(7.0).expand(5, 7)[m])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"percentages": [0, 50]}, r"'percentages' parameter of removal_masks must be numbers in "
                                   r"\(0, 100\]. Got \[0.0, 50.0\]"),
        ({"percentages": [101]}, r"Out of range: \[101.0\]"),
        ({"percentages": []}, r"non-empty"),
        ({"order": "top"}, r"'order' parameter .* one of \['remove_top', 'keep_top'\]"),
        ({"reduce": "mean"}, r"'reduce' parameter .* one of"),
        ({"granularity": "channel"}, r"'granularity' parameter"),
    ],
)
def test_mask_argument_errors(kwargs, match):
    args = {"percentages": [10], **kwargs}
    with pytest.raises(ValueError, match=match):
        removal_masks(torch.rand(2, 1, 4, 4), **args)


def test_non_finite_attributions_are_rejected():
    a = torch.rand(3, 1, 4, 4)
    a[1, 0, 2, 2] = float("nan")
    a[2, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"finite .* 2 non-finite value\(s\), first in sample\(s\) "
                                         r"\[1, 2\]"):
        removal_masks(a, [10])


def test_empty_batch_and_bad_types():
    with pytest.raises(ValueError, match="at least one sample"):
        removal_masks(torch.rand(0, 1, 4, 4), [10])
    with pytest.raises(TypeError, match=r"torch.Tensor or numpy.ndarray. Got list"):
        removal_masks([[1.0, 2.0]], [10])


def test_impute_errors():
    x = torch.rand(2, 3, 4, 4)
    good = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"'imputer' parameter of impute must be one of"):
        impute(x, good, "mean")
    with pytest.raises(ValueError, match=r"'masks' parameter .* shape of x \(2, 3, 4, 4\).*Got "
                                         r"shape \(2, 1, 5, 4\)"):
        impute(x, torch.zeros(2, 1, 5, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean"):
        impute(x, good.float())
    with pytest.raises(ValueError, match=r"'stats' parameter of impute .* shape \(3,\)"):
        impute(x, good, stats=[0.5, 0.5])
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['sigma'\]"):
        impute(x, good, "zero", sigma=2)
    with pytest.raises(ValueError, match=r"needs images of shape \(N, C, H, W\)"):
        impute(torch.rand(2, 5), torch.zeros(2, 5, dtype=torch.bool), "noisy_linear")
    with pytest.raises(ValueError, match="non-empty batch"):
        impute(torch.rand(0, 3, 4, 4), torch.zeros(0, 1, 4, 4, dtype=torch.bool))


def test_noisy_linear_fills_regions_whose_kept_neighbours_are_all_zero_with_zero():
    """A digit's empty border: every kept neighbour of the removed pixels is 0, so the
    right-hand side is 0 and the fill is 0 -- not 0 / 0 (NaN) from a stopping threshold
    that underflowed in float32."""
    x = torch.zeros(1, 1, 8, 8)  # a digit "1" of the digits data, in sixteenths
    x[0, 0, :, 3:6] = torch.tensor([[13, 9, 0], [14, 15, 1], [13, 16, 0], [11, 16, 0],
                                    [10, 16, 2], [14, 16, 1], [15, 16, 1], [12, 15, 0]]) / 16
    masks = torch.zeros(1, 1, 1, 8, 8, dtype=torch.bool)
    masks[0, 0, 0, :5, 7] = True  # the empty right column
    masks[0, 0, 0, 5, 0] = True  # and one pixel of the empty left column
    out = impute(x, masks[0], "noisy_linear", noise=0.0)
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)
