"""Conditions of ModelMesh mode beyond the runtime's own (``runtime.errors``); the gRPC edge
(``runtime.modelmesh.servicer``) maps each to a status code."""

from __future__ import annotations

from runtime.errors import DeftError


class ModelFilesMissing(DeftError):
    """The path ModelMesh gave does not exist on this pod."""


class InsufficientMemory(DeftError):
    """The model would not fit in the memory left; nothing was loaded."""


class LoadCancelled(DeftError):
    """The model was unloaded (or purged) while it loaded; its result was discarded."""
