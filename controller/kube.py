"""``KubeApi`` on the Kubernetes Python client (``kubernetes`` package).

Only this module imports ``kubernetes``, and only when a ``KubernetesApi`` is created or a
configuration is loaded. Every client failure is translated into ``controller.errors``:
``ApiException`` by its HTTP status, connection and protocol failures as temporary.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from controller.api import ListResult, WatchEvent
from controller.errors import (
    ApiError,
    ConfigError,
    NotFound,
    TemporaryApiError,
    classify_status,
)
from controller.objects import Resource

log = logging.getLogger(__name__)

T = TypeVar("T")
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def load_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """An ``ApiClient`` for the cluster: in-cluster when running in a pod (and no kubeconfig
    is named), else from kubeconfig. Raises ``ConfigError``."""
    from kubernetes import client, config

    try:
        if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            return client.ApiClient()
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except Exception as exc:  # the loaders raise many types; all mean "no usable config"
        raise ConfigError(f"cannot load a Kubernetes configuration: {exc}") from exc


def default_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The pod's namespace in a cluster, else the kubeconfig context's, else ``default``."""
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as f:
            namespace = f.read().strip()
            if namespace:
                return namespace
    except OSError:
        pass
    try:
        from kubernetes import config

        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        if context:
            active = next((c for c in contexts if c.get("name") == context), active)
        return str((active or {}).get("context", {}).get("namespace") or "default")
    except Exception:  # no kubeconfig at all: the conventional default
        return "default"


class KubernetesApi:
    """The controller's API calls, made with the Kubernetes Python client."""

    def __init__(self, api_client: Any, *, request_timeout_s: float = 30.0) -> None:
        from kubernetes import client

        self._client = api_client
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._timeout = request_timeout_s

    def list_objects(self, resource: Resource, namespace: str | None) -> ListResult:
        def call() -> Any:
            return self._list_function(namespace)(
                *self._list_args(resource, namespace), _request_timeout=self._timeout
            )

        body = _translate(call, f"list {resource.plural}")
        body = body if isinstance(body, Mapping) else {}
        items = body.get("items") or []
        metadata = body.get("metadata") or {}
        return ListResult(
            items=[i for i in items if isinstance(i, Mapping)],
            resource_version=str(metadata.get("resourceVersion") or ""),
        )

    def watch_objects(
        self, resource: Resource, namespace: str | None, resource_version: str, timeout_s: int
    ) -> Iterator[WatchEvent]:
        from kubernetes import watch

        watcher = watch.Watch()
        stream = watcher.stream(
            self._list_function(namespace),
            *self._list_args(resource, namespace),
            resource_version=resource_version,
            timeout_seconds=timeout_s,
            allow_watch_bookmarks=True,
            _request_timeout=timeout_s + self._timeout,
        )
        with _translating(f"watch {resource.plural}"):
            try:
                for event in stream:
                    if isinstance(event, Mapping):
                        raw = event.get("raw_object", event.get("object"))
                        yield WatchEvent(str(event.get("type")), raw if isinstance(raw, Mapping)
                                         else {})
            finally:
                watcher.stop()

    def get_configmap(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            model = _translate(
                lambda: self._core.read_namespaced_config_map(
                    name, namespace, _request_timeout=self._timeout
                ),
                f"get ConfigMap {namespace}/{name}",
            )
        except NotFound:
            return None
        return self._to_dict(model)

    def list_configmaps(self, name: str, label_selector: str) -> list[Mapping[str, Any]]:
        # by name (a field selector): RBAC then grants the list for that name alone
        result = _translate(
            lambda: self._core.list_config_map_for_all_namespaces(
                field_selector=f"metadata.name={name}", label_selector=label_selector,
                _request_timeout=self._timeout,
            ),
            f"list ConfigMaps {name}",
        )
        return [self._to_dict(item) for item in result.items or []]

    def create_configmap(self, namespace: str, body: Mapping[str, Any]) -> None:
        from kubernetes import client

        model = client.V1ConfigMap(
            api_version="v1",
            kind="ConfigMap",
            metadata=client.V1ObjectMeta(**_meta(body.get("metadata") or {})),
            data=dict(body.get("data") or {}),
        )
        _translate(
            lambda: self._core.create_namespaced_config_map(
                namespace, model, _request_timeout=self._timeout
            ),
            f"create ConfigMap {namespace}",
        )

    def patch_configmap(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        _translate(
            lambda: self._core.patch_namespaced_config_map(
                name, namespace, dict(patch), _request_timeout=self._timeout
            ),
            f"patch ConfigMap {namespace}/{name}",
        )

    def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        from kubernetes import client

        involved = body["involvedObject"]
        model = client.CoreV1Event(
            api_version="v1",
            kind="Event",
            metadata=client.V1ObjectMeta(**_meta(body["metadata"])),
            involved_object=client.V1ObjectReference(
                api_version=involved.get("apiVersion"),
                kind=involved.get("kind"),
                name=involved.get("name"),
                namespace=involved.get("namespace"),
                uid=involved.get("uid"),
                resource_version=involved.get("resourceVersion"),
            ),
            type=body.get("type"),
            reason=body.get("reason"),
            message=body.get("message"),
            source=client.V1EventSource(component=body.get("source", {}).get("component")),
            reporting_component=body.get("reportingComponent"),
            reporting_instance=body.get("reportingInstance"),
            first_timestamp=body.get("firstTimestamp"),
            last_timestamp=body.get("lastTimestamp"),
            count=body.get("count"),
        )
        _translate(
            lambda: self._core.create_namespaced_event(
                namespace, model, _request_timeout=self._timeout
            ),
            f"create Event {namespace}",
        )

    def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        _translate(
            lambda: self._core.patch_namespaced_event(
                name, namespace, dict(patch), _request_timeout=self._timeout
            ),
            f"patch Event {namespace}/{name}",
        )

    def _list_function(self, namespace: str | None) -> Callable[..., Any]:
        if namespace is None:
            return self._custom.list_cluster_custom_object
        return self._custom.list_namespaced_custom_object

    @staticmethod
    def _list_args(resource: Resource, namespace: str | None) -> tuple[str, ...]:
        if namespace is None:
            return (resource.group, resource.version, resource.plural)
        return (resource.group, resource.version, namespace, resource.plural)

    def _to_dict(self, model: Any) -> Mapping[str, Any]:
        if isinstance(model, Mapping):
            return model
        data = self._client.sanitize_for_serialization(model)
        return data if isinstance(data, Mapping) else {}


def _meta(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {k: metadata[k] for k in ("name", "namespace", "labels") if k in metadata}


def _translate(call: Callable[[], T], what: str) -> T:
    with _translating(what):
        return call()


@contextmanager
def _translating(what: str) -> Iterator[None]:
    """Re-raise client failures as ``ApiError``: by HTTP status, else as temporary."""
    from kubernetes.client.exceptions import ApiException

    try:
        yield
    except ApiError:
        raise
    except ApiException as exc:
        raise classify_status(exc.status, f"{what}: {exc.status} {exc.reason}") from exc
    except (OSError, ValueError) as exc:  # urllib3 errors are OSErrors; bad JSON a ValueError
        raise TemporaryApiError(f"{what}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # urllib3.exceptions.HTTPError and friends
        if type(exc).__module__.startswith("urllib3"):
            raise TemporaryApiError(f"{what}: {type(exc).__name__}: {exc}") from exc
        raise
