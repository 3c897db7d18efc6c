"""Quantus plumbing shared by the removal metrics: arguments, input checks, explanations."""

from __future__ import annotations

import difflib
import functools
import inspect
import textwrap
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pandas as pd
import quantus
import torch
from quantus.helpers.enums import DataType, EvaluationCategory, ModelType
from tqdm.auto import tqdm

from quantus_roar._validation import (
    INPUT_HINT,
    Choice,
    Constraint,
    Func,
    Percentages,
    Seed,
    check_batch_size,
    check_finite,
    check_labels,
    check_model,
    check_seed,
    model_device,
    model_dtype,
    to_tensor,
    validated,
)
from quantus_roar.curves import normalised_auc
from quantus_roar.exceptions import NotAClassifierError, QuantusRoarWarning
from quantus_roar.explainers import TARGETS, explanation_targets, n_classes
from quantus_roar.removal import IMPUTER_KWARGS, Imputer, Removal

__all__ = [
    "Call",
    "ExecutorName",
    "Inputs",
    "QuantusRoarMetric",
    "RemovalMetric",
    "Retrainer",
    "check_classes",
    "check_executor",
    "check_inputs",
    "check_kwargs",
    "check_retrainer",
    "explain_kwargs",
    "retrainer_or_default",
]

# Quantus' call arguments, declared by QuantusRoarMetric.__call__.
_CALL_ARGUMENTS = ("model", "x_batch", "y_batch", "a_batch", "s_batch", "channel_first",
                   "explain_func", "explain_func_kwargs", "model_predict_kwargs", "softmax",
                   "device", "batch_size")


def _init_keywords(cls: type) -> set[str]:
    """The keywords the ``__init__`` methods of ``cls`` and its bases declare."""
    names: set[str] = set(_RULE_SHORTCUTS) if issubclass(cls, RemovalMetric) else set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None and klass is not object:
            names |= {n for n, p in inspect.signature(init).parameters.items()
                      if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return names


_OPTIONAL_FUNC = Func("callable (e.g. np.mean) or None", optional=True)


class Inputs(NamedTuple):
    """Validated inputs of one metric call (all on CPU, in the caller's layout)."""

    x: torch.Tensor
    y: torch.Tensor
    n_classes: int
    channel_last: bool


def _owner_call(owner: str) -> str:
    return f"{owner}.__call__"


def _channel_last(x: torch.Tensor, channel_first: bool | None) -> bool:
    if x.ndim < 3:
        return False
    if isinstance(channel_first, bool):
        return not channel_first
    return not quantus.helpers.utils.infer_channel_first(x[:1].numpy())


def _n_classes(model: torch.nn.Module, x: torch.Tensor, device: torch.device, owner: str,
               x_name: str, channel_last: bool) -> int:
    """Number of outputs of ``model``, from one forward pass on two inputs; the model's own
    error is re-raised naming the inputs and their apparent layout."""
    try:
        return n_classes(model, x[:2].to(device=device), owner)
    except NotAClassifierError:
        raise
    except Exception as err:  # the model's own error, but with the inputs named
        layout = "channel-last (N, ..., C)" if channel_last else "channel-first (N, C, ...)"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{owner} could not run the model on '{x_name}' of shape {tuple(x.shape)} "
            f"({type(err).__name__}: {first}). The model receives the inputs as given; they "
            f"look {layout}. If the model takes the other layout, transpose the inputs (e.g. "
            "x.permute(0, 3, 1, 2) for channel-last images and a channel-first model), and "
            "check the per-sample shape the model expects."
        ) from err


def check_inputs(
    model: Any, x: Any, y: Any, owner: str, *, channel_first: bool | None = None,
    device: Any = None, names: tuple[str, str] = ("x_batch", "y_batch"),
    like: Inputs | None = None,
) -> Inputs:
    """Check the model, inputs and labels of a metric call before any work is done.

    Inputs are converted to the floating dtype of the model's parameters
    (float32 for float64 or integer arrays, Python lists and so on), in this
    one place, so every metric accepts what a user has at hand.

    Parameters
    ----------
    names : (str, str)
        The parameter names of ``x`` and ``y`` in messages.
    like : Inputs, optional
        Checked inputs ``x`` must match: their per-sample shape (checked
        before the model sees ``x``) and their layout.

    Raises
    ------
    TypeError
        A model that is not a ``torch.nn.Module`` instance, or non-numeric
        inputs or labels.
    ValueError
        Inputs that are not (N, F), (N, C, T) or (N, C, H, W), or that hold
        NaN or inf; ``len(y) != len(x)``; labels that are not integers in
        [0, n_classes); a model on the meta device, or one that cannot run on
        the inputs.
    """
    call = _owner_call(owner)
    x_name, y_name = names
    check_model(model, call)
    x_t = to_tensor(x, x_name, call)
    if x_t.ndim not in (2, 3, 4) or x_t.shape[0] == 0:
        raise ValueError(f"The '{x_name}' parameter of {call} must be a non-empty batch of shape "
                         f"(N, F), (N, C, T) or (N, C, H, W). Got shape {tuple(x_t.shape)} "
                         "instead.")
    if like is not None and tuple(x_t.shape[1:]) != tuple(like.x.shape[1:]):
        raise ValueError(f"The '{x_name}' parameter of {call} must have the per-sample shape of "
                         f"the training inputs {tuple(like.x.shape[1:])}. Got "
                         f"{tuple(x_t.shape[1:])} instead.")
    if x_t.is_complex() or x_t.dtype == torch.bool:
        raise TypeError(f"The '{x_name}' parameter of {call} must hold real numbers. Got dtype "
                        f"{x_t.dtype} instead.")
    x_t = x_t.to(model_dtype(model))
    check_finite(x_t, x_name, call, hint=INPUT_HINT)
    y_t = check_labels(to_tensor(y, y_name, call), len(x_t), y_name, call, x_name=x_name)
    channel_last = like.channel_last if like is not None else _channel_last(x_t, channel_first)
    n_classes = _n_classes(model, x_t, model_device(model, device), call, x_name, channel_last)
    y_t = check_labels(y_t, len(x_t), y_name, call, n_classes=n_classes, x_name=x_name)
    return Inputs(x_t, y_t, n_classes, channel_last)


def check_classes(inputs: Inputs, min_classes: int, y_name: str, owner: str) -> Inputs:
    """``inputs`` if their labels hold at least ``min_classes`` classes (2 where a model
    is trained on them: on one class every accuracy is 1.0)."""
    n_distinct = int(torch.unique(inputs.y).numel())
    if n_distinct < min_classes:
        raise ValueError(f"The '{y_name}' parameter of {_owner_call(owner)} must hold at least "
                         f"{min_classes} classes: a model trained on {n_distinct} class "
                         "predicts it always, so every accuracy would be 1.0 whatever the "
                         f"attributions. Got only class {int(inputs.y[0])}.")
    return inputs


def check_executor(executor: Any, owner: str) -> Any:
    """``executor`` if it names one (or is one); a clear error otherwise, before any work.

    ``"ray"`` is checked for an installed Ray here, so a missing extra fails at
    construction with the install command.
    """
    from quantus_roar.executors import Executor, _import_ray

    if executor in (None, "local", "processes") or isinstance(executor, Executor):
        return executor
    if executor == "ray":
        _import_ray()
        return executor
    raise ValueError(f"The 'executor' parameter of {owner} must be None, 'local', 'processes', "
                     f"'ray' or a quantus_roar.executors.Executor. Got {executor!r} instead.")


def check_retrainer(retrainer: Any, owner: str) -> Any:
    """``retrainer`` if it is ``None`` or passes :func:`quantus_roar.retrain.base.check_retrainer`
    (an instance with ``fit``/``score`` or ``fit_score_many``)."""
    from quantus_roar.retrain.base import check_retrainer as check

    return None if retrainer is None else check(retrainer, owner)


class Retrainer(Constraint):
    """None, or a retrainer instance (:func:`quantus_roar.retrain.base.check_retrainer`)."""

    def check(self, value: Any, name: str, owner: str) -> Any:
        return check_retrainer(value, owner)


class ExecutorName(Constraint):
    """None, ``"local"``, ``"processes"``, ``"ray"`` (with Ray installed) or an Executor."""

    def check(self, value: Any, name: str, owner: str) -> Any:
        return check_executor(value, owner)


@dataclass(frozen=True)
class Call:
    """One checked metric call: the model, its inputs and how to explain them.

    ``device`` is where the model runs (the caller's ``device``, else the
    model's); ``user_device`` is what the caller gave (None when nothing).
    """

    model: torch.nn.Module
    inputs: Inputs
    a_batch: Any
    explain_func: Callable | None
    explain_kwargs: dict
    device: torch.device
    user_device: Any
    batch_size: int
    softmax: bool | None
    channel_first: bool | None

    @property
    def x(self) -> torch.Tensor:
        return self.inputs.x

    @property
    def y(self) -> torch.Tensor:
        return self.inputs.y

    @property
    def channel_last(self) -> bool:
        return self.inputs.channel_last


def explain_kwargs(kwargs: dict | None, device: Any) -> dict:
    """A copy of ``explain_func_kwargs`` with the caller's ``device`` added unless it
    names one, as Quantus' metrics do."""
    out = dict(kwargs or {})
    if device is not None and "device" not in out:
        out["device"] = device
    return out


def retrainer_or_default(retrainer: Any, call: Call) -> Any:
    """``retrainer``, or ``TorchRetrainer(model)`` with its default recipe on the model's device."""
    if retrainer is not None:
        return retrainer
    from quantus_roar.retrain import TorchRetrainer

    return TorchRetrainer(call.model, device=call.device)


def check_kwargs(kwargs: dict, owner: str, known: Iterable[str]) -> None:
    """Reject unknown keyword arguments with Quantus' ``ValueError`` (after its
    deprecation notices), naming them -- not their values, which may be whole arrays --
    with the closest known name."""
    kwargs.pop("custom_batch", None)  # Quantus' own, not used by whole-dataset metrics
    quantus.helpers.warn.deprecation_warnings(kwargs)
    if not kwargs:
        return
    known = sorted(known)
    hints = [f"'{k}'" + (f" (did you mean '{m[0]}'?)"
                         if (m := difflib.get_close_matches(str(k), known, n=1)) else "")
             for k in kwargs]
    raise ValueError(f"Unexpected keyword arguments encountered in {owner}: "
                     f"{', '.join(hints)}. It takes {', '.join(known)}.")


def _documented_init(cls: type) -> Callable:
    """``cls.__init__`` with a docstring of its own in Quantus' format.

    Quantus' ``Metric.interpret_scores()`` prints the second sentence of
    ``__init__.__doc__``; metrics that share an ``__init__`` (ROAR and KAR)
    each get a thin one, whose signature is the shared one's.
    """
    inner = cls.__init__

    @functools.wraps(inner)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        inner(self, *args, **kwargs)

    doc = cls.__doc__ or ""
    refs = doc[doc.index("References"):] if "References" in doc else ""
    __init__.__doc__ = (f"Set up the {cls.name} metric. {cls.interpretation.rstrip('.')}.\n\n"
                        f"Parameters and call: see :class:`{cls.__qualname__}`.\n\n"
                        + textwrap.dedent("    " + refs.lstrip()))
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__module__ = cls.__module__
    return __init__


class QuantusRoarMetric(quantus.Metric):
    """Quantus plumbing shared by every quantus_roar metric: the base arguments, one
    ``__call__`` that checks the call, warnings, attribution checks.

    Subclasses declare their own parameters (and forward the Quantus base
    arguments, ``**kwargs``, here), list their call keywords besides
    Quantus' in ``call_keywords`` and implement ``_evaluate(call, **keywords)``.

    Parameters
    ----------
    seed : int, default 0
        Every random choice of the metric derives from it.
    target : {"predicted", "label"}, default "predicted"
        The class explained where the metric computes explanations.
    abs, normalise, normalise_func, normalise_func_kwargs : optional
        Quantus' attribution preprocessing: absolute values, then the
        normalisation, applied to every explanation before it is used.
    return_aggregate : bool, default False
        Return one number instead of the per-percentage or per-step values.
    aggregate_func : callable, optional
        How the values become that number; default ``default_aggregate``:
        ``np.mean`` as in Quantus, except for the accuracy curves, whose
        default is :func:`quantus_roar.curves.normalised_auc` over the
        percentages. ``metric.aggregate_func`` is the function applied.
    default_plot_func : callable, optional
        The function :meth:`plot` uses.
    disable_warnings : bool, default False
        Silence the parameter advice.
    display_progressbar : bool, default False
        Show tqdm progress bars.
    """

    model_applicability: ClassVar[set[ModelType]] = {ModelType.TORCH}
    #: How to read the scores: :meth:`interpret_scores` prints it. Also the second
    #: sentence of the class's ``__init__`` docstring, which Quantus' own
    #: ``Metric.interpret_scores`` prints (up to the next full stop).
    interpretation: ClassVar[str] = ""
    #: ``aggregate_func`` when none is given.
    default_aggregate: ClassVar[Callable] = staticmethod(np.mean)
    #: Keywords a call takes besides Quantus' own, passed to ``_evaluate``.
    call_keywords: ClassVar[tuple[str, ...]] = ()
    #: Fewest classes ``y_batch`` must hold (2 where a model is trained on it).
    min_classes: ClassVar[int] = 1
    #: ``softmax`` when the caller gives None.
    default_softmax: ClassVar[bool] = False

    def interpret_scores(self) -> str:
        """Print how to read the scores, as Quantus' metrics do, and return the text."""
        if not self.interpretation:
            return super().interpret_scores()
        print(self.interpretation)
        return self.interpretation

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "interpretation" in cls.__dict__:
            cls.__init__ = _documented_init(cls)  # type: ignore[method-assign]

    @validated(seed=Seed(), target=Choice(TARGETS), aggregate_func=_OPTIONAL_FUNC,
               normalise_func=_OPTIONAL_FUNC, default_plot_func=_OPTIONAL_FUNC)
    def __init__(
        self,
        *,
        seed: int = 0,
        target: str = "predicted",
        abs: bool = False,
        normalise: bool = False,
        normalise_func: Callable | None = None,
        normalise_func_kwargs: dict | None = None,
        return_aggregate: bool = False,
        aggregate_func: Callable | None = None,
        default_plot_func: Callable | None = None,
        disable_warnings: bool = False,
        display_progressbar: bool = False,
        **kwargs: Any,
    ):
        if kwargs:  # the signatures are read only to name what was not understood
            check_kwargs(kwargs, type(self).__name__, _init_keywords(type(self)))
        self.seed = seed
        self.target = target
        self.results: pd.DataFrame | None = None
        super().__init__(
            abs=abs, normalise=normalise, normalise_func=normalise_func,
            normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
            aggregate_func=aggregate_func, default_plot_func=default_plot_func,
            disable_warnings=disable_warnings, display_progressbar=display_progressbar,
            **kwargs,
        )
        # Quantus' default is np.mean; a curve's is its normalised area (the metric says so).
        self.aggregate_func = aggregate_func or self.default_aggregate

    def __call__(
        self,
        model: torch.nn.Module,
        x_batch: Any,
        y_batch: Any,
        a_batch: Any = None,
        s_batch: Any = None,
        channel_first: bool | None = None,
        explain_func: Callable | None = None,
        explain_func_kwargs: dict | None = None,
        model_predict_kwargs: dict | None = None,
        softmax: bool | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        **kwargs: Any,
    ) -> Any:
        """Evaluate the metric on a dataset (Quantus' call, documented once for every metric).

        Parameters
        ----------
        model : torch.nn.Module
            The trained model whose explanations are evaluated; never
            modified (its train/eval mode is restored).
        x_batch, y_batch : array-like
            Inputs, (N, F), (N, C, T) or (N, C, H, W) (or channel-last), and
            their integer labels. Any real dtype; converted to the model's.
        a_batch : array-like, optional
            Attributions of ``x_batch`` (its shape, one channel, or no
            channel axis); computed with ``explain_func`` when missing.
        s_batch, model_predict_kwargs
            Accepted for Quantus compatibility; not used.
        channel_first : bool, optional
            Layout of image / time-series inputs; inferred when None.
        explain_func, explain_func_kwargs
            A Quantus explain function, called as ``explain_func(model=...,
            inputs=x, targets=t, **explain_func_kwargs)`` on numpy batches of
            ``batch_size``.
        softmax : bool, optional
            Whether scores are softmax probabilities (the deletion metrics'
            ``true_class_score``; default True there); unused elsewhere.
        device : str or torch.device, optional
            Where explanations are computed (added to ``explain_func_kwargs``
            unless they name one) and the default retrainer trains.
        batch_size : int, default 64
            Samples per ``explain_func`` call and per forward pass.
        **kwargs
            The metric's own call keywords (``x_test``, ``y_test``,
            ``a_test`` for ROAR, KAR and DataRandomisation; ``x_train``,
            ``y_train`` for ModelRandomisation), described with the metric.

        Returns
        -------
        dict or float
            Described with each metric.
        """
        owner = type(self).__name__
        keywords = {k: kwargs.pop(k) for k in self.call_keywords if k in kwargs}
        check_kwargs(kwargs, _owner_call(owner), [*_CALL_ARGUMENTS, *self.call_keywords])
        batch_size = check_batch_size(batch_size, _owner_call(owner))
        self._check_keywords(keywords)
        inputs = check_classes(check_inputs(model, x_batch, y_batch, owner,
                                            channel_first=channel_first, device=device),
                               self.min_classes, "y_batch", owner)
        call = Call(model, inputs, a_batch, explain_func,
                    explain_kwargs(explain_func_kwargs, device), model_device(model, device),
                    device, batch_size, self.default_softmax if softmax is None else softmax,
                    channel_first)
        return self._evaluate(call, **keywords)

    def _check_keywords(self, keywords: dict[str, Any]) -> None:
        """Checks of the call keywords that need no data (e.g. pairs given together)."""

    def _evaluate(self, call: Call, **keywords: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _more_inputs(self, call: Call, x: Any, y: Any, names: tuple[str, str],
                     min_classes: int = 1) -> Inputs:
        """Check a second set of inputs (``x_test``, ``x_train``) against the call's."""
        owner = type(self).__name__
        return check_classes(check_inputs(call.model, x, y, owner, device=call.user_device,
                                          names=names, like=call.inputs),
                             min_classes, names[1], owner)

    def _targets(self, call: Call, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The classes explained for ``x``: the model's predictions, or ``y``."""
        return explanation_targets(call.model, x, y, self.target, batch_size=call.batch_size,
                                   device=call.device,
                                   owner=_owner_call(type(self).__name__))

    def _explained(self, call: Call, model: torch.nn.Module, x: torch.Tensor,
                   targets: torch.Tensor, what: str) -> np.ndarray:
        """Attributions of ``x`` for ``targets`` by ``call.explain_func`` with ``model``,
        computed in batches of ``call.batch_size``."""
        owner = _owner_call(type(self).__name__)
        if call.explain_func is None:
            raise ValueError(
                f"{owner} needs attributions: pass '{what}', or an 'explain_func' (for example "
                "explain_func=quantus_roar.explain, explain_func_kwargs={'method': 'Gradient'}) "
                "to compute them."
            )
        if not callable(call.explain_func):
            raise TypeError(f"The 'explain_func' parameter of {owner} must be callable. Got "
                            f"{type(call.explain_func).__name__} instead.")
        parts, step = [], call.batch_size
        for start in tqdm(range(0, len(x), step), desc=f"explaining ({what})",
                          disable=not self.display_progressbar, leave=False):
            out = call.explain_func(model=model, inputs=x[start : start + step].numpy(),
                                    targets=targets[start : start + step].numpy(),
                                    **call.explain_kwargs)
            parts.append(out.detach().cpu().numpy() if isinstance(out, torch.Tensor)
                         else np.asarray(out))
        return np.concatenate(parts)

    def _attributions(self, call: Call, a: Any, x: torch.Tensor, y: torch.Tensor,
                      what: str = "a_batch") -> torch.Tensor:
        """``a`` checked and preprocessed, or -- when None -- computed with the call's
        explain function for the metric's target classes."""
        if a is None:
            a = self._explained(call, call.model, x, self._targets(call, x, y), what)
        return self._prepare_attributions(a, x, what, call.channel_last)

    @property
    def disable_warnings(self) -> bool:
        """Whether parameter advice is silenced (Quantus' own property also silences it
        whenever the code is not running on GitHub Actions)."""
        return self._disable_warnings

    @property
    def display_progressbar(self) -> bool:
        """Whether progress bars are shown."""
        return self._display_progressbar

    def _warn(self, message: str) -> None:
        if not self._disable_warnings:
            warnings.warn(message, QuantusRoarWarning, stacklevel=3)

    def _prepare_attributions(self, a: Any, x: torch.Tensor, owner_name: str,
                              channel_last: bool) -> torch.Tensor:
        """Check shape and finiteness of attributions; apply ``normalise`` and ``abs``."""
        call = _owner_call(type(self).__name__)
        a_t = to_tensor(a, owner_name, call).float()
        shape_ok = a_t.ndim in (x.ndim, x.ndim - 1) and len(a_t) == len(x)
        if shape_ok and x.ndim >= 3:
            spatial_x = x.shape[1:-1] if channel_last else x.shape[2:]
            if a_t.ndim == x.ndim:
                spatial_a = a_t.shape[1:-1] if channel_last else a_t.shape[2:]
                chan = a_t.shape[-1] if channel_last else a_t.shape[1]
                c_x = x.shape[-1] if channel_last else x.shape[1]
                shape_ok = spatial_a == spatial_x and chan in (1, c_x)
            else:
                shape_ok = a_t.shape[1:] == spatial_x
        elif shape_ok:
            shape_ok = a_t.shape == x.shape
        if not shape_ok:
            raise ValueError(
                f"The '{owner_name}' parameter of {call} must have the shape of the inputs "
                f"{tuple(x.shape)}, a single channel, or no channel axis. Got shape "
                f"{tuple(a_t.shape)} instead."
            )
        bad = ~torch.isfinite(a_t)
        if bool(bad.any()):
            rows = torch.nonzero(bad.reshape(len(a_t), -1).any(1)).flatten()[:5].tolist()
            raise ValueError(
                f"The '{owner_name}' parameter of {call} must be finite. Got {int(bad.sum())} "
                f"NaN or inf value(s), first in sample(s) {rows}. Check the explanation method "
                "(e.g. a division by zero in its normalisation)."
            )
        if self.normalise:
            normed = self.normalise_func(a_t.numpy())  # Quantus bound its kwargs already
            if normed is None or np.shape(normed) != tuple(a_t.shape):
                raise ValueError(f"The 'normalise_func' of {call} returned "
                                 f"{None if normed is None else np.shape(normed)} for attributions "
                                 f"of shape {tuple(a_t.shape)}; it must return them normalised, "
                                 "in the same shape.")
            a_t = torch.as_tensor(np.asarray(normed, dtype=np.float32))
            check_finite(a_t, f"{owner_name} after normalise_func", call)
        if self.abs:
            a_t = a_t.abs()
        return a_t

    def evaluate_batch(self, *args: Any, **kwargs: Any) -> Any:
        """Not used: quantus_roar metrics evaluate the whole dataset in ``__call__``."""
        raise NotImplementedError(f"{type(self).__name__} evaluates whole datasets; call the "
                                  "metric instance instead.")


# Keywords that build a metric's removal rule in place of ``removal=``.
_RULE_SHORTCUTS = ("granularity", "reduce", "imputer", "imputer_kwargs")


def metric_removal(removal: Removal | None, shortcuts: dict[str, Any], order: str, seed: int,
                   owner: str) -> Removal:
    """The removal rule of a metric: ``removal`` as given (its order and seed must be the
    metric's), or one built from the ``granularity``, ``reduce``, ``imputer`` and
    ``imputer_kwargs`` shortcuts."""
    if removal is None:
        imputer = shortcuts.get("imputer", "channel_mean")
        kwargs = dict(shortcuts.get("imputer_kwargs") or {})
        name = imputer.name if isinstance(imputer, Imputer) else imputer
        if isinstance(name, str) and name in IMPUTER_KWARGS:
            unknown = sorted(set(kwargs) - IMPUTER_KWARGS[name])
            if unknown:
                raise ValueError(f"The 'imputer_kwargs' parameter of {owner} has key(s) "
                                 f"{unknown} that imputer={name!r} does not accept; it accepts "
                                 f"{sorted(IMPUTER_KWARGS[name]) or 'none'}.")
        rule = {k: v for k, v in shortcuts.items() if k in ("granularity", "reduce")}
        return Removal.ensure(order=order, seed=check_seed(seed, owner), imputer=imputer,
                              imputer_kwargs=kwargs, owner=owner, **rule)
    if shortcuts:
        raise TypeError(f"{owner} got a 'removal' rule and the keyword(s) {sorted(shortcuts)}; "
                        "give one or the other.")
    removal = Removal.ensure(removal, owner=owner)
    if removal.order != order:
        raise ValueError(f"The 'removal' parameter of {owner} must have order={order!r} (the "
                         f"metric's). Got order={removal.order!r} instead.")
    if removal.seed != seed:
        raise ValueError(f"The 'removal' parameter of {owner} has seed={removal.seed}, the "
                         f"metric seed={seed}; give the seed once (seed=...), or the same in "
                         "both.")
    return removal


class RemovalMetric(QuantusRoarMetric):
    """Arguments, checks and result handling shared by the removal metrics."""

    data_applicability: ClassVar[set[DataType]] = {
        DataType.IMAGE, DataType.TABULAR, DataType.TIMESERIES}
    evaluation_category: ClassVar[EvaluationCategory] = EvaluationCategory.FAITHFULNESS
    order: ClassVar[str] = "remove_top"
    #: Whether the metric's removal fills with an imputer of the user's choice.
    takes_imputer: ClassVar[bool] = True
    #: A curve's one number: its area over the percentages, normalised to [0, 1].
    default_aggregate: ClassVar[Callable] = staticmethod(normalised_auc)

    @validated(percentages=Percentages())
    def __init__(
        self,
        percentages: float | Iterable[float] = (10, 30, 50, 70, 90),
        *,
        removal: Removal | None = None,
        seed: int = 0,
        **kwargs: Any,
    ):
        owner = type(self).__name__
        self.percentages = tuple(float(p) for p in percentages)
        shortcuts = {k: kwargs.pop(k) for k in _RULE_SHORTCUTS if k in kwargs}
        if not self.takes_imputer and {"imputer", "imputer_kwargs"} & set(shortcuts):
            raise TypeError(f"{owner} fills nothing of its own (it measures the masks); it "
                            "takes no 'imputer' or 'imputer_kwargs'.")
        #: The removal rule every call applies (quantus_roar.removal.Removal).
        self.removal = self._adapted(metric_removal(removal, shortcuts, self.order, seed, owner))
        super().__init__(seed=seed, **kwargs)
        if max(self.percentages) <= 1.0:
            intended = ", ".join(f"{p * 100:g}" for p in self.percentages)
            self._warn(f"{owner}(percentages={list(self.percentages)}) removes at most 1 % of "
                       "the features: percentages are in (0, 100], not fractions. If you meant "
                       f"{intended} %, pass percentages=({intended}).")

    def _adapted(self, removal: Removal) -> Removal:
        """The rule the metric applies, made from the one given (unchanged here)."""
        return removal

    @property
    def granularity(self) -> str:
        """The removal rule's granularity (``self.removal.granularity``)."""
        return self.removal.granularity

    @property
    def reduce(self) -> str:
        """The removal rule's channel reduction (``self.removal.reduce``)."""
        return self.removal.reduce

    @property
    def imputer(self) -> str:
        """The name of the removal rule's imputer."""
        return self.removal.imputer.name

    @property
    def imputer_kwargs(self) -> dict[str, Any]:
        """The settings of the removal rule's imputer."""
        return self.removal.imputer.settings()

    # ------------------------------------------------------------------ helpers

    def _aggregate(self, curve: dict) -> float:
        keys = sorted(curve)
        values = [curve[k] for k in keys]
        if self.aggregate_func is normalised_auc:
            return normalised_auc(keys, values)
        return float(self.aggregate_func(np.asarray(values)))

    def _finish(self, curve: dict, results: pd.DataFrame) -> Any:
        self.results = results
        score: Any = self._aggregate(curve) if self.return_aggregate else curve
        self.evaluation_scores = score
        self.all_evaluation_scores.append(score)
        return score

    def plot(self, plot_func: Callable | None = None, show: bool = True,
             path_to_save: str | None = None, *args: Any, **kwargs: Any) -> Any:
        """Plot the last results (accuracy against percentage) and optionally save them.

        Returns the matplotlib Figure.
        """
        import matplotlib.pyplot as plt

        from quantus_roar.plotting import plot_curve

        if self.results is None:
            raise RuntimeError(f"{type(self).__name__} has no results to plot yet; call the "
                               "metric first.")
        func = plot_func or self.default_plot_func or plot_curve
        if func is plot_curve:
            kwargs.setdefault("xlabel", "features kept (%)" if self.order == "keep_top"
                              else "features removed (%)")
        fig = func(self.results, *args, label=kwargs.pop("label", self.name), **kwargs)
        if path_to_save:
            fig.savefig(path_to_save, dpi=150, bbox_inches="tight")
        if show:
            plt.show()
        return fig
