"""The configuration of a benchmark run, from defaults, a TOML file and flags."""

from __future__ import annotations

import hashlib
import json
import numbers
import re
import sys
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from quantus_roar._validation import Choice, Constraint, Int, Percentages, Real
from quantus_roar.exceptions import QuantusRoarWarning
from quantus_roar.executors import THREADS_PER_TASK
from quantus_roar.explainers import (
    DEFAULT_FIXED_PRIOR,
    ESTIMATORS,
    TARGETS,
    fixed_prior_source,
)
from quantus_roar.randomisation import LAYER_ORDERS
from quantus_roar.removal import GRANULARITIES, IMPUTERS, REDUCES, Removal
from quantus_roar.similarity import SIMILARITIES
from quantus_roar.tasks import CPU_MODELS_PER_TASK

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["FILLED_METRICS", "METRICS", "RUN_MAX_SEED", "RunConfig", "SettingTypeError",
           "file_name"]

#: The metrics whose numbers depend on the imputer (keyed per imputer in a sweep).
FILLED_METRICS: tuple[str, ...] = ("roar-noretrain", "kar-noretrain", "roar", "kar")

#: The runner's metrics, in the order they are computed per estimator.
METRICS: tuple[str, ...] = ("roar-noretrain", "kar-noretrain", "pixel-flipping", "roar", "kar",
                            "mask-leakage", "model-randomisation", "data-randomisation")

# The quick preset: the four estimators that span the paper's outcomes, three
# percentages, two retrains, a sample of the test set for the sanity checks.
_QUICK: dict[str, Any] = {
    "estimators": ("Gradient", "GuidedBackprop_SmoothGrad", "Random", "Sobel"),
    "percentages": (10, 50, 90),
    "retrains": 2,
    "sanity_samples": 100,
    "max_epochs": 48,
}


#: A run's seed is below 2**32: the datasets are loaded and split with numpy's legacy
#: generator and scikit-learn, which take no larger seed.
RUN_MAX_SEED = 2**32


class SettingTypeError(TypeError):
    """A setting of :class:`RunConfig` has the wrong type; the message names the key."""


_DEVICE = re.compile(r"cpu|cuda|cuda:\d+")
_DEVICES = "'cpu', 'cuda' or 'cuda:N' (N: a GPU index such as 0)"


def _type_error(name: str, expected: str, value: Any) -> SettingTypeError:
    return SettingTypeError(f"The '{name}' setting must be {expected}. Got {value!r} "
                            f"({type(value).__name__}) instead.")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _names(name: str, value: Any, allowed: Any, what: str) -> tuple[str, ...]:
    """A tuple of distinct known names from a sequence or a comma-separated string."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _type_error(name, f"a list of {what} names (strings)", value)
    unknown = [v for v in value if v not in allowed]
    if unknown or not value:
        raise ValueError(f"Unknown {what}(s) {unknown or 'none given'} in the '{name}' setting. "
                         f"Choose from {list(allowed)}.")
    dupes = sorted({v for v in value if value.count(v) > 1})
    if dupes:
        raise ValueError(f"The '{name}' setting names {dupes} more than once; list each "
                         f"{what} once.")
    return tuple(value)


def _percentages(value: Any) -> tuple[float, ...]:
    expected = "a list of numbers in (0, 100], such as [10, 30, 50]"
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise _type_error("percentages", expected, value) from None
    elif _is_number(value):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(_is_number(v) for v in value):
        raise _type_error("percentages", expected, value)
    ps = [int(p) if float(p).is_integer() else float(p) for p in value]
    dupes = sorted({p for p in ps if ps.count(p) > 1})
    if dupes:
        raise ValueError(f"The 'percentages' setting has duplicate percentages {dupes} (in "
                         f"{ps}); list each percentage once.")
    Percentages()(ps, "percentages", "RunConfig")  # range
    if max(ps) <= 1.0:
        intended = ",".join(f"{p * 100:g}" for p in ps)
        warnings.warn(f"The 'percentages' setting {list(ps)} removes at most 1 % of the "
                      "features: percentages are in (0, 100], not fractions. If you meant "
                      f"{intended} %, pass --percentages {intended}.", QuantusRoarWarning,
                      stacklevel=4)  # the caller of RunConfig(...)
    return tuple(ps)


class _EstimatorNames(tuple):
    """Built-in and user names, any ``package.module:function`` spec, and
    ``FixedPrior(<one of those>)``."""

    def __contains__(self, name: object) -> bool:
        source = fixed_prior_source(name) if isinstance(name, str) else None
        if source is not None:
            return source in self and fixed_prior_source(source) is None
        return super().__contains__(name) or _is_spec(name)


def _is_spec(name: object) -> bool:
    module, _, attr = str(name).partition(":")
    return isinstance(name, str) and bool(module.strip()) and bool(attr.strip())


def _is_data(value: Any) -> bool:
    from quantus_roar.benchmark.datasets import BenchmarkData

    return isinstance(value, BenchmarkData)


def object_name(obj: Any) -> str:
    """``module:qualname`` of a function or class: how Python objects enter a fingerprint."""
    target = obj if callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', '?')}"


def _describe(value: Any) -> Any:
    """A JSON-able description of a setting (Python objects by name and public settings)."""
    from quantus_roar.benchmark.datasets import BenchmarkData

    if isinstance(value, BenchmarkData):
        return f"arrays:{value.name}"
    if isinstance(value, dict):
        return {k: _describe(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if callable(value) and hasattr(value, "__qualname__"):
        return object_name(value)
    settings = {k: v for k, v in sorted(vars(value).items()) if not k.startswith("_")
                and isinstance(v, (str, int, float, bool, type(None)))}
    return {"object": object_name(value), **settings}


_SCHEDULES = ("onecycle", "cosine", "step", "none")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_STEM = 100


def file_name(estimator: str) -> str:
    """The file-name stem of an estimator's cached attributions.

    A name of letters, digits, ``.``, ``_`` and ``-`` (every built-in name) is its
    own stem. Any other name has its other characters replaced by ``-`` and the
    first 8 hex digits of the SHA-256 of the exact name appended
    (``pkg.mod:fn`` -> ``pkg.mod-fn-<8 hex>``), so two names that sanitise alike
    (``mine a``, ``mine-a``) never share a file.
    """
    safe = _UNSAFE.sub("-", estimator)
    if safe == estimator and len(safe) <= _MAX_STEM:
        return safe
    digest = hashlib.sha256(estimator.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe[:_MAX_STEM]}-{digest}"


def _check_user_work(config: RunConfig) -> None:
    """Type and range checks of the settings that bring the user's own code and recipe."""
    ex = config.explainers
    if ex is not None:
        if not isinstance(ex, dict) or not all(isinstance(k, str) and k and callable(v)
                                               for k, v in ex.items()):
            raise _type_error("explainers", "a dict of names to explain functions", ex)
        clash = sorted(set(ex) & set(ESTIMATORS))
        if clash:
            raise ValueError(f"The 'explainers' setting reuses the built-in name(s) {clash}; "
                             "give your explain functions other names.")
    if config.retrainer is not None:
        r = config.retrainer
        if isinstance(r, type) or not (callable(getattr(r, "fit", None))
                                       and callable(getattr(r, "score", None))):
            raise _type_error("retrainer", "a retrainer instance with fit(x, y, *, seed) and "
                              "score(model, x, y) (see quantus_roar.Retrainer)", r)
        recipe = [k for k in ("epochs", "batch_size", "lr", "optimizer", "weight_decay",
                              "momentum", "schedule", "label_smoothing", "validation_split",
                              "augment") if getattr(config, k) is not None]
        if recipe:
            raise ValueError(f"The 'retrainer' setting replaces the recipe, but {recipe} "
                             "is set too; set the recipe on your retrainer instead.")
    for name, rule in _RECIPE_SETTINGS.items():
        _checked(config, name, *rule)
    if _is_data(config.dataset) and config.stream:
        raise ValueError("The 'stream' setting streams a dataset read from files; arrays "
                         "given as a BenchmarkData are already in memory. Leave stream off.")
    aug = config.augment
    if aug is not None and not callable(aug) and not _is_spec(aug):
        raise _type_error("augment", "a 'package.module:function' spec (or, from Python, a "
                          "function)", aug)


# What each plain setting must be, declared once (quantus_roar._validation's constraints),
# with the words that say so in its error message, in the order they are checked. The
# constraint decides whether a value is allowed; the message names the setting (the key of
# a TOML file) and what is allowed.
_UNIT = "a finite number in [0, 1)"
_RECIPE_SETTINGS: dict[str, tuple[Constraint, str]] = {
    "weight_decay": (Real(0.0, optional=True), "a finite number >= 0"),
    "momentum": (Real(0.0, 1.0, open="high", optional=True), _UNIT),
    "label_smoothing": (Real(0.0, 1.0, open="high", optional=True), _UNIT),
    "validation_split": (Real(0.0, 1.0, open="high", optional=True), _UNIT),
    "schedule": (Choice(_SCHEDULES, optional=True), f"one of {list(_SCHEDULES)}"),
}
_SETTINGS: dict[str, tuple[Constraint, str]] = {
    "target": (Choice(TARGETS), f"one of {list(TARGETS)}"),
    "granularity": (Choice(GRANULARITIES), f"one of {list(GRANULARITIES)}"),
    "reduce": (Choice(REDUCES), f"one of {list(REDUCES)}"),
    "imputer": (Choice(IMPUTERS), f"one of {list(IMPUTERS)}"),
    "layer_order": (Choice(LAYER_ORDERS), f"one of {list(LAYER_ORDERS)}"),
    "retrains": (Int(1), "a positive integer"),
    "sanity_seeds": (Int(1), "a positive integer"),
    "leakage_retrains": (Int(1, optional=True), "a positive integer"),
    "model_seeds": (Int(1, optional=True), "a positive integer"),
    "model_seed": (Int(0, RUN_MAX_SEED, optional=True), "an integer in [0, 2**32)"),
    "max_epochs": (Int(1), "a positive integer"),
    "explain_batch_size": (Int(1), "a positive integer"),
    "sanity_samples": (Int(0), "an integer >= 0 (0: every test sample)"),
    "epochs": (Int(1, optional=True), "a positive integer"),
    "batch_size": (Int(1, optional=True), "a positive integer"),
    "image_size": (Int(1, optional=True), "a positive integer"),
    "seed": (Int(0, RUN_MAX_SEED), "an integer in [0, 2**32), the seeds numpy's legacy "
             "generator and scikit-learn accept (the datasets are loaded and split with them)"),
    "min_train_accuracy": (Real(0.0, 1.0, open="low"), "a number in (0, 1]"),
    "optimizer": (Choice(("adam", "sgd"), optional=True), "'adam' or 'sgd'"),
    "lr": (Real(0.0, open="low", optional=True), "a finite number > 0"),
}
# The types a constraint is given, and how: a bool is never a number, a float never an
# integer (however whole), whatever the constraint itself would accept.
_KINDS: dict[type, tuple[Any, Any]] = {Int: (_is_int, int), Real: (_is_number, float)}


def _checked(config: RunConfig, name: str, constraint: Constraint, what: str) -> Any:
    """The setting ``name`` as stored: an integer setting as an int, any other as given
    (a number keeps its type, which the fingerprint shows)."""
    value = getattr(config, name)
    if value is None and constraint.optional:
        return None
    is_kind, cast = _KINDS.get(type(constraint), (lambda v: True, lambda v: v))
    if not is_kind(value):
        raise _type_error(name, what + (" (or left out)" if constraint.optional else ""), value)
    try:
        cleaned = constraint(cast(value), name, "RunConfig")
    except (ValueError, OverflowError):
        raise ValueError(f"The '{name}' setting must be {what}. Got {value!r} "
                         "instead.") from None
    return cleaned if isinstance(constraint, Int) else value


def _check_sources(config: RunConfig) -> None:
    """The dataset and the model: a non-empty name (or, from Python, arrays or a factory)."""
    for name, example in (("dataset", "'digits' or 'imagefolder:/data/images'"),
                          ("model", "'smallcnn' or 'package.module:factory'")):
        value = getattr(config, name)
        if (name == "model" and callable(value)) or (name == "dataset" and _is_data(value)):
            continue
        if not isinstance(value, str) or not value.strip():
            raise _type_error(name, f"a non-empty string such as {example}", value)


def _estimators(config: RunConfig) -> tuple[str, ...]:
    """The estimators named (default: every built-in one, then every one of explainers),
    checked, each with an attributions file of its own."""
    user = tuple(config.explainers or {})
    given = ((*ESTIMATORS, DEFAULT_FIXED_PRIOR, *user) if config.estimators is None
             else config.estimators)
    names = _names("estimators", given, _EstimatorNames((*ESTIMATORS, *user)), "estimator")
    stems: dict[str, str] = {}
    for e in names:  # one attributions file each (case-insensitive file systems)
        other = stems.setdefault(file_name(e).lower(), e)
        if other != e:
            raise ValueError(f"The estimators {other!r} and {e!r} would share one "
                             "attributions file (their names differ only in upper and "
                             "lower case); give them names that differ otherwise.")
    return names


def _imputers(config: RunConfig) -> tuple[str, ...] | None:
    """The imputers of a sweep, checked; ``imputer`` must then be left alone or be the
    first of them (the fill of the figures and the single-fill summaries)."""
    if config.imputers is None:
        return None
    names = _names("imputers", config.imputers, IMPUTERS, "imputer")
    if config.imputer not in ("channel_mean", names[0]):
        raise ValueError(f"The 'imputer' setting ({config.imputer!r}) and the 'imputers' "
                         f"setting ({list(names)}) disagree; give one, or list "
                         f"{config.imputer!r} first in 'imputers'.")
    return names


def _check_device(device: Any) -> None:
    if device is None:
        return
    if not isinstance(device, str):
        raise _type_error("device", _DEVICES, device)
    if not _DEVICE.fullmatch(device):
        raise ValueError(f"The 'device' setting must be {_DEVICES}, or left out for "
                         f"CUDA when available. Got {device!r} instead.")


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides the numbers of a benchmark run.

    Every field is part of the run's fingerprint (with the data's hash, the
    device type and the library versions), so the results in one output
    folder always come from one configuration.

    Attributes
    ----------
    dataset : str or BenchmarkData
        ``digits``, ``synthetic``, ``mnist:ROOT``, ``cifar10:ROOT`` or
        ``imagefolder:ROOT`` (see :mod:`quantus_roar.benchmark.datasets`); from
        Python also your own arrays as a
        :class:`~quantus_roar.benchmark.datasets.BenchmarkData`
        (``BenchmarkData.from_arrays``).
    model : str or callable
        ``smallcnn``, ``smallresnet`` or ``package.module:factory``, a callable
        taking ``in_channels``, ``n_classes`` and ``image_size`` keywords (from
        Python the callable itself).
        ``package.module:factory`` imports that module and so runs its code, as
        any Python import does: name only your own code. The module is looked
        up on the import path, which with ``python -m quantus_roar`` starts
        with the current folder. ``smallcnn`` and ``smallresnet`` import
        nothing.
    estimators : tuple of str
        Names of :data:`quantus_roar.ESTIMATORS`, names of ``explainers``, and
        ``package.module:function`` specs of your own explain functions
        (imported like model factories). Default: every built-in estimator,
        then every one of ``explainers``.
    explainers : dict of str to callable, optional
        From Python: your own explain functions by name, with Quantus'
        signature ``f(model=..., inputs=..., targets=..., **kwargs)`` returning
        attributions of the shape of ``inputs`` (or one channel); a ``device``
        keyword is passed when the function takes one. The name (and the
        function's ``module:qualname``) enters the fingerprint.
    retrainer : Retrainer, optional
        From Python: the object that trains every model of the run (any
        :class:`~quantus_roar.Retrainer`), in place of a
        :class:`~quantus_roar.TorchRetrainer` with the recipe settings below.
        Its class and public settings enter the fingerprint.
    metrics : tuple of str
        Any of :data:`METRICS`.
    percentages : tuple of float
        Removed (ROAR) or kept (KAR) shares, each in (0, 100].
    retrains : int
        Retrains per (estimator, metric, percentage).
    epochs, batch_size, lr, optimizer, weight_decay, momentum, schedule
        The training recipe, with ``label_smoothing``, ``validation_split``
        and ``augment`` (:class:`~quantus_roar.TorchRetrainer`); ``None``
        keeps its default. ``schedule`` is ``"onecycle"``, ``"cosine"``,
        ``"step"`` or ``"none"``; ``augment`` a ``package.module:function``
        spec (or, from Python, the function) called as ``augment(x_batch,
        generator)``.
    target : {"predicted", "label"}
        The class every attribution explains: the explained model's predicted
        class (default, as the original ROAR code), or the true label. With
        ``"label"`` the removal mask of a test image can encode its label.
    device : str or None
        ``cpu``, ``cuda`` or ``cuda:N``; default CUDA when available.
    seed : int
        Every seed of the run derives from it; in [0, 2**32) (numpy's legacy
        generator and scikit-learn, which load and split the data, take no
        larger seed).
    granularity, reduce, imputer
        The removal rule (:mod:`quantus_roar.removal`).
    imputers : tuple of str, optional
        A sweep over fills, e.g. ``("channel_mean", "zero", "noisy_linear")``:
        every ROAR, KAR and deletion cell is computed once per imputer and
        stored under ``"<metric>@<imputer>"``; the report ranks the
        estimators per fill and says how far the rankings agree. The first
        is the fill of the figures. ``imputer`` must then be left alone or
        be the first.
    layer_order : str
        Model randomisation order.
    similarities : tuple of str
        Similarities of the sanity checks.
    sanity_seeds : int
        Repeats of each sanity check (randomised weights, permuted labels).
    leakage_retrains : int, optional
        Retrains per (estimator, percentage) of mask leakage; default
        ``min(retrains, 2)``. Its intervals resample the test samples as well
        as these seeds, and the masks of a control without class information
        give chance on any seed, so two seeds suffice for the verdict at a
        fraction of ROAR's cost.
    model_seed : int, optional
        The seed of the explained model, its attributions, the retrains and
        the sanity checks; default ``seed``. ``seed`` alone loads and splits
        the data, so two runs that differ only in ``model_seed`` share the
        data and differ in everything trained.
    model_seeds : int, optional
        Repeats of the whole pipeline over the explained model (default 1: no
        repeat). Repeat ``k`` (1, 2, ...) is the same run with ``model_seed``
        the run's model seed + ``k``: a new explained model, new attributions,
        new retrains, on the same data. Each is a run of its own in
        ``model-seeds/<model_seed>/`` (its own store, resumable, with its own
        report); the report of the main run adds how each estimator's AUC and
        rank vary over the repeats. Not part of the fingerprint: adding
        repeats keeps the cells already stored.
    sanity_samples : int
        Test samples explained in the sanity checks (0: all).
    min_train_accuracy, max_epochs : float, int
        Data randomisation: fit the permuted labels to this training accuracy,
        training at most this many epochs.
    explain_batch_size : int
    stream : bool
        Keep inputs and attributions in memory-mapped ``.npy`` files and
        retrain through a DataLoader, so memory is bounded by the batch.
    image_size : int or None
        ImageFolder only: resize images to this size.

    Raises
    ------
    ValueError
        For a value out of range or not among the allowed names (duplicates
        included); the message names the setting and what is allowed.
    SettingTypeError
        A ``TypeError`` for a value of the wrong type: a string or a float where
        an integer is expected, a bool where a number is, a string where a
        boolean is.
    """

    dataset: str = "digits"
    model: str = "smallcnn"
    estimators: tuple[str, ...] | None = None
    metrics: tuple[str, ...] = METRICS
    percentages: tuple[float, ...] = (10, 30, 50, 70, 90)
    retrains: int = 5
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    target: str = "predicted"
    device: str | None = None
    seed: int = 0
    granularity: str = "pixel"
    reduce: str = "sum_abs"
    imputer: str = "channel_mean"
    layer_order: str = "top_down"
    similarities: tuple[str, ...] = ("spearman_abs", "spearman", "ssim", "hog")
    sanity_seeds: int = 1
    sanity_samples: int = 0
    min_train_accuracy: float = 0.95
    max_epochs: int = 100
    explain_batch_size: int = 256
    stream: bool = False
    image_size: int | None = None
    explainers: Any = None
    retrainer: Any = None
    weight_decay: float | None = None
    momentum: float | None = None
    schedule: str | None = None
    label_smoothing: float | None = None
    validation_split: float | None = None
    augment: Any = None
    imputers: tuple[str, ...] | None = None
    leakage_retrains: int | None = None
    model_seed: int | None = None
    model_seeds: int | None = None

    def __post_init__(self) -> None:
        def setattr_(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        _check_user_work(self)
        _check_sources(self)
        setattr_("estimators", _estimators(self))
        setattr_("metrics", _names("metrics", self.metrics, METRICS, "metric"))
        setattr_("similarities", _names("similarities", self.similarities, SIMILARITIES,
                                        "similarity"))
        setattr_("percentages", _percentages(self.percentages))
        for name, rule in _SETTINGS.items():
            setattr_(name, _checked(self, name, *rule))
        if not isinstance(self.stream, (bool, np.bool_)):
            raise _type_error("stream", "true or false (a boolean, not a string)", self.stream)
        setattr_("stream", bool(self.stream))
        _check_device(self.device)
        setattr_("imputers", _imputers(self))

    # ------------------------------------------------------------------ building

    @classmethod
    def quick(cls, **overrides: Any) -> RunConfig:
        """The ``--quick`` preset (about 30 s on two CPU cores on digits), with overrides."""
        return cls(**{**_QUICK, **overrides})

    @classmethod
    def from_toml(cls, path: str | Path, *, quick: bool = False, **overrides: Any) -> RunConfig:
        """Read a ``[run]`` table (or top-level keys) from a TOML file.

        The file's values override the defaults (the quick preset's with
        ``quick=True`` or ``quick = true`` in the file); ``overrides`` override
        the file.

        Raises
        ------
        FileNotFoundError
            For a missing file.
        ValueError
            For a file that is not UTF-8 TOML, unknown keys, or bad values.
        SettingTypeError
            A ``TypeError`` for a value of the wrong type (a string for a
            number, a float for an integer...); the message names the key.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"Config file '{path}' does not exist.")
        if not path.is_file():
            raise ValueError(f"Config file '{path}' is not a file; pass a TOML file with a "
                             "[run] table.")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"Config file '{path}' is not valid TOML: it is not UTF-8 text "
                             f"(byte {err.object[err.start]:#04x} at position {err.start}). "
                             "Pass a TOML text file with a [run] table.") from None
        except OSError as err:
            raise ValueError(f"Cannot read config file '{path}': "
                             f"{err.strerror or err}.") from None
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"Config file '{path}' is not valid TOML: {err}.") from None
        if "run" in doc:
            values = doc["run"]
            if not isinstance(values, dict):
                raise _type_error("run", f"a table in '{path}' ([run] on a line of its own, "
                                  "then key = value lines)", values)
            outside = sorted(set(doc) - {"run"})
            if outside:
                raise ValueError(f"Config file '{path}' has key(s) {outside} outside its [run] "
                                 "table; put every setting under [run].")
        else:
            values = doc
        values = dict(values)
        in_file = values.pop("quick", False)
        if not isinstance(in_file, bool):
            raise _type_error("quick", f"true or false in '{path}' (a TOML boolean, not a "
                              "string)", in_file)
        quick = in_file or quick
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Config file '{path}' has unknown key(s) {unknown}. Known keys: "
                             f"{sorted(known | {'quick'})}.")
        build = cls.quick if quick else cls
        try:  # the file's values alone first, so that an error names the file
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", QuantusRoarWarning)
                build(**values)
        except (SettingTypeError, ValueError) as err:
            raise type(err)(f"{err} (in config file '{path}')") from None
        return build(**{**values, **overrides})

    # ------------------------------------------------------------------ identity

    @property
    def pipeline_seed(self) -> int:
        """The seed everything trained derives from: ``model_seed``, else ``seed``."""
        return self.seed if self.model_seed is None else self.model_seed

    @property
    def leakage_seeds(self) -> int:
        """Retrains per mask-leakage cell: ``leakage_retrains``, else ``min(retrains, 2)``,
        never more than ``retrains``."""
        return min(self.retrains, self.leakage_retrains or 2)

    def repeat(self, k: int) -> RunConfig:
        """Repeat ``k`` of :attr:`model_seeds`: ``model_seed`` moved on by ``k`` (modulo
        2**32), one repeat itself."""
        from dataclasses import replace

        return replace(self, model_seed=(self.pipeline_seed + k) % RUN_MAX_SEED,
                       model_seeds=None)

    def removal(self, order: str, imputer: str | None = None) -> Removal:
        """The run's removal rule for ``order`` (``"remove_top"``: ROAR and deletion,
        ``"keep_top"``: KAR), with ``imputer`` (default the run's ``imputer``)."""
        return Removal(order=order, granularity=self.granularity,  # type: ignore[arg-type]
                       reduce=self.reduce,  # type: ignore[arg-type]
                       imputer=imputer or self.imputer, seed=self.pipeline_seed)

    @property
    def fills(self) -> tuple[str, ...]:
        """The imputers of the run: ``imputers``, or the one ``imputer``."""
        return self.imputers or (self.imputer,)

    def keyed(self, metric: str) -> tuple[str, ...]:
        """The store's metric names of one of :data:`METRICS`: one per imputer
        (``"roar@zero"``) for the metrics that fill, when ``imputers`` is set; else the
        name itself."""
        if self.imputers is None or metric not in FILLED_METRICS:
            return (metric,)
        return tuple(f"{metric}@{fill}" for fill in self.imputers)

    def metric_removal(self, metric: str) -> Removal:
        """The removal rule of a stored metric name (``"kar"``, ``"roar@zero"``): KAR's
        keeps, the others remove, with the name's imputer (else ``imputer``), and mask
        leakage trains on the masks themselves (:meth:`Removal.mask_only`)."""
        base, _, fill = metric.partition("@")
        rule = self.removal("keep_top" if base in ("kar", "kar-noretrain") else "remove_top",
                            fill or None)
        return rule.mask_only() if base == "mask-leakage" else rule

    def recipe(self) -> dict[str, Any]:
        """The recipe settings given, as keyword arguments of :class:`~quantus_roar.TorchRetrainer`
        (an ``augment`` spec still as its string)."""
        names = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "momentum",
                 "schedule", "label_smoothing", "validation_split", "augment")
        out = {k: getattr(self, k) for k in names if getattr(self, k) is not None}
        if out.get("schedule") == "none":
            out["schedule"] = None
        return out

    def to_dict(self) -> dict[str, Any]:
        """Every setting as plain values; Python objects by ``module:qualname`` (and a
        retrainer's public settings). Settings added later are left out while unset, so
        the fingerprints of earlier runs stay valid."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for k in _LATER:
            if d[k] is None:
                del d[k]
        return {k: _describe(v) for k, v in d.items()}

    def to_toml(self) -> str:
        """The configuration as a ``[run]`` table that :meth:`from_toml` reads back.

        Python objects (explain functions, a retrainer, a model factory or a
        dataset given from Python) cannot be written; they are listed as
        comments by name, and must be passed again.
        """
        lines = ["[run]"]
        objects = []
        for key, value in self.to_dict().items():
            raw = getattr(self, key)
            if value is None:
                continue
            if key in ("explainers", "retrainer") or (
                    key in ("model", "dataset", "augment") and not isinstance(raw, str)):
                objects.append(f"# {key}: {json.dumps(value)} (a Python object)")
                continue
            lines.append(f"{key} = {json.dumps(value)}")
        return "\n".join([*objects, *lines]) + "\n"


# Settings added after the first release: absent from to_dict while unset.
_LATER = ("explainers", "retrainer", "weight_decay", "momentum", "schedule", "label_smoothing",
          "validation_split", "augment", "imputers", "leakage_retrains", "model_seed",
          "model_seeds")
# Settings that do not decide the numbers of the run's own cells.
_OUTSIDE_FINGERPRINT = ("model_seeds",)


def fingerprint(config: RunConfig, data_digest: str, device_type: str) -> tuple[str, dict]:
    """Hash of everything that decides a run's numbers, and its readable description."""
    from importlib.metadata import PackageNotFoundError, version

    def _version(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:  # pragma: no cover - not installed as a distribution
            return "unknown"

    description = {
        **{k: v for k, v in config.to_dict().items() if k not in _OUTSIDE_FINGERPRINT},
        "device": device_type,
        "threads": THREADS_PER_TASK,  # the thread policy: the bits of CPU sums depend on it
        # how a curve's retrains are grouped: dropout and augmentation draws are per group
        "models_per_task": CPU_MODELS_PER_TASK,
        "data_digest": data_digest,
        "versions": {name: _version(name) for name in
                     ("quantus-roar", "torch", "numpy", "captum", "quantus")},
    }
    blob = json.dumps(description, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest(), description
