"""Bad input to the public functions: a clear error from our own checks before any work,
or the right answer; never a silent number and never a traceback from inside torch/numpy.

The sweep at the end calls every public entry point with each kind of bad value and
asserts that the call raises ``ValueError``/``TypeError`` from a frame of this package
(not from torch, numpy or captum) and that no model was trained.
"""

from __future__ import annotations

import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import quantus_roar as qr
from quantus_roar.curves import deletion_curve, removed_inputs, retrain_curve
from quantus_roar.explainers import explain, predicted_classes
from quantus_roar.removal import Removal, feature_ranks, impute, removal_masks
from quantus_roar.splits import Split

PACKAGE = str(Path(qr.__file__).parent)


class NoTraining:
    """A retrainer that fails the test if anything is trained."""

    def fit(self, x, y, *, seed):  # pragma: no cover - reaching it is the failure
        raise AssertionError("a model was trained on bad input")

    def score(self, model, x, y):  # pragma: no cover
        raise AssertionError("a model was scored on bad input")


def _model(n_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 64, n_classes)).eval()


@pytest.fixture(scope="module")
def data():
    g = np.random.default_rng(0)
    x = g.random((12, 1, 8, 8), dtype=np.float32)
    y = np.arange(12) % 3
    a = g.standard_normal((12, 1, 8, 8)).astype(np.float32)
    return _model(), x, y, a


def _quiet(cls, **kwargs):
    return cls(disable_warnings=True, **kwargs)


def _raised_here(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is in this package."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(PACKAGE)


# --------------------------------------------------------------------------- NaN / inf inputs


def test_nan_in_x_test_is_named_before_any_retrain(data):
    model, x, y, a = data
    x_bad = x.copy()
    x_bad[4, 0, 2, 2] = np.nan
    roar = _quiet(qr.ROAR, percentages=(50,), n_retrains=1, retrainer=NoTraining())
    with pytest.raises(ValueError, match=r"'x_test'.*1 non-finite value\(s\), first in "
                                         r"sample\(s\) \[4\].*nan_to_num"):
        roar(model, x, y, a, x_test=x_bad, y_test=y, a_test=a)


@pytest.mark.parametrize("imputer", ["zero", "channel_mean", "noisy_linear"])
def test_impute_refuses_nan_inputs_and_names_x_not_stats(imputer):
    x = torch.rand(3, 1, 6, 6)
    x[2, 0, 0, 0] = float("nan")
    masks = torch.zeros(3, 1, 6, 6, dtype=torch.bool)
    masks[:, :, 3:] = True
    with pytest.raises(ValueError, match=r"The 'x' parameter of impute.*sample\(s\) \[2\]"):
        impute(x, masks, imputer)


def test_explain_refuses_nan_input(data):
    model, x, y, _ = data
    x_bad = x.copy()
    x_bad[1, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"'inputs' parameter of explain.*sample\(s\) \[1\]"):
        explain(model, x_bad, y)


# --------------------------------------------------------------------------- one class


@pytest.mark.parametrize("cls", [qr.ROAR, qr.KAR, qr.MaskLeakage])
def test_one_class_training_data_is_refused_before_retraining(data, cls):
    model, x, _, a = data
    metric = _quiet(cls, percentages=(50,), n_retrains=1, retrainer=NoTraining())
    with pytest.raises(ValueError, match=r"at least 2 classes.*every accuracy would be 1\.0"):
        metric(model, x, np.zeros(12, dtype=int), a)


def test_one_class_data_randomisation_is_refused(data):
    model, x, _, _ = data
    metric = _quiet(qr.DataRandomisation, retrainer=NoTraining())
    with pytest.raises(ValueError, match=r"at least 2 classes"):
        metric(model, x, np.ones(12, dtype=int), explain_func=explain)


def test_retrain_curve_refuses_one_class(data):
    _, x, _, a = data
    with pytest.raises(ValueError, match=r"'train'.*at least 2 classes"):
        retrain_curve(NoTraining(), Split(x, np.zeros(12, int), a),
                      Split(x, np.zeros(12, int), a), (50,), n_retrains=1)


# --------------------------------------------------------------------------- layouts


def test_channel_last_maps_are_refused_with_the_fix():
    a = torch.rand(2, 8, 8, 1)
    with pytest.raises(ValueError, match=r"looks channel-last \(N, H, W, C\) with C = 1.*"
                                         r"permute\(0, 3, 1, 2\)"):
        removal_masks(a, (50,))
    # The same values channel-first are fine, and a (N, C, 1, T) time series too.
    assert removal_masks(a.permute(0, 3, 1, 2), (50,)).shape == (1, 2, 1, 8, 8)
    assert removal_masks(torch.rand(2, 8, 1, 3), (50,)).shape == (1, 2, 8, 1, 3)


def test_channel_last_x_with_a_channel_first_model_names_the_layout(data):
    model, x, y, a = data
    x_cl = np.moveaxis(x, 1, -1)  # (N, 8, 8, 1)
    for cls in (qr.ROARNoRetrain, qr.KARNoRetrain):
        with pytest.raises(ValueError, match=r"could not run the model on 'x_batch' of shape "
                                             r"\(12, 8, 8, 1\).*look channel-last.*transpose"):
            _quiet(cls, percentages=(50,))(model, x_cl, y, np.moveaxis(a, 1, -1))
    with pytest.raises(ValueError, match=r"could not run the model"):
        _quiet(qr.ROARNoRetrain, percentages=(50,))(model, x_cl, y, np.moveaxis(a, 1, -1),
                                                    channel_first=True)


def test_x_test_of_another_shape_is_named_before_the_model_runs(data):
    _, x, y, a = data
    calls = []
    model_spy = _model()
    model_spy.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape))
    roar = _quiet(qr.ROAR, percentages=(50,), n_retrains=1, retrainer=NoTraining())
    with pytest.raises(ValueError, match=r"'x_test'.*per-sample shape of the training inputs "
                                         r"\(1, 8, 8\). Got \(1, 6, 6\)"):
        roar(model_spy, x, y, a, x_test=x[:, :, :6, :6], y_test=y)
    assert all(tuple(s[1:]) == (1, 8, 8) for s in calls)


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("cls", [qr.ROARNoRetrain, qr.KARNoRetrain])
@pytest.mark.parametrize("kind", ["float64", "float16", "tensor64", "list"])
def test_deletion_metrics_take_any_numeric_input_as_float32(data, cls, kind):
    model, x, y, a = data
    convert = {"float64": lambda v: v.astype(np.float64),
               "float16": lambda v: v.astype(np.float16),
               "tensor64": lambda v: torch.from_numpy(v).double(),
               "list": lambda v: v.tolist()}[kind]
    x_in = convert(x)
    # The reference is the same values as float32 (float16 rounds them first).
    x_ref = torch.as_tensor(np.asarray(x_in)).float().numpy()
    metric = _quiet(cls, percentages=(30, 70))
    assert metric(model, x_in, convert(y) if kind == "list" else y, a) == \
        _quiet(cls, percentages=(30, 70))(model, x_ref, y, a)


@pytest.mark.parametrize("cls", [qr.ModelRandomisation, qr.DataRandomisation])
def test_randomisation_metrics_take_float64_input(data, cls):
    model, x, y, _ = data
    kwargs = {} if cls is qr.ModelRandomisation else {
        "retrainer": qr.TorchRetrainer(_model(), epochs=1)}
    ref = _quiet(cls, similarity="spearman", **kwargs)(model, x, y, explain_func=explain)
    got = _quiet(cls, similarity="spearman", **kwargs)(model, x.astype(np.float64), y,
                                                      explain_func=explain)
    assert got == ref


# --------------------------------------------------------------------------- constructors


@pytest.mark.parametrize("cls", [qr.ROAR, qr.KAR, qr.MaskLeakage, qr.ModelRandomisation,
                                 qr.DataRandomisation])
def test_a_retrainer_class_is_refused_at_construction(cls):
    with pytest.raises(TypeError, match=r"retrainer instance.*class TorchRetrainer.*"
                                        r"TorchRetrainer\(model"):
        _quiet(cls, retrainer=qr.TorchRetrainer)


@pytest.mark.parametrize("cls", [qr.ROAR, qr.KAR, qr.ROARNoRetrain, qr.KARNoRetrain,
                                 qr.MaskLeakage, qr.ModelRandomisation, qr.DataRandomisation])
@pytest.mark.parametrize("seed", [-1, 2**70, 1.5, True])
def test_bad_seeds_fail_at_construction(cls, seed):
    with pytest.raises((ValueError, TypeError), match=r"'seed' parameter of .*must be an "
                                                      r"integer"):
        _quiet(cls, seed=seed)


@pytest.mark.parametrize("cls", [qr.ROAR, qr.KAR, qr.ROARNoRetrain, qr.KARNoRetrain])
@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_bad_batch_sizes_fail_before_work(data, cls, batch_size):
    model, x, y, a = data
    kwargs = {"n_retrains": 1, "retrainer": NoTraining()} if cls in (qr.ROAR, qr.KAR) else {}
    with pytest.raises((ValueError, TypeError), match=r"'batch_size' parameter"):
        _quiet(cls, percentages=(50,), **kwargs)(model, x, y, a, batch_size=batch_size)


def test_explain_targets_out_of_range_and_meta_models(data):
    model, x, y, _ = data
    with pytest.raises(ValueError, match=r"'targets' parameter of explain must be class labels "
                                         r"in \[0, 3\).*from 0 to 7"):
        explain(model, x, np.where(y == 2, 7, y))
    with pytest.raises(ValueError, match=r"'targets'.*from -1"):
        explain(model, x, y - 1)
    meta = nn.Sequential(nn.Flatten(), nn.Linear(64, 3, device="meta"))
    with pytest.raises(ValueError, match=r"meta device.*to_empty"):
        explain(meta, x, y)
    with pytest.raises(ValueError, match=r"meta device"):
        _quiet(qr.ROARNoRetrain, percentages=(50,))(meta, x, y, np.ones_like(x))


@pytest.mark.parametrize("kwargs, match", [
    ({"max_iter": 0}, r"'max_iter'.*>= 1"),
    ({"max_iter": -5}, r"'max_iter'.*>= 1"),
    ({"max_iter": 2.5}, r"'max_iter'.*integer"),
    ({"tol": float("nan")}, r"'tol'.*finite"),
    ({"tol": 0.0}, r"'tol'.*> 0"),
    ({"noise": float("nan")}, r"'noise'.*finite"),
    ({"noise": -1.0}, r"'noise'.*>= 0"),
])
def test_noisy_linear_keywords_out_of_range(kwargs, match):
    x = torch.rand(2, 1, 6, 6)
    masks = torch.rand(2, 1, 6, 6) > 0.5
    with pytest.raises((ValueError, TypeError), match=match):
        impute(x, masks, "noisy_linear", **kwargs)


def test_noisy_linear_warns_when_it_stops_unconverged():
    x = torch.rand(2, 1, 12, 12)
    masks = torch.zeros(2, 1, 12, 12, dtype=torch.bool)
    masks[:, :, 2:10, 2:10] = True
    with pytest.warns(qr.QuantusRoarWarning, match=r"stopped after max_iter=1 .*2 of 2 "
                                                   r"channel planes"):
        impute(x, masks, "noisy_linear", max_iter=1, noise=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        impute(x, masks, "noisy_linear", noise=0.0)  # the default converges, silently


# --------------------------------------------------------------------------- the sweep

def _bad_values(x, y, a):
    """Each family of bad values, as overrides of the good arguments (by role)."""
    x_nan = x.copy()
    x_nan[3, 0, 1, 1] = np.nan
    x_inf = x.copy()
    x_inf[0, 0, 0, 0] = -np.inf
    a_nan = a.copy()
    a_nan[5, 0, 0, 0] = np.nan
    return {
        "x NaN": {"x": x_nan},
        "x inf": {"x": x_inf},
        "x empty": {"x": x[:0], "y": y[:0], "a": a[:0]},
        "x 1-d": {"x": x.reshape(-1)},
        "x strings": {"x": np.array([["a"]] * 12)},
        "y short": {"y": y[:-1]},
        "y fractional": {"y": y + 0.5},
        "y negative": {"y": y - 1},
        "y out of range": {"y": y + 5},
        "y boolean": {"y": y.astype(bool)},
        "y 2-d": {"y": y[:, None]},
        "a NaN": {"a": a_nan},
        "a wrong shape": {"a": a[:, :, :5]},
        "seed negative": {"seed": -3},
        "seed huge": {"seed": 2**70},
        "seed float": {"seed": 0.5},
        "batch_size 0": {"batch_size": 0},
        "batch_size -1": {"batch_size": -1},
        "percentages 0": {"percentages": (0, 50)},
        "percentages 101": {"percentages": (101,)},
        "percentages NaN": {"percentages": (float("nan"),)},
        "percentages text": {"percentages": "abc"},
        "percentages twice": {"percentages": (10, 10)},
    }


def _entry_points(model, x, y, a):
    """name -> (call(args) -> result, the roles it takes)."""
    m = torch.from_numpy(np.asarray(a)).abs() > 1.0

    def metric(cls, **extra):
        def call(v):
            kwargs = dict(percentages=v["percentages"], seed=v["seed"], **extra)
            return _quiet(cls, **kwargs)(model, v["x"], v["y"], v["a"],
                                         batch_size=v["batch_size"])
        return call

    def sanity(cls, **extra):
        def call(v):
            return _quiet(cls, seed=v["seed"], similarity="spearman", **extra)(
                model, v["x"], v["y"], explain_func=explain, batch_size=v["batch_size"])
        return call

    retrain = {"n_retrains": 1, "retrainer": NoTraining()}
    return {
        "removal_masks": (lambda v: removal_masks(v["a"], v["percentages"], seed=v["seed"]),
                          {"a", "percentages", "seed"}),
        "feature_ranks": (lambda v: feature_ranks(v["a"], seed=v["seed"]), {"a", "seed"}),
        "impute": (lambda v: impute(v["x"], m[: len(v["x"])] if len(v["x"]) == 12 else m,
                                    "noisy_linear", seed=v["seed"]), {"x", "seed"}),
        "removed_inputs": (lambda v: removed_inputs(v["x"], v["a"], v["percentages"],
                                                    seed=v["seed"]),
                           {"x", "a", "percentages", "seed"}),
        "deletion_curve": (lambda v: deletion_curve(model, Split(v["x"], v["y"], v["a"]),
                                                    v["percentages"],
                                                    removal=Removal(seed=v["seed"]),
                                                    batch_size=v["batch_size"]),
                           {"x", "y", "a", "percentages", "seed", "batch_size"}),
        "retrain_curve": (lambda v: retrain_curve(NoTraining(), Split(v["x"], v["y"], v["a"]),
                                                  Split(x, y, a), v["percentages"],
                                                  removal=Removal(seed=v["seed"]),
                                                  n_retrains=1),
                          {"x", "y", "a", "percentages", "seed"}),
        "explain": (lambda v: explain(model, v["x"], v["y"], seed=v["seed"],
                                      batch_size=v["batch_size"]),
                    {"x", "y", "seed", "batch_size"}),
        "predicted_classes": (lambda v: predicted_classes(model, v["x"],
                                                          batch_size=v["batch_size"]),
                              {"x", "batch_size"}),
        "ROAR": (metric(qr.ROAR, **retrain), {"x", "y", "a", "percentages", "seed",
                                               "batch_size"}),
        "KAR": (metric(qr.KAR, **retrain), {"x", "y", "a", "percentages", "seed",
                                             "batch_size"}),
        "MaskLeakage": (metric(qr.MaskLeakage, **retrain), {"x", "y", "a", "percentages",
                                                             "seed", "batch_size"}),
        "ROARNoRetrain": (metric(qr.ROARNoRetrain), {"x", "y", "a", "percentages", "seed",
                                                     "batch_size"}),
        "KARNoRetrain": (metric(qr.KARNoRetrain), {"x", "y", "a", "percentages", "seed",
                                                   "batch_size"}),
        "ModelRandomisation": (sanity(qr.ModelRandomisation), {"x", "y", "seed",
                                                               "batch_size"}),
        "DataRandomisation": (sanity(qr.DataRandomisation, retrainer=NoTraining()),
                              {"x", "y", "seed", "batch_size"}),
    }


def _sweep_cases():
    model, x, y, a = _model(), *_fixture_arrays()
    entries = _entry_points(model, x, y, a)
    for name, (_, roles) in entries.items():
        for family in _bad_values(x, y, a):
            role = family.split()[0]
            if role in roles and (family != "a wrong shape" or "x" in roles):
                yield pytest.param(name, family, id=f"{name}-{family}")


def _fixture_arrays():
    g = np.random.default_rng(0)
    x = g.random((12, 1, 8, 8), dtype=np.float32)
    y = np.arange(12) % 3
    a = g.standard_normal((12, 1, 8, 8)).astype(np.float32)
    return x, y, a


@pytest.mark.parametrize("name, family", list(_sweep_cases()))
def test_sweep_bad_input_is_our_clear_error(data, name, family):
    model, x, y, a = data
    call, roles = _entry_points(model, x, y, a)[name]
    good = {"x": x, "y": y, "a": a, "seed": 0, "batch_size": 4, "percentages": (50,)}
    override = {k: v for k, v in _bad_values(x, y, a)[family].items() if k in roles}
    args = {**good, **override}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises((ValueError, TypeError)) as info:
            call(args)
    assert _raised_here(info.value), (
        f"{name} with {family}: raised from outside the package: "
        f"{traceback.format_exception(info.value)[-3:]}")
    message = str(info.value)
    assert len(message) > 30 and ("parameter" in message or "must" in message
                                  or "needs" in message), message


def test_sweep_good_input_runs(data):
    """The sweep's good arguments work, so every error above comes from the bad value."""
    model, x, y, a = data
    good = {"x": x, "y": y, "a": a, "seed": 0, "batch_size": 4, "percentages": (50,)}
    for name, (call, _) in _entry_points(model, x, y, a).items():
        if name in ("ROAR", "KAR", "MaskLeakage", "retrain_curve", "DataRandomisation"):
            continue  # they train; NoTraining refuses by design
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call(good)


# --------------------------------------------------------------------------- review cases


def test_big_endian_arrays_give_the_native_answer(data):
    model, x, y, a = data
    xb, ab = x.astype(">f4"), a.astype(">f4")
    assert np.array_equal(removal_masks(ab, (30,)), removal_masks(a, (30,)))
    assert np.array_equal(explain(model, xb, y.astype(">i8")), explain(model, x, y))
    m = np.abs(a) > 1
    assert np.array_equal(impute(xb, m, "zero"), impute(x, m, "zero"))
    metric = _quiet(qr.ROARNoRetrain, percentages=(50,))
    assert metric(model, xb, y.astype(">i4"), ab) == _quiet(qr.ROARNoRetrain,
                                                            percentages=(50,))(model, x, y, a)


@pytest.mark.parametrize("bad, match", [
    (lambda v: v.astype(np.complex64), r"real numeric array.*complex64.*real part"),
    (lambda v: np.ma.masked_less(v, 0.1), r"masked array"),
    (lambda v: v.astype(np.longdouble), r"float16, float32 or float64"),
])
def test_complex_masked_and_extended_arrays_are_refused(data, bad, match):
    model, x, y, a = data
    with pytest.raises(TypeError, match=match):
        removal_masks(bad(a), (30,))
    with pytest.raises(TypeError, match=match):
        _quiet(qr.ROARNoRetrain, percentages=(50,))(model, bad(x), y, a)


def test_float64_models_are_explained_and_scored_in_float64(data):
    _, x, y, a = data
    m64 = _model().double()
    a64 = explain(m64, x, y)
    assert a64.dtype == np.float32 and np.isfinite(a64).all()
    np.testing.assert_allclose(a64, explain(_model(), x, y), rtol=1e-4, atol=1e-6)
    got = _quiet(qr.ROARNoRetrain, percentages=(50,))(m64, x, y, explain_func=explain)
    assert set(got) == {0, 50}
    curve = deletion_curve(m64, Split(x, y, a), (50,))
    assert list(curve["percentage"]) == [0, 50]


def test_explain_refuses_channel_last_images_and_nan_output(data):
    model, x, y, _ = data
    x_cl = np.moveaxis(x, 1, -1)
    for method in ("Sobel", "Gradient"):
        with pytest.raises(ValueError, match=r"looks channel-last"):
            explain(model, x_cl, y, method=method)
    with pytest.raises(ValueError, match=r"produced \d+ NaN or inf.*baselines"):
        explain(model, x, y, method="IntegratedGradients",
                baselines=torch.full((1, 1, 8, 8), float("nan")))
    with pytest.raises(TypeError, match=r"'targets' parameter of explain must be class"):
        explain(model, x, None)


def test_models_without_class_scores_are_named(data):
    _, x, y, a = data
    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1),
                               torch.nn.Flatten(0))  # returns (N,)
    with pytest.raises(ValueError, match=r"classifier returning \(N, n_classes\)"):
        explain(flat, x, y)
    with pytest.raises(ValueError, match=r"classifier returning \(N, n_classes\)"):
        deletion_curve(flat, Split(x, y, a), (50,))
    broken = _model()
    with torch.no_grad():
        broken[-1].weight.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"returned NaN or inf scores"):
        deletion_curve(broken, Split(x, y, a), (50,))


def test_split_layout_must_be_a_boolean_and_shared(data):
    model, x, y, a = data
    with pytest.raises(TypeError, match=r"'data.channel_last' parameter .* True or False"):
        deletion_curve(model, Split(x, y, a, None, "False"), (50,))
    with pytest.raises(ValueError, match=r"same layout"):
        retrain_curve(NoTraining(), Split(x, y, a), Split(x, y, a, None, True), (50,),
                      n_retrains=1)
    with pytest.raises(TypeError, match=r"'data.ids' parameter .* real numeric"):
        deletion_curve(model, Split(x, y, a, ["a"] * 12), (50,))
    with pytest.raises(ValueError, match=r"'data.ids' .* 12 integer sample ids"):
        deletion_curve(model, Split(x, y, a, np.arange(11)), (50,))
    assert deletion_curve(model, Split(x, y, a, np.int64(5)), (50,)).equals(
        deletion_curve(model, Split(x, y, a, 5), (50,)))


def test_metric_callables_are_checked(data):
    model, x, y, a = data
    with pytest.raises(TypeError, match=r"'aggregate_func' parameter of ROAR must be callable"):
        qr.ROAR(aggregate_func="mean", disable_warnings=True)
    metric = _quiet(qr.ROARNoRetrain, percentages=(50,), normalise=True,
                    normalise_func=lambda v: None)
    with pytest.raises(ValueError, match=r"'normalise_func' .* returned None"):
        metric(model, x, y, a)


def test_unsigned_labels_and_percentage_containers(data):
    model, x, y, a = data
    ref = _quiet(qr.ROARNoRetrain, percentages=(50,))(model, x, y, a)
    for dtype in (torch.uint8, torch.uint16, torch.uint32):
        assert _quiet(qr.ROARNoRetrain, percentages=(50,))(
            model, x, torch.from_numpy(y).to(dtype), a) == ref
    assert _quiet(qr.ROARNoRetrain, percentages=torch.tensor(50.0))(model, x, y, a) == ref
    assert _quiet(qr.ROARNoRetrain, percentages=(p for p in [50]))(model, x, y, a) == ref
    with pytest.raises(TypeError, match=r"'percentages' .* Got None"):
        qr.ROARNoRetrain(percentages=None)


def test_constant_explanations_and_empty_percentages_warn(data):
    model, x, y, a = data
    zero = lambda model, inputs, targets, **kw: np.zeros_like(inputs)  # noqa: E731
    with pytest.warns(qr.QuantusRoarWarning, match=r"'spearman' is undefined \(NaN\) for 12 of "
                                                   r"12 samples.*constant"):
        got = _quiet(qr.ModelRandomisation, similarity="spearman")(model, x, y,
                                                                   explain_func=zero)
    assert all(np.isnan(v) for v in got.values())
    with pytest.warns(qr.QuantusRoarWarning, match=r"percentage\(s\) \[0\.5\] select 0 of 64"):
        removal_masks(a, (0.5, 50))
    with pytest.raises(ValueError, match=r"'percentages' parameter of removal_counts"):
        qr.removal_counts(64, [150])
