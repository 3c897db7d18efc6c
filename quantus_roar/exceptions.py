"""Exceptions and warnings raised by quantus_roar, all in one place."""

from __future__ import annotations

__all__ = ["NotResettableError", "QuantusRoarWarning"]


class QuantusRoarWarning(UserWarning):
    """Advice about a parameter choice or a result that needs a second look."""


class NotResettableError(TypeError):
    """A module owns parameters but cannot be re-initialised with ``reset_parameters``."""
