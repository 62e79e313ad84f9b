"""Table tests of ``controller.reconcile.reconcile``: observed objects -> ConfigMaps + Events."""

from __future__ import annotations

import random

import pytest
import yaml
from deft_controller_fakes import LC, host, isvc, tm
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.objects import Selection, parse_object
from controller.reconcile import (
    CONFIGMAP_KEY,
    REASON_APPLIED,
    REASON_DUPLICATE,
    REASON_INVALID,
    REASON_UNKNOWN,
    WARNING,
    Desired,
    Observed,
    reconcile,
)
from scheduler.priority import PriorityTable


def run(*raw: dict, namespaces: tuple[str, ...] = (), selection: Selection | None = None
        ) -> Desired:
    objects = tuple(o for o in (parse_object(r) for r in raw) if o is not None)
    return reconcile(Observed(objects, frozenset(namespaces)), selection)


def table(desired: Desired, namespace: str = "default") -> dict | None:
    cm = desired.configmap(namespace)
    return None if cm is None else yaml.safe_load(cm.data[CONFIGMAP_KEY])["models"]


def warnings(desired: Desired) -> list[tuple[str, str, str]]:
    return [(e.ref.name, e.reason, e.message) for e in desired.events if e.type == WARNING]


VALID = [
    ("latency-critical", {**LC}, {"priority": "latency-critical", "slo_ms": 20}),
    ("latency-critical with batch limit", {**LC, "deft.dev/max-batch-size": "4"},
     {"priority": "latency-critical", "slo_ms": 20, "max_batch_size": 4}),
    ("batch", {"deft.dev/priority": "batch"}, {"priority": "batch"}),
    ("batch with deadline", {"deft.dev/priority": "batch", "deft.dev/slo-ms": "5000"},
     {"priority": "batch", "slo_ms": 5000}),
    ("no annotations", None, {"priority": "batch"}),
    ("only other annotations", {"team": "vision"}, {"priority": "batch"}),
    ("batch by default, limit only", {"deft.dev/max-batch-size": "32"},
     {"priority": "batch", "max_batch_size": 32}),
    ("whitespace and leading zeros", {"deft.dev/priority": " latency-critical ",
                                      "deft.dev/slo-ms": " 020 "},
     {"priority": "latency-critical", "slo_ms": 20}),
]


@pytest.mark.parametrize("annotations,entry", [v[1:] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_annotations_are_listed(annotations, entry):
    desired = run(isvc("m", annotations))
    assert table(desired) == {"m": entry}
    assert warnings(desired) == []
    applied = [e for e in desired.events if e.reason == REASON_APPLIED]
    assert [e.ref.name for e in applied] == ["m"]


INVALID = [
    ("unknown class", {"deft.dev/priority": "realtime"}, "is not latency-critical or batch"),
    ("class in capitals", {"deft.dev/priority": "Batch"}, "is not latency-critical or batch"),
    ("latency-critical without slo", {"deft.dev/priority": "latency-critical"},
     "requires deft.dev/slo-ms"),
    ("slo not numeric", {**LC, "deft.dev/slo-ms": "fast"}, "not a positive integer"),
    ("slo with unit", {**LC, "deft.dev/slo-ms": "20ms"}, "not a positive integer"),
    ("slo zero", {**LC, "deft.dev/slo-ms": "0"}, "not a positive integer"),
    ("slo negative", {**LC, "deft.dev/slo-ms": "-5"}, "not a positive integer"),
    ("slo fractional", {**LC, "deft.dev/slo-ms": "1.5"}, "not a positive integer"),
    ("slo empty", {**LC, "deft.dev/slo-ms": ""}, "not a positive integer"),
    ("slo not a string", {**LC, "deft.dev/slo-ms": 20}, "must be a string"),
    ("batch size zero", {"deft.dev/max-batch-size": "0"}, "not a positive integer"),
    ("batch size text", {"deft.dev/max-batch-size": "many"}, "not a positive integer"),
    ("deadline invalid on batch", {"deft.dev/slo-ms": "-1"}, "not a positive integer"),
    # float() overflows past 10^308, int() refuses more than 4300 digits: still a warning
    ("slo of 400 digits", {**LC, "deft.dev/slo-ms": "9" * 400}, "too large"),
    ("batch size of 5000 digits", {"deft.dev/max-batch-size": "1" * 5000}, "too large"),
    ("slo of zeros", {**LC, "deft.dev/slo-ms": "000"}, "not a positive integer"),
]


@pytest.mark.parametrize("annotations,message", [v[1:] for v in INVALID],
                         ids=[v[0] for v in INVALID])
def test_invalid_annotations_warn_and_are_left_out(annotations, message):
    desired = run(isvc("bad", annotations), isvc("good", LC))
    assert table(desired) == {"good": {"priority": "latency-critical", "slo_ms": 20}}
    [(name, reason, text)] = warnings(desired)
    assert (name, reason) == ("bad", REASON_INVALID)
    assert message in text and "not applied" in text


def test_every_problem_of_an_object_is_in_its_one_warning():
    desired = run(isvc("bad", {"deft.dev/priority": "x", "deft.dev/slo-ms": "y",
                               "deft.dev/max-batch-size": "z"}))
    [(_, _, text)] = warnings(desired)
    assert text.count("deft.dev/") == 3


def test_unknown_deft_key_warns_but_keeps_the_entry():
    desired = run(isvc("m", {"deft.dev/priority": "batch", "deft.dev/slo_ms": "20"}))
    assert table(desired) == {"m": {"priority": "batch"}}
    [(name, reason, text)] = warnings(desired)
    assert (name, reason) == ("m", REASON_UNKNOWN) and "deft.dev/slo_ms" in text


def test_a_deft_key_in_other_case_is_reported_not_silently_ignored():
    desired = run(isvc("m", {"Deft.dev/priority": "latency-critical", "deft.dev/slo-ms": "20"}))
    assert table(desired) == {"m": {"priority": "batch", "slo_ms": 20}}
    [(name, reason, text)] = warnings(desired)
    assert (name, reason) == ("m", REASON_UNKNOWN) and "Deft.dev/priority" in text


NOT_DEFT = [
    ("other runtime", isvc("m", LC, runtime="kserve-sklearnserver", model_format="sklearn")),
    ("explicit runtime wins over format", isvc("m", LC, runtime="kserve-torchserve")),
    ("other format, no runtime", isvc("m", LC, runtime=None, model_format="onnx")),
    ("no format, no runtime", isvc("m", LC, runtime=None, model_format=None)),
    ("old-style predictor", {"apiVersion": "serving.kserve.io/v1beta1",
                             "kind": "InferenceService", "metadata": {"name": "m"},
                             "spec": {"predictor": {"pytorch": {"storageUri": "gs://x"}}}}),
    ("TrainedModel on a missing host", tm("m", "nowhere", LC)),
    ("TrainedModel on a non-Deft host", host("h", runtime="triton")),
    ("other kind", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m"}}),
]


@pytest.mark.parametrize("raw", [v[1] for v in NOT_DEFT], ids=[v[0] for v in NOT_DEFT])
def test_objects_not_served_by_deft_are_ignored(raw):
    desired = run(raw, tm("t", "h"))
    assert desired.configmaps == () and desired.events == ()


def test_format_only_isvc_is_deft_through_auto_selection():
    desired = run(isvc("m", LC, runtime=None))
    assert table(desired) == {"m": {"priority": "latency-critical", "slo_ms": 20}}


def test_runtime_and_format_names_are_configurable():
    selection = Selection(runtimes=frozenset({"my-deft"}), model_formats=frozenset({"pt2"}))
    desired = run(isvc("a", runtime="my-deft"), isvc("b", runtime=None, model_format="pt2"),
                  isvc("c", runtime="deft"), selection=selection)
    assert set(table(desired)) == {"a", "b"}


def test_trained_models_inherit_host_annotations_key_by_key():
    desired = run(
        host("h", {**LC, "deft.dev/max-batch-size": "8"}),
        tm("plain", "h"),
        tm("own-slo", "h", {"deft.dev/slo-ms": "5"}),
        tm("as-batch", "h", {"deft.dev/priority": "batch"}),
    )
    assert table(desired) == {
        "plain": {"priority": "latency-critical", "slo_ms": 20, "max_batch_size": 8},
        "own-slo": {"priority": "latency-critical", "slo_ms": 5, "max_batch_size": 8},
        "as-batch": {"priority": "batch", "slo_ms": 20, "max_batch_size": 8},
    }
    assert warnings(desired) == []


def test_host_without_annotations_gives_batch_to_its_models_and_is_not_listed():
    desired = run(host("h"), tm("a", "h"))
    assert table(desired) == {"a": {"priority": "batch"}}


def test_host_with_only_a_class_is_fine_when_each_model_brings_its_slo():
    desired = run(host("h", {"deft.dev/priority": "latency-critical"}),
                  tm("a", "h", {"deft.dev/slo-ms": "10"}), tm("b", "h"))
    assert table(desired) == {"a": {"priority": "latency-critical", "slo_ms": 10}}
    [(name, reason, text)] = warnings(desired)
    assert (name, reason) == ("b", REASON_INVALID)
    assert "inherited from InferenceService 'h'" in text


def test_invalid_host_value_warns_on_host_and_on_models_that_inherit_it():
    desired = run(host("h", {"deft.dev/slo-ms": "soon"}), tm("inherits", "h"),
                  tm("overrides", "h", {"deft.dev/slo-ms": "30"}))
    assert table(desired) == {"overrides": {"priority": "batch", "slo_ms": 30}}
    assert sorted((n, r) for n, r, _ in warnings(desired)) == [
        ("h", REASON_INVALID), ("inherits", REASON_INVALID)]


def test_trained_model_host_is_looked_up_in_its_own_namespace():
    desired = run(host("h", namespace="a"), tm("m", "h", namespace="b"))
    assert [cm.namespace for cm in desired.configmaps] == ["a"]
    assert table(desired, "a") == {}


def test_two_namespaces_get_one_configmap_each():
    desired = run(isvc("m", LC, namespace="a"), isvc("m", namespace="b"),
                  isvc("x", namespace="c", runtime="triton"))
    assert [cm.namespace for cm in desired.configmaps] == ["a", "b"]
    assert table(desired, "a") == {"m": {"priority": "latency-critical", "slo_ms": 20}}
    assert table(desired, "b") == {"m": {"priority": "batch"}}


def test_deleted_object_leaves_the_table():
    before = run(isvc("a", LC), isvc("b"))
    after = run(isvc("a", LC))
    assert set(table(before)) == {"a", "b"} and set(table(after)) == {"a"}


def test_renamed_object_moves_in_the_table():
    assert table(run(isvc("old", LC))) == {"old": {"priority": "latency-critical", "slo_ms": 20}}
    assert table(run(isvc("new", LC))) == {"new": {"priority": "latency-critical", "slo_ms": 20}}


def test_namespace_that_must_be_written_gets_an_empty_table():
    desired = run(namespaces=("default",))
    assert table(desired) == {}
    assert desired.configmap("default").data[CONFIGMAP_KEY] == "models: {}\n"


def test_only_invalid_objects_still_give_their_namespace_a_configmap():
    assert table(run(isvc("bad", {"deft.dev/priority": "urgent"}))) == {}


def test_same_name_with_different_settings_is_ambiguous():
    desired = run(host("h"), tm("m", "h"), isvc("m", LC))
    assert table(desired) == {}
    assert sorted((n, r) for n, r, _ in warnings(desired)) == [
        ("m", REASON_DUPLICATE), ("m", REASON_DUPLICATE)]


def test_same_name_as_an_object_with_invalid_values_is_ambiguous_too():
    # listed, the TrainedModel's settings would reach the InferenceService's pod as well
    desired = run(host("h"), tm("x", "h", LC), isvc("x", {"deft.dev/priority": "urgent"}))
    assert table(desired) == {}
    got = sorted((n, r) for n, r, _ in warnings(desired))
    assert got == [("x", REASON_DUPLICATE), ("x", REASON_INVALID)]
    assert any("whose annotations are invalid" in m for _, _, m in warnings(desired))


def test_same_name_with_equal_settings_is_listed_once():
    desired = run(host("h"), tm("m", "h"), isvc("m"))
    assert table(desired) == {"m": {"priority": "batch"}} and warnings(desired) == []


def test_repeated_object_counts_once_last_wins():
    desired = run(isvc("m"), isvc("m", LC))
    assert table(desired) == {"m": {"priority": "latency-critical", "slo_ms": 20}}


def test_result_does_not_depend_on_order():
    objs = [host("h", LC), tm("a", "h"), tm("b", "h", {"deft.dev/priority": "x"}),
            isvc("c"), isvc("d", namespace="other"), isvc("e", {"deft.dev/x": "1"})]
    first = run(*objs)
    for seed in range(5):
        shuffled = objs[:]
        random.Random(seed).shuffle(shuffled)
        again = run(*shuffled)
        assert again == first
        assert [cm.data for cm in again.configmaps] == [cm.data for cm in first.configmaps]


def test_configmap_text_is_the_contract_format():
    desired = run(isvc("det", {**LC, "deft.dev/max-batch-size": "4"}), isvc("cls"))
    cm = desired.configmap("default")
    text = cm.data[CONFIGMAP_KEY]
    assert text == yaml.safe_dump(cm.table.to_dict(), sort_keys=True)
    assert PriorityTable.from_dict(yaml.safe_load(text)) == cm.table
    manifest = cm.manifest()
    assert manifest["metadata"]["name"] == "deft-priorities"
    assert manifest["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "deft-controller"


def test_models_per_class_counts_every_namespace():
    desired = run(isvc("a", LC), isvc("b"), isvc("c", LC, namespace="x"))
    counts = {p.value: n for p, n in desired.models_per_class().items()}
    assert counts == {"latency-critical": 2, "batch": 1}


annotation_values = st.one_of(
    st.text(max_size=6), st.integers(-3, 300).map(str), st.integers(), st.none(),
    st.sampled_from(["batch", "latency-critical", " batch", "20", "0", "1e3"]),
)
annotation_maps = st.dictionaries(
    st.sampled_from(["deft.dev/priority", "deft.dev/slo-ms", "deft.dev/max-batch-size",
                     "deft.dev/other", "x"]),
    annotation_values, max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(own=annotation_maps, from_host=annotation_maps)
def test_any_annotations_give_either_an_entry_or_a_warning(own, from_host):
    desired = run(host("h", from_host), tm("m", "h", own), isvc("s", own))
    listed = table(desired)
    invalid = {e.ref.name for e in desired.events if e.reason == REASON_INVALID}
    for name in ("m", "s"):
        assert (name in listed) != (name in invalid)
    assert PriorityTable.from_dict({"models": listed}).to_dict() == {"models": listed}


def _long_names(count: int, namespace: str = "default") -> list[dict]:
    return [isvc(f"model-{i:05d}-" + "x" * 230, LC, namespace=namespace) for i in range(count)]


def test_a_table_too_large_for_a_configmap_is_not_written_and_says_so_once():
    # ~280 bytes per latency-critical entry: about 3,750 of them pass the API's 1 MiB
    desired = run(*_long_names(3800), isvc("small", LC, namespace="other"))
    big, small = desired.configmap("default"), desired.configmap("other")
    assert big is not None and big.too_large and big.size_bytes > 1024 * 1024
    assert small is not None and not small.too_large
    too_large = [e for e in desired.events if e.reason == "PriorityTableTooLarge"]
    assert [(e.type, e.ref.kind, e.ref.namespace, e.ref.name) for e in too_large] == [
        ("Warning", "ConfigMap", "default", "deft-priorities")]
    assert "3800 models need" in too_large[0].message
    applied = {e.ref.namespace for e in desired.events if e.reason == REASON_APPLIED}
    assert applied == {"other"}  # nothing in "default" was applied
    fits = run(*_long_names(3000))
    assert not fits.configmap("default").too_large
    assert len([e for e in fits.events if e.reason == REASON_APPLIED]) == 3000
