"""Exceptions and warnings raised by quantus_roar, all in one place."""

from __future__ import annotations

__all__ = ["FunctionalReLUError", "NotAClassifierError", "NotResettableError", "QuantusRoarWarning",
           "StorageError"]


class QuantusRoarWarning(UserWarning):
    """Advice about a parameter choice or a result that needs a second look."""


class NotResettableError(TypeError):
    """A module owns parameters but cannot be re-initialised with ``reset_parameters``."""


class StorageError(OSError):
    """A file of the package could not be written or read; the message names the file and
    how to recover (free space, another ``--out`` folder, ``--fresh``)."""


class NotAClassifierError(ValueError):
    """A model does not return one row of class scores per input, shape (N, n_classes)."""


class FunctionalReLUError(TypeError):
    """A method that changes or prunes activations (Guided Backprop, PruneGrad) was asked
    of a model that applies them as functions (``F.relu``) or has none."""
