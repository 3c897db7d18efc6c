"""Tests of the ROAR, KAR and no-retrain deletion metrics."""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import quantus
import torch
from torch import nn

import quantus_roar as qr
from quantus_roar.curves import normalised_auc
from quantus_roar.removal import removal_counts
from quantus_roar.splits import retrain_seeds, stratified_split


@pytest.fixture(scope="module")
def synthetic():
    x, y, evidence = qr.make_synthetic(n_samples=800, n_classes=4, seed=0)
    retrainer = qr.TorchRetrainer(model_fn=lambda: qr.SmallCNN(n_classes=4), epochs=8)
    model = retrainer.fit(x, y, seed=1)
    return x, y, evidence.astype(np.float32), retrainer, model


@pytest.fixture(scope="module")
def digits_model():
    x_train, y_train, x_test, y_test = qr.load_digits_data(seed=0)
    retrainer = qr.TorchRetrainer(qr.SmallCNN(), epochs=6)
    model = retrainer.fit(x_train, y_train, seed=0)
    return model, x_test, y_test, retrainer


class Recorder:
    """A user retrainer with only fit/score; records what it was given."""

    def __init__(self):
        self.jobs = []

    def fit(self, x, y, *, seed):
        self.jobs.append((x, y, seed))
        return nn.Identity()

    def score(self, model, x, y):
        """A stand-in accuracy in [0, 1] that follows the test inputs: their mean / 10."""
        self.jobs[-1] = (*self.jobs[-1], x, y)
        return float(torch.as_tensor(x).float().mean()) / 10


def _quiet(cls, *args, **kwargs):
    return cls(*args, disable_warnings=True, **kwargs)


# --------------------------------------------------------------------------- known answers


def test_roar_with_oracle_falls_to_chance_while_random_stays_high(synthetic):
    x, y, oracle, retrainer, model = synthetic
    random_a = np.random.default_rng(0).random(oracle.shape).astype(np.float32)
    roar = _quiet(qr.ROAR, percentages=(25, 50), n_retrains=2, retrainer=retrainer)
    with_oracle = roar(model, x, y, oracle)
    with_random = roar(model, x, y, random_a)
    assert with_oracle[0] > 0.95 and with_random[0] > 0.95
    # 25% removal covers the whole evidence: nothing but noise is left.
    assert with_oracle[25] < 0.25 + 0.15
    assert with_random[25] > 0.85
    assert with_random[25] - with_oracle[25] > 0.5


def test_kar_with_oracle_stays_high_while_inverted_oracle_falls(synthetic):
    x, y, oracle, retrainer, model = synthetic
    kar = _quiet(qr.KAR, percentages=(25, 50), n_retrains=2, retrainer=retrainer)
    kept_evidence = kar(model, x, y, oracle)
    kept_noise = kar(model, x, y, 1.0 - oracle)
    assert kept_evidence[25] > 0.95
    assert kept_noise[25] < 0.25 + 0.15
    assert kept_evidence[25] - kept_noise[25] > 0.5


def test_no_retrain_orderings_on_synthetic(synthetic):
    x, y, oracle, _, model = synthetic
    morf = _quiet(qr.ROARNoRetrain, percentages=(25,))(model, x, y, oracle)
    lerf = _quiet(qr.KARNoRetrain, percentages=(25,))(model, x, y, oracle)
    assert morf[0] > 0.95 and morf[25] < 0.4
    assert lerf[25] > 0.9


def test_no_retrain_matches_quantus_road(digits_model):
    model, x, y, _ = digits_model
    a = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    ps = [25, 50, 75]  # 16, 32 and 48 of the 64 pixels: ROAD's floor is exact
    road = quantus.ROAD(noise=0.0, percentages=ps, abs=False, normalise=False,
                        disable_warnings=True)
    expected = road(model=model, x_batch=x, y_batch=y, a_batch=a, batch_size=len(x),
                    device="cpu")
    ours = _quiet(qr.ROARNoRetrain, ps, reduce="sum", imputer="noisy_linear",
                  imputer_kwargs={"noise": 0.0})(model, x, y, a, batch_size=100)
    assert [ours[p] for p in ps] == pytest.approx([expected[p] for p in ps], abs=1e-12)
    assert ours[0] > ours[25] > ours[75]


def test_no_retrain_against_direct_computation(digits_model):
    model, x, y, _ = digits_model
    a = np.random.default_rng(2).random(x.shape).astype(np.float32)
    metric = _quiet(qr.ROARNoRetrain, (10, 60))
    scores = metric(model, x, y, a, batch_size=50)
    masks = qr.removal_masks(a, (10, 60))
    removed = qr.impute(x, masks, "channel_mean", stats=qr.channel_means(x))
    with torch.no_grad():
        for i, p in enumerate((10, 60)):
            logits = model(torch.from_numpy(removed[i]))
            assert scores[p] == pytest.approx(float((logits.argmax(1).numpy() == y).mean()))
            prob = logits.softmax(1)[torch.arange(len(y)), torch.from_numpy(y)].mean()
            row = metric.results.set_index("percentage").loc[p]
            assert row["true_class_score"] == pytest.approx(float(prob), rel=1e-5)
            assert row["removed_fraction"] == pytest.approx(removal_counts(64, [p])[0] / 64)


# --------------------------------------------------------------------------- plumbing


def test_jobs_split_and_channel_mean_from_training_split():
    rng = np.random.default_rng(0)
    x = rng.random((40, 2, 4, 4)).astype(np.float32)
    x[:, 1] += 5.0
    y = np.repeat(np.arange(4), 10)
    a = rng.random((40, 4, 4)).astype(np.float32)
    model = nn.Sequential(nn.Flatten(), nn.Linear(32, 4))
    rec = Recorder()
    metric = _quiet(qr.ROAR, percentages=(50,), n_retrains=3, retrainer=rec, test_size=0.3,
                    seed=7)
    scores = metric(model, x, y, a)
    assert len(rec.jobs) == 2 * 3  # (0 and 50%) x 3 retrains, in one batch
    assert [job[2] for job in rec.jobs] == retrain_seeds(7, 3) * 2
    tr, te = stratified_split(y, 0.3, seed=7)
    assert len(te) == 12 and np.bincount(y[te]).tolist() == [3, 3, 3, 3]
    x_tr0, y_tr0, _, x_te0, y_te0 = rec.jobs[0]
    assert np.array_equal(np.asarray(x_tr0), x[tr]) and np.array_equal(np.asarray(y_tr0), y[tr])
    assert np.array_equal(np.asarray(x_te0), x[te]) and np.array_equal(np.asarray(y_te0), y[te])
    x_tr50, _, _, x_te50, _ = rec.jobs[3]
    x_tr50, x_te50 = np.asarray(x_tr50), np.asarray(x_te50)
    means = x[tr].mean(axis=(0, 2, 3))
    for xs, orig in ((x_tr50, x[tr]), (x_te50, x[te])):
        changed = xs != orig
        assert changed[:, 0].sum() == len(xs) * 8  # exactly half of the 16 pixels
        np.testing.assert_allclose(xs[:, 0][changed[:, 0]], means[0], rtol=1e-6)
        np.testing.assert_allclose(xs[:, 1][changed[:, 1]], means[1], rtol=1e-6)
    assert set(scores) == {0, 50}
    assert scores[50] == pytest.approx(np.mean([float(np.asarray(j[3]).mean()) / 10
                                                for j in rec.jobs[3:]]))
    res = metric.results
    assert list(res.columns[:5]) == ["percentage", "retrain", "seed", "accuracy",
                                     "removed_fraction"]
    assert len(res) == 6 and res.loc[res.percentage == 50, "removed_fraction"].eq(0.5).all()


def test_separate_test_set_and_explain_func_in_batches():
    rng = np.random.default_rng(1)
    x, y = rng.random((30, 1, 4, 4)).astype(np.float32), np.arange(30) % 3
    x_test, y_test = rng.random((9, 1, 4, 4)).astype(np.float32), np.arange(9) % 3
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    calls = []

    def explain_func(model, inputs, targets, **kwargs):
        calls.append((len(inputs), kwargs))
        return inputs[:, 0] * 2.0  # no channel axis

    rec = Recorder()
    metric = _quiet(qr.KAR, percentages=(25,), n_retrains=1, retrainer=rec)
    metric(model, x, y, x_test=x_test, y_test=y_test, explain_func=explain_func,
           explain_func_kwargs={"method": "Custom"}, batch_size=8)
    assert [c[0] for c in calls] == [8, 8, 8, 6, 8, 1]
    assert all(c[1] == {"method": "Custom"} for c in calls)
    x_tr, _, _, x_te, y_te = rec.jobs[1]
    assert len(x_tr) == 30 and len(x_te) == 9 and np.array_equal(np.asarray(y_te), y_test)
    # KAR keeps the 4 largest pixels (largest input values) of each image.
    kept = np.asarray(x_te)[:, 0] == x_test[:, 0]
    assert kept.reshape(9, -1).sum(1).tolist() == [4] * 9
    top4 = np.sort(x_test.reshape(9, -1), 1)[:, -4:]
    np.testing.assert_array_equal(np.sort(np.asarray(x_te)[:, 0][kept].reshape(9, 4), 1), top4)


def test_reproducible_and_seed_dependent(digits_model):
    model, x, y, retrainer = digits_model
    a = np.random.default_rng(3).random(x.shape).astype(np.float32)
    runs = []
    for seed in (0, 0, 1):
        metric = _quiet(qr.ROAR, percentages=(50,), n_retrains=2, retrainer=retrainer,
                        seed=seed)
        metric(model, x, y, a)
        runs.append(metric.results)
    cols = ["percentage", "seed", "accuracy", "removed_fraction"]
    pd.testing.assert_frame_equal(runs[0][cols], runs[1][cols])
    assert not runs[0]["seed"].equals(runs[2]["seed"])


def test_return_aggregate_is_normalised_auc(digits_model):
    model, x, y, _ = digits_model
    a = np.random.default_rng(4).random(x.shape).astype(np.float32)
    curve = _quiet(qr.ROARNoRetrain, (20, 50, 90))(model, x, y, a)
    auc = _quiet(qr.ROARNoRetrain, (20, 50, 90), return_aggregate=True)(model, x, y, a)
    ps = np.array([0, 20, 50, 90], dtype=float)
    v = np.array([curve[int(p)] for p in ps])
    assert auc == pytest.approx(float(np.trapezoid(v, ps) / 90.0))
    assert normalised_auc([90, 0], [0.2, 1.0]) == pytest.approx(0.6)
    mean = _quiet(qr.ROARNoRetrain, (20, 50, 90), return_aggregate=True,
                  aggregate_func=np.mean)(model, x, y, a)
    assert mean == pytest.approx(float(v.mean()))


def test_quantus_evaluate_side_by_side(digits_model):
    model, x, y, retrainer = digits_model
    x, y = x[:200], y[:200]
    a = np.random.default_rng(5).random(x.shape).astype(np.float32)
    metrics = {
        "ROAR": _quiet(qr.ROAR, percentages=(50,), n_retrains=1, retrainer=retrainer),
        "KAR": _quiet(qr.KAR, percentages=(50,), n_retrains=1, retrainer=retrainer),
        "PixelFlipping": quantus.PixelFlipping(features_in_step=16, disable_warnings=True),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = quantus.evaluate(metrics=metrics,
                                   xai_methods={"Random": a, "Saliency": {}},
                                   model=model, x_batch=x, y_batch=y)
    assert set(results) == {"Random", "Saliency"}
    for method in results.values():
        assert set(method) == {"ROAR", "KAR", "PixelFlipping"}
        assert set(method["ROAR"]) == {0, 50} and set(method["KAR"]) == {50, 100}
        assert np.shape(method["PixelFlipping"]) == (200, 4)
    direct = _quiet(qr.ROAR, percentages=(50,), n_retrains=1, retrainer=retrainer)(
        model, x, y, a)
    assert results["Random"]["ROAR"] == direct


def test_time_series_tabular_and_channel_last():
    rng = np.random.default_rng(6)
    # time series (N, C, T)
    x_ts = rng.standard_normal((20, 2, 10)).astype(np.float32)
    y = np.arange(20) % 2
    lin = nn.Sequential(nn.Flatten(), nn.Linear(20, 2))
    a_ts = rng.random((20, 1, 10)).astype(np.float32)
    res = _quiet(qr.ROARNoRetrain, (30,))(lin, x_ts, y, a_ts)
    assert set(res) == {0, 30}
    assert _quiet(qr.ROARNoRetrain, (30,)).__call__(lin, x_ts, y, a_ts[:, 0]) == res
    # tabular (N, F)
    x_tab = rng.standard_normal((20, 6)).astype(np.float32)
    lin6 = nn.Linear(6, 2)
    metric = _quiet(qr.KARNoRetrain, (50,))
    metric(lin6, x_tab, y, rng.random((20, 6)))
    assert metric.results["removed_fraction"].tolist() == [0.5, 0.0]  # 50 % kept, unmodified
    # channel-last images give the same numbers as channel-first ones
    x_cf = rng.standard_normal((16, 3, 6, 6)).astype(np.float32)
    a_cf = rng.standard_normal((16, 3, 6, 6)).astype(np.float32)
    y16 = np.arange(16) % 2
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))

    class ChannelLast(nn.Module):
        def forward(self, t):
            return conv(t.permute(0, 3, 1, 2))

    cf = _quiet(qr.ROARNoRetrain, (20, 70))
    cl = _quiet(qr.ROARNoRetrain, (20, 70))
    cf(conv, x_cf, y16, a_cf)
    cl(ChannelLast(), x_cf.transpose(0, 2, 3, 1), y16, a_cf.transpose(0, 2, 3, 1),
       channel_first=False)
    pd.testing.assert_frame_equal(cf.results, cl.results)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("cls", [qr.ROAR, qr.KAR])
def test_errors_name_the_problem_and_nothing_is_retrained(cls):
    rng = np.random.default_rng(7)
    x = rng.random((24, 1, 4, 4)).astype(np.float32)
    y = np.arange(24) % 3
    a = rng.random((24, 1, 4, 4)).astype(np.float32)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    rec = Recorder()
    metric = _quiet(cls, percentages=(50,), n_retrains=1, retrainer=rec)
    a_nan = a.copy()
    a_nan[3, 0, 1, 1] = np.nan
    a_inf = a.copy()
    a_inf[5, 0, 0, 0] = np.inf
    y_rare = y.copy()
    y_rare[:] = 0
    y_rare[0] = 2
    cases = [
        (dict(y_batch=y[:-1]), ValueError, r"one class label per sample of x_batch, shape \(24,\)"),
        (dict(a_batch=a[:, :, :3]), ValueError, r"must have the shape of the inputs"),
        (dict(a_batch=a_nan), ValueError, r"1 NaN or inf value\(s\), first in sample\(s\) \[3\]"),
        (dict(a_batch=a_inf), ValueError, r"first in sample\(s\) \[5\]"),
        (dict(y_batch=y + 1), ValueError, r"class labels in \[0, 3\).*from 1 to 3"),
        (dict(y_batch=y - 1), ValueError, r"from -1 to 1"),
        (dict(y_batch=y + 0.5), ValueError, r"integer class labels"),
        (dict(y_batch=y_rare), ValueError, r"Class\(es\) \[2\] have fewer"),
        (dict(a_batch=None), ValueError, r"needs attributions: pass 'a_batch'"),
        (dict(x_test=x), ValueError, r"both 'x_test' and 'y_test'"),
        (dict(model=lambda t: t), TypeError, r"must be a torch.nn.Module"),
        (dict(foo=1), ValueError, r"Unexpected keyword arguments"),
    ]
    for override, exc, pattern in cases:
        call = {**dict(model=model, x_batch=x, y_batch=y, a_batch=a), **override}
        with pytest.raises(exc, match=pattern):
            metric(**call)
    assert rec.jobs == []
    for bad in ((0, 50), (50, 101), (-5,), ()):
        with pytest.raises(ValueError, match="percentages"):
            cls(percentages=bad, retrainer=rec)
    with pytest.raises(ValueError, match="n_retrains"):
        cls(n_retrains=0, retrainer=rec)
    with pytest.raises(ValueError, match="imputer_kwargs"):
        cls(imputer="zero", imputer_kwargs={"sigma": 1.0}, retrainer=rec)
    with pytest.raises(TypeError, match="retrainer"):
        cls(retrainer=object())


def test_default_retrainer_warns_and_trains_copies_of_the_model(digits_model):
    model, x, y, _ = digits_model
    with pytest.warns(qr.QuantusRoarWarning, match="default recipe"):
        metric = qr.ROAR(percentages=(50,), n_retrains=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qr.ROAR(n_retrains=3, disable_warnings=True)
    before = [p.clone() for p in model.parameters()]
    scores = metric(model, x, y, np.random.default_rng(8).random(x.shape))
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
    assert scores[0] > 0.8 and len(metric.results) == 6


def test_metric_class_conventions():
    for cls, direction in ((qr.ROAR, "lower"), (qr.KAR, "higher"),
                           (qr.ROARNoRetrain, "lower"), (qr.KARNoRetrain, "higher")):
        assert issubclass(cls, quantus.Metric)
        assert cls.score_direction.value.lower() == direction
        assert cls.evaluation_category == quantus.helpers.enums.EvaluationCategory.FAITHFULNESS
        assert quantus.helpers.enums.ModelType.TORCH in cls.model_applicability
        assert "References" in cls.__doc__
    assert math.isclose(normalised_auc([10], [0.5]), 0.5)


_PUBLIC_METRICS = (qr.ROAR, qr.KAR, qr.ROARNoRetrain, qr.KARNoRetrain, qr.MaskLeakage,
                   qr.ModelRandomisation, qr.DataRandomisation)


@pytest.mark.parametrize("cls", _PUBLIC_METRICS, ids=lambda c: c.__name__)
def test_quantus_interpret_scores_prints_the_interpretation(cls, capsys):
    metric = cls(disable_warnings=True)
    quantus.Metric.interpret_scores(metric)  # Quantus' own method, not an override
    printed = capsys.readouterr().out.strip()
    assert printed == cls.interpretation
    direction = "Lower" if cls.score_direction.value.lower() == "lower" else "Higher"
    assert printed.startswith(f"{direction} is better")
    assert cls.name in cls.__init__.__doc__ and "References" in cls.__init__.__doc__


def test_human_readable_names_and_shared_signatures():
    names = [cls.name for cls in _PUBLIC_METRICS]
    assert len(set(names)) == len(names) and all(" " in n for n in names)
    # ROAR and KAR get an __init__ each (for their docstrings) with the shared signature.
    assert qr.ROAR.__init__ is not qr.KAR.__init__
    assert inspect.signature(qr.ROAR.__init__) == inspect.signature(qr.KAR.__init__)
    assert "n_retrains" in inspect.signature(qr.ROAR.__init__).parameters
    with pytest.raises(ValueError, match="did you mean 'n_retrains'"):
        qr.ROAR(n_retrain=3)


def test_aggregate_func_default_is_the_function_applied():
    assert qr.ROAR(disable_warnings=True).aggregate_func is normalised_auc
    assert qr.ROARNoRetrain(disable_warnings=True).aggregate_func is normalised_auc
    assert qr.ModelRandomisation(disable_warnings=True).aggregate_func is np.mean
    assert qr.KAR(aggregate_func=np.median, disable_warnings=True).aggregate_func is np.median


def test_plot_writes_png(tmp_path, digits_model):
    import matplotlib

    matplotlib.use("Agg")
    model, x, y, _ = digits_model
    metric = _quiet(qr.ROARNoRetrain, (30, 60))
    with pytest.raises(RuntimeError, match="no results"):
        metric.plot(show=False)
    metric(model, x, y, np.random.default_rng(9).random(x.shape))
    path = tmp_path / "curve.png"
    fig = metric.plot(show=False, path_to_save=str(path))
    assert path.stat().st_size > 1000 and fig.axes[0].get_ylabel() == "test accuracy"


def test_unknown_keywords_are_named_with_the_closest_match_and_never_their_values():
    with pytest.raises(ValueError, match=r"in ROAR: 'n_retrain' \(did you mean 'n_retrains'\?\)"):
        qr.ROAR(n_retrain=5)
    with pytest.raises(ValueError, match=r"in ModelRandomisation: 'imputer'\. It takes abs,"):
        qr.ModelRandomisation(imputer="zero")  # the removal shortcuts are the removal metrics'
    metric = qr.ROARNoRetrain(percentages=(50,), disable_warnings=True)
    x = np.zeros((6, 1, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError) as err:
        metric(qr.SmallCNN(), x, np.arange(6) % 3, x, x_test=x + 123.25)  # ROAR's, not ours
    assert "'x_test'" in str(err.value) and "123.25" not in str(err.value)
    with pytest.raises(ValueError, match=r"'explain_fnc' \(did you mean 'explain_func'\?\)"):
        metric(qr.SmallCNN(), x, np.arange(6) % 3, x, explain_fnc=qr.explain)
