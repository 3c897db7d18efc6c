"""The three benchmarks side by side: one row per estimator with its sanity-check verdicts,
its pixel-perturbation scores without retraining and its ROAR/KAR scores, each with its
interval and the mask-leakage figure that could fake the ROAR result."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from quantus_roar.benchmark.report import _fmt_ci, _md, _Tables
from quantus_roar.benchmark.store import Key

__all__ = ["INPUT_DOMINATED_SHARE", "TRIO_STEP", "randomisation_verdict", "trio_section",
           "trio_table"]

#: The percentage whose mask-only accuracy the trio shows beside ROAR.
TRIO_STEP = 50.0
#: A floor at this share of the ceiling or above marks a method whose map depends little
#: on any model: an untrained network's map already keeps that much of the similarity.
INPUT_DOMINATED_SHARE = 0.5


def _interval(df: pd.DataFrame, metric: str, estimator: str, step: str, quantity: str
              ) -> tuple[float, float, float] | None:
    """Mean of a stored similarity (over sanity seeds) and the mean of its interval bounds."""
    rows = df[(df["metric"] == metric) & (df["estimator"] == estimator) & (df["param"] == step)]
    vals = [rows.loc[rows["quantity"] == q, "value"] for q in
            (quantity, f"{quantity}.lo", f"{quantity}.hi")]
    if vals[0].empty:
        return None
    mean = float(vals[0].mean())
    lo = float(vals[1].mean()) if not vals[1].empty else mean
    hi = float(vals[2].mean()) if not vals[2].empty else mean
    return mean, lo, hi


def randomisation_verdict(randomised: tuple[float, float, float],
                          floor: tuple[float, float, float] | None,
                          ceiling: tuple[float, float, float] | None) -> str:
    """``"pass"`` when the similarity after randomisation lies below the ceiling (a model
    trained with another seed), interval against interval: the map changed more than a
    faithful method's map changes between two equally good models. ``"fail"`` when it
    does not. ``"cannot tell"`` when the floor (a fresh model) reaches the ceiling, so
    even a map of an untrained network is as similar as a retrained one's; ``"n/a"``
    without a ceiling. A pass is marked *input-dominated* when the floor is at least
    :data:`INPUT_DOMINATED_SHARE` of the ceiling: the map changed, but an untrained
    network's map already resembles the trained one's that much (Guided Backprop's
    finding in Adebayo et al.)."""
    if ceiling is None:
        return "n/a (no ceiling)"
    if not all(np.isfinite(v) for v in (*randomised, *ceiling, *(floor or ()))):
        return "n/a (NaN similarity)"
    if floor is not None and floor[2] >= ceiling[1]:
        return "cannot tell (floor reaches ceiling)"
    if randomised[2] >= ceiling[1]:
        return "fail"
    if floor is not None and ceiling[0] > 0 and floor[0] >= INPUT_DOMINATED_SHARE * ceiling[0]:
        return f"pass, input-dominated (floor {floor[0] / ceiling[0]:.0%} of ceiling)"
    return "pass"


def _sanity_cell(df: pd.DataFrame, metric: str, estimator: str, step: str,
                 similarity: str) -> tuple[str, str]:
    """The similarity at ``step`` with its interval, and the verdict against floor and
    ceiling."""
    got = _interval(df, metric, estimator, step, similarity)
    if got is None:
        return "n/a", "n/a"
    floor = _interval(df, metric, estimator, "floor", similarity)
    ceiling = _interval(df, metric, estimator, "ceiling", similarity)
    refs = ", ".join(f"{name} {v[0]:.2f}" for name, v in (("floor", floor),
                                                            ("ceiling", ceiling)) if v)
    return (f"{_fmt_ci(*got)} ({refs})" if refs else _fmt_ci(*got),
            randomisation_verdict(got, floor, ceiling))


def _auc_column(table: pd.DataFrame, with_verdict: bool) -> dict[str, str]:
    if table.empty:
        return {}
    out = {}
    for _, row in table.iterrows():
        text = f"{row['AUC']}, rank {row['rank']}"
        if with_verdict and "vs Random" in table.columns and row["vs Random"]:
            text += f"; {row['vs Random']}"
        out[row["estimator"]] = text
    return out


def _pixel_flipping_column(df: pd.DataFrame, estimators: list[str]) -> dict[str, str]:
    out = {}
    for e in estimators:
        got = _interval(df, "pixel-flipping", e, "auc", "auc")
        if got is not None:
            out[e] = _fmt_ci(*got)
    return out


def _leakage_column(table: pd.DataFrame) -> dict[str, str]:
    col = f"{TRIO_STEP:g}%"
    if table.empty or col not in table.columns:
        return {}
    return dict(zip(table["estimator"], table[col], strict=True))


def trio_table(df: pd.DataFrame, run: dict[str, Any], estimators: list[str],
               last_step: str | None, chance: float | None,
               reps: dict[Key, np.ndarray] | None = None, fill: str | None = None,
               tables: _Tables | None = None) -> pd.DataFrame:
    """One row per estimator: model and data randomisation (the run's first similarity,
    value [interval] and verdict; ``last_step`` is the step with every layer randomised,
    None for no model randomisation column), deletion without retraining (ours and
    Quantus' PixelFlipping, lower is better), ROAR and KAR (AUC [interval], rank
    interval, test against Random) and the mask-only accuracy at :data:`TRIO_STEP` %
    removed. In a sweep over fills, the filled metrics of ``fill``. ``tables``: the
    report's tables of the same run and estimators, when already computed."""
    tables = tables or _Tables(df, estimators, chance, reps or {})
    sims = list(run.get("similarities") or [])
    sim = sims[0] if sims else "spearman_abs"

    def keyed(metric: str) -> str:
        return metric if fill is None else f"{metric}@{fill}"

    columns = {
        "deletion AUC (MoRF)": _auc_column(tables.curve(keyed("roar-noretrain")), False),
        "PixelFlipping AUC (Quantus)": _pixel_flipping_column(df, estimators),
        "ROAR AUC": _auc_column(tables.curve(keyed("roar")), True),
        "KAR AUC": _auc_column(tables.curve(keyed("kar")), True),
        f"mask-only accuracy at {TRIO_STEP:g}%": _leakage_column(tables.leakage()),
    }
    rows = []
    for e in estimators:
        row: dict[str, Any] = {"estimator": e}
        if last_step is not None:
            row[f"model randomisation ({sim})"], row["MR verdict"] = _sanity_cell(
                df, "model-randomisation", e, last_step, sim)
        row[f"data randomisation ({sim})"], row["DR verdict"] = _sanity_cell(
            df, "data-randomisation", e, "random_labels", sim)
        for name, values in columns.items():
            if values:
                row[name] = values.get(e, "n/a")
        rows.append(row)
    return pd.DataFrame(rows)


def _last_step(run: dict[str, Any], layers: list[str]) -> str | None:
    """The model-randomisation step with every layer randomised: the last of a cascade
    (the input layer top-down, the output layer bottom-up); None for the independent
    order, where no step randomises them all."""
    order = run.get("layer_order", "top_down")
    if not layers or order == "independent":
        return None
    return layers[0] if order == "top_down" else layers[-1]


def trio_section(df: pd.DataFrame, run: dict[str, Any], estimators: list[str],
                 layers: list[str], chance: float | None, reps: dict[Key, np.ndarray],
                 fill: str | None = None, tables: _Tables | None = None) -> list[str]:
    """The report's section: the table and what each column and verdict means."""
    table = trio_table(df, run, estimators, _last_step(run, layers), chance, reps, fill,
                       tables)
    values = table.drop(columns=["estimator"], errors="ignore")
    if table.empty or values.empty or values.isin(["n/a"]).all().all():
        return []
    lines = ["## The three benchmarks side by side"
             + ("" if fill is None else f", fill `{fill}`"), "",
             "Each estimator on the sanity checks, pixel perturbation without retraining and "
             "ROAR/KAR, every number with its 95 % interval. *Model randomisation*: the "
             "similarity between the trained model's explanations and those after every "
             f"layer is randomised (cascading, `{run.get('layer_order', 'top_down')}`; the "
             "last step; not shown for the independent order, where no step randomises "
             "every layer), against a fresh model (*floor*) and one trained with another seed "
             "(*ceiling*); *data randomisation*: the same against a model trained on "
             "permuted labels. Verdict **pass**: the interval lies below the ceiling's, so "
             "the map changed more than between two equally good models; **fail**: it does "
             "not; **cannot tell**: the floor reaches the ceiling; *input-dominated*: a "
             f"pass whose floor is at least {INPUT_DOMINATED_SHARE:.0%} of the ceiling, so "
             "an untrained network's map already resembles the trained one's that much. "
             "*deletion AUC*: "
             "`ROARNoRetrain` (this package's fill, no retraining; lower is better); "
             "*PixelFlipping AUC*: Quantus' `PixelFlipping` on the sanity samples for the "
             "explained class (Quantus' `\"mean\"` fill, the mean of the image as perturbed so "
             "far; about 64 steps; lower is better). *ROAR* lower and *KAR* higher is "
             "better, with the test against Random. The mask-only accuracy is what the "
             "ROAR masks alone tell about the class: far above chance"
             + (f" ({chance:.2f})" if chance is not None else "")
             + ", part of a ROAR drop is the mask's shape, not the removed information.",
             "", _md(table)]
    return lines
