"""Many copies of a sequential CNN as one network: grouped convolutions and batched matmuls.

For ``nn.Sequential`` models built from the layers below, :func:`grouped_forward`
computes the outputs of M models with stacked parameters, each on its own
mini-batch, as one network: the M models' channels side by side in one
``(B, M*C, H, W)`` tensor (channels-last memory) through convolutions with
``groups=M``, then ``(M, B, F)`` through ``torch.baddbmm`` for the linear
layers. On CPU this is faster than ``torch.func.vmap`` over
``functional_call`` (which batches the same convolutions, in the
channels-first layout and with more reshaping per step); the result is the
same up to float rounding. Other models use ``vmap``.

Inputs are images (C, H, W); other data (tabular, time series, volumes)
uses ``vmap``. Supported layers: ``Conv2d`` (zero padding), ``Linear``, ``ReLU``,
``LeakyReLU``, ``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``,
``Flatten`` (from dim 1), ``Dropout`` (independent draws per model and
element) and ``Identity``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["grouped_forward", "supports_grouped"]

_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout)
_POOL = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


class _Contiguous(torch.autograd.Function):
    """``x.contiguous()`` whose gradient keeps the channels-last layout of ``x``.

    Elementwise backward kernels (ReLU's ``threshold_backward``) are several
    times slower when the gradient and the saved output differ in layout.
    """

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


def supports_grouped(model: nn.Module, sample_ndim: int | None = None) -> bool:
    """Whether :func:`grouped_forward` can run ``model``.

    With ``sample_ndim`` (the dimensions of one input: 3 for (C, H, W)), also
    whether it can run it on such inputs: only image data (C, H, W) is laid
    out channels-last; tabular, time-series or volume data are not.
    """
    if sample_ndim is not None and sample_ndim != 3:
        return False
    if not isinstance(model, nn.Sequential) or len(model) == 0:
        return False
    flat = False
    for layer in model:
        if isinstance(layer, nn.Conv2d):
            if flat or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                return False
        elif isinstance(layer, nn.Linear):
            if not flat:
                return False
        elif isinstance(layer, nn.Flatten):
            if flat or layer.start_dim != 1 or layer.end_dim != -1:
                return False
            flat = True
        elif isinstance(layer, _POOL):
            if flat:
                return False
        elif type(layer) not in _ELEMENTWISE:
            return False
    return flat


def grouped_forward(model: nn.Module, params: dict[str, torch.Tensor],
                    x: torch.Tensor) -> torch.Tensor:
    """Logits of M stacked models in training mode, each on its own inputs.

    Parameters
    ----------
    model : nn.Sequential
        The architecture (any device, ``"meta"`` included); its own weights
        are not used. Must satisfy :func:`supports_grouped`.
    params : dict
        Stacked parameters, ``name -> (M, *shape)``, as
        ``torch.func.stack_module_state`` returns them.
    x : torch.Tensor
        Inputs of shape (M, B, C, H, W).

    Returns
    -------
    torch.Tensor
        (M, B, n_outputs).
    """
    if x.ndim != 5:
        raise ValueError("grouped_forward needs inputs of shape (M, B, C, H, W); got shape "
                         f"{tuple(x.shape)}. Check supports_grouped(model, sample_ndim) first.")
    m, b = x.shape[:2]
    # (M, B, C, H, W) -> (B, M*C, H, W): model i's channels at [i*C, (i+1)*C).
    h = x.transpose(0, 1).reshape(b, m * x.shape[2], *x.shape[3:])
    h = h.contiguous(memory_format=torch.channels_last)
    flat = False
    for name, layer in model.named_children():
        if isinstance(layer, nn.Conv2d):
            w = params[f"{name}.weight"]  # (M, O, C/g, k, k)
            bias = params.get(f"{name}.bias")
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]),
                         None if bias is None else bias.reshape(-1), layer.stride,
                         layer.padding, layer.dilation, groups=m * layer.groups)
        elif isinstance(layer, nn.Flatten):
            # (M, B, C*H*W), per model C-major; the gradient goes back channels-last
            h = _Contiguous.apply(h).reshape(b, m, -1).transpose(0, 1)
            flat = True
        elif isinstance(layer, nn.Linear):
            w = params[f"{name}.weight"]  # (M, O, F)
            bias = params.get(f"{name}.bias")
            h = (torch.bmm(h, w.transpose(1, 2)) if bias is None
                 else torch.baddbmm(bias[:, None, :], h, w.transpose(1, 2)))
        elif isinstance(layer, nn.Dropout):
            h = F.dropout(h, layer.p, training=True)
        else:  # elementwise activations and pooling act on each channel alone
            h = layer(h)
    if not flat:  # pragma: no cover - supports_grouped requires a Flatten
        raise ValueError("grouped_forward needs a Flatten before the classifier.")
    return h
