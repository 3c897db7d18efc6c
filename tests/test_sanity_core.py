"""The sanity-check core: model_randomisation and data_randomisation as functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from quantus_roar.randomisation import execution_order, fresh_model
from quantus_roar.sanity import (
    SanitySeeds,
    compare,
    data_randomisation,
    model_randomisation,
    permuted_labels,
)


def _model(seed=0):
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))  # no dead units
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m


X = torch.randn(12, 6, generator=torch.Generator().manual_seed(1))
T = torch.arange(12) % 3


def gradient(model, step=None):
    """Input gradients of the target scores: a map that depends on every weight."""
    x = X.clone().requires_grad_(True)
    model(x).gather(1, T[:, None]).sum().backward()
    return x.grad.detach()


def _recording():
    calls = []

    def explain(model, step):
        calls.append(step)
        return gradient(model)
    return explain, calls


def test_model_randomisation_steps_order_and_the_slow_reference():
    model = _model()
    before = [p.clone() for p in model.parameters()]
    layers = [n for n, _ in execution_order(model, X[:1])]
    seeds = SanitySeeds.derive(3)
    explain, calls = _recording()
    ceiling = _model(9)
    out = list(model_randomisation(model, explain, layers, seeds=seeds,
                                   similarities=("spearman",), ceiling=ceiling))
    assert [c.step for c in out] == ["2", "0", "floor", "ceiling"]  # top down, then references
    assert calls == ["original", "2", "0", "floor", "ceiling"]  # the original explained once
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # Independent reference for the floor and the ceiling: explain, compare by hand.
    original = gradient(model)
    floor = fresh_model(model, layers, seeds.floor)
    for c, other in ((out[2], floor), (out[3], ceiling)):
        expected = compare(original, gradient(other), ("spearman",))["spearman"]
        np.testing.assert_allclose(c.similarities["spearman"], expected, atol=1e-6)
        assert c.similarities["spearman"].shape == (12,) and c.time_s >= 0


def test_steps_select_what_is_explained_and_unknown_steps_are_errors():
    model = _model()
    layers = [n for n, _ in execution_order(model, X[:1])]
    seeds = SanitySeeds.derive(0)
    explain, calls = _recording()
    full = {c.step: c for c in model_randomisation(model, gradient, layers, seeds=seeds,
                                                    similarities=("spearman",))}
    only = list(model_randomisation(model, explain, layers, seeds=seeds,
                                    similarities=("spearman",), steps={"0"}))
    assert [c.step for c in only] == ["0"] and calls == ["original", "0"]
    # The cascade still ran through layer "2": the same model as in the full run.
    np.testing.assert_array_equal(only[0].similarities["spearman"],
                                  full["0"].similarities["spearman"])
    explain, calls = _recording()
    assert list(model_randomisation(model, explain, layers, seeds=seeds,
                                    similarities=("spearman",), steps=set())) == []
    assert calls == []  # nothing wanted, nothing explained
    with pytest.raises(ValueError, match=r"'steps' parameter of model_randomisation must name "
                                         r"steps of the check \['0', '2', 'floor'\]\. Got "
                                         r"\['ceiling'\]"):
        model_randomisation(model, gradient, layers, seeds=seeds, similarities=("spearman",),
                            steps={"ceiling"})


def test_data_randomisation_compares_the_models_it_is_given():
    model, random_labels, ceiling = _model(0), _model(1), _model(2)
    layers = [n for n, _ in execution_order(model, X[:1])]
    seeds = SanitySeeds.derive(5)
    out = list(data_randomisation(model, gradient, layers, seeds=seeds,
                                  similarities=("spearman", "spearman_abs"),
                                  random_label_model=random_labels, ceiling=ceiling))
    assert [c.step for c in out] == ["random_labels", "floor", "ceiling"]
    expected = compare(gradient(model), gradient(random_labels), ("spearman_abs",))
    np.testing.assert_allclose(out[0].similarities["spearman_abs"], expected["spearman_abs"],
                               atol=1e-6)
    # Missing models are skipped; asking for them is an error.
    skipped = list(data_randomisation(model, gradient, layers, seeds=seeds,
                                      similarities=("spearman",), random_label_model=None,
                                      ceiling=None))
    assert [c.step for c in skipped] == ["floor"]
    np.testing.assert_array_equal(skipped[0].similarities["spearman"],
                                  out[1].similarities["spearman"])
    with pytest.raises(ValueError, match=r"Got \['random_labels'\]"):
        data_randomisation(model, gradient, layers, seeds=seeds, similarities=("spearman",),
                           random_label_model=None, ceiling=None, steps={"random_labels"})


def test_permuted_labels_keep_every_count_and_depend_on_the_seed():
    y = np.repeat(np.arange(4), 25)
    a, b = permuted_labels(y, SanitySeeds.derive(0)), permuted_labels(y, SanitySeeds.derive(1))
    assert np.array_equal(np.bincount(a), np.bincount(y)) and not np.array_equal(a, b)
    assert np.array_equal(a, permuted_labels(torch.from_numpy(y), SanitySeeds.derive(0)))
    assert SanitySeeds.derive(0, 1) != SanitySeeds.derive(0, 0)
