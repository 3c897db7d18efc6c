"""quantus-roar: ROAR, KAR, no-retrain deletion and sanity checks as Quantus metrics."""

from __future__ import annotations

import importlib
from typing import Any

# Names are imported on first use (PEP 562), so that a worker process that needs only
# the core (removal, retraining) does not pay for Quantus, captum and the metrics.
_HOMES = {
    "load_digits_data": "data", "make_synthetic": "data",
    "NotResettableError": "exceptions", "QuantusRoarWarning": "exceptions",
    "FunctionalReLUError": "exceptions",
    "ESTIMATORS": "explainers", "explain": "explainers", "explain_ensembles": "explainers",
    "KAR": "metrics", "ROAR": "metrics", "DataRandomisation": "metrics",
    "KARNoRetrain": "metrics", "MaskLeakage": "metrics", "ModelRandomisation": "metrics",
    "ROARNoRetrain": "metrics",
    "SmallCNN": "models", "SmallResNet": "models",
    "Removal": "removal", "channel_means": "removal", "feature_ranks": "removal",
    "impute": "removal", "removal_counts": "removal", "removal_masks": "removal",
    "Recipe": "retrain", "Retrainer": "retrain", "RetrainJob": "retrain",
    "TorchRetrainer": "retrain",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'quantus_roar' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"quantus_roar.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__version__ = "0.1.0.dev0"

__all__ = [
    "ESTIMATORS",
    "KAR",
    "ROAR",
    "DataRandomisation",
    "FunctionalReLUError",
    "KARNoRetrain",
    "MaskLeakage",
    "ModelRandomisation",
    "NotResettableError",
    "QuantusRoarWarning",
    "ROARNoRetrain",
    "Recipe",
    "Removal",
    "RetrainJob",
    "Retrainer",
    "SmallCNN",
    "SmallResNet",
    "TorchRetrainer",
    "__version__",
    "channel_means",
    "explain",
    "explain_ensembles",
    "feature_ranks",
    "impute",
    "load_digits_data",
    "make_synthetic",
    "removal_counts",
    "removal_masks",
]
