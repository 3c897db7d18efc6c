"""Layer randomisation for the model-randomisation sanity check (plain PyTorch).

* :func:`execution_order` -- the layers with parameters in the order a
  forward pass runs them (found with hooks), not the order they are defined.
* :func:`randomised_models` -- copies of a model with layers re-initialised
  top-down (cascading from the logits), bottom-up, or one at a time.
* :func:`fresh_model` -- a copy with every layer re-initialised.

Re-initialisation calls each module's ``reset_parameters()`` inside
``torch.random.fork_rng`` seeded with the given seed, so the caller's global
random state is left alone and a layer's random weights depend only on the
seed and the layer -- the same whether it is reset top-down, bottom-up or on
its own. The user's model is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from quantus_roar._validation import evaluating
from quantus_roar.exceptions import NotResettableError

__all__ = ["LAYER_ORDERS", "execution_order", "fresh_model", "randomised_models",
           "reset_module"]

LayerOrder = Literal["top_down", "bottom_up", "independent"]
LAYER_ORDERS: tuple[str, ...] = ("top_down", "bottom_up", "independent")


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _check_resettable(name: str, module: nn.Module) -> None:
    if not callable(getattr(module, "reset_parameters", None)):
        raise NotResettableError(
            f"Module '{name}' ({type(module).__name__}) has parameters but no "
            "reset_parameters(), so it cannot be re-initialised for the randomisation test. Add a "
            "reset_parameters() method to it, or wrap its parameters in standard layers."
        )


@torch.no_grad()
def execution_order(model: nn.Module, x_example: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters, in the order one forward pass first calls them.

    Parameters
    ----------
    model : torch.nn.Module
    x_example : torch.Tensor
        A batch the model accepts (one sample is enough), on its device.

    Returns
    -------
    list of (name, module)
        Names as in ``model.named_modules()``. Modules that own parameters but
        are not called in the forward pass are left out.

    Raises
    ------
    NotResettableError
        If a called module owns parameters but has no ``reset_parameters``.
    ValueError
        If no module with parameters is called.
    """
    order: list[str] = []
    named = {id(m): n for n, m in model.named_modules() if _owns_parameters(m)}
    handles = []

    def hook(module: nn.Module, _args: object) -> None:
        name = named[id(module)]
        if name not in order:
            order.append(name)

    for m in model.modules():
        if _owns_parameters(m):
            handles.append(m.register_forward_pre_hook(hook))
    try:
        with evaluating(model):
            model(x_example)
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise ValueError(f"{type(model).__name__} calls no module with parameters in its forward "
                         "pass; there is nothing to randomise.")
    modules = dict(model.named_modules())
    result = [(n, modules[n] if n else model) for n in order]
    for n, m in result:
        _check_resettable(n or type(model).__name__, m)
    return result


def reset_module(module: nn.Module, seed: int) -> None:
    """``module.reset_parameters()`` under a forked global RNG seeded with ``seed``."""
    devices = [module_device.index or 0 for module_device in
               {p.device for p in module.parameters(recurse=False)} if module_device.type == "cuda"]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        if devices:
            torch.cuda.manual_seed_all(int(seed))
        module.reset_parameters()


def _get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


def randomised_models(
    model: nn.Module, layers: list[str], order: LayerOrder = "top_down", seed: int = 0
) -> Iterator[tuple[str, nn.Module]]:
    """Copies of ``model`` with layers re-initialised, one step per layer.

    Parameters
    ----------
    model : torch.nn.Module
        Left unchanged.
    layers : list of str
        Layer names in execution order (see :func:`execution_order`).
    order : {"top_down", "bottom_up", "independent"}
        ``"top_down"``: cascading from the last executed layer (the logits)
        down, each step adding one more randomised layer; ``"bottom_up"``:
        cascading from the first; ``"independent"``: one layer at a time, the
        others trained.
    seed : int

    Yields
    ------
    (layer name, model)
        The copy is in ``eval()`` mode. For the cascading orders the same copy
        is modified in place from step to step: use it before advancing.
    """
    steps = layers[::-1] if order == "top_down" else list(layers)
    current = copy.deepcopy(model).eval()
    for name in steps:
        if order == "independent":
            current = copy.deepcopy(model).eval()
        reset_module(_get(current, name), seed)
        yield name, current


def fresh_model(model: nn.Module, layers: list[str], seed: int) -> nn.Module:
    """A copy of ``model`` with every layer in ``layers`` re-initialised, in ``eval()`` mode."""
    fresh = copy.deepcopy(model).eval()
    for name in layers:
        reset_module(_get(fresh, name), seed)
    return fresh
