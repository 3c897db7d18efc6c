"""PruneGrad: the input gradient of a network pruned for each input (Khakzar et al., 2019).

For every input, each hidden unit -- a channel of a convolutional activation, a
unit of a dense one -- is scored by its first-order Taylor contribution to the
explained logit, ``sum over positions of activation x gradient`` (the criterion of
Molchanov et al., 2017, which the paper cites). The ``keep`` share of units with
the largest absolute contribution in each layer are kept, the others set to zero
for that input, and the map is the gradient of the logit with respect to the
input through this pruned network.

The choices the paper's abstract leaves open, and ours (``docs/explainers.md``):

* **Where units are.** The outputs of activation modules (:data:`ACTIVATIONS`:
  ``nn.ReLU`` and the other elementwise nonlinearities), one layer per call,
  so a module applied twice is two layers. Activations applied as functions
  (``F.relu``, ``torch.sigmoid``, ...) cannot be hooked and are refused
  (:class:`FunctionalReLUError`). Units lie on axis 1 (channels first, as
  torch's convolutions); an activation of a sequence model shaped (N, T, F)
  would be pruned per time step, and an activation applied to a tensor
  without the batch axis first is refused unless its first size happens to
  equal the batch size: apply activations to (N, units, ...) tensors.
* **Contribution.** Signed ``activation x gradient`` summed over a channel's
  positions; ranked by its absolute value (a unit that lowers the logit
  contributes too).
* **How many.** ``ceil(keep x units)`` per layer and input (at least one),
  ties in index order by a stable sort; ``keep=1.0`` prunes nothing and gives
  exactly the plain gradient. The default, ``keep=0.75``, prunes a quarter of
  each layer: on synthetic data with planted evidence the share of the top
  pixels that fall on the evidence falls steadily as more is pruned (SmallCNN:
  0.593 at keep=1, 0.588 at 0.75, 0.559 at 0.5, 0.396 at 0.1). Its abstract
  does not state the paper's setting; pass ``keep`` to match it.

Batched: both passes (scoring and the pruned gradient) run on the whole batch,
with per-sample masks applied through forward hooks; no per-sample loop. The
model's parameters, mode and hooks are as before after a call. Plain PyTorch.

References
----------
.. [1] Khakzar et al., "Improving Feature Attribution through Input-specific
   Network Pruning", arXiv:1911.11081, 2019.
.. [2] Molchanov et al., "Pruning Convolutional Neural Networks for Resource
   Efficient Inference", ICLR 2017.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from quantus_roar._activations import ACTIVATION_FUNCS, ACTIVATIONS, functional_calls
from quantus_roar._validation import check_number, evaluating
from quantus_roar.exceptions import FunctionalReLUError

__all__ = ["ACTIVATIONS", "DEFAULT_KEEP", "check_activation_modules", "prunegrad",
           "unit_masks"]

#: Share of each layer's units kept for an input (see the module docstring).
DEFAULT_KEEP = 0.75


class _Layers:
    """Forward hooks on the activation modules: record each call's output, or multiply it
    by that call's keep mask. Calls are counted per forward pass, so a module applied
    twice is two layers."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = [m for m in model.modules() if isinstance(m, ACTIVATIONS)]
        self.outputs: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] | None = None
        self.calls = 0

    def hook(self, _module: nn.Module, _inputs: Any, out: Any) -> Any:
        if not isinstance(out, torch.Tensor) or out.ndim < 2:
            return None
        i, self.calls = self.calls, self.calls + 1
        if self.masks is None:
            # Recorded as computed; the model continues with a copy, so an in-place
            # operation after the activation (``h += skip``) cannot change the record.
            self.outputs.append(out)
            return out.clone()
        mask = self.masks[i]
        return out * mask.reshape(*mask.shape, *([1] * (out.ndim - 2))).to(out.dtype)

    @contextmanager
    def hooked(self, masks: list[torch.Tensor] | None) -> Iterator[_Layers]:
        self.outputs, self.masks, self.calls = [], masks, 0
        handles = [m.register_forward_hook(self.hook) for m in self.modules]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


def _check_layers(model: nn.Module, modules: list[nn.Module]) -> None:
    if not modules:
        raise FunctionalReLUError(
            f"PruneGrad prunes the outputs of activation modules (nn.ReLU, nn.GELU, ...), but "
            f"{type(model).__name__} has none. Apply its nonlinearities as modules "
            "(nn.ReLU() instead of F.relu), or use method='Gradient'.")


def check_activation_modules(model: nn.Module, example: torch.Tensor) -> None:
    """Raise :class:`FunctionalReLUError` unless every activation of one forward pass on
    ``example`` is an activation module PruneGrad can prune."""
    modules, functional = functional_calls(model, example, ACTIVATIONS, ACTIVATION_FUNCS)
    if not modules:
        _check_layers(model, [])
    if functional:
        raise FunctionalReLUError(
            f"PruneGrad prunes the outputs of activation modules, but {type(model).__name__} "
            f"applies {functional} activation(s) as functions (torch.relu, F.gelu, "
            "torch.sigmoid, ... outside activation modules) in one forward pass, and those "
            "units would not be pruned. Replace them with modules (nn.ReLU, nn.GELU, "
            "nn.Sigmoid, ...), or use another method.")


def _checked_keep(keep: float) -> float:
    return check_number(keep, "keep", "PruneGrad", low=0.0, high=1.0, low_open=True)


def _keep_masks(scores: torch.Tensor, keep: float) -> torch.Tensor:
    """(N, U) bool: each row's ``ceil(keep * U)`` largest ``|scores|`` (stable order)."""
    k = max(1, math.ceil(keep * scores.shape[1] - 1e-9))
    order = torch.sort(scores.abs(), dim=1, descending=True, stable=True).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order[:, :k], True)


def _target_logit(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return model(x).gather(1, t.reshape(-1, 1)).sum()


def _scores(out: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    """(N, U) signed contributions of a layer's units: activation x gradient, summed over
    each unit's positions."""
    c = out.detach() * (grad if grad is not None else torch.zeros_like(out))
    return c.flatten(2).sum(2) if c.ndim > 2 else c


def unit_masks(model: nn.Module, x: torch.Tensor, t: torch.Tensor,
               keep: float = DEFAULT_KEEP) -> list[torch.Tensor]:
    """The units PruneGrad keeps: one (N, units) bool tensor per activation call, in the
    order of the forward pass (see the module docstring); computed in ``eval()`` mode."""
    keep = _checked_keep(keep)
    layers = _Layers(model)
    _check_layers(model, layers.modules)
    return _unit_masks(model, layers, x, t, keep)


def _unit_masks(model: nn.Module, layers: _Layers, x: torch.Tensor, t: torch.Tensor,
                keep: float) -> list[torch.Tensor]:
    """:func:`unit_masks` with ``keep`` checked and the model's activation modules found."""
    with evaluating(model), torch.enable_grad(), layers.hooked(None):
        logit = _target_logit(model, x.detach().clone().requires_grad_(True), t)
        outs = layers.outputs
        if any(o.shape[0] != len(x) or not o.requires_grad for o in outs):
            raise ValueError(
                "PruneGrad scores units per input, but an activation of "
                f"{type(model).__name__} has no batch axis first or no gradient; explain "
                "with method='Gradient', or apply the activations to (N, ...) tensors.")
        grads = torch.autograd.grad(logit, outs, allow_unused=True)
    return [_keep_masks(_scores(o, g), keep) for o, g in zip(outs, grads, strict=True)]


def prunegrad(model: nn.Module, x: torch.Tensor, t: torch.Tensor,
              keep: float = DEFAULT_KEEP) -> torch.Tensor:
    """PruneGrad maps of ``x`` (N, ...) for the classes ``t`` (N,): see the module docstring.

    ``keep`` in (0, 1]. The model runs in ``eval()`` mode (its mode is restored).
    Returns the gradient, shaped like ``x``.
    """
    keep = _checked_keep(keep)
    layers = _Layers(model)
    _check_layers(model, layers.modules)
    masks = _unit_masks(model, layers, x, t, keep) if keep < 1.0 else None
    xg = x.detach().clone().requires_grad_(True)
    with evaluating(model), torch.enable_grad(), layers.hooked(masks):
        logit = _target_logit(model, xg, t)
        if masks is not None and layers.calls != len(masks):
            raise RuntimeError(f"PruneGrad: {type(model).__name__} applied its activations "
                               f"{layers.calls} times in the pruned pass and {len(masks)} "
                               "times when scoring; its forward pass must not depend on the "
                               "hooks' outputs.")
        (grad,) = torch.autograd.grad(logit, xg)
    return grad.detach()
