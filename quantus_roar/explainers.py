"""The ROAR paper's estimators and controls, and PruneGrad, as Quantus explain functions.

:func:`explain` computes Gradient, Integrated Gradients, Guided Backprop and
Input x Gradient (through captum) and PruneGrad (:mod:`quantus_roar.prunegrad`),
each plain or wrapped in SmoothGrad, SmoothGrad² or VarGrad; the two controls of
Hooker et al. (2019), a seeded Random ranking and a Sobel edge filter; and the
leakage controls InputMagnitude and BlurredRandom. It has Quantus' explain_func
signature::

    quantus_roar.ROAR()(model, x, y, explain_func=quantus_roar.explain,
                        explain_func_kwargs={"method": "GuidedBackprop_SmoothGrad"})

:data:`ESTIMATORS` names the benchmark's set; each name is also a valid
``method``. Plain PyTorch and captum, no Quantus import.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from quantus_roar._activations import RELU_FUNCS, functional_calls
from quantus_roar._hashing import STREAM_RANDOM, content_keys, hash_keys, mix32
from quantus_roar._validation import (
    INPUT_HINT,
    Int,
    Real,
    Seed,
    as_tensor,
    check_batch_size,
    check_channel_first,
    check_choice,
    check_finite,
    check_int,
    check_labels,
    check_model,
    check_number,
    evaluating,
    model_device,
    model_dtype,
    validated,
)
from quantus_roar.exceptions import FunctionalReLUError, NotAClassifierError
from quantus_roar.prunegrad import DEFAULT_KEEP, check_activation_modules, prunegrad
from quantus_roar.removal import gaussian_blur

__all__ = [
    "BASE_METHODS",
    "CONTROLS",
    "DEFAULT_FIXED_PRIOR",
    "ESTIMATORS",
    "NOISE_TYPES",
    "QUANTUS_ALIASES",
    "TARGETS",
    "FixedPrior",
    "FunctionalReLUError",
    "explain",
    "explain_ensembles",
    "explanation_targets",
    "fixed_prior_source",
    "model_free",
    "n_classes",
    "noisy_inputs",
    "predicted_classes",
]

BASE_METHODS: tuple[str, ...] = ("Gradient", "IntegratedGradients", "GuidedBackprop",
                                 "InputXGradient", "Saliency", "PruneGrad")
# The bases of the benchmark's estimators, each plain and with every noise ensemble.
_ESTIMATOR_BASES = ("Gradient", "IntegratedGradients", "GuidedBackprop", "PruneGrad")
CONTROLS: tuple[str, ...] = ("Random", "Sobel", "InputMagnitude", "BlurredRandom")
NOISE_TYPES: tuple[str, ...] = ("SmoothGrad", "SmoothGradSquared", "VarGrad")

#: The benchmark's estimators: every base method of the ROAR paper and PruneGrad,
#: plain and with each noise ensemble, and the controls. Name -> :func:`explain` kwargs.
ESTIMATORS: dict[str, dict[str, Any]] = {
    **{base: {"method": base, "noise": None} for base in _ESTIMATOR_BASES},
    **{f"{base}_{noise}": {"method": base, "noise": noise}
       for base in _ESTIMATOR_BASES for noise in NOISE_TYPES},
    **{control: {"method": control, "noise": None} for control in CONTROLS},
}

#: Quantus' method names that :func:`explain` accepts, and the method each runs here.
#: ``"Saliency"`` is the absolute gradient (captum's ``Saliency`` default, as in
#: Quantus); the controls are this package's (see ``docs/explainers.md``).
QUANTUS_ALIASES: dict[str, str] = {
    "Saliency": "Saliency",
    "Control Var. Sobel Filter": "Sobel",
    "Control Var. Random Uniform": "Random",
}

#: Which class an attribution the package computes explains (see
#: :func:`explanation_targets`).
TARGETS: tuple[str, ...] = ("predicted", "label")

# Integrated Gradients options the other methods ignore, so that one
# explain_func_kwargs dict can serve every estimator of a benchmark.
_IG_ONLY = frozenset({"n_steps", "baselines", "internal_batch_size"})
_PRUNEGRAD_ONLY = frozenset({"keep"})
# Per-method captum arguments: fixed ones define the method (Gradient is signed),
# defaults can be overridden through explain's **method_kwargs.
_FIXED_KWARGS: dict[str, dict[str, Any]] = {"Gradient": {"abs": False},
                                             "Saliency": {"abs": True}}
_DEFAULT_KWARGS: dict[str, dict[str, Any]] = {"IntegratedGradients": {"n_steps": 25}}


# --------------------------------------------------------------------------- helpers


def _check_relu_modules(model: nn.Module, example: torch.Tensor) -> None:
    relus, functional = functional_calls(model, example, (nn.ReLU,), RELU_FUNCS)
    if not relus and not functional:
        raise FunctionalReLUError(
            f"GuidedBackprop changes the backward pass of ReLUs, but {type(model).__name__} has "
            "no ReLU (no nn.ReLU module and no torch.relu / F.relu call in one forward pass), so "
            "Guided Backprop would equal the plain gradient. Use method='Gradient', or a model "
            "with nn.ReLU activations."
        )
    if functional:
        raise FunctionalReLUError(
            f"GuidedBackprop needs every ReLU of the model as an nn.ReLU module (it overrides "
            f"their backward pass), but {type(model).__name__} applies ReLU as a function "
            f"({functional} call(s) of torch.relu / F.relu outside nn.ReLU modules in one "
            "forward pass). Replace them with nn.ReLU modules, or use another method."
        )


def noisy_inputs(x: torch.Tensor, n_samples: int, stdev: float, seed: int) -> torch.Tensor:
    """The noisy copies SmoothGrad, SmoothGrad² and VarGrad average over.

    Gaussian noise of std ``stdev * (max - min)`` of each input (the SmoothGrad
    paper's convention), drawn from a ``torch.Generator`` on the device of
    ``x`` seeded with ``seed`` and the content of the batch, so the same batch
    and seed give the same copies, and different batches different noise.

    Returns
    -------
    torch.Tensor
        Shape (n_samples, *x.shape).
    """
    dims = tuple(range(1, x.ndim))
    spread = (x.amax(dim=dims, keepdim=True) - x.amin(dim=dims, keepdim=True)) * float(stdev)
    batch_key = int(mix32(content_keys(x).sum() & 0xFFFFFFFF))
    seed = int(seed)
    # CPU generators use 32 bits of the seed: fold seed and batch key into them.
    mixed = mix32(mix32((seed & 0xFFFFFFFF) ^ 0x51ED5EED) ^ ((seed >> 32) & 0xFFFFFFFF))
    gen = torch.Generator(device=x.device).manual_seed(int(mix32(mixed ^ batch_key)))
    noise = torch.randn((n_samples, *x.shape), generator=gen, device=x.device, dtype=x.dtype)
    return x[None] + noise * spread[None]


def _sobel(x: torch.Tensor) -> torch.Tensor:
    """sqrt(gx² + gy²) of each channel plane, borders as scipy.ndimage.sobel (mode 'reflect')."""
    if x.ndim != 4:
        raise ValueError("method='Sobel' needs images of shape (N, C, H, W). Got shape "
                         f"{tuple(x.shape)} instead.")
    n, c, h, w = x.shape
    smooth = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    diff = torch.tensor([-1.0, 0.0, 1.0], dtype=x.dtype, device=x.device)
    kx = (smooth[:, None] * diff[None, :])[None, None]  # derivative along width
    ky = (diff[:, None] * smooth[None, :])[None, None]  # derivative along height
    planes = F.pad(x.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(planes, kx)
    gy = F.conv2d(planes, ky)
    return torch.sqrt(gx * gx + gy * gy).reshape(n, c, h, w)


def _random(x: torch.Tensor, seed: int) -> torch.Tensor:
    keys = hash_keys(seed, STREAM_RANDOM, content_keys(x), x[0].numel())
    return ((keys.double() + 0.5) / 2.0**32).to(torch.float32).reshape(x.shape)


def _blurred_random(x: torch.Tensor, seed: int, sigma: Any) -> torch.Tensor:
    """:func:`_random` blurred with a Gaussian of std ``sigma`` features over the spatial
    axes: masks with the shape of blobs, but no information about the image."""
    sigma = check_number(sigma, "sigma", "explain(method='BlurredRandom')", low=0.0,
                         low_open=True)
    if x.ndim not in (3, 4):
        raise ValueError("method='BlurredRandom' needs images (N, C, H, W) or time series "
                         f"(N, C, T) to blur over. Got shape {tuple(x.shape)} instead; use "
                         "'Random' for tabular data.")
    noise = _random(x, seed)
    planes = noise if x.ndim == 4 else noise[:, :, None]
    return gaussian_blur(planes, float(sigma)).reshape(x.shape)


def _control(x: torch.Tensor, method: str, seed: int, kwargs: dict[str, Any]) -> torch.Tensor:
    """The model-free controls: Random, Sobel, InputMagnitude (|x|), BlurredRandom."""
    allowed = {"sigma"} if method == "BlurredRandom" else set()
    unknown = sorted(set(kwargs) - allowed - _IG_ONLY - _PRUNEGRAD_ONLY)
    if unknown:
        raise TypeError(f"explain(method={method!r}) got keyword argument(s) {unknown}; it "
                        f"takes {sorted(allowed) or 'none'}.")
    if method == "Random":
        return _random(x, seed)
    if method == "Sobel":
        return _sobel(x)
    if method == "InputMagnitude":
        return x.abs()
    return _blurred_random(x, seed, kwargs.get("sigma", 1.0))


def _base_attribution(model: nn.Module, method: str, kwargs: dict[str, Any]
                      ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from captum.attr import GuidedBackprop, InputXGradient, IntegratedGradients, Saliency

    if method != "IntegratedGradients":
        kwargs = {k: v for k, v in kwargs.items() if k not in _IG_ONLY}
    if method == "PruneGrad":
        return _prunegrad_attribution(model, kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k not in _PRUNEGRAD_ONLY}
    cls = {"Gradient": Saliency, "Saliency": Saliency, "InputXGradient": InputXGradient,
           "GuidedBackprop": GuidedBackprop, "IntegratedGradients": IntegratedGradients}[method]
    fixed = _FIXED_KWARGS.get(method, {})
    accepted = set(inspect.signature(cls.attribute).parameters) - {"self", "inputs", "target",
                                                                    *fixed}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(f"explain(method={method!r}) got keyword argument(s) {unknown}; it "
                        f"passes only {sorted(accepted)} on to captum's "
                        f"{cls.__name__}.attribute.")
    attribution = cls(model)
    opts = {**_DEFAULT_KWARGS.get(method, {}), **kwargs, **fixed}
    return lambda x, t: attribution.attribute(x, target=t, **opts)


def _prunegrad_attribution(model: nn.Module, kwargs: dict[str, Any]
                           ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    unknown = sorted(set(kwargs) - _PRUNEGRAD_ONLY)
    if unknown:
        raise TypeError(f"explain(method='PruneGrad') got keyword argument(s) {unknown}; it "
                        "takes 'keep', the share of each layer's units kept per input.")
    keep = check_number(kwargs.get("keep", DEFAULT_KEEP), "keep", "explain(method='PruneGrad')",
                        low=0.0, high=1.0, low_open=True)
    return lambda x, t: prunegrad(model, x, t, keep)


def _input_tensor(x: Any, name: str, owner: str, dtype: torch.dtype = torch.float32
                  ) -> torch.Tensor:
    """``x`` as a finite tensor batch of ``dtype`` (the model's), or a clear error."""
    if x is None or isinstance(x, (str, bytes)):
        raise TypeError(f"The '{name}' parameter of {owner} must be a numeric array or tensor. "
                        f"Got {type(x).__name__} instead.")
    t = as_tensor(x.detach() if isinstance(x, torch.Tensor) else np.asarray(x), name, owner)
    if t.ndim < 2 or len(t) == 0:
        raise ValueError(f"The '{name}' parameter of {owner} must be a non-empty batch of real "
                         f"numbers, shape (N, ...). Got shape {tuple(t.shape)} and dtype "
                         f"{t.dtype} instead.")
    return check_finite(t.to(dtype), name, owner, hint=INPUT_HINT)


# --------------------------------------------------------------------------- targets


@torch.no_grad()
def predicted_classes(model: nn.Module, x: Any, *, batch_size: int = 256,
                      device: str | torch.device | None = None) -> torch.Tensor:
    """The class ``model`` predicts for each input (argmax of its scores), in ``eval()`` mode.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning (N, n_classes) scores; its train/eval mode is
        restored afterwards.
    x : torch.Tensor or numpy.ndarray
        Inputs (N, ...), in the layout the model takes.
    batch_size : int, default 256
    device : str or torch.device, optional
        Default: the model's device.

    Returns
    -------
    torch.Tensor
        int64, shape (N,), on the CPU.
    """
    check_model(model, "predicted_classes")
    check_batch_size(batch_size, "predicted_classes")
    device = model_device(model, device)
    x_t = _input_tensor(x, "x", "predicted_classes", model_dtype(model))
    with evaluating(model):
        parts = [model(x_t[i : i + batch_size].to(device=device))
                 .argmax(dim=-1).cpu() for i in range(0, len(x_t), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def explanation_targets(model: nn.Module, x: Any, y: Any, target: str, *,
                        batch_size: int = 256, device: str | torch.device | None = None,
                        owner: str = "explanation_targets") -> torch.Tensor:
    """The class each input's attribution explains: the prediction or the label.

    ``target="predicted"`` (the default wherever the package computes
    attributions) explains the class ``model`` predicts, as the original ROAR
    code does. ``target="label"`` explains the true label ``y``; then the
    attribution -- and so the removal mask -- of a *test* image depends on
    its label, and a model retrained on masked data can read the label off
    the mask (accuracy can rise as features are removed).

    Returns
    -------
    torch.Tensor
        int64, shape (N,), on the CPU.
    """
    check_choice(target, "target", owner, TARGETS)
    if target == "label":
        y_t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
        return y_t.detach().cpu().long()
    return predicted_classes(model, x, batch_size=batch_size, device=device)


# --------------------------------------------------------------------------- public


def _resolved(method: str, noise: str | None, owner: str = "explain"
              ) -> tuple[str, str | None]:
    """The base method and noise ensemble of ``explain(method=..., noise=...)``: Quantus'
    names and the estimator presets (``"IntegratedGradients_VarGrad"``) resolved."""
    method = QUANTUS_ALIASES.get(method, method)
    if method in ESTIMATORS and method not in BASE_METHODS + CONTROLS:
        preset = ESTIMATORS[method]
        if noise is not None and noise != preset["noise"]:
            raise ValueError(f"{owner}(method={method!r}) already implies "
                             f"noise={preset['noise']!r}; got noise={noise!r} as well.")
        method, noise = preset["method"], preset["noise"]
    check_choice(method, "method", owner,
                 tuple(dict.fromkeys((*BASE_METHODS, *CONTROLS, *ESTIMATORS, *QUANTUS_ALIASES))))
    check_choice(noise, "noise", owner, (None, *NOISE_TYPES))
    if noise is not None and method in CONTROLS:
        raise ValueError(f"{owner}(method={method!r}) is a control; it takes no noise "
                         f"ensemble. Got noise={noise!r}.")
    return method, noise


@validated(n_samples=Int(1), stdev=Real(0.0), seed=Seed(), batch_size=Int(1))
def explain(
    model: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor | int,
    *,
    method: str = "Gradient",
    noise: str | None = None,
    n_samples: int = 15,
    stdev: float = 0.15,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    reduce_channels: bool = False,
    **method_kwargs: Any,
) -> np.ndarray:
    """Attributions of ``inputs`` for the ``targets`` classes, Quantus explain_func style.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning (N, n_classes) scores. Used in ``eval()`` mode
        for the call (its mode is restored afterwards); never modified.
    inputs : numpy.ndarray or torch.Tensor
        Batch of shape (N, ...).
    targets : array-like of int or int
        Class explained per input.
    method : str, default "Gradient"
        A base method -- ``"Gradient"`` (signed gradient), ``"IntegratedGradients"``
        (zero, i.e. black, baseline; ``n_steps`` default 25), ``"GuidedBackprop"``,
        ``"InputXGradient"``, ``"PruneGrad"`` (the gradient through the network
        pruned for each input, keeping the ``keep`` share, default 0.75, of each
        layer's units by activation x gradient; :mod:`quantus_roar.prunegrad`)
        -- a control -- ``"Random"`` (uniform values from a
        counter-based hash of the seed and the input's content: the same
        image and seed give the same map in any batch), ``"Sobel"`` (per channel
        ``sqrt(gx² + gy²)`` of the Sobel derivatives, images only),
        ``"InputMagnitude"`` (``|x|``: removes the brightest pixels first, no
        model involved), ``"BlurredRandom"`` (Random blurred with a Gaussian of
        std ``sigma`` features, default 1, over the spatial axes: masks with
        shape but no information about the image; images and time series)
        -- or any name in :data:`ESTIMATORS`, such as
        ``"IntegratedGradients_VarGrad"``. :class:`FixedPrior`, the control
        that removes the same pixels from every image, is a class of its own.
        Quantus' names are accepted too (:data:`QUANTUS_ALIASES`):
        ``"Saliency"`` is the absolute gradient, as in Quantus; ``"Control
        Var. Sobel Filter"`` and ``"Control Var. Random Uniform"`` run this
        package's Sobel and Random controls.
    noise : {None, "SmoothGrad", "SmoothGradSquared", "VarGrad"}
        Average the base method over ``n_samples`` noisy copies (SmoothGrad),
        average its square (SmoothGrad²), or take its variance (VarGrad,
        ``E[a²] - E[a]²``). Not for the controls.
    n_samples : int, default 15
    stdev : float, default 0.15
        Noise std as a fraction of each input's value range (max - min).
    seed : int, default 0
        Seeds the noise (with the batch content, see :func:`noisy_inputs`) and
        the Random and BlurredRandom controls.
    device : str or torch.device, optional
        Where to compute; default the model's device.
    batch_size : int, default 256
        Inputs (noisy copies included) per attribution call.
    reduce_channels : bool, default False
        Sum over the channel axis, returning (N, 1, ...).
    **method_kwargs
        Passed to the captum method (``sigma`` to BlurredRandom, ``keep`` to
        PruneGrad). The Integrated Gradients options ``n_steps``,
        ``baselines`` and ``internal_batch_size``, and PruneGrad's ``keep``,
        are ignored by the other methods (one kwargs dict serves a whole
        benchmark); any other keyword the method does not accept is an error.

    Returns
    -------
    numpy.ndarray
        float32, shaped like ``inputs`` (or with one channel).

    Raises
    ------
    ValueError
        Unknown method or noise type, noise on a control, bad ``n_samples``.
    FunctionalReLUError
        ``"GuidedBackprop"`` or ``"PruneGrad"`` on a model that applies ReLU
        as a function (or, for PruneGrad, has no activation module).

    References
    ----------
    .. [1] Hooker et al., "A Benchmark for Interpretability Methods in Deep
       Neural Networks", NeurIPS 2019.
    .. [2] Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017.
    .. [3] Adebayo et al., "Local Explanation Methods for Deep Neural Networks
       Lack Sensitivity to Parameter Values", ICLR workshop 2018 (VarGrad).
    .. [4] Sundararajan et al., "Axiomatic Attribution for Deep Networks",
       ICML 2017; Springenberg et al., "Striving for Simplicity", ICLR
       workshop 2015.
    .. [5] Khakzar et al., "Improving Feature Attribution through
       Input-specific Network Pruning", arXiv:1911.11081, 2019 (PruneGrad).
    """
    method, noise = _resolved(method, noise)
    return _explained(model, inputs, targets, method, (noise,), n_samples, stdev, seed, device,
                      batch_size, reduce_channels, method_kwargs, "explain")[noise]


@validated(n_samples=Int(1), stdev=Real(0.0), seed=Seed(), batch_size=Int(1))
def explain_ensembles(
    model: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor | int,
    *,
    method: str = "Gradient",
    noises: Sequence[str] = NOISE_TYPES,
    n_samples: int = 15,
    stdev: float = 0.15,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    reduce_channels: bool = False,
    **method_kwargs: Any,
) -> dict[str, np.ndarray]:
    """Several noise ensembles of one base method from one set of noisy maps.

    SmoothGrad, SmoothGrad² and VarGrad of a method average the same maps of
    the same noisy copies in different ways; this computes the maps once and
    returns each ensemble in ``noises``, each equal bit for bit to
    ``explain(..., method=method, noise=<it>)`` with the same arguments, for
    the cost of one.

    Parameters
    ----------
    method : str
        A base method of :func:`explain` (not a control, not a preset with its
        own noise).
    noises : sequence of str
        Names in :data:`NOISE_TYPES`, without repeats.
    model, inputs, targets, n_samples, stdev, seed, device, batch_size
        As :func:`explain`.
    reduce_channels, **method_kwargs
        As :func:`explain`.

    Returns
    -------
    dict
        ``noise -> attributions`` (float32 arrays shaped like ``inputs``).

    Examples
    --------
    >>> import torch
    >>> from quantus_roar import SmallCNN
    >>> model, x = SmallCNN(), torch.rand(3, 1, 8, 8)
    >>> maps = explain_ensembles(model, x, [0, 1, 2], method="Gradient", n_samples=4)
    >>> sorted(maps), bool((maps["VarGrad"] == explain(model, x, [0, 1, 2],
    ...     method="Gradient_VarGrad", n_samples=4)).all())
    (['SmoothGrad', 'SmoothGradSquared', 'VarGrad'], True)

    References
    ----------
    .. [1] Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017.
    .. [2] Hooker et al., "A Benchmark for Interpretability Methods in Deep
       Neural Networks", NeurIPS 2019 (SmoothGrad²).
    .. [3] Adebayo et al., "Local Explanation Methods for Deep Neural Networks
       Lack Sensitivity to Parameter Values", ICLR workshop 2018 (VarGrad).
    """
    owner = "explain_ensembles"
    if isinstance(noises, str) or not noises:
        raise ValueError(f"The 'noises' parameter of {owner} must be a non-empty sequence of "
                         f"names in {list(NOISE_TYPES)}. Got {noises!r} instead.")
    noises = tuple(noises)
    for noise in noises:
        check_choice(noise, "noises", owner, NOISE_TYPES)
    if len(set(noises)) != len(noises):
        raise ValueError(f"The 'noises' parameter of {owner} names a noise type twice: "
                         f"{list(noises)}.")
    base, implied = _resolved(method, None, owner)
    if implied is not None:
        raise ValueError(f"{owner} needs a base method ({list(BASE_METHODS)}), not the preset "
                         f"{method!r}, which has a noise type of its own.")
    method = base
    if method in CONTROLS:
        raise ValueError(f"{owner}(method={method!r}) is a control; it takes no noise "
                         "ensemble.")
    return _explained(model, inputs, targets, method, noises, n_samples, stdev, seed, device,
                      batch_size, reduce_channels, method_kwargs, owner)


def _explained(model: nn.Module, inputs: Any, targets: Any, method: str,
               noises: tuple[str | None, ...], n_samples: int, stdev: float, seed: int,
               device: Any, batch_size: int, reduce_channels: bool,
               method_kwargs: dict[str, Any], owner: str) -> dict[str | None, np.ndarray]:
    """:func:`explain` and :func:`explain_ensembles` (``owner``) once the method is
    resolved: the maps of each noise type in ``noises`` (None: no ensemble)."""
    check_model(model, owner)
    device = model_device(model, device)
    x = _input_tensor(inputs, "inputs", owner, model_dtype(model)).to(device)
    if method == "Sobel" or x.ndim == 4:
        check_channel_first(tuple(x.shape), "inputs", owner)
    if targets is None or isinstance(targets, (str, bytes)):
        raise TypeError(f"The 'targets' parameter of {owner} must be class indices (an int or "
                        f"one per input). Got {targets!r} instead.")
    t = as_tensor(targets.detach().cpu() if isinstance(targets, torch.Tensor)
                  else np.asarray(targets), "targets", owner)
    if t.ndim == 0:
        t = t.expand(len(x))
    k = None if method in CONTROLS else n_classes(model, x[:1], owner)  # controls: no class
    t = check_labels(t, len(x), "targets", owner, n_classes=k,
                     x_name="inputs").to(device)

    if method in CONTROLS:
        maps = {None: _control(x, method, seed, method_kwargs)}
    else:
        maps = _explain_gradient_method(model, x, t, method, noises, int(n_samples),
                                        float(stdev), seed, int(batch_size), method_kwargs)
    return {noise: _finished(out, method, reduce_channels, method_kwargs)
            for noise, out in maps.items()}


def _finished(out: torch.Tensor, method: str, reduce_channels: bool,
              method_kwargs: dict[str, Any]) -> np.ndarray:
    """Maps summed over channels if asked, refused if not finite, as float32 numpy."""
    if reduce_channels and out.ndim >= 3:
        out = out.sum(dim=1, keepdim=True)
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        rows = torch.nonzero(bad.reshape(len(out), -1).any(1)).flatten()[:5].tolist()
        raise ValueError(f"explain(method={method!r}) produced {int(bad.sum())} NaN or inf "
                         f"value(s), first in sample(s) {rows}. Check its keyword arguments "
                         f"({sorted(method_kwargs) or 'none given'}: e.g. a NaN baseline) and "
                         "the model's outputs.")
    return out.detach().to(torch.float32).cpu().numpy()


#: The benchmark's fixed-prior control: the training-set mean of SmoothGrad² maps.
DEFAULT_FIXED_PRIOR = "FixedPrior(Gradient_SmoothGradSquared)"
_PRIOR_NAME = re.compile(r"FixedPrior\((?P<source>.+)\)")


def fixed_prior_source(name: str) -> str | None:
    """The estimator whose mean map a ``"FixedPrior(<estimator>)"`` name asks for, else None.

    Examples
    --------
    >>> fixed_prior_source("FixedPrior(Gradient_SmoothGradSquared)"), fixed_prior_source("Random")
    ('Gradient_SmoothGradSquared', None)
    """
    match = _PRIOR_NAME.fullmatch(name) if isinstance(name, str) else None
    return match.group("source").strip() if match else None


def model_free(name: str) -> bool:
    """Whether the estimator named ``name`` explains without looking at the model (the
    controls and every ``FixedPrior``): its maps are the same for any weights, so a
    sanity check of it is similarity 1 by construction.

    Examples
    --------
    >>> model_free("Sobel"), model_free("FixedPrior(Gradient)"), model_free("Gradient")
    (True, True, False)
    """
    return name in CONTROLS or fixed_prior_source(name) is not None


class FixedPrior:
    """A leakage control: the same attribution map for every input.

    Its masks remove the same features from every image, so they carry no
    information about any one image or its class; if ROAR still ranks it
    above Random, the ranking rewards *where* features are removed (e.g.
    the centre of digits), not what the model used. Built from a prior map,
    usually :meth:`from_attributions`: the training-set mean of a named
    estimator's maps. The map's values are replaced by their ranks, ties
    broken by a fixed seeded order, so with ``granularity="pixel"`` every
    image gets exactly the same mask.

    Called with Quantus' explain_func signature; the model and targets are
    not used.

    Parameters
    ----------
    prior : array-like
        One map, shape (1, H, W), (C, H, W), (H, W) for images, (C, T) for
        time series or (F,) for tabular data; channels are summed (absolute
        values) into one.
    seed : int, default 0
        The order of tied values.

    Examples
    --------
    >>> prior = FixedPrior(np.array([[0.0, 3.0], [1.0, 1.0]]))
    >>> a = prior(None, np.zeros((2, 1, 2, 2)), [0, 1])
    >>> a.shape, a[0, 0].tolist() == a[1, 0].tolist()
    ((2, 1, 2, 2), True)
    >>> sorted(a[0, 0].ravel().tolist())  # ranks: the tie of 1.0 broken by the seed
    [1.0, 2.0, 3.0, 4.0]
    """

    @validated(seed=Seed())
    def __init__(self, prior: Any, *, seed: int = 0):
        #: The prior's absolute values.
        self.prior = _input_tensor(np.asarray(prior)[None], "prior", "FixedPrior",
                                   torch.float64)[0].abs()
        self.seed = seed

    def map_for(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The map every input of ``shape`` (N, C, *spatial) or (N, F) gets: the ranks of
        the prior, channels summed, from 1 (least important) to the number of features."""
        spatial = shape[2:] if len(shape) >= 3 else shape[1:]
        if tuple(self.prior.shape[-len(spatial):]) != tuple(spatial) or (
                len(shape) == 2 and self.prior.numel() != shape[1]):
            raise ValueError(f"FixedPrior holds a map of shape {tuple(self.prior.shape)}, which "
                             f"does not fit inputs of shape {shape}: its last axes must be "
                             f"{tuple(spatial)}.")
        p = self.prior.reshape(-1, *spatial).sum(dim=0)
        flat = p.reshape(-1).numpy()
        tiebreak = np.random.default_rng(self.seed).permutation(flat.size)
        order = np.lexsort((tiebreak, flat))  # by value, ties by the fixed permutation
        ranks = np.empty(flat.size, dtype=np.float32)
        ranks[order] = np.arange(1, flat.size + 1, dtype=np.float32)
        return torch.from_numpy(ranks.reshape((1, *spatial) if len(shape) >= 3 else spatial))

    @classmethod
    def from_attributions(cls, a: Any, *, seed: int = 0, chunk: int = 4096) -> FixedPrior:
        """The prior of the mean absolute map over ``a`` (N, ...), read ``chunk`` samples at
        a time (``a`` may be a memory-mapped array)."""
        chunk = check_int(chunk, "chunk", "FixedPrior.from_attributions", low=1)
        total = None
        for start in range(0, len(a), chunk):
            part = np.abs(np.asarray(a[start : start + chunk], dtype=np.float64)).sum(axis=0)
            total = part if total is None else total + part
        if total is None:
            raise ValueError("The 'a' parameter of FixedPrior.from_attributions must be a "
                             "non-empty batch of attributions. Got none.")
        return cls(total / len(a), seed=seed)

    def __call__(self, model: Any = None, inputs: Any = None, targets: Any = None,
                 **kwargs: Any) -> np.ndarray:
        shape = tuple(np.shape(inputs))
        one = self.map_for(shape)
        return one[None].expand(shape[0], *one.shape).numpy().copy()

    def __repr__(self) -> str:
        return f"FixedPrior(prior of shape {tuple(self.prior.shape)}, seed={self.seed})"


@torch.no_grad()
def n_classes(model: nn.Module, x: torch.Tensor, owner: str = "n_classes") -> int:
    """The number of classes ``model`` scores, from one forward pass on ``x`` in ``eval()``
    mode (its train/eval mode is restored).

    Raises
    ------
    NotAClassifierError
        If the model does not return (N, n_classes) scores. Errors the model
        itself raises propagate unchanged.
    """
    with evaluating(model):
        out = model(x)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise NotAClassifierError(
            f"{owner} needs a classifier returning (N, n_classes) scores. The model returned "
            f"{shape} for {len(x)} input(s); wrap it so it returns one row of class scores per "
            "input.")
    return int(out.shape[1])


def _explain_gradient_method(
    model: nn.Module, x: torch.Tensor, t: torch.Tensor, method: str,
    noises: tuple[str | None, ...], n_samples: int, stdev: float, seed: int, batch_size: int,
    method_kwargs: dict[str, Any],
) -> dict[str | None, torch.Tensor]:
    with evaluating(model):
        return _gradient_maps(model, x, t, method, noises, n_samples, stdev, seed, batch_size,
                              method_kwargs)


# How each noise ensemble averages the maps of the noisy copies, (n_samples, N, ...).
_ENSEMBLE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "SmoothGrad": lambda maps: maps.mean(0),
    "SmoothGradSquared": lambda maps: (maps * maps).mean(0),
    "VarGrad": lambda maps: ((maps * maps).mean(0) - maps.mean(0) ** 2).clamp_min(0.0),
}


def _gradient_maps(
    model: nn.Module, x: torch.Tensor, t: torch.Tensor, method: str,
    noises: tuple[str | None, ...], n_samples: int, stdev: float, seed: int, batch_size: int,
    method_kwargs: dict[str, Any],
) -> dict[str | None, torch.Tensor]:
    if method == "GuidedBackprop":
        _check_relu_modules(model, x[:1])
    elif method == "PruneGrad":
        check_activation_modules(model, x[:1])
    if method == "IntegratedGradients":
        method_kwargs = {"internal_batch_size": batch_size, **method_kwargs}
    base = _base_attribution(model, method, method_kwargs)

    def run(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        parts = []
        with warnings.catch_warnings():
            # captum's notices that it sets requires_grad / hooks ReLUs: expected here.
            warnings.filterwarnings("ignore", message=".*(require gradients|backward hooks)")
            for i in range(0, len(inputs), batch_size):
                chunk = inputs[i : i + batch_size].detach().requires_grad_(True)
                parts.append(base(chunk, targets[i : i + batch_size]).detach())
        return torch.cat(parts)

    if noises == (None,):
        return {None: run(x, t)}
    # Noisy copies of as many inputs at once as fit in a few batches.
    per_chunk = max(1, (4 * batch_size) // n_samples)
    outs: dict[str | None, list[torch.Tensor]] = {noise: [] for noise in noises}
    for start in range(0, len(x), per_chunk):
        xc, tc = x[start : start + per_chunk], t[start : start + per_chunk]
        noisy = noisy_inputs(xc, n_samples, stdev, seed)
        maps = run(noisy.flatten(0, 1), tc.repeat(n_samples)).unflatten(0, noisy.shape[:2])
        for noise, parts in outs.items():
            parts.append(_ENSEMBLE[noise](maps))
    return {noise: torch.cat(parts) for noise, parts in outs.items()}


