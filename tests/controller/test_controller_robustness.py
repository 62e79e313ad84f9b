"""Malformed objects and watch events never crash the controller; they are skipped."""

from __future__ import annotations

import contextlib
import copy

import pytest
from deft_controller_fakes import LC, FakeApi, FakeClock, isvc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.api import ListResult, WatchEvent
from controller.errors import MalformedObject
from controller.loop import Controller, ControllerConfig
from controller.objects import parse_object

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8,
)


def mutate(base: dict, path: tuple[str, ...], value: object) -> dict:
    """``base`` with the value at ``path`` replaced (creating mappings on the way)."""
    out = copy.deepcopy(base)
    node = out
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return out


PATHS = [
    ("metadata",), ("metadata", "name"), ("metadata", "namespace"), ("metadata", "annotations"),
    ("metadata", "uid"), ("spec",), ("spec", "predictor"), ("spec", "predictor", "model"),
    ("spec", "predictor", "model", "runtime"), ("spec", "predictor", "model", "modelFormat"),
    ("spec", "predictor", "model", "modelFormat", "name"), ("spec", "inferenceService"),
    ("kind",), ("apiVersion",),
]


@settings(max_examples=200, deadline=None)
@given(path=st.sampled_from(PATHS), value=json_values)
def test_parse_object_returns_or_raises_malformed_only(path, value):
    raw = mutate(isvc("m", LC), path, value)
    with contextlib.suppress(MalformedObject):
        parse_object(raw)


@pytest.mark.parametrize("raw", [None, 3, "text", [], {"kind": "InferenceService"}])
def test_parse_object_of_garbage(raw):
    with contextlib.suppress(MalformedObject):
        assert parse_object(raw) is None


class GarbageApi(FakeApi):
    """Lists whatever ``garbage`` holds next to one good object."""

    def __init__(self, garbage: list) -> None:
        super().__init__()
        self.garbage = garbage

    def list_objects(self, resource, namespace):
        result = super().list_objects(resource, namespace)
        return ListResult(result.items + list(self.garbage), result.resource_version)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.lists(
    st.one_of(json_values, st.builds(mutate, st.just(isvc("x", LC)), st.sampled_from(PATHS),
                                     json_values)),
    max_size=4))
def test_sync_survives_any_listed_objects(garbage):
    api = GarbageApi(garbage)
    api.apply(isvc("good", LC))
    c = Controller(api, ControllerConfig(namespace="default"), clock=FakeClock(),
                   jitter=lambda d: d)
    for informer in c.informers:
        informer.step()
    c.sync()
    assert "good:" in api.table_text()


@pytest.mark.parametrize("event", [
    WatchEvent("ADDED", {}),
    WatchEvent("MODIFIED", {"metadata": None}),
    WatchEvent("ADDED", {"metadata": {"name": 7}}),
    WatchEvent("DELETED", {"metadata": {"name": "never-seen"}}),
    WatchEvent("SURPRISE", {"metadata": {"name": "x"}}),
    WatchEvent("ADDED", {"metadata": {"name": "x", "annotations": {1: "a", "b": None}},
                         "spec": "not a mapping"}),
    WatchEvent("BOOKMARK", {}),
    WatchEvent("ADDED", "not a mapping"),  # type: ignore[arg-type]
])
def test_informer_skips_malformed_watch_events(event):
    api = FakeApi()
    api.apply(isvc("good", LC))
    c = Controller(api, ControllerConfig(namespace="default"), clock=FakeClock())
    for informer in c.informers:
        informer.step()
    api.injected = [event]
    c.informers[0].step()
    c.sync()
    assert "good:" in api.table_text()
