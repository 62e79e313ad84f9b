"""Prometheus metrics of the controller, in a registry of their own (none at import time)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from scheduler.priority import Priority


class Metrics:
    """``deft_controller_*`` series. Create one per process (or per test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            "deft_controller_reconciles", "Reconciles run (full resyncs included).",
            registry=self.registry,
        )
        self.errors = Counter(
            "deft_controller_errors", "Kubernetes API errors, by kind (temporary, permanent).",
            ["kind"], registry=self.registry,
        )
        self.models = Gauge(
            "deft_controller_models", "Models in the priority tables, by priority class.",
            ["priority"], registry=self.registry,
        )
        self.invalid = Gauge(
            "deft_controller_invalid_objects",
            "Deft-served objects left out of the tables because of invalid annotations.",
            registry=self.registry,
        )
        self.writes = Counter(
            "deft_controller_configmap_writes", "ConfigMap writes, by operation (create, patch).",
            ["operation"], registry=self.registry,
        )
        self.relists = Counter(
            "deft_controller_relists", "List calls (at start and after a watch expired).",
            ["resource"], registry=self.registry,
        )
        for priority in Priority:
            self.models.labels(priority=priority.value).set(0)
        for kind in ("temporary", "permanent"):
            self.errors.labels(kind=kind)

    def set_models(self, counts: dict[Priority, int]) -> None:
        for priority, count in counts.items():
            self.models.labels(priority=priority.value).set(count)

    def error(self, temporary: bool) -> None:
        self.errors.labels(kind="temporary" if temporary else "permanent").inc()
