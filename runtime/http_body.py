"""Request bodies without uvicorn's two copies on the event loop.

uvicorn's httptools protocol appends each chunk of a request body to a ``bytearray`` as the
parser hands it over, and copies that into a new ``bytes`` for each ASGI receive: two copies
of every byte, both on the event loop, before the application sees the body (about 1 ms of
the loop for a batch of eight 224x224 images, a quarter of the loop's time per such request).
``ChunkedBodyProtocol`` keeps the chunks the parser made instead, and a receive that finds
one chunk waiting hands over that very object. It relies only on what uvicorn does with the
cycle's ``body``: ``+=``, ``len`` and ``bytes()``.

``install()`` makes it uvicorn's ``auto`` protocol (the one a KServe ModelServer asks for)
where httptools is installed; elsewhere uvicorn's own choice stays.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

# scope key: time.monotonic() when the server began reading the request (before it waited for
# the event loop behind other requests' bodies, which is part of a request's time in the
# server); set by ChunkedBodyProtocol
RECEIVED_AT = "deft.received_at"

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools: uvicorn serves with h11
    HttpToolsProtocol = None  # type: ignore[assignment, misc]


class BodyParts:
    """What a request-response cycle holds of its body between receives: the parser's
    chunks, in order, joined only if more than one is waiting."""

    __slots__ = ("parts", "size")

    def __init__(self, initial: bytes | bytearray = b"") -> None:
        self.parts: list[bytes] = [bytes(initial)] if initial else []
        self.size = len(initial)

    def __iadd__(self, data: bytes) -> BodyParts:
        if data:
            self.parts.append(data)
            self.size += len(data)
        return self

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        if len(self.parts) == 1 and type(self.parts[0]) is bytes:
            return self.parts[0]
        return b"".join(self.parts)


if HttpToolsProtocol is not None:

    class ChunkedBodyProtocol(HttpToolsProtocol):  # type: ignore[misc, valid-type]
        """uvicorn's httptools protocol, keeping body chunks as the parser made them, and
        noting in the scope when each request began to arrive (``RECEIVED_AT``)."""

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope[RECEIVED_AT] = time.monotonic()  # type: ignore[literal-required]

        def on_body(self, body: bytes) -> None:
            cycle = self.cycle
            if cycle is not None and not isinstance(cycle.body, BodyParts):
                cycle.body = BodyParts(cycle.body)  # type: ignore[assignment]
            super().on_body(body)


def install() -> bool:
    """Serve with ``ChunkedBodyProtocol`` wherever uvicorn is asked for its ``auto``
    protocol. Returns False (and changes nothing) where httptools is not installed."""
    if HttpToolsProtocol is None:
        return False
    import uvicorn.config

    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:ChunkedBodyProtocol"
    return True
