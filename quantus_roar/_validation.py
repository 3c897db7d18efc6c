"""Argument checks shared by the core modules.

Each helper returns the cleaned value or raises with one message template:
"The '<name>' parameter of <owner> must be <expected>. Got <value> instead."
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = [
    "INPUT_HINT",
    "MAX_SEED",
    "Choice",
    "Constraint",
    "Func",
    "Int",
    "Percentages",
    "Real",
    "Seed",
    "as_tensor",
    "check_batch_size",
    "check_channel_first",
    "check_choice",
    "check_finite",
    "check_int",
    "check_labels",
    "check_model",
    "check_number",
    "check_params",
    "check_percentages",
    "check_seed",
    "evaluating",
    "like_input",
    "model_device",
    "model_dtype",
    "native_array",
    "to_tensor",
    "validated",
]

#: Seeds are integers in [0, MAX_SEED): what numpy's and torch's generators all accept.
MAX_SEED = 2**63


def _msg(name: str, owner: str, expected: str, got: Any) -> str:
    return f"The '{name}' parameter of {owner} must be {expected}. Got {got} instead."


def as_tensor(value: Any, name: str, owner: str) -> torch.Tensor:
    """Return ``value`` as a tensor, sharing memory with numpy input where possible.

    Read-only arrays (memory maps, Ray's shared objects) are copied: torch
    cannot guard them against writes.
    """
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError(_msg(name, owner, "real numbers", f"dtype {value.dtype}")
                            + " Pass the real part (or the magnitude) explicitly.")
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(native_array(value, name, owner))
    raise TypeError(_msg(name, owner, "a torch.Tensor or numpy.ndarray", type(value).__name__))


def to_tensor(value: Any, name: str, owner: str) -> torch.Tensor:
    """Any array-like as a CPU tensor: the one converter of user data.

    Tensors are detached and moved to the CPU; numpy arrays share memory
    where possible (:func:`native_array`); lists and other array-likes are
    read by numpy. Masked arrays, complex, string and object data, and
    tensors on the meta device are refused.
    """
    if isinstance(value, torch.Tensor):
        if value.is_meta:
            raise ValueError(_msg(name, owner, "data", "a tensor on the meta device (no data)")
                             + " Pass the data itself.")
        return as_tensor(value.detach().cpu(), name, owner)
    try:
        arr = np.asanyarray(value)  # keeps a masked array masked, so it is refused
    except Exception as err:  # pragma: no cover - exotic array-likes
        raise TypeError(_msg(name, owner, "array-like", type(value).__name__)) from err
    return torch.from_numpy(native_array(arr, name, owner))


def native_array(value: np.ndarray, name: str, owner: str) -> np.ndarray:
    """A contiguous, writable, native-byte-order real numeric copy or view of ``value``.

    Torch reads only native byte order and cannot guard read-only memory;
    complex, object, string and extended-precision arrays are refused.
    """
    dtype = value.dtype
    if dtype.kind == "c" or not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise TypeError(_msg(name, owner, "a real numeric array", f"dtype {dtype}")
                        + (" Pass the real part (or the magnitude) explicitly."
                           if dtype.kind == "c" else ""))
    if dtype.kind == "f" and dtype.itemsize > 8:
        raise TypeError(_msg(name, owner, "float16, float32 or float64 values",
                             f"dtype {dtype}") + " Convert it, e.g. x.astype(np.float64).")
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(_msg(name, owner, "a plain array", "a masked array")
                        + " Fill or drop the masked entries first (x.filled(...)).")
    if not dtype.isnative:
        value = value.astype(dtype.newbyteorder("="))
    arr = value if value.flags.c_contiguous else np.ascontiguousarray(value)  # keeps 0-d
    return arr if arr.flags.writeable else arr.copy()


def model_device(model: torch.nn.Module, device: Any = None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter (CPU if it has none)."""
    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(_msg("device", "the call", "'cpu', 'cuda', 'cuda:N' or a "
                                  "torch.device", repr(device))) from err
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in ``eval()`` mode for the block; its own mode is restored after it,
    also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter (float32 if it has none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def check_model(model: Any, owner: str, name: str = "model") -> torch.nn.Module:
    """Return ``model`` if it is a usable ``torch.nn.Module`` instance.

    A class instead of an instance, another object, or a model whose
    parameters live on the ``meta`` device (no data) are errors.
    """
    if isinstance(model, type):
        raise TypeError(_msg(name, owner, "a torch.nn.Module instance",
                             f"the class {model.__name__}") + " Create the model first, e.g. "
                        f"{model.__name__}(...).")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(_msg(name, owner, "a torch.nn.Module", type(model).__name__))
    meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if meta:
        raise ValueError(_msg(name, owner, "a model with weights", f"{len(meta)} tensor(s) on "
                              f"the meta device (no data), first '{meta[0]}'")
                         + " Materialise it first, e.g. model.to_empty(device='cpu') and load "
                         "or initialise its weights.")
    return model


def check_channel_first(shape: tuple[int, ...], name: str, owner: str) -> None:
    """Refuse a 4-d batch that is plainly channel-last, (N, H, W, C) with C in 1..4."""
    if len(shape) == 4 and shape[-1] in (1, 2, 3, 4) and shape[1] > 4 and shape[2] > 4:
        raise ValueError(
            f"The '{name}' parameter of {owner} must be channel-first, (N, C, H, W). Got shape "
            f"{tuple(shape)}, which looks channel-last (N, H, W, C) with C = {shape[-1]}: read "
            f"as channel-first it would be {shape[1]} channels of {shape[2]}x{shape[3]} "
            "pixels. Move the channel axis first, e.g. a.permute(0, 3, 1, 2) or "
            "np.moveaxis(a, -1, 1)."
        )


def check_int(value: Any, name: str, owner: str, *, low: int = 1, high: int | None = None
              ) -> int:
    """Return ``value`` as an int in [low, high); bools and non-integers are errors."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok:
        raise TypeError(_msg(name, owner, "an integer", repr(value)))
    if value < low or (high is not None and value >= high):
        shown = "2**63" if high == MAX_SEED else high
        where = f">= {low}" if high is None else f"in [{low}, {shown})"
        raise ValueError(_msg(name, owner, f"an integer {where}", repr(value)))
    return int(value)


def check_batch_size(value: Any, owner: str, name: str = "batch_size") -> int:
    """A positive integer batch size."""
    return check_int(value, name, owner, low=1)


def check_seed(value: Any, owner: str, name: str = "seed") -> int:
    """A seed: an integer in [0, 2**63)."""
    return check_int(value, name, owner, low=0, high=MAX_SEED)


def check_number(value: Any, name: str, owner: str, *, low: float | None = None,
                 high: float | None = None, low_open: bool = False, high_open: bool = False
                 ) -> float:
    """Return ``value`` as a finite float within the given bounds."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise TypeError(_msg(name, owner, "a number", repr(value)))
    v = float(value)
    lo = "" if low is None else (f"> {low:g}" if low_open else f">= {low:g}")
    hi = "" if high is None else (f"< {high:g}" if high_open else f"<= {high:g}")
    expected = "a finite number" + (f" {lo}" if lo else "") + (" and" if lo and hi else "") \
        + (f" {hi}" if hi else "")
    bad = not np.isfinite(v)
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        raise ValueError(_msg(name, owner, expected, repr(value)))
    return v


def check_labels(y: torch.Tensor, n: int, name: str, owner: str, *,
                 n_classes: int | None = None, x_name: str = "x") -> torch.Tensor:
    """Integer class labels, one per sample: shape (n,), values in [0, n_classes).

    Floats are accepted when every value is a whole number; booleans are not.
    Returns an int64 tensor.
    """
    if y.ndim != 1 or len(y) != n:
        raise ValueError(_msg(name, owner, f"one class label per sample of {x_name}, shape "
                              f"({n},)", f"shape {tuple(y.shape)}"))
    if y.dtype == torch.bool:
        raise ValueError(_msg(name, owner, "integer class labels", "booleans")
                         + " Pass them as integers 0 and 1.")
    if y.dtype in (torch.uint16, torch.uint32, torch.uint64):
        y = torch.from_numpy(y.numpy().astype(np.int64)) if y.device.type == "cpu" else \
            y.to(torch.int64)
    if y.is_complex() or (not y.is_floating_point() and y.dtype not in (
            torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
        raise TypeError(_msg(name, owner, "integer class labels", f"dtype {y.dtype}"))
    if y.is_floating_point():
        whole = torch.isfinite(y) & (y == y.round())
        if not bool(whole.all()):
            raise ValueError(_msg(name, owner, "integer class labels",
                                  f"non-integer values such as {y[~whole][:5].tolist()}"))
    y = y.long()
    if len(y):
        low, high = int(y.min()), int(y.max())
        if low < 0 or (n_classes is not None and high >= n_classes):
            upper = ">= 0" if n_classes is None else f"in [0, {n_classes}) for a model with " \
                f"{n_classes} outputs"
            raise ValueError(_msg(name, owner, f"class labels {upper}",
                                  f"labels from {low} to {high}"))
    return y


def like_input(result: torch.Tensor, reference: Any) -> Any:
    """Return ``result`` as numpy when ``reference`` was numpy, else unchanged."""
    if isinstance(reference, np.ndarray):
        return result.detach().cpu().numpy()
    return result


_ATTRIBUTION_HINT = " Check the explanation method (e.g. division by zero in normalisation)."
INPUT_HINT = (" Remove or repair those samples (e.g. torch.nan_to_num) before evaluating; "
              "a NaN input makes every number computed from it meaningless.")


def check_finite(t: torch.Tensor, name: str, owner: str, hint: str = _ATTRIBUTION_HINT
                 ) -> torch.Tensor:
    """Raise if ``t`` holds NaN or infinite values, saying how many and in which samples."""
    if t.is_floating_point() or t.is_complex():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            n_bad = int(bad.sum())
            rows = torch.nonzero(bad.reshape(bad.shape[0], -1).any(dim=1)).flatten()[:5].tolist()
            raise ValueError(
                _msg(name, owner, "finite (no NaN or inf)",
                     f"{n_bad} non-finite value(s), first in sample(s) {rows}") + hint
            )
    return t


def check_percentages(
    percentages: float | Iterable[float], owner: str, name: str = "percentages"
) -> tuple[float, ...]:
    """Return percentages as a tuple of floats, each in (0, 100]."""
    if isinstance(percentages, (torch.Tensor, np.ndarray)):
        percentages = percentages.reshape(-1).tolist()
    if isinstance(percentages, (int, float, np.integer, np.floating)) and not isinstance(
            percentages, (bool, np.bool_)):
        percentages = (percentages,)
    if percentages is None or isinstance(percentages, (bool, np.bool_, dict, set)) or not \
            isinstance(percentages, Iterable):
        raise TypeError(_msg(name, owner, "a number or a sequence of numbers in (0, 100]",
                             repr(percentages)))
    percentages = list(percentages)
    if isinstance(percentages, (str, bytes)) or any(
            isinstance(p, (str, bytes, bool, np.bool_)) for p in percentages):  # type: ignore[union-attr]
        raise TypeError(_msg(name, owner, "a number or a sequence of numbers in (0, 100]",
                             repr(percentages)))
    try:
        values = tuple(float(p) for p in percentages)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(_msg(name, owner, "a number or a sequence of numbers in (0, 100]",
                             repr(percentages))) from None
    if not values:
        raise ValueError(_msg(name, owner, "a non-empty sequence of numbers in (0, 100]", "[]"))
    bad = [p for p in values if not (0.0 < p <= 100.0)]
    if bad:
        raise ValueError(_msg(name, owner, "numbers in (0, 100]", list(values))
                         + f" Out of range: {bad}. Percentage 0 (no removal) is always the"
                         " baseline and need not be listed.")
    dupes = sorted({p for p in values if values.count(p) > 1})
    if dupes:
        raise ValueError(_msg(name, owner, "distinct numbers", list(values))
                         + f" {dupes} appear more than once; list each percentage once.")
    return values


def check_choice(value: Any, name: str, owner: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(_msg(name, owner, f"one of {list(choices)}", repr(value)))
    return value


# --------------------------------------------------------------------------- declared constraints
#
# A public function or class declares what each parameter must be, once, next to its
# signature, and ``validated`` (or ``check_params``) applies the table before the body runs:
#
#     @validated(n_retrains=Int(1), test_size=Real(0, 1, open="both"), target=Choice(TARGETS))
#     def __init__(self, n_retrains=5, test_size=0.2, target="predicted"): ...
#
# Each constraint returns the cleaned value (an int, a float, a tuple) and raises with the
# one message template, naming the parameter and its owner (the class, or the function).


class Constraint:
    """What one parameter must be; ``constraint(value, name, owner)`` returns it cleaned."""

    optional: bool = False

    def __call__(self, value: Any, name: str, owner: str) -> Any:
        if value is None and self.optional:
            return None
        return self.check(value, name, owner)

    def check(self, value: Any, name: str, owner: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Constraint):
    """An integer in ``[low, high)`` (no upper bound when ``high`` is None); not a bool."""

    low: int = 1
    high: int | None = None
    optional: bool = False

    def check(self, value: Any, name: str, owner: str) -> int:
        return check_int(value, name, owner, low=self.low, high=self.high)


@dataclass(frozen=True)
class Seed(Constraint):
    """A seed: an integer in [0, 2**63)."""

    optional: bool = False

    def check(self, value: Any, name: str, owner: str) -> int:
        return check_seed(value, owner, name)


@dataclass(frozen=True)
class Real(Constraint):
    """A finite number within the bounds; ``open`` names the open ends
    (``"low"``, ``"high"``, ``"both"`` or ``"neither"``)."""

    low: float | None = None
    high: float | None = None
    open: str = "neither"
    optional: bool = False

    def check(self, value: Any, name: str, owner: str) -> float:
        return check_number(value, name, owner, low=self.low, high=self.high,
                            low_open=self.open in ("low", "both"),
                            high_open=self.open in ("high", "both"))


@dataclass(frozen=True)
class Choice(Constraint):
    """One of ``options`` (compared with ``==``; a bool is not taken for 0 or 1)."""

    options: tuple[Any, ...]
    optional: bool = False

    def check(self, value: Any, name: str, owner: str) -> Any:
        for option in self.options:
            same_kind = isinstance(option, bool) == isinstance(value, (bool, np.bool_))
            if option is value or (same_kind and option is not None and _equal(option, value)):
                return option
        raise ValueError(_msg(name, owner, f"one of {list(self.options)}", repr(value)))


def _equal(option: Any, value: Any) -> bool:
    try:
        return bool(option == value)
    except (TypeError, ValueError):  # arrays and other values without a truth value
        return False


@dataclass(frozen=True)
class Func(Constraint):
    """A callable, e.g. ``np.mean``."""

    what: str = "callable"
    optional: bool = False

    def check(self, value: Any, name: str, owner: str) -> Any:
        if not callable(value):
            raise TypeError(_msg(name, owner, self.what, repr(value)))
        return value


@dataclass(frozen=True)
class Percentages(Constraint):
    """Distinct numbers in (0, 100], one or several; returned as a tuple of floats."""

    def check(self, value: Any, name: str, owner: str) -> tuple[float, ...]:
        return check_percentages(value, owner, name)


def check_params(owner: str, constraints: Mapping[str, Constraint], values: Mapping[str, Any]
                 ) -> dict[str, Any]:
    """``values`` with every declared parameter checked and cleaned, in declaration order.

    Examples
    --------
    >>> check_params("ROAR", {"n_retrains": Int(1)}, {"n_retrains": 5})
    {'n_retrains': 5}
    >>> check_params("ROAR", {"n_retrains": Int(1)}, {"n_retrains": 0})
    Traceback (most recent call last):
    ...
    ValueError: The 'n_retrains' parameter of ROAR must be an integer >= 1. Got 0 instead.
    """
    out = dict(values)
    for name, constraint in constraints.items():
        if name in out:
            out[name] = constraint(out[name], name, owner)
    return out


F = TypeVar("F", bound=Callable[..., Any])


def validated(**constraints: Constraint) -> Callable[[F], F]:
    """Check a function's (or a class's ``__init__``'s) parameters against ``constraints``.

    The cleaned values are what the body receives. The owner named in the
    messages is the class of ``self`` for methods called ``__init__`` (so a
    subclass is named), else the function's qualified name.
    """

    def decorate(func: F) -> F:
        signature = inspect.signature(func)
        unknown = set(constraints) - set(signature.parameters)
        if unknown:  # a typo in a declaration is the developer's error
            raise TypeError(f"{func.__qualname__} declares constraints for {sorted(unknown)}, "
                            "which are not its parameters.")
        is_init = func.__name__ == "__init__"

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            owner = type(args[0]).__name__ if is_init and args else func.__qualname__
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as err:
                raise TypeError(f"{owner}: {err}") from None
            bound.arguments.update(check_params(owner, constraints, bound.arguments))
            return func(*bound.args, **bound.kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
