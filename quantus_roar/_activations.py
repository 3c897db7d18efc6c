"""Activation calls made as functions rather than modules, found in one forward pass.

Guided Backprop (which overrides the backward pass of ``nn.ReLU`` modules) and
PruneGrad (which prunes the outputs of activation modules) cannot reach an
activation that a model applies as a function, ``F.relu(x)``; both refuse such
models instead of returning something in between.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["ACTIVATIONS", "ACTIVATION_FUNCS", "RELU_FUNCS", "functional_calls"]

#: Activation modules: their outputs are the units PruneGrad scores and prunes.
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Softplus, nn.Tanh, nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid,
    nn.Hardtanh, nn.Tanhshrink, nn.Softsign)

#: ReLU as a function.
RELU_FUNCS: frozenset[Callable[..., Any]] = frozenset({
    F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_})

#: Every elementwise nonlinearity of :data:`ACTIVATIONS` as a function.
ACTIVATION_FUNCS: frozenset[Callable[..., Any]] = RELU_FUNCS | frozenset({
    F.relu6, F.leaky_relu, F.leaky_relu_, F.prelu, F.rrelu, F.elu, F.elu_, F.selu, F.celu,
    F.gelu, F.silu, F.mish, F.softplus, F.hardswish, F.hardsigmoid, F.hardtanh, F.tanhshrink,
    F.softsign, F.sigmoid, F.tanh, torch.sigmoid, torch.sigmoid_, torch.tanh, torch.tanh_,
    torch.Tensor.sigmoid, torch.Tensor.sigmoid_, torch.Tensor.tanh, torch.Tensor.tanh_,
    torch.selu, torch.celu, torch.prelu, torch.rrelu})


class _Spy(TorchFunctionMode):
    """Counts calls of ``funcs`` made outside the hooked modules."""

    def __init__(self, funcs: frozenset[Callable[..., Any]]) -> None:
        super().__init__()
        self.funcs = funcs
        self.inside = 0
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.inside == 0 and func in self.funcs:
            self.calls += 1
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def functional_calls(model: nn.Module, example: torch.Tensor,
                     module_types: Iterable[type[nn.Module]],
                     funcs: frozenset[Callable[..., Any]]) -> tuple[int, int]:
    """``(modules, calls)``: how many modules of ``module_types`` the model has, and how
    many calls of ``funcs`` one forward pass on ``example`` makes outside them."""
    spy = _Spy(funcs)
    modules = [m for m in model.modules() if isinstance(m, tuple(module_types))]

    def enter(*_: Any) -> None:
        spy.inside += 1

    def leave(*_: Any) -> None:
        spy.inside -= 1

    handles = [h for m in modules for h in (m.register_forward_pre_hook(enter),
                                            m.register_forward_hook(leave))]
    try:
        with spy:
            model(example)
    finally:
        for h in handles:
            h.remove()
    return len(modules), spy.calls
