"""What a run's configuration names, made into objects: the model factory, the explain
functions (built-in, yours from Python, or imported ``package.module:function``) and
the retrainer of the recipe. Each is checked before a run touches its folder."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import random
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from quantus_roar._validation import as_tensor
from quantus_roar.benchmark.config import RunConfig
from quantus_roar.benchmark.datasets import BenchmarkData
from quantus_roar.explainers import (
    ESTIMATORS,
    explain,
    explain_ensembles,
    explanation_targets,
    fixed_prior_source,
)
from quantus_roar.models import SmallCNN, SmallResNet
from quantus_roar.retrain import TorchRetrainer

__all__ = ["Explainer", "checked_model_factory", "explainer", "import_callable",
           "import_factory", "model_factory", "probe_explainers", "recipe_retrainer",
           "shared_noise_explainers"]

# --------------------------------------------------------------------------- models


_BUILTIN_MODELS = ("smallcnn", "smallresnet")
_FACTORY_CONTRACT = ("a callable taking the keywords in_channels, n_classes and image_size and "
                     "returning a torch.nn.Module")


def import_factory(spec: str) -> Callable[..., Any] | None:
    """The callable of a ``package.module:factory`` spec (``None`` for the built-in models).

    Importing runs the module's code, as any Python import does; it happens only
    for such a spec, never for ``smallcnn`` or ``smallresnet``.

    Raises
    ------
    ValueError
        For an unknown name, a module that cannot be imported, or a missing or
        non-callable attribute; one line naming the spec.
    """
    if callable(spec):
        return spec
    if spec.lower() in _BUILTIN_MODELS:
        return None
    module_name, _, attr = spec.partition(":")
    if not module_name.strip() or not attr.strip():
        raise ValueError(f"Unknown model {spec!r}. Use 'smallcnn', 'smallresnet' or "
                         f"'package.module:factory' ({_FACTORY_CONTRACT}).")
    return import_callable(spec, "model factory")


def model_factory(spec: str | Callable[..., nn.Module], data: BenchmarkData
                  ) -> Callable[[], nn.Module]:
    """Zero-argument factory of fresh models for ``spec`` (a name, a
    ``package.module:factory`` spec or a factory itself) sized for ``data``: a
    ``functools.partial``, so it pickles (to worker processes) whenever the factory does."""
    c, h = data.shape[0], data.shape[-1]
    k = data.n_classes
    if callable(spec):
        return partial(spec, in_channels=c, n_classes=k, image_size=h)
    name = spec.lower()
    if name == "smallcnn":
        if h % 2:
            raise ValueError(f"SmallCNN needs an even image size; the data has {h}x{h}. Use "
                             "--model smallresnet or your own factory (package.module:factory).")
        return partial(SmallCNN, in_channels=c, n_classes=k, image_size=h)
    if name == "smallresnet":
        return partial(SmallResNet, in_channels=c, n_classes=k)
    factory = import_factory(spec)
    assert factory is not None
    return partial(factory, in_channels=c, n_classes=k, image_size=h)


def checked_model_factory(spec: str | Callable[..., nn.Module], data: BenchmarkData
                          ) -> Callable[[], nn.Module]:
    """:func:`model_factory`, after building one model to check the factory (RNG untouched).

    Raises
    ------
    ValueError
        If the factory raises (a wrong signature, a bug in it) or returns no
        ``torch.nn.Module``; one line naming the spec and the call.
    """
    factory = model_factory(spec, data)
    c, h, k = data.shape[0], data.shape[-1], data.n_classes
    name = spec if isinstance(spec, str) else getattr(spec, "__qualname__", repr(spec))
    call = f"{name}(in_channels={c}, n_classes={k}, image_size={h})"
    with torch.random.fork_rng(devices=[]):
        try:
            model = factory()
        except Exception as err:
            raise ValueError(f"The model factory failed when called as {call}: "
                             f"{type(err).__name__}: {err}. A factory is "
                             f"{_FACTORY_CONTRACT}.") from err
    if not isinstance(model, nn.Module):
        raise ValueError(f"The model factory returned a {type(model).__name__} when called as "
                         f"{call}, not a torch.nn.Module. A factory is {_FACTORY_CONTRACT}.")
    return factory


# --------------------------------------------------------------------------- your own work

Explainer = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.device], np.ndarray]


def explainer(config: RunConfig, name: str) -> Explainer:
    """The explain function of estimator ``name``: a built-in, one of ``config.explainers``,
    or an imported ``package.module:function``, as ``f(model, x, targets, device) -> array``.
    A ``FixedPrior(<estimator>)`` needs the run's training attributions of its source, so
    :class:`~quantus_roar.benchmark.context.RunContext` builds it.

    A user's function is called with Quantus' convention, ``f(model=..., inputs=...,
    targets=...)`` on numpy arrays (plus ``device`` when it takes one); its output
    must be finite and of the shape of the inputs or one channel.
    """
    source = fixed_prior_source(name)
    if source is not None:
        explainer(config, source)  # checks (imports) the source

        def needs_a_run(model: nn.Module, x: torch.Tensor, t: torch.Tensor,
                        device: torch.device) -> np.ndarray:
            raise RuntimeError(f"{name} is the mean map of {source} over a run's training "
                               "set; the run's context builds it (RunContext.prior).")
        return needs_a_run
    if name in ESTIMATORS:
        def builtin(model: nn.Module, x: torch.Tensor, t: torch.Tensor,
                    device: torch.device) -> np.ndarray:
            return explain(model, x, t, **ESTIMATORS[name], seed=config.pipeline_seed,
                           device=device, batch_size=config.explain_batch_size)
        return builtin
    fn = (config.explainers or {}).get(name) or import_callable(name, "explain function")
    takes_device = _accepts(fn, "device")

    def user(model: nn.Module, x: torch.Tensor, t: torch.Tensor,
             device: torch.device) -> np.ndarray:
        kwargs = {"device": device} if takes_device else {}
        out = fn(model=model, inputs=x.cpu().numpy(), targets=t.cpu().numpy(), **kwargs)
        a = np.asarray(out.detach().cpu() if isinstance(out, torch.Tensor) else out,
                       dtype=np.float32)
        ok = a.ndim in (x.ndim, x.ndim - 1) and len(a) == len(x) and (
            a.shape[-2:] == tuple(x.shape[-2:]) if x.ndim >= 3 else a.shape == tuple(x.shape))
        if not ok:
            raise ValueError(f"The explain function {name!r} returned shape {a.shape} for "
                             f"inputs of shape {tuple(x.shape)}; it must return attributions "
                             "of the shape of the inputs, or with one channel.")
        if not np.isfinite(a).all():
            raise ValueError(f"The explain function {name!r} returned NaN or inf for "
                             f"{int((~np.isfinite(a)).sum())} value(s).")
        return a if a.ndim == x.ndim else a[:, None]
    return user


_PROBE = 2


#: Bytes of noise-ensemble maps a run holds for their siblings at most (oldest dropped).
SHARED_MAPS_BYTES = 1 << 30


def _content_key(model: nn.Module, x: torch.Tensor, t: torch.Tensor,
                 device: torch.device) -> bytes:
    """A digest of what a map depends on: the model's weights and buffers, the inputs, the
    targets and the device (models are randomised in place, so not their identity)."""
    h = hashlib.blake2b(digest_size=20)
    for name, value in [*model.state_dict().items(), ("x", x), ("t", t)]:
        if not isinstance(value, torch.Tensor):  # a module's extra state
            h.update(f"{name}|{value!r}|".encode())
            continue
        v = value.detach().cpu()
        h.update(f"{name}|{v.dtype}|{tuple(v.shape)}|".encode())
        if v.is_quantized:
            v = v.dequantize()
        if v.dtype == torch.bfloat16:
            v = v.float()
        h.update(v.contiguous().numpy().tobytes())
    h.update(str(device).encode())
    return h.digest()


class _HeldMaps:
    """Maps computed ahead for an estimator, by (estimator, content), for the whole run:
    at most :data:`SHARED_MAPS_BYTES`, the oldest dropped first."""

    def __init__(self) -> None:
        self.maps: dict[tuple[str, bytes], np.ndarray] = {}
        self.bytes = 0

    def take(self, key: tuple[str, bytes]) -> np.ndarray | None:
        a = self.maps.pop(key, None)
        if a is not None:
            self.bytes -= a.nbytes
        return a

    def hold(self, key: tuple[str, bytes], a: np.ndarray) -> None:
        self.take(key)
        if a.nbytes > SHARED_MAPS_BYTES:
            return
        while self.maps and self.bytes + a.nbytes > SHARED_MAPS_BYTES:
            self.take(next(iter(self.maps)))  # the oldest
        self.maps[key] = a
        self.bytes += a.nbytes


class _Siblings:
    """The noise ensembles of one base method in a run, computed together.

    SmoothGrad, SmoothGrad² and VarGrad of a method average the same maps of the
    same noisy copies (:func:`~quantus_roar.explainers.explain_ensembles`): when
    one of them is asked for a model and inputs, all are computed, and the maps
    of the siblings after it in the run's order wait in the run's
    :class:`_HeldMaps`, keyed by content, until they are asked for the same
    model and inputs (their attributions, every step of the sanity checks). A
    map is the same, bit for bit, as computed alone; one that is not held (no
    room, or a model whose weights cannot be hashed) is computed again, as
    before, and an ensemble that fails (NaN or inf) fails only its own
    estimator.
    """

    def __init__(self, config: RunConfig, base: str, noises: dict[str, str],
                 held: _HeldMaps):
        self.config, self.base, self.noises, self.held = config, base, noises, held
        self.order = list(noises)  # estimator -> noise, in the run's order

    def _alone(self, name: str, model: nn.Module, x: torch.Tensor, t: torch.Tensor,
               device: torch.device) -> np.ndarray:
        return explain(model, x, t, **ESTIMATORS[name], seed=self.config.pipeline_seed,
                       device=device, batch_size=self.config.explain_batch_size)

    def explainer(self, name: str) -> Explainer:
        later = self.order[self.order.index(name) + 1:]

        def shared(model: nn.Module, x: torch.Tensor, t: torch.Tensor,
                   device: torch.device) -> np.ndarray:
            try:
                content = _content_key(model, x, t, device)
            except (TypeError, RuntimeError):  # weights numpy cannot read
                return self._alone(name, model, x, t, device)
            ready = self.held.take((name, content))
            if ready is not None:
                return ready
            if not later:
                return self._alone(name, model, x, t, device)
            try:
                maps = explain_ensembles(
                    model, x, t, method=self.base,
                    noises=tuple(self.noises[e] for e in [name, *later]),
                    seed=self.config.pipeline_seed, device=device,
                    batch_size=self.config.explain_batch_size)
            except ValueError:  # one ensemble not finite: each on its own, as before
                return self._alone(name, model, x, t, device)
            for other in later:
                self.held.hold((other, content), maps[self.noises[other]])
            return maps[self.noises[name]]
        return shared


def shared_noise_explainers(config: RunConfig, names: list[str]) -> dict[str, Explainer]:
    """Explainers for the built-in noise ensembles among ``names`` (in the run's order)
    that share a base method with another of them (:class:`_Siblings`), holding maps in
    one store for the run; the others are left out."""
    groups: dict[str, dict[str, str]] = {}
    for name in names:
        spec = ESTIMATORS.get(name)
        if spec is not None and spec["noise"] is not None:
            groups.setdefault(spec["method"], {})[name] = spec["noise"]
    held, out = _HeldMaps(), {}
    for base, noises in groups.items():
        if len(noises) > 1:
            siblings = _Siblings(config, base, noises, held)
            out.update({name: siblings.explainer(name) for name in noises})
    return out


def probe_explainers(config: RunConfig, data: BenchmarkData, factory: Callable[[], nn.Module],
                     device: torch.device) -> None:
    """Call each of the user's explain functions once, on 2 test samples and a freshly
    built (untrained) model, before anything is trained or written.

    The targets are those the run explains (the model's predicted classes, or the
    labels with ``target="label"``); the output must be finite attributions of the
    shape of the inputs (or one channel). Every random state (torch's, numpy's
    global one, Python's) is as it was afterwards. The built-in estimators are not
    probed.

    Raises
    ------
    ValueError
        One line naming the estimator: ``The explain function 'os:getcwd' failed on
        2 samples: TypeError: ...``.
    """
    user = list(dict.fromkeys(fixed_prior_source(e) or e for e in config.estimators))
    user = [e for e in user if e not in ESTIMATORS]  # a prior's source is probed itself
    if not user:
        return
    n = min(_PROBE, len(data.y_test))
    devices = ([device.index if device.index is not None else torch.cuda.current_device()]
               if device.type == "cuda" else [])
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        with torch.random.fork_rng(devices=devices):
            model = factory().to(device).eval()
            x = as_tensor(np.asarray(data.x_test[:n]), "x", "quantus-roar run")
            y = torch.as_tensor(np.asarray(data.y_test[:n]))
            targets = explanation_targets(model, x, y, config.target, device=device,
                                          batch_size=config.explain_batch_size)
            for name in user:
                fn = explainer(config, name)
                try:
                    fn(model, x, targets, device)
                except Exception as err:
                    text = " ".join(str(err).split()) or "(no message)"
                    raise ValueError(f"The explain function {name!r} failed on {n} samples: "
                                     f"{type(err).__name__}: {text}") from err
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


def _accepts(fn: Callable[..., Any], keyword: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return keyword in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def import_callable(spec: str, what: str) -> Callable[..., Any]:
    """The callable named by ``package.module:function`` (imports that module's code)."""
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except ImportError as err:
        raise ValueError(f"Cannot import the module of the {what} {spec!r}: {err}. Check the "
                         "spelling and that the module is on the import path (PYTHONPATH)."
                         ) from err
    except AttributeError:
        raise ValueError(f"The module {module_name!r} has no {attr!r} (the {what} "
                         f"{spec!r}).") from None
    except Exception as err:  # the module's own code failed
        raise ValueError(f"Importing the module of the {what} {spec!r} failed: "
                         f"{type(err).__name__}: {err}") from err
    if not callable(obj):
        kind = type(obj).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise ValueError(f"The {what} {spec!r} is {article} {kind}, not a callable (a "
                         "function, or a class).")
    return obj


def recipe_retrainer(config: RunConfig, factory: Callable[[], nn.Module],
                     device: torch.device) -> TorchRetrainer:
    """A :class:`TorchRetrainer` with the recipe settings of ``config``."""
    recipe = config.recipe()
    if isinstance(recipe.get("augment"), str):
        recipe["augment"] = import_callable(recipe["augment"], "augment function")
    return TorchRetrainer(model_fn=factory, device=device, **recipe)

