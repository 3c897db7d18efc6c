"""The benchmark runner: CLI, result store, resume, refusal, report, datasets, streaming."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from killing import kill_after_first_cell

from quantus_roar import explain
from quantus_roar.benchmark import (
    ConfigMismatchError,
    ResultStore,
    RunConfig,
    build_report,
    run,
)
from quantus_roar.benchmark.runner import derived_seed
from quantus_roar.cli import main
from quantus_roar.curves import deletion_curve, retrain_curve, unmodified_point
from quantus_roar.data import load_digits_data
from quantus_roar.executors import one_thread
from quantus_roar.explainers import predicted_classes
from quantus_roar.models import SmallCNN
from quantus_roar.removal import Removal, channel_means
from quantus_roar.retrain import TorchRetrainer
from quantus_roar.splits import Split
from quantus_roar.stats import N_BOOT, sample_counts, seed_weights

pytestmark = pytest.mark.slow

# A small grid that still has every kind of unit: retrains, deletion, both sanity checks.
SMALL = dict(estimators=("Gradient", "Random"), percentages=(50,), retrains=2,
             metrics=("roar", "kar", "roar-noretrain", "model-randomisation",
                      "data-randomisation"),
             sanity_samples=40, max_epochs=24, min_train_accuracy=0.5, device="cpu")


def _values(out: Path) -> pd.DataFrame:
    with ResultStore.open_existing(out) as store:
        df = store.frame()
    return df.set_index(["metric", "estimator", "param", "seed", "quantity"])["value"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    run(RunConfig(**SMALL), out, progress=False)
    return out


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quick")
    assert main(["run", "--quick", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    return out


# --------------------------------------------------------------------------- end to end


def test_quick_run_writes_the_report_and_report_rebuilds_identical_tables(quick, capsys):
    for name in ("report.md", "results.csv", "config.toml", "results.sqlite",
                 "figures/curves.png", "figures/examples.png", "figures/model_randomisation.png"):
        assert (quick / name).is_file(), name
    with ResultStore.open_existing(quick) as store:
        expected = store.get_meta("expected_cells")
        df = store.frame()
    # 4 estimators: baseline 2 + random-label models 1 + per estimator
    # (deletion 2 x 4 + Quantus' pixel flipping 1 + retrains 2 x 3 x 2 + mask leakage 3 x 2)
    # + for the two that use the model (Random and Sobel do not: no sanity checks) model
    # rand. 5 + data rand. 3
    assert expected == 2 + 1 + 4 * (2 * 4 + 1 + 2 * 3 * 2 + 3 * 2) + 2 * (5 + 3)
    assert len(df.groupby(["metric", "estimator", "param", "seed"])) == expected
    report = (quick / "report.md").read_text()
    csv = (quick / "results.csv").read_text()
    for heading in ("## ROAR", "## KAR", "## ROAR with and without retraining",
                    "## Model randomisation", "## Data randomisation",
                    "## The three benchmarks side by side"):
        assert heading in report
    os.remove(quick / "report.md")
    assert main(["report", str(quick)]) == 0
    assert (quick / "report.md").read_text() == report
    assert (quick / "results.csv").read_text() == csv
    assert "report:" in capsys.readouterr().out


def test_results_csv_has_one_row_per_cell_and_quantity(quick):
    df = pd.read_csv(quick / "results.csv", dtype={"param": str})
    assert not df.duplicated(["metric", "estimator", "param", "seed", "quantity"]).any()
    roar = df[(df.metric == "roar") & (df.estimator == "Random")]
    assert sorted(roar.param.unique(), key=float) == ["10", "50", "90"]
    assert sorted(roar.seed.unique()) == [0, 1]
    assert roar["value"].between(0, 1).all()


def test_report_tables_agree_with_the_stored_values(quick):
    from quantus_roar.benchmark.report import curve_table, replicates

    with ResultStore.open_existing(quick) as store:
        df, samples = store.frame(), store.samples()
    table = curve_table(df, "roar", ["Gradient", "GuidedBackprop_SmoothGrad", "Random", "Sobel"],
                        replicates(samples))
    cell = df[(df.metric == "roar") & (df.estimator == "Sobel") & (df.param == "90")]["value"]
    row = table.set_index("estimator").loc["Sobel"]
    assert row["90%"].startswith(f"{cell.mean():.3f} [")
    # The interval: the stored per-sample results, resampled over test samples and seeds,
    # computed here from the definition (and the samples agree with the accuracies).
    correct = np.stack([samples[("roar", "Sobel", "90", s)] for s in (0, 1)])
    assert correct.mean(axis=1).tolist() == pytest.approx(cell.tolist(), abs=1e-12)
    counts = sample_counts(correct.shape[1], N_BOOT, 0)
    per_seed = counts @ correct.T.astype(float) / correct.shape[1]  # (B, seeds)
    mean = (seed_weights(2, N_BOOT, 0) * per_seed).sum(axis=1)
    lo, hi = np.percentile(mean, [2.5, 97.5])
    assert row["90%"] == f"{cell.mean():.3f} [{lo:.3f}, {hi:.3f}]"
    # ranks follow the AUC, lower first for ROAR
    aucs = table["AUC"].str.split(" ").str[0].astype(float)
    assert list(aucs) == sorted(aucs)
    assert table.set_index("estimator").loc["Random", "vs Random"] == "(control)"


# --------------------------------------------------------------------------- resume


class _Stop(Exception):
    pass


def test_resume_after_an_exception_recomputes_nothing_and_matches_an_uninterrupted_run(
        tmp_path, uninterrupted):
    out = tmp_path / "resumed"
    commits: list[list] = []

    def stop_after_three(cells):
        commits.append([c.key for c in cells])
        if len(commits) == 3:
            raise _Stop

    with pytest.raises(_Stop):
        run(RunConfig(**SMALL), out, progress=False, after_commit=stop_after_three)
    with ResultStore.open_existing(out) as store:
        stored = store.done()
    assert stored == {k for keys in commits for k in keys}
    assert not (out / "report.md").exists()

    summary = run(RunConfig(**SMALL), out, progress=False)
    assert summary.skipped == len(stored)
    assert not stored & set(summary.computed)
    resumed, reference = _values(out), _values(uninterrupted)
    assert not resumed.index.duplicated().any()
    pd.testing.assert_series_equal(resumed, reference, check_exact=True)

    again = run(RunConfig(**SMALL), out, progress=False)
    assert again.computed == [] and again.skipped == len(resumed.index.droplevel(-1).unique())


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_results(tmp_path, uninterrupted):
    out = tmp_path / "killed"
    args = ["run", "--out", str(out), "--no-progress", "--device", "cpu",
            "--estimators", ",".join(SMALL["estimators"]), "--percentages", "50",
            "--retrains", "2", "--metrics", ",".join(SMALL["metrics"])]
    cfg = tmp_path / "run.toml"
    cfg.write_text("[run]\nsanity_samples = 40\nmax_epochs = 24\nmin_train_accuracy = 0.5\n")
    args += ["--config", str(cfg)]
    kill_after_first_cell(args, out)
    with ResultStore.open_existing(out) as store:
        stored = store.done()
        expected = store.get_meta("expected_cells")
    assert 0 < len(stored) < expected

    assert main(args) == 0
    with ResultStore.open_existing(out) as store:
        df = store.frame()
    assert len(df.groupby(["metric", "estimator", "param", "seed"])) == expected
    pd.testing.assert_series_equal(_values(out), _values(uninterrupted), check_exact=True)


def test_a_different_config_in_the_same_folder_is_refused_and_fresh_starts_anew(
        tmp_path, capsys):
    out = tmp_path / "run"
    small = dict(estimators=("Random",), metrics=("roar-noretrain",), device="cpu")
    run(RunConfig(**small, percentages=(50,)), out, progress=False)
    with pytest.raises(ConfigMismatchError, match=r"percentages: \[50\] -> \[30\]"):
        run(RunConfig(**small, percentages=(30,)), out, progress=False)
    assert _values(out).index.get_level_values("param").unique().tolist() == ["0", "50"]
    code = main(["run", "--out", str(out), "--estimators", "Random", "--metrics",
                 "roar-noretrain", "--percentages", "30", "--no-progress", "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "holds results of another run" in err and "--fresh" in err

    run(RunConfig(**small, percentages=(30,)), out, progress=False, fresh=True)
    assert sorted(_values(out).index.get_level_values("param").unique()) == ["0", "30"]


# --------------------------------------------------------------------------- numbers


def test_runner_cells_equal_the_core_procedures_with_the_same_seeds(tmp_path):
    """ROAR / KAR cells against retrain_curve, deletion cells against deletion_curve."""
    cfg = RunConfig(estimators=("Gradient",), percentages=(30, 70), retrains=2,
                    metrics=("roar", "kar", "kar-noretrain"), device="cpu")
    run(cfg, tmp_path, progress=False, report=False)
    values = _values(tmp_path)

    x_tr, y_tr, x_te, y_te = load_digits_data(seed=0)
    with one_thread():  # the runner's thread policy: one torch thread
        model = TorchRetrainer(SmallCNN()).fit(x_tr, y_tr, seed=derived_seed(0, 1))
        # The runner explains the trained model's predicted classes.
        a_tr = explain(model, x_tr, predicted_classes(model, x_tr), method="Gradient")
        a_te = explain(model, x_te, predicted_classes(model, x_te), method="Gradient")
    np.testing.assert_array_equal(np.load(tmp_path / "attributions" / "Gradient.train.npy"),
                                  a_tr)
    # One model at a time: the ensemble groups of the two procedures differ in size.
    for metric, order in (("roar", "remove_top"), ("kar", "keep_top")):
        sequential = TorchRetrainer(SmallCNN(), ensemble=False)
        curve = retrain_curve(sequential, Split(x_tr, y_tr, a_tr), Split(x_te, y_te, a_te),
                              (30, 70), removal=Removal(order=order), n_retrains=2)
        unmodified = unmodified_point(order)  # 0 % removed, 100 % kept
        for row in curve[curve.percentage != unmodified].itertuples():
            stored = values[(metric, "Gradient", str(row.percentage), row.retrain, "accuracy")]
            assert abs(stored - row.accuracy) <= 0.02, (metric, row.percentage, row.retrain)
        base = curve[curve.percentage == unmodified]
        assert len(base) == 2
        for row in base.itertuples():
            assert values[("baseline", "-", "0", row.retrain, "accuracy")] == pytest.approx(
                row.accuracy, abs=0.02)
    ref = deletion_curve(model, Split(x_te, y_te, a_te, len(x_tr)), (30, 70),
                         removal=Removal(order="keep_top"), stats=channel_means(x_tr),
                         batch_size=256)
    for row in ref.itertuples():
        assert values[("kar-noretrain", "Gradient", str(row.percentage), 0, "accuracy")] == (
            pytest.approx(row.accuracy, abs=1e-12))


def test_streamed_run_gives_the_in_memory_numbers(tmp_path):
    cfg = dict(estimators=("Gradient",), percentages=(50,), retrains=1, device="cpu",
               metrics=("roar", "roar-noretrain", "model-randomisation"), sanity_samples=30)
    run(RunConfig(**cfg), tmp_path / "memory", progress=False, report=False)
    run(RunConfig(**cfg, stream=True), tmp_path / "stream", progress=False, report=False)
    assert (tmp_path / "stream" / "cache" / "data" / "x_train.npy").is_file()
    mem, streamed = _values(tmp_path / "memory"), _values(tmp_path / "stream")
    assert mem.index.equals(streamed.index)
    retrained = mem.index.get_level_values("metric").isin(["roar", "baseline"])
    # deletion and sanity checks: the same computation chunk by chunk
    np.testing.assert_allclose(streamed[~retrained], mem[~retrained], atol=1e-9)
    # retraining: one model at a time through a DataLoader against the ensemble path
    np.testing.assert_allclose(streamed[retrained], mem[retrained], atol=0.02)


# --------------------------------------------------------------------------- config and CLI


def test_config_file_flags_and_quick_preset_combine(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[run]\nretrains = 3\npercentages = [20, 40]\nestimators = ["Sobel"]\n')
    cfg = RunConfig.from_toml(path, retrains=4)
    assert (cfg.retrains, cfg.percentages, cfg.estimators) == (4, (20, 40), ("Sobel",))
    quick = RunConfig.from_toml(path, quick=True)
    assert quick.sanity_samples == RunConfig.quick().sanity_samples and quick.retrains == 3
    assert RunConfig.from_toml(tmp_path / "c.toml").to_toml() == cfg.__class__(
        retrains=3, percentages=(20, 40), estimators=("Sobel",)).to_toml()
    back = tmp_path / "back.toml"
    back.write_text(cfg.to_toml())
    assert RunConfig.from_toml(back) == cfg


@pytest.mark.parametrize("kwargs, match", [
    ({"estimators": ("Saliency",)}, "Unknown estimator"),
    ({"metrics": ("roar", "pixelflipping")}, "Unknown metric"),
    ({"percentages": (0, 50)}, "percentages"),
    ({"percentages": (50, 120)}, "percentages"),
    ({"retrains": 0}, "'retrains' setting must be a positive integer"),
    ({"similarities": ("pearson",)}, "Unknown similarity"),
    ({"imputer": "mean"}, "'imputer' setting must be one of"),
])
def test_bad_settings_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**kwargs)


def test_checked_settings_keep_the_types_the_fingerprint_saw():
    # integer settings are stored as ints; number settings as given (1 stays 1, not 1.0),
    # so checking them leaves every earlier run's fingerprint as it was
    cfg = RunConfig(retrains=np.int64(3), seed=np.uint32(7), epochs=np.int16(2),
                    min_train_accuracy=1, lr=1, weight_decay=0, percentages=(10.0, 12.5))
    d = cfg.to_dict()
    assert [type(d[k]) for k in ("retrains", "seed", "epochs")] == [int, int, int]
    assert (d["min_train_accuracy"], d["lr"], d["weight_decay"]) == (1, 1, 0)
    assert [type(d[k]) for k in ("min_train_accuracy", "lr", "weight_decay")] == [int] * 3
    assert d["percentages"] == [10, 12.5] and type(d["percentages"][0]) is int
    with pytest.raises(TypeError, match=r"'momentum' setting must be a finite number in "
                                        r"\[0, 1\) \(or left out\)\. Got True"):
        RunConfig(momentum=True)
    with pytest.raises(ValueError, match=r"'optimizer' setting must be 'adam' or 'sgd'"):
        RunConfig(optimizer="rmsprop")


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RunConfig.from_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nretrain = 3\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['retrain'\]"):
        RunConfig.from_toml(bad)


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert main(["run", "--estimators", "Saliency", "--out", str(tmp_path)]) == 2
    assert "Unknown estimator" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "No results in" in capsys.readouterr().err
    assert main(["run", "--dataset", "mnist:" + str(tmp_path / "absent"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "train-images-idx3-ubyte" in err


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "quantus_roar", "run", "--help"],
                          capture_output=True, text=True, check=True)
    assert "--quick" in done.stdout and "--fresh" in done.stdout


def test_store_never_duplicates_and_rolls_back_a_failed_transaction(tmp_path):
    from quantus_roar.benchmark.store import Cell

    cells = [Cell("roar", "Gradient", "10", s, "accuracy", 0.5 + s, 1.0) for s in range(3)]
    with ResultStore(tmp_path) as store:
        assert store.add(cells, "fp") == 3
        assert store.add([*cells[:2], Cell("roar", "Gradient", "30", 0, "accuracy", 0.1, 1.0)],
                         "fp") == 1
        assert store.count() == 4
        with pytest.raises(sqlite3.IntegrityError), store._transaction() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES ('a', '1')")
            conn.execute("INSERT INTO meta (key, value) VALUES ('a', '2')")
        assert store.get_meta("a") is None
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_build_report_of_an_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No results in"):
        build_report(tmp_path)


def test_derived_seeds_are_distinct_and_stable():
    seeds = {derived_seed(0, k, s) for k in range(1, 8) for s in range(3)}
    assert len(seeds) == 21
    assert derived_seed(0, 1) == derived_seed(0, 1) != derived_seed(1, 1)


def test_verbose_logs_one_line_per_finished_cell(tmp_path, capsys):
    args = ["run", "--out", str(tmp_path), "--estimators", "Random,Sobel", "--metrics",
            "roar-noretrain", "--percentages", "30,60", "--no-progress", "--device", "cpu",
            "--verbose"]
    assert main(args) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("roar-noretrain")]
    assert len(lines) == 2 * 3  # two estimators x (0, 30, 60)
    assert any(" Sobel " in line and "60 seed 0: accuracy" in line
               and "true_class_score" in line for line in lines)
    assert main(args) == 0  # resumed: nothing left to compute, nothing logged
    assert not [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("roar-noretrain")]
