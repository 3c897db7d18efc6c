"""Train fresh PyTorch models, one at a time or many at once."""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from tqdm.auto import tqdm

from quantus_roar._validation import _msg, check_choice, check_model, model_device, model_dtype
from quantus_roar.exceptions import NotResettableError
from quantus_roar.retrain.base import RetrainerBase, RetrainJob, _as_jobs
from quantus_roar.retrain.grouped import grouped_forward, supports_grouped

__all__ = ["TorchRetrainer"]

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

# Stacked training data of one ensemble group stays below this many bytes on
# the device unless max_ensemble says otherwise.
_ENSEMBLE_DATA_BUDGET = 2 * 1024**3

# Seeds are in [0, _SEED_END): the derived seeds (seed + small offsets) stay
# within the unsigned 64-bit range torch's generators accept.
_SEED_END = 2**63


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
    owner: str = "TorchRetrainer"  # the public method, for errors found in Dataset batches
    n_classes: int | None = None  # outputs of the model, for labels read from a Dataset
    names: list[str] | None = None  # the jobs as the caller knows them ("jobs[3]"), for errors

    @property
    def n(self) -> int:
        return len(self.dataset) if self.dataset is not None else self.y.shape[1]  # type: ignore[arg-type, union-attr]


def _is_dataset(v: Any) -> bool:
    return isinstance(v, Dataset) and not isinstance(v, torch.Tensor)


def _to_tensor(v: Any, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
    return t.to(device=device, dtype=dtype if dtype is not None else t.dtype)


# ---------------------------------------------------------------------- argument checks
# Each raises with the template of quantus_roar._validation; data checks are
# one vectorised pass (a sum, min/max or isfinite) over the data.


def _check_int(value: Any, name: str, owner: str, minimum: int, *,
               none_ok: bool = False) -> int | None:
    if value is None and none_ok:
        return None
    expected = ("a positive integer" if minimum == 1 else f"an integer >= {minimum}") + (
        " or None" if none_ok else "")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(_msg(name, owner, expected, repr(value)))
    if value < minimum:
        raise ValueError(_msg(name, owner, expected, repr(value)))
    return int(value)


def _check_real(value: Any, name: str, owner: str, expected: str,
                ok: Callable[[float], bool]) -> float:
    """``value`` as a float if it is a finite real number (not a bool) for which ``ok`` holds."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(_msg(name, owner, expected, repr(value)))
    v = float(value)
    if not (math.isfinite(v) and ok(v)):
        raise ValueError(_msg(name, owner, expected, repr(value)))
    return v


def _check_seed(seed: Any, name: str, owner: str) -> int:
    expected = "an integer in [0, 2**63)"
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(_msg(name, owner, expected, repr(seed))
                        + " Pass a whole number, e.g. int(seed) if rounding is intended.")
    if not 0 <= int(seed) < _SEED_END:
        raise ValueError(_msg(name, owner, expected, repr(seed))
                         + " Map a larger or negative seed into range, e.g. seed % 2**63.")
    return int(seed)


def _on_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))


_DATA = "a torch.Tensor, a numpy.ndarray, a numeric sequence or a map-style torch Dataset"


def _as_view(v: Any, name: str, owner: str, expected: str = _DATA) -> torch.Tensor:
    """``v`` as a tensor, sharing memory with numpy input where torch can (no copy)."""
    if isinstance(v, torch.Tensor):
        t = v
    else:
        if v is None or isinstance(v, (str, bytes, dict, set)):
            raise TypeError(_msg(name, owner, expected,
                                 "None" if v is None else type(v).__name__))
        try:
            arr = np.asarray(v)
        except (TypeError, ValueError) as err:
            raise TypeError(_msg(name, owner, expected, f"a {type(v).__name__} that numpy "
                                 f"cannot read as one array ({err})")) from None
        if arr.dtype.kind not in "biuf":
            raise TypeError(_msg(name, owner, expected,
                                 f"a {type(v).__name__} of dtype {arr.dtype}"))
        with warnings.catch_warnings():  # read-only arrays are only ever read
            warnings.filterwarnings("ignore", message=".*not writable", category=UserWarning)
            try:
                t = torch.as_tensor(arr)
            except (TypeError, ValueError, RuntimeError):  # negative strides, byte order
                t = torch.as_tensor(np.ascontiguousarray(arr, arr.dtype.newbyteorder("=")))
    if t.is_complex() or t.is_quantized:
        raise TypeError(_msg(name, owner, "real-valued", f"dtype {t.dtype}"))
    if t.ndim == 0:
        raise ValueError(_msg(name, owner, "batch-first, of shape (N, ...)",
                              f"a scalar ({t.item()!r})"))
    return t


def _fmt(v: float) -> str:
    return str(int(v)) if math.isfinite(v) and v == int(v) else repr(v)


def _check_labels(y: torch.Tensor, name: str, owner: str, where: str = "",
                  of: str = "") -> torch.Tensor:
    """Refuse boolean labels, float labels that are not whole numbers and integers beyond int64.

    Returns ``y`` with integer labels as int64 (unsigned ones included, which torch cannot
    reduce), float labels unchanged. ``of`` starts the expectation when ``name`` is not the
    labels themselves (``"a Dataset with "``); ``where`` ends what was got (the batch).
    """
    if y.dtype == torch.bool:
        raise TypeError(_msg(name, owner, f"{of}integer class labels", f"boolean labels{where}")
                        + " Convert them with y.long() if False and True are classes 0 and 1.")
    if y.is_floating_point():
        bad = y != y.trunc()  # also NaN
        if bool(bad.any()):
            examples = [float(v) for v in y[bad][:5].tolist()]
            raise ValueError(
                _msg(name, owner, f"{of}integer class labels",
                     f"{int(bad.sum())} float label(s) that are not whole numbers{where}, e.g. "
                     f"{examples}")
                + " Labels are class indices 0..K-1 for cross-entropy; they would be truncated. "
                "Pass integer labels (soft labels and regression targets are not supported).")
        return y
    if y.dtype == torch.uint64:
        big = y.view(torch.int64) < 0  # the values >= 2**63
        if bool(big.any()):
            examples = [int(v) + 2**64 for v in y.view(torch.int64)[big][:5].tolist()]
            raise ValueError(
                _msg(name, owner, f"{of}integer class labels within the int64 range",
                     f"{int(big.sum())} uint64 label(s) >= 2**63{where}, e.g. {examples}")
                + " Labels are class indices 0..K-1.")
    return y if y.dtype == torch.int64 else y.to(torch.int64)


def _check_label_range(y: torch.Tensor, n_classes: int, name: str, owner: str,
                       where: str = "", of: str = "") -> None:
    """Labels (as :func:`_check_labels` returns them) in [0, n_classes)."""
    lo, hi = torch.aminmax(y)
    lo, hi = float(lo), float(hi)
    if lo < 0 or hi >= n_classes:
        raise ValueError(
            _msg(name, owner,
                 f"{of}labels in [0, {n_classes}) for a model with {n_classes} outputs",
                 f"labels from {_fmt(lo)} to {_fmt(hi)}{where}")
            + f" Give the model's last layer one output per class, or map the labels to "
            f"0..{n_classes - 1}.")


def _check_finite(x: torch.Tensor, name: str, owner: str, where: str = "",
                  items: Callable[[list[int]], list[int]] | None = None,
                  dtype: torch.dtype = torch.float32) -> None:
    """Refuse NaN or inf in ``x`` after the cast to ``dtype`` (the model's) used for training."""
    if not x.is_floating_point():
        return
    # one reduction, no allocation: each value is cast to ``dtype`` and summed
    if bool(torch.isfinite(x.sum(dtype=dtype))):
        return
    xd = x if x.dtype == dtype else x.to(dtype)
    bad = ~torch.isfinite(xd)
    if not bool(bad.any()):  # the sum overflowed; every value is finite
        return
    bad_rows = torch.nonzero(bad.reshape(len(bad), -1).any(dim=1)).flatten()
    rows = bad_rows[:5].tolist()
    note = ""
    if x.dtype != dtype and bool(torch.isfinite(x[bad_rows]).all()):
        note = (f" (finite in {str(x.dtype).removeprefix('torch.')} but beyond the "
                f"{str(dtype).removeprefix('torch.')} range used for training)")
    raise ValueError(
        _msg(name, owner, "finite (no NaN or inf)",
             f"{int(bad.sum())} non-finite value(s) in {len(bad_rows)} sample(s){where}{note}, "
             f"first in sample(s) {items(rows) if items else rows}")
        + " One such input turns every weight of a model trained on it into NaN; drop or "
        "repair those samples (e.g. torch.nan_to_num) first.")


def _check_data(x: Any, y: Any, owner: str, x_name: str = "x", y_name: str = "y",
                dtype: torch.dtype = torch.float32) -> tuple[Any, torch.Tensor | None]:
    """``x`` (as a tensor, or the Dataset) and ``y`` as a tensor (integer labels as int64),
    after every check that needs no model: types, shapes, lengths, label values and finite
    inputs (after the cast to ``dtype``, the model's)."""
    if _is_dataset(x):
        if isinstance(x, IterableDataset):
            raise TypeError(_msg(x_name, owner, "a map-style torch Dataset (with __len__ and "
                                 "__getitem__)", f"an IterableDataset ({type(x).__name__})"))
        if y is not None:
            raise ValueError(_msg(y_name, owner, "None when '" + x_name + "' is a torch Dataset",
                                  f"a {type(y).__name__}")
                             + " The Dataset yields (input, label) pairs: pass y=None.")
        if len(x) == 0:
            raise ValueError(_msg(x_name, owner, "a non-empty Dataset", "an empty Dataset"))
        return x, None
    x_t = _as_view(x, x_name, owner)
    n = len(x_t)
    if n == 0:
        raise ValueError(_msg(x_name, owner, "non-empty", f"0 samples (shape {tuple(x_t.shape)})")
                         + " Check the split or filter that produced it.")
    if y is None:
        raise TypeError(_msg(y_name, owner, "integer class labels of shape (N,)", "None")
                        + f" Pass y=None only with a torch Dataset as '{x_name}'.")
    y_t = _as_view(y, y_name, owner, "integer class labels (a torch.Tensor, numpy.ndarray or "
                   "sequence) of shape (N,)")
    if y_t.ndim != 1:
        hint = (" For one-hot labels pass y.argmax(1)." if y_t.ndim == 2 and y_t.shape[1] > 1
                else " Flatten it to one label per sample." if y_t.ndim == 2 else "")
        raise ValueError(_msg(y_name, owner, f"of shape (N,) = ({n},), one label per sample",
                              f"shape {tuple(y_t.shape)}") + hint)
    if len(y_t) != n:
        raise ValueError(_msg(y_name, owner, f"one label per sample of '{x_name}' ({n} labels)",
                              f"{len(y_t)} labels for {n} inputs")
                         + " Pass as many labels as inputs; nothing is dropped silently.")
    y_t = _check_labels(y_t, y_name, owner)
    _check_finite(x_t, x_name, owner, dtype=dtype)
    return x_t, y_t


def _root_index(ds: Dataset, i: int) -> int:
    """Index ``i`` of ``ds`` as an index of the Dataset a (nested) Subset was made from."""
    while isinstance(ds, Subset):
        i, ds = int(ds.indices[i]), ds.dataset
    return i


def _check_batch(xb: Any, yb: Any, n_classes: int | None, owner: str, x_name: str,
                 where: str, ds: Dataset, positions: Sequence[int],
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The checks of :func:`_check_data` on one mini-batch read from ``ds`` at ``positions``;
    returns the labels (integers as int64)."""
    if not isinstance(yb, torch.Tensor) or yb.ndim != 1 or not isinstance(xb, torch.Tensor):
        labels = (f"shape {tuple(yb.shape)}" if isinstance(yb, torch.Tensor)
                  else type(yb).__name__)
        raise ValueError(_msg(x_name, owner, "a Dataset of (input, label) pairs with one integer "
                              "label per input", f"batches of {type(xb).__name__} inputs and "
                              f"labels of {labels}{where}"))
    yb = _check_labels(yb, x_name, owner, where, "a Dataset with ")
    if n_classes is not None:
        _check_label_range(yb, n_classes, x_name, owner, where, "a Dataset with ")
    _check_finite(xb, x_name, owner, where,
                  lambda rows: [_root_index(ds, positions[r]) for r in rows], dtype)
    return yb


def _check_logits(out: Any, n: int, lead: str, what: str) -> torch.Tensor:
    """Refuse model outputs that are not (n, K) logits; ``lead`` starts the message and
    ``what`` says on what the model ran."""
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or len(out) != n:
        got = (f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
               else f"a {type(out).__name__}")
        raise ValueError(f"{lead}: the model must return logits of shape (batch, n_classes). On "
                         f"{what} it returned {got}.")
    return out


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _batch_bounds(n: int, batch_size: int, merge_single: bool) -> list[tuple[int, int]]:
    """``(start, end)`` of one epoch's mini-batches; with ``merge_single`` a last mini-batch of
    one sample joins the one before it."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if merge_single and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _fn_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


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
        Template whose architecture is copied. Its weights are not used, but
        it must hold data (not be on the ``meta`` device). Its outputs are the
        class logits, one per class.
    model_fn : callable, optional
        Zero-argument factory of a fresh model; use it when a module of the
        template has parameters but no ``reset_parameters``.
    epochs : int, default 12
        Passes over the training data (a positive integer, not a bool).
    batch_size : int, default 64
    optimizer : {"adam", "sgd"}, default "adam"
        Adam (``weight_decay`` as L2, as torch's Adam) or SGD with ``momentum``.
    lr : float, default 1e-2
        (Peak) learning rate, finite and > 0.
    weight_decay : float, default 0.0
        Finite and >= 0.
    momentum : float, default 0.9
        SGD momentum in [0, 1), constant through every schedule (ignored by
        Adam).
    schedule : {None, "onecycle", "cosine", "step"}, default "onecycle"
        Learning-rate schedule, stepped after every mini-batch. ``"step"``
        divides the rate by 10 after each third of training. ``"onecycle"``
        is torch's ``OneCycleLR``; with Adam it also cycles Adam's ``beta1``
        between 0.95 and 0.85 (torch's default ``cycle_momentum=True``, part of
        the default recipe), while SGD keeps its ``momentum`` as given.
    label_smoothing : float, default 0.0
        In [0, 1).
    augment : callable, optional
        ``augment(x_batch, generator) -> x_batch`` on whole mini-batches on the
        device. In the ensemble path it receives the batches of all models
        at once, flattened to (M * B, ...), so its draws differ from the
        one-at-a-time path. It is tried once on two training inputs before
        training (with a throwaway generator) and must return a finite tensor
        of the shape and dtype it was given.
    device : str or torch.device, optional
        Default: the device of the template's parameters, else CPU.
    ensemble : {"auto", True, False}, default "auto"
        Train several models at once when the model allows it. ``True`` raises
        if it does not; ``False`` always trains one at a time.
    max_ensemble : int, optional
        Most models trained at once. Default: all jobs with the same data
        shapes, as long as their stacked training data stays below 2 GiB.
    validation_split : float, default 0.0
        Fraction in [0, 1) of each job's training data held out (seeded by the
        job's seed) to select the epoch with the best validation accuracy. The
        test data is never used for any choice.
    num_workers : int, default 0
        DataLoader workers for training data given as a torch ``Dataset``.

    Raises
    ------
    TypeError
        If a number parameter has the wrong type (bools are not integers) or
        ``augment`` is not callable.
    ValueError
        If a number parameter is out of range or not finite, the model is on
        the ``meta`` device, or it is not given exactly one of ``model`` and
        ``model_fn``.
    NotResettableError
        If a module of the template has parameters but no
        ``reset_parameters``.

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
        if model is not None and _on_meta(model):
            raise ValueError(_msg("model", owner, "a model with data",
                                  "a model with tensors on the meta device (no data)")
                             + " Materialise it first, e.g. model.to_empty(device='cpu') (its "
                             "weights are re-initialised anyway), or build it on a real device.")
        self.epochs = _check_int(epochs, "epochs", owner, 1)
        self.batch_size = _check_int(batch_size, "batch_size", owner, 1)
        self.max_ensemble = _check_int(max_ensemble, "max_ensemble", owner, 1, none_ok=True)
        self.num_workers = _check_int(num_workers, "num_workers", owner, 0)
        self.lr = _check_real(lr, "lr", owner, "a finite number > 0", lambda v: v > 0)
        self.weight_decay = _check_real(weight_decay, "weight_decay", owner,
                                        "a finite number >= 0", lambda v: v >= 0)
        self.momentum = _check_real(momentum, "momentum", owner, "a number in [0, 1)",
                                    lambda v: 0 <= v < 1)
        self.label_smoothing = _check_real(label_smoothing, "label_smoothing", owner,
                                           "a number in [0, 1)", lambda v: 0 <= v < 1)
        self.validation_split = _check_real(validation_split, "validation_split", owner,
                                            "a number in [0, 1)", lambda v: 0 <= v < 1)
        check_choice(optimizer, "optimizer", owner, ("adam", "sgd"))
        check_choice(schedule, "schedule", owner, (None, "onecycle", "cosine", "step"))
        check_choice(ensemble, "ensemble", owner, ("auto", True, False))
        if augment is not None and not callable(augment):
            raise TypeError(_msg("augment", owner, "callable (x_batch, generator) -> x_batch, "
                                 "or None", type(augment).__name__))
        self.model = model
        self.model_fn = model_fn
        self.optimizer = optimizer
        self.schedule = schedule
        self.augment = augment
        self.ensemble = ensemble
        self.device = (model_device(model, device) if model is not None
                       else torch.device(device if device is not None else "cpu"))
        if self.device.type == "meta":
            raise ValueError(_msg("device", owner, "a device that holds data (e.g. 'cpu', "
                                  "'cuda')", "'meta'"))
        if model is not None:
            self._check_resettable(model)
        # Probe results per per-sample input shape (None: no input tried).
        self._batchable: dict[tuple[int, ...] | None, tuple[bool, str]] = {}
        # Outputs (classes) of a fresh model per per-sample input shape.
        self._outputs: dict[tuple[int, ...], int] = {}
        # Whether a fresh model trains on a mini-batch of one sample, per input shape.
        self._one_sample: dict[tuple[int, ...], bool] = {}
        self._dtype: torch.dtype | None = None  # of the model's parameters, found once

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
                model = self.model_fn()
                if not isinstance(model, nn.Module):
                    raise TypeError("The 'model_fn' of TorchRetrainer must return a "
                                    f"torch.nn.Module. Got {type(model).__name__} instead.")
                if _on_meta(model):
                    raise ValueError(
                        "The 'model_fn' of TorchRetrainer must return a model with data. Got a "
                        "model with tensors on the meta device (no data) instead. Build it on a "
                        "real device in model_fn, or materialise it there, e.g. "
                        "model.to_empty(device='cpu') followed by reset_parameters().")
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

    def _param_dtype(self) -> torch.dtype:
        """The floating dtype of the model's parameters, which inputs are cast to."""
        if getattr(self, "_dtype", None) is None:
            self._dtype = model_dtype(self.model if self.model is not None
                                      else self.new_model(0))
        return self._dtype  # type: ignore[return-value]

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

    def _first(self, x: Any, k: int, owner: str, x_name: str) -> torch.Tensor:
        """The first ``k`` inputs of ``x`` (a tensor or Dataset), as they come."""
        if not _is_dataset(x):
            return x[:k]
        batch = next(iter(DataLoader(x, batch_size=min(k, len(x)))))
        if not (isinstance(batch, (list, tuple)) and len(batch) == 2
                and isinstance(batch[0], torch.Tensor)):
            raise ValueError(_msg(x_name, owner, "a Dataset of (input, label) pairs",
                                  f"a {type(x).__name__} whose first items collate to a "
                                  f"{type(batch).__name__}"
                                  + (f" of {len(batch)}" if isinstance(batch, (list, tuple))
                                     else "")))
        return batch[0]

    def _n_outputs(self, x: Any, owner: str, x_name: str) -> int:
        """Outputs (classes) of a fresh model: one forward pass in eval mode on two samples of
        ``x`` (a tensor or Dataset), cached per sample shape."""
        xb = self._first(x, 2, owner, x_name)
        key = tuple(xb.shape[1:])
        if key not in self._outputs:
            model = self.new_model(0).eval()
            devices = [self.device] if self.device.type == "cuda" else []
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
                devices = [self.device] if self.device.type == "cuda" else []
                try:
                    with torch.no_grad(), torch.random.fork_rng(devices=devices):
                        model(x1.to(self.device, self._param_dtype()))
                except ValueError:  # "Expected more than 1 value per channel when training"
                    ok = False
                except Exception:  # any other failure shows in training itself
                    pass
            self._one_sample[key] = ok
        return self._one_sample[key]

    def _check_augment(self, x: Any, owner: str, x_name: str) -> None:
        """Run ``augment`` once on two inputs of ``x`` with a throwaway generator; refuse a
        function that fails or does not return a finite tensor of the shape and dtype given."""
        name = _fn_name(self.augment)
        xb = self._first(x, 2, owner, x_name).to(self.device, self._param_dtype()).clone()
        shape, dtype = tuple(xb.shape), xb.dtype
        expect = (f"It must take (x_batch, generator) and return the batch augmented: a tensor of "
                  f"the same shape and dtype, here {shape} and {dtype}.")
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                out = self.augment(xb, torch.Generator().manual_seed(0))  # type: ignore[misc]
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
                self._first(x, 1, owner, x_name)):
            got = (f"{n_train} training sample" if n_train == 1 else "batch_size=1")
            raise ValueError(f"{owner} cannot train this model with {got}: its BatchNorm needs "
                             "more than one sample per mini-batch in training mode (\"Expected "
                             "more than 1 value per channel\"). Pass more training samples and a "
                             "batch_size of at least 2, or use a model without BatchNorm.")
        if train and self.augment is not None:
            self._check_augment(x, owner, x_name)
        return x, y, n_classes

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

    def _split(self, x: torch.Tensor, y: torch.Tensor, seed: int):
        """Training and validation parts of one job's data (validation_split > 0)."""
        n_val = round(self.validation_split * len(x))
        if n_val == 0:
            return x, y, None, None
        g = torch.Generator().manual_seed(seed + 7919)
        perm = torch.randperm(len(x), generator=g).to(x.device)
        return x[perm[n_val:]], y[perm[n_val:]], x[perm[:n_val]], y[perm[:n_val]]

    def _prepare_dataset(self, job: RetrainJob, owner: str, n_classes: int | None) -> _Group:
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
        return _Group([job], None, None, None, None, dataset=ds, val_dataset=val, owner=owner,
                      n_classes=n_classes)

    def _loader(self, ds: Dataset, batch_size: int) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, shuffle=False,
                          num_workers=self.num_workers, pin_memory=self.device.type == "cuda")

    def _batches(self, group: _Group, perms: torch.Tensor, bounds: list[tuple[int, int]]):
        """One epoch of mini-batches (M, B, ...), (M, B) in the order of ``perms``, cut at
        ``bounds``."""
        dtype = self._param_dtype()
        if group.dataset is not None:
            ds, order = group.dataset, perms[0].tolist()
            batches = [order[start:end] for start, end in bounds]
            loader = DataLoader(ds, batch_sampler=batches, num_workers=self.num_workers,
                                pin_memory=self.device.type == "cuda")
            for k, ((xb, yb), positions) in enumerate(zip(loader, batches, strict=True)):
                yb = _check_batch(xb, yb, group.n_classes, group.owner, "x",
                                  f" in training batch {k} read from the Dataset", ds, positions,
                                  dtype)
                yield (xb.to(self.device, dtype, non_blocking=True)[None],
                       yb.to(self.device, torch.long, non_blocking=True)[None])
            return
        rows = torch.arange(len(group.jobs), device=self.device)[:, None]
        for start, end in bounds:
            idx = perms[:, start:end]
            yield group.x[rows, idx], group.y[rows, idx]  # type: ignore[index]

    def _prepare(self, jobs: list[RetrainJob], owner: str = "TorchRetrainer",
                 n_classes: int | None = None) -> _Group:
        if _is_dataset(jobs[0].x_train):
            return self._prepare_dataset(jobs[0], owner, n_classes)
        xs, ys, xvs, yvs = [], [], [], []
        dtype = self._param_dtype()
        for job in jobs:
            x = _to_tensor(job.x_train, self.device, dtype)
            y = _to_tensor(job.y_train, self.device, torch.long)
            x, y, xv, yv = self._split(x, y, job.seed)
            xs.append(x)
            ys.append(y)
            xvs.append(xv)
            yvs.append(yv)
        has_val = xvs[0] is not None
        return _Group(jobs, torch.stack(xs), torch.stack(ys),
                      torch.stack(xvs) if has_val else None,  # type: ignore[arg-type]
                      torch.stack(yvs) if has_val else None,  # type: ignore[arg-type]
                      owner=owner)

    def _bounds(self, group: _Group, model: nn.Module) -> list[tuple[int, int]]:
        """The mini-batches of an epoch; a last one of one sample joins the one before it when
        the model (BatchNorm1d) cannot train on one sample."""
        n = group.n
        merge = False
        if n > 1 and n % self.batch_size == 1 and _has_batchnorm(model):
            first = (group.x[0, :1] if group.dataset is None  # type: ignore[index]
                     else self._first(group.dataset, 1, group.owner, "x"))
            merge = not self._one_sample_trains(first)
        return _batch_bounds(n, self.batch_size, merge)

    @staticmethod
    def _finite_weights(tensors: list[torch.Tensor], m: int) -> torch.Tensor:
        """(m,) bools: whether each model's floating parameters and buffers are all finite
        (``tensors`` stacked (m, ...) or, for m == 1, the model's own)."""
        flags = [torch.isfinite(t.detach()).reshape(m, -1).all(1)
                 for t in tensors if t.is_floating_point()]
        if not flags:
            return torch.ones(m, dtype=torch.bool)
        return torch.stack(flags).all(0)

    def _check_diverged(self, group: _Group, loss_bad: torch.Tensor, weights_ok: torch.Tensor,
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

    def _train(self, group: _Group, models: list[nn.Module], stacked: bool) -> list[nn.Module]:
        """Train ``models`` (one per job of ``group``), together if ``stacked``."""
        m, n = len(group.jobs), group.n
        bounds = self._bounds(group, models[0])
        steps_per_epoch = len(bounds)
        gens = [torch.Generator().manual_seed(job.seed) for job in group.jobs]
        if stacked:
            params, buffers = stack_module_state(models)
            base = copy.deepcopy(models[0]).to("meta")
            if supports_grouped(base, sample_ndim=group.x.ndim - 2):  # type: ignore[union-attr]
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
            weights = [*params.values(), *buffers.values()]
        else:  # one model (m == 1)
            opt, sched = self._optimizer(list(models[0].parameters()),
                                         self.epochs * steps_per_epoch)
            weights = [*models[0].parameters(), *models[0].buffers()]
        best_acc = torch.full((m,), -1.0)
        best_state: list[dict[str, torch.Tensor] | None] = [None] * m
        aug_gen = torch.Generator().manual_seed(group.jobs[0].seed + 104729)
        loss_bad = torch.zeros(m, dtype=torch.bool, device=self.device)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(group.jobs[0].seed)  # dropout draws
            for epoch in range(self.epochs):
                perms = torch.stack([torch.randperm(n, generator=g) for g in gens])
                if group.dataset is None:
                    perms = perms.to(self.device)
                for xb, yb in self._batches(group, perms, bounds):  # (M, B, ...), (M, B)
                    if self.augment is not None:
                        xb = self.augment(xb.flatten(0, 1), aug_gen).unflatten(0, xb.shape[:2])
                    if stacked:
                        losses = loss_fn(params, buffers, xb, yb)  # (M,)
                        loss = losses.sum()
                    else:
                        loss = losses = F.cross_entropy(models[0](xb[0]), yb[0],
                                                        label_smoothing=self.label_smoothing)
                    loss_bad |= ~torch.isfinite(losses.detach())  # no synchronisation
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                self._check_diverged(group, loss_bad, self._finite_weights(weights, m), epoch)
                if group.x_val is not None or group.val_dataset is not None:
                    if stacked:
                        self._unstack(params, buffers, models)
                    for i, model in enumerate(models):
                        acc = (self._score(model, group.val_dataset, None, group.owner)
                               if group.val_dataset is not None
                               else self._score(model, group.x_val[i], group.y_val[i],  # type: ignore[index]
                                                group.owner, checked=True))
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
        min_accuracy = _check_real(min_accuracy, "min_accuracy", owner,
                                   "a training accuracy in [0, 1]", lambda v: 0 <= v <= 1)
        max_epochs = _check_int(max_epochs, "max_epochs", owner, 1)  # type: ignore[assignment]
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

    @torch.no_grad()
    def _score(self, model: nn.Module, x: Any, y: Any, owner: str, x_name: str = "x",
               y_name: str = "y", *, checked: bool = False) -> float:
        """:meth:`score` of data :func:`_check_data` passed; ``checked``: the labels' range too."""
        model.eval()
        dtype = model_dtype(model)
        if _is_dataset(x):
            correct, total, b = 0, 0, max(self.batch_size, 256)
            for k, (xb, yb) in enumerate(self._loader(x, b)):
                where = f" in batch {k} read from the Dataset"
                yb = _check_batch(xb, yb, None, owner, x_name, where, x,
                                  range(k * b, k * b + len(yb)), dtype)
                logits = self._logits(model, xb.to(self.device, dtype), owner, x_name, where,
                                      lambda rows, k=k: [_root_index(x, k * b + r)
                                                         for r in rows])
                _check_label_range(yb, logits.shape[1], x_name, owner, where, "a Dataset with ")
                correct += int((logits.argmax(1) == yb.to(self.device)).sum())
                total += len(yb)
            return correct / max(1, total)
        x_t = _to_tensor(x, self.device, dtype)
        y_t = _to_tensor(y, self.device, torch.long)
        correct = 0
        for start in range(0, len(x_t), 1024):
            logits = self._logits(model, x_t[start : start + 1024], owner, x_name, "",
                                  lambda rows, start=start: [start + r for r in rows])
            if start == 0 and not checked:
                _check_label_range(y, logits.shape[1], y_name, owner)
            correct += int((logits.argmax(1) == y_t[start : start + 1024]).sum())
        return correct / max(1, len(x_t))

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
        out: list[nn.Module | None] = [None] * len(jobs)
        groups = self._groups(jobs) if stacked else [[i] for i in range(len(jobs))]
        bar = tqdm(total=len(jobs), desc="retraining", disable=not progress, leave=False)
        for group in groups:
            sub = [jobs[i] for i in group]
            models = [self.new_model(job.seed) for job in sub]
            prepared = self._prepare(sub, owner, classes[group[0]])
            prepared.names = [f"jobs[{i}]" for i in group]
            trained = self._train(prepared, models, stacked=stacked and len(sub) > 1)
            for i, model in zip(group, trained, strict=True):
                out[i] = model
            bar.update(len(group))
        bar.close()
        return out  # type: ignore[return-value]

    def fit_score_many(self, jobs: Sequence[RetrainJob | tuple], *,
                       progress: bool = False) -> list[float]:
        """Test accuracy of every job, in order, training many models at once when possible.

        Every job's training and test data and seed are checked as in
        :meth:`fit` before the first model is trained (a Dataset's batches as
        they are read).
        """
        owner = "TorchRetrainer.fit_score_many"
        checked, classes = self._check_jobs(jobs, owner, with_test=True)
        models = self._fit_many(checked, classes, progress, owner)
        return [self._score(model, job.x_test, job.y_test, owner, f"jobs[{i}].x_test",
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
