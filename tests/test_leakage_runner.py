"""The runner with mask leakage and the leakage controls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantus_roar.benchmark import ResultStore, RunConfig, run
from quantus_roar.benchmark.config import file_name
from quantus_roar.data import load_digits_data
from quantus_roar.explainers import FixedPrior

pytestmark = pytest.mark.slow

CONTROLS = ("Random", "BlurredRandom", "InputMagnitude", "FixedPrior(Gradient)")


@pytest.fixture(scope="module")
def leakage_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("leakage")
    cfg = RunConfig(estimators=("Gradient", *CONTROLS), metrics=("roar", "mask-leakage"),
                    percentages=(30, 70), retrains=1, epochs=6, device="cpu")
    run(cfg, out, progress=False)
    with ResultStore.open_existing(out) as store:
        df, chance = store.frame(), store.get_meta("chance")
    return out, df, chance


def test_every_leakage_cell_is_stored_and_chance_is_the_majority_class(leakage_run):
    out, df, chance = leakage_run
    leak = df[df.metric == "mask-leakage"]
    assert sorted(set(zip(leak.estimator, leak.param, strict=True))) == sorted(
        (e, p) for e in ("Gradient", *CONTROLS) for p in ("30", "70"))
    _, y_tr, _, y_te = load_digits_data(seed=0)
    assert chance == pytest.approx(np.mean(y_te == np.bincount(y_tr).argmax()))
    csv = pd.read_csv(out / "results.csv")
    assert (csv.metric == "mask-leakage").sum() == len(leak)


def test_masks_that_carry_no_class_information_stay_near_chance(leakage_run):
    _, df, chance = leakage_run
    leak = df[df.metric == "mask-leakage"].set_index(["estimator", "param"])["value"]
    for control in ("Random", "BlurredRandom", "FixedPrior(Gradient)"):
        for p in ("30", "70"):
            assert abs(leak[(control, p)] - chance) < 0.1, (control, p, leak[(control, p)])
    # Gradient's masks follow the digit's strokes: they tell the class.
    assert leak[("Gradient", "30")] > chance + 0.3


def test_fixed_prior_is_the_mean_gradient_map_for_every_image(leakage_run):
    out, _, _ = leakage_run
    a_grad = np.load(out / "attributions" / "Gradient.train.npy")
    prior = np.load(out / "attributions" / f"{file_name('FixedPrior(Gradient)')}.test.npy")
    assert (prior == prior[:1]).all()
    expected = FixedPrior.from_attributions(a_grad, seed=0)(None, prior[:1], [0])
    np.testing.assert_array_equal(prior[:1], expected)


def test_the_report_shows_leakage_beside_roar_with_a_verdict(leakage_run):
    out, _, chance = leakage_run
    text = (out / "report.md").read_text()
    assert "## Mask leakage" in text and f"{chance:.3f}" in text
    section = text.split("## Mask leakage")[1]
    assert "| Gradient |" in section and "masks predict the class" in section
    assert "Pearson r" in section
    for control in ("Random", "BlurredRandom"):
        row = next(line for line in section.splitlines() if line.startswith(f"| {control} |"))
        assert "within 0.10 of chance" in row
