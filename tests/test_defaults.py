"""Correct by default: whose explanation, where KAR's unmodified point lies, how values
rank, fraction-like percentages, the device, layouts of the sanity checks, method names."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
import quantus
import torch
from torch import nn

import quantus_roar as qr
from quantus_roar.benchmark import RunConfig, run
from quantus_roar.benchmark.datasets import load_dataset
from quantus_roar.benchmark.store import ResultStore
from quantus_roar.curves import normalised_auc
from quantus_roar.explainers import explanation_targets, predicted_classes
from quantus_roar.removal import removal_counts, removal_masks

N, F = 40, 6


def _sign_model() -> nn.Module:
    """Predicts class 1 exactly where feature 0 is positive."""
    lin = nn.Linear(F, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[1, 0] = 1.0
    return lin


@pytest.fixture()
def tabular():
    """Inputs, labels and the model's predictions, which differ from the labels on the
    first 8 samples."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, F)).astype(np.float32)
    x[:, 0] = np.where(np.arange(N) % 2 == 0, 1.0, -1.0) * (0.5 + rng.random(N))
    predicted = (x[:, 0] > 0).astype(np.int64)
    y = predicted.copy()
    y[:8] = 1 - y[:8]
    return _sign_model(), x, y, predicted


class ExplainRecorder:
    """A Quantus explain function that records its targets and keyword arguments."""

    def __init__(self):
        self.calls: list[tuple[np.ndarray, np.ndarray, dict]] = []

    def __call__(self, model, inputs, targets, **kwargs):
        self.calls.append((np.asarray(inputs), np.asarray(targets), kwargs))
        rng = np.random.default_rng(len(self.calls))
        return rng.random(np.shape(inputs)).astype(np.float32) + 0.01

    def targets(self) -> dict[bytes, set[int]]:
        """Every explained input (by its bytes) and the classes it was explained for."""
        found: dict[bytes, set[int]] = {}
        for inputs, targets, _ in self.calls:
            for row, t in zip(inputs, targets, strict=True):
                found.setdefault(row.tobytes(), set()).add(int(t))
        return found


class ScoreMean:
    """A retrainer without training: the 'accuracy' is the sigmoid of the mean test input
    (a number in (0, 1) that follows what was removed)."""

    def fit(self, x, y, *, seed):
        return nn.Identity()

    def score(self, model, x, y):
        return float(torch.sigmoid(torch.as_tensor(x).float().mean()))


class CopyRetrainer:
    """A retrainer that returns a copy of a fixed model (for the sanity checks)."""

    def __init__(self, model):
        self.model = model

    def fit(self, x, y, *, seed):
        import copy

        return copy.deepcopy(self.model)

    def score(self, model, x, y):
        return 0.5


# --------------------------------------------------------------------------- 1. targets


def test_predictions_differ_from_labels_on_the_known_subset(tabular):
    model, x, y, predicted = tabular
    assert predicted_classes(model, x).tolist() == predicted.tolist()
    assert (predicted != y).nonzero()[0].tolist() == list(range(8))
    assert explanation_targets(model, x, y, "label").tolist() == y.tolist()
    with pytest.raises(ValueError, match=r"'target' parameter of explanation_targets must be "
                                         r"one of \['predicted', 'label'\]"):
        explanation_targets(model, x, y, "true")


@pytest.mark.parametrize("target", ["predicted", "label"])
@pytest.mark.parametrize("name", ["ROAR", "KAR", "ROARNoRetrain", "KARNoRetrain",
                                  "ModelRandomisation", "DataRandomisation"])
def test_metrics_explain_the_predicted_class_by_default(tabular, name, target):
    model, x, y, predicted = tabular
    rec = ExplainRecorder()
    kwargs = {} if target == "predicted" else {"target": target}
    if name in ("ROAR", "KAR"):
        metric = getattr(qr, name)(percentages=(50,), n_retrains=1, retrainer=ScoreMean(),
                                   disable_warnings=True, **kwargs)
    elif name == "DataRandomisation":
        metric = qr.DataRandomisation(retrainer=CopyRetrainer(model), disable_warnings=True,
                                      min_train_accuracy=0.01, **kwargs)
    elif name == "ModelRandomisation":
        metric = qr.ModelRandomisation(disable_warnings=True, **kwargs)
    else:
        metric = getattr(qr, name)(percentages=(50,), disable_warnings=True, **kwargs)
    test = {"x_test": x, "y_test": y} if name == "DataRandomisation" else {}
    metric(model, x, y, explain_func=rec, explain_func_kwargs={}, **test)
    expected = predicted if target == "predicted" else y
    found = rec.targets()
    # Every sample is explained; every model of a sanity check explains the same class,
    # the original model's prediction (or the label), never each model's own prediction.
    assert len(found) == N
    assert [found[x[i].tobytes()] for i in range(N)] == [{int(c)} for c in expected]


def test_target_is_validated_at_construction():
    for cls in (qr.ROAR, qr.KARNoRetrain, qr.ModelRandomisation):
        with pytest.raises(ValueError, match=rf"'target' parameter of {cls.__name__} must be "
                                             r"one of \['predicted', 'label'\]\. Got 'labels'"):
            cls(target="labels", disable_warnings=True)
    with pytest.raises(ValueError, match=r"'target' setting must be one of"):
        RunConfig(target="labels")


@pytest.fixture(scope="module")
def runner_calls(tmp_path_factory):
    """A small run with a recording explain: every call's model, inputs and targets."""
    import quantus_roar.benchmark.specs as specs

    calls = []
    real = specs.explain

    def recording(model, inputs, targets, **kwargs):
        calls.append((model, torch.as_tensor(inputs).clone(), torch.as_tensor(targets).clone()))
        return real(model, inputs, targets, **kwargs)

    out = tmp_path_factory.mktemp("run")
    cfg = RunConfig(estimators=("Gradient",), metrics=("kar-noretrain", "model-randomisation"),
                    percentages=(50, 100), epochs=1, sanity_samples=60, device="cpu")
    specs.explain = recording
    try:
        run(cfg, out, progress=False, report=False)
    finally:
        specs.explain = real
    with ResultStore.open_existing(out) as store:
        df = store.frame()
    return calls, df


def test_runner_explains_the_predicted_class_of_the_trained_model(runner_calls):
    calls, _ = runner_calls
    original = calls[0][0]  # the train split is explained first, by the trained model
    differs = 0
    for model, x, targets in calls:
        expected = predicted_classes(original, x)
        assert targets.tolist() == expected.tolist()
        differs += int((predicted_classes(model, x) != expected).sum())
    # The randomised models predict other classes; their maps still explain the original's.
    assert differs > 0
    assert len({id(m) for m, _, _ in calls}) > 2


def test_runner_with_label_targets_explains_the_labels(tmp_path, monkeypatch):
    import quantus_roar.benchmark.specs as specs

    seen = []
    real = specs.explain
    monkeypatch.setattr(specs, "explain", lambda model, inputs, targets, **kw: (
        seen.append(torch.as_tensor(targets).clone()), real(model, inputs, targets, **kw))[1])
    cfg = RunConfig(estimators=("Random",), metrics=("roar-noretrain",), percentages=(50,),
                    epochs=1, device="cpu", target="label")
    run(cfg, tmp_path, progress=False, report=False)
    data = load_dataset("digits", seed=0)
    assert torch.cat(seen).tolist() == data.y_test.tolist()  # deletion explains the test split


# --------------------------------------------------------------------------- 2. KAR at 100


def test_kar_keys_the_unmodified_accuracy_at_100_and_integrates_the_kept_shares(tabular):
    model, x, y, _ = tabular
    a = np.abs(x) + 0.01
    kar = qr.KAR(percentages=(10, 50, 90), n_retrains=2, retrainer=ScoreMean(),
                 disable_warnings=True)
    curve = kar(model, x, y, a)
    assert list(curve) == [10, 50, 90, 100]
    unmodified = kar.results[kar.results["percentage"] == 100]
    assert unmodified["removed_fraction"].tolist() == [0.0, 0.0]
    kar_agg = qr.KAR(percentages=(10, 50, 90), n_retrains=2, retrainer=ScoreMean(),
                     disable_warnings=True, return_aggregate=True)
    auc = kar_agg(model, x, y, a)
    kept = np.array([10, 50, 90, 100.0])
    values = np.array([curve[k] for k in (10, 50, 90, 100)])
    assert auc == pytest.approx(np.trapezoid(values, kept) / 90.0, rel=1e-12)
    # ROAR keeps its unmodified point at 0 % removed.
    roar = qr.ROAR(percentages=(10, 50), n_retrains=1, retrainer=ScoreMean(),
                   disable_warnings=True)
    assert list(roar(model, x, y, a)) == [0, 10, 50]


def test_kar_at_100_is_the_unmodified_point_not_a_second_one(tabular):
    model, x, y, _ = tabular
    a = np.abs(x) + 0.01
    kar = qr.KAR(percentages=(50, 100), n_retrains=2, retrainer=ScoreMean(),
                 disable_warnings=True)
    curve = kar(model, x, y, a)
    assert list(curve) == [50, 100]
    assert kar.results["percentage"].tolist() == [50, 50, 100, 100]


def test_kar_noretrain_keys_the_original_accuracy_at_100(tabular):
    model, x, y, predicted = tabular
    a = np.abs(x) + 0.01
    metric = qr.KARNoRetrain(percentages=(20, 50), disable_warnings=True)
    curve = metric(model, x, y, a)
    assert list(curve) == [20, 50, 100]
    assert curve[100] == pytest.approx(float((predicted == y).mean()))
    kept = removal_counts(F, [20, 50])  # 1 and 3 of 6 features
    assert metric.results["removed_fraction"].tolist() == pytest.approx(
        [1 - kept[0] / F, 1 - kept[1] / F, 0.0])
    agg = qr.KARNoRetrain(percentages=(20, 50), disable_warnings=True,
                          return_aggregate=True)(model, x, y, a)
    assert agg == pytest.approx(normalised_auc([20, 50, 100], list(curve.values())))
    assert agg == pytest.approx(np.trapezoid(list(curve.values()), [20, 50, 100]) / 80)
    assert list(qr.ROARNoRetrain(percentages=(20,), disable_warnings=True)(
        model, x, y, a)) == [0, 20]


def test_kar_plot_puts_the_unmodified_point_at_100_kept(tabular):
    import matplotlib

    matplotlib.use("Agg")
    model, x, y, _ = tabular
    kar = qr.KAR(percentages=(10, 50), n_retrains=1, retrainer=ScoreMean(),
                 disable_warnings=True)
    kar(model, x, y, np.abs(x) + 0.01)
    fig = kar.plot(show=False)
    ax = fig.axes[0]
    assert ax.get_lines()[0].get_xdata().tolist() == [10, 50, 100]
    assert ax.get_xlabel() == "features kept (%)"


def test_runner_stores_kar_noretrain_unmodified_at_100(runner_calls):
    _, df = runner_calls
    params = set(df[df["metric"] == "kar-noretrain"]["param"])
    assert params == {"50", "100"}


# --------------------------------------------------------------------------- 3. value ranking


@pytest.mark.parametrize(("reduce", "score"), [("sum_abs", np.abs), ("max_abs", np.abs),
                                               ("l2", np.square), ("sum", lambda v: v)])
def test_value_granularity_applies_reduce_to_each_value(reduce, score):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((5, 3, 4, 4)).astype(np.float32) * 3
    masks = removal_masks(a, [25], granularity="value", reduce=reduce)[0]
    k = removal_counts(48, [25])[0]
    for i in range(5):
        s = score(a[i]).ravel()
        expected = np.zeros(48, dtype=bool)
        expected[np.argsort(-s, kind="stable")[:k]] = True
        assert masks[i].ravel().tolist() == expected.tolist()


def test_a_large_negative_value_is_important():
    a = np.array([[[[-5.0]], [[1.0]], [[2.0]], [[0.5]]]], dtype=np.float32)  # (1, 4, 1, 1)
    removed = removal_masks(a, [25], granularity="value")[0, 0, :, 0, 0]
    assert removed.tolist() == [True, False, False, False]
    tab = removal_masks(np.array([[-5.0, 1.0, 2.0, 0.5]]), [25])[0, 0]
    assert tab.tolist() == [True, False, False, False]
    assert removal_masks(np.array([[-5.0, 1.0, 2.0, 0.5]]), [25], reduce="sum")[0, 0] \
        .tolist() == [False, False, True, False]


# --------------------------------------------------------------------------- 4. counts


def test_counts_round_where_the_original_floors():
    assert removal_counts(64, [70]) == [45]  # floor(44.8) = 44 in the original and Quantus
    a = np.random.default_rng(0).random((3, 1, 8, 8))
    assert removal_masks(a, [70])[0].reshape(3, -1).sum(1).tolist() == [45, 45, 45]


# --------------------------------------------------------------------------- 5. evaluate


def test_quantus_evaluate_with_agg_func_through_return_aggregate():
    x_tr, y_tr, x_te, y_te = qr.load_digits_data(seed=0)
    x, y = x_te[:60], y_te[:60]
    model = qr.TorchRetrainer(qr.SmallCNN(), epochs=2).fit(x_tr, y_tr, seed=0)
    metrics = {
        "ROARNoRetrain": qr.ROARNoRetrain(percentages=(50,), return_aggregate=True,
                                          disable_warnings=True),
        "KARNoRetrain": qr.KARNoRetrain(percentages=(50,), return_aggregate=True,
                                        disable_warnings=True),
        "PixelFlipping": quantus.PixelFlipping(features_in_step=16, return_aggregate=True,
                                               disable_warnings=True),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = quantus.evaluate(metrics=metrics, xai_methods={"Gradient": qr.explain},
                              model=model, x_batch=x, y_batch=y, explain_func_kwargs={},
                              agg_func=np.mean, return_as_df=True)
    assert isinstance(df, pd.DataFrame)
    assert set(df.index) == set(metrics) and list(df.columns) == ["Gradient"]
    values = df["Gradient"].astype(float)
    assert np.isfinite(values).all()
    # The same number as calling the metric directly on the same attributions.
    a = qr.explain(model, x, y, method="Gradient")
    direct = qr.ROARNoRetrain(percentages=(50,), return_aggregate=True,
                              disable_warnings=True)(model, x, y, a)
    assert values["ROARNoRetrain"] == pytest.approx(direct)


# --------------------------------------------------------------------------- 6. fractions


def test_fraction_like_percentages_warn_with_the_likely_intent(tabular):
    with pytest.warns(qr.QuantusRoarWarning, match=r"not fractions\. If you meant 10, 50 %, "
                                                  r"pass percentages=\(10, 50\)"):
        qr.ROARNoRetrain(percentages=(0.1, 0.5))
    with pytest.warns(qr.QuantusRoarWarning, match="not fractions"):
        qr.KAR(percentages=0.5, retrainer=ScoreMean(), n_retrains=3)
    with pytest.warns(qr.QuantusRoarWarning, match=r"pass --percentages 10,90"):
        RunConfig(percentages=(0.1, 0.9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qr.ROARNoRetrain(percentages=(0.5, 50))
        qr.ROARNoRetrain(percentages=(0.1,), disable_warnings=True)


# --------------------------------------------------------------------------- 7. device


@pytest.mark.parametrize("name", ["ROARNoRetrain", "ModelRandomisation"])
def test_device_is_passed_to_explain_func_as_quantus_does(tabular, name):
    model, x, y, _ = tabular
    cls = getattr(qr, name)
    for device, kwargs, expected in (("cpu", {}, "cpu"), (None, {}, None),
                                     ("cpu", {"device": "meta"}, "meta")):
        rec = ExplainRecorder()
        metric = cls(disable_warnings=True)
        metric(model, x, y, explain_func=rec, explain_func_kwargs=dict(kwargs), device=device)
        assert {c[2].get("device") for c in rec.calls} == {expected}


# --------------------------------------------------------------------------- 8. layouts


def test_sanity_checks_on_tabular_data_choose_rank_similarities(tabular):
    model = nn.Sequential(nn.Linear(F, 8), nn.ReLU(), nn.Linear(8, 2))
    _, x, y, _ = tabular
    metric = qr.ModelRandomisation(disable_warnings=True)
    out = metric(model, x, y, explain_func=qr.explain, explain_func_kwargs={})
    assert set(out) == {"spearman_abs", "spearman"}
    assert list(out["spearman"]) == ["2", "0", "floor"]
    data = qr.DataRandomisation(retrainer=CopyRetrainer(model), min_train_accuracy=0.01,
                                disable_warnings=True)
    assert set(data(model, x, y, explain_func=qr.explain, explain_func_kwargs={})) == {
        "spearman_abs", "spearman"}
    with pytest.raises(ValueError, match=r"names \['ssim'\], which compare images, but the "
                                         r"inputs have shape \(40, 6\)"):
        qr.ModelRandomisation(similarity=("spearman", "ssim"))(
            model, x, y, explain_func=qr.explain, explain_func_kwargs={})


def test_sanity_checks_on_images_keep_all_four_similarities():
    _, _, x_te, y_te = qr.load_digits_data(seed=0)
    model = qr.SmallCNN()
    out = qr.ModelRandomisation(disable_warnings=True)(
        model, x_te[:20], y_te[:20], explain_func=qr.explain, explain_func_kwargs={})
    assert set(out) == {"spearman_abs", "spearman", "ssim", "hog"}


# --------------------------------------------------------------------------- 9. names


def test_guided_backprop_on_a_model_without_relu_says_so():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(4, 1, 4, 4)
    with pytest.raises(qr.FunctionalReLUError, match=r"Sequential has no ReLU .*equal the "
                                                     r"plain gradient\. Use method='Gradient'"):
        qr.explain(lin, x, 0, method="GuidedBackprop")


def test_quantus_method_names_are_aliases():
    _, _, x_te, y_te = qr.load_digits_data(seed=0)
    model = qr.SmallCNN()
    x, y = x_te[:8], y_te[:8]
    grad = qr.explain(model, x, y, method="Gradient")
    saliency = qr.explain(model, x, y, method="Saliency")
    np.testing.assert_array_equal(saliency, np.abs(grad))
    theirs = quantus.explain(model, x, y, method="Saliency")  # one channel: nothing to reduce
    np.testing.assert_allclose(saliency, np.asarray(theirs).reshape(saliency.shape), atol=1e-6)
    np.testing.assert_array_equal(qr.explain(model, x, y, method="Control Var. Sobel Filter"),
                                  qr.explain(model, x, y, method="Sobel"))
    np.testing.assert_array_equal(qr.explain(model, x, y, method="Control Var. Random Uniform"),
                                  qr.explain(model, x, y, method="Random"))


def test_an_unknown_method_lists_each_choice_once():
    with pytest.raises(ValueError, match="'method' parameter of explain") as err:
        qr.explain(qr.SmallCNN(), np.zeros((1, 1, 8, 8), np.float32), 0, method="Saliancy")
    listed = re.search(r"one of \[(.*)\]", str(err.value)).group(1).split(", ")
    assert len(listed) == len(set(listed))
    assert {"'Gradient'", "'Saliency'", "'Control Var. Sobel Filter'"} <= set(listed)
