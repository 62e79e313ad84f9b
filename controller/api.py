"""The slice of the Kubernetes API the controller uses, as a Protocol (``KubeApi``).

``kube.KubernetesApi`` implements it with the Kubernetes Python client; tests implement it in
memory. Every method raises only ``controller.errors.ApiError`` subclasses: ``NotFound``,
``AlreadyExists``, ``WatchExpired``, other ``TemporaryApiError`` / ``PermanentApiError``.
Objects travel as plain dicts, exactly as the API serves them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.objects import Resource


@dataclass(frozen=True)
class ListResult:
    """The items of a list call and the collection's resourceVersion to watch from."""

    items: list[Mapping[str, Any]] = field(default_factory=list)
    resource_version: str = ""


@dataclass(frozen=True)
class WatchEvent:
    """One watch event: ``type`` is ADDED, MODIFIED, DELETED, BOOKMARK or ERROR.

    ``object`` is the object (a ``Status`` for ERROR; only metadata.resourceVersion for
    BOOKMARK).
    """

    type: str
    object: Mapping[str, Any]


class KubeApi(Protocol):
    """What the controller needs from a cluster. ``namespace=None`` means all namespaces."""

    def list_objects(self, resource: Resource, namespace: str | None) -> ListResult: ...

    def watch_objects(
        self, resource: Resource, namespace: str | None, resource_version: str, timeout_s: int
    ) -> Iterator[WatchEvent]:
        """Changes after ``resource_version`` until the server closes the watch (at the latest
        after ``timeout_s``). Raises ``WatchExpired`` when the version is too old (410)."""
        ...

    def get_configmap(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The ConfigMap, or None when it does not exist."""
        ...

    def list_configmaps(self, name: str, label_selector: str) -> list[Mapping[str, Any]]:
        """The ConfigMaps called ``name`` with the labels ``label_selector`` asks for, in
        every namespace."""
        ...

    def create_configmap(self, namespace: str, body: Mapping[str, Any]) -> None: ...

    def patch_configmap(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """Merge ``patch`` into the ConfigMap (strategic/JSON merge patch semantics)."""
        ...

    def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        """Create a core/v1 Event. Raises ``AlreadyExists`` when the name is taken."""
        ...

    def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None: ...
