"""PruneGrad: exact at keep=1, the same alone and in a batch, against an independent
per-sample computation, leaves the model as it was, and finds planted evidence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import quantus_roar as qr
from quantus_roar.explainers import ESTIMATORS
from quantus_roar.prunegrad import prunegrad, unit_masks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits():
    x_tr, y_tr, x_te, y_te = qr.load_digits_data(seed=0)
    model = qr.TorchRetrainer(qr.SmallCNN(), epochs=4).fit(x_tr, y_tr, seed=0)
    return model, x_te[:120], y_te[:120]


def test_keep_one_is_exactly_the_gradient(digits):
    model, x, y = digits
    grad = qr.explain(model, x, y, method="Gradient")
    assert np.array_equal(qr.explain(model, x, y, method="PruneGrad", keep=1.0), grad)
    pruned = qr.explain(model, x, y, method="PruneGrad", keep=0.25)
    assert not np.allclose(pruned, grad, atol=1e-4)  # pruning changes the map


def test_a_sample_gets_the_same_map_alone_and_in_a_batch(digits):
    model, x, y = digits
    t = torch.as_tensor(y)
    xt = torch.as_tensor(x)
    together = unit_masks(model.eval(), xt, t, keep=0.3)
    for i in (0, 7, 63):
        alone = unit_masks(model, xt[i : i + 1], t[i : i + 1], keep=0.3)
        for a, b in zip(alone, together, strict=True):
            assert torch.equal(a[0], b[i])
    maps = qr.explain(model, x, y, method="PruneGrad", keep=0.3)
    grads = qr.explain(model, x, y, method="Gradient")
    for i in (0, 7, 63):
        one = qr.explain(model, x[i : i + 1], y[i : i + 1], method="PruneGrad", keep=0.3)
        g1 = qr.explain(model, x[i : i + 1], y[i : i + 1], method="Gradient")
        # as close as the plain gradient of one sample is to its batched gradient
        tol = max(float(np.abs(g1[0] - grads[i]).max()), 1e-6) * 4
        np.testing.assert_allclose(one[0], maps[i], rtol=0, atol=tol)


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 10), nn.Linear(10, 8), nn.Linear(8, 3)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=gen)
        self.act1, self.act2 = nn.ReLU(), nn.Tanh()

    def forward(self, x):
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _reference(model: _MLP, x: torch.Tensor, t: int, keep: float) -> torch.Tensor:
    """PruneGrad of one input, written out without hooks: activations, their gradients,
    the top units by |a * g| with numpy, then the gradient with the units zeroed."""
    x = x.clone().requires_grad_(True)
    h1 = model.act1(model.fc1(x))
    h2 = model.act2(model.fc2(h1))
    g1, g2 = torch.autograd.grad(model.fc3(h2)[t], (h1, h2))
    masks = []
    for h, g in ((h1, g1), (h2, g2)):
        score = np.abs((h * g).detach().numpy())
        k = math.ceil(keep * len(score))
        keep_idx = np.argsort(-score, kind="stable")[:k]
        m = np.zeros(len(score), dtype=np.float32)
        m[keep_idx] = 1
        masks.append(torch.from_numpy(m))
    x2 = x.detach().clone().requires_grad_(True)
    p1 = model.act1(model.fc1(x2)) * masks[0]
    p2 = model.act2(model.fc2(p1)) * masks[1]
    (grad,) = torch.autograd.grad(model.fc3(p2)[t], x2)
    return grad


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.8])
def test_agrees_with_a_per_sample_reference(keep):
    model = _MLP().eval()
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    t = torch.arange(16) % 3
    got = prunegrad(model, x, t, keep)
    want = torch.stack([_reference(model, x[i], int(t[i]), keep) for i in range(16)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    counts = [m.sum(1) for m in unit_masks(model, x, t, keep)]
    assert counts[0].eq(math.ceil(keep * 10)).all() and counts[1].eq(math.ceil(keep * 8)).all()


def test_the_model_is_left_as_it_was(digits):
    model, x, y = digits
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    qr.explain(model, x[:30], y[:30], method="PruneGrad_SmoothGrad", n_samples=3)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert hooks == [(len(m._forward_hooks), len(m._forward_pre_hooks))
                     for m in model.modules()]
    assert all((g is None and p.grad is None) or torch.equal(g, p.grad)
               for g, p in zip(grads, model.parameters(), strict=True))
    model.eval()


def test_prunegrad_is_an_estimator_with_every_noise_ensemble():
    for name in ("PruneGrad", "PruneGrad_SmoothGrad", "PruneGrad_SmoothGradSquared",
                 "PruneGrad_VarGrad"):
        assert ESTIMATORS[name]["method"] == "PruneGrad"


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(4, 5), nn.Linear(5, 2), nn.ReLU()

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)) + self.act(self.fc1(x)))


def test_bad_keep_and_models_fail_with_a_clear_error():
    model = _MLP()
    x, t = torch.randn(4, 6), np.array([0, 1, 2, 0])
    for bad in (0.0, 1.5, float("nan"), -0.1):
        with pytest.raises(ValueError, match="'keep' parameter"):
            qr.explain(model, x, t, method="PruneGrad", keep=bad)
    with pytest.raises(TypeError, match="'keep' parameter"):
        qr.explain(model, x, t, method="PruneGrad", keep="half")
    with pytest.raises(TypeError, match="takes 'keep'"):
        qr.explain(model, x, t, method="PruneGrad", n_step=3)
    # one kwargs dict serves every estimator of a benchmark: others ignore 'keep'
    assert np.array_equal(qr.explain(model, x, t, method="Gradient", keep=0.3),
                          qr.explain(model, x, t, method="Gradient"))
    with pytest.raises(qr.FunctionalReLUError, match="applies 1 activation"):
        qr.explain(_Functional(), torch.randn(3, 4), [0, 1, 0], method="PruneGrad")
    linear = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(qr.FunctionalReLUError, match="has none"):
        qr.explain(linear, torch.randn(3, 4), [0, 1, 0], method="PruneGrad")
    gelu = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), _Apply(torch.sigmoid), nn.Linear(5, 2))
    with pytest.raises(qr.FunctionalReLUError, match="1 activation"):
        qr.explain(gelu, torch.randn(3, 4), [0, 1, 0], method="PruneGrad")
    # the controls ignore 'keep' too; the core function checks it itself
    assert qr.explain(model, x, t, method="Random", keep=0.3).shape == (4, 6)
    for bad in (float("nan"), 2.0, 0.0):
        with pytest.raises(ValueError, match="'keep' parameter of PruneGrad"):
            prunegrad(model, x, torch.as_tensor(t), bad)


class _Apply(nn.Module):
    """Calls a function that is not an activation module (here torch.sigmoid)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class _InPlaceSkip(nn.Module):
    def __init__(self, in_place: bool):
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        self.fc1, self.fc2, self.act = nn.Linear(6, 6), nn.Linear(6, 3), nn.ReLU()
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=gen)
        self.in_place = in_place

    def forward(self, x):
        h = self.act(self.fc1(x))
        if self.in_place:
            h += x  # changes the activation's output after it was computed
        else:
            h = h + x
        return self.fc2(h)


def test_an_in_place_change_after_an_activation_does_not_change_the_masks():
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(2))
    t = torch.arange(12) % 3
    a = prunegrad(_InPlaceSkip(True).eval(), x, t, 0.5)
    b = prunegrad(_InPlaceSkip(False).eval(), x, t, 0.5)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def _evidence_share(maps: np.ndarray, evidence: np.ndarray, k: int) -> np.ndarray:
    """Per sample, the share of its k highest-|attribution| pixels on the evidence."""
    flat = np.abs(maps).sum(1).reshape(len(maps), -1)
    top = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(evidence.reshape(len(maps), -1), top, axis=1).mean(1)


def test_planted_evidence_prunegrad_against_gradient():
    x, y, evidence = qr.make_synthetic(n_samples=1200, n_classes=4, image_size=8, seed=0)
    x_tr, y_tr, x_te, y_te = x[:1000], y[:1000], x[1000:], y[1000:]
    model = qr.TorchRetrainer(qr.SmallCNN(in_channels=1, n_classes=4, image_size=8),
                              epochs=8).fit(x_tr, y_tr, seed=0)
    ev = evidence[1000:]
    k = int(ev[0].sum())  # as many pixels as carry evidence
    shares = {m: _evidence_share(qr.explain(model, x_te, y_te, method=m), ev, k)
              for m in ("Gradient", "PruneGrad")}
    diff = shares["PruneGrad"] - shares["Gradient"]
    rng = np.random.default_rng(0)
    boot = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(1000)])
    lo, hi = np.quantile(boot, [0.025, 0.975])
    print(f"\ntop-{k} pixels on the evidence: Gradient {shares['Gradient'].mean():.3f}, "
          f"PruneGrad {shares['PruneGrad'].mean():.3f}, difference {diff.mean():+.3f} "
          f"[{lo:+.3f}, {hi:+.3f}]")
    assert shares["Gradient"].mean() > ev.mean() + 0.2  # the model found the evidence
    assert hi >= 0  # PruneGrad is not worse than Gradient beyond the interval
