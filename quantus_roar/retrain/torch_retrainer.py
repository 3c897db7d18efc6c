"""Train fresh PyTorch models, one at a time or many at once."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from quantus_roar._validation import (
    Int,
    Real,
    _msg,
    check_choice,
    check_model,
    check_params,
    model_device,
    model_dtype,
)
from quantus_roar.exceptions import NotResettableError
from quantus_roar.retrain._checks import (
    _check_batch,
    _check_data,
    _check_label_range,
    _check_logits,
    _check_seed,
    _first_inputs,
    _fn_name,
    _has_batchnorm,
    _is_dataset,
    _on_meta,
    _root_index,
    _to_tensor,
)
from quantus_roar.retrain._groups import DatasetGroup, Group, TensorGroup, batch_bounds
from quantus_roar.retrain.base import RetrainerBase, RetrainJob, _as_jobs
from quantus_roar.retrain.grouped import grouped_forward, supports_grouped
from quantus_roar.retrain.recipe import Augment, Recipe, recipe_from

__all__ = ["TorchRetrainer"]

# Stacked training data of one ensemble group stays below this many bytes on
# the device unless max_ensemble says otherwise.
_ENSEMBLE_DATA_BUDGET = 2 * 1024**3

# The keywords of TorchRetrainer besides the fields of Recipe, and what they must be.
_OWN_KEYWORDS = ("model", "recipe", "model_fn", "device", "ensemble", "max_ensemble",
                 "num_workers")
_OWN_CONSTRAINTS = {"max_ensemble": Int(1, optional=True), "num_workers": Int(0)}


# torch wraps Optimizer.add_param_group (called by every optimizer's __init__) and
# zero_grad in torch._disable_dynamo, and step in _use_grad_for_differentiable; both
# wrappers import torch._dynamo -- over 1,000 modules, about 1.7 s -- the first time
# they run in a process, so the first retrain of every worker process paid it. The
# wrappers only matter when torch.compile traces the call, which this training loop
# never does. These subclasses call the same methods without them (step under
# no_grad, as the wrapper runs it when differentiable=False), so training is bit for
# bit as with torch.optim.Adam and SGD (tests/test_retrain_cold.py).
_ADD_PARAM_GROUP = inspect.unwrap(torch.optim.Optimizer.add_param_group)


class _Adam(torch.optim.Adam):
    add_param_group = _ADD_PARAM_GROUP
    step = torch.no_grad()(inspect.unwrap(torch.optim.Adam.step))


class _SGD(torch.optim.SGD):
    add_param_group = _ADD_PARAM_GROUP
    step = torch.no_grad()(inspect.unwrap(torch.optim.SGD.step))


def _rng_devices(device: torch.device) -> list[torch.device]:
    """The devices whose random state ``torch.random.fork_rng`` saves besides the CPU's."""
    return [device] if device.type == "cuda" else []


def _check_template(model: Any, model_fn: Any, owner: str) -> None:
    """Exactly one of a template module with data and a model factory."""
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
    if model is not None and _on_meta(model):
        raise ValueError(_msg("model", owner, "a model with data",
                              "a model with tensors on the meta device (no data)")
                         + " Materialise it first, e.g. model.to_empty(device='cpu') (its "
                         "weights are re-initialised anyway), or build it on a real device.")


def _training_device(model: nn.Module | None, device: Any, owner: str) -> torch.device:
    """``device``, else the template's, else CPU; never ``meta``."""
    out = (model_device(model, device) if model is not None
           else torch.device(device if device is not None else "cpu"))
    if out.type == "meta":
        raise ValueError(_msg("device", owner, "a device that holds data (e.g. 'cpu', "
                              "'cuda')", "'meta'"))
    return out


def _checked_model(model: Any) -> nn.Module:
    """What ``model_fn`` returned, if it is a module with data."""
    if not isinstance(model, nn.Module):
        raise TypeError("The 'model_fn' of TorchRetrainer must return a "
                        f"torch.nn.Module. Got {type(model).__name__} instead.")
    if _on_meta(model):
        raise ValueError(
            "The 'model_fn' of TorchRetrainer must return a model with data. Got a "
            "model with tensors on the meta device (no data) instead. Build it on a "
            "real device in model_fn, or materialise it there, e.g. "
            "model.to_empty(device='cpu') followed by reset_parameters().")
    return model


def _fresh_copy(template: nn.Module) -> nn.Module:
    """A deep copy of ``template`` on the CPU, every module's parameters and BatchNorm
    statistics reset (from torch's global generator)."""
    model = copy.deepcopy(template).cpu()
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
    return model


# ---------------------------------------------------------------------- what is trained
# One model alone, or M models stacked into one set of (M, ...) tensors. Both give the
# optimizer its tensors, the loss of a mini-batch and the weights checked for NaN.


class _Single:
    """One model, trained in place on mini-batches of one job, (1, B, ...)."""

    def __init__(self, model: nn.Module, label_smoothing: float):
        self.model = model
        self.label_smoothing = label_smoothing
        self.params = list(model.parameters())  # what the optimizer updates
        self.weights = [*model.parameters(), *model.buffers()]  # checked for NaN and inf

    def loss(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of each model (here a 0-d tensor) and the one to back-propagate."""
        loss = F.cross_entropy(self.model(xb[0]), yb[0], label_smoothing=self.label_smoothing)
        return loss, loss

    def unstack(self, models: list[nn.Module]) -> None:
        """Nothing to copy: the model trains in place."""


def _grouped_loss(base: nn.Module, label_smoothing: float) -> Callable[..., torch.Tensor]:
    def loss_fn(p, b, xb, yb):  # one network of grouped convolutions
        logits = grouped_forward(base, p, xb)
        return F.cross_entropy(logits.flatten(0, 1), yb.flatten(),
                               label_smoothing=label_smoothing,
                               reduction="none").view(yb.shape).mean(1)

    return loss_fn


def _vmapped_loss(base: nn.Module, label_smoothing: float) -> Callable[..., torch.Tensor]:
    def loss_one(p, b, xb, yb):
        logits = functional_call(base, (p, b), (xb,))
        return F.cross_entropy(logits, yb, label_smoothing=label_smoothing)

    return vmap(loss_one, randomness="different")


class _Stacked:
    """M models trained as one: their parameters and buffers stacked (M, ...), the losses of
    all M computed at once, as one network of grouped convolutions where the architecture
    allows (:mod:`quantus_roar.retrain.grouped`), else with ``vmap`` over the models."""

    def __init__(self, models: list[nn.Module], sample_ndim: int, label_smoothing: float):
        self.stacked, self.buffers = stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")
        self._loss = (_grouped_loss(base, label_smoothing)
                      if supports_grouped(base, sample_ndim=sample_ndim)
                      else _vmapped_loss(base, label_smoothing))
        self.params = list(self.stacked.values())  # what the optimizer updates
        self.weights = [*self.stacked.values(), *self.buffers.values()]  # checked for NaN

    def loss(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of each model, (M,), and their sum to back-propagate."""
        losses = self._loss(self.stacked, self.buffers, xb, yb)
        return losses, losses.sum()

    def unstack(self, models: list[nn.Module]) -> None:
        """Copy the stacked weights into ``models``."""
        with torch.no_grad():
            for i, model in enumerate(models):
                for name, t in model.named_parameters():
                    t.copy_(self.stacked[name][i])
                for name, t in model.named_buffers():
                    t.copy_(self.buffers[name][i])


class _BestEpoch:
    """Each model's best validation accuracy so far, and its weights after that epoch."""

    def __init__(self, m: int):
        self.accuracy = torch.full((m,), -1.0)
        self.state: list[dict[str, torch.Tensor] | None] = [None] * m

    def offer(self, i: int, accuracy: float, model: nn.Module) -> None:
        """Keep ``model``'s weights as model ``i``'s if ``accuracy`` beats its best."""
        if accuracy > self.accuracy[i]:
            self.accuracy[i] = accuracy
            self.state[i] = copy.deepcopy(model.state_dict())

    def restore(self, models: list[nn.Module]) -> None:
        """Load each model's kept weights (if any were kept) and set it to ``eval()``."""
        for model, state in zip(models, self.state, strict=True):
            if state is not None:
                model.load_state_dict(state)
            model.eval()


class TorchRetrainer(RetrainerBase):
    """Train freshly initialised copies of a model with one recipe.

    Fresh models come from the user's model (deep copy, then
    ``reset_parameters()`` on every module that has one; the template is never
    modified) or from ``model_fn()``. How they are trained is a
    :class:`~quantus_roar.retrain.Recipe`, given as ``recipe=``, as its fields
    as keywords (``epochs=3, lr=1e-3``), or both (the keywords replace those
    fields of ``recipe``). Training data stays on the device as tensors;
    mini-batches are drawn by index with a per-seed generator.
    :meth:`fit_score_many` trains up to ``max_ensemble`` models at once with
    ``torch.func.vmap`` over stacked parameters, each model on its own data;
    models vmap cannot train (BatchNorm in training mode, unsupported modules)
    fall back to one at a time.

    Parameters
    ----------
    model : torch.nn.Module, optional
        Template whose architecture is copied. Its weights are not used, but
        it must hold data (not be on the ``meta`` device). Its outputs are the
        class logits, one per class.
    recipe : Recipe, optional
        The training recipe: epochs, batch size, optimizer, learning rate and
        schedule, regularisation, ``augment`` and ``validation_split``.
        Default: ``Recipe()``, the recipe chosen for
        :class:`~quantus_roar.models.SmallCNN` on the embedded digits (the
        fewest epochs that reach 97% mean test accuracy); set it deliberately
        for any other model or data.
    model_fn : callable, optional
        Zero-argument factory of a fresh model; use it when a module of the
        template has parameters but no ``reset_parameters``.
    device : str or torch.device, optional
        Default: the device of the template's parameters, else CPU.
    ensemble : {"auto", True, False}, default "auto"
        Train several models at once when the model allows it. ``True`` raises
        if it does not; ``False`` always trains one at a time.
    max_ensemble : int, optional
        Most models trained at once. Default: all jobs with the same data
        shapes, as long as their stacked training data stays below 2 GiB.
    num_workers : int, default 0
        DataLoader workers for training data given as a torch ``Dataset``.
    **recipe_kwargs
        Fields of :class:`~quantus_roar.retrain.Recipe` (``epochs``,
        ``batch_size``, ``optimizer``, ``lr``, ``weight_decay``, ``momentum``,
        ``schedule``, ``label_smoothing``, ``augment``, ``validation_split``),
        each replacing that field of ``recipe``. ``augment`` is tried once on
        two training inputs before training (with a throwaway generator).

    Attributes
    ----------
    recipe : Recipe
        The recipe trained with. Its fields are also attributes of the
        retrainer (``retrainer.epochs``, ``retrainer.lr``, ...).

    Raises
    ------
    TypeError
        If a keyword is neither one of the above nor a field of Recipe,
        ``recipe`` is not a Recipe, a number parameter has the wrong type
        (bools are not integers) or ``augment`` is not callable.
    ValueError
        If a number parameter is out of range or not finite, the model is on
        the ``meta`` device, or it is not given exactly one of ``model`` and
        ``model_fn``.
    NotResettableError
        If a module of the template has parameters but no
        ``reset_parameters``.

    Notes
    -----
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

    Inputs are cast to the floating dtype of the model's parameters
    (float32 for most models; a ``.double()`` or ``.half()`` model trains in
    its own dtype).

    Inputs and seeds are checked before any training, with one vectorised
    pass over the data: one label per input, labels whole numbers in
    ``[0, K)`` for a model with ``K`` outputs (found by one forward pass of a
    fresh model on two inputs, once per input shape), finite inputs (after
    the cast to the model's dtype), non-empty data and seeds in
    ``[0, 2**63)``. :meth:`fit_many` and :meth:`fit_score_many` check every
    job first. A Dataset cannot be checked up front: each of its mini-batches
    is checked as it is read, so a bad sample stops training at its batch,
    with the Dataset's index of the sample in the message.

    Training that diverges raises: the loss of every mini-batch and the
    weights are checked for NaN and inf once per epoch (one synchronisation
    per epoch), and the error names the epoch and the job's seed (in the
    ensemble path, each job that diverged). :meth:`score` refuses NaN or inf
    logits rather than report an accuracy of them.

    A model with BatchNorm that cannot train on a mini-batch of one sample
    (``BatchNorm1d``: "Expected more than 1 value per channel") gets a last
    mini-batch of one sample merged into the one before it, so that epoch
    has one step fewer and one mini-batch of ``batch_size + 1``; models that
    can, and all other models, keep the batches as they are. Such a model
    with a single training sample, or with ``batch_size=1``, is refused
    before training.

    References
    ----------
    .. [1] Hooker et al., "A Benchmark for Interpretability Methods in Deep
       Neural Networks", NeurIPS 2019 (retraining from scratch per cell).

    Examples
    --------
    >>> template = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    >>> retrainer = TorchRetrainer(template, epochs=3, lr=1e-3)
    >>> retrainer.recipe == Recipe(epochs=3, lr=1e-3)
    True
    >>> TorchRetrainer(template, recipe=Recipe(epochs=3), lr=1e-3).recipe == retrainer.recipe
    True
    >>> retrainer.epochs, retrainer.optimizer
    (3, 'adam')
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        recipe: Recipe | None = None,
        *,
        model_fn: Callable[[], nn.Module] | None = None,
        device: str | torch.device | None = None,
        ensemble: Literal["auto"] | bool = "auto",
        max_ensemble: int | None = None,
        num_workers: int = 0,
        **recipe_kwargs: Any,
    ):
        owner = "TorchRetrainer"
        _check_template(model, model_fn, owner)
        chosen = recipe_from(recipe, recipe_kwargs, owner, _OWN_KEYWORDS)
        own = check_params(owner, _OWN_CONSTRAINTS,
                           {"max_ensemble": max_ensemble, "num_workers": num_workers})
        check_choice(ensemble, "ensemble", owner, ("auto", True, False))
        self.model = model
        self.model_fn = model_fn
        # The recipe's fields are plain attributes, like the settings after them: a run's
        # fingerprint reads the public attributes, and fit_until trains copies with other
        # epochs. The recipe property reads them back.
        self.epochs: int = chosen.epochs
        self.batch_size: int = chosen.batch_size
        self.optimizer: Literal["adam", "sgd"] = chosen.optimizer
        self.lr: float = chosen.lr
        self.weight_decay: float = chosen.weight_decay
        self.momentum: float = chosen.momentum
        self.schedule: Literal["onecycle", "cosine", "step"] | None = chosen.schedule
        self.label_smoothing: float = chosen.label_smoothing
        self.augment: Augment | None = chosen.augment
        self.validation_split: float = chosen.validation_split
        self.max_ensemble: int | None = own["max_ensemble"]
        self.num_workers: int = own["num_workers"]
        self.ensemble = ensemble
        self.device = _training_device(model, device, owner)
        if model is not None:
            self._check_resettable(model)
        # Probe results per per-sample input shape (None: no input tried).
        self._batchable: dict[tuple[int, ...] | None, tuple[bool, str]] = {}
        # Outputs (classes) of a fresh model per per-sample input shape.
        self._outputs: dict[tuple[int, ...], int] = {}
        # Whether a fresh model trains on a mini-batch of one sample, per input shape.
        self._one_sample: dict[tuple[int, ...], bool] = {}
        self._dtype: torch.dtype | None = None  # of the model's parameters, found once

    @property
    def recipe(self) -> Recipe:
        """The recipe trained with, as the attributes ``epochs``, ``lr``, ... hold it now."""
        return Recipe(epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer,
                      lr=self.lr, weight_decay=self.weight_decay, momentum=self.momentum,
                      schedule=self.schedule, label_smoothing=self.label_smoothing,
                      augment=self.augment, validation_split=self.validation_split)

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
        seed = _check_seed(seed, "seed", "TorchRetrainer.new_model")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.model_fn is not None:
                model = _checked_model(self.model_fn())
            else:
                model = _fresh_copy(self.model)  # type: ignore[arg-type]  # one of the two is set
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

    def _param_dtype(self) -> torch.dtype:
        """The floating dtype of the model's parameters, which inputs are cast to."""
        dtype = getattr(self, "_dtype", None)
        if dtype is None:
            dtype = self._dtype = model_dtype(self.model if self.model is not None
                                              else self.new_model(0))
        return dtype

    def _probe_batchable(self, x_example: Any) -> tuple[bool, str]:
        model = self.new_model(0)
        for name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                return False, (f"module '{name}' ({type(module).__name__}) updates running "
                               "statistics in training mode")
        if x_example is None:
            return True, ""
        x = _to_tensor(x_example[:2], self.device, self._param_dtype())
        params, buffers = stack_module_state([model, self.new_model(1)])
        base = copy.deepcopy(model).to("meta")
        try:
            out = vmap(lambda p, b, xb: functional_call(base, (p, b), (xb,)),
                       randomness="different")(params, buffers, x.expand(2, *x.shape))
            out.sum().backward()
        except Exception as err:  # any failure means: train one at a time
            return False, f"torch.func.vmap cannot run it ({type(err).__name__}: {err})"
        return True, ""


    def _n_outputs(self, x: Any, owner: str, x_name: str) -> int:
        """Outputs (classes) of a fresh model: one forward pass in eval mode on two samples of
        ``x`` (a tensor or Dataset), cached per sample shape."""
        xb = _first_inputs(x, 2, owner, x_name)
        key = tuple(xb.shape[1:])
        if key not in self._outputs:
            model = self.new_model(0).eval()
            devices = _rng_devices(self.device)
            try:
                with torch.no_grad(), torch.random.fork_rng(devices=devices):
                    out = model(xb.to(self.device, self._param_dtype()))
            except Exception as err:
                raise ValueError(f"{owner} could not run a fresh model on {len(xb)} sample(s) of "
                                 f"'{x_name}' of shape {tuple(xb.shape)}: {type(err).__name__}: "
                                 f"{err}. Check that the data has the input shape the model "
                                 "expects.") from err
            _check_logits(out, len(xb), "TorchRetrainer trains classifiers with cross-entropy",
                          f"{len(xb)} sample(s) of '{x_name}' of shape {tuple(xb.shape)}")
            self._outputs[key] = int(out.shape[1])
        return self._outputs[key]

    def _one_sample_trains(self, x1: torch.Tensor) -> bool:
        """Whether a fresh model runs in training mode on the one input ``x1`` (False for
        BatchNorm1d, which needs more than one value per channel); cached per input shape."""
        key = tuple(x1.shape[1:])
        if key not in self._one_sample:
            model = self.new_model(0)
            ok = True
            if _has_batchnorm(model):
                devices = _rng_devices(self.device)
                try:
                    with torch.no_grad(), torch.random.fork_rng(devices=devices):
                        model(x1.to(self.device, self._param_dtype()))
                except ValueError:  # "Expected more than 1 value per channel when training"
                    ok = False
                except Exception:  # any other failure shows in training itself
                    pass
            self._one_sample[key] = ok
        return self._one_sample[key]

    def _check_augment(self, augment: Augment, x: Any, owner: str, x_name: str) -> None:
        """Run ``augment`` once on two inputs of ``x`` with a throwaway generator; refuse a
        function that fails or does not return a finite tensor of the shape and dtype given."""
        name = _fn_name(augment)
        xb = _first_inputs(x, 2, owner, x_name).to(self.device, self._param_dtype()).clone()
        shape, dtype = tuple(xb.shape), xb.dtype
        expect = (f"It must take (x_batch, generator) and return the batch augmented: a tensor of "
                  f"the same shape and dtype, here {shape} and {dtype}.")
        devices = _rng_devices(self.device)
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                out = augment(xb, torch.Generator().manual_seed(0))
        except Exception as err:
            raise ValueError(f"{owner}: the augment function {name} failed on {len(xb)} inputs "
                             f"of '{x_name}' of shape {shape}: {type(err).__name__}: {err}. "
                             + expect) from err
        if not isinstance(out, torch.Tensor):
            got = "None" if out is None else f"a {type(out).__name__}"
            raise ValueError(f"{owner}: the augment function {name} returned {got} on {len(xb)} "
                             f"inputs of '{x_name}'. " + expect)
        if tuple(out.shape) != shape or out.dtype != dtype:
            raise ValueError(f"{owner}: the augment function {name} returned a tensor of shape "
                             f"{tuple(out.shape)} and dtype {out.dtype} on {len(xb)} inputs of "
                             f"'{x_name}'. " + expect)
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"{owner}: the augment function {name} returned NaN or inf on "
                             f"{len(xb)} finite inputs of '{x_name}'; a model trained on them "
                             "would have NaN weights. " + expect)

    def _checked(self, x: Any, y: Any, owner: str, x_name: str = "x", y_name: str = "y", *,
                 train: bool) -> tuple[Any, torch.Tensor | None, int]:
        """One ``(x, y)`` pair checked for ``owner``: :func:`_check_data`, room for training
        data after ``validation_split`` (``train``), and labels against the model's outputs;
        for training data also that the model trains on its mini-batches and ``augment``.

        Returns ``x`` (a tensor view or the Dataset), ``y`` and the number of classes.
        """
        x, y = _check_data(x, y, owner, x_name, y_name, self._param_dtype())
        n_train = len(x)
        if train and self.validation_split:
            n_train = len(x) - round(self.validation_split * len(x))
            if n_train < 1:
                raise ValueError(_msg(x_name, owner, "large enough to keep training samples after "
                                      f"validation_split={self.validation_split}",
                                      f"{len(x)} sample(s), all held out for validation")
                                 + " Pass more samples or a smaller validation_split.")
        n_classes = self._n_outputs(x, owner, x_name)
        if y is not None:
            _check_label_range(y, n_classes, y_name, owner)
        if train and (n_train == 1 or self.batch_size == 1) and not self._one_sample_trains(
                _first_inputs(x, 1, owner, x_name)):
            got = (f"{n_train} training sample" if n_train == 1 else "batch_size=1")
            raise ValueError(f"{owner} cannot train this model with {got}: its BatchNorm needs "
                             "more than one sample per mini-batch in training mode (\"Expected "
                             "more than 1 value per channel\"). Pass more training samples and a "
                             "batch_size of at least 2, or use a model without BatchNorm.")
        if train and self.augment is not None:
            self._check_augment(self.augment, x, owner, x_name)
        return x, y, n_classes

    # ------------------------------------------------------------------ training

    def _optimizer(self, params: Sequence[torch.Tensor], steps: int):
        if self.optimizer == "adam":
            opt: torch.optim.Optimizer = _Adam(params, lr=self.lr,
                                               weight_decay=self.weight_decay)
        else:
            opt = _SGD(params, lr=self.lr, momentum=self.momentum,
                       weight_decay=self.weight_decay)
        sched: Any = None
        if self.schedule == "onecycle":
            # Adam: torch's default cycles beta1 between 0.95 and 0.85 (the published recipe).
            # SGD: the momentum stays as given; cycling would overwrite it.
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=self.lr, total_steps=steps,
                cycle_momentum=self.optimizer == "adam")
        elif self.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        elif self.schedule == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, steps // 3), gamma=0.1)
        return opt, sched

    def _prepare(self, jobs: list[RetrainJob], owner: str = "TorchRetrainer",
                 n_classes: int | None = None) -> Group:
        """The jobs' training data as trained on: one job's Dataset, or the jobs' tensors
        stacked on the device; ``validation_split`` of each held out."""
        if _is_dataset(jobs[0].x_train):
            return DatasetGroup.split(jobs[0], owner, n_classes, self.validation_split,
                                      self.device, self._param_dtype(), self.num_workers)
        return TensorGroup.stack(jobs, owner, self.device, self._param_dtype(),
                                 self.validation_split)

    def _loader(self, ds: Dataset, batch_size: int) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, shuffle=False,
                          num_workers=self.num_workers, pin_memory=self.device.type == "cuda")

    def _bounds(self, group: Group, model: nn.Module) -> list[tuple[int, int]]:
        """The mini-batches of an epoch; a last one of one sample joins the one before it when
        the model (BatchNorm1d) cannot train on one sample."""
        n = group.n
        merge = False
        if n > 1 and n % self.batch_size == 1 and _has_batchnorm(model):
            merge = not self._one_sample_trains(group.first_input())
        return batch_bounds(n, self.batch_size, merge)

    @staticmethod
    def _finite_weights(tensors: list[torch.Tensor], m: int) -> torch.Tensor:
        """(m,) bools: whether each model's floating parameters and buffers are all finite
        (``tensors`` stacked (m, ...) or, for m == 1, the model's own)."""
        flags = [torch.isfinite(t.detach()).reshape(m, -1).all(1)
                 for t in tensors if t.is_floating_point()]
        if not flags:
            return torch.ones(m, dtype=torch.bool)
        return torch.stack(flags).all(0)

    def _check_diverged(self, group: Group, loss_bad: torch.Tensor, weights_ok: torch.Tensor,
                        epoch: int) -> None:
        """Raise if a model's loss or weights became NaN or inf (one synchronisation)."""
        flags = torch.stack([loss_bad, ~weights_ok.to(loss_bad.device)]).tolist()
        bad = [i for i, (lb, wb) in enumerate(zip(*flags, strict=True)) if lb or wb]
        if not bad:
            return
        what = "the loss" if any(flags[0][i] for i in bad) else "the weights"
        m, names = len(group.jobs), group.names
        seeds = [group.jobs[i].seed for i in bad]
        if m == 1:
            who = f"seed {seeds[0]}" if names is None else f"{names[0]}, seed {seeds[0]}"
        else:
            labels = names if names is not None else [f"model {i}" for i in range(m)]
            who = (f"in {len(bad)} of the {m} models trained together: "
                   + ", ".join(f"{labels[i]} (seed {s})" for i, s in zip(bad, seeds,
                                                                         strict=True)))
        dtype = self._param_dtype()
        adam = self.optimizer == "adam"
        half = ("" if dtype != torch.float16 else
                " The model trains in float16, whose small range overflows and underflows easily"
                + (" (Adam's eps=1e-8 rounds to 0)" if adam else "")
                + "; train it in float32 (model.float())"
                + (" or with optimizer='sgd'." if adam else "."))
        raise RuntimeError(
            f"{group.owner}: training diverged: {what} became NaN or inf at epoch {epoch + 1} of "
            f"{self.epochs} ({who}). Lower lr (now {self.lr:g}), check the augment function and "
            f"the data; no accuracy is reported for a model with NaN weights.{half}")

    def _train(self, group: Group, models: list[nn.Module], stacked: bool) -> list[nn.Module]:
        """Train ``models`` (one per job of ``group``), together if ``stacked``.

        Each model ends in ``eval()`` mode with its weights after the epoch of best
        validation accuracy when data is held out, else after the last epoch.
        """
        m = len(group.jobs)
        bounds = self._bounds(group, models[0])
        gens = [torch.Generator().manual_seed(job.seed) for job in group.jobs]  # batch order
        net: _Single | _Stacked
        if stacked and isinstance(group, TensorGroup):
            net = _Stacked(models, group.x.ndim - 2, self.label_smoothing)
        else:  # one model (m == 1)
            net = _Single(models[0], self.label_smoothing)
        opt, sched = self._optimizer(net.params, self.epochs * len(bounds))
        validation = group.validation_sets()  # one (x, y) per model, or none
        best = _BestEpoch(m)
        aug_gen = torch.Generator().manual_seed(group.jobs[0].seed + 104729)
        loss_bad = torch.zeros(m, dtype=torch.bool, device=self.device)
        with torch.random.fork_rng(devices=_rng_devices(self.device)):
            torch.manual_seed(group.jobs[0].seed)  # dropout draws
            for epoch in range(self.epochs):
                perms = torch.stack([torch.randperm(group.n, generator=g) for g in gens])
                for xb, yb in group.batches(perms, bounds):  # (M, B, ...), (M, B)
                    loss_bad |= self._step(net, opt, sched, xb, yb, aug_gen)
                self._check_diverged(group, loss_bad, self._finite_weights(net.weights, m), epoch)
                if validation:
                    net.unstack(models)
                    for i, (model, (x_val, y_val)) in enumerate(zip(models, validation,
                                                                    strict=True)):
                        best.offer(i, self._score(model, x_val, y_val, group.owner,
                                                  checked=True), model)
                        model.train()
        net.unstack(models)
        best.restore(models)
        return models

    def _step(self, net: _Single | _Stacked, opt: torch.optim.Optimizer, sched: Any,
              xb: torch.Tensor, yb: torch.Tensor, aug_gen: torch.Generator) -> torch.Tensor:
        """One optimizer (and schedule) step on a mini-batch (M, B, ...); returns whether each
        model's loss was NaN or inf, without a synchronisation."""
        if self.augment is not None:
            xb = self.augment(xb.flatten(0, 1), aug_gen).unflatten(0, xb.shape[:2])
        losses, loss = net.loss(xb, yb)
        bad = ~torch.isfinite(losses.detach())
        for p in net.params:  # opt.zero_grad(set_to_none=True), which imports torch._dynamo
            p.grad = None
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        return bad

    # ------------------------------------------------------------------ public

    def fit(self, x: Any, y: Any, *, seed: int) -> nn.Module:
        """Train one fresh model on ``(x, y)``; returned in ``eval()`` mode.

        Parameters
        ----------
        x : tensor or array of shape (N, ...), or torch Dataset
            Inputs, or a Dataset of (input, label) pairs read through a DataLoader.
            Any real dtype; cast to the dtype of the model's parameters (float32 for most).
        y : tensor or array of shape (N,), integer class labels
            In [0, K) for a model with K outputs; floats only if whole numbers.
            ``None`` when ``x`` is a Dataset.
        seed : int
            In [0, 2**63). Seeds initialisation, batch order, dropout and the
            validation split.

        Raises
        ------
        TypeError
            If ``x`` or ``y`` is not numeric data, ``y`` is boolean, or
            ``seed`` is not an integer.
        ValueError
            If ``x`` is empty or holds NaN/inf, ``y`` does not have one label
            per input, holds non-integer values or labels outside [0, K), the
            model does not run on ``x``, ``augment`` fails on two inputs,
            the model has BatchNorm and one training sample or
            ``batch_size=1``, or ``seed`` is out of range. All raised before
            any training; a Dataset's batches are checked as they are read.
        RuntimeError
            If training diverges: the loss or the weights become NaN or inf
            (checked once per epoch).
        """
        owner = "TorchRetrainer.fit"
        seed = _check_seed(seed, "seed", owner)
        x, y, n_classes = self._checked(x, y, owner, train=True)
        return self._fit(x, y, seed, n_classes, owner)

    def _fit(self, x: Any, y: Any, seed: int, n_classes: int, owner: str) -> nn.Module:
        job = RetrainJob(x, y, None, None, seed)
        return self._train(self._prepare([job], owner, n_classes), [self.new_model(job.seed)],
                           stacked=False)[0]

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

        Raises
        ------
        TypeError, ValueError
            As :meth:`fit`, and if ``min_accuracy`` is not in [0, 1] or
            ``max_epochs`` is not a positive integer.
        """
        owner = "TorchRetrainer.fit_until"
        seed = _check_seed(seed, "seed", owner)
        # 0 is allowed: it keeps the first model trained with the recipe's epochs
        min_accuracy = Real(0, 1)(min_accuracy, "min_accuracy", owner)
        max_epochs = Int(1)(max_epochs, "max_epochs", owner)
        x, y, n_classes = self._checked(x, y, owner, train=True)
        epochs = min(self.epochs, max_epochs)
        while True:
            attempt = copy.copy(self)
            attempt.epochs = epochs
            model = attempt._fit(x, y, seed, n_classes, owner)
            accuracy = attempt._score(model, x, y, owner, checked=True)
            if accuracy >= min_accuracy or epochs >= max_epochs:
                return model, accuracy
            epochs = min(max_epochs, 2 * epochs)

    def score(self, model: nn.Module, x: Any, y: Any) -> float:
        """Accuracy of ``model`` on ``(x, y)`` (or a Dataset ``x`` with ``y=None``), in batches.

        Inputs are cast to the dtype of the model's parameters.

        Raises
        ------
        TypeError, ValueError
            For the data as :meth:`fit`, with ``K`` the number of outputs of
            ``model``; a Dataset's batches are checked as they are read. If
            ``model`` is not a ``torch.nn.Module`` instance with weights, does
            not return (N, K) logits, or returns NaN or inf logits (NaN
            weights: training diverged).
        """
        owner = "TorchRetrainer.score"
        check_model(model, owner)
        x, y = _check_data(x, y, owner, dtype=model_dtype(model))
        return self._score(model, x, y, owner)

    @staticmethod
    def _logits(model: nn.Module, xb: torch.Tensor, owner: str, x_name: str, where: str,
                rows: Callable[[list[int]], list[int]]) -> torch.Tensor:
        """``model(xb)`` refused unless finite (n, K) logits; ``rows`` maps batch rows to the
        indices named in the message."""
        logits = _check_logits(model(xb), len(xb), f"{owner} measures the accuracy of a "
                               "classifier", f"{len(xb)} sample(s) of '{x_name}' of shape "
                               f"{tuple(xb.shape)}{where}")
        finite = torch.isfinite(logits).all(1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten()
            raise ValueError(
                f"{owner}: the model returned NaN or inf logits for {len(bad)} of {len(xb)} "
                f"sample(s) of '{x_name}'{where}, first in sample(s) {rows(bad[:5].tolist())}. "
                "Its weights are likely NaN (training diverged: lower lr, check the augment "
                "function and the data) or the inputs overflow it; no accuracy is computed from "
                "such logits.")
        return logits

    def _score(self, model: nn.Module, x: Any, y: Any, owner: str, x_name: str = "x",
               y_name: str = "y", *, checked: bool = False) -> float:
        """:meth:`score` of data :func:`_check_data` passed; ``checked``: the labels' range too."""
        correct = self._correct(model, x, y, owner, x_name, y_name, checked=checked)
        return int(correct.sum()) / max(1, len(correct))

    @torch.no_grad()
    def _correct(self, model: nn.Module, x: Any, y: Any, owner: str, x_name: str = "x",
                 y_name: str = "y", *, checked: bool = False) -> np.ndarray:
        """Whether ``model`` classifies each sample of ``(x, y)`` right: bool array (N,)."""
        model.eval()
        dtype = model_dtype(model)
        parts = []
        if _is_dataset(x):
            b = max(self.batch_size, 256)
            for k, (xb, yb) in enumerate(self._loader(x, b)):
                where = f" in batch {k} read from the Dataset"
                yb = _check_batch(xb, yb, None, owner, x_name, where, x,
                                  range(k * b, k * b + len(yb)), dtype)
                logits = self._logits(model, xb.to(self.device, dtype), owner, x_name, where,
                                      lambda rows, k=k: [_root_index(x, k * b + r)
                                                         for r in rows])
                _check_label_range(yb, logits.shape[1], x_name, owner, where, "a Dataset with ")
                parts.append((logits.argmax(1) == yb.to(self.device)).cpu())
        else:
            x_t = _to_tensor(x, self.device, dtype)
            y_t = _to_tensor(y, self.device, torch.long)
            for start in range(0, len(x_t), 1024):
                logits = self._logits(model, x_t[start : start + 1024], owner, x_name, "",
                                      lambda rows, start=start: [start + r for r in rows])
                if start == 0 and not checked:
                    _check_label_range(y, logits.shape[1], y_name, owner)
                parts.append((logits.argmax(1) == y_t[start : start + 1024]).cpu())
        return torch.cat(parts).numpy() if parts else np.zeros(0, dtype=bool)

    def _check_jobs(self, jobs: Any, owner: str, *,
                    with_test: bool) -> tuple[list[RetrainJob], list[int]]:
        """Every job checked as :meth:`fit` checks its data, before any is trained; the test
        data too when ``with_test``. Returns the jobs with tensor data and their class counts."""
        out, classes = [], []
        for i, job in enumerate(_as_jobs(jobs, owner)):
            name = f"jobs[{i}]"
            seed = _check_seed(job.seed, f"{name}.seed", owner)
            x, y, n_classes = self._checked(job.x_train, job.y_train, owner, f"{name}.x_train",
                                            f"{name}.y_train", train=True)
            x_te, y_te = job.x_test, job.y_test
            if with_test:
                x_te, y_te = _check_data(x_te, y_te, owner, f"{name}.x_test", f"{name}.y_test",
                                         self._param_dtype())
                if (isinstance(x, torch.Tensor) and isinstance(x_te, torch.Tensor)
                        and x_te.shape[1:] != x.shape[1:]):
                    raise ValueError(_msg(f"{name}.x_test", owner, "samples of the shape of "
                                          f"{name}.x_train's, {tuple(x.shape[1:])}",
                                          f"samples of shape {tuple(x_te.shape[1:])}"))
                if y_te is not None:
                    _check_label_range(y_te, n_classes, f"{name}.y_test", owner)
            out.append(RetrainJob(x, y, x_te, y_te, seed))
            classes.append(n_classes)
        return out, classes

    def fit_many(self, jobs: Sequence[RetrainJob | tuple], *,
                 progress: bool = False) -> list[nn.Module]:
        """Train one model per job (its test data is not used); ensemble path when possible.

        Every job's training data and seed are checked as in :meth:`fit` before
        the first model is trained.
        """
        owner = "TorchRetrainer.fit_many"
        checked, classes = self._check_jobs(jobs, owner, with_test=False)
        return self._fit_many(checked, classes, progress, owner)

    def _fit_many(self, jobs: list[RetrainJob], classes: list[int], progress: bool,
                  owner: str) -> list[nn.Module]:
        streamed = any(_is_dataset(job.x_train) for job in jobs)
        stacked = len(jobs) > 1 and not streamed and self._use_ensemble(jobs[0].x_train)
        trained: dict[int, nn.Module] = {}
        groups = self._groups(jobs) if stacked else [[i] for i in range(len(jobs))]
        bar = tqdm(total=len(jobs), desc="retraining", disable=not progress, leave=False)
        for members in groups:
            sub = [jobs[i] for i in members]
            models = [self.new_model(job.seed) for job in sub]
            group = self._prepare(sub, owner, classes[members[0]])
            group.names = [f"jobs[{i}]" for i in members]
            models = self._train(group, models, stacked=stacked and len(sub) > 1)
            trained.update(zip(members, models, strict=True))
            bar.update(len(members))
        bar.close()
        return [trained[i] for i in range(len(jobs))]

    def fit_score_many(self, jobs: Sequence[RetrainJob | tuple], *,
                       progress: bool = False) -> list[float]:
        """Test accuracy of every job, in order, training many models at once when possible.

        Every job's training and test data and seed are checked as in
        :meth:`fit` before the first model is trained (a Dataset's batches as
        they are read).
        """
        return [int(c.sum()) / max(1, len(c))
                for c in self._fit_correct_many(jobs, progress, "TorchRetrainer.fit_score_many")]

    def fit_correct_many(self, jobs: Sequence[RetrainJob | tuple], *,
                         progress: bool = False) -> list[np.ndarray]:
        """Per test sample, whether each job's model classifies it right: one bool array
        per job, in order (their means are :meth:`fit_score_many`'s accuracies).

        What bootstrap intervals over test samples are computed from
        (:mod:`quantus_roar.stats`); trained and checked as :meth:`fit_score_many`.
        """
        return self._fit_correct_many(jobs, progress, "TorchRetrainer.fit_correct_many")

    def _fit_correct_many(self, jobs: Sequence[RetrainJob | tuple], progress: bool,
                          owner: str) -> list[np.ndarray]:
        checked, classes = self._check_jobs(jobs, owner, with_test=True)
        models = self._fit_many(checked, classes, progress, owner)
        return [self._correct(model, job.x_test, job.y_test, owner, f"jobs[{i}].x_test",
                              f"jobs[{i}].y_test", checked=True)
                for i, (model, job) in enumerate(zip(models, checked, strict=True))]

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
                itemsize = torch.empty(0, dtype=self._param_dtype()).element_size()
                per_job = itemsize * int(np.prod(x_shape)) + 8 * x_shape[0]
                size = max(1, _ENSEMBLE_DATA_BUDGET // max(1, per_job))
            groups.extend(members[i : i + size] for i in range(0, len(members), size))
        return groups
