"""Factories and fakes for the controller tests: KServe objects, an in-memory API, a fake clock
and fake signals (waiting advances the fake clock; nothing sleeps)."""

from __future__ import annotations

import copy
import datetime as dt
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from controller.api import ListResult, WatchEvent
from controller.errors import AlreadyExists, NotFound, WatchExpired
from controller.objects import INFERENCE_SERVICES, TRAINED_MODELS, Resource

EPOCH = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def isvc(
    name: str,
    annotations: Mapping[str, object] | None = None,
    *,
    namespace: str = "default",
    runtime: str | None = "deft",
    model_format: str | None = "pytorch-export",
    storage_uri: str | None = "gs://bucket/model",
    status: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    model: dict[str, Any] = {}
    if model_format is not None:
        model["modelFormat"] = {"name": model_format}
    if runtime is not None:
        model["runtime"] = runtime
    if storage_uri is not None:
        model["storageUri"] = storage_uri
    obj: dict[str, Any] = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}"},
        "spec": {"predictor": {"model": model}},
    }
    if annotations is not None:
        obj["metadata"]["annotations"] = dict(annotations)
    if status is not None:
        obj["status"] = dict(status)
    return obj


def host(name: str, annotations: Mapping[str, object] | None = None, **kw: Any) -> dict[str, Any]:
    """A multi-model host InferenceService (no storageUri), on deft-multimodel by default."""
    kw.setdefault("runtime", "deft-multimodel")
    return isvc(name, annotations, storage_uri=None, **kw)


def tm(
    name: str,
    inference_service: str,
    annotations: Mapping[str, object] | None = None,
    *,
    namespace: str = "default",
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "TrainedModel",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-tm-{namespace}-{name}"},
        "spec": {
            "inferenceService": inference_service,
            "model": {"framework": "pytorch-export", "storageUri": "gs://b/m", "memory": "1Gi"},
        },
    }
    if annotations is not None:
        obj["metadata"]["annotations"] = dict(annotations)
    return obj


LC = {"deft.dev/priority": "latency-critical", "deft.dev/slo-ms": "20"}


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def now(self) -> dt.datetime:
        return EPOCH + dt.timedelta(seconds=self.t)

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeSignal:
    """A ``Signal`` whose ``wait`` records the timeout and calls ``on_wait``; when that set
    the signal it returns at once, else it advances the clock by the timeout. It sets itself
    after ``limit`` waits (so loops under test end)."""

    def __init__(
        self,
        clock: FakeClock,
        *,
        limit: int | None = None,
        on_wait: Callable[[int], None] | None = None,
    ) -> None:
        self.clock = clock
        self.limit = limit
        self.on_wait = on_wait
        self.waits: list[float | None] = []
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True

    def clear(self) -> None:
        self._set = False

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if self.on_wait:
            self.on_wait(len(self.waits))
        if self._set:  # set by someone meanwhile: woken early, no time passes
            return True
        self.clock.advance(timeout or 0.0)
        if self.limit is not None and len(self.waits) >= self.limit:
            self._set = True
        return self._set


class FakeApi:
    """An in-memory cluster that implements ``KubeApi``.

    ``apply``/``delete`` change objects and record watch history with increasing
    resourceVersions; ``compact()`` makes older versions unwatchable (410). ``fail[method]``
    is a list of exceptions raised, in order, by the next calls of that method. A watch
    delivers the history after its version, then ends (as a server timeout would); when it
    has nothing to deliver it calls ``on_idle_watch`` and, when ``block`` is given, waits on
    it first (for threaded tests).
    """

    def __init__(self) -> None:
        self.rv = 100
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []
        self.compacted = 0
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, ...]] = []
        self.fail: dict[str, list[Exception]] = {}
        self.injected: list[WatchEvent] = []
        self.on_idle_watch: Callable[[], None] | None = None
        self.block: threading.Event | None = None
        self.written = threading.Event()

    # -- test helpers -----------------------------------------------------------------

    def apply(self, *objs: dict[str, Any]) -> None:
        for obj in objs:
            obj = copy.deepcopy(obj)
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            key = (_plural(obj), obj["metadata"]["namespace"], obj["metadata"]["name"])
            kind = "MODIFIED" if key in self.objects else "ADDED"
            self.objects[key] = obj
            self.history.append((self.rv, kind, key[0], obj))

    def delete(self, obj: dict[str, Any]) -> None:
        key = (_plural(obj), obj["metadata"]["namespace"], obj["metadata"]["name"])
        gone = self.objects.pop(key)
        self.rv += 1
        self.history.append((self.rv, "DELETED", key[0], gone))

    def compact(self) -> None:
        """Every version up to now becomes too old to watch from (a fresh list is not)."""
        self.rv += 1
        self.compacted = self.rv

    def table_text(self, namespace: str = "default") -> str | None:
        cm = self.configmaps.get((namespace, "deft-priorities"))
        return None if cm is None else cm["data"]["priorities.yaml"]

    def writes(self) -> list[tuple[str, ...]]:
        return [c for c in self.calls if c[0] in ("create_configmap", "patch_configmap")]

    def _maybe_fail(self, method: str) -> None:
        queue = self.fail.get(method)
        if queue:
            raise queue.pop(0)

    # -- KubeApi ----------------------------------------------------------------------

    def list_objects(self, resource: Resource, namespace: str | None) -> ListResult:
        self.calls.append(("list", resource.plural, namespace or "*"))
        self._maybe_fail("list_objects")
        items = [
            copy.deepcopy(o) for (plural, ns, _), o in sorted(self.objects.items())
            if plural == resource.plural and namespace in (None, ns)
        ]
        return ListResult(items, str(self.rv))

    def watch_objects(
        self, resource: Resource, namespace: str | None, resource_version: str, timeout_s: int
    ) -> Iterator[WatchEvent]:
        self.calls.append(("watch", resource.plural, resource_version))
        self._maybe_fail("watch_objects")
        if int(resource_version) < self.compacted:
            raise WatchExpired("too old resource version", 410)
        injected, self.injected = self.injected, []
        events = injected + [
            WatchEvent(kind, copy.deepcopy(obj))
            for rv, kind, plural, obj in self.history
            if rv > int(resource_version) and plural == resource.plural
            and namespace in (None, obj["metadata"]["namespace"])
        ]
        if not events:
            if self.block is not None:
                self.block.wait(5)
            if self.on_idle_watch:
                self.on_idle_watch()
        yield from events

    def get_configmap(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.calls.append(("get_configmap", namespace))
        self._maybe_fail("get_configmap")
        cm = self.configmaps.get((namespace, name))
        return copy.deepcopy(cm) if cm is not None else None

    def list_configmaps(self, name: str, label_selector: str) -> list[Mapping[str, Any]]:
        self.calls.append(("list_configmaps", name))
        self._maybe_fail("list_configmaps")
        wanted = dict(pair.split("=", 1) for pair in label_selector.split(","))
        return [copy.deepcopy(cm) for (_, n), cm in sorted(self.configmaps.items())
                if n == name and wanted.items() <= (cm["metadata"].get("labels") or {}).items()]

    def create_configmap(self, namespace: str, body: Mapping[str, Any]) -> None:
        self.calls.append(("create_configmap", namespace))
        self._maybe_fail("create_configmap")
        key = (namespace, body["metadata"]["name"])
        if key in self.configmaps:
            raise AlreadyExists("configmap exists", 409)
        self.configmaps[key] = copy.deepcopy(dict(body))
        self.written.set()

    def patch_configmap(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.calls.append(("patch_configmap", namespace))
        self._maybe_fail("patch_configmap")
        if (namespace, name) not in self.configmaps:
            raise NotFound("no such configmap", 404)
        _merge(self.configmaps[(namespace, name)], patch)
        self.written.set()

    def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        self.calls.append(("create_event", namespace))
        self._maybe_fail("create_event")
        key = (namespace, body["metadata"]["name"])
        if key in self.events:
            raise AlreadyExists("event exists", 409)
        self.events[key] = copy.deepcopy(dict(body))

    def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.calls.append(("patch_event", namespace))
        self._maybe_fail("patch_event")
        _merge(self.events[(namespace, name)], patch)


def _plural(obj: Mapping[str, Any]) -> str:
    return INFERENCE_SERVICES.plural if obj["kind"] == "InferenceService" else TRAINED_MODELS.plural


def _merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
