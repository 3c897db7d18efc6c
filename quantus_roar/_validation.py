"""Argument checks shared by the core modules.

Each helper returns the cleaned value or raises with one message template:
"The '<name>' parameter of <owner> must be <expected>. Got <value> instead."
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "as_tensor", "check_choice", "check_finite", "check_percentages", "like_input", "model_device",
]


def _msg(name: str, owner: str, expected: str, got: Any) -> str:
    return f"The '{name}' parameter of {owner} must be {expected}. Got {got} instead."


def as_tensor(value: Any, name: str, owner: str) -> torch.Tensor:
    """Return ``value`` as a tensor, sharing memory with numpy input where possible.

    Read-only arrays (memory maps, Ray's shared objects) are copied: torch
    cannot guard them against writes.
    """
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        return torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    raise TypeError(_msg(name, owner, "a torch.Tensor or numpy.ndarray", type(value).__name__))


def model_device(model: torch.nn.Module, device: Any = None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter (CPU if it has none)."""
    if device is not None:
        return torch.device(device)
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def like_input(result: torch.Tensor, reference: Any) -> Any:
    """Return ``result`` as numpy when ``reference`` was numpy, else unchanged."""
    if isinstance(reference, np.ndarray):
        return result.detach().cpu().numpy()
    return result


def check_finite(t: torch.Tensor, name: str, owner: str) -> torch.Tensor:
    """Raise if ``t`` holds NaN or infinite values, saying how many."""
    if t.is_floating_point() or t.is_complex():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            n_bad = int(bad.sum())
            rows = torch.nonzero(bad.reshape(bad.shape[0], -1).any(dim=1)).flatten()[:5].tolist()
            raise ValueError(
                _msg(name, owner, "finite (no NaN or inf)",
                     f"{n_bad} non-finite value(s), first in sample(s) {rows}")
                + " Check the explanation method (e.g. division by zero in normalisation)."
            )
    return t


def check_percentages(
    percentages: float | Iterable[float], owner: str, name: str = "percentages"
) -> tuple[float, ...]:
    """Return percentages as a tuple of floats, each in (0, 100]."""
    if isinstance(percentages, (int, float, np.integer, np.floating)):
        percentages = (percentages,)
    try:
        values = tuple(float(p) for p in percentages)  # type: ignore[union-attr]
    except TypeError:
        raise TypeError(_msg(name, owner, "a number or a sequence of numbers in (0, 100]",
                             repr(percentages))) from None
    if not values:
        raise ValueError(_msg(name, owner, "a non-empty sequence of numbers in (0, 100]", "[]"))
    bad = [p for p in values if not (0.0 < p <= 100.0)]
    if bad:
        raise ValueError(_msg(name, owner, "numbers in (0, 100]", list(values))
                         + f" Out of range: {bad}. Percentage 0 (no removal) is always the"
                         " baseline and need not be listed.")
    return values


def check_choice(value: Any, name: str, owner: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(_msg(name, owner, f"one of {list(choices)}", repr(value)))
    return value
