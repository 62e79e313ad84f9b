"""Errors of the controller package: one root, and API failures split by what to do next.

``TemporaryApiError`` is retried with exponential backoff; ``PermanentApiError`` is retried
only at the longest backoff delay (the cause, e.g. missing RBAC or CRDs, needs a person) and
logged as an error; ``WatchExpired`` (HTTP 410 Gone) means "list again".
"""

from __future__ import annotations


class ControllerError(Exception):
    """Root of every error the controller package raises."""


class ConfigError(ControllerError):
    """The command line or configuration cannot be used."""


class InputError(ControllerError):
    """A dry-run input that cannot be read or parsed."""


class ApiError(ControllerError):
    """A Kubernetes API call failed. ``status`` is the HTTP status, or None without one."""

    temporary: bool = False

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TemporaryApiError(ApiError):
    """Worth retrying soon: connection failures, timeouts, 429 and 5xx answers, 409 conflicts."""

    temporary = True


class PermanentApiError(ApiError):
    """Retrying soon will not help: 400, 401, 403, 404, 422 and other client errors."""


class NotFound(PermanentApiError):
    """HTTP 404: the object (or the resource type) does not exist."""


class AlreadyExists(TemporaryApiError):
    """HTTP 409 on create: someone created the object first; read it and try again."""


class WatchExpired(ApiError):
    """HTTP 410 Gone: the resourceVersion is too old; list again and watch from the new one."""

    temporary = True


def classify_status(status: int | None, message: str) -> ApiError:
    """The error for an HTTP ``status`` (None: no answer at all, e.g. connection refused)."""
    if status is None or status == 0:
        return TemporaryApiError(message, status)
    if status == 404:
        return NotFound(message, status)
    if status == 409:
        return AlreadyExists(message, status)
    if status == 410:
        return WatchExpired(message, status)
    if status in (408, 429) or status >= 500:
        return TemporaryApiError(message, status)
    return PermanentApiError(message, status)


class MalformedObject(ControllerError):
    """An object whose shape this controller cannot read (it is skipped, never fatal)."""
