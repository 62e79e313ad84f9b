"""Error conditions of the runtime. Status codes are assigned only at the HTTP/gRPC edge."""

from __future__ import annotations


def printable(text: str, limit: int = 1000) -> str:
    """``text`` as an error message shows it to a client and a log line holds it: at most
    ``limit`` characters of it, its control characters (line breaks, NUL) escaped. Messages
    quote what clients send (model and tensor names, paths), of any length and content: a
    forged log line must not come of it, nor a gRPC status too large for its header."""
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} characters)"
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class DeftError(Exception):
    """Root of every error the runtime raises on purpose."""


class ModelNotFound(DeftError):
    """No model of that name (or version) is known to the repository."""

    def __init__(self, name: str, version: str | None = None) -> None:
        which = f"model '{name}'" + (f" version '{version}'" if version is not None else "")
        super().__init__(f"{which} is not found")
        self.name = name


class ModelNotReady(DeftError):
    """The model is known but not loaded (loading, failed, or unloaded)."""


class InvalidInput(DeftError):
    """The request is malformed or does not match the model's inputs."""


class PayloadTooLarge(InvalidInput):
    """The request body or a tensor exceeds the configured bound."""


class QueueFull(DeftError):
    """The model's queue is at its bound; the request was refused without being queued."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeout(DeftError):
    """The request's queueing timeout passed before it could start; it was never run."""


class InferenceFailed(DeftError):
    """The model's forward pass raised; only this request (or batch) fails."""


class ModelLoadError(DeftError):
    """A model file or configuration could not be loaded."""


class Unauthorized(DeftError):
    """An admin route was called without the configured token."""


class Disabled(DeftError):
    """The route is disabled by configuration."""


class ShuttingDown(DeftError):
    """The server stopped admitting requests because it is shutting down."""
