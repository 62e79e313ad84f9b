"""Prometheus metrics of the runtime (the README's "Metrics"). Created once by the entry point
and passed down; tests give each instance a registry of its own."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
)


class Metrics:
    """Every ``deft_*`` series, labelled by ``model`` and ``priority`` where they apply."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else REGISTRY
        mp = ("model", "priority")
        self.request_latency = Histogram(
            "deft_request_latency_seconds", "Time from admission to answer, per request.",
            mp, buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "deft_queue_wait_seconds", "Time a request waited before its job first ran.",
            mp, buckets=_LATENCY_BUCKETS, registry=r)
        self.preemptions = Counter(
            "deft_preemptions_total", "Batch jobs that yielded the device at a sync point.",
            mp, registry=r)
        self.preemption_delay = Histogram(
            "deft_preemption_delay_seconds",
            "Time a latency-critical job waited for batch work to reach a sync point.",
            mp, buckets=_LATENCY_BUCKETS, registry=r)
        self.slo_violations = Counter(
            "deft_slo_violations_total", "Requests answered after their SLO.", mp, registry=r)
        self.device_busy = Counter(
            "deft_device_busy_seconds_total", "Device time spent running each model's chunks.",
            mp, registry=r)
        self.queue_depth = Gauge(
            "deft_queue_depth", "Requests admitted and not yet answered.", mp, registry=r)
        self.sync_interval = Gauge(
            "deft_sync_interval_units",
            "Units per chunk in the model's most recent chunk (the sync interval in use).",
            ("model",), registry=r)
        self.speed_ratio = Gauge(
            "deft_profile_speed_ratio",
            "How slow the model's units run against its profile: the median over recent "
            "chunks of the factor that scales the profile's unit durations to the measured "
            "chunk times (1: as profiled, 1.3: 30% slower). The policies plan with the "
            "profile scaled by it. Not set before a few chunks were measured, nor for "
            "chunks on the CPU lane.", ("model",), registry=r)
        self.requests = Counter(
            "deft_requests_total", "Requests by outcome (ok, rejected, failed, refused, "
            "timeout, cancelled).", ("model", "priority", "outcome"), registry=r)
        self.executor_restarts = Counter(
            "deft_executor_restarts_total", "Times the executor thread was restarted.",
            registry=r)

    def declare(self, model: str, priority: str, has_slo: bool) -> None:
        """Zero series for a model that became ready, where it can count: a rate over
        them reads 0 until something happens, not "no data"."""
        self.requests.labels(model, priority, "ok")
        if has_slo:
            self.slo_violations.labels(model, priority)
        if priority == "batch":
            self.preemptions.labels(model, priority)
