"""Quantus metrics: thin adapters over :mod:`quantus_roar.curves`."""

from quantus_roar.metrics.deletion import KARNoRetrain, ROARNoRetrain
from quantus_roar.metrics.randomisation import DataRandomisation, ModelRandomisation
from quantus_roar.metrics.roar import KAR, ROAR, MaskLeakage

__all__ = [
    "KAR", "ROAR", "DataRandomisation", "KARNoRetrain", "MaskLeakage", "ModelRandomisation",
    "ROARNoRetrain",
]
