"""Retraining: the protocol the metrics call, and a fast PyTorch implementation."""

from quantus_roar.retrain.allocator import keep_freed_memory
from quantus_roar.retrain.base import (
    Retrainer,
    RetrainerBase,
    RetrainJob,
    fit_score_many,
    fit_task,
)
from quantus_roar.retrain.recipe import Recipe
from quantus_roar.retrain.torch_retrainer import TorchRetrainer

__all__ = ["Recipe", "RetrainJob", "Retrainer", "RetrainerBase", "TorchRetrainer",
           "fit_score_many", "fit_task", "keep_freed_memory"]
