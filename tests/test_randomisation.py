"""Tests of the model and data randomisation sanity checks."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import quantus
import torch
from scipy import stats
from skimage.feature import hog as sk_hog
from skimage.metrics import structural_similarity
from torch import nn

import quantus_roar as qr
from quantus_roar.randomisation import execution_order, fresh_model, randomised_models
from quantus_roar.sanity import SanitySeeds
from quantus_roar.similarity import average_ranks, hog, spearman, spearman_abs, ssim

GRADIENT = {"explain_func": qr.explain, "explain_func_kwargs": {"method": "Gradient"}}


@pytest.fixture(scope="module")
def trained():
    x_train, y_train, x_test, y_test = qr.load_digits_data(seed=0)
    retrainer = qr.TorchRetrainer(qr.SmallCNN())
    model = retrainer.fit(x_train, y_train, seed=0)
    return model, retrainer, x_train, y_train, x_test[:150], y_test[:150]


class Scrambled(nn.Module):
    """Modules defined in a different order than the forward pass runs them."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8 * 16, 10)
        self.relu = nn.ReLU()
        self.second = nn.Conv2d(4, 8, 3, padding=1)
        self.first = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.head(self.relu(self.second(self.pool(self.relu(self.first(x))))).flatten(1))


class NoReset(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1) * self.scale)


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- similarities


def test_similarities_agree_with_scipy_and_skimage():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 1, 8, 8, generator=g)
    b = a + 0.7 * torch.randn(6, 1, 8, 8, generator=g)
    a_ties = a.round()  # many ties: averaged ranks
    ref = [stats.spearmanr(x.flatten(), y.flatten())[0] for x, y in zip(a_ties, b, strict=True)]
    np.testing.assert_allclose(spearman(a_ties, b).numpy(), ref, rtol=1e-12)
    ref_abs = [stats.spearmanr(x.abs().flatten(), y.abs().flatten())[0]
               for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(spearman_abs(a, b).numpy(), ref_abs, rtol=1e-12)
    np.testing.assert_array_equal(average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0]])).numpy(),
                                  [[2.5, 0.0, 2.5, 1.0]])
    rgb_a, rgb_b = torch.randn(3, 3, 12, 10, generator=g), torch.randn(3, 3, 12, 10, generator=g)
    for x, y in ((a, b), (rgb_a, rgb_b)):
        expected = []
        for p, q in zip(x.double().sum(1).numpy(), y.double().sum(1).numpy(), strict=True):
            rng = max(p.max(), q.max()) - min(p.min(), q.min())
            expected.append(structural_similarity(p, q, data_range=rng))
        np.testing.assert_allclose(ssim(x, y).numpy(), expected, rtol=1e-9, atol=1e-12)

    def feats(m):
        m = (m - m.min()) / (m.max() - m.min())
        return sk_hog(m, orientations=9, pixels_per_cell=(2, 2), cells_per_block=(2, 2))

    expected = [np.corrcoef(feats(p), feats(q))[0, 1]
                for p, q in zip(a[:, 0].double().numpy(), b[:, 0].double().numpy(), strict=True)]
    np.testing.assert_allclose(hog(a, b).numpy(), expected, rtol=1e-9)
    assert spearman(a, a).numpy() == pytest.approx(1.0)


# --------------------------------------------------------------------------- layers


def test_layers_follow_execution_not_definition_order():
    model = Scrambled()
    names = [n for n, _ in execution_order(model, torch.rand(1, 1, 8, 8))]
    assert names == ["first", "second", "head"]
    assert [n for n, m in model.named_modules() if list(m.parameters(recurse=False))] == [
        "head", "second", "first"]
    original = _params(model)
    steps = [(name, _params(m)) for name, m in randomised_models(model, names, "top_down", 0)]
    assert [s[0] for s in steps] == ["head", "second", "first"]
    changed = [sorted({k.split(".")[0] for k in original if not torch.equal(original[k], p[k])})
               for _, p in steps]
    assert changed == [["head"], ["head", "second"], ["first", "head", "second"]]
    indep = [(name, _params(m)) for name, m in randomised_models(model, names, "independent", 0)]
    changed = [sorted({k.split(".")[0] for k in original if not torch.equal(original[k], p[k])})
               for _, p in indep]
    assert changed == [["first"], ["second"], ["head"]]
    bottom = [n for n, _ in randomised_models(model, names, "bottom_up", 0)]
    assert bottom == ["first", "second", "head"]
    assert _same(original, _params(model))
    # a layer's random weights depend on the seed only, not on the order
    head_td = steps[0][1]["head.weight"]
    head_bu = [p for n, p in [(n, _params(m)) for n, m in
                               randomised_models(model, names, "bottom_up", 0)]][-1]["head.weight"]
    assert torch.equal(head_td, head_bu)
    fresh = _params(fresh_model(model, names, 1))
    assert not torch.equal(fresh["head.weight"], head_td)


def test_metric_on_scrambled_model_reports_execution_order():
    model = Scrambled()
    x = torch.rand(20, 1, 8, 8).numpy()
    y = np.arange(20) % 10
    metric = qr.ModelRandomisation(similarity=("spearman", "ssim"), disable_warnings=True)
    before = _params(model)
    out = metric(model, x, y, **GRADIENT)
    assert list(out) == ["spearman", "ssim"]
    assert list(out["spearman"]) == ["head", "second", "first", "floor"]
    assert metric.layers == ["first", "second", "head"]
    assert metric.scores["ssim"]["second"].shape == (20,)
    assert len(metric.results) == 2 * 4 * 20
    assert _same(before, _params(model))


def test_not_resettable_and_missing_explain_func():
    x = torch.rand(4, 1, 8, 8).numpy()
    y = np.arange(4)
    with pytest.raises(qr.NotResettableError,
                       match=r"Module 'NoReset' \(NoReset\) has parameters"):
        qr.ModelRandomisation(similarity="spearman")(NoReset(), x, y, **GRADIENT)
    with pytest.raises(ValueError, match="needs an 'explain_func'"):
        qr.ModelRandomisation(similarity="spearman")(qr.SmallCNN(), x, y)
    with pytest.raises(ValueError, match="'similarity' parameter"):
        qr.ModelRandomisation(similarity="pearson")
    with pytest.raises(ValueError, match="'layer_order' parameter"):
        qr.ModelRandomisation(layer_order="random")


# --------------------------------------------------------------------------- known answers


def test_matches_quantus_mprt_per_layer(trained):
    model, _, _, _, x, y = trained
    a = qr.explain(model, x, y, method="Gradient")
    mprt = quantus.MPRT(seed=SanitySeeds.derive(42).layers - 1, abs=False, normalise=False,
                        disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = mprt(model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu", **GRADIENT)
    # Quantus explains the labels y; so does target="label".
    metric = qr.ModelRandomisation(similarity="spearman", seed=42, target="label")
    ours = metric(model, x, y, a, **GRADIENT)
    layers = [k for k in theirs if k != "original"]
    assert layers == [k for k in ours if k != "floor"] == ["6", "3", "0"]
    for layer in layers:
        np.testing.assert_allclose(metric.scores["spearman"][layer], theirs[layer], atol=1e-12)
    # Quantus' average includes the trivial 1.0 of the original model; ours does not.
    assert np.mean(theirs["original"]) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_guided_backprop_survives_randomisation_gradient_does_not(trained, seed):
    model, _, _, _, x, y = trained
    before = _params(model)
    res = {}
    for method in ("Gradient", "GuidedBackprop"):
        metric = qr.ModelRandomisation(similarity="spearman_abs", seed=seed)
        res[method] = metric(model, x, y, explain_func=qr.explain,
                             explain_func_kwargs={"method": method})
    last = "0"  # the first layer: the last step of the cascade, all layers random
    assert res["GuidedBackprop"][last] > res["Gradient"][last] + 0.25
    assert abs(res["Gradient"][last] - res["Gradient"]["floor"]) < 0.1
    assert _same(before, _params(model)) and not model.training


def test_ceiling_with_retrainer_and_aggregate(trained):
    model, retrainer, x_train, y_train, x, y = trained
    metric = qr.ModelRandomisation(similarity="spearman", retrainer=retrainer,
                                   return_aggregate=True)
    agg = metric(model, x, y, x_train=x_train, y_train=y_train, **GRADIENT)
    per_layer = {k: float(np.mean(v)) for k, v in metric.scores["spearman"].items()}
    assert agg == pytest.approx(np.mean(list(per_layer.values())))
    assert per_layer["ceiling"] > per_layer["0"] + 0.3


def test_global_rng_untouched(trained):
    model, _, _, _, x, y = trained
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    qr.ModelRandomisation(similarity="spearman")(model, x[:10], y[:10], **GRADIENT)
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- data randomisation


class OneShot:
    """A user retrainer without fit_until: one short training."""

    def __init__(self):
        self.inner = qr.TorchRetrainer(qr.SmallCNN(), epochs=1)

    def fit(self, x, y, *, seed):
        return self.inner.fit(x, y, seed=seed)

    def score(self, model, x, y):
        return self.inner.score(model, x, y)


def test_data_randomisation_fits_random_labels(trained):
    model, _, x_train, y_train, x_test, y_test = trained
    x_small, y_small = x_train[:300], y_train[:300]
    retrainer = qr.TorchRetrainer(qr.SmallCNN(width=32), epochs=15, lr=3e-3)
    metric = qr.DataRandomisation(retrainer=retrainer, min_train_accuracy=0.9, max_epochs=120,
                                  similarity=("spearman_abs", "spearman"), seed=0)
    before = _params(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", qr.QuantusRoarWarning)
        out = metric(model, x_small, y_small, x_test=x_test, y_test=y_test, **GRADIENT)
    assert metric.train_accuracy >= 0.9
    assert metric.test_accuracy < 0.3  # chance is 0.1
    res = out["spearman_abs"]
    assert list(res) == ["random_labels", "floor", "ceiling"]
    assert abs(res["random_labels"] - res["floor"]) < 0.15
    assert res["ceiling"] > res["random_labels"] + 0.1
    assert _same(before, _params(model))
    assert metric.results["random_label_train_accuracy"].iloc[0] == metric.train_accuracy


def test_data_randomisation_warns_when_labels_not_fitted(trained):
    model, _, x_train, y_train, _, _ = trained
    metric = qr.DataRandomisation(retrainer=OneShot(), similarity="spearman")
    with pytest.warns(qr.QuantusRoarWarning, match=r"reached 0\.\d+ training accuracy"):
        out = metric(model, x_train[:200], y_train[:200], **GRADIENT)
    assert set(out) == {"random_labels", "floor", "ceiling"}
    assert metric.train_accuracy < 0.95


def test_fit_until_trains_longer_until_fitted():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    r = qr.TorchRetrainer(qr.SmallCNN(width=32), epochs=2, lr=3e-3)
    _, acc_short = r.fit_until(x, y, seed=0, min_accuracy=0.0, max_epochs=50)
    m_long, acc_long = r.fit_until(x, y, seed=0, min_accuracy=0.99, max_epochs=64)
    assert acc_short == r.score(r.fit(x, y, seed=0), x, y)  # 2 epochs were enough
    assert acc_long >= 0.99 > acc_short
    assert r.score(m_long, x, y) == acc_long and not m_long.training
    # max_epochs caps the search: no longer training than allowed
    _, acc_capped = r.fit_until(x, y, seed=0, min_accuracy=0.99, max_epochs=2)
    assert acc_capped == acc_short
    longer = copy.copy(r)
    longer.epochs = 64
    assert longer.score(longer.fit(x, y, seed=0), x, y) >= 0.99


def test_runner_and_metrics_give_the_same_sanity_numbers(tmp_path):
    """One core: the runner's first repeat is the metrics' call with the same seed, the
    same samples and explain function, to float precision (Gradient, digits)."""
    from quantus_roar.benchmark import RunConfig, run
    from quantus_roar.benchmark.store import ResultStore
    from quantus_roar.sanity import derived_seed

    cfg = RunConfig(estimators=("Gradient",), metrics=("model-randomisation",),
                    percentages=(50,), sanity_samples=30, similarities=("spearman",),
                    device="cpu")
    run(cfg, tmp_path, progress=False, report=False)
    with ResultStore.open_existing(tmp_path) as store:
        df = store.frame()
    stored = {r.param: r.value for r in df.itertuples() if r.quantity == "spearman"}

    x_tr, y_tr, x_te, y_te = qr.load_digits_data(seed=0)
    retrainer = qr.TorchRetrainer(qr.SmallCNN())
    model = retrainer.fit(x_tr, y_tr, seed=derived_seed(0, 1))
    rng = np.random.default_rng(derived_seed(0, 7))  # the runner's sanity samples
    idx = np.sort(rng.choice(len(y_te), size=30, replace=False))
    metric = qr.ModelRandomisation(similarity="spearman", retrainer=retrainer, seed=0)
    means = metric(model, x_te[idx], y_te[idx], x_train=x_tr, y_train=y_tr,
                   explain_func=qr.explain, explain_func_kwargs={"method": "Gradient"},
                   batch_size=256)
    assert list(means) == [*reversed(metric.layers), "floor", "ceiling"]  # top down
    assert set(stored) == set(means)
    for step, value in means.items():
        assert stored[step] == pytest.approx(value, abs=1e-6), step
    # The steps differ, so the agreement is not one of two constants.
    assert len({round(v, 3) for v in means.values()}) >= len(means) - 1


def test_the_two_checks_share_floor_ceiling_and_original_explanations(tmp_path, monkeypatch):
    """Run together, data randomisation reuses model randomisation's floor and ceiling
    comparisons and original explanations (the same models, so the same numbers): the
    cells equal those of each check run alone, bit for bit, with 3 fewer explanations
    per estimator and repeat."""
    import pandas as pd

    from quantus_roar.benchmark import RunConfig, run
    from quantus_roar.benchmark.context import RunContext
    from quantus_roar.benchmark.store import ResultStore

    calls = []
    explained = RunContext.sanity_attributions

    def counted(self, model, estimator):
        calls.append(estimator)
        return explained(self, model, estimator)

    monkeypatch.setattr(RunContext, "sanity_attributions", counted)
    common = dict(estimators=("Gradient", "GuidedBackprop"), percentages=(50,),
                  sanity_samples=20, sanity_seeds=2, similarities=("spearman", "ssim"),
                  device="cpu", max_epochs=4, min_train_accuracy=0.1)

    def cells(out, metrics):
        run(RunConfig(metrics=metrics, **common), out, progress=False, report=False)
        with ResultStore.open_existing(out) as store:
            df = store.frame().drop(columns=["wall_s", "fingerprint"])
        return df.sort_values(["metric", "estimator", "param", "seed", "quantity"]
                              ).reset_index(drop=True)

    both = cells(tmp_path / "both", ("model-randomisation", "data-randomisation"))
    n_both, calls[:] = len(calls), []
    alone = pd.concat([cells(tmp_path / "model", ("model-randomisation",)),
                       cells(tmp_path / "data", ("data-randomisation",))])
    n_alone = len(calls)
    alone = alone.sort_values(["metric", "estimator", "param", "seed", "quantity"]
                              ).reset_index(drop=True)
    pd.testing.assert_frame_equal(both, alone)
    assert set(both.param[both.metric == "data-randomisation"]) >= {"floor", "ceiling",
                                                                    "random_labels"}
    layers = 3  # SmallCNN's convolutions and classifier
    per_repeat_alone = (1 + layers + 2) + (1 + 3)  # original + steps, for each check
    assert n_alone == 2 * 2 * per_repeat_alone - 2 * 2  # the original: once per check
    assert n_both == n_alone - 2 * (2 * 2 + 1)  # floor, ceiling per repeat; the original


@pytest.mark.parametrize("mode", ["shared", "no room", "an ensemble fails"])
def test_the_runner_computes_a_methods_noise_ensembles_together(tmp_path, monkeypatch, mode):
    """SmoothGrad and VarGrad of one method average the same noisy maps: the runner
    computes them once for both, attributions and sanity steps alike, and every cell
    equals the one of a run of each estimator alone. With no room to hold maps, or
    when the joint call fails, each is computed alone, with the same cells."""
    import pandas as pd

    from quantus_roar.benchmark import RunConfig, run, specs
    from quantus_roar.benchmark.store import ResultStore

    calls, alone_calls = [], []
    together, one = specs.explain_ensembles, specs.explain

    def counted(*args, **kwargs):
        calls.append(kwargs["noises"])
        if mode == "an ensemble fails":
            raise ValueError("explain(method='Gradient') produced 1 NaN or inf value(s)")
        return together(*args, **kwargs)

    def counted_alone(*args, **kwargs):
        alone_calls.append(kwargs["noise"])
        return one(*args, **kwargs)

    monkeypatch.setattr(specs, "explain_ensembles", counted)
    monkeypatch.setattr(specs, "explain", counted_alone)
    if mode == "no room":
        monkeypatch.setattr(specs, "SHARED_MAPS_BYTES", 0)
    common = dict(percentages=(50,), sanity_samples=12, similarities=("spearman",),
                  metrics=("roar-noretrain", "model-randomisation"), device="cpu")

    def cells(out, estimators):
        run(RunConfig(estimators=estimators, **common), out, progress=False, report=False)
        with ResultStore.open_existing(out) as store:
            df = store.frame().drop(columns=["wall_s", "fingerprint"])
        return df[df.estimator != "-"]

    pair = ("Gradient_SmoothGrad", "Gradient_VarGrad")
    both = cells(tmp_path / "both", pair)
    n_both, n_alone = len(calls), len(alone_calls)
    assert all(noises == ("SmoothGrad", "VarGrad") for noises in calls)
    alone = pd.concat([cells(tmp_path / e, (e,)) for e in pair])
    assert len(calls) == n_both  # one estimator of a method: explain as before
    key = ["metric", "estimator", "param", "seed", "quantity"]
    pd.testing.assert_frame_equal(both.sort_values(key).reset_index(drop=True),
                                  alone.sort_values(key).reset_index(drop=True))
    # test attributions, the original, 3 layers, floor and ceiling; each once for the pair
    maps_needed = 1 + 1 + 3 + 2
    assert n_both == maps_needed  # asked by the first of the pair
    expected_alone = {"shared": [], "no room": ["VarGrad"] * maps_needed,
                      "an ensemble fails": ["SmoothGrad", "VarGrad"] * maps_needed}[mode]
    assert sorted(alone_calls[:n_alone]) == sorted(expected_alone)
