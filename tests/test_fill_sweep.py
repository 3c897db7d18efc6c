"""A run over several imputers: keyed cells, per-fill rankings, resume after SIGKILL."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from killing import kill_after_first_cell

from quantus_roar.benchmark import ResultStore, RunConfig
from quantus_roar.benchmark.config import file_name
from quantus_roar.benchmark.report import fill_agreement
from quantus_roar.cli import main
from quantus_roar.curves import deletion_curve
from quantus_roar.data import load_digits_data
from quantus_roar.removal import Removal, channel_means
from quantus_roar.splits import Split

pytestmark = pytest.mark.slow

FILLS = ("channel_mean", "zero", "noisy_linear")
ARGS = ["--no-progress", "--device", "cpu", "--estimators", "Gradient,Random,InputMagnitude",
        "--metrics", "roar,roar-noretrain", "--percentages", "30,70", "--retrains", "1",
        "--epochs", "2", "--imputers", ",".join(FILLS)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    assert main(["run", "--out", str(out), *ARGS]) == 0
    return out


def _csv(out):
    return pd.read_csv(out / "results.csv").drop(columns="wall_s")


def test_every_filled_cell_is_keyed_by_its_imputer(sweep):
    df = _csv(sweep)
    assert set(df.metric) == {"baseline", *(f"{m}@{f}" for m in ("roar", "roar-noretrain")
                                            for f in FILLS)}
    per_fill = df[df.metric.str.startswith("roar@")].groupby("metric").size()
    assert (per_fill == 3 * 2).all() and len(per_fill) == 3  # estimators x percentages
    # Each fill's deletion numbers are those of deletion_curve with that imputer.
    x_tr, _, x_te, y_te = load_digits_data(seed=0)
    a = np.load(sweep / "attributions" / f"{file_name('Gradient')}.test.npy")
    for fill in FILLS:
        ref = deletion_curve(_model(sweep), Split(x_te, y_te, a, len(x_tr)), (30, 70),
                             removal=Removal(imputer=fill), stats=channel_means(x_tr),
                             batch_size=256)
        got = df[(df.metric == f"roar-noretrain@{fill}") & (df.estimator == "Gradient")
                 & (df.quantity == "accuracy")]
        got = got.set_index(got.param.astype(float))["value"]
        for row in ref.itertuples():
            assert got[row.percentage] == pytest.approx(row.accuracy, abs=1e-12), fill


def _model(out):
    from quantus_roar.benchmark.context import _load_model
    from quantus_roar.models import SmallCNN

    return _load_model(SmallCNN(), out / "cache" / "model.npz")


def test_the_report_ranks_per_fill_and_compares_the_rankings(sweep):
    text = (sweep / "report.md").read_text()
    for fill in FILLS:
        assert f"## ROAR (remove and retrain), fill `{fill}`" in text
    assert "## ROAR: does the fill change the ranking?" in text
    with ResultStore.open_existing(sweep) as store:
        df = store.frame()
    ranks, pairs = fill_agreement(df, "roar", ["Gradient", "Random", "InputMagnitude"],
                                  list(FILLS))
    assert list(pairs["fills"]) == ["channel_mean / zero", "channel_mean / noisy_linear",
                                    "zero / noisy_linear"]
    assert pairs["Spearman rho"].between(-1, 1).all()
    assert sorted(ranks.columns) == sorted(["estimator", *(f"rank {f}" for f in FILLS)])


def test_a_sweep_killed_with_sigkill_resumes_to_identical_results(sweep, tmp_path):
    out = tmp_path / "killed"
    kill_after_first_cell(["run", "--out", str(out), *ARGS], out)
    with ResultStore.open_existing(out) as store:
        assert 0 < len(store.done()) < store.get_meta("expected_cells")
    assert main(["run", "--out", str(out), *ARGS]) == 0
    pd.testing.assert_frame_equal(_csv(out), _csv(sweep), check_exact=True)


def test_imputers_and_imputer_must_agree():
    assert RunConfig(imputers=("zero", "blur")).fills == ("zero", "blur")
    assert RunConfig(imputer="zero", imputers=("zero", "blur")).metric_removal(
        "kar@blur").imputer.name == "blur"
    with pytest.raises(ValueError, match=r"'imputer' setting \('zero'\) and the 'imputers'"):
        RunConfig(imputer="zero", imputers=("blur", "zero"))
    with pytest.raises(ValueError, match=r"Unknown imputer\(s\) \['mean'\]"):
        RunConfig(imputers=("mean",))
    with pytest.raises(ValueError, match="more than once"):
        RunConfig(imputers=("zero", "zero"))
    assert "imputers" not in RunConfig().to_dict()  # earlier fingerprints stay valid
