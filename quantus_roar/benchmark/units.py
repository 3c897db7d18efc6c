"""The units of a run: groups of cells computed together (all retrains of one
estimator's ROAR curve, one deletion curve, one estimator's sanity check), and
:func:`plan`, every unit of a run in the order they are computed."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from quantus_roar.benchmark.context import RunContext
from quantus_roar.benchmark.store import Cell, Key, Samples
from quantus_roar.curves import deletion_curve, unmodified_point
from quantus_roar.executors import Executor, LocalExecutor
from quantus_roar.explainers import model_free
from quantus_roar.retrain import RetrainJob
from quantus_roar.retrain.base import fit_correct_many, fit_score_many
from quantus_roar.sanity import (
    Comparison,
    Explain,
    data_randomisation,
    model_randomisation,
)
from quantus_roar.splits import Split
from quantus_roar.stats import BOOTSTRAP_SEED, mean_interval
from quantus_roar.streaming import RemovedDataset
from quantus_roar.tasks import retrain_group_task

__all__ = ["Unit", "pixel_flipping_auc", "plan", "retrain_task"]

logger = logging.getLogger("quantus_roar.benchmark")

_CHUNK = 4096


@dataclass
class Unit:
    """Cells computed together: their keys and the function computing them."""

    metric: str
    estimator: str
    keys: list[Key]
    compute: Callable[[list[Key]], list[Cell | Samples]]
    remote: bool = False  # retraining: an executor task unless the data is streamed


# --------------------------------------------------------------------------- units


def _base(metric: str) -> str:
    """The metric of a stored name (``"roar@zero"`` -> ``"roar"``)."""
    return metric.partition("@")[0]


def _order(metric: str) -> str:
    return "keep_top" if _base(metric) in ("kar", "kar-noretrain") else "remove_top"


def retrain_task(ctx: RunContext, ex: Executor, metric: str, estimator: str, keys: list[Key]
                 ) -> tuple[Callable[..., Any], tuple, Callable[[dict], list[Cell | Samples]]]:
    """The missing (percentage, seed) retrains of one estimator's ROAR or KAR curve (or of
    the shared baseline) as one executor task: the unmodified data and the attributions go
    by handle, the task computes its masks (:func:`quantus_roar.tasks.retrain_group`)."""
    cfg = ctx.config
    jobs = [(float(key[2]), ctx.seeds[key[3]]) for key in keys]
    if metric == "baseline":
        a_tr = a_te = None
    else:
        a_tr = ctx.handle(("a", estimator, "train"), lambda: ctx.attributions(estimator, "train"))
        a_te = ctx.handle(("a", estimator, "test"), lambda: ctx.attributions(estimator, "test"))
    options = {"removal": cfg.metric_removal(metric), "stats": ctx.stats,
               "train_ids": ctx.train_ids, "test_ids": ctx.test_ids,
               "progress": ctx.progress and isinstance(ex, LocalExecutor)}
    # Mask leakage fills all-zero inputs: what the models see are the masks alone.
    x_name = "zeros" if _base(metric) == "mask-leakage" else "x"
    args = (ctx.retrainer, jobs, options,
            ctx.handle(f"{x_name}_train", lambda: ctx.inputs("train", x_name)),
            ctx.handle("y_train", lambda: ctx.data.y_train), a_tr,
            ctx.handle(f"{x_name}_test", lambda: ctx.inputs("test", x_name)),
            ctx.handle("y_test", lambda: ctx.data.y_test), a_te)

    def finish(out: dict) -> list[Cell | Samples]:
        per_job = out["retrain_time_s"] / max(1, len(keys))
        return [Cell(*key, "accuracy", acc, per_job)
                for key, acc in zip(keys, out["accuracy"], strict=True)] + _samples(
                    keys, out.get("correct"))

    return retrain_group_task, args, finish


def _streamed_retrain_unit(ctx: RunContext, metric: str, estimator: str,
                           keys: list[Key]) -> list[Cell | Samples]:
    """As :func:`retrain_task`, in this process, reading batches from the memory-mapped data."""
    jobs = []
    for key in keys:
        if metric == "baseline":
            x_tr = RemovedDataset(ctx.data.x_train, ctx.data.y_train)
            x_te = RemovedDataset(ctx.data.x_test, ctx.data.y_test)
        else:
            x_tr = ctx.removed(estimator, "train", float(key[2]), metric)
            x_te = ctx.removed(estimator, "test", float(key[2]), metric)
        jobs.append(RetrainJob(x_tr, None, x_te, None, ctx.seeds[key[3]]))
    start = time.perf_counter()
    correct = fit_correct_many(ctx.retrainer, jobs, progress=ctx.progress)
    scores = (fit_score_many(ctx.retrainer, jobs, progress=ctx.progress) if correct is None
              else [int(c.sum()) / max(1, len(c)) for c in correct])
    per_job = (time.perf_counter() - start) / max(1, len(jobs))
    return [Cell(*key, "accuracy", float(acc), per_job)
            for key, acc in zip(keys, scores, strict=True)] + _samples(keys, correct)


def _samples(keys: list[Key], correct: list[np.ndarray] | None) -> list[Samples]:
    """The per-sample results of retrained cells, when the retrainer gave them."""
    if correct is None:
        return []
    return [Samples(*key, np.asarray(c, dtype=bool)) for key, c in zip(keys, correct,
                                                                      strict=True)]


def _deletion_unit(ctx: RunContext, metric: str, estimator: str,
                   keys: list[Key]) -> list[Cell | Samples]:
    cfg = ctx.config
    start = time.perf_counter()
    x, y = ctx.data.x_test, ctx.data.y_test
    a = ctx.attributions(estimator, "test")
    rule = cfg.metric_removal(metric)
    # Chunks of _CHUNK samples, so memory-mapped data is never read whole; sample ids
    # keep every chunk's masks those of the whole set.
    starts = range(0, len(x), _CHUNK)
    frames = [deletion_curve(ctx.model, Split(ctx.tensor(x[lo : lo + _CHUNK]),
                                              ctx.tensor(y[lo : lo + _CHUNK]),
                                              ctx.tensor(a[lo : lo + _CHUNK]),
                                              int(ctx.test_ids[0]) + lo),
                             cfg.percentages, removal=rule, stats=ctx.stats, batch_size=256)
              for lo in starts]
    sizes = [min(_CHUNK, len(x) - lo) for lo in starts]
    wall = (time.perf_counter() - start) / (len(cfg.percentages) + 1)
    cells: list[Cell | Samples] = []
    correct = np.concatenate([f.attrs["correct"] for f in frames], axis=1)
    for i, p in enumerate(frames[0]["percentage"]):
        for q in ("accuracy", "true_class_score"):
            value = sum(float(f[q].iloc[i]) * n for f, n in zip(frames, sizes, strict=True))
            cells.append(Cell(metric, estimator, str(p), 0, q, value / len(x), wall))
        cells.append(Samples(metric, estimator, str(p), 0, correct[i]))
    wanted = set(keys)
    return [c for c in cells if c.key in wanted]


#: Quantus' PixelFlipping curve has about this many steps (features per step chosen so).
PIXEL_FLIPPING_STEPS = 64


def _features_in_step(n_positions: int, n_features: int,
                      steps: int = PIXEL_FLIPPING_STEPS) -> int:
    """A divisor of ``n_positions`` (Quantus checks it against the spatial size, H x W)
    that makes the number of steps over all ``n_features`` (C x H x W) closest to
    ``steps`` by ratio; more steps on a tie."""
    divisors = [d for d in range(1, n_positions + 1) if n_positions % d == 0]
    return min(divisors, key=lambda d: (abs(math.log(n_features / d / steps)), d))


def pixel_flipping_auc(model: nn.Module, x: np.ndarray, targets: np.ndarray, a: np.ndarray,
                       device: torch.device) -> np.ndarray:
    """Quantus' ``PixelFlipping`` per sample: the normalised area under the softmax score
    of ``targets`` as the features are replaced most relevant (``abs``) first, over about
    :data:`PIXEL_FLIPPING_STEPS` steps. Lower is better. The fill is Quantus' ``"mean"``:
    the mean of the image as perturbed so far, recomputed at every step; the curve starts
    after the first step, as Quantus' does."""
    import warnings

    import quantus

    fis = _features_in_step(int(np.prod(x.shape[2:])), int(np.prod(x.shape[1:])))
    metric = quantus.PixelFlipping(features_in_step=fis, perturb_baseline="mean", abs=True,
                                   normalise=False, disable_warnings=True,
                                   display_progressbar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Quantus' notices about its own parameters
        curves = np.asarray(metric(model=model, x_batch=x, y_batch=targets, a_batch=a,
                                   device=str(device), softmax=True, batch_size=256),
                            dtype=np.float64)
    if curves.shape[1] < 2:
        return curves[:, 0]
    # the trapezoid rule over [0, 1] (np.trapezoid needs numpy 2)
    return (curves[:, 1:] + curves[:, :-1]).sum(1) / (2.0 * (curves.shape[1] - 1))


def _pixel_flipping_unit(ctx: RunContext, metric: str, estimator: str,
                         keys: list[Key]) -> list[Cell]:
    """Quantus' PixelFlipping on the sanity samples, for the explained class. Where Quantus
    cannot evaluate the data (its own checks), the cells hold NaN, shown as n/a, and a
    warning says why: a run never stops for this comparison."""
    start = time.perf_counter()
    idx = ctx.sanity_index
    a = np.asarray(ctx.attributions(estimator, "test")[idx], dtype=np.float32)
    if a.shape[1:] != ctx.data.x_test.shape[1:]:  # one channel: Quantus wants x's shape
        a = np.broadcast_to(a, (len(a), *ctx.data.x_test.shape[1:])).copy()
    try:
        auc = pixel_flipping_auc(ctx.model, np.asarray(ctx.data.x_test[idx], dtype=np.float32),
                                 ctx.sanity_targets.cpu().numpy(), a, ctx.device)
    except Exception as err:  # Quantus' asserts and errors on data it does not support
        logger.warning("Quantus' PixelFlipping could not evaluate %s on this data (%s: %s); "
                       "its cells are stored as NaN (n/a in the report).", estimator,
                       type(err).__name__, err)
        auc = np.full(len(idx), np.nan)
    lo, hi = mean_interval(auc, seed=BOOTSTRAP_SEED)
    wall = time.perf_counter() - start
    return [Cell(*keys[0], "auc", float(np.mean(auc)) if np.isfinite(auc).all() else math.nan,
                 wall),
            Cell(*keys[0], "auc.lo", lo, wall), Cell(*keys[0], "auc.hi", hi, wall)]


def _by_repeat(keys: list[Key]) -> dict[int, list[Key]]:
    """The keys of a sanity unit grouped by repeat (their seed), in order."""
    out: dict[int, list[Key]] = {}
    for key in keys:
        out.setdefault(int(key[3]), []).append(key)
    return out


def _sanity_explain(ctx: RunContext, estimator: str) -> Explain:
    """The sanity cores' ``explain(model, step)`` with the run's cached estimator: the
    original explanations are computed once for both checks of the estimator."""
    shared = ctx.sanity_shared(estimator)

    def explain(model: nn.Module, step: str) -> torch.Tensor:
        if step != "original":
            return ctx.sanity_attributions(model, estimator)
        if "original" not in shared:
            shared["original"] = ctx.sanity_attributions(ctx.model, estimator)
        return shared["original"]

    return explain


# Both sanity checks compare the original explanations with those of the same floor
# model (every layer re-initialised with the repeat's floor seed) and the same ceiling
# model (ctx.ceiling_model), so the same numbers: whichever check of an estimator runs
# first computes these steps, the other reuses its comparisons.
_SHARED_STEPS = ("floor", "ceiling")


def _sharing(ctx: RunContext, estimator: str, s: int, steps: set[str],
             compute: Callable[[set[str]], Iterator[Comparison]]) -> Iterator[Comparison]:
    """The comparisons of ``steps`` in repeat ``s``: floor and ceiling from the estimator's
    other check when it has computed them, the rest from ``compute(steps left)``."""
    shared = ctx.sanity_shared(estimator)
    reused = [shared[(s, step)] for step in _SHARED_STEPS
              if step in steps and (s, step) in shared]
    left = steps - {c.step for c in reused}
    if left:
        for c in compute(left):
            if c.step in _SHARED_STEPS:
                shared[(s, c.step)] = c
            yield c
    yield from reused


def _counted(items: Iterator[Comparison], bar: Any) -> Iterator[Comparison]:
    for item in items:
        yield item
        bar.update()


def _sanity_cells(comparisons: Iterator[Comparison], keys: list[Key]) -> list[Cell]:
    """Per (key, similarity): the mean over the sanity samples, and its 95 % bootstrap
    interval over them as the quantities ``"<similarity>.lo"`` and ``"<similarity>.hi"``."""
    by_step = {key[2]: key for key in keys}
    cells = []
    for c in comparisons:
        for name, values in c.similarities.items():
            v = np.asarray(values, dtype=np.float64)
            mean = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
            lo, hi = mean_interval(v, seed=BOOTSTRAP_SEED)
            key = by_step[c.step]
            cells += [Cell(*key, name, mean, c.time_s), Cell(*key, f"{name}.lo", lo, c.time_s),
                      Cell(*key, f"{name}.hi", hi, c.time_s)]
    return cells


def _model_randomisation_unit(ctx: RunContext, metric: str, estimator: str,
                              keys: list[Key]) -> list[Cell]:
    explain, cells = _sanity_explain(ctx, estimator), []
    bar = tqdm(total=len(keys), desc="randomising layers", leave=False, disable=not ctx.progress)
    for s, wanted in _by_repeat(keys).items():
        def compute(steps: set[str], s: int = s) -> Iterator[Comparison]:
            return model_randomisation(
                ctx.model, explain, ctx.layers, seeds=ctx.sanity_seeds(s),
                similarities=ctx.config.similarities, layer_order=ctx.config.layer_order,
                ceiling=ctx.ceiling_model(s) if "ceiling" in steps else None, steps=steps)

        comparisons = _sharing(ctx, estimator, s, {key[2] for key in wanted}, compute)
        cells += _sanity_cells(_counted(comparisons, bar), wanted)
    bar.close()
    return cells


def _data_randomisation_unit(ctx: RunContext, metric: str, estimator: str,
                             keys: list[Key]) -> list[Cell]:
    if estimator == "-":  # the random-label models themselves
        cells = []
        for key in keys:
            start = time.perf_counter()
            _, train_acc, test_acc = ctx.random_label_model(key[3])
            wall = time.perf_counter() - start
            cells += [Cell(*key, "train_accuracy", train_acc, wall),
                      Cell(*key, "test_accuracy", test_acc, wall)]
        return cells
    explain, cells = _sanity_explain(ctx, estimator), []
    for s, wanted in _by_repeat(keys).items():
        def compute(steps: set[str], s: int = s) -> Iterator[Comparison]:
            return data_randomisation(
                ctx.model, explain, ctx.layers, seeds=ctx.sanity_seeds(s),
                similarities=ctx.config.similarities,
                random_label_model=(ctx.random_label_model(s)[0] if "random_labels" in steps
                                    else None),
                ceiling=ctx.ceiling_model(s) if "ceiling" in steps else None, steps=steps)

        comparisons = _sharing(ctx, estimator, s, {key[2] for key in wanted}, compute)
        cells += _sanity_cells(comparisons, wanted)
    return cells


def plan(ctx: RunContext) -> Iterator[Unit]:
    """Every unit of the run, in the order they are computed."""
    cfg = ctx.config
    ps = [str(p) for p in cfg.percentages]
    seeds = range(cfg.retrains)
    sanity = range(cfg.sanity_seeds)
    if {"roar", "kar"} & set(cfg.metrics):
        yield Unit("baseline", "-", [("baseline", "-", "0", s) for s in seeds],
                    lambda keys: _streamed_retrain_unit(ctx, "baseline", "-", keys),
                    remote=True)
    if "data-randomisation" in cfg.metrics:
        yield Unit("data-randomisation", "-",
                    [("data-randomisation", "-", "random_label_model", s) for s in sanity],
                    lambda keys: _data_randomisation_unit(ctx, "data-randomisation", "-", keys))
    for e in cfg.estimators:
        for metric in (m for name in cfg.metrics for m in cfg.keyed(name)):
            base = _base(metric)
            if base in ("roar-noretrain", "kar-noretrain"):
                unmodified = str(unmodified_point(_order(metric)))
                keys = [(metric, e, p, 0) for p in dict.fromkeys([unmodified, *ps])]
                fn = _deletion_unit
            elif base == "pixel-flipping":
                keys, fn = [(metric, e, "auc", 0)], _pixel_flipping_unit
            elif base in ("roar", "kar", "mask-leakage"):
                # The shared baseline unit is KAR's 100 % kept; mask leakage's 0 % (no
                # mask at all) is chance, reported from the labels.
                rng = range(cfg.leakage_seeds) if base == "mask-leakage" else seeds
                keys = [(metric, e, p, s) for p in ps for s in rng
                        if not (base == "kar" and p == "100")]
                fn = _streamed_retrain_unit
            elif model_free(e):
                continue  # the same maps for any weights: similarity 1 by construction
            elif metric == "model-randomisation":
                steps = [*(ctx.layers[::-1] if cfg.layer_order == "top_down" else ctx.layers),
                         "floor", "ceiling"]
                keys = [(metric, e, step, s) for s in sanity for step in steps]
                fn = _model_randomisation_unit
            else:
                keys = [(metric, e, step, s) for s in sanity
                        for step in ("random_labels", "floor", "ceiling")]
                fn = _data_randomisation_unit
            yield Unit(metric, e, keys,
                        lambda keys, fn=fn, metric=metric, e=e: fn(ctx, metric, e, keys),
                        remote=_base(metric) in ("roar", "kar", "mask-leakage"))

