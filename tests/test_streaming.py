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


def test_labels_ids_and_arrays_are_checked(on_disk):
    x_mm, a_mm, y, _, _ = on_disk
    stats = chunked_channel_means(x_mm, chunk=64)
    fractional = y.astype(np.float64)
    fractional[[3, 8]] = [0.5, 1.7]
    with pytest.raises(ValueError, match=r"'y' parameter of RemovedDataset must be integer class "
                                         r"labels\. Got non-integer values such as \[0\.5, 1\.7\]"):
        RemovedDataset(x_mm, fractional, a_mm, 50, stats=stats)
    whole = RemovedDataset(x_mm, y.astype(np.float32))  # whole-number floats are labels
    assert whole.batch([0, 1])[1].tolist() == y[:2].tolist()
    with pytest.raises(TypeError, match=r"'y' parameter .* Got dtype <U1 instead"):
        RemovedDataset(x_mm, np.array(["a"] * 300))
    with pytest.raises(ValueError, match=r"one class label per sample of x, shape \(300,\)\. Got "
                                         r"shape \(300, 1\)"):
        RemovedDataset(x_mm, y[:, None])
    with pytest.raises(ValueError, match=r"class labels >= 0\. Got labels from -1"):
        RemovedDataset(x_mm, y - 1)
    for bad in (1.5, "a", True):
        with pytest.raises(TypeError, match=r"'first_id' parameter of RemovedDataset must be an "
                                            r"integer\. Got " + repr(bad)):
            RemovedDataset(x_mm, y, first_id=bad)
    with pytest.raises(ValueError, match=r"'first_id' .*Got -1 instead"):
        RemovedDataset(x_mm, y, first_id=-1)
    assert RemovedDataset(x_mm, y, first_id=np.int64(3)).first_id == 3
    with pytest.raises(TypeError, match=r"'x' parameter of RemovedDataset must be a real numeric "
                                        r"array\. Got dtype complex128 instead\. Its imaginary"):
        RemovedDataset(x_mm.astype(complex), y)
    with pytest.raises(TypeError, match=r"'a' parameter .*Got dtype complex64"):
        RemovedDataset(x_mm, y, a_mm.astype(np.complex64), 50, stats=stats)
    with pytest.raises(TypeError, match=r"'x' parameter .*must be a numeric array"):
        RemovedDataset(x_mm.tolist(), y)
    with pytest.raises(ValueError, match=r"'chunk' parameter of chunked_channel_means must be an "
                                         r"integer >= 1\. Got 0 instead"):
        chunked_channel_means(x_mm, chunk=0)
    with pytest.raises(TypeError, match=r"'chunk' .*Got 2\.5 instead"):
        chunked_channel_means(x_mm, chunk=2.5)


def test_negative_indices_are_the_samples_from_the_end(on_disk):
    x_mm, a_mm, y, x, a = on_disk
    stats = chunked_channel_means(x_mm, chunk=64)
    ds = RemovedDataset(x_mm, y, a_mm, 40, imputer="noisy_linear", stats=stats, first_id=1000,
                        seed=3)
    ref, _ = removed_inputs(x, a, [40], imputer="noisy_linear", stats=torch.from_numpy(stats),
                            seed=3, sample_ids=np.arange(1000, 1300))
    last, label = ds[-1]
    assert torch.equal(last, ds[299][0]) and int(label) == y[-1]
    torch.testing.assert_close(last, ref[0][299], rtol=0, atol=1e-6)
    xb, yb = ds.batch([-1, 0, -300])
    assert torch.equal(xb, ds.batch([299, 0, 0])[0]) and yb.tolist() == [y[-1], y[0], y[0]]
    for bad in (300, -301):
        with pytest.raises(IndexError, match=rf"index out of range for 300 samples: \[{bad}\]"):
            ds[bad]
    with pytest.raises(TypeError, match=r"indices must be integers\. Got float 1\.5"):
        ds[1.5]
    with pytest.raises(TypeError, match=r"needs a sequence of integer indices\. Got \[0\.5\]"):
        ds.batch([0.5])
    assert len(list(RemovedDataset(x_mm[:3], y[:3]))) == 3  # iteration stops at the end
