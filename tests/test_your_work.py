"""The runner takes the user's own explain functions, retrainer, recipe, model and data."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch

import quantus_roar as qr
from quantus_roar.benchmark import RunConfig, run
from quantus_roar.benchmark.config import file_name
from quantus_roar.benchmark.datasets import BenchmarkData, DatasetError
from quantus_roar.benchmark.specs import probe_explainers, recipe_retrainer
from quantus_roar.cli import main

pytestmark = pytest.mark.slow

SMALL = dict(percentages=(50,), retrains=1, epochs=2, device="cpu", sanity_samples=20)


def gradient_by_hand(model, inputs, targets, **kwargs):
    """An explain function of the user's: the signed gradient, computed with autograd."""
    x = torch.as_tensor(inputs).requires_grad_(True)
    out = model(x)
    out.gather(1, torch.as_tensor(targets).long()[:, None]).sum().backward()
    return x.grad.detach().numpy()


class CountingRetrainer:
    """A user's retrainer with only fit and score, counting its calls."""

    def __init__(self, epochs: int = 2):
        self.inner = qr.TorchRetrainer(model_fn=lambda: qr.SmallCNN(), epochs=epochs)
        self.epochs = epochs
        self.fits = 0

    def fit(self, x, y, *, seed):
        self.fits += 1
        return self.inner.fit(x, y, seed=seed)

    def score(self, model, x, y):
        return self.inner.score(model, x, y)


def _cells(out):
    with sqlite3.connect(out / "results.sqlite") as conn:
        rows = conn.execute("SELECT metric, estimator, param, seed, quantity, value "
                            "FROM cells").fetchall()
    return {r[:5]: r[5] for r in rows}


def test_own_explain_function_and_retrainer_from_python(tmp_path):
    retrainer = CountingRetrainer()
    cfg = RunConfig(**{**SMALL, "epochs": None}, estimators=("Gradient", "mine"),
                    explainers={"mine": gradient_by_hand}, retrainer=retrainer,
                    metrics=("roar-noretrain", "roar", "model-randomisation"),
                    similarities=("spearman",))
    run(cfg, tmp_path, progress=False)
    cells = _cells(tmp_path)
    # The user's function is the gradient: every deletion and sanity cell equals the
    # built-in Gradient's (an independent computation of the same map).
    mine = {k[0:1] + k[2:]: v for k, v in cells.items() if k[1] == "mine"}
    ours = {k[0:1] + k[2:]: v for k, v in cells.items() if k[1] == "Gradient"}
    deletion = {k: v for k, v in mine.items() if k[0] != "roar"}
    assert deletion and all(v == pytest.approx(ours[k], abs=1e-6) for k, v in deletion.items())
    assert np.allclose(np.load(tmp_path / "attributions" / "mine.test.npy"),
                       np.load(tmp_path / "attributions" / "Gradient.test.npy"), atol=1e-6)
    # The retrainer trained the explained model, the baseline, one retrain per estimator
    # and the sanity checks' ceiling model.
    assert retrainer.fits == 1 + 1 + 2 + 1
    assert ("roar", "mine", "50", 0, "accuracy") in cells
    report = (tmp_path / "report.md").read_text()
    assert "| mine" in report
    with sqlite3.connect(tmp_path / "results.sqlite") as conn:
        meta = json.loads(conn.execute("SELECT value FROM meta WHERE key='run'").fetchone()[0])
    assert meta["explainers"] == {"mine": "test_your_work:gradient_by_hand"}
    assert meta["retrainer"]["object"] == "test_your_work:CountingRetrainer"
    assert meta["retrainer"]["epochs"] == 2
    assert "# explainers" in (tmp_path / "config.toml").read_text()


def test_own_explain_function_and_recipe_from_the_command_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "mine_expl.py").write_text(
        "import quantus_roar as qr\n\n"
        "def grad(model, inputs, targets, device=None):\n"
        "    return qr.explain(model, inputs, targets, method='Gradient', device=device)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    code = main(["run", "--estimators", "Gradient,mine_expl:grad", "--metrics",
                 "roar-noretrain,model-randomisation",
                 "--percentages", "30,70", "--retrains", "1", "--epochs", "2", "--device", "cpu",
                 "--schedule", "cosine", "--weight-decay", "0.0001", "--no-progress",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    cells = _cells(out)
    for p in ("0", "30", "70"):
        assert cells[("roar-noretrain", "mine_expl:grad", p, 0, "accuracy")] == \
            cells[("roar-noretrain", "Gradient", p, 0, "accuracy")]
    assert (out / "attributions" / f"{file_name('mine_expl:grad')}.test.npy").is_file()
    assert "mine_expl:grad" in (out / "report.md").read_text()
    toml = (out / "config.toml").read_text()
    assert 'schedule = "cosine"' in toml and "weight_decay = 0.0001" in toml


def test_recipe_settings_reach_the_retrainer():
    cfg = RunConfig(schedule="none", weight_decay=1e-4, momentum=0.5, optimizer="sgd",
                    label_smoothing=0.1, validation_split=0.2, batch_size=32, lr=0.05)
    r = recipe_retrainer(cfg, lambda: qr.SmallCNN(), torch.device("cpu"))
    assert (r.schedule, r.weight_decay, r.momentum, r.optimizer, r.label_smoothing,
            r.validation_split, r.batch_size, r.lr) == (None, 1e-4, 0.5, "sgd", 0.1, 0.2, 32,
                                                        0.05)
    assert RunConfig().recipe() == {}


@pytest.mark.parametrize("kwargs, match", [
    ({"estimators": ("nope:missing",)}, r"Cannot import the module of the explain function"),
    ({"explainers": {"Gradient": gradient_by_hand}}, r"reuses the built-in name"),
    ({"explainers": {"x": 5}}, r"'explainers' setting must be a dict of names"),
    ({"retrainer": qr.TorchRetrainer}, r"'retrainer' setting must be a retrainer instance"),
    ({"retrainer": CountingRetrainer(), "lr": 0.1}, r"replaces the recipe.*\['epochs', 'lr'\]"),
    ({"momentum": 1.5}, r"'momentum' setting must be a finite number in \[0, 1\)"),
    ({"schedule": "linear"}, r"'schedule' setting must be one of"),
    ({"augment": 5}, r"'augment' setting must be"),
])
def test_bad_own_work_is_one_clear_error_before_the_folder_is_touched(tmp_path, kwargs, match):
    out = tmp_path / "out"
    with pytest.raises((ValueError, TypeError), match=match):
        run(RunConfig(**{**SMALL, **kwargs}), out, progress=False)
    assert not out.exists()


def test_an_explain_function_returning_the_wrong_shape_is_named(tmp_path):
    retrainer = CountingRetrainer()
    cfg = RunConfig(**{**SMALL, "epochs": None}, estimators=("flat",),
                    metrics=("roar-noretrain",), retrainer=retrainer,
                    explainers={"flat": lambda model, inputs, targets: np.ones(len(inputs))})
    with pytest.raises(ValueError, match=r"^The explain function 'flat' failed on 2 samples: "
                       r"ValueError: .*'flat' returned shape \(2,\)"):
        run(cfg, tmp_path / "out", progress=False)
    assert retrainer.fits == 0 and not (tmp_path / "out").exists()
    nan = RunConfig(**SMALL, estimators=("nan",), metrics=("roar-noretrain",),
                    explainers={"nan": lambda model, inputs, targets: np.full(inputs.shape,
                                                                               np.nan)})
    with pytest.raises(ValueError, match=r"^The explain function 'nan' failed on 2 samples: "
                       "ValueError: .*NaN or inf"):
        run(nan, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_the_probe_of_explain_functions_leaves_every_random_state_and_skips_builtins(
        monkeypatch):
    import random

    import quantus_roar.benchmark.specs as specs

    seen = []

    def noisy(model, inputs, targets):
        seen.append((inputs.shape, targets.tolist(), model.training))
        np.random.rand()  # noqa: NPY002 - the global generator, on purpose
        random.random()
        return torch.rand(inputs.shape).numpy()

    def builtin(*args, **kwargs):
        raise AssertionError("a built-in estimator was probed")

    monkeypatch.setattr(specs, "explain", builtin)
    data = BenchmarkData.from_arrays("tiny", *qr.load_digits_data(seed=0))
    cfg = RunConfig(estimators=("Gradient", "noisy"), explainers={"noisy": noisy},
                    target="label")
    torch.manual_seed(3)
    np.random.seed(3)  # noqa: NPY002
    random.seed(3)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(),  # noqa: NPY002
              random.getstate())
    probe_explainers(cfg, data, lambda: qr.SmallCNN(), torch.device("cpu"))
    assert seen == [((2, 1, 8, 8), data.y_test[:2].tolist(), False)]
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1])  # noqa: NPY002
    assert random.getstate() == states[2]


def _brightness(model, inputs, targets, **kwargs):
    """Another map: the brightest pixels first."""
    return np.asarray(inputs, dtype=np.float32).copy()


def test_estimator_names_that_sanitise_alike_keep_their_own_attributions(tmp_path):
    assert file_name("Gradient") == "Gradient"
    assert file_name("GuidedBackprop_SmoothGrad") == "GuidedBackprop_SmoothGrad"
    assert file_name("mine-a") == "mine-a"
    assert file_name("mine a") == "mine-a-" + __import__("hashlib").sha256(
        b"mine a").hexdigest()[:8]
    assert file_name("pkg.mod:fn").startswith("pkg.mod-fn-")
    assert len(file_name("x" * 500)) < 120 and file_name("x" * 500) != file_name("x" * 501)
    common = dict(SMALL, metrics=("roar-noretrain",), percentages=(30, 70))
    both = RunConfig(**common, explainers={"mine a": gradient_by_hand,
                                           "mine-a": _brightness},
                     estimators=("mine a", "mine-a"))
    run(both, tmp_path / "both", progress=False)
    files = sorted(p.name for p in (tmp_path / "both" / "attributions").iterdir())
    assert files == sorted([f"{file_name('mine a')}.test.npy", "mine-a.test.npy"])
    cells = _cells(tmp_path / "both")
    first = {k[0:1] + k[2:]: v for k, v in cells.items() if k[1] == "mine a"}
    second = {k[0:1] + k[2:]: v for k, v in cells.items() if k[1] == "mine-a"}
    assert first.keys() == second.keys()
    assert any(first[k] != second[k] for k in first if k[1] != "0")
    for name, fn, mine in (("mine a", gradient_by_hand, first),
                           ("mine-a", _brightness, second)):
        alone = RunConfig(**common, explainers={name: fn}, estimators=(name,))
        run(alone, tmp_path / name, progress=False)
        assert {k[0:1] + k[2:]: v for k, v in _cells(tmp_path / name).items()} == mine, name
    with pytest.raises(ValueError, match=r"'Mine' and 'mine' would share one attributions"):
        RunConfig(explainers={"Mine": gradient_by_hand, "mine": _brightness})


def test_own_arrays_and_model_factory(tmp_path):
    x_tr, y_tr, x_te, y_te = qr.load_digits_data(seed=0)
    data = BenchmarkData.from_arrays("my digits", x_tr[:600], y_tr[:600], x_te, y_te)
    built = []

    def factory(in_channels, n_classes, image_size):
        built.append((in_channels, n_classes, image_size))
        return qr.SmallCNN(in_channels=in_channels, n_classes=n_classes, image_size=image_size)

    cfg = RunConfig(**SMALL, dataset=data, model=factory, estimators=("Random",),
                    metrics=("roar-noretrain",))
    run(cfg, tmp_path, progress=False)
    assert built[0] == (1, 10, 8)
    with sqlite3.connect(tmp_path / "results.sqlite") as conn:
        meta = json.loads(conn.execute("SELECT value FROM meta WHERE key='run'").fetchone()[0])
    assert meta["dataset"] == "arrays:my digits" and meta["model"].endswith("factory")
    with pytest.raises(DatasetError, match="at least two training classes"):
        BenchmarkData.from_arrays("one", x_tr[:10], np.zeros(10, int), x_te, y_te)
    with pytest.raises(DatasetError, match=r"NaN or infinite"):
        BenchmarkData.from_arrays("nan", np.full_like(x_tr[:600], np.nan), y_tr[:600], x_te, y_te)
