"""The pure part of the controller: observed KServe objects -> desired ConfigMaps and Events.

``reconcile(observed, selection)`` looks at nothing but its arguments, and the same input
always gives an equal ``Desired``. Rules:

- Only Deft-served objects count: an InferenceService the ``Selection`` accepts, and a
  TrainedModel whose ``spec.inferenceService`` names such an InferenceService in its namespace.
- A Deft-served InferenceService with a model of its own is listed under its name. One without
  (a multi-model host) is not listed; its ``deft.dev/*`` annotations are the defaults of its
  TrainedModels, key by key (a TrainedModel's own value wins).
- A Deft-served object without ``deft.dev/*`` annotations is listed as ``batch``.
- Invalid values (unknown class, not a positive integer, latency-critical without an SLO)
  give a Warning Event on the object, and the object is left out of the table (the runtime
  then uses its own configuration for it). A host's invalid value also gets a Warning on the
  host; every TrainedModel that inherits it is left out.
- Unknown ``deft.dev/*`` keys give a Warning Event; the object is still listed.
- Two objects of one namespace with one name (an InferenceService and a TrainedModel) and
  different settings both get a Warning and neither is listed: the name would be ambiguous.
  So too where one of them has invalid values: listed, the other's settings would apply to
  it as well.
- Every listed object gets a Normal ``PriorityApplied`` Event that states its settings.
- Every namespace with a Deft-served object, and every namespace in
  ``observed.namespaces``, gets one ConfigMap; deleted objects simply leave the table.
- A table too large for a ConfigMap (its data over 1 MiB, what the API server takes) is not
  written: one Warning Event on the ConfigMap says so, its objects get no ``PriorityApplied``
  Event, and the runtime keeps the table written before.

Emitting each Event once (not once per reconcile) is the API layer's job.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import yaml

from controller import annotations as ann
from controller.objects import InferenceService, KServeObject, ObjectRef, Selection, TrainedModel
from scheduler.priority import InvalidSettings, ModelSettings, Priority, PriorityTable

CONFIGMAP_NAME = "deft-priorities"
CONFIGMAP_KEY = "priorities.yaml"
MANAGED_LABELS = {
    "app.kubernetes.io/managed-by": "deft-controller",
    "app.kubernetes.io/part-of": "deft",
}

WARNING = "Warning"
NORMAL = "Normal"
REASON_INVALID = "InvalidPriorityAnnotation"
REASON_UNKNOWN = "UnknownDeftAnnotation"
REASON_DUPLICATE = "DuplicateModelName"
REASON_APPLIED = "PriorityApplied"
REASON_TOO_LARGE = "PriorityTableTooLarge"

CONFIGMAP_LIMIT_BYTES = 1024 * 1024
"""The most a ConfigMap's data may hold (keys and values), as the API server checks it."""


@dataclass(frozen=True)
class EventSpec:
    """An Event that should exist on ``ref``: ``type`` is ``Warning`` or ``Normal``."""

    ref: ObjectRef
    type: str
    reason: str
    message: str

    def sort_key(self) -> tuple[str, ...]:
        r = self.ref
        return (r.namespace, r.kind, r.name, self.type, self.reason, self.message)


@dataclass(frozen=True)
class Observed:
    """What the controller saw. ``namespaces``: namespaces that get a ConfigMap even when no
    Deft-served object is left in them (the watched namespace; namespaces written before)."""

    objects: tuple[KServeObject, ...] = ()
    namespaces: frozenset[str] = frozenset()


@dataclass(frozen=True)
class DesiredConfigMap:
    """ConfigMap ``deft-priorities`` of one namespace and the table it carries."""

    namespace: str
    table: PriorityTable
    name: str = CONFIGMAP_NAME

    @property
    def data(self) -> dict[str, str]:
        return {CONFIGMAP_KEY: self.text}

    @cached_property
    def text(self) -> str:
        """The table as ``priorities.yaml`` holds it (rendered once)."""
        return render_table(self.table)

    @cached_property
    def size_bytes(self) -> int:
        """The data's size as the API server counts it against ``CONFIGMAP_LIMIT_BYTES``."""
        return sum(len(k.encode()) + len(v.encode()) for k, v in self.data.items())

    @property
    def too_large(self) -> bool:
        """Whether the API server would refuse it (it is not written)."""
        return self.size_bytes > CONFIGMAP_LIMIT_BYTES

    def ref(self) -> ObjectRef:
        return ObjectRef("ConfigMap", "v1", self.namespace, self.name)

    def manifest(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": dict(MANAGED_LABELS),
            },
            "data": self.data,
        }


@dataclass(frozen=True)
class Desired:
    """The ConfigMaps (sorted by namespace) and the Events (sorted) that should exist."""

    configmaps: tuple[DesiredConfigMap, ...] = ()
    events: tuple[EventSpec, ...] = ()
    ignored: tuple[ObjectRef, ...] = field(default=(), compare=False)
    """Objects seen but not served by Deft (for reports; not part of the desired state)."""

    def configmap(self, namespace: str) -> DesiredConfigMap | None:
        return next((cm for cm in self.configmaps if cm.namespace == namespace), None)

    def models_per_class(self) -> dict[Priority, int]:
        counts = dict.fromkeys(Priority, 0)
        for cm in self.configmaps:
            for settings in cm.table.models.values():
                counts[settings.priority] += 1
        return counts


def render_table(table: PriorityTable) -> str:
    """The ``priorities.yaml`` text: the contract's format, byte-for-byte stable."""
    return yaml.safe_dump(table.to_dict(), sort_keys=True)


def reconcile(observed: Observed, selection: Selection | None = None) -> Desired:
    """The ConfigMaps and Events for ``observed`` (see the module docstring for the rules)."""
    selection = selection or Selection()
    objects = _latest(observed.objects)
    hosts = {
        (o.ref.namespace, o.ref.name): o
        for o in objects
        if isinstance(o, InferenceService) and selection.serves(o)
    }
    events: list[EventSpec] = []
    candidates: dict[tuple[str, str], list[tuple[ObjectRef, ModelSettings]]] = defaultdict(list)
    invalid: dict[tuple[str, str], list[ObjectRef]] = defaultdict(list)
    namespaces = set(observed.namespaces)
    ignored: list[ObjectRef] = []
    for obj in objects:
        values = _values_for(obj, hosts)
        if values is None:
            ignored.append(obj.ref)
            continue
        namespaces.add(obj.ref.namespace)
        events.extend(_unknown_key_events(obj))
        if isinstance(obj, InferenceService) and not obj.has_model:
            problems = ann.value_problems(values)
            if problems:
                events.append(EventSpec(obj.ref, WARNING, REASON_INVALID, "; ".join(problems)))
            continue
        try:
            settings = ann.to_settings(values)
        except InvalidSettings as exc:
            events.append(EventSpec(obj.ref, WARNING, REASON_INVALID, f"{exc}; not applied"))
            invalid[(obj.ref.namespace, obj.ref.name)].append(obj.ref)
            continue
        candidates[(obj.ref.namespace, obj.ref.name)].append((obj.ref, settings))
    tables: dict[str, dict[str, ModelSettings]] = {ns: {} for ns in namespaces}
    for (namespace, name), entries in candidates.items():
        if len({settings for _, settings in entries}) > 1:
            events.extend(_duplicate_events(name, entries))
            continue
        if invalid.get((namespace, name)):
            # listed, its settings would apply to the invalid object of the same name too
            events.extend(_shared_with_invalid_events(name, entries, invalid[(namespace, name)]))
            continue
        tables[namespace][name] = entries[0][1]
        for ref, settings in entries:
            message = f"{CONFIGMAP_NAME}: {ann.describe_settings(settings)}"
            events.append(EventSpec(ref, NORMAL, REASON_APPLIED, message))
    configmaps = tuple(
        DesiredConfigMap(ns, PriorityTable(models=tables[ns])) for ns in sorted(tables)
    )
    for cm in configmaps:
        if cm.too_large:
            # not written, so not applied; one Event, not one per object (they are thousands)
            events = [e for e in events
                      if not (e.reason == REASON_APPLIED and e.ref.namespace == cm.namespace)]
            events.append(EventSpec(cm.ref(), WARNING, REASON_TOO_LARGE, (
                f"{len(cm.table.models)} models need {cm.size_bytes} bytes, over the "
                f"{CONFIGMAP_LIMIT_BYTES} a ConfigMap holds: not written; the runtime keeps "
                "the table written before")))
    return Desired(configmaps, tuple(sorted(events, key=EventSpec.sort_key)), tuple(ignored))


def _latest(objects: Iterable[KServeObject]) -> list[KServeObject]:
    """One object per (kind, namespace, name): the last one given, in first-seen order."""
    by_key: dict[tuple[str, str, str], KServeObject] = {}
    for obj in objects:
        by_key[(obj.ref.kind, obj.ref.namespace, obj.ref.name)] = obj
    return list(by_key.values())


def _values_for(
    obj: KServeObject, hosts: dict[tuple[str, str], InferenceService]
) -> dict[str, ann.Value] | None:
    """The annotation values that apply to ``obj``, or None when Deft does not serve it."""
    own = ann.deft_values(obj.annotations)
    if isinstance(obj, InferenceService):
        return own if (obj.ref.namespace, obj.ref.name) in hosts else None
    assert isinstance(obj, TrainedModel)
    host = hosts.get((obj.ref.namespace, obj.inference_service or ""))
    if host is None:
        return None
    source = ann.Source(host.ref.kind, host.ref.name)
    return ann.inherit(own, ann.deft_values(host.annotations), source)


def _unknown_key_events(obj: KServeObject) -> list[EventSpec]:
    unknown = ann.unknown_keys(obj.annotations)
    if not unknown:
        return []
    known = ", ".join(ann.KNOWN)
    message = f"unknown annotation {', '.join(unknown)} ignored (known: {known})"
    return [EventSpec(obj.ref, WARNING, REASON_UNKNOWN, message)]


def _shared_with_invalid_events(
    name: str, entries: list[tuple[ObjectRef, ModelSettings]], invalid: list[ObjectRef]
) -> list[EventSpec]:
    others = ", ".join(f"{o.kind} {o.name}" for o in invalid)
    message = (
        f"model name {name!r} is also used by {others}, whose annotations are invalid; "
        "neither is applied"
    )
    return [EventSpec(ref, WARNING, REASON_DUPLICATE, message) for ref, _ in entries]


def _duplicate_events(
    name: str, entries: list[tuple[ObjectRef, ModelSettings]]
) -> list[EventSpec]:
    out = []
    for ref, _ in entries:
        others = ", ".join(f"{o.kind} {o.name}" for o, _ in entries if o != ref)
        message = (
            f"model name {name!r} is also used by {others} with different settings; "
            "neither is applied"
        )
        out.append(EventSpec(ref, WARNING, REASON_DUPLICATE, message))
    return out
