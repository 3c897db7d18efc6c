"""quantus-roar: ROAR, KAR, no-retrain deletion and sanity checks as Quantus metrics."""

from quantus_roar.data import load_digits_data, make_synthetic
from quantus_roar.exceptions import NotResettableError, QuantusRoarWarning
from quantus_roar.explainers import ESTIMATORS, FunctionalReLUError, explain
from quantus_roar.metrics import (
    KAR,
    ROAR,
    DataRandomisation,
    KARNoRetrain,
    MaskLeakage,
    ModelRandomisation,
    ROARNoRetrain,
)
from quantus_roar.models import SmallCNN, SmallResNet
from quantus_roar.removal import (
    Removal,
    channel_means,
    feature_ranks,
    impute,
    removal_counts,
    removal_masks,
)
from quantus_roar.retrain import Recipe, Retrainer, RetrainJob, TorchRetrainer

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
    "feature_ranks",
    "impute",
    "load_digits_data",
    "make_synthetic",
    "removal_counts",
    "removal_masks",
]
