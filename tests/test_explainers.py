"""Tests of the estimators and controls in quantus_roar.explainers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import quantus
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

import quantus_roar as qr
from quantus_roar.explainers import ESTIMATORS, explain, noisy_inputs


@pytest.fixture(scope="module")
def digits():
    x_train, y_train, x_test, y_test = qr.load_digits_data(seed=0)
    model = qr.TorchRetrainer(qr.SmallCNN(), epochs=4).fit(x_train, y_train, seed=0)
    return model, x_test[:40], y_test[:40]


class FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).flatten(1))


class MixedNet(FunctionalNet):
    """One ReLU as a module and one as a function."""

    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()

    def forward(self, x):
        return self.fc(torch.relu(self.act(self.conv(x))).flatten(1))


def test_smoothgrad_with_zero_noise_equals_base_method(digits):
    model, x, y = digits
    for base in ("Gradient", "GuidedBackprop", "IntegratedGradients", "InputXGradient"):
        plain = explain(model, x, y, method=base)
        smooth = explain(model, x, y, method=base, noise="SmoothGrad", stdev=0.0, n_samples=4)
        np.testing.assert_allclose(smooth, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("base", ["Gradient", "GuidedBackprop"])
def test_noise_ensembles_against_direct_computation(digits, base):
    model, x, y = digits
    n, stdev, seed = 6, 0.2, 3
    copies = noisy_inputs(torch.from_numpy(x), n, stdev, seed).numpy()
    maps = np.stack([explain(model, copies[k], y, method=base) for k in range(n)])
    kw = dict(n_samples=n, stdev=stdev, seed=seed)
    sg = explain(model, x, y, method=base, noise="SmoothGrad", **kw)
    sg2 = explain(model, x, y, method=base, noise="SmoothGradSquared", **kw)
    vg = explain(model, x, y, method=base, noise="VarGrad", **kw)
    np.testing.assert_allclose(sg, maps.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sg2, (maps**2).mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(vg, maps.var(0), rtol=1e-3, atol=1e-5)
    assert not np.allclose(sg, explain(model, x, y, method=base))
    # The estimator names are shorthands for the same calls.
    np.testing.assert_array_equal(vg, explain(model, x, y, method=f"{base}_VarGrad", **kw))


def test_noise_scale_is_a_fraction_of_each_inputs_range():
    x = torch.zeros(2, 1, 40, 40)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 1.0, 10.0
    copies = noisy_inputs(x, 50, 0.1, seed=0)
    noise = copies - x[None]
    assert noise[:, 0].std().item() == pytest.approx(0.1, rel=0.05)
    assert noise[:, 1].std().item() == pytest.approx(1.0, rel=0.05)
    assert torch.equal(copies, noisy_inputs(x, 50, 0.1, seed=0))
    assert not torch.equal(copies, noisy_inputs(x, 50, 0.1, seed=1))


def test_random_control_is_fixed_per_image_and_seed(digits):
    model, x, y = digits
    a = explain(model, x, y, method="Random", seed=1)
    np.testing.assert_array_equal(a, explain(model, x, y, method="Random", seed=1))
    # fixed per image: the same map whatever batch the image comes in
    np.testing.assert_array_equal(a[7:9], explain(model, x[7:9], y[7:9], method="Random", seed=1))
    assert not np.array_equal(a, explain(model, x, y, method="Random", seed=2))
    flat = a.reshape(len(a), -1)
    assert all(len(np.unique(row)) == row.size for row in flat)  # a strict ranking
    assert not np.array_equal(np.argsort(flat[0]), np.argsort(flat[1]))
    assert 0.0 < a.min() and a.max() < 1.0 and abs(a.mean() - 0.5) < 0.02


def test_sobel_agrees_with_scipy_on_both_axes():
    rng = np.random.default_rng(0)
    x = rng.random((3, 3, 9, 11)).astype(np.float32)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 99, 2))
    a = explain(model, x, np.zeros(3, dtype=int), method="Sobel")
    ref = np.empty(x.shape)
    for i in range(3):
        for c in range(3):  # scipy smooths along every other axis: one plane at a time
            plane = x[i, c].astype(np.float64)
            ref[i, c] = np.hypot(ndimage.sobel(plane, axis=1), ndimage.sobel(plane, axis=0))
    np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-5)
    reduced = explain(model, x, np.zeros(3, dtype=int), method="Sobel", reduce_channels=True)
    assert reduced.shape == (3, 1, 9, 11)
    np.testing.assert_allclose(reduced[:, 0], ref.sum(1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"Sobel.*\(N, C, H, W\)"):
        explain(nn.Linear(5, 2), rng.random((4, 5)), np.zeros(4, dtype=int), method="Sobel")


def test_guided_backprop_differs_from_gradient_and_needs_relu_modules(digits):
    model, x, y = digits
    gbp = explain(model, x, y, method="GuidedBackprop")
    grad = explain(model, x, y, method="Gradient")
    assert gbp.shape == grad.shape and not np.allclose(gbp, grad, atol=1e-4)
    for net in (FunctionalNet(), MixedNet()):
        with pytest.raises(qr.FunctionalReLUError, match=r"nn\.ReLU module"):
            explain(net, x, y, method="GuidedBackprop")
        explain(net, x, y, method="Gradient")  # other methods still work


def test_gradient_integrated_gradients_and_input_x_gradient_values(digits):
    model, x, y = digits
    xt = torch.from_numpy(x).requires_grad_(True)
    out = model(xt)[torch.arange(len(x)), torch.from_numpy(y)].sum()
    (grad,) = torch.autograd.grad(out, xt)
    np.testing.assert_allclose(explain(model, x, y, method="Gradient"), grad.numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(explain(model, x, y, method="InputXGradient"),
                               (grad * xt).detach().numpy(), rtol=1e-5, atol=1e-6)
    # Completeness: IG sums to f(x) - f(black baseline) for each input.
    ig = explain(model, x, y, method="IntegratedGradients", n_steps=64)
    with torch.no_grad():
        idx = torch.arange(len(x)), torch.from_numpy(y)
        gap = (model(torch.from_numpy(x))[idx] - model(torch.zeros_like(xt))[idx]).numpy()
    np.testing.assert_allclose(ig.reshape(len(x), -1).sum(1), gap, rtol=0.02, atol=0.02)


def test_output_format_device_and_model_untouched(digits):
    model, x, _ = digits
    before = [p.clone() for p in model.parameters()]
    model.train()
    a = explain(model, torch.from_numpy(x), 3, method="Gradient_SmoothGrad", n_samples=2,
                device="cpu", reduce_channels=True)
    assert model.training
    model.eval()
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (40, 1, 8, 8)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))


def test_errors(digits):
    model, x, y = digits
    with pytest.raises(ValueError, match="'method' parameter of explain"):
        explain(model, x, y, method="LRP")
    with pytest.raises(ValueError, match="'noise' parameter of explain"):
        explain(model, x, y, noise="SmoothGrad3")
    with pytest.raises(ValueError, match="is a control"):
        explain(model, x, y, method="Random", noise="VarGrad")
    with pytest.raises(ValueError, match="already implies"):
        explain(model, x, y, method="Gradient_VarGrad", noise="SmoothGrad")
    with pytest.raises(ValueError, match=r"one class label per sample of inputs, shape \(40,\)"):
        explain(model, x, y[:3])
    with pytest.raises(ValueError, match="n_samples"):
        explain(model, x, y, noise="SmoothGrad", n_samples=0)
    with pytest.raises(TypeError, match=r"\['n_step'\].*IntegratedGradients\.attribute"):
        explain(model, x, y, method="IntegratedGradients", n_step=8)
    # IG-only options are ignored by the other methods
    np.testing.assert_array_equal(explain(model, x, y, n_steps=8), explain(model, x, y))


def test_estimators_cover_the_paper_grid():
    bases = ("Gradient", "IntegratedGradients", "GuidedBackprop", "PruneGrad")
    for base in bases:
        assert ESTIMATORS[base] == {"method": base, "noise": None}
        for noise in ("SmoothGrad", "SmoothGradSquared", "VarGrad"):
            assert ESTIMATORS[f"{base}_{noise}"] == {"method": base, "noise": noise}
    controls = {"Random", "Sobel", "InputMagnitude", "BlurredRandom"}
    assert controls <= set(ESTIMATORS) and len(ESTIMATORS) == 16 + len(controls)


def test_every_estimator_runs_through_quantus_evaluate(digits):
    model, x, y = digits
    metrics = {
        "ROARNoRetrain": qr.ROARNoRetrain((50,), disable_warnings=True),
        "Sparseness": quantus.Sparseness(disable_warnings=True),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = quantus.evaluate(
            metrics=metrics, xai_methods=dict.fromkeys(ESTIMATORS, explain), model=model,
            x_batch=x, y_batch=y, explain_func_kwargs={"n_samples": 3, "n_steps": 8},
        )
    assert set(results) == set(ESTIMATORS)
    for name, res in results.items():
        assert set(res["ROARNoRetrain"]) == {0, 50}, name
        assert len(res["Sparseness"]) == len(x), name
    # the unmodified accuracy does not depend on the estimator
    assert len({res["ROARNoRetrain"][0] for res in results.values()}) == 1


@pytest.mark.parametrize("base", ["Gradient", "IntegratedGradients", "GuidedBackprop",
                                  "PruneGrad"])
def test_noise_ensembles_together_equal_each_alone_bit_for_bit(base):
    from quantus_roar.explainers import explain_ensembles

    model = qr.SmallCNN().eval()
    x = torch.rand(37, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.arange(37) % 10
    maps = explain_ensembles(model, x, t, method=base, n_samples=6, batch_size=16, seed=3)
    assert list(maps) == ["SmoothGrad", "SmoothGradSquared", "VarGrad"]
    for noise, a in maps.items():
        alone = explain(model, x, t, method=base, noise=noise, n_samples=6, batch_size=16,
                        seed=3)
        assert a.dtype == alone.dtype == np.float32 and np.array_equal(a, alone), noise
    assert not np.array_equal(maps["SmoothGrad"], maps["VarGrad"])
    two = explain_ensembles(model, x, t, method=base, noises=("VarGrad", "SmoothGrad"),
                            n_samples=6, batch_size=16, seed=3, reduce_channels=True)
    assert list(two) == ["VarGrad", "SmoothGrad"]
    assert np.array_equal(two["VarGrad"], maps["VarGrad"].sum(1, keepdims=True))


@pytest.mark.parametrize("kwargs, match", [
    ({"noises": ()}, "non-empty sequence"),
    ({"noises": "VarGrad"}, "non-empty sequence"),
    ({"noises": ("VarGrad", "VarGrad")}, "twice"),
    ({"noises": ("Blur",)}, "noises"),
    ({"method": "Random"}, "control"),
    ({"method": "Gradient_VarGrad"}, "base method"),
    ({"n_samples": 0}, "n_samples"),
])
def test_noise_ensembles_refuse_bad_arguments(kwargs, match):
    from quantus_roar.explainers import explain_ensembles

    with pytest.raises(ValueError, match=match):
        explain_ensembles(qr.SmallCNN(), torch.rand(2, 1, 8, 8), [0, 1], **kwargs)
