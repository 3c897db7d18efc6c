"""Input checks of :class:`~quantus_roar.retrain.TorchRetrainer`, and the small data helpers
they share with it.

Each check raises with the template of :mod:`quantus_roar._validation`; data checks are
one vectorised pass (a sum, min/max or isfinite) over the data.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from quantus_roar._validation import MAX_SEED, _msg


def _is_dataset(v: Any) -> bool:
    return isinstance(v, Dataset) and not isinstance(v, torch.Tensor)


def _to_tensor(v: Any, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
    return t.to(device=device, dtype=dtype if dtype is not None else t.dtype)


def _check_seed(seed: Any, name: str, owner: str) -> int:
    expected = "an integer in [0, 2**63)"
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(_msg(name, owner, expected, repr(seed))
                        + " Pass a whole number, e.g. int(seed) if rounding is intended.")
    if not 0 <= int(seed) < MAX_SEED:
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


def _fn_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _first_inputs(x: Any, k: int, owner: str, x_name: str) -> torch.Tensor:
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
