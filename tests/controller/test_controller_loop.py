"""The API layer against an in-memory API: informers, sync, backoff, resync, Events."""

from __future__ import annotations

import threading

import pytest
import yaml
from deft_controller_fakes import LC, FakeApi, FakeClock, FakeSignal, host, isvc, tm

from controller.api import WatchEvent
from controller.errors import (
    NotFound,
    PermanentApiError,
    TemporaryApiError,
    WatchExpired,
)
from controller.loop import Backoff, Controller, ControllerConfig


def exact(delay: float) -> float:
    return delay


def make(api: FakeApi, clock: FakeClock, **config) -> Controller:
    config.setdefault("namespace", "default")
    return Controller(api, ControllerConfig(**config), clock=clock, jitter=exact)


def step_all(controller: Controller) -> list[bool]:
    return [informer.step() for informer in controller.informers]


def models(api: FakeApi, namespace: str = "default") -> dict:
    return yaml.safe_load(api.table_text(namespace))["models"]


def metric(controller: Controller, name: str, **labels) -> float:
    value = controller.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def test_first_sync_creates_the_configmap_and_events(api, clock):
    api.apply(isvc("a", LC), host("h"), tm("t", "h"), isvc("other", runtime="triton"))
    c = make(api, clock)
    assert step_all(c) == [True, True]
    c.sync(verify=True)
    assert models(api) == {"a": {"priority": "latency-critical", "slo_ms": 20},
                           "t": {"priority": "batch"}}
    cm = api.configmaps[("default", "deft-priorities")]
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "deft-controller"
    reasons = sorted((e["involvedObject"]["name"], e["reason"]) for e in api.events.values())
    assert reasons == [("a", "PriorityApplied"), ("t", "PriorityApplied")]
    event = next(iter(api.events.values()))
    assert event["firstTimestamp"] == "2025-01-01T00:00:00Z"
    assert event["involvedObject"]["uid"].startswith("uid-")
    assert metric(c, "deft_controller_models", priority="latency-critical") == 1
    assert metric(c, "deft_controller_reconciles_total") == 1


def test_second_reconcile_of_the_same_state_writes_nothing(api, clock):
    api.apply(isvc("a", LC), isvc("bad", {"deft.dev/priority": "x"}))
    c = make(api, clock)
    step_all(c)
    c.sync(verify=True)
    calls = len(api.calls)
    c.sync()
    assert api.calls[calls:] == []
    c.sync(verify=True)
    assert api.calls[calls:] == [("get_configmap", "default")]


def test_annotation_change_patches_once(api, clock):
    api.apply(isvc("a", LC))
    c = make(api, clock)
    step_all(c)
    c.sync(verify=True)
    api.apply(isvc("a", {"deft.dev/priority": "batch"}))
    assert step_all(c) == [True, False]
    c.sync()
    assert models(api) == {"a": {"priority": "batch"}}
    assert [w[0] for w in api.writes()] == ["create_configmap", "patch_configmap"]
    applied = sorted(e["message"] for e in api.events.values())
    assert applied == ["deft-priorities: batch", "deft-priorities: latency-critical, slo 20 ms"]


def test_status_only_update_does_not_count_as_a_change(api, clock):
    api.apply(isvc("a", LC))
    c = make(api, clock)
    step_all(c)
    api.apply(isvc("a", LC, status={"url": "http://a"}))
    assert step_all(c) == [False, False]


def test_deleted_object_leaves_the_table_and_the_configmap_stays(api, clock):
    obj = isvc("a", LC)
    api.apply(obj)
    c = make(api, clock, namespace=None)
    step_all(c)
    c.sync()
    api.delete(obj)
    assert step_all(c) == [True, False]
    c.sync()
    assert models(api) == {}


def test_watch_expiry_relists_and_sees_what_happened_meanwhile(api, clock):
    gone = isvc("gone")
    api.apply(isvc("a", LC), gone)
    c = make(api, clock)
    step_all(c)
    c.sync()
    informer = c.informers[0]
    api.delete(gone)
    api.apply(isvc("new"))
    api.compact()
    with pytest.raises(WatchExpired):
        informer.step()
    assert informer.resource_version is None
    assert informer.step() is True
    assert [call for call in api.calls if call[:2] == ("list", "inferenceservices")] == [
        ("list", "inferenceservices", "default")] * 2
    c.sync()
    assert set(models(api)) == {"a", "new"}


def test_watch_error_event_410_means_relist(api, clock):
    c = make(api, clock)
    step_all(c)
    api.injected = [WatchEvent("ERROR", {"kind": "Status", "code": 410, "reason": "Expired",
                                         "message": "too old"})]
    with pytest.raises(WatchExpired):
        c.informers[0].step()
    assert c.informers[0].resource_version is None


def test_watch_error_event_other_codes_are_classified(api, clock):
    c = make(api, clock)
    step_all(c)
    api.injected = [WatchEvent("ERROR", {"code": 500, "message": "boom"})]
    with pytest.raises(TemporaryApiError):
        c.informers[0].step()
    api.injected = [WatchEvent("ERROR", {"code": 403, "message": "forbidden"})]
    with pytest.raises(PermanentApiError):
        c.informers[0].step()
    api.injected = [WatchEvent("ERROR", {"message": "no code"})]
    with pytest.raises(TemporaryApiError):
        c.informers[0].step()


def test_bookmarks_move_the_version_without_a_change(api, clock):
    c = make(api, clock)
    step_all(c)
    api.injected = [WatchEvent("BOOKMARK", {"metadata": {"resourceVersion": "999"}})]
    assert c.informers[0].step() is False
    assert c.informers[0].resource_version == "999"


def test_informer_loop_backs_off_temporary_then_permanent_errors(api, clock):
    api.fail["list_objects"] = [TemporaryApiError("down"), TemporaryApiError("down"),
                                TemporaryApiError("down"), PermanentApiError("forbidden", 403)]
    c = make(api, clock, backoff_base_s=0.5, backoff_max_s=60)
    stop = FakeSignal(clock)
    wake = FakeSignal(clock)
    api.on_idle_watch = stop.set
    c.run_informer(c.informers[0], stop, wake)
    assert stop.waits == [0.5, 1.0, 2.0, 60]
    assert c.informers[0].has_listed and wake.is_set()
    assert metric(c, "deft_controller_errors_total", kind="temporary") == 3
    assert metric(c, "deft_controller_errors_total", kind="permanent") == 1


def test_a_resource_the_cluster_does_not_serve_is_synced_as_none(api, clock):
    # ModelMesh-only installs have InferenceServices but no TrainedModel CRD: list -> 404
    api.apply(isvc("a", LC))
    c = make(api, clock)
    tms = c.informers[1]
    assert c.informers[0].step() is True  # inferenceservices listed
    api.fail["list_objects"] = [NotFound("the server could not find the requested resource",
                                         404)]
    stop, wake = FakeSignal(clock), FakeSignal(clock)
    api.on_idle_watch = stop.set

    def waited(n):
        stop.set()

    stop.on_wait = waited
    c.run_informer(tms, stop, wake)
    assert tms.has_listed and tms.snapshot() == [] and wake.is_set()
    assert c.informers_ready()
    assert tms.resource_version is None  # the next step lists again
    assert tms.step() is False and tms.has_listed  # served now (the fake lists fine): empty


def test_a_deleted_namespace_is_no_longer_kept(api, clock):
    # cluster mode: team-a's last model and then the namespace itself go away
    gone = isvc("a", LC, namespace="team-a")
    api.apply(gone, isvc("b", LC))
    c = make(api, clock, namespace=None)
    step_all(c)
    c.sync()
    assert ("team-a", "deft-priorities") in api.configmaps
    api.delete(gone)
    del api.configmaps[("team-a", "deft-priorities")]
    api.fail["get_configmap"] = [NotFound("namespaces \"team-a\" not found", 404)]
    step_all(c)
    c.sync()  # no error: team-a had nothing left to keep
    assert "team-a" not in c.observe().namespaces
    api.calls.clear()
    c.sync(verify=True)
    assert not [call for call in api.calls if "team-a" in call]


def test_the_heartbeat_moves_while_a_slow_sync_works_through_namespaces(api, clock):
    # each ConfigMap read takes the API server's whole timeout: the loop is alive all along
    api.apply(*(isvc("m", LC, namespace=f"team-{i}") for i in range(5)))
    c = make(api, clock, namespace=None)
    step_all(c)
    started = clock.monotonic()
    slow_get = api.get_configmap

    def get_configmap(namespace, name):
        clock.advance(30.0)
        return slow_get(namespace, name)

    api.get_configmap = get_configmap
    slow_event = api.create_event

    def create_event(namespace, body):
        clock.advance(30.0)
        return slow_event(namespace, body)

    api.create_event = create_event
    c.sync(verify=True)
    assert clock.monotonic() - started == 300.0  # 5 tables, then 5 Events
    assert c.heartbeat - started == 270.0  # as the last Event began


def _forbid(api, method: str, namespace: str):
    """Make ``api.<method>`` answer 403 for ``namespace``; returns the real method."""
    from controller.errors import PermanentApiError

    real = getattr(api, method)

    def call(ns, *args):
        if ns == namespace:
            raise PermanentApiError(f"{method} is forbidden", 403)
        return real(ns, *args)

    setattr(api, method, call)
    return real


def _applied(api) -> set[str]:
    return {e["involvedObject"]["name"] for e in api.events.values()
            if e["reason"] == "PriorityApplied"}


def test_objects_of_a_table_that_could_not_be_written_get_no_applied_event(api, clock):
    from controller.errors import PermanentApiError

    api.apply(isvc("a", LC, namespace="team-a"), isvc("b", LC, namespace="team-b"))
    c = make(api, clock, namespace=None)
    step_all(c)
    real = _forbid(api, "create_configmap", "team-b")
    with pytest.raises(PermanentApiError):
        c.sync()
    assert _applied(api) == {"a"}
    api.create_configmap = real
    c.sync()
    assert _applied(api) == {"a", "b"}
    # a later failed write holds back no Event already sent, and sends none again after
    real = _forbid(api, "get_configmap", "team-a")
    with pytest.raises(PermanentApiError):
        c.sync(verify=True)
    api.get_configmap = real
    before = [call for call in api.calls if call[0] in ("create_event", "patch_event")]
    c.sync(verify=True)
    assert [call for call in api.calls if call[0] in ("create_event", "patch_event")] == before


def test_a_change_wakes_the_sync_while_its_watch_stays_open(api, clock):
    # on a cluster a watch call lasts minutes: the sync must not wait for it to end
    c = make(api, clock)
    step_all(c)
    wake = FakeSignal(clock)
    seen: list[bool] = []

    def watch(resource, namespace, version, timeout_s):
        yield WatchEvent("MODIFIED", isvc("a", LC))
        seen.append(wake.is_set())  # the watch is still open here
        yield WatchEvent("BOOKMARK", {"metadata": {"resourceVersion": "999"}})

    api.watch_objects = watch
    assert c.informers[0].step(on_change=wake.set) is True
    assert seen == [True]


def test_informer_loop_relists_at_once_after_410(api, clock):
    api.apply(isvc("a"))
    c = make(api, clock)
    stop = FakeSignal(clock)
    idle = iter([api.compact, stop.set])
    api.on_idle_watch = lambda: next(idle)()
    c.run_informer(c.informers[0], stop, FakeSignal(clock))
    assert stop.waits == []
    kinds = [call[0] for call in api.calls if call[1] == "inferenceservices"]
    assert kinds == ["list", "watch", "watch", "list", "watch"]
    assert metric(c, "deft_controller_relists_total", resource="inferenceservices") == 2


def test_backoff_grows_caps_and_resets():
    b = Backoff(1, 10, jitter=exact)
    assert [b.failure(TemporaryApiError("x")) for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    b.success()
    assert b.failure(TemporaryApiError("x")) == 1
    assert b.failure(PermanentApiError("x")) == 10
    assert 0.8 <= Backoff(1, 10).failure(TemporaryApiError("x")) <= 1.2


def test_sync_loop_resyncs_on_schedule_and_repairs_drift(api, clock):
    api.apply(isvc("a", LC))
    c = make(api, clock, resync_s=300)
    step_all(c)

    def tamper(n: int) -> None:
        if n == 1:
            api.configmaps[("default", "deft-priorities")]["data"]["priorities.yaml"] = "x"

    stop = FakeSignal(clock)
    wake = FakeSignal(clock, limit=3, on_wait=tamper)
    wake_waits = wake.waits
    c.run_sync(stop, wake_stop := _StopAfter(wake, stop))
    assert wake_stop.calls == 3
    assert wake_waits == [300, 300, 300]
    assert [call[0] for call in api.calls if "configmap" in call[0]] == [
        "get_configmap", "create_configmap", "get_configmap", "patch_configmap",
        "get_configmap"]
    assert models(api) == {"a": {"priority": "latency-critical", "slo_ms": 20}}


def test_sync_loop_waits_for_informers_and_wakes_on_change(api, clock):
    api.apply(isvc("a"))
    c = make(api, clock, resync_s=300, debounce_s=0.5)
    stop = FakeSignal(clock)
    wake = FakeSignal(clock)

    def on_wait(n: int) -> None:
        if n == 1:
            step_all(c)  # informers list after the loop's first look
            wake.set()
        elif n == 2:
            wake.set()
        else:
            stop.set()

    wake.on_wait = on_wait
    c.run_sync(stop, wake)
    assert api.writes() == [("create_configmap", "default")]
    assert wake.waits == [300, 300, 299.5]  # not ready; synced; synced again after debounce
    assert stop.waits == [0.5]  # debounce after a wake-up by a change
    assert api.calls.count(("get_configmap", "default")) == 1  # only the first was a resync


def test_sync_loop_backs_off_on_write_errors(api, clock):
    api.apply(isvc("a"))
    api.fail["create_configmap"] = [TemporaryApiError("x"), TemporaryApiError("x")]
    c = make(api, clock, backoff_base_s=0.5)
    step_all(c)
    stop = FakeSignal(clock)
    wake = FakeSignal(clock, limit=1)
    c.run_sync(stop, _StopAfter(wake, stop))
    assert stop.waits == [0.5, 1.0]
    assert models(api) == {"a": {"priority": "batch"}} and c.synced_once


def test_failed_namespace_does_not_block_the_others(api, clock):
    api.apply(isvc("a", namespace="x"), isvc("b", namespace="y"))
    api.fail["get_configmap"] = [PermanentApiError("forbidden", 403)]
    c = make(api, clock, namespace=None)
    step_all(c)
    with pytest.raises(PermanentApiError):
        c.sync()
    assert api.table_text("x") is None and models(api, "y") == {"b": {"priority": "batch"}}
    assert not c.synced_once
    c.sync()
    assert models(api, "x") == {"a": {"priority": "batch"}}
    assert [w for w in api.writes()] == [("create_configmap", "y"), ("create_configmap", "x")]


def test_configmap_created_by_someone_else_meanwhile_is_patched_next_time(api, clock):
    api.apply(isvc("a"))
    c = make(api, clock)
    step_all(c)
    api.configmaps[("default", "deft-priorities")] = {
        "metadata": {"name": "deft-priorities"}, "data": {"priorities.yaml": "models: {}\n",
                                                          "other": "kept"}}
    c.sync()
    cm = api.configmaps[("default", "deft-priorities")]
    assert cm["data"]["other"] == "kept" and models(api) == {"a": {"priority": "batch"}}
    assert api.writes() == [("patch_configmap", "default")]


def test_restart_rebuilds_the_same_table_without_writes(api, clock):
    api.apply(host("h", LC), tm("t", "h"), isvc("s", {"deft.dev/priority": "x"}))
    first = make(api, clock)
    step_all(first)
    first.sync(verify=True)
    before = (api.table_text(), dict(api.events))
    calls = len(api.calls)
    second = make(api, clock)
    step_all(second)
    second.sync(verify=True)
    assert (api.table_text(), dict(api.events)) == before
    new_calls = [c[0] for c in api.calls[calls:] if c[0] not in ("list",)]
    assert "create_configmap" not in new_calls and "patch_configmap" not in new_calls
    assert new_calls.count("create_event") == new_calls.count("patch_event") == 2


def test_events_are_emitted_once_and_again_when_the_problem_returns(api, clock):
    bad = isvc("m", {"deft.dev/priority": "x"})
    api.apply(bad)
    c = make(api, clock)
    step_all(c)
    c.sync()
    c.sync()
    assert len(api.events) == 1
    api.apply(isvc("m", LC))
    step_all(c)
    c.sync()
    api.apply(bad)
    step_all(c)
    c.sync()
    creates = [call for call in api.calls if call[0] == "create_event"]
    assert len(creates) == 3  # warning, applied, warning again (exists: refreshed by patch)
    assert [call[0] for call in api.calls].count("patch_event") == 1


def test_event_errors_temporary_retried_permanent_dropped(api, clock):
    api.apply(isvc("a"), isvc("b"))
    api.fail["create_event"] = [TemporaryApiError("x"), PermanentApiError("no", 403)]
    c = make(api, clock)
    step_all(c)
    c.sync()
    assert len(api.events) == 0
    c.sync()
    assert len(api.events) == 1  # the temporary failure is retried; the permanent one is not
    assert metric(c, "deft_controller_errors_total", kind="temporary") == 1
    assert metric(c, "deft_controller_errors_total", kind="permanent") == 1


def test_watched_namespace_gets_a_configmap_even_when_empty(api, clock):
    c = make(api, clock, namespace="models")
    step_all(c)
    c.sync()
    assert models(api, "models") == {}


def test_all_namespaces_keeps_writing_a_namespace_that_emptied(api, clock):
    obj = isvc("a", namespace="x")
    api.apply(obj, isvc("b", namespace="y"))
    c = make(api, clock, namespace=None)
    step_all(c)
    c.sync()
    api.delete(obj)
    step_all(c)
    c.sync()
    assert models(api, "x") == {} and set(models(api, "y")) == {"b"}


def test_patch_of_a_vanished_configmap_is_retried_as_create(api, clock):
    api.apply(isvc("a"))
    c = make(api, clock)
    step_all(c)
    c.sync()
    del api.configmaps[("default", "deft-priorities")]
    api.apply(isvc("a", LC))
    step_all(c)
    c.sync()
    assert models(api) == {"a": {"priority": "latency-critical", "slo_ms": 20}}
    api.fail["get_configmap"] = [NotFound("crd gone", 404)]
    api.apply(isvc("a"))
    step_all(c)
    with pytest.raises(NotFound):
        c.sync()


def test_threaded_run_writes_and_stops(api):
    from controller.clock import SystemClock

    api.apply(isvc("a", LC))
    api.block = threading.Event()
    c = Controller(api, ControllerConfig(namespace="default", debounce_s=0), clock=SystemClock())
    thread = threading.Thread(target=c.run, daemon=True)
    thread.start()
    assert api.written.wait(10)
    c.stop()
    api.block.set()
    thread.join(10)
    assert not thread.is_alive() and models(api) == {"a": {"priority": "latency-critical",
                                                           "slo_ms": 20}}


class _StopAfter:
    """Wraps the wake signal: once it reports ``limit`` waits, sets ``stop`` as well."""

    def __init__(self, wake: FakeSignal, stop: FakeSignal) -> None:
        self.wake, self.stop, self.calls = wake, stop, 0

    def is_set(self) -> bool:
        return False

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> bool:
        self.calls += 1
        fired = self.wake.wait(timeout)
        if fired:
            self.stop.set()
        return False


def test_unexpected_failures_are_logged_and_retried(api, clock, caplog):
    api.fail["list_objects"] = [RuntimeError("bug")]
    api.fail["get_configmap"] = [RuntimeError("bug")]
    api.apply(isvc("a"))
    c = make(api, clock, backoff_base_s=0.5)
    stop = FakeSignal(clock)
    api.on_idle_watch = stop.set
    c.run_informer(c.informers[0], stop, FakeSignal(clock))
    c.informers[1].step()
    assert stop.waits == [0.5] and c.informers[0].has_listed
    stop, wake = FakeSignal(clock), FakeSignal(clock, limit=1)
    c.run_sync(stop, _StopAfter(wake, stop))
    assert stop.waits == [0.5] and models(api) == {"a": {"priority": "batch"}}
    assert sum("unexpectedly" in r.message for r in caplog.records) == 2


def test_an_event_name_cut_from_a_long_object_name_is_a_dns_subdomain():
    import re

    from controller.events import event_name
    from controller.objects import ObjectRef
    from controller.reconcile import EventSpec

    for name in ("a" * 199 + "-" + "b" * 40, "a" * 198 + ".-" + "b" * 40, "m" * 253):
        ref = ObjectRef("TrainedModel", "serving.kserve.io/v1alpha1", "default", name, "u1")
        got = event_name(EventSpec(ref, "Warning", "InvalidPriorityAnnotation", "x"))
        assert len(got) <= 253
        assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", part)
                   for part in got.split(".")), got


def test_a_table_too_large_for_a_configmap_is_never_sent_and_the_one_before_stays(
        api, clock, monkeypatch, caplog):
    import controller.reconcile

    api.apply(isvc("a", LC))
    c = make(api, clock)
    step_all(c)
    c.sync(verify=True)
    before = api.table_text()
    monkeypatch.setattr(controller.reconcile, "CONFIGMAP_LIMIT_BYTES", 120)
    api.apply(isvc("b", LC), isvc("c", LC))
    step_all(c)
    calls = len(api.calls)
    c.sync()  # no error raised: a retry would be refused again
    c.sync()
    assert api.table_text() == before
    assert not [call for call in api.calls[calls:] if "configmap" in call[0]]
    assert [r.message for r in caplog.records if "not written" in r.message] == [
        "Warning PriorityTableTooLarge on ConfigMap default/deft-priorities: 3 models need "
        "176 bytes, over the 120 a ConfigMap holds: not written; the runtime keeps the table "
        "written before"]
    reasons = sorted((e["involvedObject"]["kind"], e["reason"]) for e in api.events.values())
    assert reasons == [("ConfigMap", "PriorityTableTooLarge"),
                       ("InferenceService", "PriorityApplied")]  # a's, from the first table
    monkeypatch.setattr(controller.reconcile, "CONFIGMAP_LIMIT_BYTES", 1 << 20)
    c.sync()  # fits again: written
    assert set(models(api)) == {"a", "b", "c"}


def test_a_restarted_controller_empties_a_table_whose_objects_went_while_it_was_down(
        api, clock):
    gone = isvc("a", LC, namespace="x")
    api.apply(gone, isvc("b", namespace="y"))
    first = make(api, clock, namespace=None)
    step_all(first)
    first.sync()
    api.delete(gone)  # while no controller runs
    # a ConfigMap of that name that is not the controller's stays as it is
    api.configmaps[("z", "deft-priorities")] = {
        "metadata": {"name": "deft-priorities", "namespace": "z"},
        "data": {"priorities.yaml": "models:\n  mine: {priority: batch}\n"}}
    second = make(api, clock, namespace=None)
    step_all(second)
    second.sync()
    assert models(api, "x") == {} and set(models(api, "y")) == {"b"}
    assert models(api, "z") == {"mine": {"priority": "batch"}}
    assert [c for c in api.calls if c[0] == "patch_configmap"] == [("patch_configmap", "x")]
    second.sync()
    assert api.calls.count(("list_configmaps", "deft-priorities")) == 2  # once per controller


def test_tables_written_before_that_cannot_be_listed_are_left_and_said_once(
        api, clock, caplog):
    api.apply(isvc("b", namespace="y"))
    api.fail["list_configmaps"] = [TemporaryApiError("timeout", 504),
                                   PermanentApiError("forbidden", 403)]
    c = make(api, clock, namespace=None)
    step_all(c)
    c.sync()  # the temporary failure: the list is tried again at the next sync
    c.sync()
    c.sync()
    assert api.calls.count(("list_configmaps", "deft-priorities")) == 2
    assert set(models(api, "y")) == {"b"}
    said = [r.message for r in caplog.records if "written before" in r.message]
    assert len(said) == 2 and "keeps its table" in said[1]


def test_watching_one_namespace_lists_no_other_tables(api, clock):
    api.apply(isvc("a"))
    c = make(api, clock)
    step_all(c)
    c.sync()
    assert not [call for call in api.calls if call[0] == "list_configmaps"]
