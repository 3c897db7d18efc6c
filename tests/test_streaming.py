"""Streaming: removal per batch from memory-mapped arrays, and TorchRetrainer's Dataset path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from quantus_roar.curves import removed_inputs
from quantus_roar.data import load_digits_data
from quantus_roar.models import SmallCNN
from quantus_roar.removal import channel_means
from quantus_roar.retrain import RetrainJob, TorchRetrainer
from quantus_roar.streaming import RemovedDataset, chunked_channel_means


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mm")
    rng = np.random.default_rng(0)
    x = rng.random((300, 3, 6, 6), dtype=np.float32)
    a = rng.standard_normal((300, 3, 6, 6)).astype(np.float32)
    a[:, :, :2] = 0.0  # ties, broken by sample id
    y = rng.integers(0, 4, 300)
    np.save(folder / "x.npy", x)
    np.save(folder / "a.npy", a)
    return (np.load(folder / "x.npy", mmap_mode="r"), np.load(folder / "a.npy", mmap_mode="r"),
            y, x, a)


@pytest.mark.parametrize("order", ["remove_top", "keep_top"])
@pytest.mark.parametrize("imputer", ["channel_mean", "noisy_linear", "image_mean"])
def test_batches_equal_the_in_memory_removal(on_disk, order, imputer):
    x_mm, a_mm, y, x, a = on_disk
    stats = chunked_channel_means(x_mm, chunk=64)
    ds = RemovedDataset(x_mm, y, a_mm, 40, order=order, imputer=imputer, stats=stats,
                        first_id=1000, seed=3)
    ref, _ = removed_inputs(x, a, [40], order=order, imputer=imputer,
                            stats=torch.from_numpy(stats), seed=3,
                            sample_ids=np.arange(1000, 1300))
    idx = [299, 5, 17, 0, 150]  # unsorted: read sorted, returned in request order
    xb, yb = ds.batch(idx)
    torch.testing.assert_close(xb, ref[0][idx], rtol=0, atol=1e-6 if imputer == "noisy_linear"
                               else 0)
    assert yb.tolist() == y[idx].tolist()
    loader = DataLoader(ds, batch_size=64, shuffle=False)
    stacked = torch.cat([b for b, _ in loader])
    torch.testing.assert_close(stacked, ref[0], rtol=0, atol=1e-5 if imputer == "noisy_linear"
                               else 0)


def test_unmodified_dataset_and_channel_means(on_disk):
    x_mm, _, y, x, _ = on_disk
    ds = RemovedDataset(x_mm, y)
    xi, yi = ds[7]
    assert torch.equal(xi, torch.from_numpy(x[7])) and int(yi) == y[7]
    np.testing.assert_allclose(chunked_channel_means(x_mm, chunk=7), channel_means(x),
                               rtol=1e-6)
    assert len(ds) == 300


def test_dataset_errors(on_disk):
    x_mm, a_mm, y, _, _ = on_disk
    with pytest.raises(ValueError, match=r"one label .* per input. Got 300 inputs, 299 labels"):
        RemovedDataset(x_mm, y[:-1])
    with pytest.raises(ValueError, match="needs a 'percentage'"):
        RemovedDataset(x_mm, y, a_mm)
    with pytest.raises(ValueError, match="needs stats="):
        RemovedDataset(x_mm, y, a_mm, 50)
    with pytest.raises(ValueError, match="non-empty batch"):
        chunked_channel_means(np.zeros((0, 3, 2, 2), np.float32))


@pytest.mark.parametrize("validation_split", [0.0, 0.2])
def test_a_dataset_trains_the_same_model_as_arrays(validation_split):
    x_tr, y_tr, x_te, y_te = load_digits_data(seed=0)
    x_tr, y_tr = x_tr[:500], y_tr[:500]
    r = TorchRetrainer(SmallCNN(), epochs=2, ensemble=False, validation_split=validation_split)
    from_arrays = r.fit(x_tr, y_tr, seed=4)
    from_dataset = r.fit(RemovedDataset(x_tr, y_tr), None, seed=4)
    for p, q in zip(from_arrays.parameters(), from_dataset.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not from_dataset.training
    assert r.score(from_arrays, x_te, y_te) == r.score(
        from_dataset, TensorDataset(torch.from_numpy(x_te), torch.from_numpy(y_te)), None)


def test_dataset_jobs_in_fit_score_many_and_errors():
    x_tr, y_tr, x_te, y_te = load_digits_data(seed=0)
    x_tr, y_tr = x_tr[:300], y_tr[:300]
    r = TorchRetrainer(SmallCNN(), epochs=1)  # ensemble "auto": datasets go one at a time
    train, test = RemovedDataset(x_tr, y_tr), RemovedDataset(x_te, y_te)
    streamed = r.fit_score_many([RetrainJob(train, None, test, None, s) for s in (0, 1)])
    sequential = TorchRetrainer(SmallCNN(), epochs=1, ensemble=False).fit_score_many(
        [RetrainJob(x_tr, y_tr, x_te, y_te, s) for s in (0, 1)])
    assert streamed == sequential
    with pytest.raises(ValueError, match="pass y=None"):
        r.fit(train, y_tr, seed=0)
