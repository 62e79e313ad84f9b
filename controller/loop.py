"""The API layer: informers feed a cache, the sync loop reconciles it and applies the result.

- Each informer lists, then watches from the list's resourceVersion; a 410 Gone makes it list
  again. API errors back off exponentially (``Backoff``); permanent errors wait the longest
  delay straight away.
- ``Controller.sync`` reconciles the whole observed state (never a diff of events) and writes a
  ConfigMap only when its content differs: in between full resyncs it compares with what it
  last wrote; a full resync (``verify=True``, every ``resync_s``) reads each ConfigMap back, so
  changes made by others are repaired. Missing ConfigMaps are created, differing ones patched.
- Nothing here writes the status of KServe objects.
- Time comes from an injected ``Clock`` and every wait goes through a ``Signal``: tests run
  these loops on one thread with fakes, production runs them on threads with
  ``threading.Event``.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.api import KubeApi
from controller.clock import Clock, Signal
from controller.errors import (
    ApiError,
    MalformedObject,
    PermanentApiError,
    TemporaryApiError,
    WatchExpired,
)
from controller.events import EventRecorder
from controller.informer import Informer
from controller.metrics import Metrics
from controller.objects import INFERENCE_SERVICES, TRAINED_MODELS, Selection, parse_object
from controller.reconcile import (
    CONFIGMAP_KEY,
    CONFIGMAP_NAME,
    MANAGED_LABELS,
    REASON_APPLIED,
    REASON_INVALID,
    Desired,
    DesiredConfigMap,
    Observed,
    reconcile,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControllerConfig:
    """Settings of one controller. ``namespace=None`` watches all namespaces."""

    namespace: str | None = "default"
    selection: Selection = field(default_factory=Selection)
    resync_s: float = 300.0
    watch_timeout_s: int = 300
    debounce_s: float = 0.5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 60.0
    component: str = "deft-controller"
    instance: str = ""


class Backoff:
    """Exponential backoff: ``base * 2**n`` after n+1 temporary failures in a row, capped at
    ``max_s``; a permanent failure waits ``max_s`` at once. ``jitter(delay)`` spreads retries
    (default: +-20 %, random); pass ``jitter=lambda d: d`` for exact delays."""

    def __init__(
        self,
        base_s: float,
        max_s: float,
        jitter: Callable[[float], float] | None = None,
    ) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.failures = 0
        self._jitter = jitter or (lambda d: d * random.uniform(0.8, 1.2))

    def failure(self, error: BaseException) -> float:
        temporary = getattr(error, "temporary", True)
        self.failures += 1
        if not temporary:
            delay = self.max_s
        else:
            delay = min(self.max_s, self.base_s * 2 ** (self.failures - 1))
        return self._jitter(delay)

    def success(self) -> None:
        self.failures = 0


class Controller:
    """Keeps ConfigMap ``deft-priorities`` of every Deft namespace equal to ``reconcile``'s
    answer for the objects it watches. See the module docstring."""

    def __init__(
        self,
        api: KubeApi,
        config: ControllerConfig,
        *,
        clock: Clock,
        metrics: Metrics | None = None,
        jitter: Callable[[float], float] | None = None,
    ) -> None:
        self.api = api
        self.config = config
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.jitter = jitter
        self.informers = [
            Informer(api, r, config.namespace, watch_timeout_s=config.watch_timeout_s)
            for r in (INFERENCE_SERVICES, TRAINED_MODELS)
        ]
        self.recorder = EventRecorder(
            api, clock, component=config.component, instance=config.instance
        )
        self.last_desired: Desired | None = None
        self.synced_once = False
        self.heartbeat = clock.monotonic()
        self._written: dict[str, str] = {}
        self._adopted = False  # the tables written before this controller started
        self._malformed_seen: set[str] = set()
        self._stop = threading.Event()
        self._wake = threading.Event()

    # -- one unit of work each: tests call these directly ----------------------------------

    def observe(self) -> Observed:
        """The informers' objects, parsed (malformed ones are skipped and logged once)."""
        objects = []
        malformed = set()
        default_ns = self.config.namespace or "default"
        for informer in self.informers:
            for raw in informer.snapshot():
                try:
                    obj = parse_object(raw, default_ns)
                except MalformedObject as exc:
                    malformed.add(str(exc))
                    continue
                if obj is not None:
                    objects.append(obj)
        for problem in sorted(malformed - self._malformed_seen):
            log.warning("skipping a malformed object: %s", problem)
        self._malformed_seen = malformed
        namespaces = set(self._written)
        if self.config.namespace is not None:
            namespaces.add(self.config.namespace)
        return Observed(tuple(objects), frozenset(namespaces))

    def sync(self, *, verify: bool = False) -> Desired:
        """Reconcile the cache and apply it. Raises ``ApiError`` when a ConfigMap write failed
        (the others are still attempted); Event failures are logged and retried next time."""
        if not self._adopted:
            self._adopt_tables()
        desired = reconcile(self.observe(), self.config.selection)
        self.metrics.reconciles.inc()
        failed = self._apply_configmaps(desired, verify=verify)
        errors = list(failed.values())
        # a table that was not written is not applied: its objects' "applied" Events wait
        # for the write that succeeds
        for exc in self.recorder.record(
                desired.events, alive=self._beat,
                defer=lambda e: e.reason == REASON_APPLIED and e.ref.namespace in failed):
            self.metrics.error(exc.temporary)
        self.metrics.set_models(desired.models_per_class())
        self.metrics.invalid.set(
            len({e.ref for e in desired.events if e.reason == REASON_INVALID})
        )
        self.last_desired = desired
        if errors:
            raise _combine(errors)
        self.synced_once = True
        return desired

    def _adopt_tables(self) -> None:
        """Across all namespaces: take the tables written before this controller started as
        its own, so that one whose last Deft object went while no controller ran is emptied
        like any other (watching one namespace, that namespace is always kept). A list the
        API refuses (a ClusterRole without it) is said once; those tables then stay as
        they are. A temporary failure is tried again at the next sync."""
        if self.config.namespace is not None:
            self._adopted = True
            return
        selector = ",".join(f"{k}={v}" for k, v in sorted(MANAGED_LABELS.items()))
        try:
            found = self.api.list_configmaps(CONFIGMAP_NAME, selector)
        except ApiError as exc:
            self.metrics.error(exc.temporary)
            if exc.temporary:
                log.warning("cannot list the priority tables written before: %s; trying "
                            "again at the next sync", exc)
                return
            log.warning("cannot list the priority tables written before (%s): a namespace "
                        "whose last Deft object went while the controller was down keeps "
                        "its table", exc)
            self._adopted = True
            return
        for cm in found:
            namespace = _submap(cm, "metadata").get("namespace")
            if isinstance(namespace, str) and namespace:
                text = _submap(cm, "data").get(CONFIGMAP_KEY)
                self._written.setdefault(namespace, text if isinstance(text, str) else "")
        if found:
            log.info("priority tables written before: %d namespaces", len(found))
        self._adopted = True

    def _beat(self) -> None:
        # alive while it works through namespaces and Events: against an API server that
        # times out, one sync over many of them can outlast the liveness window
        self.heartbeat = self.clock.monotonic()

    def _apply_configmaps(self, desired: Desired, *, verify: bool) -> dict[str, ApiError]:
        """Write the tables that changed; the failures by namespace."""
        errors: dict[str, ApiError] = {}
        for cm in desired.configmaps:
            self._beat()
            text = cm.data[CONFIGMAP_KEY]
            if not verify and self._written.get(cm.namespace) == text:
                continue
            if cm.too_large:
                # the API server would refuse it at every retry: never sent; its Warning
                # Event (logged as it is sent) says so
                continue
            try:
                self._write_if_different(cm, text)
            except ApiError as exc:
                if exc.status in (403, 404) and not cm.table.models \
                        and cm.namespace != self.config.namespace:
                    # nothing of Deft's is left in a namespace that is gone (404) or
                    # terminating (403): stop keeping its table instead of failing every sync
                    log.info("namespace %s: no models and no ConfigMap can be written (%s); "
                             "no longer kept", cm.namespace, exc)
                    self._written.pop(cm.namespace, None)
                    continue
                log.warning("cannot write ConfigMap %s/%s: %s", cm.namespace, cm.name, exc)
                self.metrics.error(exc.temporary)
                errors[cm.namespace] = exc
            else:
                self._written[cm.namespace] = text
        return errors

    def _write_if_different(self, cm: DesiredConfigMap, text: str) -> None:
        live = self.api.get_configmap(cm.namespace, cm.name)
        if live is None:
            self.api.create_configmap(cm.namespace, cm.manifest())
            self.metrics.writes.labels(operation="create").inc()
            log.info("created ConfigMap %s/%s (%d models)", cm.namespace, cm.name,
                     len(cm.table.models))
            return
        if _matches(live, text):
            return
        patch = {"metadata": {"labels": dict(MANAGED_LABELS)}, "data": {CONFIGMAP_KEY: text}}
        self.api.patch_configmap(cm.namespace, cm.name, patch)
        self.metrics.writes.labels(operation="patch").inc()
        log.info("updated ConfigMap %s/%s (%d models)", cm.namespace, cm.name,
                 len(cm.table.models))

    def informers_ready(self) -> bool:
        return all(i.has_listed for i in self.informers)

    # -- loops: production runs each on a thread, tests run them with fake signals -----------

    def run_informer(self, informer: Informer, stop: Signal, wake: Signal) -> None:
        """Step ``informer`` until ``stop``; set ``wake`` whenever the cache changed."""
        backoff = Backoff(self.config.backoff_base_s, self.config.backoff_max_s, self.jitter)
        while not stop.is_set():
            lists_before = informer.lists
            try:
                changed = informer.step(on_change=wake.set)
            except WatchExpired:
                continue  # the informer dropped its version: the next step lists again
            except ApiError as exc:
                self.metrics.error(exc.temporary)
                delay = backoff.failure(exc)
                _log_api_error(f"{informer.resource.plural} list/watch", exc, delay)
                # a list answered 404: no such resource on this cluster; sync without it
                # and look again later
                absent = exc.status == 404 and informer.resource_version is None
                if absent and informer.mark_absent():
                    log.warning("%s are not served by this cluster (no CRD?); synced as "
                                "none until they are", informer.resource.plural)
                    wake.set()
                stop.wait(delay)
                continue
            except Exception:  # a bug must not silently end this thread: log, back off, go on
                self.metrics.error(True)
                delay = backoff.failure(TemporaryApiError("unexpected"))
                log.exception("%s list/watch failed unexpectedly", informer.resource.plural)
                stop.wait(delay)
                continue
            backoff.success()
            if informer.lists != lists_before:
                self.metrics.relists.labels(resource=informer.resource.plural).inc()
            if changed:
                wake.set()

    def run_sync(self, stop: Signal, wake: Signal) -> None:
        """Sync whenever ``wake`` is set and at least every ``resync_s`` (a full, verifying
        sync), until ``stop``. Syncs only after every informer has listed once."""
        backoff = Backoff(self.config.backoff_base_s, self.config.backoff_max_s, self.jitter)
        next_resync = self.clock.monotonic()
        while not stop.is_set():
            self.heartbeat = now = self.clock.monotonic()
            if not self.informers_ready():
                wake.wait(self.config.resync_s)  # each informer wakes us after its first list
                wake.clear()
                continue
            verify = now >= next_resync
            try:
                self.sync(verify=verify)
            except ApiError as exc:
                delay = backoff.failure(exc)
                _log_api_error("sync", exc, delay)
                stop.wait(delay)
                continue
            except Exception:  # a bug: keep the last good ConfigMaps, log, retry later
                self.metrics.error(True)
                delay = backoff.failure(TemporaryApiError("unexpected"))
                log.exception("sync failed unexpectedly")
                stop.wait(delay)
                continue
            backoff.success()
            if verify:
                next_resync = now + self.config.resync_s
            timeout = max(0.0, next_resync - self.clock.monotonic())
            if wake.wait(timeout) and not stop.is_set():
                stop.wait(self.config.debounce_s)  # let a burst of changes settle
            wake.clear()

    def run(self) -> None:
        """Run the informers on daemon threads and the sync loop on this one until ``stop()``
        (informer threads blocked in a watch end with the process)."""
        for informer in self.informers:
            threading.Thread(
                target=self.run_informer, args=(informer, self._stop, self._wake), daemon=True,
                name=f"informer-{informer.resource.plural}",
            ).start()
        self.run_sync(self._stop, self._wake)

    def stop(self) -> None:
        """Ask ``run`` to return (safe from a signal handler or another thread)."""
        self._stop.set()
        self._wake.set()


def _matches(live: Mapping[str, Any], text: str) -> bool:
    """Whether the live ConfigMap already carries ``text`` and our labels."""
    data = _submap(live, "data")
    labels = _submap(_submap(live, "metadata"), "labels")
    return data.get(CONFIGMAP_KEY) == text and all(
        labels.get(k) == v for k, v in MANAGED_LABELS.items()
    )


def _submap(parent: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = parent.get(key)
    return value if isinstance(value, Mapping) else {}


def _combine(errors: list[ApiError]) -> ApiError:
    if len(errors) == 1:
        return errors[0]
    message = "; ".join(str(e) for e in errors)
    if any(e.temporary for e in errors):
        return TemporaryApiError(message)
    return PermanentApiError(message)


def _log_api_error(what: str, exc: ApiError, delay: float) -> None:
    level = logging.WARNING if exc.temporary else logging.ERROR
    kind = "temporary" if exc.temporary else "permanent"
    log.log(level, "%s failed (%s, status %s): %s; retrying in %.1f s",
            what, kind, exc.status, exc, delay)
