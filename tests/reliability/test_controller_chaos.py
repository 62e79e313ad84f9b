"""The priority controller under arbitrary interleavings of object changes, API failures
(temporary and permanent, on every call), watch expiry (410), malformed watch events and
ConfigMaps edited or deleted behind its back.

Properties: nothing but an API error ever escapes a step or a sync (the controller's loops
back off on those and go on); once the API behaves again, one verifying sync brings the
ConfigMap to the table of the objects that exist; and a restarted controller rebuilds exactly
that table without writing anything. ``tests/controller/`` covers each fault on its own."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.api import WatchEvent
from controller.errors import ApiError, PermanentApiError, TemporaryApiError
from controller.loop import Controller, ControllerConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "controller"))
from deft_controller_fakes import LC, FakeApi, FakeClock, host, isvc, tm  # noqa: E402

ANNOTATIONS = [
    None, LC, {"deft.dev/priority": "batch"}, {"deft.dev/priority": "latency-critical"},
    {"deft.dev/priority": "x", "deft.dev/slo-ms": "-3"}, {"deft.dev/max-batch-size": "8"},
]
METHODS = ["list_objects", "watch_objects", "get_configmap", "create_configmap",
           "patch_configmap", "create_event", "patch_event"]
GARBAGE_EVENTS = [
    WatchEvent("ADDED", {}), WatchEvent("MODIFIED", {"metadata": None}),
    WatchEvent("ADDED", {"metadata": {"name": 7}}), WatchEvent("SURPRISE", {"metadata": {}}),
    WatchEvent("DELETED", {"metadata": {"name": "never-seen", "namespace": "default"}}),
]
CM = ("default", "deft-priorities")

steps = st.one_of(
    st.tuples(st.just("apply"), st.integers(0, 3), st.sampled_from(range(len(ANNOTATIONS)))),
    st.tuples(st.just("apply-trained-model"), st.integers(0, 2),
              st.sampled_from(range(len(ANNOTATIONS)))),
    st.tuples(st.just("delete"), st.integers(0, 3)),
    st.tuples(st.just("fail"), st.sampled_from(METHODS), st.booleans()),
    st.tuples(st.just("compact")),
    st.tuples(st.just("garbage-event"), st.sampled_from(range(len(GARBAGE_EVENTS)))),
    st.tuples(st.just("edit-configmap"), st.sampled_from(["null-data", "other-text",
                                                           "no-labels", "delete"])),
    st.tuples(st.just("informers")),
    st.tuples(st.just("sync"), st.booleans()),
)


def controller(api: FakeApi) -> Controller:
    return Controller(api, ControllerConfig(namespace="default"), clock=FakeClock(),
                      jitter=lambda d: d)


def survive(fn, *args, **kwargs) -> None:
    """Run one unit of controller work; an API error is fine (the loops back off and retry),
    anything else is a bug."""
    with contextlib.suppress(ApiError):
        fn(*args, **kwargs)


def apply_step(api: FakeApi, c: Controller, step: tuple) -> None:
    kind = step[0]
    if kind == "apply":
        api.apply(isvc(f"m{step[1]}", ANNOTATIONS[step[2]]))
    elif kind == "apply-trained-model":
        if ("inferenceservices", "default", "h") not in api.objects:
            api.apply(host("h", LC))
        api.apply(tm(f"t{step[1]}", "h", ANNOTATIONS[step[2]]))
    elif kind == "delete":
        key = ("inferenceservices", "default", f"m{step[1]}")
        if key in api.objects:
            api.delete(api.objects[key])
    elif kind == "fail":
        error = TemporaryApiError("unavailable", 503) if step[2] else PermanentApiError(
            "forbidden", 403)
        api.fail.setdefault(step[1], []).append(error)
    elif kind == "compact":
        api.compact()
    elif kind == "garbage-event":
        api.injected.append(GARBAGE_EVENTS[step[1]])
    elif kind == "edit-configmap":
        cm = api.configmaps.get(CM)
        if cm is not None:
            if step[1] == "null-data":
                cm["data"] = None
            elif step[1] == "other-text":
                cm["data"] = {"priorities.yaml": "models: [not, ours\n"}
            elif step[1] == "no-labels":
                cm["metadata"].pop("labels", None)
            else:
                del api.configmaps[CM]
    elif kind == "informers":
        for informer in c.informers:
            survive(informer.step)
    else:
        survive(c.sync, verify=step[1])


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(script=st.lists(steps, max_size=30))
def test_faults_in_any_order_never_crash_and_a_restart_rebuilds_the_same_table(script):
    api = FakeApi()
    c = controller(api)
    for step in script:
        apply_step(api, c, step)
    # the API behaves again: the controller catches up within a few rounds of its loops
    api.fail.clear()
    api.injected.clear()
    for _ in range(3):
        for informer in c.informers:
            survive(informer.step)
    c.sync(verify=True)
    table = api.table_text()
    assert table is not None
    # a restart (a fresh controller on the same cluster) rebuilds the same table, writing nothing
    writes = len(api.writes())
    fresh = controller(api)
    for informer in fresh.informers:
        informer.step()
    fresh.sync(verify=True)
    assert api.table_text() == table
    assert len(api.writes()) == writes
    cm = api.configmaps[CM]
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "deft-controller"
