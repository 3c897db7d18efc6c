"""Train fresh PyTorch models, one at a time or many at once."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from quantus_roar._validation import check_choice, model_device
from quantus_roar.exceptions import NotResettableError
from quantus_roar.retrain.base import RetrainerBase, RetrainJob
from quantus_roar.retrain.grouped import grouped_forward, supports_grouped

__all__ = ["TorchRetrainer"]

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

# Stacked training data of one ensemble group stays below this many bytes on
# the device unless max_ensemble says otherwise.
_ENSEMBLE_DATA_BUDGET = 2 * 1024**3


@dataclass
class _Group:
    """Models trained together: stacked parameters and their training data."""

    jobs: list[RetrainJob]
    x: torch.Tensor | None  # (M, N, ...)
    y: torch.Tensor | None  # (M, N)
    x_val: torch.Tensor | None  # (M, V, ...)
    y_val: torch.Tensor | None
    dataset: Dataset | None = None  # the DataLoader path (M == 1)
    val_dataset: Dataset | None = None

    @property
    def n(self) -> int:
        return len(self.dataset) if self.dataset is not None else self.y.shape[1]  # type: ignore[arg-type, union-attr]


def _is_dataset(v: Any) -> bool:
    return isinstance(v, Dataset) and not isinstance(v, torch.Tensor)


def _to_tensor(v: Any, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
    return t.to(device=device, dtype=dtype if dtype is not None else t.dtype)


class TorchRetrainer(RetrainerBase):
    """Train freshly initialised copies of a model with one recipe.

    Fresh models come from the user's model (deep copy, then
    ``reset_parameters()`` on every module that has one; the template is never
    modified) or from ``model_fn()``. Training data stays on the device as
    tensors; mini-batches are drawn by index with a per-seed generator.
    :meth:`fit_score_many` trains up to ``max_ensemble`` models at once with
    ``torch.func.vmap`` over stacked parameters, each model on its own data;
    models vmap cannot train (BatchNorm in training mode, unsupported modules)
    fall back to one at a time.

    Parameters
    ----------
    model : torch.nn.Module, optional
        Template whose architecture is copied. Its weights are not used.
    model_fn : callable, optional
        Zero-argument factory of a fresh model; use it when a module of the
        template has parameters but no ``reset_parameters``.
    epochs : int, default 12
        Passes over the training data.
    batch_size : int, default 64
    optimizer : {"adam", "sgd"}, default "adam"
        Adam (``weight_decay`` as L2, as torch's Adam) or SGD with ``momentum``.
    lr : float, default 1e-2
        (Peak) learning rate.
    weight_decay : float, default 0.0
    momentum : float, default 0.9
        SGD momentum (ignored by Adam).
    schedule : {None, "onecycle", "cosine", "step"}, default "onecycle"
        Learning-rate schedule, stepped after every mini-batch. ``"step"``
        divides the rate by 10 after each third of training.
    label_smoothing : float, default 0.0
    augment : callable, optional
        ``augment(x_batch, generator) -> x_batch`` on whole mini-batches on the
        device. In the ensemble path it receives the batches of all models
        at once, flattened to (M * B, ...), so its draws differ from the
        one-at-a-time path.
    device : str or torch.device, optional
        Default: the device of the template's parameters, else CPU.
    ensemble : {"auto", True, False}, default "auto"
        Train several models at once when the model allows it. ``True`` raises
        if it does not; ``False`` always trains one at a time.
    max_ensemble : int, optional
        Most models trained at once. Default: all jobs with the same data
        shapes, as long as their stacked training data stays below 2 GiB.
    validation_split : float, default 0.0
        Fraction of each job's training data held out (seeded by the job's
        seed) to select the epoch with the best validation accuracy. The test
        data is never used for any choice.
    num_workers : int, default 0
        DataLoader workers for training data given as a torch ``Dataset``.

    Notes
    -----
    The defaults are the recipe chosen for :class:`~quantus_roar.models.SmallCNN`
    on the embedded digits (the fewest epochs that reach 97% mean test
    accuracy); set them deliberately for any other model or data.

    Initialisation and dropout draw from torch's global generator inside
    ``torch.random.fork_rng`` seeded with the job's seed, so the caller's
    global random state is left as it was and the same seed gives the same
    model. Optimizer arithmetic is elementwise, so a model trained in the
    ensemble path follows the same updates as alone, up to float rounding and
    dropout draws.

    Data larger than memory goes in as a map-style ``torch.utils.data.Dataset``
    of ``(input, label)`` pairs in place of ``x`` (with ``y=None``), in
    :meth:`fit`, :meth:`score` and in jobs: it is read through a
    ``DataLoader`` one mini-batch at a time, in the same seeded order as
    in-memory data, one model at a time.

    References
    ----------
    .. [1] Hooker et al., "A Benchmark for Interpretability Methods in Deep
       Neural Networks", NeurIPS 2019 (retraining from scratch per cell).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        model_fn: Callable[[], nn.Module] | None = None,
        epochs: int = 12,
        batch_size: int = 64,
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        schedule: Literal["onecycle", "cosine", "step"] | None = "onecycle",
        label_smoothing: float = 0.0,
        augment: Augment | None = None,
        device: str | torch.device | None = None,
        ensemble: Literal["auto"] | bool = "auto",
        max_ensemble: int | None = None,
        validation_split: float = 0.0,
        num_workers: int = 0,
    ):
        owner = "TorchRetrainer"
        if (model is None) == (model_fn is None):
            raise ValueError(f"{owner} needs exactly one of 'model' (a template nn.Module) or "
                             "'model_fn' (a zero-argument factory). Got "
                             f"{'both' if model is not None else 'neither'}.")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"The 'model' parameter of {owner} must be a torch.nn.Module. Got "
                            f"{type(model).__name__} instead.")
        if model_fn is not None and not callable(model_fn):
            raise TypeError(f"The 'model_fn' parameter of {owner} must be callable. Got "
                            f"{type(model_fn).__name__} instead.")
        for name, value in (("epochs", epochs), ("batch_size", batch_size)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"The '{name}' parameter of {owner} must be a positive integer. "
                                 f"Got {value!r} instead.")
        if max_ensemble is not None and (not isinstance(max_ensemble, int) or max_ensemble < 1):
            raise ValueError(f"The 'max_ensemble' parameter of {owner} must be a positive integer "
                             f"or None. Got {max_ensemble!r} instead.")
        if not lr > 0:
            raise ValueError(f"The 'lr' parameter of {owner} must be > 0. Got {lr!r} instead.")
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"The 'validation_split' parameter of {owner} must be in [0, 1). Got "
                             f"{validation_split!r} instead.")
        check_choice(optimizer, "optimizer", owner, ("adam", "sgd"))
        check_choice(schedule, "schedule", owner, (None, "onecycle", "cosine", "step"))
        check_choice(ensemble, "ensemble", owner, ("auto", True, False))
        self.model = model
        self.model_fn = model_fn
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.optimizer = optimizer
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.momentum = float(momentum)
        self.schedule = schedule
        self.label_smoothing = float(label_smoothing)
        self.augment = augment
        self.ensemble = ensemble
        self.max_ensemble = max_ensemble
        self.validation_split = float(validation_split)
        self.num_workers = int(num_workers)
        self.device = (model_device(model, device) if model is not None
                       else torch.device(device if device is not None else "cpu"))
        if model is not None:
            self._check_resettable(model)
        # Probe results per per-sample input shape (None: no input tried).
        self._batchable: dict[tuple[int, ...] | None, tuple[bool, str]] = {}

    # ------------------------------------------------------------------ models

    @staticmethod
    def _check_resettable(model: nn.Module) -> None:
        for name, module in model.named_modules():
            owns = any(True for _ in module.parameters(recurse=False))
            if owns and not callable(getattr(module, "reset_parameters", None)):
                raise NotResettableError(
                    f"Module '{name or type(model).__name__}' ({type(module).__name__}) has "
                    "parameters but no reset_parameters(), so a fresh copy of the model cannot be "
                    "initialised. Pass model_fn=<zero-argument factory of a fresh model> to "
                    "TorchRetrainer instead of the model."
                )

    def new_model(self, seed: int) -> nn.Module:
        """A freshly initialised model on the retrainer's device; same seed, same weights."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.model_fn is not None:
                model = self.model_fn()
                if not isinstance(model, nn.Module):
                    raise TypeError("The 'model_fn' of TorchRetrainer must return a "
                                    f"torch.nn.Module. Got {type(model).__name__} instead.")
            else:
                model = copy.deepcopy(self.model).cpu()  # type: ignore[union-attr]
                for module in model.modules():
                    reset = getattr(module, "reset_parameters", None)
                    if callable(reset):
                        reset()
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.reset_running_stats()
        return model.to(self.device).train()

    def batchable(self, x_example: Any = None) -> tuple[bool, str]:
        """Whether the model can be trained in the ensemble path, and if not why.

        With ``x_example`` (a few training inputs) one vmapped forward and
        backward pass of two models is tried, so modules that vmap cannot
        handle are found before training starts; the answer is cached per
        input shape. Without it, the latest answer is returned.
        """
        if x_example is None and self._batchable:
            return next(reversed(self._batchable.values()))  # the latest answer
        key = None if x_example is None else tuple(np.shape(x_example)[1:])
        if key not in self._batchable:
            self._batchable[key] = self._probe_batchable(x_example)
        return self._batchable[key]

    def _probe_batchable(self, x_example: Any) -> tuple[bool, str]:
        model = self.new_model(0)
        for name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                return False, (f"module '{name}' ({type(module).__name__}) updates running "
                               "statistics in training mode")
        if x_example is None:
            return True, ""
        x = _to_tensor(x_example, self.device, torch.float32)[:2]
        params, buffers = stack_module_state([model, self.new_model(1)])
        base = copy.deepcopy(model).to("meta")
        try:
            out = vmap(lambda p, b, xb: functional_call(base, (p, b), (xb,)),
                       randomness="different")(params, buffers, x.expand(2, *x.shape))
            out.sum().backward()
        except Exception as err:  # any failure means: train one at a time
            return False, f"torch.func.vmap cannot run it ({type(err).__name__}: {err})"
        return True, ""

    # ------------------------------------------------------------------ training

    def _optimizer(self, params: Sequence[torch.Tensor], steps: int):
        if self.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=self.lr,
                                                          weight_decay=self.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                                  weight_decay=self.weight_decay)
        sched: Any = None
        if self.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=steps)
        elif self.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        elif self.schedule == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, steps // 3), gamma=0.1)
        return opt, sched

    def _split(self, x: torch.Tensor, y: torch.Tensor, seed: int):
        """Training and validation parts of one job's data (validation_split > 0)."""
        n_val = round(self.validation_split * len(x))
        if n_val == 0:
            return x, y, None, None
        g = torch.Generator().manual_seed(seed + 7919)
        perm = torch.randperm(len(x), generator=g).to(x.device)
        return x[perm[n_val:]], y[perm[n_val:]], x[perm[:n_val]], y[perm[:n_val]]

    def _prepare_dataset(self, job: RetrainJob) -> _Group:
        ds = job.x_train
        if job.y_train is not None:
            raise ValueError("TorchRetrainer: with a torch Dataset as training data, pass "
                             "y=None; the Dataset yields (input, label) pairs.")
        if len(ds) == 0:
            raise ValueError("TorchRetrainer got an empty training Dataset.")
        n_val = round(self.validation_split * len(ds))
        val = None
        if n_val:
            g = torch.Generator().manual_seed(job.seed + 7919)
            perm = torch.randperm(len(ds), generator=g).tolist()
            ds, val = Subset(ds, perm[n_val:]), Subset(ds, perm[:n_val])
        return _Group([job], None, None, None, None, dataset=ds, val_dataset=val)

    def _loader(self, ds: Dataset, batch_size: int, order: list[int] | None = None) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, sampler=order, shuffle=False,
                          num_workers=self.num_workers, pin_memory=self.device.type == "cuda")

    def _batches(self, group: _Group, perms: torch.Tensor):
        """One epoch of mini-batches (M, B, ...), (M, B) in the order of ``perms``."""
        if group.dataset is not None:
            for xb, yb in self._loader(group.dataset, self.batch_size, perms[0].tolist()):
                yield (xb.to(self.device, torch.float32, non_blocking=True)[None],
                       yb.to(self.device, torch.long, non_blocking=True)[None])
            return
        rows = torch.arange(len(group.jobs), device=self.device)[:, None]
        for start in range(0, group.n, self.batch_size):
            idx = perms[:, start : start + self.batch_size]
            yield group.x[rows, idx], group.y[rows, idx]  # type: ignore[index]

    def _prepare(self, jobs: list[RetrainJob]) -> _Group:
        if _is_dataset(jobs[0].x_train):
            return self._prepare_dataset(jobs[0])
        xs, ys, xvs, yvs = [], [], [], []
        for job in jobs:
            x = _to_tensor(job.x_train, self.device, torch.float32)
            y = _to_tensor(job.y_train, self.device, torch.long)
            x, y, xv, yv = self._split(x, y, job.seed)
            xs.append(x)
            ys.append(y)
            xvs.append(xv)
            yvs.append(yv)
        has_val = xvs[0] is not None
        return _Group(jobs, torch.stack(xs), torch.stack(ys),
                      torch.stack(xvs) if has_val else None,  # type: ignore[arg-type]
                      torch.stack(yvs) if has_val else None)  # type: ignore[arg-type]

    def _train(self, group: _Group, models: list[nn.Module], stacked: bool) -> list[nn.Module]:
        """Train ``models`` (one per job of ``group``), together if ``stacked``."""
        m, n = len(group.jobs), group.n
        steps_per_epoch = math.ceil(n / self.batch_size)
        gens = [torch.Generator().manual_seed(job.seed) for job in group.jobs]
        if stacked:
            params, buffers = stack_module_state(models)
            base = copy.deepcopy(models[0]).to("meta")
            if supports_grouped(base):
                def loss_fn(p, b, xb, yb):  # one network of grouped convolutions
                    logits = grouped_forward(base, p, xb)
                    return F.cross_entropy(logits.flatten(0, 1), yb.flatten(),
                                           label_smoothing=self.label_smoothing,
                                           reduction="none").view(yb.shape).mean(1)
            else:
                def loss_one(p, b, xb, yb):
                    logits = functional_call(base, (p, b), (xb,))
                    return F.cross_entropy(logits, yb, label_smoothing=self.label_smoothing)

                loss_fn = vmap(loss_one, randomness="different")
            opt, sched = self._optimizer(list(params.values()), self.epochs * steps_per_epoch)
        else:  # one model (m == 1)
            opt, sched = self._optimizer(list(models[0].parameters()),
                                         self.epochs * steps_per_epoch)
        best_acc = torch.full((m,), -1.0)
        best_state: list[dict[str, torch.Tensor] | None] = [None] * m
        aug_gen = torch.Generator().manual_seed(group.jobs[0].seed + 104729)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(group.jobs[0].seed)  # dropout draws
            for _ in range(self.epochs):
                perms = torch.stack([torch.randperm(n, generator=g) for g in gens])
                if group.dataset is None:
                    perms = perms.to(self.device)
                for xb, yb in self._batches(group, perms):  # (M, B, ...), (M, B)
                    if self.augment is not None:
                        xb = self.augment(xb.flatten(0, 1), aug_gen).unflatten(0, xb.shape[:2])
                    if stacked:
                        loss = loss_fn(params, buffers, xb, yb).sum()
                    else:
                        loss = F.cross_entropy(models[0](xb[0]), yb[0],
                                               label_smoothing=self.label_smoothing)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                if group.x_val is not None or group.val_dataset is not None:
                    if stacked:
                        self._unstack(params, buffers, models)
                    for i, model in enumerate(models):
                        acc = (self.score(model, group.val_dataset, None)
                               if group.val_dataset is not None
                               else self.score(model, group.x_val[i], group.y_val[i]))  # type: ignore[index]
                        model.train()
                        if acc > best_acc[i]:
                            best_acc[i] = acc
                            best_state[i] = copy.deepcopy(model.state_dict())
        if stacked:
            self._unstack(params, buffers, models)
        for model, state in zip(models, best_state, strict=True):
            if state is not None:
                model.load_state_dict(state)
            model.eval()
        return models

    @staticmethod
    def _unstack(params: dict, buffers: dict, models: list[nn.Module]) -> None:
        with torch.no_grad():
            for i, model in enumerate(models):
                for name, t in model.named_parameters():
                    t.copy_(params[name][i])
                for name, t in model.named_buffers():
                    t.copy_(buffers[name][i])

    # ------------------------------------------------------------------ public

    def fit(self, x: Any, y: Any, *, seed: int) -> nn.Module:
        """Train one fresh model on ``(x, y)``; returned in ``eval()`` mode.

        Parameters
        ----------
        x : tensor or array of shape (N, ...), or torch Dataset
            Inputs, or a Dataset of (input, label) pairs read through a DataLoader.
        y : tensor or array of shape (N,), integer class labels
            ``None`` when ``x`` is a Dataset.
        seed : int
            Seeds initialisation, batch order, dropout and the validation split.
        """
        job = RetrainJob(x, y, None, None, int(seed))
        return self._train(self._prepare([job]), [self.new_model(job.seed)], stacked=False)[0]

    def fit_until(self, x: Any, y: Any, *, seed: int, min_accuracy: float,
                  max_epochs: int) -> tuple[nn.Module, float]:
        """Train until the *training* accuracy reaches ``min_accuracy``.

        Trains with the recipe's ``epochs``, and while the model stays below
        ``min_accuracy`` on ``(x, y)``, trains a fresh one (same seed) for
        twice as many epochs, up to ``max_epochs``. Used by the data
        randomisation test to fit permuted labels.

        Returns
        -------
        model, train_accuracy
            The last model trained and its accuracy on ``(x, y)``.
        """
        if not isinstance(max_epochs, (int, np.integer)) or max_epochs < 1:
            raise ValueError("The 'max_epochs' parameter of TorchRetrainer.fit_until must be a "
                             f"positive integer. Got {max_epochs!r} instead.")
        epochs = min(self.epochs, int(max_epochs))
        while True:
            attempt = copy.copy(self)
            attempt.epochs = epochs
            model = attempt.fit(x, y, seed=seed)
            accuracy = attempt.score(model, x, y)
            if accuracy >= min_accuracy or epochs >= max_epochs:
                return model, accuracy
            epochs = min(int(max_epochs), 2 * epochs)

    @torch.no_grad()
    def score(self, model: nn.Module, x: Any, y: Any) -> float:
        """Accuracy of ``model`` on ``(x, y)`` (or a Dataset ``x`` with ``y=None``), in batches."""
        model.eval()
        if _is_dataset(x):
            correct, total = 0, 0
            for xb, yb in self._loader(x, max(self.batch_size, 256)):
                pred = model(xb.to(self.device, torch.float32)).argmax(1)
                correct += int((pred == yb.to(self.device)).sum())
                total += len(yb)
            return correct / max(1, total)
        x_t = _to_tensor(x, self.device, torch.float32)
        y_t = _to_tensor(y, self.device, torch.long)
        correct = 0
        for start in range(0, len(x_t), 1024):
            logits = model(x_t[start : start + 1024])
            correct += int((logits.argmax(1) == y_t[start : start + 1024]).sum())
        return correct / max(1, len(x_t))

    def fit_many(self, jobs: Sequence[RetrainJob | tuple], *,
                 progress: bool = False) -> list[nn.Module]:
        """Train one model per job (its test data is not used); ensemble path when possible."""
        jobs = [RetrainJob(*job) for job in jobs]
        streamed = any(_is_dataset(job.x_train) for job in jobs)
        stacked = len(jobs) > 1 and not streamed and self._use_ensemble(jobs[0].x_train)
        out: list[nn.Module | None] = [None] * len(jobs)
        groups = self._groups(jobs) if stacked else [[i] for i in range(len(jobs))]
        bar = tqdm(total=len(jobs), desc="retraining", disable=not progress, leave=False)
        for group in groups:
            sub = [jobs[i] for i in group]
            models = [self.new_model(job.seed) for job in sub]
            trained = self._train(self._prepare(sub), models, stacked=stacked and len(sub) > 1)
            for i, model in zip(group, trained, strict=True):
                out[i] = model
            bar.update(len(group))
        bar.close()
        return out  # type: ignore[return-value]

    def fit_score_many(self, jobs: Sequence[RetrainJob | tuple], *,
                       progress: bool = False) -> list[float]:
        """Test accuracy of every job, in order, training many models at once when possible."""
        jobs = [RetrainJob(*job) for job in jobs]
        models = self.fit_many(jobs, progress=progress)
        return [self.score(model, job.x_test, job.y_test)
                for model, job in zip(models, jobs, strict=True)]

    def _use_ensemble(self, x_example: Any) -> bool:
        if self.ensemble is False:
            return False
        ok, why = self.batchable(x_example)
        if not ok and self.ensemble is True:
            raise ValueError(f"TorchRetrainer(ensemble=True) cannot train this model in the "
                             f"ensemble path: {why}. Use ensemble='auto' to fall back to one "
                             "model at a time.")
        return ok

    def _groups(self, jobs: list[RetrainJob]) -> list[list[int]]:
        """Indices of jobs trained together: same data shapes, within the size limits."""
        by_shape: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            key = (tuple(np.shape(job.x_train)), tuple(np.shape(job.y_train)))
            by_shape.setdefault(key, []).append(i)
        groups = []
        for (x_shape, _), members in by_shape.items():
            size = self.max_ensemble
            if size is None:
                per_job = 4 * int(np.prod(x_shape)) + 8 * x_shape[0]
                size = max(1, _ENSEMBLE_DATA_BUDGET // max(1, per_job))
            groups.extend(members[i : i + size] for i in range(0, len(members), size))
        return groups
