"""The trio table: sanity verdicts against floor and ceiling, Quantus' PixelFlipping
against an independent computation, and one row per estimator of a real run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from quantus_roar.benchmark import RunConfig, run
from quantus_roar.benchmark.trio import randomisation_verdict, trio_table
from quantus_roar.benchmark.units import _features_in_step, pixel_flipping_auc


def test_verdicts_compare_intervals_with_floor_and_ceiling():
    ceiling = (0.6, 0.55, 0.65)
    assert randomisation_verdict((0.2, 0.15, 0.25), (0.1, 0.05, 0.15), ceiling) == "pass"
    # overlapping the ceiling's interval: no more change than retraining gives
    assert randomisation_verdict((0.5, 0.45, 0.56), (0.1, 0.05, 0.15), ceiling) == "fail"
    assert randomisation_verdict((0.62, 0.6, 0.64), (0.1, 0.05, 0.15), ceiling) == "fail"
    # an untrained model's map is as similar as a retrained one's: the check cannot tell
    assert randomisation_verdict((0.2, 0.15, 0.25), (0.5, 0.45, 0.56), ceiling).startswith(
        "cannot tell")
    assert randomisation_verdict((0.2, 0.15, 0.25), None, None).startswith("n/a")
    # below the ceiling, but a fresh network's map is already 70 % as similar as a retrained
    # one's: the map changed, yet depends little on any model
    assert randomisation_verdict((0.45, 0.44, 0.46), (0.42, 0.41, 0.43), ceiling) == (
        "pass, input-dominated (floor 70% of ceiling)")
    assert randomisation_verdict((0.2, 0.15, 0.25), (0.29, 0.28, 0.30), ceiling) == "pass"
    nan = float("nan")
    assert randomisation_verdict((nan, nan, nan), (0.1, 0.05, 0.15), ceiling).startswith("n/a")


def test_features_in_step_divides_the_image_and_comes_closest_to_64_steps():
    # (H x W, C x H x W, steps): Quantus needs a divisor of H x W and steps over C x H x W
    for hw, chw, steps in ((64, 64, 64), (1024, 1024, 64), (1024, 3072, 48), (784, 784, 56),
                           (97, 97, 97), (10, 10, 10), (64, 192, 48)):
        f = _features_in_step(hw, chw)
        assert hw % f == 0 and chw // f == steps, (hw, chw, f)


def test_pixel_flipping_runs_on_rgb_with_one_channel_attributions():
    rng = np.random.default_rng(1)
    x = rng.random((6, 3, 8, 8)).astype(np.float32)
    a = np.broadcast_to(rng.standard_normal((6, 1, 8, 8)), x.shape).astype(np.float32)
    model = _Linear(torch.as_tensor(rng.standard_normal((192, 4)), dtype=torch.float32))
    auc = pixel_flipping_auc(model.eval(), x, np.arange(6) % 4, a, torch.device("cpu"))
    assert auc.shape == (6,) and np.all((auc >= 0) & (auc <= 1))


def test_a_pixel_flipping_failure_is_stored_as_nan_and_the_run_goes_on(tmp_path, monkeypatch,
                                                                        caplog):
    from quantus_roar.benchmark import units

    def fails(*args, **kwargs):
        raise AssertionError("Quantus cannot take this")

    monkeypatch.setattr(units, "pixel_flipping_auc", fails)
    cfg = RunConfig(estimators=("Gradient",), metrics=("pixel-flipping", "roar-noretrain"),
                    percentages=(50,), epochs=2, sanity_samples=20)
    with caplog.at_level("WARNING", logger="quantus_roar.benchmark"):
        run(cfg, tmp_path, progress=False, executor="local")
    assert "Quantus cannot take this" in caplog.text
    df = pd.read_csv(tmp_path / "results.csv")
    pf = df[df.metric == "pixel-flipping"]
    assert sorted(pf.quantity) == ["auc", "auc.hi", "auc.lo"] and pf.value.isna().all()
    assert not df[df.metric == "roar-noretrain"].value.isna().any()  # the rest is computed


class _Linear(nn.Module):
    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return x.flatten(1) @ self.w


def test_pixel_flipping_auc_agrees_with_a_direct_computation():
    rng = np.random.default_rng(0)
    x = rng.random((5, 1, 4, 4)).astype(np.float32)
    a = rng.standard_normal((5, 1, 4, 4)).astype(np.float32)
    t = np.array([0, 1, 2, 0, 1])
    w = torch.as_tensor(rng.standard_normal((16, 3)), dtype=torch.float32)
    model = _Linear(w).eval()
    got = pixel_flipping_auc(model, x, t, a, torch.device("cpu"))
    want = []
    for xi, ai, ti in zip(x.reshape(5, -1), a.reshape(5, -1), t, strict=True):
        cur, curve = xi.copy(), []
        for j in np.argsort(-np.abs(ai), kind="stable"):  # 16 features: one per step
            cur[j] = cur.mean()  # Quantus' "mean": of the image as perturbed so far
            p = torch.softmax(torch.as_tensor(cur) @ w, 0)[ti]
            curve.append(float(p))
        want.append(np.trapezoid(curve, dx=1 / (len(curve) - 1)))
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.slow
def test_the_trio_has_a_row_per_estimator_with_every_benchmark(tmp_path):
    cfg = RunConfig(estimators=("Gradient", "PruneGrad", "Random"), percentages=(50,),
                    retrains=1, epochs=3, sanity_samples=40, max_epochs=12)
    run(cfg, tmp_path, progress=False, executor="local")
    report = (tmp_path / "report.md").read_text()
    assert "## The three benchmarks side by side" in report
    df = pd.read_csv(tmp_path / "results.csv", dtype={"param": str})
    pf = df[(df.metric == "pixel-flipping") & (df.quantity == "auc")]
    assert sorted(pf.estimator) == ["Gradient", "PruneGrad", "Random"]
    assert pf.value.between(0, 1).all()
    from quantus_roar.benchmark.report import _read_store

    df2, run_meta, layers, _, _ = _read_store(tmp_path)
    table = trio_table(df2, run_meta, ["Gradient", "PruneGrad", "Random"],
                       layers[0], 0.1)  # top_down: the input layer is randomised last
    assert list(table["estimator"]) == ["Gradient", "PruneGrad", "Random"]
    random = table.set_index("estimator").loc["Random"]
    assert random["MR verdict"] == "n/a"  # model-free: no sanity check
    for e in ("Gradient", "PruneGrad"):
        row = table.set_index("estimator").loc[e]
        assert row["MR verdict"] in ("pass", "fail") or row["MR verdict"].startswith("cannot")
        assert "[" in row["ROAR AUC"] and "[" in row["PixelFlipping AUC (Quantus)"]
