"""The configuration of a benchmark run, from defaults, a TOML file and flags."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from quantus_roar._validation import check_percentages
from quantus_roar.exceptions import QuantusRoarWarning
from quantus_roar.explainers import ESTIMATORS, TARGETS
from quantus_roar.randomisation import LAYER_ORDERS
from quantus_roar.removal import GRANULARITIES, IMPUTERS, REDUCES
from quantus_roar.similarity import SIMILARITIES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["METRICS", "RunConfig"]

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


def _check_names(values: tuple[str, ...], allowed: Any, what: str) -> None:
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise ValueError(f"Unknown {what}(s) {unknown or 'none given'}. Choose from "
                         f"{list(allowed)}.")


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
        owner = "RunConfig"
        for name in ("estimators", "metrics", "percentages", "similarities"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(v.strip() for v in value.split(",") if v.strip())
            object.__setattr__(self, name, tuple(value))
        _check_names(self.estimators, ESTIMATORS, "estimator")
        _check_names(self.metrics, METRICS, "metric")
        _check_names(self.similarities, SIMILARITIES, "similarity")
        ps = check_percentages(self.percentages, owner)
        object.__setattr__(self, "percentages",
                           tuple(int(p) if float(p).is_integer() else float(p) for p in ps))
        if max(ps) <= 1.0:
            intended = ",".join(f"{p * 100:g}" for p in ps)
            warnings.warn(f"The 'percentages' setting {list(ps)} removes at most 1 % of the "
                          "features: percentages are in (0, 100], not fractions. If you meant "
                          f"{intended} %, pass --percentages {intended}.", QuantusRoarWarning,
                          stacklevel=3)
        for name, allowed in (("target", TARGETS), ("granularity", GRANULARITIES),
                              ("reduce", REDUCES),
                              ("imputer", IMPUTERS), ("layer_order", LAYER_ORDERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"The '{name}' setting must be one of {list(allowed)}. Got "
                                 f"{getattr(self, name)!r} instead.")
        for name in ("retrains", "sanity_seeds", "max_epochs", "explain_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"The '{name}' setting must be a positive integer. Got "
                                 f"{value!r} instead.")
        for name in ("epochs", "batch_size", "image_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"The '{name}' setting must be a positive integer. Got "
                                 f"{value!r} instead.")
        if not isinstance(self.sanity_samples, int) or self.sanity_samples < 0:
            raise ValueError("The 'sanity_samples' setting must be an integer >= 0 (0: every "
                             f"test sample). Got {self.sanity_samples!r} instead.")
        if not 0.0 < self.min_train_accuracy <= 1.0:
            raise ValueError("The 'min_train_accuracy' setting must be in (0, 1]. Got "
                             f"{self.min_train_accuracy!r} instead.")
        if self.optimizer not in (None, "adam", "sgd"):
            raise ValueError(f"The 'optimizer' setting must be 'adam' or 'sgd'. Got "
                             f"{self.optimizer!r} instead.")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"The 'lr' setting must be > 0. Got {self.lr!r} instead.")

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
        FileNotFoundError, ValueError
            For a missing file, invalid TOML or unknown keys.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Config file '{path}' does not exist.")
        try:
            doc = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"Config file '{path}' is not valid TOML: {err}") from err
        values = doc.get("run", doc)
        quick = bool(values.pop("quick", False)) or quick
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Config file '{path}' has unknown key(s) {unknown}. Known keys: "
                             f"{sorted(known)}.")
        merged = {**values, **overrides}
        return cls.quick(**merged) if quick else cls(**merged)

    # ------------------------------------------------------------------ identity

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
