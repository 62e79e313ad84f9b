"""Emitting the Events that ``reconcile`` says should exist, each once.

An Event is identified by (object uid, namespace, kind, name, type, reason, message): the
object's resourceVersion is not part of it, so status updates do not repeat Events. The
recorder remembers what it emitted; an Event that is no longer desired is forgotten, so it
is emitted again if its condition comes back. Event names are derived from the identity, so a
restarted controller finds its earlier Event (409) and only refreshes its lastTimestamp.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from controller.api import KubeApi
from controller.clock import Clock, rfc3339
from controller.errors import AlreadyExists, ApiError, PermanentApiError
from controller.reconcile import EventSpec

log = logging.getLogger(__name__)

EventKey = tuple[str, ...]
MAX_MESSAGE = 1024


def event_key(event: EventSpec) -> EventKey:
    r = event.ref
    return (r.uid, r.namespace, r.kind, r.name, event.type, event.reason, event.message)


def event_name(event: EventSpec) -> str:
    digest = hashlib.sha256("\0".join(event_key(event)).encode()).hexdigest()[:16]
    # a cut name may end in "-" or ".", which no label of a DNS subdomain may
    return f"{event.ref.name[:200].rstrip('-.')}.{digest}"


def event_body(
    event: EventSpec, *, component: str, instance: str, timestamp: str
) -> dict[str, Any]:
    """The core/v1 Event for ``event``."""
    r = event.ref
    involved = {"apiVersion": r.api_version, "kind": r.kind, "name": r.name,
                "namespace": r.namespace}
    if r.uid:
        involved["uid"] = r.uid
    if r.resource_version:
        involved["resourceVersion"] = r.resource_version
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(event), "namespace": r.namespace},
        "involvedObject": involved,
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:MAX_MESSAGE],
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": instance or component,
        "firstTimestamp": timestamp,
        "lastTimestamp": timestamp,
        "count": 1,
    }


class EventRecorder:
    """Creates each desired Event once; see the module docstring."""

    def __init__(self, api: KubeApi, clock: Clock, *, component: str, instance: str) -> None:
        self.api = api
        self.clock = clock
        self.component = component
        self.instance = instance
        self._emitted: set[EventKey] = set()

    def record(self, events: Iterable[EventSpec],
               alive: Callable[[], None] | None = None,
               defer: Callable[[EventSpec], bool] | None = None) -> list[ApiError]:
        """Emit the events not emitted yet. Returns the errors (temporary failures are retried
        at the next call; permanent ones, e.g. 403, are logged and not retried). ``alive`` is
        called before each API call (the loop's heartbeat). An event ``defer`` holds back is
        not emitted now, but one emitted before still counts as emitted."""
        wanted = {event_key(e): e for e in events}
        self._emitted &= set(wanted)
        errors: list[ApiError] = []
        for key, event in wanted.items():
            if key in self._emitted or (defer is not None and defer(event)):
                continue
            if alive is not None:
                alive()
            try:
                self._emit(event)
            except PermanentApiError as exc:
                log.warning("cannot create Event %s on %s: %s", event.reason, event.ref, exc)
                self._emitted.add(key)
                errors.append(exc)
            except ApiError as exc:
                errors.append(exc)
            else:
                self._emitted.add(key)
        return errors

    def _emit(self, event: EventSpec) -> None:
        stamp = rfc3339(self.clock.now())
        body = event_body(event, component=self.component, instance=self.instance,
                          timestamp=stamp)
        log.log(
            logging.WARNING if event.type == "Warning" else logging.INFO,
            "%s %s on %s: %s", event.type, event.reason, event.ref, event.message,
        )
        try:
            self.api.create_event(event.ref.namespace, body)
        except AlreadyExists:
            self.api.patch_event(event.ref.namespace, body["metadata"]["name"],
                                 {"lastTimestamp": stamp})
