"""The benchmark report, on result stores written cell by cell (no training).

Every expected number is computed here from the cells written, with
``np.trapezoid`` and ``scipy.stats.ttest_rel``, not with the package's helpers.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from quantus_roar.benchmark import report
from quantus_roar.benchmark.report import (
    accuracies,
    build_report,
    curve_table,
    morf_lerf_agreement,
    noretrain_comparison,
)
from quantus_roar.benchmark.store import Cell, ResultStore
from quantus_roar.plotting import plot_curve
from quantus_roar.stats import N_BOOT, seed_weights

PS = (10, 50, 90)
FP = "test-fingerprint"


def _write(folder: Path, cells: list[Cell], **run: object) -> Path:
    with ResultStore(folder) as store:
        store.add(cells, FP)
        store.set_meta("run", {"estimators": ["Gradient", "Sobel", "Random"],
                               "percentages": list(PS), "similarities": ["spearman"],
                               "layer_order": "top_down", **run})
    return folder


def _frame(folder: Path) -> pd.DataFrame:
    with ResultStore.open_existing(folder) as store:
        return store.frame()


def _acc(metric: str, estimator: str, param: object, seed: int, value: float) -> Cell:
    return Cell(metric, estimator, str(param), seed, "accuracy", float(value), 1.0)


def _baseline(n: int) -> dict[int, float]:
    return {s: 0.95 - 0.01 * s for s in range(n)}


def _kar_values(n: int) -> dict[str, dict[int, list[float]]]:
    """Accuracies at 10/50/90 % kept per estimator and seed: Gradient well above Random."""
    rng = np.random.default_rng(0)
    return {"Gradient": {s: [0.6 + rng.uniform(0, 0.05), 0.8 + rng.uniform(0, 0.05),
                             0.9 + rng.uniform(0, 0.02)] for s in range(n)},
            "Random": {s: [0.2 + rng.uniform(0, 0.05), 0.4 + rng.uniform(0, 0.05),
                           0.7 + rng.uniform(0, 0.05)] for s in range(n)}}


def _kar_store(folder: Path, n: int, own_100: dict[int, float] | None = None) -> tuple:
    base = _baseline(n)
    values = _kar_values(n)
    cells = [_acc("baseline", "-", 0, s, v) for s, v in base.items()]
    for e, per_seed in values.items():
        for s, accs in per_seed.items():
            cells += [_acc("kar", e, p, s, a) for p, a in zip(PS, accs, strict=True)]
    for s, v in (own_100 or {}).items():
        cells.append(_acc("kar", "Gradient", 100, s, v))
    _write(folder, cells, retrains=n)
    return base, values


def _trapz_auc(x: list[float], y: list[float]) -> float:
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def _seed_interval(per_seed: list[float]) -> str:
    """The report's value and interval of a mean over seeds without per-sample results:
    its 95 % percentile interval over the seed resamples (an independent reference)."""
    w = seed_weights(len(per_seed), N_BOOT, 0)
    lo, hi = np.percentile(w @ np.asarray(per_seed), [2.5, 97.5])
    return f"{np.mean(per_seed):.3f} [{lo:.3f}, {hi:.3f}]"


# --------------------------------------------------------------------------- item 2: KAR at 100


def test_kar_puts_the_unmodified_retrain_at_100_kept_and_integrates_it_there(tmp_path):
    base, values = _kar_store(tmp_path, 3)
    acc = accuracies(_frame(tmp_path), "kar")
    grad = acc[acc["estimator"] == "Gradient"]
    assert sorted(grad["percentage"].unique()) == [10.0, 50.0, 90.0, 100.0]
    assert not (acc["percentage"] == 0).any()
    at_100 = grad[grad["percentage"] == 100].set_index("seed")["accuracy"]
    assert at_100.to_dict() == pytest.approx(base)

    aucs = [_trapz_auc([10, 50, 90, 100], [*values["Gradient"][s], base[s]]) for s in range(3)]
    row = curve_table(_frame(tmp_path), "kar", ["Gradient", "Random"]) \
        .set_index("estimator").loc["Gradient"]
    assert row["AUC"] == _seed_interval(aucs)
    assert row["unmodified"] == _seed_interval(list(base.values()))
    assert "0%" not in row.index and "100%" not in row.index


def test_roar_keeps_the_unmodified_retrain_at_0_removed(tmp_path):
    base = _baseline(3)
    roar = {s: [0.7 - 0.02 * s, 0.4, 0.15 + 0.01 * s] for s in range(3)}
    cells = [_acc("baseline", "-", 0, s, v) for s, v in base.items()]
    cells += [_acc("roar", "Gradient", p, s, a) for s, accs in roar.items()
              for p, a in zip(PS, accs, strict=True)]
    _write(tmp_path, cells, retrains=3)
    acc = accuracies(_frame(tmp_path), "roar")
    assert sorted(acc["percentage"].unique()) == [0.0, 10.0, 50.0, 90.0]
    assert acc[acc["percentage"] == 0].set_index("seed")["accuracy"].to_dict() \
        == pytest.approx(base)
    aucs = [_trapz_auc([0, 10, 50, 90], [base[s], *roar[s]]) for s in range(3)]
    row = curve_table(_frame(tmp_path), "roar", ["Gradient"]).iloc[0]
    assert row["AUC"] == _seed_interval(aucs)


def test_kar_with_its_own_cells_at_100_has_one_point_there_the_shared_baseline(tmp_path):
    base, _ = _kar_store(tmp_path, 3, own_100={0: 0.5, 1: 0.5, 2: 0.5})
    acc = accuracies(_frame(tmp_path), "kar")
    grad = acc[(acc["estimator"] == "Gradient") & (acc["percentage"] == 100)]
    assert sorted(grad["seed"]) == [0, 1, 2]
    assert grad.set_index("seed")["accuracy"].to_dict() == pytest.approx(base)
    assert not acc.duplicated(["estimator", "percentage", "seed"]).any()


@pytest.mark.parametrize("unmodified_param", ["0", "100"])
def test_kar_noretrain_unmodified_row_is_at_100_in_old_and_new_stores(tmp_path,
                                                                      unmodified_param):
    curves = {"Gradient": [0.98, 0.55, 0.8, 0.95], "Sobel": [0.98, 0.3, 0.7, 0.9],
              "Random": [0.98, 0.1, 0.4, 0.8]}  # unmodified, 10, 50, 90 % kept
    cells = []
    for e, (unmod, *accs) in curves.items():
        cells.append(_acc("kar-noretrain", e, unmodified_param, 0, unmod))
        cells += [_acc("kar-noretrain", e, p, 0, a) for p, a in zip(PS, accs, strict=True)]
    _write(tmp_path, cells, retrains=1)
    acc = accuracies(_frame(tmp_path), "kar-noretrain")
    assert sorted(acc["percentage"].unique()) == [10.0, 50.0, 90.0, 100.0]
    assert len(acc) == 3 * 4
    grad = acc[acc["estimator"] == "Gradient"].sort_values("percentage")
    assert grad["accuracy"].tolist() == pytest.approx([0.55, 0.8, 0.95, 0.98])


def test_kar_noretrain_with_both_labels_keeps_one_point_at_100(tmp_path):
    cells = [_acc("kar-noretrain", "Gradient", "0", 0, 0.97),
             _acc("kar-noretrain", "Gradient", "100", 0, 0.98),
             *(_acc("kar-noretrain", "Gradient", p, 0, a) for p, a in zip(PS, (0.5, 0.7, 0.9),
                                                                          strict=True))]
    _write(tmp_path, cells, retrains=1)
    acc = accuracies(_frame(tmp_path), "kar-noretrain")
    assert acc["percentage"].tolist() == [10.0, 50.0, 90.0, 100.0]
    assert acc["accuracy"].iloc[-1] == pytest.approx(0.98)  # the row labelled as now


def test_kar_noretrain_auc_in_the_comparison_integrates_the_kept_shares(tmp_path):
    n = 3
    base, values = _kar_store(tmp_path, n)
    nort = {"Gradient": [0.97, 0.5, 0.7, 0.9], "Random": [0.97, 0.1, 0.3, 0.6]}
    with ResultStore(tmp_path) as store:
        store.add([_acc("kar-noretrain", e, p, 0, a) for e, accs in nort.items()
                   for p, a in zip(("0", *PS), accs, strict=True)], FP)
    table, rho = noretrain_comparison(_frame(tmp_path), "kar", ["Gradient", "Random"])
    row = table.set_index("estimator").loc["Gradient"]
    point = _trapz_auc([10, 50, 90, 100], [0.5, 0.7, 0.9, 0.97])
    assert row["AUC no retrain"] == f"{point:.3f} [{point:.3f}, {point:.3f}]"  # one seed
    expected = np.mean([_trapz_auc([10, 50, 90, 100], [*values["Gradient"][s], base[s]])
                        for s in range(n)])
    assert float(row["AUC retrained"].split()[0]) == pytest.approx(expected, abs=5e-4)
    assert math.isnan(rho)  # two estimators: no rank correlation


# --------------------------------------------------------------------------- item 10: verdicts


def test_two_retrains_give_no_verdict_and_no_p_value(tmp_path):
    _kar_store(tmp_path, 2)
    table = curve_table(_frame(tmp_path), "kar", ["Gradient", "Random"]).set_index("estimator")
    assert table.loc["Gradient", "vs Random"] == "n/a (n = 2 retrains; ≥ 3 needed)"
    assert table.loc["Gradient", "p (Holm)"] == ""
    text = build_report(tmp_path).read_text()
    assert "| better than Random |" not in text
    assert "n = 2 retrains; ≥ 3 needed" in text
    assert "1 estimator(s) have fewer than 3 finished retrains paired with Random" in text


def test_five_retrains_a_clearly_better_estimator_is_better_than_random_after_holm(tmp_path):
    n = 5
    base, values = _kar_store(tmp_path, n)
    auc = {e: [_trapz_auc([10, 50, 90, 100], [*values[e][s], base[s]]) for s in range(n)]
           for e in values}
    assert min(auc["Gradient"]) > max(auc["Random"])  # the data are built that way
    table = curve_table(_frame(tmp_path), "kar", ["Gradient", "Random"]).set_index("estimator")
    assert table.loc["Gradient", "vs Random"] == "better than Random"  # KAR: higher AUC
    assert float(table.loc["Gradient", "p (Holm)"]) < 1e-6  # one test: Holm changes nothing
    effect = np.mean(auc["Gradient"]) - np.mean(auc["Random"])
    assert table.loc["Gradient", "ΔAUC vs Random"].startswith(f"{effect:+.3f} [")
    assert table.loc["Random", "vs Random"] == "(control)"
    assert (table.loc["Gradient", "rank"], table.loc["Random", "rank"]) == ("1", "2")
    text = build_report(tmp_path).read_text()
    assert "Holm-corrected over the 1 estimators" in text


def test_worse_and_undecided_estimators_and_every_verdict_is_defined_in_the_text(tmp_path):
    n = 4
    base = _baseline(n)
    random = {s: [0.3, 0.5, 0.75] for s in range(n)}
    # Sobel: worse than Random on every seed; IntegratedGradients: better on two seeds and
    # worse on two, by the same amount.
    sobel = {s: [0.2, 0.35, 0.6 + 0.01 * s] for s in range(n)}
    ig = {s: [0.3 + (0.02 if s % 2 else -0.02), 0.5, 0.75] for s in range(n)}
    cells = [_acc("baseline", "-", 0, s, v) for s, v in base.items()]
    for e, per_seed in (("Random", random), ("Sobel", sobel), ("IntegratedGradients", ig)):
        cells += [_acc("kar", e, p, s, a) for s, accs in per_seed.items()
                  for p, a in zip(PS, accs, strict=True)]
    _write(tmp_path, cells, retrains=n, estimators=["IntegratedGradients", "Sobel", "Random"])
    table = curve_table(_frame(tmp_path), "kar", ["IntegratedGradients", "Sobel", "Random"]) \
        .set_index("estimator")
    assert table.loc["Sobel", "vs Random"] == "worse than Random"
    assert table.loc["IntegratedGradients", "vs Random"] == "no evidence"
    assert float(table.loc["IntegratedGradients", "p (Holm)"]) >= 0.05
    # IG and Random cannot be told apart: their ranks overlap instead of a strict order.
    assert "-" in table.loc["IntegratedGradients", "rank"]

    text = build_report(tmp_path).read_text()
    section = text.split("## KAR (keep and retrain)")[1].split("| estimator")[0]
    for value in ("better than Random", "worse than Random", "no evidence", "n/a"):
        assert f"**{value}**" in section, value


def test_an_estimator_with_fewer_finished_seeds_gets_na_and_the_text_says_why(tmp_path):
    _kar_store(tmp_path, 5)
    with ResultStore(tmp_path) as store:  # Sobel: only 2 of the 5 retrains finished
        store.add([_acc("kar", "Sobel", p, s, 0.9) for p in PS for s in range(2)], FP)
    table = curve_table(_frame(tmp_path), "kar", ["Gradient", "Sobel", "Random"]) \
        .set_index("estimator")
    assert table.loc["Sobel", "vs Random"] == "n/a (n = 2 retrains; ≥ 3 needed)"
    assert table.loc["Gradient", "vs Random"] == "better than Random"
    text = build_report(tmp_path).read_text()
    assert "resume an interrupted run" in text


def test_spearman_with_two_estimators_is_explained_not_nan(tmp_path):
    cells = [_acc("baseline", "-", 0, s, 0.95) for s in range(3)]
    for e, shift in (("Gradient", 0.0), ("Random", 0.3)):
        cells += [_acc("roar", e, p, s, a + shift) for s in range(3)
                  for p, a in zip(PS, (0.5, 0.3, 0.1), strict=True)]
        cells += [_acc("roar-noretrain", e, p, 0, a + shift)
                  for p, a in zip(("0", *PS), (0.6, 0.5, 0.3, 0.1), strict=True)]
    _write(tmp_path, cells, retrains=3, estimators=["Gradient", "Random"])
    text = build_report(tmp_path).read_text()
    section = text.split("## ROAR with and without retraining")[1]
    assert "nan" not in section
    assert "n/a (needs at least 3 estimators with both curves; this run has 2" in section


def test_spearman_with_three_estimators_is_a_number(tmp_path):
    cells = [_acc("baseline", "-", 0, s, 0.95) for s in range(3)]
    for e, shift in (("Gradient", 0.0), ("Sobel", 0.1), ("Random", 0.3)):
        cells += [_acc("roar", e, p, s, a + shift) for s in range(3)
                  for p, a in zip(PS, (0.5, 0.3, 0.1), strict=True)]
        cells += [_acc("roar-noretrain", e, p, 0, a + shift)
                  for p, a in zip(("0", *PS), (0.6, 0.5, 0.3, 0.1), strict=True)]
    _write(tmp_path, cells, retrains=3)
    text = build_report(tmp_path).read_text()
    # The same order in every replicate (no per-sample results, equal seeds): rho is 1
    # with an interval of width 0.
    assert "retraining: **1.00** [95 % interval 1.00, 1.00]." in text


def test_deletion_without_retraining_ranks_the_lower_morf_auc_first(tmp_path):
    """MoRF deletion: the accuracy that falls fastest (lowest AUC) ranks first, as ROAR;
    the trio table shows that rank."""
    from quantus_roar.benchmark.report import _read_store, curve_table
    from quantus_roar.benchmark.trio import trio_table

    cells = [_acc("baseline", "-", 0, s, 0.95) for s in range(3)]
    for e, shift in (("Gradient", 0.0), ("Sobel", 0.1), ("Random", 0.3)):
        cells += [_acc("roar-noretrain", e, p, 0, a + shift)
                  for p, a in zip(("0", *PS), (0.6, 0.5, 0.3, 0.1), strict=True)]
    _write(tmp_path, cells, retrains=3)
    df, run, *_ = _read_store(tmp_path)
    table = curve_table(df, "roar-noretrain", ["Gradient", "Sobel", "Random"])
    assert list(table["estimator"]) == ["Gradient", "Sobel", "Random"]
    assert list(table["rank"]) == ["1", "2", "3"]
    trio = trio_table(df, run, ["Gradient", "Sobel", "Random"], None, None).set_index(
        "estimator")
    assert trio.loc["Gradient", "deletion AUC (MoRF)"].endswith("rank 1")
    assert trio.loc["Random", "deletion AUC (MoRF)"].endswith("rank 3")


# --------------------------------------------------------------------------- figures


@pytest.fixture
def kept_figures(monkeypatch):
    """The figures the report draws, kept open instead of closed after saving."""
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    yield figures
    for fig in figures:
        close(fig)


def test_model_randomisation_figure_draws_random_and_sobel_distinguishably(tmp_path,
                                                                             kept_figures):
    steps = ["fc", "conv2", "conv1", "floor", "ceiling"]
    cells = []
    for e in ("Gradient", "Sobel", "Random"):
        for i, step in enumerate(steps):  # the two controls: identical similarity curves
            v = 0.9 - 0.2 * i if e == "Gradient" else 1.0
            cells += [Cell("model-randomisation", e, step, s, "spearman", v, 1.0)
                      for s in range(2)]
    df = pd.DataFrame([c.__dict__ for c in cells])
    assert report._randomisation_figure(df, ["Gradient", "Sobel", "Random"], steps,
                                        ["spearman"], tmp_path / "mr.png")
    (fig,) = kept_figures
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()
             if ln.get_label() in ("Random", "Sobel")}
    rnd, sob = lines["Random"], lines["Sobel"]
    assert list(rnd.get_ydata()) == list(sob.get_ydata())  # the data are not moved
    assert rnd.get_linestyle() != sob.get_linestyle()
    assert rnd.get_color() != sob.get_color()
    assert rnd.get_linewidth() > sob.get_linewidth()
    assert rnd.get_marker() != sob.get_marker()
    assert rnd.get_markersize() > sob.get_markersize()
    assert sob.get_zorder() > rnd.get_zorder()  # the thin line on top of the wide one
    handles = {t.get_text(): h for t, h in zip(fig.legends[0].get_texts(),
                                               fig.legends[0].legend_handles, strict=True)}
    assert handles["Random"].get_linestyle() != handles["Sobel"].get_linestyle()
    assert handles["Random"].get_marker() != handles["Sobel"].get_marker()


def test_curves_figure_puts_the_unmodified_point_at_100_on_the_kept_axis(tmp_path,
                                                                         kept_figures):
    base, _ = _kar_store(tmp_path, 3)
    with ResultStore(tmp_path) as store:
        store.add([_acc("roar", "Gradient", p, s, 0.5) for p in PS for s in range(3)]
                  + [_acc("kar-noretrain", "Gradient", p, 0, 0.5) for p in ("0", *PS)], FP)
    assert report._curves_figure(_frame(tmp_path), ["Gradient", "Random"], tmp_path / "c.png")
    (fig,) = kept_figures
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(axes) == {"ROAR (retrained)", "KAR (retrained)", "KAR without retraining"}
    for title, ax in axes.items():
        kar = title.startswith("KAR")
        assert ax.get_xlabel() == ("features kept (%)" if kar else "features removed (%)")
        for line in ax.get_lines():
            x = list(line.get_xdata())
            assert x == ([10, 50, 90, 100] if kar else [0, 10, 50, 90]), (title, x)
    grad = next(ln for ln in axes["KAR (retrained)"].get_lines() if ln.get_label() == "Gradient")
    assert grad.get_ydata()[-1] == pytest.approx(np.mean(list(base.values())))


def test_plot_curve_x_label_defaults_and_can_be_named():
    frame = pd.DataFrame({"percentage": [10, 10, 50, 50], "accuracy": [0.9, 0.8, 0.5, 0.4]})
    fig = plot_curve(frame)
    assert fig.axes[0].get_xlabel() == "features removed / kept (%)"
    fig2 = plot_curve(frame, xlabel="features kept (%)")
    assert fig2.axes[0].get_xlabel() == "features kept (%)"
    plt.close(fig)
    plt.close(fig2)


def test_morf_and_lerf_rankings_in_opposite_orders_are_consistent(tmp_path):
    cells = []
    for e, shift in (("Gradient", 0.0), ("Sobel", 0.1), ("Random", 0.3)):
        cells += [_acc("roar-noretrain", e, p, 0, a + shift)
                  for p, a in zip(("0", *PS), (0.6, 0.5, 0.3, 0.1), strict=True)]
        cells += [_acc("kar-noretrain", e, p, 0, a - shift)
                  for p, a in zip(("100", *PS), (0.95, 0.5, 0.7, 0.9), strict=True)]
    _write(tmp_path, cells, retrains=1)
    rho, interval, n = morf_lerf_agreement(_frame(tmp_path), ["Gradient", "Sobel", "Random"])
    assert (rho, interval, n) == (pytest.approx(-1.0), (-1.0, -1.0), 3)
    text = build_report(tmp_path).read_text()
    assert "(MoRF vs LeRF)" in text and "**-1.00** [95 % interval -1.00, -1.00]" in text
    rho, interval, n = morf_lerf_agreement(_frame(tmp_path), ["Gradient", "Sobel"])
    assert math.isnan(rho) and interval is None and n == 2
