"""quantus-roar: ROAR, KAR, no-retrain deletion and sanity checks as Quantus metrics."""

from quantus_roar.exceptions import NotResettableError, QuantusRoarWarning
from quantus_roar.removal import channel_means, feature_ranks, impute, removal_counts, removal_masks

__version__ = "0.1.0.dev0"

__all__ = [
    "NotResettableError",
    "QuantusRoarWarning",
    "__version__",
    "channel_means",
    "feature_ranks",
    "impute",
    "removal_counts",
    "removal_masks",
]
