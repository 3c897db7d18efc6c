"""Tests of the retraining adapter."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from quantus_roar.data import load_digits_data
from quantus_roar.exceptions import NotResettableError
from quantus_roar.models import SmallCNN, SmallResNet
from quantus_roar.retrain import (
    Recipe,
    RetrainJob,
    TorchRetrainer,
    fit_score_many,
    torch_retrainer,
)
from quantus_roar.retrain.grouped import grouped_forward, supports_grouped


@pytest.fixture(scope="module")
def digits():
    return load_digits_data(seed=0)


def _tiny_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long()
    return x, y


def _state_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))


def test_load_digits_data_shapes_and_stratification():
    x_train, y_train, x_test, y_test = load_digits_data(seed=1)
    assert x_train.shape[1:] == (1, 8, 8) and x_train.dtype == np.float32
    assert len(x_train) + len(x_test) == 1797 and abs(len(x_test) - 360) <= 1
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    train_frac = np.bincount(y_train) / len(y_train)
    test_frac = np.bincount(y_test) / len(y_test)
    assert np.abs(train_frac - test_frac).max() < 0.01


def test_same_seed_same_model_different_seed_different_model():
    x, y = _tiny_data()
    r = TorchRetrainer(SmallCNN(), epochs=2)
    m1, m2, m3 = r.fit(x, y, seed=3), r.fit(x, y, seed=3), r.fit(x, y, seed=4)
    assert _state_equal(m1, m2)
    assert not _state_equal(m1, m3)
    assert r.score(m1, x, y) == r.score(m2, x, y)
    assert not m1.training


def test_global_rng_untouched():
    x, y = _tiny_data()
    retrainer = TorchRetrainer(SmallCNN(), epochs=1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    retrainer.fit(x, y, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_template_unchanged_and_weights_reset():
    template = SmallCNN()
    before = copy.deepcopy(template.state_dict())
    x, y = _tiny_data()
    model = TorchRetrainer(template, epochs=1).fit(x, y, seed=0)
    assert all(torch.equal(before[k], v) for k, v in template.state_dict().items())
    fresh = TorchRetrainer(template).new_model(0)
    assert not torch.equal(fresh[0].weight, template[0].weight)
    assert model is not template


class _NoReset(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.scale


def test_module_without_reset_parameters_is_named():
    model = nn.Sequential(nn.Flatten(), _NoReset(), nn.Linear(64, 2))
    with pytest.raises(NotResettableError, match=r"Module '1' \(_NoReset\) has parameters but no "
                                                 r"reset_parameters\(\).*model_fn="):
        TorchRetrainer(model)
    # the documented way out works
    x, y = _tiny_data()
    r = TorchRetrainer(model_fn=lambda: nn.Sequential(nn.Flatten(), _NoReset(), nn.Linear(64, 2)),
                       epochs=1)
    assert isinstance(r.fit(x, y, seed=0), nn.Module)


def test_constructor_errors():
    with pytest.raises(ValueError, match="exactly one of 'model'"):
        TorchRetrainer()
    with pytest.raises(ValueError, match=r"exactly one of 'model'.*Got both"):
        TorchRetrainer(SmallCNN(), model_fn=SmallCNN)
    with pytest.raises(ValueError, match="'epochs' parameter of TorchRetrainer must be an integer "
                                         ">= 1"):
        TorchRetrainer(SmallCNN(), epochs=0)
    with pytest.raises(ValueError, match=r"'optimizer' parameter .* one of"):
        TorchRetrainer(SmallCNN(), optimizer="lbfgs")
    with pytest.raises(ValueError, match="'validation_split' parameter"):
        TorchRetrainer(SmallCNN(), validation_split=1.0)


def test_a_recipe_and_its_keywords_train_the_same_model():
    x, y = _tiny_data()
    by_recipe = TorchRetrainer(SmallCNN(), recipe=Recipe(epochs=2, lr=1e-3))
    by_keywords = TorchRetrainer(SmallCNN(), epochs=2, lr=1e-3)
    assert by_recipe.recipe == by_keywords.recipe == Recipe(epochs=2, lr=1e-3)
    assert _state_equal(by_recipe.fit(x, y, seed=5), by_keywords.fit(x, y, seed=5))
    # keywords replace those fields of a given recipe; the attributes are the recipe's fields
    r = TorchRetrainer(SmallCNN(), Recipe(epochs=2, optimizer="sgd"), lr=1e-3, momentum=0.5)
    assert r.recipe == Recipe(epochs=2, optimizer="sgd", lr=1e-3, momentum=0.5)
    assert (r.epochs, r.optimizer, r.lr, r.momentum, r.schedule, r.batch_size) == (
        2, "sgd", 1e-3, 0.5, "onecycle", 64)
    longer = copy.copy(r)
    longer.epochs = 4
    assert (longer.recipe.epochs, r.recipe.epochs) == (4, 2)


def test_every_keyword_of_the_constructor_still_works():
    def flip(xb, generator):
        return xb.flip(-1)

    kwargs = {"epochs": 3, "lr": 1e-3, "optimizer": "sgd", "weight_decay": 1e-4, "momentum": 0.8,
              "schedule": "cosine", "label_smoothing": 0.1, "augment": flip,
              "validation_split": 0.1, "batch_size": 32}
    own = {"device": "cpu", "ensemble": False, "max_ensemble": 4, "num_workers": 0}
    for r in (TorchRetrainer(SmallCNN(), **kwargs, **own),
              TorchRetrainer(model_fn=SmallCNN, **kwargs, **own)):
        assert r.recipe == Recipe(**kwargs)
        assert {k: getattr(r, k) for k in kwargs} == kwargs
        assert (r.device, r.ensemble, r.max_ensemble, r.num_workers) == (
            torch.device("cpu"), False, 4, 0)


def test_the_settings_stay_public_attributes():
    """A run's fingerprint reads a retrainer's public attributes: the same names as ever."""
    r = TorchRetrainer(SmallCNN(), recipe=Recipe(epochs=2))
    assert {k for k in vars(r) if not k.startswith("_")} == {
        "model", "model_fn", "device", "ensemble", "max_ensemble", "num_workers", "epochs",
        "batch_size", "optimizer", "lr", "weight_decay", "momentum", "schedule",
        "label_smoothing", "augment", "validation_split"}
    assert type(r.lr) is float and type(r.epochs) is int


def test_an_unknown_keyword_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match=r"TorchRetrainer got unexpected keyword argument\(s\) "
                                        r"'epoch' \(did you mean 'epochs'\?\)\. Its keywords are "
                                        r"model, recipe, .* the fields of Recipe: epochs, "):
        TorchRetrainer(SmallCNN(), epoch=3)
    with pytest.raises(TypeError, match=r"argument\(s\) 'colour'\. "):
        TorchRetrainer(SmallCNN(), recipe=Recipe(), colour="red")
    with pytest.raises(TypeError, match=r"'recipe' parameter of TorchRetrainer must be a "
                                        r"quantus_roar\.retrain\.Recipe or None\. Got dict"):
        TorchRetrainer(SmallCNN(), recipe={"epochs": 2})


def test_a_recipe_is_frozen_and_checked():
    recipe = Recipe(epochs=np.int64(2), lr=np.float32(0.5))
    assert (recipe.epochs, recipe.lr) == (2, 0.5)
    assert type(recipe.epochs) is int and type(recipe.lr) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.lr = 0.1
    with pytest.raises(ValueError, match=r"The 'lr' parameter of Recipe must be a finite number "
                                         r"> 0\. Got -1 instead\."):
        Recipe(lr=-1)
    with pytest.raises(TypeError, match=r"'epochs' parameter of Recipe must be an integer\. "
                                        r"Got True instead"):
        Recipe(epochs=True)
    with pytest.raises(ValueError, match=r"'schedule' parameter of Recipe must be one of"):
        Recipe(schedule="linear")
    with pytest.raises(ValueError, match=r"'momentum' parameter of Recipe"):
        dataclasses.replace(recipe, momentum=1.0)
    with pytest.raises(TypeError, match=r"'augment' parameter of Recipe must be callable"):
        Recipe(augment="flip")
    # given to the retrainer, the values are checked in its name
    with pytest.raises(ValueError, match=r"'lr' parameter of TorchRetrainer must be"):
        TorchRetrainer(SmallCNN(), recipe=recipe, lr=0)


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped", "vmap"])
def test_ensemble_matches_sequential_after_one_step(grouped, monkeypatch):
    if not grouped:  # force the vmap formulation on a model the grouped one supports
        monkeypatch.setattr(torch_retrainer, "supports_grouped", lambda model, **kw: False)
    x, y = _tiny_data(n=64)
    jobs = [RetrainJob(x * (1 + 0.1 * s), y, x, y, s) for s in range(4)]
    # one epoch of one batch = one optimizer step
    kwargs = {"epochs": 1, "batch_size": 64, "schedule": None, "lr": 1e-2}
    together = TorchRetrainer(SmallCNN(), ensemble=True, **kwargs).fit_many(jobs)
    alone = TorchRetrainer(SmallCNN(), ensemble=False, **kwargs).fit_many(jobs)
    init = TorchRetrainer(SmallCNN()).new_model(0)
    for a, b in zip(together, alone, strict=True):
        for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=0, msg=name)
    assert not torch.equal(together[0][0].weight, init[0].weight)  # a step was taken


def test_ensemble_dropout_is_independent_per_model():
    def make():
        return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 2))

    x, y = _tiny_data(n=64)
    # two jobs with the same seed: identical init and batches, so only dropout differs
    jobs = [RetrainJob(x, y, x, y, 0), RetrainJob(x, y, x, y, 0)]
    models = TorchRetrainer(model_fn=make, epochs=1, batch_size=64, ensemble=True).fit_many(jobs)
    assert not torch.equal(models[0][2].weight, models[1][2].weight)


def test_batchnorm_falls_back_and_ensemble_true_raises():
    x = torch.rand(32, 3, 32, 32)
    y = torch.randint(0, 10, (32,))
    r = TorchRetrainer(SmallResNet(width=4), epochs=1, batch_size=16)
    ok, why = r.batchable()
    assert not ok and "BatchNorm2d" in why
    scores = r.fit_score_many([RetrainJob(x, y, x, y, 0), RetrainJob(x, y, x, y, 1)])
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    with pytest.raises(ValueError, match=r"ensemble=True\) cannot train this model.*BatchNorm2d"):
        TorchRetrainer(SmallResNet(width=4), ensemble=True).fit_score_many(
            [RetrainJob(x, y, x, y, 0), RetrainJob(x, y, x, y, 1)])


class _ItemModel(nn.Module):
    """Calls .item() in forward, which vmap cannot batch."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 2)

    def forward(self, x):
        return self.fc(x.flatten(1)) * (1.0 + 0.0 * x.mean().item())


def test_model_vmap_cannot_run_falls_back():
    x, y = _tiny_data(n=32)
    jobs = [RetrainJob(x, y, x, y, 0), RetrainJob(x, y, x, y, 1)]
    auto = TorchRetrainer(_ItemModel(), epochs=1)
    assert len(auto.fit_score_many(jobs)) == 2
    assert auto.batchable()[0] is False and "vmap" in auto.batchable()[1]
    with pytest.raises(ValueError, match=r"ensemble=True\) cannot train this model.*vmap"):
        TorchRetrainer(_ItemModel(), epochs=1, ensemble=True).fit_score_many(jobs)


def test_validation_split_selects_on_training_data_only():
    x, y = _tiny_data(n=80)
    x_test = torch.full((10, 1, 8, 8), float("nan"))  # any use of the test data would show
    r = TorchRetrainer(SmallCNN(), epochs=2, validation_split=0.25)
    model = r.fit(x, y, seed=0)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # fit_many ignores the test data (fit_score_many refuses NaN test inputs up front)
    (model,) = r.fit_many([RetrainJob(x, y, x_test, torch.zeros(10, dtype=torch.long), 0)])
    assert all(torch.isfinite(p).all() for p in model.parameters())


class _MeanClassifier:
    """A user's own retrainer: nearest class mean, no torch training at all."""

    def __init__(self):
        self.calls = []

    def fit(self, x, y, *, seed):
        self.calls.append(seed)
        x = torch.as_tensor(np.asarray(x)).flatten(1)
        y = torch.as_tensor(np.asarray(y))
        means = torch.stack([x[y == c].mean(0) for c in range(int(y.max()) + 1)])

        class Model(nn.Module):
            def forward(self, inp):
                return -torch.cdist(inp.flatten(1), means)

        return Model()

    def score(self, model, x, y):
        x = torch.as_tensor(np.asarray(x))
        return float((model(x).argmax(1) == torch.as_tensor(np.asarray(y))).float().mean())


def test_plain_user_retrainer_through_fit_score_many(digits):
    x_train, y_train, x_test, y_test = digits
    user = _MeanClassifier()
    scores = fit_score_many(user, [(x_train, y_train, x_test, y_test, 5),
                                   (x_train, y_train, x_test, y_test, 6)])
    assert user.calls == [5, 6]
    assert scores[0] == scores[1] and 0.85 < scores[0] < 1.0
    with pytest.raises(TypeError, match=r"fit\(x, y, \*, seed\)"):
        fit_score_many(object(), [])


def test_small_resnet_shapes():
    assert SmallResNet()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
def test_smallcnn_default_recipe_reaches_97_percent(digits):
    x_train, y_train, x_test, y_test = digits
    r = TorchRetrainer(SmallCNN())
    scores = r.fit_score_many([RetrainJob(x_train, y_train, x_test, y_test, s) for s in range(5)])
    assert np.mean(scores) >= 0.97, scores


@pytest.mark.slow
def test_ensemble_and_sequential_accuracy_agree_after_training(digits):
    x_train, y_train, x_test, y_test = digits
    jobs = [RetrainJob(x_train, y_train, x_test, y_test, s) for s in range(5)]
    together = TorchRetrainer(SmallCNN(), ensemble=True).fit_score_many(jobs)
    alone = TorchRetrainer(SmallCNN(), ensemble=False).fit_score_many(jobs)
    assert abs(np.mean(together) - np.mean(alone)) <= 0.015


def _odd_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 5, 3, stride=2, padding=1, bias=False),
                         nn.LeakyReLU(0.1), nn.AvgPool2d(2), nn.Conv2d(5, 6, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4, bias=False),
                         nn.Identity())


@pytest.mark.parametrize("make, channels", [(SmallCNN, 1), (_odd_cnn, 2),
                                            (lambda: SmallCNN(in_channels=3, width=4), 3)])
def test_grouped_forward_equals_vmap_outputs_and_gradients(make, channels):
    models = [make() for _ in range(3)]
    assert supports_grouped(models[0])
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(3, 7, channels, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = vmap(lambda p, b, xb: functional_call(base, (p, b), (xb,)))(params, buffers, x)
    out = grouped_forward(base, params, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for model, xi, oi in zip(models, x, out, strict=True):  # model i sees only its inputs
        torch.testing.assert_close(oi, model(xi), atol=1e-5, rtol=1e-5)
    g_out = torch.autograd.grad(out.square().sum(), list(params.values()))
    g_ref = torch.autograd.grad(ref.square().sum(), list(params.values()))
    for a, b in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_grouped_formulation_refuses_what_it_cannot_run():
    assert not supports_grouped(SmallResNet(width=4))
    assert not supports_grouped(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2),
                                              nn.Flatten(), nn.Linear(2, 2)))
    assert not supports_grouped(nn.Sequential(nn.Linear(3, 3)))  # no Flatten: tabular
    assert not supports_grouped(nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"),
                                              nn.Flatten(), nn.Linear(2, 2)))
    assert not supports_grouped(nn.Sequential(nn.Conv2d(1, 2, 3), nn.GELU(), nn.Flatten(),
                                              nn.Linear(2, 2)))
    flat = nn.Sequential(nn.Flatten(), nn.Linear(10, 2))
    assert supports_grouped(flat) and supports_grouped(flat, sample_ndim=3)
    for ndim in (1, 2, 4):  # tabular (F,), time series (C, T), volumes (C, D, H, W)
        assert not supports_grouped(flat, sample_ndim=ndim)
    with pytest.raises(ValueError, match=r"grouped_forward needs inputs of shape "
                                         r"\(M, B, C, H, W\)"):
        grouped_forward(flat.to("meta"), {}, torch.zeros(2, 3, 10))


@pytest.mark.parametrize("shape", [(12, 10), (12, 2, 5), (12, 1, 2, 3, 4)],
                         ids=["tabular", "time-series", "volume"])
def test_ensemble_trains_flattening_models_on_data_that_is_not_images(shape):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(*shape, generator=g), torch.arange(12) % 2
    features = int(np.prod(shape[1:]))

    def make():
        return nn.Sequential(nn.Flatten(), nn.Linear(features, 8), nn.ReLU(), nn.Linear(8, 2))

    jobs = [RetrainJob(x * (1 + 0.1 * s), y, x, y, s) for s in range(2)]
    kwargs = {"model_fn": make, "epochs": 2, "batch_size": 5}
    together = TorchRetrainer(**kwargs)
    assert together.batchable(x)[0]
    scores = together.fit_score_many(jobs)
    alone = TorchRetrainer(ensemble=False, **kwargs)
    assert scores == alone.fit_score_many(jobs)
    for a, b in zip(together.fit_many(jobs), alone.fit_many(jobs), strict=True):
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
