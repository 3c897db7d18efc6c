"""The report of a benchmark run, rebuilt from the result store alone.

:func:`build_report` reads ``results.sqlite`` (and the cached attributions
for the example figure) and writes ``results.csv``, ``report.md`` and PNG
figures into ``figures/``. Nothing is retrained or re-explained, so the
report of an interrupted run shows what is finished, and rebuilding it gives
identical tables.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import numbers
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quantus_roar._io import disk_error, write_text, write_with
from quantus_roar.benchmark.config import file_name
from quantus_roar.benchmark.store import REPEATS, Key, ResultStore
from quantus_roar.curves import normalised_auc
from quantus_roar.exceptions import StorageError
from quantus_roar.explainers import model_free
from quantus_roar.randomisation import LAYER_ORDERS
from quantus_roar.removal import GRANULARITIES, IMPUTERS, REDUCES
from quantus_roar.stats import (
    BOOTSTRAP_SEED,
    N_BOOT,
    holm,
    percentile_interval,
    rank_interval,
    replicate_accuracies,
    sample_counts,
    seed_weights,
    two_sided_p,
    wilson_interval,
)

logger = logging.getLogger("quantus_roar.benchmark")

__all__ = ["accuracies", "build_report", "curve_table", "noretrain_comparison",
           "randomisation_table", "spearman_text"]

_ORDER = {"roar": "remove_top", "kar": "keep_top"}
_NORETRAIN = {"roar": "roar-noretrain", "kar": "kar-noretrain"}
# Where the unmodified data sit on each curve's axis: 0 % removed (ROAR, MoRF deletion),
# 100 % kept (KAR, LeRF deletion).
_UNMODIFIED = {"roar": 0.0, "kar": 100.0, "roar-noretrain": 0.0, "kar-noretrain": 100.0}


def _base(metric: str) -> str:
    """The metric of a stored name: ``"roar@zero"`` (a sweep's) -> ``"roar"``."""
    return metric.partition("@")[0]


def _keyed(metric: str, fill: str | None) -> str:
    """The stored name of ``metric`` under ``fill`` (None: a run without a sweep)."""
    return metric if fill is None else f"{metric}@{fill}"


def _fills(run: dict[str, Any]) -> list[str | None]:
    """The imputers of a sweep, or ``[None]`` for a run with one fill."""
    return list(run.get("imputers") or []) or [None]
# Fewer paired retrain seeds than this give no usable spread: no test, no p-value.
_COLUMNS = ["estimator", "percentage", "seed", "accuracy"]


def _pct(param: str) -> float:
    return float(param)


def _fmt(mean: float, std: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _estimators(df: pd.DataFrame, run: dict[str, Any]) -> list[str]:
    present = set(df["estimator"]) - {"-"}
    return [e for e in run.get("estimators", sorted(present)) if e in present]


# --------------------------------------------------------------------------- tables


def accuracies(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (estimator, percentage, seed) accuracy of one curve, the unmodified point included.

    ``metric`` is a stored metric name: ``"roar"``, ``"kar"``, ``"roar-noretrain"``,
    ``"kar-noretrain"``, or one of them under a fill (``"roar@zero"``). The details of
    the unmodified point are those of :func:`_accuracy_rows`.
    """
    return _accuracy_rows(df, metric)[_COLUMNS]


def _keys(rows: pd.DataFrame) -> list[Key]:
    return [(m, e, p, int(s)) for m, e, p, s in zip(rows["metric"], rows["estimator"],
                                                    rows["param"], rows["seed"], strict=True)]


def _accuracy_rows(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """:func:`accuracies` with the key of each row's stored cell (column ``key``).

    Per (estimator, percentage, seed) accuracy of one curve, the unmodified point included.

    ``metric`` is ``"roar"``, ``"kar"``, ``"roar-noretrain"`` or ``"kar-noretrain"``.
    The percentage is the share removed (ROAR, MoRF deletion) or kept (KAR, LeRF
    deletion), and the unmodified data sit at 0 % removed or at 100 % kept:

    * ROAR and KAR share the retrains on unmodified data (metric ``"baseline"``,
      param ``"0"``); they become percentage 0 of every ROAR estimator and
      percentage 100 of every KAR estimator.
    * ``"kar-noretrain"``'s unmodified row is param ``"100"``; stores written
      before that labelled it ``"0"``, which is read as 100 (0 % kept is never a
      measured percentage).

    The baseline of a seed joins only the estimators that have cells of that seed
    (in an interrupted run, a seed with the baseline alone is no curve). Each
    (estimator, percentage, seed) appears once: where an estimator has its own
    cells at the unmodified point (KAR at 100 % kept is the unmodified data), the
    shared baseline of that seed is used and the estimator's own cell dropped.
    """
    unmodified = _UNMODIFIED[_base(metric)]
    cur = df[(df["metric"] == metric) & (df["quantity"] == "accuracy")]
    raw = cur["param"].map(_pct)
    legacy = (raw == 0.0) & (metric == "kar-noretrain")
    cur = cur.assign(percentage=raw.mask(legacy, unmodified), accuracy=cur["value"],
                     _legacy=legacy, key=_keys(cur))
    # first occurrence wins: the shared baseline, then rows labelled as they are now
    cur = cur.sort_values("_legacy", kind="stable")[[*_COLUMNS, "key"]]
    parts = []
    base = df[(df["metric"] == "baseline") & (df["quantity"] == "accuracy")]
    if _base(metric) in _ORDER and len(base) and len(cur):
        for e, seeds in cur.groupby("estimator")["seed"]:
            mine = base[base["seed"].isin(seeds)]
            parts.append(mine.assign(estimator=e, percentage=unmodified,
                                     accuracy=mine["value"], key=_keys(mine))[[*_COLUMNS, "key"]])
    out = pd.concat([*parts, cur], ignore_index=True)
    out = out.drop_duplicates(["estimator", "percentage", "seed"], keep="first")
    return out.sort_values(["estimator", "percentage", "seed"], kind="stable") \
        .reset_index(drop=True)


def _auc_per_seed(acc: pd.DataFrame) -> pd.DataFrame:
    """Normalised AUC per (estimator, seed) over the percentages that seed has."""
    rows = []
    for (e, s), g in acc.groupby(["estimator", "seed"]):
        g = g.sort_values("percentage")
        rows.append({"estimator": e, "seed": s,
                     "auc": normalised_auc(g["percentage"].to_numpy(), g["accuracy"].to_numpy())})
    return pd.DataFrame(rows, columns=["estimator", "seed", "auc"])


#: Family-wise level of the comparisons with Random (Holm-corrected).
ALPHA = 0.05
#: Fewest retrain seeds an estimator and Random need for a verdict.
MIN_PAIRED_SEEDS = 3


def _fmt_ci(point: float, lo: float, hi: float) -> str:
    return f"{point:.3f} [{lo:.3f}, {hi:.3f}]"


def _rank_text(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def replicates(samples: dict[Key, np.ndarray], n_boot: int = N_BOOT,
               seed: int = BOOTSTRAP_SEED) -> dict[Key, np.ndarray]:
    """Bootstrap replicates of every stored cell's accuracy over its test samples:
    ``{key: (n_boot,) accuracies}``. Cells of one test-set length share one resample of
    the samples, so any two cells' replicates are paired."""
    out: dict[Key, np.ndarray] = {}
    by_length: dict[int, list[Key]] = {}
    for key, correct in samples.items():
        by_length.setdefault(len(correct), []).append(key)
    for n, keys in by_length.items():
        if n == 0:
            continue
        acc = replicate_accuracies(np.stack([samples[k] for k in keys]),
                                   sample_counts(n, n_boot, seed))
        out.update(zip(keys, acc, strict=True))
    return out


def _cell_replicates(acc: pd.DataFrame, reps: dict[Key, np.ndarray], n_boot: int
                     ) -> list[np.ndarray]:
    """Per row of ``acc``: its bootstrap replicates over test samples (from the stored
    per-sample results), or its accuracy repeated where the cell has none."""
    return [reps[key] if key in reps else np.full(n_boot, float(value))
            for key, value in zip(acc["key"], acc["accuracy"], strict=True)]


def _estimator_replicates(acc: pd.DataFrame, rows: list[np.ndarray], n_boot: int
                          ) -> dict[str, tuple[dict[float, np.ndarray], np.ndarray, int]]:
    """Per estimator: the replicates of its mean accuracy at each percentage and of its
    AUC, over test samples and training seeds together, and its number of complete
    seeds.

    Every estimator with the same number of seeds gets the same seed resamples
    (one generator seed), so differences between estimators stay paired.
    """
    out = {}
    for e, g in acc.groupby("estimator", sort=False):
        seeds = sorted(g["seed"].unique())
        w = seed_weights(len(seeds), n_boot, BOOTSTRAP_SEED)  # (B, S)
        at: dict[float, np.ndarray] = {}
        by_seed: dict[int, dict[float, np.ndarray]] = {s: {} for s in seeds}
        for i in g.index:
            by_seed[int(acc.at[i, "seed"])][float(acc.at[i, "percentage"])] = rows[i]
        pcts = sorted({p for d in by_seed.values() for p in d})
        for p in pcts:
            have = [j for j, sd in enumerate(seeds) if p in by_seed[sd]]
            r = np.stack([by_seed[seeds[j]][p] for j in have])  # (S', B)
            ww = w[:, have]
            at[p] = np.einsum("bs,sb->b", ww, r) / np.maximum(ww.sum(1), 1e-12)
        full = [j for j, sd in enumerate(seeds) if all(p in by_seed[sd] for p in pcts)]
        aucs = np.stack([_auc_rows(pcts, [by_seed[seeds[j]][p] for p in pcts]) for j in full])
        ww = w[:, full]
        out[str(e)] = (at, np.einsum("bs,sb->b", ww, aucs) / np.maximum(ww.sum(1), 1e-12),
                       len(full))
    return out


def _auc_rows(percentages: list[float], values: list[np.ndarray]) -> np.ndarray:
    """:func:`normalised_auc` of each replicate: ``values`` one (B,) array per percentage."""
    p = np.asarray(percentages, dtype=np.float64)
    v = np.stack(values)  # (P, B)
    if len(p) < 2 or p[-1] == p[0]:
        return v.mean(axis=0)
    return np.sum((p[1:] - p[:-1])[:, None] * (v[1:] + v[:-1]) / 2.0, axis=0) / (p[-1] - p[0])


def curve_table(df: pd.DataFrame, metric: str, estimators: list[str],
                reps: dict[Key, np.ndarray] | None = None, n_boot: int = N_BOOT
                ) -> pd.DataFrame:
    """ROAR or KAR table: every accuracy and AUC with a 95 % bootstrap interval, ranks as
    intervals, and each estimator against Random.

    Point values are means over retrains; the intervals resample the test samples
    (from ``reps``, the stored per-sample results, see :func:`replicates`) and the
    training seeds together, :data:`N_BOOT` times. Without per-sample results a
    cell's interval covers the seeds only. For ROAR (and ROARNoRetrain, MoRF) a
    better estimator has the *lower* AUC (accuracy falls faster); for KAR (and
    KARNoRetrain) the higher. *unmodified* is the
    retrain on unmodified data (0 % removed for ROAR, 100 % kept for KAR), part
    of the AUC of both. *rank* is the 95 % interval of the estimator's rank by
    AUC over the replicates ("2-4": not distinguishable from its neighbours).

    *vs Random* is a two-sided test of the AUC difference to Random: the observed
    difference over its paired bootstrap standard error (same test resample, same
    seeds; :func:`quantus_roar.stats.two_sided_p`), Holm-corrected over the
    estimators at :data:`ALPHA`: ``"better than Random"``, ``"worse than Random"``, ``"no
    evidence"`` (no difference shown), ``"(control)"`` for Random itself; better
    means a lower AUC for ROAR, a higher one for KAR.
    *ΔAUC vs Random* is the effect: the difference of the mean AUCs with its
    interval.
    """
    acc = _accuracy_rows(df, metric)
    if acc.empty:
        return pd.DataFrame()
    reps = reps or {}
    rows = _cell_replicates(acc, reps, n_boot)
    per = _estimator_replicates(acc, rows, n_boot)
    lower_better = _base(metric) in ("roar", "roar-noretrain")  # MoRF: lower is better
    unmodified = _UNMODIFIED[_base(metric)]
    names = [e for e in estimators if e in per]
    means = acc.groupby(["estimator", "percentage"])["accuracy"].mean()
    auc_point = _auc_per_seed(acc).groupby("estimator")["auc"].mean()
    ranks = dict(zip(names, rank_interval(np.stack([per[e][1] for e in names]), lower_better),
                     strict=True))
    tests = _against_random(names, per, auc_point, lower_better) if "Random" in per else {}
    table = []
    for e in names:
        at, auc, _ = per[e]
        row: dict[str, Any] = {"estimator": e, "rank": _rank_text(*ranks[e])}
        for p in sorted(at):
            row["unmodified" if p == unmodified else f"{p:g}%"] = _fmt_ci(
                means[(e, p)], *percentile_interval(at[p]))
        row["AUC"] = _fmt_ci(auc_point[e], *percentile_interval(auc))
        row["_auc"], row["_rank"] = auc_point[e], ranks[e][0]
        if tests:
            row.update(tests[e])
        table.append(row)
    out = pd.DataFrame(table).sort_values(["_auc", "estimator"],
                                          ascending=[lower_better, True])
    return out.drop(columns=["_auc", "_rank"]).reset_index(drop=True)


def _against_random(names: list[str], per: dict[str, tuple[dict, np.ndarray, int]],
                    auc_point: pd.Series, lower_better: bool) -> dict[str, dict[str, str]]:
    """Two-sided paired bootstrap tests of each estimator's AUC against Random's, Holm;
    an estimator (or Random) with fewer than :data:`MIN_PAIRED_SEEDS` seeds gets n/a."""
    random = per["Random"][1]
    out = {"Random": {"vs Random": "(control)", "ΔAUC vs Random": "", "p (Holm)": ""}}
    n_random = per["Random"][2]
    for e in names:
        n = min(per[e][2], n_random)
        if e != "Random" and n < MIN_PAIRED_SEEDS:
            out[e] = {"vs Random": f"n/a (n = {n} retrain{'s' if n != 1 else ''}; "
                                   f"≥ {MIN_PAIRED_SEEDS} needed)",
                      "ΔAUC vs Random": "", "p (Holm)": ""}
    diffs = {e: per[e][1] - random for e in names if e not in out}
    adjusted = holm({e: two_sided_p(d, float(auc_point[e] - auc_point["Random"]))
                     for e, d in diffs.items()})
    for e, d in diffs.items():
        effect = float(auc_point[e] - auc_point["Random"])
        lo, hi = percentile_interval(d)
        verdict = "no evidence"
        if adjusted[e] < ALPHA:
            verdict = ("better than Random" if (effect < 0) == lower_better
                       else "worse than Random")
        out[e] = {"vs Random": verdict, "ΔAUC vs Random": f"{effect:+.3f} [{lo:+.3f}, {hi:+.3f}]",
                  "p (Holm)": f"{adjusted[e]:.2g}"}
    return out


#: Mask-only accuracy this far above chance counts as "the masks predict the class".
LEAKAGE_MARGIN = 0.10


def leakage_table(df: pd.DataFrame, estimators: list[str], chance: float | None,
                  reps: dict[Key, np.ndarray] | None = None, n_boot: int = N_BOOT
                  ) -> pd.DataFrame:
    """Mask leakage per estimator and percentage: the mean over retrains of the test
    accuracy of models trained on the ROAR masks alone, with its 95 % bootstrap
    interval (as :func:`curve_table`), and a plain-words verdict.

    An estimator's masks *predict the class* where their mean accuracy exceeds
    ``chance`` (always answering the most frequent training class) by more than
    :data:`LEAKAGE_MARGIN` at some percentage, and the interval lies above chance.
    """
    cur = df[(df["metric"] == "mask-leakage") & (df["quantity"] == "accuracy")]
    if cur.empty:
        return pd.DataFrame()
    acc = cur.assign(percentage=cur["param"].map(_pct), accuracy=cur["value"],
                     key=_keys(cur))[[*_COLUMNS, "key"]].reset_index(drop=True)
    per = _estimator_replicates(acc, _cell_replicates(acc, reps or {}, n_boot), n_boot)
    means = acc.groupby(["estimator", "percentage"])["accuracy"].mean()
    rows = []
    for e in [e for e in estimators if e in per]:
        row: dict[str, Any] = {"estimator": e}
        top = (-1.0, 0.0, 0.0)
        for p, r in sorted(per[e][0].items()):
            lo, hi = percentile_interval(r)
            row[f"{p:g}%"] = _fmt_ci(means[(e, p)], lo, hi)
            top = max(top, (float(means[(e, p)]), p, lo))
        if chance is not None:
            row["verdict"] = (f"masks predict the class ({top[0]:.2f} at {top[1]:g} %)"
                              if top[0] > chance + LEAKAGE_MARGIN and top[2] > chance else
                              f"within {LEAKAGE_MARGIN:.2f} of chance")
        rows.append(row)
    return pd.DataFrame(rows)


class _Tables:
    """The ROAR/KAR/deletion and leakage tables of one report, each bootstrapped once
    and shared by the sections that show them (their own and the trio table)."""

    def __init__(self, df: pd.DataFrame, estimators: list[str], chance: float | None,
                 reps: dict[Key, np.ndarray]) -> None:
        self.df, self.estimators, self.chance, self.reps = df, estimators, chance, reps
        self._curves: dict[str, pd.DataFrame] = {}
        self._leakage: pd.DataFrame | None = None

    def curve(self, metric: str) -> pd.DataFrame:
        """:func:`curve_table` of ``metric`` (a stored name, e.g. ``"roar@zero"``)."""
        if metric not in self._curves:
            self._curves[metric] = curve_table(self.df, metric, self.estimators, self.reps)
        return self._curves[metric]

    def leakage(self) -> pd.DataFrame:
        """:func:`leakage_table` of the run."""
        if self._leakage is None:
            self._leakage = leakage_table(self.df, self.estimators, self.chance, self.reps)
        return self._leakage


def _leakage_section(tables: _Tables, fill: str | None) -> list[str]:
    df, estimators, chance = tables.df, tables.estimators, tables.chance
    table = tables.leakage()
    if table.empty:
        return []
    level = "unknown" if chance is None else f"{chance:.3f}"
    lines = ["## Mask leakage", "",
             "Test accuracy of models trained on the ROAR masks alone (1 where a feature "
             "is removed, 0 elsewhere; the same ranking, split, seeds and recipe as ROAR; "
             "mean over retrains [95 % interval over test samples and seeds]). Chance, "
             f"always answering the most frequent training class: {level}. Where the masks "
             "predict the class, ROAR's accuracy at that percentage partly measures what the "
             "mask's shape gives away, not only the information removed (Rong et al., "
             "2022).", ""]
    corr = _leakage_correlation(df, estimators, _keyed("roar", fill))
    if corr:
        lines += [corr, ""]
    return [*lines, _md(table)]


def _leakage_correlation(df: pd.DataFrame, estimators: list[str], roar_name: str = "roar"
                         ) -> str:
    """Pearson r across estimators of ROAR accuracy and mask-only accuracy, per percentage."""
    roar = accuracies(df, roar_name)
    leak = df[(df["metric"] == "mask-leakage") & (df["quantity"] == "accuracy")]
    if roar.empty or leak.empty:
        return ""
    leak = leak.assign(percentage=leak["param"].map(_pct))
    a = roar.groupby(["percentage", "estimator"])["accuracy"].mean()
    b = leak.groupby(["percentage", "estimator"])["value"].mean()
    parts = []
    for p in sorted(set(b.index.get_level_values(0)) & set(a.index.get_level_values(0))):
        common = [e for e in estimators if (p, e) in a.index and (p, e) in b.index]
        x, y = a.loc[[(p, e) for e in common]], b.loc[[(p, e) for e in common]]
        if len(common) >= 3 and float(x.std()) > 0 and float(y.std()) > 0:
            parts.append(f"{np.corrcoef(x, y)[0, 1]:+.2f} at {p:g} %")
    if not parts:
        return ""
    return ("Across estimators, ROAR accuracy and mask-only accuracy correlate with Pearson "
            f"r = {', '.join(parts)} (n = {len(estimators)} estimators): the closer to +1, "
            "the more ROAR accuracy follows what the masks alone reveal (a mask that gives "
            "the class away keeps the retrained model's accuracy up, whatever was removed).")


def _intervals_text(table: pd.DataFrame, metric: str, with_samples: bool) -> str:
    """The paragraph that says what every interval, rank and verdict of the table is."""
    better = "lower" if _base(metric) == "roar" else "higher"
    over = ("the test samples and the training seeds together (the stored per-sample "
            "results of every retrain)" if with_samples else
            "the training seeds only: this run's retrainer gives no per-sample results, so "
            "test-sample variation is not in them (TorchRetrainer gives them)")
    text = (f"Values are means over retrains with 95 % bootstrap intervals ({N_BOOT} "
            f"resamples) over {over}. *rank* is the 95 % interval of the estimator's rank by "
            f"AUC ({better} is better); a range such as 2-4 means it cannot be told apart "
            "from its neighbours.")
    if "vs Random" in table.columns:
        text += (f" *vs Random*: two-sided test of the AUC difference to Random (the "
                 "observed difference over its paired bootstrap standard error), "
                 f"Holm-corrected over the {len(table) - 1} estimators at "
                 f"{ALPHA}: **better than Random** (AUC {better}), **worse than Random**, or "
                 "**no evidence** of a difference; *ΔAUC vs Random* is the difference with its "
                 "interval, *p (Holm)* the corrected p-value; **n/a**: fewer than "
                 f"{MIN_PAIRED_SEEDS} retrain seeds with Random's, no test.")
        short = [v for v in table["vs Random"] if v.startswith("n/a")]
        if short:
            text += (f" {len(short)} estimator(s) have fewer than {MIN_PAIRED_SEEDS} "
                     "finished retrains paired with Random: rerun with more retrains, or "
                     "resume an interrupted run (Hooker et al. use 5).")
    return text


def noretrain_comparison(df: pd.DataFrame, metric: str, estimators: list[str],
                         reps: dict[Key, np.ndarray] | None = None, n_boot: int = N_BOOT
                         ) -> tuple[pd.DataFrame, float]:
    """Ranks of the estimators by AUC with retraining and without, and their Spearman rho.

    Each AUC carries its 95 % bootstrap interval (as :func:`curve_table`); the
    table's ``attrs["rho_interval"]`` is rho's interval over the same replicates
    (paired: one resample of test samples and seeds for both curves). rho is NaN
    with fewer than 3 estimators that have both curves, or when one of the
    rankings is constant (see :func:`spearman_text`).
    """
    from scipy import stats

    base, _, fill = metric.partition("@")
    first = _accuracy_rows(df, metric)
    second = _accuracy_rows(df, _keyed(_NORETRAIN[base], fill or None))
    if first.empty or second.empty:
        return pd.DataFrame(), float("nan")
    per = [_estimator_replicates(acc, _cell_replicates(acc, reps or {}, n_boot), n_boot)
           for acc in (first, second)]
    a, b = (_auc_per_seed(acc).groupby("estimator")["auc"].mean() for acc in (first, second))
    common = [e for e in estimators if e in a.index and e in b.index]
    asc = base == "roar"
    table = pd.DataFrame({"estimator": common,
                          "AUC retrained": [_fmt_ci(a[e], *percentile_interval(per[0][e][1]))
                                            for e in common],
                          "rank retrained": a[common].rank(ascending=asc, method="min")
                          .astype(int).to_numpy(),
                          "AUC no retrain": [_fmt_ci(b[e], *percentile_interval(per[1][e][1]))
                                             for e in common],
                          "rank no retrain": b[common].rank(ascending=asc, method="min")
                          .astype(int).to_numpy()})
    rho = math.nan
    table = table.sort_values(["rank retrained", "estimator"]).reset_index(drop=True)
    if len(common) >= 3 and a[common].nunique() > 1 and b[common].nunique() > 1:
        rho = float(stats.spearmanr(a[common], b[common]).statistic)
        table.attrs["rho_interval"] = percentile_interval(_replicate_spearman(
            np.stack([per[0][e][1] for e in common]), np.stack([per[1][e][1] for e in common])))
    return table, rho


def _replicate_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho between the rows of ``x`` and ``y`` (K, B), per replicate (B,)."""
    from scipy import stats

    rx, ry = stats.rankdata(x, axis=0), stats.rankdata(y, axis=0)
    rx, ry = rx - rx.mean(0), ry - ry.mean(0)
    denom = np.sqrt((rx * rx).sum(0) * (ry * ry).sum(0))
    return np.where(denom > 0, (rx * ry).sum(0) / np.where(denom > 0, denom, 1.0), 0.0)


def spearman_text(table: pd.DataFrame, rho: float) -> str:
    """``**0.80** [0.55, 0.93]``, or why there is no rank correlation."""
    if not math.isnan(rho):
        interval = table.attrs.get("rho_interval")
        return f"**{rho:.2f}**" + ("" if interval is None else
                                   f" [95 % interval {interval[0]:.2f}, {interval[1]:.2f}]")
    n = len(table)
    if n < 3:
        return f"n/a (needs at least 3 estimators with both curves; this run has {n})"
    return "n/a (the estimators' AUCs are all equal in one of the rankings)"


def randomisation_table(df: pd.DataFrame, metric: str, similarity: str, estimators: list[str],
                        steps: list[str]) -> pd.DataFrame:
    """Mean similarity per estimator and step, with its 95 % bootstrap interval over the
    explained samples (the mean of the repeats' bounds; stores written before the
    intervals show the mean alone) and ± std over sanity seeds when there are several."""
    rows_of = df[(df["metric"] == metric) & (df["estimator"] != "-")]
    cur = rows_of[rows_of["quantity"] == similarity]
    if cur.empty:
        return pd.DataFrame()
    g = cur.groupby(["estimator", "param"])["value"].agg(["mean", "std", "count"])
    bounds = {q: rows_of[rows_of["quantity"] == f"{similarity}.{q}"]
              .groupby(["estimator", "param"])["value"].mean() for q in ("lo", "hi")}
    rows = []
    for e in [e for e in estimators if e in g.index.get_level_values(0)]:
        row = {"estimator": e}
        for step in steps:
            if (e, step) not in g.index:
                row[step] = "n/a"
                continue
            mean, std, count = g.loc[(e, step)]
            text = f"{mean:.3f}" + (f" ± {std:.3f}" if count > 1 else "")
            if (e, step) in bounds["lo"].index and (e, step) in bounds["hi"].index:
                text += f" [{bounds['lo'][(e, step)]:.3f}, {bounds['hi'][(e, step)]:.3f}]"
            row[step] = text
        rows.append(row)
    return pd.DataFrame(rows)


def _model_free_note(df: pd.DataFrame, run: dict[str, Any], metric: str) -> list[str]:
    """The run's model-free estimators, whose sanity checks are not computed."""
    have = set(df.loc[df["metric"] == metric, "estimator"])
    free = [e for e in run.get("estimators", []) if model_free(str(e)) and e not in have]
    if not free:
        return []
    return [f"Not computed for the model-free estimators ({', '.join(map(str, free))}): "
            "their maps are the same for any weights, so every similarity is 1 by "
            "construction and they fail the check by design.", ""]


# --------------------------------------------------------------------------- figures


_COLOURS = {"Gradient": "tab:blue", "IntegratedGradients": "tab:orange",
            "GuidedBackprop": "tab:green", "InputXGradient": "tab:purple", "PruneGrad": "tab:olive",
            "Random": "black",
            "Sobel": "tab:red", "InputMagnitude": "tab:brown", "BlurredRandom": "tab:gray",
            "FixedPrior": "tab:pink"}
_STYLES = {"": "-", "SmoothGrad": "--", "SmoothGradSquared": ":", "VarGrad": "-."}


# Random and Sobel do not depend on the model, so their model-randomisation curves coincide
# (and their other curves may come close): Random is drawn wide, dashed, black and underneath
# with large circles, Sobel thin, solid, red and on top with small squares, so both stay
# visible without moving any data.
_CONTROL_STYLES = {
    "Random": {"linestyle": "--", "linewidth": 3.0, "marker": "o", "markersize": 6.0,
               "zorder": 2.0},
    "Sobel": {"linestyle": "-", "linewidth": 1.0, "marker": "s", "markersize": 3.0,
              "zorder": 3.0},
    # The leakage controls: thin, each with a marker of its own.
    "InputMagnitude": {"linestyle": "-", "linewidth": 1.0, "marker": "^", "markersize": 3.5},
    "BlurredRandom": {"linestyle": "--", "linewidth": 1.0, "marker": "v", "markersize": 3.5},
    "FixedPrior": {"linestyle": "-.", "linewidth": 1.0, "marker": "D", "markersize": 3.0},
}


def _style(estimator: str) -> dict[str, Any]:
    """Line keyword arguments of an estimator's curve (colour, line style, width, marker)."""
    base, _, noise = ("FixedPrior", "", "") if estimator.startswith("FixedPrior(") \
        else estimator.partition("_")
    style: dict[str, Any] = {"color": _COLOURS.get(base), "linestyle": _STYLES.get(noise, "-"),
                             "linewidth": 1.5, "marker": "o", "markersize": 3.0, "zorder": 2.5}
    if not noise:
        style.update(_CONTROL_STYLES.get(base, {}))
    return style


def _save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` as PNG atomically (a link at ``path`` is replaced, never followed)."""
    import matplotlib.pyplot as plt

    try:
        write_with(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _curves_figure(df: pd.DataFrame, estimators: list[str], path: Path,
                   fill: str | None = None) -> bool:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from quantus_roar.plotting import plot_curve

    panels = []
    for metric, title in (("roar", "ROAR (retrained)"), ("kar", "KAR (retrained)"),
                          ("roar-noretrain", "ROAR without retraining"),
                          ("kar-noretrain", "KAR without retraining")):
        acc = accuracies(df, _keyed(metric, fill))
        if not acc.empty:
            xlabel = "features removed (%)" if metric.startswith("roar") else "features kept (%)"
            panels.append((title if fill is None else f"{title}, {fill}", acc, xlabel))
    if not panels:
        return False
    ncols = 2 if len(panels) == 4 else len(panels)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 3.6 * nrows + 0.6),
                             squeeze=False)
    for ax, (title, acc, xlabel) in zip(axes.flat, panels, strict=False):
        for e in estimators:
            part = acc[acc["estimator"] == e]
            if len(part):
                plot_curve(part, ax, label=e, title=title, legend=False, xlabel=xlabel,
                           **_style(e))
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, (0.3 + 0.18 * math.ceil(len(labels) / 4)) / fig.get_figheight(),
                           1, 1))
    _save_figure(fig, path)
    return True


def _randomisation_figure(df: pd.DataFrame, estimators: list[str], steps: list[str],
                          similarities: list[str], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cur = df[(df["metric"] == "model-randomisation") & (df["estimator"] != "-")]
    if cur.empty:
        return False
    fig, axes = plt.subplots(1, len(similarities), figsize=(4.2 * len(similarities), 3.8),
                             squeeze=False)
    layer_steps = [s for s in steps if s not in ("floor", "ceiling")]
    x = np.arange(len(layer_steps))
    for ax, sim in zip(axes[0], similarities, strict=True):
        part = cur[cur["quantity"] == sim].groupby(["estimator", "param"])["value"].mean()
        for e in estimators:
            if e not in part.index.get_level_values(0):
                continue
            style = _style(e)
            y = [part.get((e, s), np.nan) for s in layer_steps]
            ax.plot(x, y, label=e, **style)
            for step, marker in (("floor", "v"), ("ceiling", "^")):
                if (e, step) in part.index:
                    ax.plot([len(layer_steps) + (step == "ceiling")], [part[(e, step)]],
                            marker=marker, color=style["color"], linestyle="none",
                            markersize=style["markersize"] + 2, zorder=style["zorder"])
        ax.set_xticks([*x.tolist(), len(layer_steps), len(layer_steps) + 1],
                      [*layer_steps, "floor", "ceiling"], rotation=45, fontsize=7)
        ax.set_title(sim)
        ax.set_xlabel("randomised up to layer")
        ax.axhline(0.0, color="0.8", linewidth=0.8, zorder=0)
    axes[0][0].set_ylabel("similarity to original explanation")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * math.ceil(len(labels) / 4), 1, 1))
    _save_figure(fig, path)
    return True


def _examples_figure(out: Path, estimators: list[str], run: dict[str, Any], path: Path) -> bool:
    """Test images after ROAR removal, one row per estimator, one column per percentage."""
    import matplotlib.pyplot as plt
    import torch

    from quantus_roar.curves import removed_inputs

    ex = out / "cache" / "examples.npz"
    if not ex.is_file():
        return False
    unreadable = (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile)
    try:
        with np.load(ex, allow_pickle=False) as f:
            x, index, ids, stats = f["x"], f["index"], f["ids"], f["stats"]
    except unreadable as err:
        logger.warning("No example figure: '%s' cannot be read (%s: %s); the next run "
                       "writes it again.", ex, type(err).__name__, err)
        return False
    rows = []
    for e in estimators:
        a_path = out / "attributions" / f"{file_name(e)}.test.npy"
        if a_path.is_file():
            try:
                a = np.asarray(np.load(a_path, mmap_mode="r")[index])
            except unreadable as err:
                logger.warning("The example figure leaves out %s: '%s' cannot be read (%s: "
                               "%s).", e, a_path, type(err).__name__, err)
                continue
            rows.append((e, a))
    if not rows:
        return False
    ps = [0, *run.get("percentages", [])]
    fig, axes = plt.subplots(len(rows), len(ps), figsize=(1.25 * len(ps) + 1.6,
                                                          1.25 * len(rows)), squeeze=False)
    img = x[:1]
    for r, (e, a) in enumerate(rows):
        xr, _ = removed_inputs(img, a[:1], ps[1:], order="remove_top",
                               granularity=run.get("granularity", "pixel"),
                               reduce=run.get("reduce", "sum_abs"),
                               imputer=run.get("imputer", "channel_mean"),
                               stats=torch.from_numpy(stats), seed=run.get("seed", 0),
                               sample_ids=ids[:1])
        frames = [torch.from_numpy(img[0]), *xr[:, 0]]
        for c, frame in enumerate(frames):
            ax = axes[r][c]
            arr = frame.numpy()
            ax.imshow(arr[0] if arr.shape[0] == 1 else np.clip(arr.transpose(1, 2, 0), 0, 1),
                      cmap="gray", vmin=float(img.min()), vmax=float(img.max()))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"{ps[c]:g}% removed", fontsize=8)
            if c == 0:
                ax.set_ylabel(e.replace("_", "\n"), fontsize=6, rotation=0, ha="right",
                              va="center")
    fig.suptitle("ROAR: a test image with the top-ranked features removed", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    _save_figure(fig, path)
    return True


# --------------------------------------------------------------------------- markdown


def _md(table: pd.DataFrame) -> str:
    if table.empty:
        return "_no results yet_\n"
    cols = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in table.itertuples(index=False):
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the store's contents


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_text_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


# What the report reads of the run description, and how each must look (when present).
_RUN_FIELDS: dict[str, tuple[Any, str]] = {
    "estimators": (_is_text_list, "a list of names"),
    "similarities": (_is_text_list, "a list of names"),
    "percentages": (lambda v: isinstance(v, list) and all(
        _is_number(p) and 0 < p <= 100 for p in v), "a list of numbers in (0, 100]"),
    "retrains": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
             "an integer >= 0"),
    "granularity": (lambda v: v in GRANULARITIES, f"one of {list(GRANULARITIES)}"),
    "reduce": (lambda v: v in REDUCES, f"one of {list(REDUCES)}"),
    "imputer": (lambda v: v in IMPUTERS, f"one of {list(IMPUTERS)}"),
    "layer_order": (lambda v: v in LAYER_ORDERS, f"one of {list(LAYER_ORDERS)}"),
    "versions": (lambda v: isinstance(v, dict), "a table of versions"),
}


def _not_ours(path: Path, what: str) -> StorageError:
    return StorageError(errno.EINVAL, f"The result store '{path}' holds {what}; it was damaged "
                        "or edited. Rebuild it with 'quantus-roar run --fresh' (same --out) or "
                        "use another folder.")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _checked_meta(path: Path, run: Any, layers: Any, layer_types: Any, expected: Any
                  ) -> dict[str, Any]:
    """The run description, after checking every field the report reads."""
    if run is None:
        run = {}
    if not isinstance(run, dict):
        raise _not_ours(path, f"a run description that is not a quantus-roar one (a "
                        f"{type(run).__name__}, {_shown(run)}, not a table of settings)")
    for key, (ok, what) in _RUN_FIELDS.items():
        if key in run and not ok(run[key]):
            raise _not_ours(path, f"a run description that is not a quantus-roar one ({key}: "
                            f"{_shown(run[key])}, not {what})")
    if layers is not None and not _is_text_list(layers):
        raise _not_ours(path, f"a list of layers that is not one ({_shown(layers)})")
    if layer_types is not None and not isinstance(layer_types, dict):
        raise _not_ours(path, f"layer types that are not a table ({_shown(layer_types)})")
    if expected is not None and not (isinstance(expected, int)
                                     and not isinstance(expected, bool)):
        raise _not_ours(path, f"an expected cell count that is not an integer "
                        f"({_shown(expected)})")
    return run


# Metrics whose param is a percentage (a number).
_CURVES = ("baseline", "roar", "kar", "roar-noretrain", "kar-noretrain", "mask-leakage")


def _checked_frame(path: Path, df: pd.DataFrame) -> pd.DataFrame:
    """The stored cells, after checking that values, times and percentages are numbers."""
    for column in ("value", "wall_s"):
        numeric = pd.to_numeric(df[column], errors="coerce")
        bad = numeric.isna() & df[column].notna()
        if bad.any():
            row = df[bad].iloc[0]
            raise _not_ours(path, f"a cell whose {column} is not a number ({row['metric']} "
                            f"{row['estimator']} {row['param']} seed {row['seed']}: "
                            f"{_shown(row[column])})")
        df[column] = numeric.astype(float)
    seeds = pd.to_numeric(df["seed"], errors="coerce")
    if (seeds.isna() | (seeds != seeds.round())).any():
        row = df[seeds.isna() | (seeds != seeds.round())].iloc[0]
        raise _not_ours(path, f"a cell whose seed is not an integer ({_shown(row['seed'])})")
    df["seed"] = seeds.astype(int)
    curve = df["metric"].str.partition("@")[0].isin(_CURVES)
    params = pd.to_numeric(df.loc[curve, "param"], errors="coerce")
    if params.isna().any():
        row = df[curve][params.isna()].iloc[0]
        raise _not_ours(path, f"a {row['metric']} cell whose percentage is not a number "
                        f"({_shown(row['param'])})")
    for column in ("metric", "estimator", "param", "quantity"):
        df[column] = df[column].astype(str)
    return df


def _read_store(out: Path) -> tuple[pd.DataFrame, dict[str, Any], list[str], dict[str, Any],
                                     Any]:
    """The checked cells, run description, layers, layer types and expected cell count."""
    with ResultStore.open_existing(out) as store:
        df = _checked_frame(store.path, store.frame())
        run = _checked_meta(store.path, store.get_meta("run"), store.get_meta("layers"),
                            store.get_meta("layer_types"), store.get_meta("expected_cells"))
        layers = store.get_meta("layers") or []
        layer_types = store.get_meta("layer_types") or {}
        expected = store.get_meta("expected_cells")
    return df, run, layers, layer_types, expected


def _diagnostics(out: Path) -> tuple[dict[Key, np.ndarray], float | None, dict[str, Any]]:
    """The per-sample results stored with the cells (none in stores written before), the
    run's chance level (stored by the runner with mask leakage), and the sizes of its
    splits and the time of its phases (``{"sizes": ..., "timings": ...}``), read in one go."""
    with ResultStore.open_existing(out) as store:
        samples, chance, sizes, timings = (store.samples(), store.get_meta("chance"),
                                           store.get_meta("sizes"), store.get_meta("timings"))
    return (samples, float(chance) if _is_number(chance) else None,
            {"sizes": sizes if isinstance(sizes, dict) else {}, "timings": timings})


def _figures_folder(out: Path) -> Path:
    figures = out / "figures"
    try:
        if figures.is_symlink():  # a link in place of the folder: replaced, never followed
            figures.unlink()
        figures.mkdir(exist_ok=True)
    except OSError as err:
        raise disk_error(err, figures, "create the folder") from err
    return figures


def _summary_section(df: pd.DataFrame, run: dict[str, Any], estimators: list[str],
                     expected: Any, timings: Any = None) -> list[str]:
    """The title, the run's settings, and how many cells are stored."""
    n_keys = len(df.groupby(["metric", "estimator", "param", "seed"])) if len(df) else 0
    lines = ["# quantus-roar benchmark report", ""]
    lines += [f"Dataset `{run.get('dataset')}`, model `{run.get('model')}`, device "
              f"`{run.get('device')}`, seed {run.get('seed')}; {len(estimators)} estimators, "
              f"{len(run.get('percentages', []))} percentages x {run.get('retrains')} retrains, "
              f"removal `{run.get('granularity')}`/`{run.get('reduce')}` with "
              f"`{run.get('imputer')}` imputation.", ""]
    status = f"{n_keys} cells stored" + (f" of {expected}" if expected else "")
    total_s = float(df["wall_s"].groupby([df["metric"], df["estimator"], df["param"],
                                          df["seed"]]).first().sum()) if len(df) else 0.0
    lines += [f"{status}; compute time in cells {total_s / 60:.1f} min. Versions: "
              f"{json.dumps(run.get('versions', {}))}. All values: `results.csv`.", ""]
    return lines + _timings_lines(timings)


_PHASE_ORDER = ("explained model", "attributions", "masks", "retraining", "deletion",
                "randomisation")


def _timings_lines(timings: Any) -> list[str]:
    """Where the last call of the run spent its time, per phase."""
    phases = timings.get("phases") if isinstance(timings, dict) else None
    if not isinstance(phases, dict) or not phases:
        return []
    shown = [f"{name} {float(phases[name]):.1f} s" for name in
             (*_PHASE_ORDER, *sorted(set(phases) - set(_PHASE_ORDER)))
             if name in phases and _is_number(phases[name])]
    workers = timings.get("workers")
    where = str(timings.get("executor")) + ("" if not _is_number(workers) else
                                           f", {workers} worker{'s' if workers != 1 else ''}")
    return [f"Time per phase in the last call of the run ({where}): " + ", ".join(shown)
            + ". Masks and retraining are summed over the processes that ran them, so with "
            "workers they overlap with the other phases and with each other. Building this "
            "report comes after them: `quantus-roar run` prints its time on its last line "
            "(`RunSummary.report_s`).", ""]


def _curve_sections(tables: _Tables, fills: list[str | None]) -> list[str]:
    """ROAR and KAR: accuracy per percentage, ranked by AUC, against Random (per fill)."""
    reps = tables.reps
    lines: list[str] = []
    for fill in fills:
        for metric, title, better in (("roar", "ROAR (remove and retrain)", "lower"),
                                      ("kar", "KAR (keep and retrain)", "higher")):
            table = tables.curve(_keyed(metric, fill))
            if table.empty:
                continue
            where = "0 % removed" if metric == "roar" else "100 % kept"
            done = "removed" if metric == "roar" else "kept"
            lines += [f"## {title}" + ("" if fill is None else f", fill `{fill}`"), "",
                      f"Test accuracy of models retrained on data with features {done} by "
                      f"each estimator (mean over retrains [95 % interval]; column headers are "
                      f"the share "
                      f"of features {done}; *unmodified*: trained on the data without removal, "
                      f"the point at {where}). Ranked by the normalised area under the curve, "
                      f"unmodified point included ({better} is better).", ""]
            with_samples = any(k[0] == _keyed(metric, fill) for k in reps)
            lines += [_intervals_text(table, metric, with_samples), "", _md(table)]
    return lines


def _noretrain_sections(df: pd.DataFrame, estimators: list[str], fills: list[str | None],
                        reps: dict[Key, np.ndarray]) -> list[str]:
    """ROAR and KAR against deletion without retraining: the two rankings compared."""
    lines: list[str] = []
    for fill in fills:
        for metric in ("roar", "kar"):
            table, rho = noretrain_comparison(df, _keyed(metric, fill), estimators, reps)
            if table.empty:
                continue
            lines += [f"## {metric.upper()} with and without retraining"
                      + ("" if fill is None else f", fill `{fill}`"), "",
                      f"Spearman rank correlation of the estimators' AUC with and without "
                      f"retraining: {spearman_text(table, rho)}. Without retraining the model "
                      "sees inputs unlike its training data, so a ranking by deletion alone "
                      "can mislead.", "", _md(table)]
    return lines


def morf_lerf_agreement(df: pd.DataFrame, estimators: list[str],
                        reps: dict[Key, np.ndarray] | None = None, fill: str | None = None,
                        n_boot: int = N_BOOT) -> tuple[float, tuple[float, float] | None, int]:
    """ROAD's consistency check without retraining: Spearman's rho between the
    estimators' MoRF AUC (``roar-noretrain``) and LeRF AUC (``kar-noretrain``), with its
    95 % bootstrap interval and the number of estimators.

    A consistent ranking puts an estimator that destroys accuracy fast when its top
    features go (low MoRF AUC) high when only they are kept (high LeRF AUC): rho near
    -1. NaN (no interval) with fewer than 3 estimators or a constant ranking.
    """
    from scipy import stats

    morf = _accuracy_rows(df, _keyed("roar-noretrain", fill))
    lerf = _accuracy_rows(df, _keyed("kar-noretrain", fill))
    if morf.empty or lerf.empty:
        return math.nan, None, 0
    per = [_estimator_replicates(acc, _cell_replicates(acc, reps or {}, n_boot), n_boot)
           for acc in (morf, lerf)]
    a, b = (_auc_per_seed(acc).groupby("estimator")["auc"].mean() for acc in (morf, lerf))
    common = [e for e in estimators if e in a.index and e in b.index]
    if len(common) < 3 or a[common].nunique() < 2 or b[common].nunique() < 2:
        return math.nan, None, len(common)
    rho = float(stats.spearmanr(a[common], b[common]).statistic)
    interval = percentile_interval(_replicate_spearman(
        np.stack([per[0][e][1] for e in common]), np.stack([per[1][e][1] for e in common])))
    return rho, interval, len(common)


def _consistency_section(df: pd.DataFrame, estimators: list[str], fills: list[str | None],
                         reps: dict[Key, np.ndarray]) -> list[str]:
    """ROAD's MoRF/LeRF consistency, per fill."""
    lines: list[str] = []
    for fill in fills:
        rho, interval, n = morf_lerf_agreement(df, estimators, reps, fill)
        if n == 0:
            continue
        value = (f"**{rho:.2f}** [95 % interval {interval[0]:.2f}, {interval[1]:.2f}]"
                 if interval is not None else
                 f"n/a ({n} estimators with both curves, or a constant ranking)")
        lines += ["## Consistency of deletion without retraining (MoRF vs LeRF)"
                  + ("" if fill is None else f", fill `{fill}`"), "",
                  f"Spearman rank correlation of the estimators' AUC when the most important "
                  f"features are removed (MoRF) and when only they are kept (LeRF), without "
                  f"retraining: {value} over {n} estimators. A consistent evaluation ranks "
                  "them in opposite orders (rho near -1; Rong et al., 2022); a rho near 0 "
                  "means the two orders disagree about which estimator is better.", ""]
    return lines


def fill_agreement(df: pd.DataFrame, metric: str, estimators: list[str], fills: list[str],
                   reps: dict[Key, np.ndarray] | None = None, n_boot: int = N_BOOT
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The estimators' AUC rank under each fill, and the Spearman correlation of the AUCs
    between every two fills with its 95 % bootstrap interval (test samples and seeds
    resampled, paired across fills: the same resample for every cell); NaN with fewer
    than 3 estimators in common or a constant ranking."""
    from scipy import stats

    aucs, per = {}, {}
    for fill in fills:
        acc = _accuracy_rows(df, _keyed(metric, fill))
        if not acc.empty:
            aucs[fill] = _auc_per_seed(acc).groupby("estimator")["auc"].mean()
            per[fill] = _estimator_replicates(acc, _cell_replicates(acc, reps or {}, n_boot),
                                              n_boot)
    common = [e for e in estimators if all(e in a.index for a in aucs.values())]
    if len(aucs) < 2 or not common:
        return pd.DataFrame(), pd.DataFrame()
    asc = metric == "roar"
    ranks = pd.DataFrame({"estimator": common, **{
        f"rank {fill}": aucs[fill][common].rank(ascending=asc, method="min").astype(int)
        .to_numpy() for fill in aucs}})
    pairs = []
    names = list(aucs)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            x, y = aucs[first][common], aucs[second][common]
            rho, interval = math.nan, "n/a"
            if len(common) >= 3 and x.nunique() > 1 and y.nunique() > 1:
                rho = float(stats.spearmanr(x, y).statistic)
                lo, hi = percentile_interval(_replicate_spearman(
                    np.stack([per[first][e][1] for e in common]),
                    np.stack([per[second][e][1] for e in common])))
                interval = f"[{lo:.2f}, {hi:.2f}]"
            pairs.append({"fills": f"{first} / {second}", "Spearman rho": rho,
                          "95 % interval": interval, "n estimators": len(common)})
    return ranks, pd.DataFrame(pairs)


def _fill_sections(df: pd.DataFrame, estimators: list[str], fills: list[str | None],
                   reps: dict[Key, np.ndarray]) -> list[str]:
    """With a sweep: how far the rankings of the fills agree."""
    named = [f for f in fills if f is not None]
    if len(named) < 2:
        return []
    lines: list[str] = []
    for metric in ("roar", "kar"):
        ranks, pairs = fill_agreement(df, metric, estimators, named, reps)
        if ranks.empty:
            continue
        lines += [f"## {metric.upper()}: does the fill change the ranking?", "",
                  "Rank of each estimator by AUC under each fill, and the Spearman "
                  "correlation of the AUCs between fills (1: the same order) with its 95 % "
                  "bootstrap interval over test samples and seeds. A ranking that "
                  "changes with the fill is a finding about the fill as much as about the "
                  "estimators.", "", _md(pairs), _md(ranks)]
    return lines


def _figure_lines(df: pd.DataFrame, run: dict[str, Any], estimators: list[str], out: Path,
                  figures: Path) -> list[str]:
    """The accuracy curves and the example images, where there is something to draw."""
    lines: list[str] = []
    if _curves_figure(df, estimators, figures / "curves.png", _fills(run)[0]):
        lines += ["![accuracy curves](figures/curves.png)", ""]
    if _examples_figure(out, estimators, run, figures / "examples.png"):
        lines += ["![what ROAR removes](figures/examples.png)", ""]
    return lines


def _similarities(df: pd.DataFrame, run: dict[str, Any]) -> list[str]:
    return [s for s in run.get("similarities", []) if s in set(df["quantity"])]


def _model_randomisation_section(df: pd.DataFrame, run: dict[str, Any], estimators: list[str],
                                 layers: list[str], layer_types: dict[str, Any], figures: Path
                                 ) -> list[str]:
    """Similarity per estimator as the layers are re-initialised, one table per similarity."""
    similarities = _similarities(df, run)
    order = layers[::-1] if run.get("layer_order", "top_down") == "top_down" else layers
    steps = [*order, "floor", "ceiling"]
    mr = [(s, randomisation_table(df, "model-randomisation", s, estimators, steps))
          for s in similarities]
    if not any(not t.empty for _, t in mr):
        return []
    lines = ["## Model randomisation", "",
             f"Similarity between the explanation of the trained model and that of the "
             f"model with its layers re-initialised `{run.get('layer_order')}` (mean over "
             "the explained test samples [95 % bootstrap interval over them]; ± std over "
             "sanity seeds when there are several). *floor*: a freshly initialised model; "
             "*ceiling*: a model trained on the same data with another seed. Lower "
             "similarity after randomisation passes the check.", "",
             *_model_free_note(df, run, "model-randomisation")]
    if layer_types:
        lines += ["Layers (execution order): " + ", ".join(
            f"`{name}` {layer_types.get(name, '')}".rstrip() for name in layers) + ".", ""]
    for sim, table in mr:
        lines += [f"### {sim}", "", _md(table)]
    if _randomisation_figure(df, estimators, steps, similarities,
                             figures / "model_randomisation.png"):
        lines += ["![model randomisation](figures/model_randomisation.png)", ""]
        if {"Random", "Sobel"} <= set(df.loc[df["metric"] == "model-randomisation",
                                              "estimator"]):
            lines += ["Random and Sobel do not depend on the model, so their curves "
                      "coincide: Random is the wide dashed black line with large circles, "
                      "Sobel the thin red line with small squares drawn on top of it.", ""]
    return lines


def _accuracy_text(values: pd.Series, n: Any) -> str:
    """A stored accuracy (mean over repeats) with its 95 % Wilson interval over ``n``
    samples, when ``n`` is known."""
    mean = float(values.mean())
    if len(values) == 1 and _is_number(n) and int(n) > 0:
        lo, hi = wilson_interval(round(mean * int(n)), int(n))
        return f"{mean:.3f} [95 % interval {lo:.3f}, {hi:.3f}; n = {int(n)}]"
    return _fmt(mean, float(values.std()))


def _data_randomisation_section(df: pd.DataFrame, run: dict[str, Any], estimators: list[str],
                                sizes: dict[str, Any]) -> list[str]:
    """Similarity to a model trained on permuted labels, one table per similarity."""
    dr = [(s, randomisation_table(df, "data-randomisation", s, estimators,
                                  ["random_labels", "floor", "ceiling"]))
          for s in _similarities(df, run)]
    if not any(not t.empty for _, t in dr):
        return []
    acc = df[(df["metric"] == "data-randomisation") & (df["estimator"] == "-")]
    tr = acc[acc["quantity"] == "train_accuracy"]["value"]
    te = acc[acc["quantity"] == "test_accuracy"]["value"]
    lines = ["## Data randomisation", "",
             "Similarity between the explanations of the trained model and of a model "
             "trained on permuted labels (*random_labels*), with floor and ceiling as "
             f"above. The random-label model fitted its training labels to "
             f"{_accuracy_text(tr, sizes.get('train'))} accuracy; on the true test labels "
             f"it scores {_accuracy_text(te, sizes.get('test'))}.", "",
             *_model_free_note(df, run, "data-randomisation")]
    for sim, table in dr:
        lines += [f"### {sim}", "", _md(table)]
    return lines


def _repeat_frames(out: Path, run: dict[str, Any], df: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """The cells of the run and of each repeat over the explained model found in
    ``out/model-seeds/``, by model seed. A folder whose run differs in anything but the
    model seed (or that cannot be read) is left out with a warning."""
    own = run.get("model_seed", run.get("seed", 0))
    frames = {int(own) if _is_number(own) else 0: df}
    folder = out / REPEATS
    if not folder.is_dir() or folder.is_symlink():
        return frames
    same = {k: v for k, v in run.items() if k not in ("model_seed",)}
    for sub in sorted(folder.iterdir(), key=lambda p: p.name):
        if not (sub / ResultStore.filename).is_file() or sub.is_symlink():
            continue
        try:
            other, theirs, *_ = _read_store(sub)
        except (StorageError, OSError, ValueError) as err:
            logger.warning("Repeat '%s' left out of the report: %s", sub, err)
            continue
        if {k: v for k, v in theirs.items() if k != "model_seed"} != same or not _is_number(
                theirs.get("model_seed")):
            logger.warning("Repeat '%s' left out of the report: its settings differ from "
                           "this run's in more than the model seed.", sub)
            continue
        frames[int(theirs["model_seed"])] = other
    return frames


def model_seed_table(frames: dict[int, pd.DataFrame], metric: str, estimators: list[str]
                     ) -> tuple[pd.DataFrame, float, tuple[float, float]]:
    """Each estimator's AUC (mean over retrains) under each model seed, its mean with a
    95 % t-interval over the model seeds, and its range of ranks; with the mean and the
    range of the Spearman correlations of the AUCs between every two model seeds."""
    from scipy import stats

    aucs = {}
    for seed, df in sorted(frames.items()):
        acc = _accuracy_rows(df, metric)
        if not acc.empty:
            aucs[seed] = _auc_per_seed(acc).groupby("estimator")["auc"].mean()
    names = [e for e in estimators if all(e in a.index for a in aucs.values())]
    if len(aucs) < 2 or len(names) < 1:
        return pd.DataFrame(), math.nan, (math.nan, math.nan)
    table = pd.DataFrame({f"model seed {s}": a[names].to_numpy() for s, a in aucs.items()},
                         index=names)
    ranks = table.rank(ascending=_base(metric) == "roar", method="min").astype(int)
    n = table.shape[1]
    mean, sd = table.mean(axis=1), table.std(axis=1, ddof=1)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    rhos = [float(stats.spearmanr(table.iloc[:, i], table.iloc[:, j]).statistic)
            for i in range(n) for j in range(i + 1, n)
            if len(names) >= 3 and table.iloc[:, i].nunique() > 1
            and table.iloc[:, j].nunique() > 1]
    shown = table.map(lambda v: f"{v:.3f}")
    # An accuracy's AUC lies in [0, 1]; so does its interval.
    shown["mean [95 % t-interval]"] = [_fmt_ci(m, max(0.0, m - h), min(1.0, m + h))
                                       for m, h in zip(mean, half, strict=True)]
    shown["ranks"] = [_rank_text(int(lo), int(hi)) for lo, hi in
                      zip(ranks.min(axis=1), ranks.max(axis=1), strict=True)]
    shown = shown.loc[mean.sort_values(ascending=_base(metric) == "roar", kind="stable").index]
    spread = (min(rhos), max(rhos)) if rhos else (math.nan, math.nan)
    return (shown.reset_index(names="estimator"), float(np.mean(rhos)) if rhos else math.nan,
            spread)


def _repeats_section(out: Path, run: dict[str, Any], df: pd.DataFrame, estimators: list[str],
                     fill: str | None) -> list[str]:
    """How ROAR and KAR vary over repeats of the whole pipeline over the explained model."""
    frames = _repeat_frames(out, run, df)
    if len(frames) < 2:
        return []
    lines = ["## Repeats over the explained model", "",
             f"The whole pipeline repeated over {len(frames)} explained models (model seeds "
             f"{', '.join(map(str, sorted(frames)))}: a new model, new attributions, new "
             "retrains, the same data). AUC per model seed (mean over retrains), its mean "
             "with a 95 % t-interval over the model seeds, and the range of ranks the "
             "estimator takes (each model seed's AUC has its bootstrap interval in the "
             f"report of its run, `{REPEATS}/<model seed>/report.md`). The intervals of the "
             "tables above cover test samples and training seeds of one explained model; "
             "these cover the explained model.", ""]
    for metric in ("roar", "kar"):
        table, rho, (lo, hi) = model_seed_table(frames, _keyed(metric, fill), estimators)
        if table.empty:
            continue
        agreement = ("n/a (fewer than 3 estimators, or a constant ranking)" if math.isnan(rho)
                     else f"{rho:.2f} (from {lo:.2f} to {hi:.2f})")
        lines += [f"### {metric.upper()}", "",
                  f"Spearman correlation of the AUCs between two model seeds, mean over "
                  f"pairs: {agreement}.", "", _md(table)]
    return lines


def _trio_section(tables: _Tables, run: dict[str, Any], layers: list[str],
                  fill: str | None) -> list[str]:
    from quantus_roar.benchmark.trio import trio_section

    return trio_section(tables.df, run, tables.estimators, layers, tables.chance, tables.reps,
                        fill, tables)


def build_report(out: str | Path) -> Path:
    """Write ``results.csv``, ``report.md`` and ``figures/*.png`` for the run in ``out``.

    Returns
    -------
    pathlib.Path
        The path of ``report.md``.

    Every file is written atomically inside ``out`` (a temporary file renamed
    over the target), so a link planted at a target is replaced, never
    followed, and a reader never sees half a report.

    Raises
    ------
    FileNotFoundError
        If ``out`` holds no result store.
    quantus_roar.exceptions.StorageError
        If the store is damaged, holds values that are not a quantus-roar run's
        (an edited run description, a text where a number belongs), or the folder
        cannot be written; the message names the file and the way out.
    """
    out = Path(out)
    df, run, layers, layer_types, expected = _read_store(out)
    samples, chance, meta = _diagnostics(out)
    fills, reps = _fills(run), replicates(samples)
    write_text(out / "results.csv",
               df.drop(columns=["fingerprint", "finished_at"]).to_csv(index=False))
    estimators = _estimators(df, run)
    tables = _Tables(df, estimators, chance, reps)
    figures = _figures_folder(out)
    lines = [*_summary_section(df, run, estimators, expected, meta["timings"]),
             *_curve_sections(tables, fills),
             *_noretrain_sections(df, estimators, fills, reps),
             *_consistency_section(df, estimators, fills, reps),
             *_fill_sections(df, estimators, fills, reps),
             *_leakage_section(tables, fills[0]),
             *_trio_section(tables, run, layers, fills[0]),
             *_figure_lines(df, run, estimators, out, figures),
             *_model_randomisation_section(df, run, estimators, layers, layer_types, figures),
             *_data_randomisation_section(df, run, estimators, meta["sizes"]),
             *_repeats_section(out, run, df, estimators, fills[0])]
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    return path
