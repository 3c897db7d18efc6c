"""The shared, lazily built state of one run: data, the trained model, its layers,
the sanity checks' models, cached attributions and the removal of streamed data."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from quantus_roar._io import disk_error, open_memmap, remove_quietly, write_with
from quantus_roar._validation import as_tensor
from quantus_roar.benchmark.config import RunConfig, file_name
from quantus_roar.benchmark.datasets import BenchmarkData
from quantus_roar.benchmark.specs import (
    explainer,
    model_factory,
    recipe_retrainer,
    shared_noise_explainers,
)
from quantus_roar.executors import Executor
from quantus_roar.explainers import FixedPrior, explanation_targets, fixed_prior_source
from quantus_roar.randomisation import execution_order
from quantus_roar.removal import channel_means
from quantus_roar.sanity import (
    SanitySeeds,
    derived_seed,
    permuted_labels,
)
from quantus_roar.splits import retrain_seeds
from quantus_roar.streaming import RemovedDataset, chunked_channel_means

__all__ = ["RunContext", "own_dir"]

logger = logging.getLogger("quantus_roar.benchmark")

# Spawn keys of the run's own derived seeds; the sanity checks' (2 to 6) are
# quantus_roar.sanity.SanitySeeds.
_BASE, _SANITY_SAMPLES = 1, 7


def own_dir(path: Path) -> Path:
    """``path`` as a folder of the run: created if missing; a link in its place is removed
    (never followed), so every file the run writes stays inside the output folder."""
    try:
        if path.is_symlink():
            path.unlink()
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise disk_error(err, path, "create the folder") from err
    return path

# --------------------------------------------------------------------------- context


def _save_model(model: nn.Module, path: Path) -> None:
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    write_with(path, lambda f: np.savez(f, **arrays))


def _load_model(model: nn.Module, path: Path) -> nn.Module:
    with np.load(path, allow_pickle=False) as f:
        state = {k: torch.from_numpy(f[k]) for k in f.files}
    model.load_state_dict(state)
    return model.eval()


class RunContext:
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
        self.cache = own_dir(out / "cache")
        own_dir(out / "attributions")
        self.factory = factory if factory is not None else model_factory(config.model, data)
        self.retrainer = (config.retrainer if config.retrainer is not None
                          else recipe_retrainer(config, self.factory, device))
        self.explainers = {e: explainer(config, e) for e in config.estimators}
        for e in config.estimators:  # FixedPrior(<source>): the mean map of the source
            source = fixed_prior_source(e)
            if source is not None:
                self.explainers.setdefault(source, explainer(config, source))
                self.explainers[e] = self._prior_explainer(source)
        # A method's noise ensembles from one set of noisy maps (the same maps, bit for bit).
        self.explainers.update(shared_noise_explainers(config, list(self.explainers)))
        self.n_train, self.n_test = len(data.y_train), len(data.y_test)
        self.train_ids = torch.arange(self.n_train)
        self.test_ids = torch.arange(self.n_train, self.n_train + self.n_test)
        self.seeds = retrain_seeds(config.pipeline_seed, config.retrains)
        self._memo: dict[Any, Any] = {}
        self._sanity_shared: tuple[str | None, dict[Any, Any]] = (None, {})
        #: Seconds spent per phase in this call (see :meth:`timed`).
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the wall time inside to ``phase``, less the time of phases timed within it
        (an explained model trained, or attributions computed, on first use)."""
        before = sum(self.timings.values())
        start = time.perf_counter()
        try:
            yield
        finally:
            nested = sum(self.timings.values()) - before
            self.timings[phase] = (self.timings.get(phase, 0.0)
                                   + time.perf_counter() - start - nested)

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
            with self.timed("explained model"):
                model = self.fit(self.data.x_train, self.data.y_train,
                                 derived_seed(self.config.pipeline_seed, _BASE))
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
        return SanitySeeds.derive(self.config.pipeline_seed, s)

    def ceiling_model(self, s: int) -> nn.Module:
        """A model trained on the true labels with another seed (the sanity checks' ceiling)."""
        return self.memo(("ceiling", s), lambda: self.fit(
            self.data.x_train, self.data.y_train, self.sanity_seeds(s).ceiling))

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

    def prior(self, source: str) -> FixedPrior:
        """The fixed prior of ``source``: its mean absolute map over the training set."""
        return self.memo(("prior", source), lambda: FixedPrior.from_attributions(
            self.attributions(source, "train"), seed=self.config.pipeline_seed))

    def _prior_explainer(self, source: str) -> Callable[..., np.ndarray]:
        def explain(model: nn.Module, x: torch.Tensor, t: torch.Tensor,
                    device: torch.device) -> np.ndarray:
            return self.prior(source)(model, x.cpu().numpy(), t)
        return explain

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
            model = self.model
            with self.timed("attributions"):
                self._explain_to(path, model, x, y, estimator)
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

    def sanity_shared(self, estimator: str) -> dict[Any, Any]:
        """What the two sanity checks of ``estimator`` share -- the original explanations,
        the floor and ceiling comparisons -- kept for one estimator at a time (the plan
        runs an estimator's checks one after the other)."""
        if self._sanity_shared[0] != estimator:
            self._sanity_shared = (estimator, {})
        return self._sanity_shared[1]

    def sanity_attributions(self, model: nn.Module, estimator: str) -> torch.Tensor:
        x = self.tensor(self.data.x_test[self.sanity_index])
        return torch.from_numpy(self.explainers[estimator](model, x, self.sanity_targets,
                                                           self.device))

    # ------------------------------------------------------------------ removal

    def inputs(self, split: str, kind: str = "x") -> np.ndarray:
        """The inputs of ``split``, or (``kind="zeros"``) all-zero inputs of their shape:
        what mask leakage fills, so that the filled inputs are the masks."""
        x, _ = self.split(split)
        return x if kind == "x" else np.broadcast_to(np.zeros((), dtype=x.dtype), x.shape)

    def removed(self, estimator: str, split: str, p: float, metric: str) -> RemovedDataset:
        """The streamed split with features removed at ``p`` under ``metric``'s rule, as a
        lazy Dataset."""
        _, y = self.split(split)
        ids = self.train_ids if split == "train" else self.test_ids
        x = self.inputs(split, "zeros" if metric.startswith("mask-leakage") else "x")
        return RemovedDataset(x, y, self.attributions(estimator, split), p,
                              first_id=int(ids[0]), removal=self.config.metric_removal(metric),
                              stats=self.stats)

