"""TorchRetrainer and the retraining entry points refuse bad input before any training."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from quantus_roar.models import SmallCNN
from quantus_roar.retrain import RetrainJob, TorchRetrainer, fit_score_many, fit_task


def _data(n=48, seed=0, classes=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def _linear(classes=3):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, classes))


def _retrainer(**kwargs):
    return TorchRetrainer(_linear(), **{"epochs": 1, "batch_size": 16, **kwargs})


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if any model is trained."""
    def train(*args, **kwargs):
        raise AssertionError("a model was trained before the input was refused")

    monkeypatch.setattr(TorchRetrainer, "_train", train)


# ---------------------------------------------------------------- 1. lengths


def test_fit_length_mismatch_names_both_lengths(no_training):
    x, y = _data(200)
    with pytest.raises(ValueError, match=r"'y' parameter of TorchRetrainer\.fit must be one label "
                                         r"per sample of 'x' \(200 labels\)\. Got 199 labels for "
                                         r"200 inputs instead\. Pass as many labels"):
        _retrainer().fit(x, y[:199], seed=0)


def test_score_length_mismatch():
    x, y = _data()
    r = _retrainer()
    model = r.fit(x, y, seed=0)
    with pytest.raises(ValueError, match=r"'y' parameter of TorchRetrainer\.score .*Got 47 labels "
                                         r"for 48 inputs"):
        r.score(model, x, y[:-1])


# ---------------------------------------------------------------- 2. label values and shape


def test_non_integer_float_labels_are_refused(no_training):
    x, _ = _data(4)
    y = torch.tensor([0.0, 0.5, 1.0, 1.5])
    with pytest.raises(ValueError, match=r"'y' parameter of TorchRetrainer\.fit must be integer "
                                         r"class labels\. Got 2 float label\(s\) that are not "
                                         r"whole numbers, e\.g\. \[0\.5, 1\.5\].*truncated"):
        _retrainer().fit(x, y, seed=0)
    with pytest.raises(ValueError, match=r"integer class labels.*nan"):
        _retrainer().fit(x, torch.tensor([0.0, 1.0, float("nan"), 2.0]), seed=0)


def test_whole_number_float_labels_train_the_same_model():
    x, y = _data()
    r = _retrainer()
    assert _same_weights(r.fit(x, y, seed=1), r.fit(x, y.double().numpy(), seed=1))


def test_boolean_labels_are_refused(no_training):
    x, y = _data()
    with pytest.raises(TypeError, match=r"'y' parameter of TorchRetrainer\.fit must be integer "
                                        r"class labels\. Got boolean labels instead.*y\.long\(\)"):
        _retrainer().fit(x, y > 0, seed=0)


def test_labels_of_another_shape_are_refused(no_training):
    x, y = _data()
    with pytest.raises(ValueError, match=r"must be of shape \(N,\) = \(48,\).*Got shape \(48, 1\) "
                                         r"instead\. Flatten it"):
        _retrainer().fit(x, y[:, None], seed=0)
    one_hot = nn.functional.one_hot(y, 3)
    with pytest.raises(ValueError, match=r"Got shape \(48, 3\) instead\. For one-hot labels pass "
                                         r"y\.argmax\(1\)"):
        _retrainer().fit(x, one_hot, seed=0)


# ---------------------------------------------------------------- 3. label range


def test_labels_out_of_range_fit(no_training):
    x, y = _data()
    y[5] = 3
    with pytest.raises(ValueError, match=r"'y' parameter of TorchRetrainer\.fit must be labels in "
                                         r"\[0, 3\) for a model with 3 outputs\. Got labels from "
                                         r"0 to 3 instead\. .*one output per class"):
        _retrainer().fit(x, y, seed=0)
    y[5] = -1
    with pytest.raises(ValueError, match=r"Got labels from -1 to 2 instead"):
        _retrainer().fit(x, y, seed=0)


def test_labels_out_of_range_digits_style_model(no_training):
    # labels 0..10 for a 10-class model: torch's "Target 10 is out of bounds" before
    x, _ = _data(32)
    y = torch.arange(32) % 11
    with pytest.raises(ValueError, match=r"labels in \[0, 10\) for a model with 10 outputs\. Got "
                                         r"labels from 0 to 10"):
        TorchRetrainer(SmallCNN(), epochs=1).fit(x, y, seed=0)


def test_fit_many_checks_every_job_before_training_any(monkeypatch):
    x, y = _data()
    bad = y.clone()
    bad[0] = 7
    calls = []
    monkeypatch.setattr(TorchRetrainer, "_train", lambda self, *a, **k: calls.append(1))
    jobs = [RetrainJob(x, y, x, y, 0), RetrainJob(x, bad, x, y, 1)]
    for ensemble in (True, False):
        r = _retrainer(ensemble=ensemble)
        with pytest.raises(ValueError, match=r"'jobs\[1\]\.y_train' parameter of "
                                             r"TorchRetrainer\.fit_many .*\[0, 3\).*0 to 7"):
            r.fit_many(jobs)
        with pytest.raises(ValueError, match=r"'jobs\[1\]\.y_train' parameter of "
                                             r"TorchRetrainer\.fit_score_many"):
            r.fit_score_many(jobs)
    assert calls == []


def test_fit_score_many_refuses_test_labels_out_of_range(no_training):
    # returned [0.0] silently before
    x, y = _data()
    y_test = torch.full((48,), 10)
    with pytest.raises(ValueError, match=r"'jobs\[0\]\.y_test' parameter of "
                                         r"TorchRetrainer\.fit_score_many must be labels in "
                                         r"\[0, 3\).*Got labels from 10 to 10"):
        _retrainer().fit_score_many([RetrainJob(x, y, x, y_test, 0)])
    with pytest.raises(ValueError, match=r"'jobs\[0\]\.y_test' parameter"):
        fit_score_many(_retrainer(), [(x, y, x, y_test, 0)])


def test_fit_until_and_score_check_the_label_range(no_training):
    x, y = _data()
    y[0] = 3
    with pytest.raises(ValueError, match=r"'y' parameter of TorchRetrainer\.fit_until must be "
                                         r"labels in \[0, 3\)"):
        _retrainer().fit_until(x, y, seed=0, min_accuracy=0.5, max_epochs=4)


def test_score_checks_the_label_range_against_the_model():
    x, y = _data()
    r = _retrainer()
    model = r.fit(x, y, seed=0)
    with pytest.raises(ValueError, match=r"'y' parameter of TorchRetrainer\.score must be labels "
                                         r"in \[0, 3\) for a model with 3 outputs\. Got labels "
                                         r"from 0 to 5"):
        r.score(model, x, torch.arange(48) % 6)


def test_model_that_is_not_a_classifier_is_refused(no_training):
    x, y = _data()
    r = TorchRetrainer(nn.Sequential(nn.Flatten(), nn.Linear(64, 1), nn.Flatten(0)), epochs=1)
    with pytest.raises(ValueError, match=r"must return logits of shape \(batch, n_classes\)\. On 2 "
                                         r"sample\(s\) of 'x' of shape \(2, 1, 8, 8\) it returned "
                                         r"shape \(2,\)"):
        r.fit(x, y, seed=0)
    with pytest.raises(ValueError, match=r"TorchRetrainer\.fit could not run a fresh model on 2 "
                                         r"sample\(s\) of 'x' of shape \(2, 3, 8\).*input shape"):
        _retrainer().fit(torch.rand(48, 3, 8), y, seed=0)


# ---------------------------------------------------------------- 4. non-finite inputs


def test_nan_input_is_refused_with_count_and_samples(no_training):
    x, y = _data()
    x[7, 0, 2, 3] = float("nan")
    x[30, 0, 0, 0] = float("inf")
    x[30, 0, 1, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"'x' parameter of TorchRetrainer\.fit must be finite "
                                         r"\(no NaN or inf\)\. Got 3 non-finite value\(s\) in 2 "
                                         r"sample\(s\), first in sample\(s\) \[7, 30\] instead"):
        _retrainer().fit(x, y, seed=0)
    with pytest.raises(ValueError, match=r"'jobs\[1\]\.x_train' parameter of "
                                         r"TorchRetrainer\.fit_many must be finite"):
        _retrainer().fit_many([RetrainJob(x.nan_to_num(), y, None, None, 0),
                               RetrainJob(x, y, None, None, 1)])
    with pytest.raises(ValueError, match=r"'jobs\[0\]\.x_test' parameter of "
                                         r"TorchRetrainer\.fit_score_many must be finite"):
        _retrainer().fit_score_many([RetrainJob(x.nan_to_num(), y, x, y, 0)])


def test_score_refuses_nan_input():
    x, y = _data()
    r = _retrainer()
    model = r.fit(x, y, seed=0)
    x[3] = float("nan")
    with pytest.raises(ValueError, match=r"'x' parameter of TorchRetrainer\.score must be finite.*"
                                         r"64 non-finite value\(s\) in 1 sample\(s\), first in "
                                         r"sample\(s\) \[3\]"):
        r.score(model, x.numpy(), y)


def test_float64_beyond_float32_range_is_refused(no_training):
    x, y = _data()
    x64 = x.double()
    x64[4, 0, 0, 0] = 1e300
    with pytest.raises(ValueError, match=r"1 non-finite value\(s\) in 1 sample\(s\) \(finite in "
                                         r"float64 but beyond the float32 range used for "
                                         r"training\), first in sample\(s\) \[4\]"):
        _retrainer().fit(x64, y, seed=0)


def test_large_finite_inputs_pass():
    # the float32 sum of the data overflows; every value is finite
    x, y = _data()
    r = _retrainer()
    r.fit(x * 3e37, y, seed=0)


class _Pairs(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class _InputsOnly(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.rand(1, 8, 8)


def test_a_dataset_without_labels_is_refused(no_training):
    with pytest.raises(ValueError, match=r"'x' parameter of TorchRetrainer\.fit must be a Dataset "
                                         r"of \(input, label\) pairs\. Got a _InputsOnly whose "
                                         r"first items collate to a Tensor instead"):
        _retrainer().fit(_InputsOnly(), None, seed=0)


def test_dataset_batches_are_checked_as_they_are_read():
    x, y = _data()
    x[37, 0, 4, 4] = float("nan")
    r = _retrainer()
    with pytest.raises(ValueError, match=r"'x' parameter of TorchRetrainer\.fit must be finite.*"
                                         r"in training batch \d read from the Dataset, first in "
                                         r"sample\(s\) \[37\]"):
        r.fit(_Pairs(x, y), None, seed=0)
    # item numbers are those of the user's Dataset, also through the validation split
    with pytest.raises(ValueError, match=r"first in sample\(s\) \[37\]"):
        _retrainer(validation_split=0.5, epochs=2).fit(_Pairs(x, y), None, seed=0)
    x, y = _data()
    y[20] = 9
    with pytest.raises(ValueError, match=r"'x' parameter of TorchRetrainer\.fit must be a Dataset "
                                         r"with labels in \[0, 3\) for a model with 3 outputs\. "
                                         r"Got labels from \d to 9 in training batch \d read from "
                                         r"the Dataset instead"):
        r.fit(_Pairs(x, y), None, seed=0)
    model = r.fit(_Pairs(*_data()), None, seed=0)
    with pytest.raises(ValueError, match=r"TorchRetrainer\.score must be a Dataset with labels in "
                                         r"\[0, 3\).*9 to 9 in batch 0 read from the Dataset"):
        r.score(model, TensorDataset(x[20:21], y[20:21]), None)
    with pytest.raises(ValueError, match="pass y=None"):
        r.score(model, TensorDataset(x, y), y)
    with pytest.raises(TypeError, match=r"'x' parameter of TorchRetrainer\.fit must be a Dataset "
                                        r"with integer class labels\. Got boolean labels in "
                                        r"training batch 0"):
        r.fit(TensorDataset(x, y > 0), None, seed=0)


# ---------------------------------------------------------------- 5. empty and non-numeric data


def test_empty_data_is_refused(no_training):
    x, y = _data()
    r = _retrainer()
    with pytest.raises(ValueError, match=r"'x' parameter of TorchRetrainer\.fit must be "
                                         r"non-empty\. Got 0 samples \(shape \(0, 1, 8, 8\)\)"):
        r.fit(x[:0], y[:0], seed=0)
    with pytest.raises(ValueError, match=r"'x' parameter of TorchRetrainer\.score must be "
                                         r"non-empty"):
        r.score(_linear(), x[:0], y[:0])
    with pytest.raises(ValueError, match=r"'jobs\[0\]\.x_test' parameter of "
                                         r"TorchRetrainer\.fit_score_many must be non-empty"):
        r.fit_score_many([RetrainJob(x, y, x[:0], y[:0], 0)])
    with pytest.raises(ValueError, match="must be a non-empty Dataset"):
        r.fit(TensorDataset(x[:0], y[:0]), None, seed=0)
    with pytest.raises(ValueError, match=r"large enough to keep training samples after "
                                         r"validation_split=0\.9\. Got 1 sample"):
        _retrainer(validation_split=0.9).fit(x[:1], y[:1], seed=0)


def test_non_numeric_data_is_refused(no_training):
    x, y = _data()
    r = _retrainer()
    with pytest.raises(TypeError, match=r"'x' parameter of TorchRetrainer\.fit must be a "
                                        r"torch\.Tensor, a numpy\.ndarray, a numeric sequence or "
                                        r"a map-style torch Dataset\. Got str instead"):
        r.fit("images.npy", y, seed=0)
    with pytest.raises(TypeError, match=r"'x' parameter .*Got a ndarray of dtype object"):
        r.fit(np.array([object()] * 48), y, seed=0)
    with pytest.raises(TypeError, match=r"'y' parameter .*Got None instead\. Pass y=None only "
                                        r"with a torch Dataset"):
        r.fit(x, None, seed=0)
    with pytest.raises(TypeError, match=r"'x' parameter .*real-valued"):
        r.fit(torch.zeros(48, 2, dtype=torch.complex64), y, seed=0)


def test_numeric_lists_and_other_float_dtypes_are_accepted():
    x, y = _data(16)
    r = _retrainer()
    reference = r.fit(x, y, seed=2)
    assert _same_weights(reference, r.fit(x.tolist(), y.tolist(), seed=2))
    # float64 input of float32 values gives the same model as the float32 input
    assert _same_weights(reference, r.fit(x.double(), y, seed=2))
    assert _same_weights(reference, r.fit(x.numpy().astype(np.float64), y.numpy(), seed=2))
    half = x.half()
    assert _same_weights(r.fit(half.float(), y, seed=2), r.fit(half.numpy(), y, seed=2))


def test_read_only_arrays_are_read_without_a_warning(recwarn):
    x, y = _data(16)
    x_np, y_np = x.numpy().copy(), y.numpy().copy()
    x_np.flags.writeable = False
    y_np.flags.writeable = False
    r = _retrainer()
    assert _same_weights(r.fit(x, y, seed=0), r.fit(x_np, y_np, seed=0))
    assert not [w for w in recwarn if "not writable" in str(w.message)]


# ---------------------------------------------------------------- 6. seeds


@pytest.mark.parametrize("seed, error, got", [
    (2**70, ValueError, "1180591620717411303424"), (2**63, ValueError, "9223372036854775808"),
    (-1, ValueError, "-1"), (1.5, TypeError, "1.5"), (2.0, TypeError, "2.0"),
    (True, TypeError, "True"), ("3", TypeError, "'3'"),
])
def test_bad_seeds_are_refused(seed, error, got, no_training):
    x, y = _data()
    pattern = (r"'seed' parameter of TorchRetrainer\.fit must be an integer in \[0, 2\*\*63\)\. "
               rf"Got {got} instead")
    with pytest.raises(error, match=pattern):
        _retrainer().fit(x, y, seed=seed)
    with pytest.raises(error, match=r"'jobs\[1\]\.seed' parameter of "
                                    r"TorchRetrainer\.fit_score_many must be an integer in "
                                    r"\[0, 2\*\*63\)"):
        _retrainer().fit_score_many([RetrainJob(x, y, x, y, 0), RetrainJob(x, y, x, y, seed)])
    with pytest.raises(error, match=r"'seed' parameter of TorchRetrainer\.fit_until"):
        _retrainer().fit_until(x, y, seed=seed, min_accuracy=0.5, max_epochs=2)


def test_largest_seed_and_numpy_seeds_work():
    x, y = _data(16)
    r = _retrainer()
    r.fit(x, y, seed=2**63 - 1)
    assert _same_weights(r.fit(x, y, seed=np.int64(5)), r.fit(x, y, seed=5))


# ---------------------------------------------------------------- 7. constructor


@pytest.mark.parametrize("kwargs, error, name", [
    ({"lr": math.inf}, ValueError, "lr"), ({"lr": math.nan}, ValueError, "lr"),
    ({"lr": 0}, ValueError, "lr"), ({"lr": "0.1"}, TypeError, "lr"),
    ({"weight_decay": -1}, ValueError, "weight_decay"),
    ({"weight_decay": math.nan}, ValueError, "weight_decay"),
    ({"momentum": 1.0}, ValueError, "momentum"), ({"momentum": -0.1}, ValueError, "momentum"),
    ({"momentum": math.nan}, ValueError, "momentum"),
    ({"label_smoothing": 2.0}, ValueError, "label_smoothing"),
    ({"label_smoothing": 1.0}, ValueError, "label_smoothing"),
    ({"label_smoothing": -0.1}, ValueError, "label_smoothing"),
    ({"validation_split": math.nan}, ValueError, "validation_split"),
    ({"num_workers": -1}, ValueError, "num_workers"),
    ({"num_workers": 1.5}, TypeError, "num_workers"),
    ({"epochs": True}, TypeError, "epochs"), ({"epochs": 2.5}, TypeError, "epochs"),
    ({"batch_size": True}, TypeError, "batch_size"),
    ({"max_ensemble": True}, TypeError, "max_ensemble"),
    ({"max_ensemble": 0}, ValueError, "max_ensemble"),
])
def test_constructor_refuses_bad_recipe(kwargs, error, name):
    pattern = (rf"The '{name}' parameter of TorchRetrainer must be .*\. Got "
               rf"{re.escape(repr(kwargs[name]))} instead")
    with pytest.raises(error, match=pattern):
        TorchRetrainer(_linear(), **kwargs)


def test_constructor_refuses_an_augment_that_is_not_callable():
    with pytest.raises(TypeError, match=r"'augment' parameter of TorchRetrainer must be callable "
                                        r"\(x_batch, generator\) -> x_batch, or None\. Got 'flip'"):
        TorchRetrainer(_linear(), augment="flip")


def test_constructor_accepts_numpy_numbers():
    r = TorchRetrainer(_linear(), epochs=np.int64(2), max_ensemble=np.int32(4),
                       lr=np.float32(0.5), momentum=0, label_smoothing=np.float64(0.1))
    assert (r.epochs, r.max_ensemble, r.lr) == (2, 4, 0.5)
    assert type(r.max_ensemble) is int


# ---------------------------------------------------------------- 8. meta device


def test_model_on_the_meta_device_is_refused():
    with pytest.raises(ValueError, match=r"'model' parameter of TorchRetrainer must be a model "
                                         r"with data\. Got a model with tensors on the meta device "
                                         r"\(no data\) instead\. Materialise it"):
        TorchRetrainer(nn.Linear(4, 2, device="meta"))
    r = TorchRetrainer(model_fn=lambda: nn.Linear(4, 2, device="meta"), epochs=1)
    with pytest.raises(ValueError, match=r"'model_fn' of TorchRetrainer must return a model with "
                                         r"data.*meta device.*to_empty"):
        r.fit(torch.rand(8, 4), torch.zeros(8, dtype=torch.long), seed=0)
    with pytest.raises(ValueError, match=r"'device' parameter of TorchRetrainer .*Got 'meta'"):
        TorchRetrainer(nn.Linear(4, 2), device="meta")


# ---------------------------------------------------------------- 9. momentum under one-cycle


def test_sgd_momentum_is_used_under_onecycle():
    x, y = _data(64)
    kwargs = {"optimizer": "sgd", "schedule": "onecycle", "epochs": 2, "lr": 0.05}
    m0 = TorchRetrainer(SmallCNN(n_classes=3), momentum=0.0, **kwargs).fit(x, y, seed=0)
    m9 = TorchRetrainer(SmallCNN(n_classes=3), momentum=0.9, **kwargs).fit(x, y, seed=0)
    assert not _same_weights(m0, m9)
    # the momentum stays as given through the schedule
    r = TorchRetrainer(_linear(), optimizer="sgd", momentum=0.7)
    params = [nn.Parameter(torch.zeros(2))]
    opt, sched = r._optimizer(params, 20)
    seen = set()
    for _ in range(20):
        params[0].grad = torch.ones(2)
        opt.step()
        sched.step()
        seen.add(opt.param_groups[0]["momentum"])
    assert seen == {0.7}


def _sgd_onecycle_reference(retrainer, params, steps):
    """Independent reference: SGD with a constant momentum under torch's OneCycleLR."""
    opt = torch.optim.SGD(params, lr=retrainer.lr, momentum=retrainer.momentum,
                          weight_decay=retrainer.weight_decay)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=retrainer.lr, total_steps=steps,
                                                    cycle_momentum=False)


def test_sgd_onecycle_matches_a_reference_schedule(monkeypatch):
    x, y = _data(64)
    r = TorchRetrainer(SmallCNN(n_classes=3), optimizer="sgd", momentum=0.9, epochs=2, lr=0.05)
    model = r.fit(x, y, seed=3)
    monkeypatch.setattr(TorchRetrainer, "_optimizer", _sgd_onecycle_reference)
    assert _same_weights(model, r.fit(x, y, seed=3))


def _previous_optimizer(self, params, steps):
    """The recipe's optimizer and schedule as they were before SGD's momentum was fixed."""
    if self.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay)
    sched = None
    if self.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=steps)
    elif self.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    elif self.schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, steps // 3), gamma=0.1)
    return opt, sched


@pytest.mark.parametrize("kwargs", [{}, {"schedule": "cosine", "weight_decay": 1e-3},
                                    {"optimizer": "sgd", "schedule": "step"}])
def test_adam_default_recipe_and_other_schedules_are_unchanged(kwargs, monkeypatch):
    x, y = _data(96, classes=10)
    jobs = [RetrainJob(x * (1 + 0.1 * s), y, x, y, s) for s in range(2)]
    r = TorchRetrainer(SmallCNN(), epochs=2, **kwargs)
    now = [r.fit(x, y, seed=1), *r.fit_many(jobs)]
    monkeypatch.setattr(TorchRetrainer, "_optimizer", _previous_optimizer)
    before = [r.fit(x, y, seed=1), *r.fit_many(jobs)]
    for a, b in zip(now, before, strict=True):
        assert _same_weights(a, b)


# ---------------------------------------------------------------- 10. fit_until


@pytest.mark.parametrize("min_accuracy, error", [(1.5, ValueError), (math.nan, ValueError),
                                                 (-0.1, ValueError), (math.inf, ValueError),
                                                 (True, TypeError), ("0.9", TypeError)])
def test_fit_until_refuses_bad_min_accuracy(min_accuracy, error, no_training):
    x, y = _data()
    with pytest.raises(error, match=r"'min_accuracy' parameter of TorchRetrainer\.fit_until must "
                                    r"be a (finite )?number"):
        _retrainer().fit_until(x, y, seed=0, min_accuracy=min_accuracy, max_epochs=2)
    with pytest.raises(TypeError, match=r"'max_epochs' parameter of TorchRetrainer\.fit_until"):
        _retrainer().fit_until(x, y, seed=0, min_accuracy=0.5, max_epochs=True)


def test_fit_until_still_trains():
    x, y = _data()
    model, acc = _retrainer().fit_until(x, y, seed=0, min_accuracy=1.0, max_epochs=2)
    assert isinstance(model, nn.Module) and 0.0 <= acc <= 1.0


# ---------------------------------------------------------------- 11. entry points


def test_a_retrainer_class_is_refused(no_training):
    x, y = _data()
    with pytest.raises(TypeError, match=r"'retrainer' parameter of fit_score_many must be a "
                                        r"retrainer instance\. Got the class TorchRetrainer "
                                        r"instead\. Pass an instance, e\.g\. "
                                        r"TorchRetrainer\(model\)"):
        fit_score_many(TorchRetrainer, [RetrainJob(x, y, x, y, 0)])
    with pytest.raises(TypeError, match=r"'retrainer' parameter of fit_task .*e\.g\. "
                                        r"TorchRetrainer\(model\)"):
        fit_task(TorchRetrainer, x, y, 0, 0.5, 2)

    class Mine:
        def fit(self, x, y, *, seed):
            return nn.Identity()

        def score(self, model, x, y):
            return 1.0

    with pytest.raises(TypeError, match=r"Got the class Mine instead\. .*e\.g\. Mine\(\.\.\.\)"):
        fit_score_many(Mine, [])
    with pytest.raises(TypeError, match=r"'retrainer' parameter of fit_task must be an object "
                                        r"with fit"):
        fit_task(object(), x, y, 0)


def test_jobs_that_are_not_retrain_jobs_are_refused(no_training):
    x, y = _data()
    r = _retrainer()
    with pytest.raises(ValueError, match=r"'jobs\[1\]' parameter of fit_score_many must be a "
                                         r"RetrainJob or a 5-tuple \(x_train, y_train, x_test, "
                                         r"y_test, seed\)\. Got a tuple of length 4 instead"):
        fit_score_many(r, [(x, y, x, y, 0), (x, y, x, y)])
    with pytest.raises(TypeError, match=r"'jobs\[0\]' parameter of "
                                        r"TorchRetrainer\.fit_score_many .*Got a dict"):
        r.fit_score_many([{"x_train": x}])
    with pytest.raises(TypeError, match=r"Got a single RetrainJob instead\. Wrap it in a list"):
        r.fit_many(RetrainJob(x, y, x, y, 0))
    with pytest.raises(TypeError, match=r"'jobs' parameter of fit_score_many .*Got int"):
        fit_score_many(r, 3)


def test_user_retrainer_loop_checks_jobs():
    class Mine:
        def fit(self, x, y, *, seed):
            return nn.Identity()

        def score(self, model, x, y):
            return 1.0

    with pytest.raises(ValueError, match=r"'jobs\[0\]' parameter of fit_score_many .*length 3"):
        fit_score_many(Mine(), [(1, 2, 3)])
    assert fit_score_many(Mine(), [(1, 2, 3, 4, 5)]) == [1.0]


# ---------------------------------------------------------------- 12. diverging training


def _cnn():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 2))


def _pairs12():
    return torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(12) % 2


def test_diverging_training_raises_instead_of_reporting_an_accuracy():
    x, y = _pairs12()
    r = TorchRetrainer(_cnn(), epochs=2, lr=1e30, schedule=None)
    with pytest.raises(RuntimeError, match=r"TorchRetrainer\.fit: training diverged: the loss "
                                           r"became NaN or inf at epoch [12] of 2 \(seed 0\)\. "
                                           r"Lower lr \(now 1e\+30\), check the augment function "
                                           r"and the data"):
        r.fit(x, y, seed=0)
    with pytest.raises(RuntimeError, match=r"fit_score_many: training diverged: .* \(in 2 of the "
                                           r"2 models trained together: jobs\[0\] \(seed 0\), "
                                           r"jobs\[1\] \(seed 1\)\)\. Lower lr"):
        r.fit_score_many([RetrainJob(x, y, x, y, 0), RetrainJob(x, y, x, y, 1)])
    with pytest.raises(RuntimeError, match=r"at epoch [12] of 2 \(jobs\[0\], seed 5\)"):
        TorchRetrainer(_cnn(), epochs=2, lr=1e30, schedule=None, ensemble=False).fit_score_many(
            [RetrainJob(x, y, x, y, 5)])


def test_the_ensemble_names_the_model_that_diverged():
    x, y = _pairs12()
    # finite inputs whose logits overflow float32: only job 1's loss is NaN
    jobs = [RetrainJob(x, y, x, y, 0), RetrainJob(x * 3e38, y, x, y, 1)]
    with pytest.raises(RuntimeError, match=r"at epoch 1 of 1 \(in 1 of the 2 models trained "
                                           r"together: jobs\[1\] \(seed 1\)\)"):
        TorchRetrainer(_cnn(), epochs=1).fit_score_many(jobs)


def test_an_augment_that_returns_nan_in_training_raises():
    x, y = _pairs12()

    def nan_on_full_batches(b, g):  # passes the probe on two inputs
        return b if len(b) <= 2 else b * float("nan")

    with pytest.raises(RuntimeError, match=r"the loss became NaN or inf at epoch 1 of 2 "
                                           r"\(seed 3\)\. .*check the augment function"):
        TorchRetrainer(_cnn(), epochs=2, augment=nan_on_full_batches).fit(x, y, seed=3)


def test_score_refuses_nan_logits():
    x, y = _pairs12()
    model = _cnn()
    with torch.no_grad():
        model[3].bias[0] = float("nan")
    with pytest.raises(ValueError, match=r"TorchRetrainer\.score: the model returned NaN or inf "
                                         r"logits for 12 of 12 sample\(s\) of 'x', first in "
                                         r"sample\(s\) \[0, 1, 2, 3, 4\]\. Its weights are likely "
                                         r"NaN \(training diverged"):
        _retrainer().score(model, x, y)
    with pytest.raises(ValueError, match=r"NaN or inf logits .* in batch 0 read from the Dataset"):
        _retrainer().score(model, TensorDataset(x, y), None)


# ---------------------------------------------------------------- 13. a user's scores


class _Scores:
    """A user's retrainer whose score returns the given values in turn."""

    def __init__(self, *values):
        self.values = list(values)

    def fit(self, x, y, *, seed):
        return nn.Identity()

    def score(self, model, x, y):
        return self.values.pop(0)


@pytest.mark.parametrize("bad, error, got", [
    (math.nan, ValueError, r"of nan, which is not an accuracy"),
    (7.5, ValueError, r"of 7\.5, which is not an accuracy \(a finite number in \[0, 1\]\)"),
    (1.5, ValueError, r"of 1\.5, which is not an accuracy"),
    (-0.1, ValueError, r"of -0\.1, which"),
    (torch.tensor([0.5, 0.7]), TypeError, r"that is not one number: a Tensor of shape \(2,\)"),
    ("0.5", TypeError, r"that is not a real number: '0\.5' \(str\)"),
    (True, TypeError, r"that is not a real number: True \(bool\)"),
])
def test_a_user_retrainers_scores_are_checked(bad, error, got):
    x, y = _pairs12()
    jobs = [RetrainJob(x, y, x, y, 0), RetrainJob(x, y, x, y, 4)]
    with pytest.raises(error, match=r"fit_score_many \(from _Scores\.score\) got a score for "
                                    r"jobs\[1\] \(seed 4\) " + got):
        fit_score_many(_Scores(0.5, bad), jobs)


def test_scores_as_numbers_zero_d_tensors_and_numpy_scalars_are_accepted():
    x, y = _pairs12()
    jobs = [RetrainJob(x, y, x, y, s) for s in range(4)]
    scores = fit_score_many(_Scores(torch.tensor(0.25), np.float32(0.5), np.array(0.75), 1), jobs)
    assert scores == [0.25, 0.5, 0.75, 1.0] and all(type(s) is float for s in scores)


def test_a_user_fit_score_many_and_fit_task_are_checked():
    x, y = _pairs12()
    jobs = [RetrainJob(x, y, x, y, s) for s in range(2)]

    class Many(_Scores):
        def fit_score_many(self, jobs):
            return self.values

    with pytest.raises(ValueError, match=r"Many\.fit_score_many got a score for jobs\[1\] of nan"):
        fit_score_many(Many(0.5, math.nan), jobs)
    with pytest.raises(RuntimeError, match=r"returned 1 scores for 2 jobs"):
        fit_score_many(Many(0.5), jobs)
    with pytest.raises(TypeError, match=r"One\.fit_score_many returned float for 2 jobs"):
        fit_score_many(type("One", (Many,), {"fit_score_many": lambda self, j: 0.5})(), jobs)
    with pytest.raises(ValueError, match=r"fit_task \(from _Scores\.score\) got a score for the "
                                         r"model of seed 0 of 7\.5"):
        fit_task(_Scores(7.5), x, y, 0)


def test_retrain_group_checks_the_scores():
    from quantus_roar.removal import Removal
    from quantus_roar.splits import Split
    from quantus_roar.tasks import retrain_group

    x, y = _pairs12()
    with pytest.raises(ValueError, match=r"got a score for jobs\[1\] \(seed 1\) of 1\.5"):
        retrain_group(_Scores(0.5, 1.5), Split(x, y), Split(x, y), [(0.0, 0), (0.0, 1)],
                      removal=Removal())
    out = retrain_group(_Scores(0.5, np.float64(0.25)), Split(x, y), Split(x, y),
                        [(0.0, 0), (0.0, 1)], removal=Removal())
    assert out["accuracy"] == [0.5, 0.25]


# ---------------------------------------------------------------- 14. model dtypes


def test_a_float64_model_trains_and_scores_in_float64():
    x, y = _pairs12()
    r = TorchRetrainer(_cnn().double(), epochs=2)
    model = r.fit(x, y, seed=0)
    assert model[1].weight.dtype == torch.float64
    assert 0.0 <= r.score(model, x, y) <= 1.0
    # a float32 retrainer scores a float64 model, and the ensemble path trains in float64
    assert 0.0 <= _retrainer().score(model, x.numpy(), y) <= 1.0
    models = r.fit_many([RetrainJob(x, y, None, None, s) for s in range(2)])
    assert all(m[1].weight.dtype == torch.float64 for m in models)
    alone = TorchRetrainer(_cnn().double(), epochs=2, ensemble=False).fit(x, y, seed=1)
    for p, q in zip(models[1].parameters(), alone.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_a_float64_model_keeps_finite_float64_inputs():
    x, y = _pairs12()
    x64 = x.double()
    x64[2, 0, 0, 0] = 1e300  # beyond float32, finite in float64
    with pytest.raises(ValueError, match=r"beyond the float32 range"):
        _retrainer().fit(x64, y, seed=0)
    TorchRetrainer(_cnn().double(), epochs=1, lr=1e-6).fit(x64 * 1e-290, y, seed=0)


# ---------------------------------------------------------------- 15. BatchNorm and one sample


def _bn():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Linear(16, 2))


def test_batchnorm1d_last_batch_of_one_sample_joins_the_one_before():
    x, y = _pairs12()
    # 12 = 11 + 1: one mini-batch of 12, as with batch_size=12
    merged = TorchRetrainer(_bn(), epochs=2, batch_size=11).fit(x, y, seed=0)
    assert _same_weights(merged, TorchRetrainer(_bn(), epochs=2, batch_size=12).fit(x, y, seed=0))
    streamed = TorchRetrainer(_bn(), epochs=2, batch_size=11).fit(TensorDataset(x, y), None,
                                                                  seed=0)
    assert _same_weights(merged, streamed)
    # 12 = 5 + 5 + 2: nothing to merge; 13 = 4 * 3 + 1 trains too
    TorchRetrainer(_bn(), epochs=1, batch_size=5).fit(x, y, seed=0)
    x13, y13 = torch.rand(13, 1, 8, 8), torch.arange(13) % 2
    TorchRetrainer(_bn(), epochs=1, batch_size=4).fit_score_many([RetrainJob(x13, y13, x, y, 0)])


def test_batchnorm_with_one_training_sample_is_refused_up_front(no_training):
    x, y = _pairs12()
    with pytest.raises(ValueError, match=r"TorchRetrainer\.fit cannot train this model with 1 "
                                         r"training sample: its BatchNorm needs more than one "
                                         r"sample per mini-batch"):
        TorchRetrainer(_bn(), epochs=1).fit(x[:1], y[:1], seed=0)
    with pytest.raises(ValueError, match=r"cannot train this model with batch_size=1"):
        TorchRetrainer(_bn(), epochs=1, batch_size=1).fit(x, y, seed=0)
    with pytest.raises(ValueError, match=r"with 1 training sample"):
        TorchRetrainer(_bn(), epochs=1, validation_split=0.5).fit(x[:2], y[:2], seed=0)


# ---------------------------------------------------------------- 16. score checks the model


def test_score_checks_the_model(no_training):
    x, y = _pairs12()
    r = _retrainer()
    with pytest.raises(TypeError, match=r"'model' parameter of TorchRetrainer\.score must be a "
                                        r"torch\.nn\.Module instance\. Got the class Linear"):
        r.score(nn.Linear, x, y)
    with pytest.raises(TypeError, match=r"'model' parameter of TorchRetrainer\.score must be a "
                                        r"torch\.nn\.Module\. Got str"):
        r.score("model", x, y)
    with pytest.raises(ValueError, match=r"must be a model with weights\. Got 4 tensor\(s\) on "
                                         r"the meta device"):
        r.score(_cnn().to("meta"), x, y)
    with pytest.raises(ValueError, match=r"TorchRetrainer\.score measures the accuracy of a "
                                         r"classifier: the model must return logits of shape "
                                         r"\(batch, n_classes\)\. On 12 sample\(s\) of 'x' of "
                                         r"shape \(12, 1, 8, 8\) it returned shape \(12,\)"):
        r.score(nn.Sequential(nn.Flatten(), nn.Linear(64, 1), nn.Flatten(0)), x, y)


# ---------------------------------------------------------------- 17. augment probed


@pytest.mark.parametrize("augment, got", [
    (lambda b, g: None, r"returned None on 2 inputs of 'x'"),
    (lambda b, g: b[:1], r"returned a tensor of shape \(1, 1, 8, 8\) and dtype torch\.float32"),
    (lambda b, g: b.double(), r"returned a tensor of shape \(2, 1, 8, 8\) and dtype "
                              r"torch\.float64"),
    (lambda b: b, r"failed on 2 inputs of 'x' of shape \(2, 1, 8, 8\): TypeError"),
    (lambda b, g: b * float("inf"), r"returned NaN or inf on 2 finite inputs"),
])
def test_augment_is_tried_before_training(augment, got, no_training):
    x, y = _pairs12()
    with pytest.raises(ValueError, match=r"TorchRetrainer\.fit: the augment function <lambda> "
                                         + got + r".*must take \(x_batch, generator\)"):
        TorchRetrainer(_cnn(), epochs=1, augment=augment).fit(x, y, seed=0)


def test_a_named_augment_is_named_and_the_probe_leaves_the_data_and_rng_alone():
    x, y = _pairs12()
    before = x.clone()

    def flip_in_place(b, g):
        return b.flip(-1) if len(b) > 2 else b.mul_(-1.0)[:1]

    with pytest.raises(ValueError, match=r"the augment function .*flip_in_place returned a "
                                         r"tensor of shape \(1, 1, 8, 8\)"):
        TorchRetrainer(_cnn(), epochs=1, augment=flip_in_place).fit(x, y, seed=0)
    assert torch.equal(x, before)
    r = TorchRetrainer(_cnn(), epochs=1, augment=lambda b, g: b + torch.rand(b.shape))
    state = torch.get_rng_state()
    r.fit(x, y, seed=0)
    assert torch.equal(state, torch.get_rng_state())


# ---------------------------------------------------------------- 18. unsigned labels


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int32])
def test_unsigned_and_narrow_integer_labels_train_the_same_model(dtype):
    x, y = _pairs12()
    r = TorchRetrainer(_cnn(), epochs=1)
    model = r.fit(x, y.numpy().astype(dtype), seed=0)
    assert _same_weights(model, r.fit(x, y, seed=0))
    assert r.score(model, x, y.numpy().astype(dtype)) == r.score(model, x, y)
    assert r.fit_score_many([RetrainJob(x, y.numpy().astype(dtype), x,
                                        y.numpy().astype(dtype), 0)]) == [r.score(model, x, y)]


def test_unsigned_labels_in_a_dataset_and_beyond_int64():
    x, y = _pairs12()
    r = TorchRetrainer(_cnn(), epochs=1)
    ds = TensorDataset(x, y.to(torch.uint16))
    model = r.fit(ds, None, seed=0)
    assert _same_weights(model, r.fit(x, y, seed=0))
    assert r.score(model, ds, None) == r.score(model, x, y)
    big = np.full(12, 2**63, dtype=np.uint64)
    with pytest.raises(ValueError, match=r"'y' parameter of TorchRetrainer\.fit must be integer "
                                         r"class labels within the int64 range\. Got 12 uint64 "
                                         r"label\(s\) >= 2\*\*63"):
        r.fit(x, big, seed=0)
    with pytest.raises(ValueError, match=r"labels in \[0, 2\) .*Got labels from 0 to 7"):
        r.fit(x, np.arange(12, dtype=np.uint16) % 8, seed=0)
