"""The benchmark grid: estimators x metrics x percentages (or layers) x seeds.

:func:`run` loads the data, trains the model to explain, computes every
estimator's attributions once (cached as ``.npy`` in the output folder) and
then works through *units*: groups of cells computed together (all retrains of
one estimator's ROAR curve, one deletion curve, one estimator's sanity
check). Each unit's cells go into the :class:`~.store.ResultStore` in one
transaction as soon as the unit finishes, and a unit whose cells are all
stored is skipped, so an interrupted run resumes where it stopped.

Seeds: the ROAR and KAR retrains use :func:`quantus_roar.splits.retrain_seeds`
of the run's seed (the seeds :class:`quantus_roar.ROAR` uses), shared by every
estimator and percentage; the unmodified baseline (0 % removed for ROAR,
100 % kept for KAR) is trained once with them and shared by both. All other seeds (the explained
model, the sanity checks) derive from the run's seed through
``numpy.random.SeedSequence`` with fixed spawn keys.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from quantus_roar._io import disk_error, open_memmap, remove_quietly, write_text, write_with
from quantus_roar._validation import as_tensor
from quantus_roar.benchmark.config import RunConfig, file_name, fingerprint
from quantus_roar.benchmark.datasets import BenchmarkData, load_dataset
from quantus_roar.benchmark.store import STAGING_PREFIX, Cell, Key, OutputFolder, ResultStore
from quantus_roar.curves import deletion_curve, unmodified_point
from quantus_roar.executors import Executor, LocalExecutor, get_executor
from quantus_roar.explainers import ESTIMATORS, explain, explanation_targets
from quantus_roar.models import SmallCNN, SmallResNet
from quantus_roar.randomisation import execution_order
from quantus_roar.removal import channel_means
from quantus_roar.retrain import RetrainJob, TorchRetrainer
from quantus_roar.retrain.base import fit_score_many
from quantus_roar.sanity import (
    SanitySeeds,
    compare,
    derived_seed,
    model_randomisation_steps,
    permuted_labels,
)
from quantus_roar.splits import Split, retrain_seeds
from quantus_roar.streaming import RemovedDataset, chunked_channel_means
from quantus_roar.tasks import retrain_group_task, task_groups, task_resources

__all__ = ["RunSummary", "derived_seed", "file_name", "probe_explainers", "run"]

logger = logging.getLogger("quantus_roar.benchmark")

_CHUNK = 4096
# Spawn keys of the run's derived seeds.
# Spawn keys of the run's own derived seeds; the sanity checks' (2 to 6) are
# quantus_roar.sanity.SanitySeeds.
_BASE, _SANITY_SAMPLES = 1, 7


@dataclass
class RunSummary:
    """What a call of :func:`run` did.

    Attributes
    ----------
    out : Path
    computed : list of tuple
        Keys (metric, estimator, param, seed) computed by this call.
    skipped : int
        Cells found already stored and not recomputed.
    wall_s : float
    failed : list of (metric, estimator, error)
        Retraining tasks that failed on every retry; their cells are missing
        and a rerun computes them.
    """

    out: Path
    computed: list[Key] = field(default_factory=list)
    skipped: int = 0
    wall_s: float = 0.0
    failed: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class _Unit:
    metric: str
    estimator: str
    keys: list[Key]
    compute: Callable[[list[Key]], list[Cell]]
    remote: bool = False  # retraining: an executor task unless the data is streamed


# --------------------------------------------------------------------------- models


_BUILTIN_MODELS = ("smallcnn", "smallresnet")
_FACTORY_CONTRACT = ("a callable taking the keywords in_channels, n_classes and image_size and "
                     "returning a torch.nn.Module")


def import_factory(spec: str) -> Callable[..., Any] | None:
    """The callable of a ``package.module:factory`` spec (``None`` for the built-in models).

    Importing runs the module's code, as any Python import does; it happens only
    for such a spec, never for ``smallcnn`` or ``smallresnet``.

    Raises
    ------
    ValueError
        For an unknown name, a module that cannot be imported, or a missing or
        non-callable attribute; one line naming the spec.
    """
    if callable(spec):
        return spec
    if spec.lower() in _BUILTIN_MODELS:
        return None
    module_name, _, attr = spec.partition(":")
    if not module_name.strip() or not attr.strip():
        raise ValueError(f"Unknown model {spec!r}. Use 'smallcnn', 'smallresnet' or "
                         f"'package.module:factory' ({_FACTORY_CONTRACT}).")
    return import_callable(spec, "model factory")


def model_factory(spec: str | Callable[..., nn.Module], data: BenchmarkData
                  ) -> Callable[[], nn.Module]:
    """Zero-argument factory of fresh models for ``spec`` (a name, a
    ``package.module:factory`` spec or a factory itself) sized for ``data``."""
    c, h = data.shape[0], data.shape[-1]
    k = data.n_classes
    if callable(spec):
        return lambda: spec(in_channels=c, n_classes=k, image_size=h)
    name = spec.lower()
    if name == "smallcnn":
        if h % 2:
            raise ValueError(f"SmallCNN needs an even image size; the data has {h}x{h}. Use "
                             "--model smallresnet or your own factory (package.module:factory).")
        return lambda: SmallCNN(in_channels=c, n_classes=k, image_size=h)
    if name == "smallresnet":
        return lambda: SmallResNet(in_channels=c, n_classes=k)
    factory = import_factory(spec)
    assert factory is not None
    return lambda: factory(in_channels=c, n_classes=k, image_size=h)


def checked_model_factory(spec: str | Callable[..., nn.Module], data: BenchmarkData
                          ) -> Callable[[], nn.Module]:
    """:func:`model_factory`, after building one model to check the factory (RNG untouched).

    Raises
    ------
    ValueError
        If the factory raises (a wrong signature, a bug in it) or returns no
        ``torch.nn.Module``; one line naming the spec and the call.
    """
    factory = model_factory(spec, data)
    c, h, k = data.shape[0], data.shape[-1], data.n_classes
    name = spec if isinstance(spec, str) else getattr(spec, "__qualname__", repr(spec))
    call = f"{name}(in_channels={c}, n_classes={k}, image_size={h})"
    with torch.random.fork_rng(devices=[]):
        try:
            model = factory()
        except Exception as err:
            raise ValueError(f"The model factory failed when called as {call}: "
                             f"{type(err).__name__}: {err}. A factory is "
                             f"{_FACTORY_CONTRACT}.") from err
    if not isinstance(model, nn.Module):
        raise ValueError(f"The model factory returned a {type(model).__name__} when called as "
                         f"{call}, not a torch.nn.Module. A factory is {_FACTORY_CONTRACT}.")
    return factory


def _save_model(model: nn.Module, path: Path) -> None:
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    write_with(path, lambda f: np.savez(f, **arrays))


def _load_model(model: nn.Module, path: Path) -> nn.Module:
    with np.load(path, allow_pickle=False) as f:
        state = {k: torch.from_numpy(f[k]) for k in f.files}
    model.load_state_dict(state)
    return model.eval()


# --------------------------------------------------------------------------- your own work

Explainer = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.device], np.ndarray]


def explainer(config: RunConfig, name: str) -> Explainer:
    """The explain function of estimator ``name``: a built-in, one of ``config.explainers``,
    or an imported ``package.module:function``, as ``f(model, x, targets, device) -> array``.

    A user's function is called with Quantus' convention, ``f(model=..., inputs=...,
    targets=...)`` on numpy arrays (plus ``device`` when it takes one); its output
    must be finite and of the shape of the inputs or one channel.
    """
    if name in ESTIMATORS:
        def builtin(model: nn.Module, x: torch.Tensor, t: torch.Tensor,
                    device: torch.device) -> np.ndarray:
            return explain(model, x, t, **ESTIMATORS[name], seed=config.seed, device=device,
                           batch_size=config.explain_batch_size)
        return builtin
    fn = (config.explainers or {}).get(name) or import_callable(name, "explain function")
    takes_device = _accepts(fn, "device")

    def user(model: nn.Module, x: torch.Tensor, t: torch.Tensor,
             device: torch.device) -> np.ndarray:
        kwargs = {"device": device} if takes_device else {}
        out = fn(model=model, inputs=x.cpu().numpy(), targets=t.cpu().numpy(), **kwargs)
        a = np.asarray(out.detach().cpu() if isinstance(out, torch.Tensor) else out,
                       dtype=np.float32)
        ok = a.ndim in (x.ndim, x.ndim - 1) and len(a) == len(x) and (
            a.shape[-2:] == tuple(x.shape[-2:]) if x.ndim >= 3 else a.shape == tuple(x.shape))
        if not ok:
            raise ValueError(f"The explain function {name!r} returned shape {a.shape} for "
                             f"inputs of shape {tuple(x.shape)}; it must return attributions "
                             "of the shape of the inputs, or with one channel.")
        if not np.isfinite(a).all():
            raise ValueError(f"The explain function {name!r} returned NaN or inf for "
                             f"{int((~np.isfinite(a)).sum())} value(s).")
        return a if a.ndim == x.ndim else a[:, None]
    return user


_PROBE = 2


def probe_explainers(config: RunConfig, data: BenchmarkData, factory: Callable[[], nn.Module],
                     device: torch.device) -> None:
    """Call each of the user's explain functions once, on 2 test samples and a freshly
    built (untrained) model, before anything is trained or written.

    The targets are those the run explains (the model's predicted classes, or the
    labels with ``target="label"``); the output must be finite attributions of the
    shape of the inputs (or one channel). Every random state (torch's, numpy's
    global one, Python's) is as it was afterwards. The built-in estimators are not
    probed.

    Raises
    ------
    ValueError
        One line naming the estimator: ``The explain function 'os:getcwd' failed on
        2 samples: TypeError: ...``.
    """
    user = [e for e in config.estimators if e not in ESTIMATORS]
    if not user:
        return
    n = min(_PROBE, len(data.y_test))
    devices = ([device.index if device.index is not None else torch.cuda.current_device()]
               if device.type == "cuda" else [])
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        with torch.random.fork_rng(devices=devices):
            model = factory().to(device).eval()
            x = as_tensor(np.asarray(data.x_test[:n]), "x", "quantus-roar run")
            y = torch.as_tensor(np.asarray(data.y_test[:n]))
            targets = explanation_targets(model, x, y, config.target, device=device,
                                          batch_size=config.explain_batch_size)
            for name in user:
                fn = explainer(config, name)
                try:
                    fn(model, x, targets, device)
                except Exception as err:
                    text = " ".join(str(err).split()) or "(no message)"
                    raise ValueError(f"The explain function {name!r} failed on {n} samples: "
                                     f"{type(err).__name__}: {text}") from err
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


def _accepts(fn: Callable[..., Any], keyword: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return keyword in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def import_callable(spec: str, what: str) -> Callable[..., Any]:
    """The callable named by ``package.module:function`` (imports that module's code)."""
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except ImportError as err:
        raise ValueError(f"Cannot import the module of the {what} {spec!r}: {err}. Check the "
                         "spelling and that the module is on the import path (PYTHONPATH)."
                         ) from err
    except AttributeError:
        raise ValueError(f"The module {module_name!r} has no {attr!r} (the {what} "
                         f"{spec!r}).") from None
    except Exception as err:  # the module's own code failed
        raise ValueError(f"Importing the module of the {what} {spec!r} failed: "
                         f"{type(err).__name__}: {err}") from err
    if not callable(obj):
        kind = type(obj).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise ValueError(f"The {what} {spec!r} is {article} {kind}, not a callable (a "
                         "function, or a class).")
    return obj


def recipe_retrainer(config: RunConfig, factory: Callable[[], nn.Module],
                     device: torch.device) -> TorchRetrainer:
    """A :class:`TorchRetrainer` with the recipe settings of ``config``."""
    recipe = config.recipe()
    if isinstance(recipe.get("augment"), str):
        recipe["augment"] = import_callable(recipe["augment"], "augment function")
    return TorchRetrainer(model_fn=factory, device=device, **recipe)


# --------------------------------------------------------------------------- context


class _Context:
    """Shared, lazily built state of a run: data, models, attributions."""

    def __init__(self, config: RunConfig, out: Path, data: BenchmarkData, device: torch.device,
                 progress: bool, executor: Executor,
                 factory: Callable[[], nn.Module] | None = None):
        self.config = config
        self.executor = executor
        self.out = out
        self.data = data
        self.device = device
        self.progress = progress
        self.cache = _own_dir(out / "cache")
        _own_dir(out / "attributions")
        self.factory = factory if factory is not None else model_factory(config.model, data)
        self.retrainer = (config.retrainer if config.retrainer is not None
                          else recipe_retrainer(config, self.factory, device))
        self.explainers = {e: explainer(config, e) for e in config.estimators}
        self.n_train, self.n_test = len(data.y_train), len(data.y_test)
        self.train_ids = torch.arange(self.n_train)
        self.test_ids = torch.arange(self.n_train, self.n_train + self.n_test)
        self.seeds = retrain_seeds(config.seed, config.retrains)
        self._memo: dict[Any, Any] = {}

    def handle(self, key: Any, build: Callable[[], Any]) -> Any:
        """``executor.put(build())`` once per key: data shared by the executor's tasks."""
        return self.memo(("handle", key), lambda: self.executor.put(build()))

    def memo(self, key: Any, build: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    # ------------------------------------------------------------------ data views

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        d = self.data
        return (d.x_train, d.y_train) if name == "train" else (d.x_test, d.y_test)

    @staticmethod
    def tensor(x: np.ndarray) -> torch.Tensor:
        """A tensor of ``x`` (copied from read-only, memory-mapped arrays)."""
        return as_tensor(x, "x", "quantus-roar run")

    @property
    def stats(self) -> torch.Tensor:
        def build() -> torch.Tensor:
            if self.data.streamed:
                return torch.from_numpy(chunked_channel_means(self.data.x_train))
            return torch.as_tensor(channel_means(self.data.x_train))
        return self.memo("stats", build)

    @property
    def sanity_index(self) -> np.ndarray:
        def build() -> np.ndarray:
            k = self.config.sanity_samples
            if k == 0 or k >= self.n_test:
                return np.arange(self.n_test)
            rng = np.random.default_rng(derived_seed(self.config.seed, _SANITY_SAMPLES))
            return np.sort(rng.choice(self.n_test, size=k, replace=False))
        return self.memo("sanity_index", build)

    def save_examples(self, k: int = 4) -> None:
        """The first ``k`` test images, their ids and the channel means, for the report."""
        path = self.cache / "examples.npz"
        if not path.is_file() or path.is_symlink():
            index = np.arange(min(k, self.n_test))
            arrays = dict(x=np.asarray(self.data.x_test[index]), index=index,
                          ids=self.test_ids[index].numpy(), stats=self.stats.numpy())
            write_with(path, lambda f: np.savez(f, **arrays))

    # ------------------------------------------------------------------ models

    def fit(self, x: np.ndarray, y: np.ndarray, seed: int) -> nn.Module:
        if self.data.streamed:
            return self.retrainer.fit(RemovedDataset(x, y), None, seed=seed)
        return self.retrainer.fit(x, y, seed=seed)

    def score(self, model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
        if self.data.streamed:
            return self.retrainer.score(model, RemovedDataset(x, y), None)
        return self.retrainer.score(model, x, y)

    @property
    def model(self) -> nn.Module:
        """The model whose attributions are evaluated (trained once, weights cached)."""
        def build() -> nn.Module:
            path = self.cache / "model.npz"
            if path.is_file() and not path.is_symlink():
                try:
                    return _load_model(self.factory(), path).to(self.device)
                except Exception as err:  # a damaged cache: the same weights are trained again
                    logger.warning("The cached model weights '%s' cannot be read (%s: %s); "
                                   "training the model again (same seed, same weights).", path,
                                   type(err).__name__, err)
            model = self.fit(self.data.x_train, self.data.y_train,
                             derived_seed(self.config.seed, _BASE))
            _save_model(model, path)
            return model
        return self.memo("model", build)

    @property
    def layers(self) -> list[str]:
        def build() -> list[str]:
            x = self.tensor(self.data.x_test[:1]).to(self.device)
            return [name for name, _ in execution_order(self.model, x)]
        return self.memo("layers", build)

    def sanity_seeds(self, s: int) -> SanitySeeds:
        """The seeds of sanity-check repeat ``s`` (repeat 0: the metrics' seeds)."""
        return SanitySeeds.derive(self.config.seed, s)

    def ceiling_model(self, s: int) -> nn.Module:
        """A model trained on the true labels with another seed (the sanity checks' ceiling)."""
        return self.memo(("ceiling", s), lambda: self.fit(
            self.data.x_train, self.data.y_train, self.sanity_seeds(s).ceiling))

    def floor_model(self, s: int) -> nn.Module:
        return dict(self.randomised(s))["floor"]

    def randomised(self, s: int) -> list[tuple[str, nn.Module]]:
        """Every model model randomisation compares, by step: the layers, then "floor"."""
        def build() -> list[tuple[str, nn.Module]]:
            steps = model_randomisation_steps(self.model, self.layers, self.config.layer_order,
                                              self.sanity_seeds(s))
            return [(name, copy.deepcopy(m)) for name, m in steps]
        return self.memo(("randomised", s), build)

    def random_label_model(self, s: int) -> tuple[nn.Module, float, float]:
        """A model fitted to permuted training labels, its train and test accuracy."""
        def build() -> tuple[nn.Module, float, float]:
            cfg = self.config
            y_perm = permuted_labels(self.data.y_train, self.sanity_seeds(s))
            seed = self.sanity_seeds(s).fit
            x = self.data.x_train
            if self.data.streamed:
                model = self.fit(x, y_perm, seed)
                acc = self.score(model, x, y_perm)
            else:
                model, acc = self.retrainer.fit_until(x, y_perm, seed=seed,
                                                      min_accuracy=cfg.min_train_accuracy,
                                                      max_epochs=cfg.max_epochs)
            if acc < cfg.min_train_accuracy:
                logger.warning("The random-label model %d reached %.3f training accuracy, below "
                               "min_train_accuracy=%s; raise max_epochs or the recipe's "
                               "capacity.", s, acc, cfg.min_train_accuracy)
            return model, float(acc), self.score(model, self.data.x_test, self.data.y_test)
        return self.memo(("random_labels", s), build)

    # ------------------------------------------------------------------ attributions

    def _explain_to(self, path: Path, model: nn.Module, x: np.ndarray, y: np.ndarray,
                    estimator: str) -> None:
        """Explain ``x`` chunk by chunk into a ``.npy`` file, atomically.

        The chunks go into ``<name>.partial.npy`` (its disk space allocated up front,
        so a full disk is an error here, not a crash), renamed to ``path`` when
        complete; on any error the partial file is removed.
        """
        n = len(x)
        tmp = path.with_suffix(".partial.npy")
        remove_quietly(tmp)  # a stale one from a killed run (or a link: never followed)
        out = None
        step = 8 * self.config.explain_batch_size
        bar = tqdm(total=n, desc=f"explaining {path.stem}", unit="sample", leave=False,
                   disable=not self.progress)
        try:
            for start in range(0, n, step):
                rows = slice(start, start + step)
                x_rows = self.tensor(x[rows])
                targets = explanation_targets(model, x_rows, self.tensor(y[rows]),
                                              self.config.target, device=self.device,
                                              batch_size=self.config.explain_batch_size)
                a = self.explainers[estimator](model, x_rows, targets, self.device)
                if out is None:
                    out = open_memmap(tmp, np.float32, (n, *a.shape[1:]))
                out[start : start + len(a)] = a
                bar.update(len(a))
            assert out is not None
            out.flush()
            out = None  # closes the memory map
            try:
                os.replace(tmp, path)
            except OSError as err:
                raise disk_error(err, path) from err
        except BaseException:
            del out  # the memory map, before its file goes
            remove_quietly(tmp)
            raise
        finally:
            bar.close()

    def attributions(self, estimator: str, split: str) -> np.ndarray:
        """Attributions of ``split`` by the model, computed once and cached as ``.npy``."""
        def build() -> np.ndarray:
            path = self.out / "attributions" / f"{file_name(estimator)}.{split}.npy"
            x, y = self.split(split)
            if path.is_file() and not path.is_symlink():
                try:
                    a = np.load(path, mmap_mode="r" if self.data.streamed else None)
                    if len(a) == len(x):
                        return a
                    reason = f"{len(a)} rows for {len(x)} samples"
                except (OSError, ValueError, EOFError) as err:
                    reason = f"{type(err).__name__}: {err}"
                logger.warning("The cached attributions '%s' cannot be used (%s); computing "
                               "them again.", path, reason)
            self._explain_to(path, self.model, x, y, estimator)
            return np.load(path, mmap_mode="r" if self.data.streamed else None)
        return self.memo(("a", estimator, split), build)

    @property
    def sanity_targets(self) -> torch.Tensor:
        """The classes the sanity checks explain, for every model compared: the trained
        model's predictions (or the labels, with ``target="label"``)."""
        def build() -> torch.Tensor:
            idx = self.sanity_index
            return explanation_targets(self.model, self.tensor(self.data.x_test[idx]),
                                       self.tensor(self.data.y_test[idx]), self.config.target,
                                       device=self.device,
                                       batch_size=self.config.explain_batch_size)
        return self.memo("sanity_targets", build)

    def sanity_attributions(self, model: nn.Module, estimator: str) -> torch.Tensor:
        x = self.tensor(self.data.x_test[self.sanity_index])
        return torch.from_numpy(self.explainers[estimator](model, x, self.sanity_targets,
                                                           self.device))

    # ------------------------------------------------------------------ removal

    def removed(self, estimator: str, split: str, p: float, order: str) -> RemovedDataset:
        """The streamed split with features removed at ``p``, as a lazy Dataset."""
        cfg = self.config
        x, y = self.split(split)
        ids = self.train_ids if split == "train" else self.test_ids
        return RemovedDataset(x, y, self.attributions(estimator, split), p,
                              first_id=int(ids[0]), removal=cfg.removal(order),
                              stats=self.stats)


# --------------------------------------------------------------------------- units


def _order(metric: str) -> str:
    return "keep_top" if metric in ("kar", "kar-noretrain") else "remove_top"


def _retrain_task(ctx: _Context, ex: Executor, metric: str, estimator: str, keys: list[Key]
                  ) -> tuple[Callable[..., Any], tuple, Callable[[dict], list[Cell]]]:
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
    options = {"removal": cfg.removal(_order(metric)), "stats": ctx.stats,
               "train_ids": ctx.train_ids, "test_ids": ctx.test_ids,
               "progress": ctx.progress and isinstance(ex, LocalExecutor)}
    args = (ctx.retrainer, jobs, options, ctx.handle("x_train", lambda: ctx.data.x_train),
            ctx.handle("y_train", lambda: ctx.data.y_train), a_tr,
            ctx.handle("x_test", lambda: ctx.data.x_test),
            ctx.handle("y_test", lambda: ctx.data.y_test), a_te)

    def finish(out: dict) -> list[Cell]:
        per_job = out["retrain_time_s"] / max(1, len(keys))
        return [Cell(*key, "accuracy", acc, per_job)
                for key, acc in zip(keys, out["accuracy"], strict=True)]

    return retrain_group_task, args, finish


def _streamed_retrain_unit(ctx: _Context, metric: str, estimator: str,
                           keys: list[Key]) -> list[Cell]:
    """As :func:`_retrain_task`, in this process, reading batches from the memory-mapped data."""
    jobs = []
    for key in keys:
        if metric == "baseline":
            x_tr = RemovedDataset(ctx.data.x_train, ctx.data.y_train)
            x_te = RemovedDataset(ctx.data.x_test, ctx.data.y_test)
        else:
            x_tr = ctx.removed(estimator, "train", float(key[2]), _order(metric))
            x_te = ctx.removed(estimator, "test", float(key[2]), _order(metric))
        jobs.append(RetrainJob(x_tr, None, x_te, None, ctx.seeds[key[3]]))
    done_keys = keys
    start = time.perf_counter()
    scores = fit_score_many(ctx.retrainer, jobs, progress=ctx.progress)
    per_job = (time.perf_counter() - start) / max(1, len(jobs))
    return [Cell(*key, "accuracy", float(acc), per_job)
            for key, acc in zip(done_keys, scores, strict=True)]


def _deletion_unit(ctx: _Context, metric: str, estimator: str, keys: list[Key]) -> list[Cell]:
    cfg = ctx.config
    order = _order(metric)
    start = time.perf_counter()
    x, y = ctx.data.x_test, ctx.data.y_test
    a = ctx.attributions(estimator, "test")
    rule = cfg.removal(order)
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
    cells = []
    for i, p in enumerate(frames[0]["percentage"]):
        for q in ("accuracy", "true_class_score"):
            value = sum(float(f[q].iloc[i]) * n for f, n in zip(frames, sizes, strict=True))
            cells.append(Cell(metric, estimator, str(p), 0, q, value / len(x), wall))
    wanted = set(keys)
    return [c for c in cells if c.key in wanted]


def _mean_similarity(ctx: _Context, original: torch.Tensor, other: torch.Tensor
                     ) -> dict[str, float]:
    """Mean similarity over the sanity samples, per similarity of the run."""
    return {name: float(np.nanmean(values))
            for name, values in compare(original, other, ctx.config.similarities).items()}


def _model_randomisation_unit(ctx: _Context, metric: str, estimator: str,
                              keys: list[Key]) -> list[Cell]:
    original = ctx.sanity_attributions(ctx.model, estimator)
    cells = []
    for key in tqdm(keys, desc="randomising layers", leave=False, disable=not ctx.progress):
        _, _, step, s = key
        start = time.perf_counter()
        if step == "floor":
            model = ctx.floor_model(s)
        elif step == "ceiling":
            model = ctx.ceiling_model(s)
        else:
            model = dict(ctx.randomised(s))[step]
        values = _mean_similarity(ctx, original, ctx.sanity_attributions(model, estimator))
        wall = time.perf_counter() - start
        cells += [Cell(*key, q, v, wall) for q, v in values.items()]
    return cells


def _data_randomisation_unit(ctx: _Context, metric: str, estimator: str,
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
    original = ctx.sanity_attributions(ctx.model, estimator)
    cells = []
    for key in keys:
        _, _, step, s = key
        start = time.perf_counter()
        model = {"random_labels": lambda s=s: ctx.random_label_model(s)[0],
                 "floor": lambda s=s: ctx.floor_model(s),
                 "ceiling": lambda s=s: ctx.ceiling_model(s)}[step]()
        values = _mean_similarity(ctx, original, ctx.sanity_attributions(model, estimator))
        wall = time.perf_counter() - start
        cells += [Cell(*key, q, v, wall) for q, v in values.items()]
    return cells


def _plan(ctx: _Context) -> Iterator[_Unit]:
    """Every unit of the run, in the order they are computed."""
    cfg = ctx.config
    ps = [str(p) for p in cfg.percentages]
    seeds = range(cfg.retrains)
    sanity = range(cfg.sanity_seeds)
    if {"roar", "kar"} & set(cfg.metrics):
        yield _Unit("baseline", "-", [("baseline", "-", "0", s) for s in seeds],
                    lambda keys: _streamed_retrain_unit(ctx, "baseline", "-", keys),
                    remote=True)
    if "data-randomisation" in cfg.metrics:
        yield _Unit("data-randomisation", "-",
                    [("data-randomisation", "-", "random_label_model", s) for s in sanity],
                    lambda keys: _data_randomisation_unit(ctx, "data-randomisation", "-", keys))
    for e in cfg.estimators:
        for metric in cfg.metrics:
            if metric in ("roar-noretrain", "kar-noretrain"):
                unmodified = str(unmodified_point(_order(metric)))
                keys = [(metric, e, p, 0) for p in dict.fromkeys([unmodified, *ps])]
                fn = _deletion_unit
            elif metric in ("roar", "kar"):
                # The shared baseline unit is KAR's 100 % kept.
                keys = [(metric, e, p, s) for p in ps for s in seeds
                        if not (metric == "kar" and p == "100")]
                fn = _streamed_retrain_unit
            elif metric == "model-randomisation":
                steps = [*(ctx.layers[::-1] if cfg.layer_order == "top_down" else ctx.layers),
                         "floor", "ceiling"]
                keys = [(metric, e, step, s) for s in sanity for step in steps]
                fn = _model_randomisation_unit
            else:
                keys = [(metric, e, step, s) for s in sanity
                        for step in ("random_labels", "floor", "ceiling")]
                fn = _data_randomisation_unit
            yield _Unit(metric, e, keys,
                        lambda keys, fn=fn, metric=metric, e=e: fn(ctx, metric, e, keys),
                        remote=metric in ("roar", "kar"))


# --------------------------------------------------------------------------- run


def _resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"The 'device' setting must be 'cpu', 'cuda' or 'cuda:N'. Got "
                         f"{device!r} ({err}).") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for, but torch sees no CUDA device. Use "
                         "--device cpu.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device} was asked for, but torch sees "
                         f"{torch.cuda.device_count()} CUDA device(s) (cuda:0 to "
                         f"cuda:{torch.cuda.device_count() - 1}).")
    return dev


def _own_dir(path: Path) -> Path:
    """``path`` as a folder of the run: created if missing; a link in its place is removed
    (never followed), so every file the run writes stays inside the output folder."""
    try:
        if path.is_symlink():
            path.unlink()
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise disk_error(err, path, "create the folder") from err
    return path


def _load_streamed(config: RunConfig, out: Path) -> tuple[BenchmarkData, Path]:
    """Streamed data written into a new staging folder of ``out`` (moved into ``cache/data``
    once every check passed, so a failing load leaves the folder as it was)."""
    try:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    except OSError as err:
        raise disk_error(err, out, "create a folder in") from err
    try:
        data = load_dataset(config.dataset, seed=config.seed, cache=staging,
                            image_size=config.image_size)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return data, staging


def _move_staged(data: BenchmarkData, staging: Path, out: Path) -> None:
    """Move the streamed data from ``staging`` to ``out/cache/data`` and reopen it there."""
    target = _own_dir(out / "cache" / "data")
    try:
        for name in ("x_train.npy", "x_test.npy"):
            os.replace(staging / name, target / name)
    except OSError as err:
        raise disk_error(err, target) from err
    data.x_train = np.load(target / "x_train.npy", mmap_mode="r")
    data.x_test = np.load(target / "x_test.npy", mmap_mode="r")


def _summary_lines(cells: list[Cell]) -> list[str]:
    """One line per finished cell: its key, every quantity measured, its compute time."""
    by_key: dict[Key, list[Cell]] = {}
    for cell in cells:
        by_key.setdefault(cell.key, []).append(cell)
    return [f"{metric:<20} {estimator:<38} {param:>18} seed {seed}: "
            + " ".join(f"{c.quantity} {c.value:.4f}" for c in group)
            + f" ({group[0].wall_s:.2f} s)"
            for (metric, estimator, param, seed), group in by_key.items()]


def run(
    config: RunConfig,
    out: str | Path = "roar-results",
    *,
    fresh: bool = False,
    progress: bool = True,
    verbose: bool = False,
    report: bool = True,
    executor: str | Executor | None = None,
    ray_address: str | None = None,
    after_commit: Callable[[list[Cell]], None] | None = None,
) -> RunSummary:
    """Run (or resume) the benchmark of ``config`` into the folder ``out``.

    Parameters
    ----------
    config : RunConfig
    out : path, default "roar-results"
        Output folder: ``results.sqlite``, cached attributions and model
        weights, and the report. It must be missing, empty, or a run's (marked
        by a ``.quantus-roar`` file); while the run works it holds an exclusive
        lock on ``out/.lock``.
    fresh : bool, default False
        Delete the files runs write in the folder (store, caches, report,
        figures) first, once every setting, the data and the model factory
        have been checked; files that runs do not write stay.
    progress : bool, default True
        Progress bars (stderr).
    verbose : bool, default False
        Log one line per finished cell: its key, values and compute time
        (logger ``quantus_roar.benchmark``, INFO).
    report : bool, default True
        Write the report at the end.
    executor : {None, "local", "ray"} or quantus_roar.executors.Executor
        Where the ROAR / KAR retraining runs. With ``"ray"`` every unit of
        retrains is a Ray task, the driver computes attributions, deletion
        curves and sanity checks meanwhile and stores each unit as its task
        finishes. Not part of the fingerprint: a run may switch executors and
        resume, with the same numbers.
    ray_address : str, optional
        Address of the Ray cluster (``executor="ray"``); default: the cluster
        ``ray.init`` already connected to, else a local one.
    after_commit : callable, optional
        Called with the cells of each unit right after they are committed.

    Returns
    -------
    RunSummary

    Raises
    ------
    quantus_roar.benchmark.ConfigMismatchError
        If ``out`` holds results of another configuration (and not ``fresh``).
    quantus_roar.benchmark.store.OutputFolderError
        A ``ValueError``: ``out`` is a file, a folder of other files, or an unmarked
        folder whose ``results.sqlite`` is not a quantus-roar result store (nothing
        in it is deleted, even with ``fresh``).
    quantus_roar.benchmark.store.FolderInUseError
        Another process runs into ``out``.
    quantus_roar.exceptions.StorageError
        The folder or its store cannot be read or written (damaged store,
        read-only folder, full disk); the message names the file.
    ValueError
        For streamed data on Ray (the memory-mapped files are local to this
        machine), an unknown device, a model factory that cannot be imported
        or built, or an explain function of yours that fails on 2 test samples
        of an untrained model (see :func:`probe_explainers`; checked before
        anything is trained).
    """
    t0 = time.perf_counter()
    out = Path(out)
    if not isinstance(config, RunConfig):
        raise TypeError(f"run() takes a RunConfig. Got {type(config).__name__} instead.")
    if config.stream and executor not in (None, "local") and not isinstance(executor,
                                                                            LocalExecutor):
        raise ValueError("Streamed data (--stream) is read from memory-mapped files on this "
                         "machine and cannot be retrained on Ray; run it with the local "
                         "executor, or without --stream.")
    # Everything that can be checked without writing is checked before the folder is
    # touched: the device, the folder, the data and the model factory (streamed data is
    # loaded into the folder, so only its factory's import is checked here).
    device = _resolve_device(config.device)
    folder = OutputFolder(out)
    folder.check()
    data: BenchmarkData | None = None
    factory: Callable[[], nn.Module] | None = None
    if config.stream:
        import_factory(config.model)
    else:
        data = (config.dataset if isinstance(config.dataset, BenchmarkData) else
                load_dataset(config.dataset, seed=config.seed, image_size=config.image_size))
        factory = checked_model_factory(config.model, data)
    for estimator in config.estimators:  # imports every explain function named by a spec
        explainer(config, estimator)
    if data is not None and factory is not None:  # streamed data: once it is loaded
        probe_explainers(config, data, factory, device)
    summary = RunSummary(out)
    ex = get_executor(executor, address=ray_address)
    try:
        with folder.lock():
            staging = None
            try:
                if data is None:
                    data, staging = _load_streamed(config, out)
                    factory = checked_model_factory(config.model, data)
                    probe_explainers(config, data, factory, device)
                if fresh:
                    folder.clear(keep=[staging] if staging is not None else ())
                if staging is not None:
                    _move_staged(data, staging, out)
            finally:
                if staging is not None:
                    shutil.rmtree(staging, ignore_errors=True)
            fp, description = fingerprint(config, data.digest, device.type)
            with ResultStore(out) as store:
                store.claim(fp, description)
                write_text(out / "config.toml", config.to_toml())
                ctx = _Context(config, out, data, device, progress, ex, factory)
                done = store.done()
                units = list(_plan(ctx))
                if "model-randomisation" in config.metrics:
                    modules = dict(ctx.model.named_modules())
                    store.set_meta("layers", ctx.layers)
                    store.set_meta("layer_types",
                                   {n: type(modules[n]).__name__ for n in ctx.layers})
                store.set_meta("classes", data.classes)
                store.set_meta("expected_cells", sum(len(u.keys) for u in units))
                ctx.save_examples()
                bar = tqdm(units, desc="benchmark", unit="unit", disable=not progress)
                loggers = [logging.root, logging.getLogger("quantus_roar")]
                try:
                    with logging_redirect_tqdm(loggers=loggers):
                        _work(ctx, units, bar, store, fp, done, summary, verbose, after_commit)
                finally:
                    bar.close()
            summary.wall_s = time.perf_counter() - t0
            if report:
                from quantus_roar.benchmark.report import build_report

                build_report(out)
    finally:
        if ex is not executor:
            ex.close()
    return summary


def _work(ctx: _Context, units: list[_Unit], bar: Any, store: ResultStore, fp: str,
          done: set[Key], summary: RunSummary, verbose: bool,
          after_commit: Callable[[list[Cell]], None] | None) -> None:
    ex = ctx.executor
    pending: dict[tuple[str, str, int], tuple[_Unit, Callable[[dict], list[Cell]]]] = {}

    def commit(cells: list[Cell]) -> None:
        store.add(cells, fp)
        summary.computed.extend(dict.fromkeys(c.key for c in cells))
        if verbose:
            for line in _summary_lines(cells):
                logger.info(line)
        if after_commit is not None:
            after_commit(cells)

    def collect(block: bool) -> None:
        for result in ex.poll(block=block):
            unit, finish = pending.pop(result.tag)  # type: ignore[arg-type]
            if result.ok:
                commit(finish(result.value))
            else:
                logger.error("%s %s: retraining failed on every retry, its cells are not "
                             "stored (a rerun computes them): %r", unit.metric, unit.estimator,
                             result.error)
                summary.failed.append((unit.metric, unit.estimator, repr(result.error)))

    for unit in bar:
        todo = [k for k in unit.keys if k not in done]
        summary.skipped += len(unit.keys) - len(todo)
        if not todo:
            continue
        bar.set_postfix_str(f"{unit.metric} {unit.estimator}", refresh=True)
        if unit.remote and not ctx.data.streamed:
            # Locally one task per unit (the ensemble path trains it at once); on a cluster
            # as many tasks as the retrainer cannot batch together (task_groups).
            groups = ([todo] if isinstance(ex, LocalExecutor) else
                      [[todo[i] for i in g] for g in task_groups(
                          ctx.retrainer, todo, ctx.data.x_train[:2])])
            for g, keys in enumerate(groups):
                fn, args, finish = _retrain_task(ctx, ex, unit.metric, unit.estimator, keys)
                pending[(unit.metric, unit.estimator, g)] = (unit, finish)
                ex.submit((unit.metric, unit.estimator, g), fn, *args,
                          **task_resources(ctx.retrainer))
        else:
            commit(unit.compute(todo))
        collect(block=False)
    if pending:
        bar.set_postfix_str(f"waiting for {len(pending)} retraining task(s)", refresh=True)
    while pending:
        collect(block=True)
