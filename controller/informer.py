"""A local copy of one resource type, kept current by list + watch.

``Informer.step()`` does one unit of work: a list when it holds no resourceVersion (at start,
and after a watch expired with 410 Gone), otherwise one watch call from the held version until
the server closes it. It returns whether anything the controller cares about changed
(annotations, spec, uid: status-only updates do not count), and calls ``on_change`` as soon
as a watch event changes something: a watch stays open for minutes on a real cluster.
``snapshot()`` may be called from another thread.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from controller.api import KubeApi, WatchEvent
from controller.errors import TemporaryApiError, WatchExpired, classify_status
from controller.objects import Resource

log = logging.getLogger(__name__)

Key = tuple[str, str]


class Informer:
    """Objects of ``resource`` in ``namespace`` (None: all namespaces), by (namespace, name)."""

    def __init__(
        self,
        api: KubeApi,
        resource: Resource,
        namespace: str | None,
        *,
        watch_timeout_s: int = 300,
    ) -> None:
        self.api = api
        self.resource = resource
        self.namespace = namespace
        self.watch_timeout_s = watch_timeout_s
        self.resource_version: str | None = None
        self.lists = 0
        self._objects: dict[Key, Mapping[str, Any]] = {}
        self._listed = False
        self._lock = threading.Lock()

    @property
    def has_listed(self) -> bool:
        """True once a list has succeeded: the copy is complete from then on."""
        return self._listed

    def mark_absent(self) -> bool:
        """The API server does not serve this resource (its list answered 404: no CRD, as on
        a ModelMesh-only install without TrainedModels): hold it as listed and empty, so that
        the controller syncs without it. The next step lists again, and finds the objects
        once the CRD is installed. Returns whether this changed the copy."""
        with self._lock:
            changed = not self._listed or bool(self._objects)
            self._objects = {}
            self._listed = True
        self.resource_version = None
        return changed

    def snapshot(self) -> list[Mapping[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def step(self, on_change: Callable[[], None] | None = None) -> bool:
        """List (no version held) or watch once; ``on_change`` is called after each watch
        event that changed the copy, while the watch goes on. Raises ``ApiError``; on
        ``WatchExpired`` the version is dropped first, so the next step lists again."""
        if self.resource_version is None:
            return self._relist()
        try:
            return self._watch(self.resource_version, on_change)
        except WatchExpired:
            log.info("watch of %s expired (410 Gone); listing again", self.resource.plural)
            self.resource_version = None
            raise

    def _relist(self) -> bool:
        try:
            result = self.api.list_objects(self.resource, self.namespace)
        except WatchExpired as exc:  # a list has no version to expire: just try again
            raise TemporaryApiError(str(exc), exc.status) from exc
        fresh: dict[Key, Mapping[str, Any]] = {}
        for raw in result.items:
            key = _key(raw)
            if key is None:
                log.warning("skipping a %s without metadata.name", self.resource.kind)
                continue
            fresh[key] = self._complete(raw)
        with self._lock:
            changed = not self._listed or _fingerprints(self._objects) != _fingerprints(fresh)
            self._objects = fresh
            self._listed = True
        self.resource_version = result.resource_version or None
        self.lists += 1
        log.debug("listed %d %s at version %s", len(fresh), self.resource.plural,
                  result.resource_version)
        return changed

    def _watch(self, version: str, on_change: Callable[[], None] | None) -> bool:
        changed = False
        for event in self.api.watch_objects(
            self.resource, self.namespace, version, self.watch_timeout_s
        ):
            if self._apply(event):
                changed = True
                if on_change is not None:
                    on_change()
        return changed

    def _apply(self, event: WatchEvent) -> bool:
        obj = event.object if isinstance(event.object, Mapping) else {}
        if event.type == "ERROR":
            code = obj.get("code")
            raise classify_status(
                code if isinstance(code, int) else None,
                f"watch of {self.resource.plural}: {obj.get('reason')}: {obj.get('message')}",
            )
        metadata = obj.get("metadata")
        version = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
        if isinstance(version, str) and version:
            self.resource_version = version
        if event.type == "BOOKMARK":
            return False
        key = _key(obj)
        if key is None:
            log.warning("skipping a %s watch event without metadata.name", event.type)
            return False
        with self._lock:
            before = self._objects.get(key)
            if event.type == "DELETED":
                self._objects.pop(key, None)
                return before is not None
            if event.type not in ("ADDED", "MODIFIED"):
                log.warning("ignoring watch event of type %r", event.type)
                return False
            self._objects[key] = self._complete(obj)
        return before is None or _fingerprint(before) != _fingerprint(obj)

    def _complete(self, raw: Mapping[str, Any]) -> Mapping[str, Any]:
        """The object with apiVersion and kind set (list items may lack them)."""
        if raw.get("apiVersion") and raw.get("kind"):
            return raw
        filled = dict(raw)
        filled.setdefault("apiVersion", self.resource.api_version)
        filled.setdefault("kind", self.resource.kind)
        return filled


def _key(raw: object) -> Key | None:
    if not isinstance(raw, Mapping):
        return None
    metadata = raw.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not isinstance(name, str) or not name:
        return None
    return (namespace if isinstance(namespace, str) else "", name)


def _fingerprint(raw: Mapping[str, Any]) -> object:
    metadata = raw.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    view = (metadata.get("uid"), metadata.get("annotations"), raw.get("spec"))
    try:
        return json.dumps(view, sort_keys=True, default=repr)
    except (TypeError, ValueError):  # keys of mixed types: fall back to an unsorted view
        return repr(view)


def _fingerprints(objects: Mapping[Key, Mapping[str, Any]]) -> dict[Key, object]:
    return {key: _fingerprint(raw) for key, raw in objects.items()}

