"""The removal rule as one value, the imputer objects, and how metrics take them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import quantus_roar as qr
from quantus_roar.curves import removed_inputs
from quantus_roar.removal import (
    IMPUTER_KWARGS,
    IMPUTERS,
    Blur,
    ChannelMean,
    ImageMean,
    Imputer,
    NoisyLinear,
    Removal,
    Zero,
    impute,
    removal_masks,
)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(3)
    return torch.rand(5, 3, 9, 7, generator=g), torch.randn(5, 3, 9, 7, generator=g)


def test_names_and_objects_are_the_same_imputer():
    assert [Imputer.ensure(n).name for n in IMPUTERS] == list(IMPUTERS)
    assert Imputer.ensure("blur", {"sigma": 2.0}) == Blur(sigma=2.0)
    assert Imputer.ensure("noisy_linear", {"noise": 0.0}) == NoisyLinear(noise=0.0)
    obj = NoisyLinear(tol=1e-4)
    assert Imputer.ensure(obj) is obj
    assert IMPUTER_KWARGS["noisy_linear"] == {"noise", "tol", "max_iter"}
    assert IMPUTER_KWARGS["channel_mean"] == frozenset()
    assert str(NoisyLinear()) == "noisy_linear(noise=0.01, tol=1e-06, max_iter=1000)"
    assert str(Zero()) == "zero"


@pytest.mark.parametrize("imputer", [ChannelMean(), Zero(), ImageMean(), Blur(1.5),
                                     NoisyLinear(noise=0.05)])
def test_impute_with_an_object_equals_impute_with_its_name(batch, imputer):
    x, a = batch
    masks = removal_masks(a, [20, 60])
    by_object = impute(x, masks, imputer, seed=4)
    by_name = impute(x, masks, imputer.name, seed=4, **imputer.settings())
    assert torch.equal(by_object, by_name)
    # Kept values are never touched; removed ones are replaced.
    assert torch.equal(by_object[~masks.expand_as(by_object)], x[None].expand_as(by_object)[
        ~masks.expand_as(by_object)])


def test_imputer_settings_are_checked_when_made():
    for bad in (dict(noise=-1.0), dict(tol=0.0), dict(tol=float("nan")), dict(max_iter=0)):
        with pytest.raises((ValueError, TypeError), match="parameter of NoisyLinear"):
            NoisyLinear(**bad)
    with pytest.raises(ValueError, match="'sigma' parameter of Blur"):
        Blur(sigma=0.0)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['sigma'\]"):
        Imputer.ensure("zero", {"sigma": 1.0})
    with pytest.raises(TypeError, match="beside the imputer object"):
        Imputer.ensure(Blur(), {"sigma": 2.0})
    with pytest.raises(ValueError, match="'imputer' parameter"):
        Imputer.ensure("median")


def test_removal_is_frozen_validated_and_described():
    rule = Removal(order="keep_top", imputer="blur", seed=7)
    assert rule.imputer == Blur() and rule.seed == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.seed = 3  # type: ignore[misc]
    assert rule.describe() == {"order": "keep_top", "granularity": "pixel", "reduce": "sum_abs",
                               "imputer": "blur", "imputer_kwargs": {"sigma": 1.0}, "seed": 7}
    for bad, match in ((dict(order="top"), "'order'"), (dict(reduce="mean"), "'reduce'"),
                       (dict(seed=-1), "'seed'"), (dict(granularity="patch"), "'granularity'")):
        with pytest.raises((ValueError, TypeError), match=match):
            Removal(**bad)
    with pytest.raises(TypeError, match="give one or the other"):
        Removal.ensure(rule, seed=1)


def test_apply_equals_masks_then_impute_and_the_old_keywords(batch):
    x, a = batch
    rule = Removal(granularity="value", reduce="l2", imputer=NoisyLinear(noise=0.02), seed=5)
    ids = torch.arange(10, 15)
    got, fraction = rule.apply(x, a, [30, 70], sample_ids=ids)
    masks = removal_masks(a, [30, 70], granularity="value", reduce="l2", seed=5, sample_ids=ids)
    want = impute(x, masks, "noisy_linear", noise=0.02, seed=5, sample_ids=ids)
    assert torch.equal(got, want)
    np.testing.assert_allclose(fraction.numpy(), masks.float().mean(dim=(1, 2, 3, 4)).numpy())
    old, _ = removed_inputs(x, a, [30, 70], granularity="value", reduce="l2",
                            imputer="noisy_linear", imputer_kwargs={"noise": 0.02}, seed=5,
                            sample_ids=ids)
    assert torch.equal(old, got)


@pytest.mark.parametrize("cls, order", [(qr.ROAR, "remove_top"), (qr.KAR, "keep_top"),
                                        (qr.ROARNoRetrain, "remove_top"),
                                        (qr.KARNoRetrain, "keep_top")])
def test_metrics_take_a_rule_or_its_shortcuts(cls, order):
    rule = Removal(order=order, imputer=NoisyLinear(noise=0.0), seed=2)
    by_rule = cls(removal=rule, seed=2, disable_warnings=True)
    by_keywords = cls(imputer="noisy_linear", imputer_kwargs={"noise": 0.0}, seed=2,
                      disable_warnings=True)
    assert by_rule.removal == by_keywords.removal == rule
    assert (by_rule.imputer, by_rule.imputer_kwargs) == ("noisy_linear", rule.imputer.settings())
    other = "keep_top" if order == "remove_top" else "remove_top"
    with pytest.raises(ValueError, match=f"must have order={order!r}"):
        cls(removal=Removal(order=other), disable_warnings=True)
    with pytest.raises(ValueError, match="give the seed once"):
        cls(removal=Removal(order=order, seed=1), seed=2, disable_warnings=True)
    with pytest.raises(TypeError, match=r"\['imputer'\]; give one or the other"):
        cls(removal=rule, seed=2, imputer="zero", disable_warnings=True)
