"""The configuration of a benchmark run, from defaults, a TOML file and flags."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import re
import sys
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from quantus_roar._validation import MAX_SEED, check_percentages
from quantus_roar.exceptions import QuantusRoarWarning
from quantus_roar.explainers import ESTIMATORS, TARGETS
from quantus_roar.randomisation import LAYER_ORDERS
from quantus_roar.removal import GRANULARITIES, IMPUTERS, REDUCES, Removal
from quantus_roar.similarity import SIMILARITIES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["METRICS", "RunConfig", "SettingTypeError"]

#: The runner's metrics, in the order they are computed per estimator.
METRICS: tuple[str, ...] = ("roar-noretrain", "kar-noretrain", "roar", "kar",
                            "model-randomisation", "data-randomisation")

# The quick preset: the four estimators that span the paper's outcomes, three
# percentages, two retrains, a sample of the test set for the sanity checks.
_QUICK: dict[str, Any] = {
    "estimators": ("Gradient", "GuidedBackprop_SmoothGrad", "Random", "Sobel"),
    "percentages": (10, 50, 90),
    "retrains": 2,
    "sanity_samples": 100,
    "max_epochs": 48,
}


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
    return tuple(ps)


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides the numbers of a benchmark run.

    Every field is part of the run's fingerprint (with the data's hash, the
    device type and the library versions), so the results in one output
    folder always come from one configuration.

    Attributes
    ----------
    dataset : str
        ``digits``, ``synthetic``, ``mnist:ROOT``, ``cifar10:ROOT`` or
        ``imagefolder:ROOT`` (see :mod:`quantus_roar.benchmark.datasets`).
    model : str
        ``smallcnn``, ``smallresnet`` or ``package.module:factory``, a callable
        taking ``in_channels``, ``n_classes`` and ``image_size`` keywords.
        ``package.module:factory`` imports that module and so runs its code, as
        any Python import does: name only your own code. The module is looked
        up on the import path, which with ``python -m quantus_roar`` starts
        with the current folder. ``smallcnn`` and ``smallresnet`` import
        nothing.
    estimators : tuple of str
        Names of :data:`quantus_roar.ESTIMATORS`.
    metrics : tuple of str
        Any of :data:`METRICS`.
    percentages : tuple of float
        Removed (ROAR) or kept (KAR) shares, each in (0, 100].
    retrains : int
        Retrains per (estimator, metric, percentage).
    epochs, batch_size, lr, optimizer
        The training recipe (:class:`~quantus_roar.TorchRetrainer`); ``None``
        keeps its default.
    target : {"predicted", "label"}
        The class every attribution explains: the explained model's predicted
        class (default, as the original ROAR code), or the true label. With
        ``"label"`` the removal mask of a test image can encode its label.
    device : str or None
        ``cpu``, ``cuda`` or ``cuda:N``; default CUDA when available.
    seed : int
        Every seed of the run derives from it.
    granularity, reduce, imputer
        The removal rule (:mod:`quantus_roar.removal`).
    layer_order : str
        Model randomisation order.
    similarities : tuple of str
        Similarities of the sanity checks.
    sanity_seeds : int
        Repeats of each sanity check (randomised weights, permuted labels).
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
    estimators: tuple[str, ...] = tuple(ESTIMATORS)
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

    def __post_init__(self) -> None:
        def setattr_(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        for name in ("dataset", "model"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise _type_error(name, "a non-empty string" + (
                    " such as 'digits' or 'imagefolder:/data/images'" if name == "dataset"
                    else " such as 'smallcnn' or 'package.module:factory'"), value)
        setattr_("estimators", _names("estimators", self.estimators, ESTIMATORS, "estimator"))
        setattr_("metrics", _names("metrics", self.metrics, METRICS, "metric"))
        setattr_("similarities", _names("similarities", self.similarities, SIMILARITIES,
                                        "similarity"))
        ps = _percentages(self.percentages)
        check_percentages(ps, "RunConfig")  # range
        setattr_("percentages", ps)
        if max(ps) <= 1.0:
            intended = ",".join(f"{p * 100:g}" for p in ps)
            warnings.warn(f"The 'percentages' setting {list(ps)} removes at most 1 % of the "
                          "features: percentages are in (0, 100], not fractions. If you meant "
                          f"{intended} %, pass --percentages {intended}.", QuantusRoarWarning,
                          stacklevel=3)
        for name, allowed in (("target", TARGETS), ("granularity", GRANULARITIES),
                              ("reduce", REDUCES),
                              ("imputer", IMPUTERS), ("layer_order", LAYER_ORDERS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(f"The '{name}' setting must be one of {list(allowed)}. Got "
                                 f"{value!r} instead.")
        for name, low, optional in (("retrains", 1, False), ("sanity_seeds", 1, False),
                                    ("max_epochs", 1, False), ("explain_batch_size", 1, False),
                                    ("sanity_samples", 0, False), ("epochs", 1, True),
                                    ("batch_size", 1, True), ("image_size", 1, True)):
            value = getattr(self, name)
            if optional and value is None:
                continue
            what = "a positive integer" if low == 1 else "an integer >= 0 (0: every test sample)"
            if not _is_int(value):
                raise _type_error(name, what + (" (or left out)" if optional else ""), value)
            if value < low:
                raise ValueError(f"The '{name}' setting must be {what}. Got {value!r} instead.")
            setattr_(name, int(value))
        if not _is_int(self.seed):
            raise _type_error("seed", "an integer in [0, 2**63)", self.seed)
        if not 0 <= self.seed < MAX_SEED:
            raise ValueError(f"The 'seed' setting must be an integer in [0, 2**63). Got "
                             f"{self.seed!r} instead.")
        setattr_("seed", int(self.seed))
        if not _is_number(self.min_train_accuracy):
            raise _type_error("min_train_accuracy", "a number in (0, 1]",
                              self.min_train_accuracy)
        if not 0.0 < self.min_train_accuracy <= 1.0:
            raise ValueError("The 'min_train_accuracy' setting must be in (0, 1]. Got "
                             f"{self.min_train_accuracy!r} instead.")
        if self.optimizer not in (None, "adam", "sgd"):
            raise ValueError(f"The 'optimizer' setting must be 'adam' or 'sgd'. Got "
                             f"{self.optimizer!r} instead.")
        if self.lr is not None:
            if not _is_number(self.lr):
                raise _type_error("lr", "a number > 0 (or left out)", self.lr)
            if not (self.lr > 0 and math.isfinite(self.lr)):
                raise ValueError(f"The 'lr' setting must be a finite number > 0. Got "
                                 f"{self.lr!r} instead.")
        if not isinstance(self.stream, (bool, np.bool_)):
            raise _type_error("stream", "true or false (a boolean, not a string)", self.stream)
        setattr_("stream", bool(self.stream))
        if self.device is not None:
            if not isinstance(self.device, str):
                raise _type_error("device", _DEVICES, self.device)
            if not _DEVICE.fullmatch(self.device):
                raise ValueError(f"The 'device' setting must be {_DEVICES}, or left out for "
                                 f"CUDA when available. Got {self.device!r} instead.")

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

    def removal(self, order: str) -> Removal:
        """The run's removal rule for ``order`` (``"remove_top"``: ROAR and deletion,
        ``"keep_top"``: KAR)."""
        return Removal(order=order, granularity=self.granularity,  # type: ignore[arg-type]
                       reduce=self.reduce, imputer=self.imputer,  # type: ignore[arg-type]
                       seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_toml(self) -> str:
        """The configuration as a ``[run]`` table that :meth:`from_toml` reads back."""
        lines = ["[run]"]
        for key, value in self.to_dict().items():
            if value is None:
                continue
            lines.append(f"{key} = {json.dumps(value)}")
        return "\n".join(lines) + "\n"


def fingerprint(config: RunConfig, data_digest: str, device_type: str) -> tuple[str, dict]:
    """Hash of everything that decides a run's numbers, and its readable description."""
    from importlib.metadata import PackageNotFoundError, version

    def _version(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:  # pragma: no cover - not installed as a distribution
            return "unknown"

    description = {
        **config.to_dict(),
        "device": device_type,
        "data_digest": data_digest,
        "versions": {name: _version(name) for name in
                     ("quantus-roar", "torch", "numpy", "captum", "quantus")},
    }
    blob = json.dumps(description, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest(), description
