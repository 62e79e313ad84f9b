"""manifests/modelmesh/: valid against KServe's CRDs, consistent with the runtime's command
line and ModelMesh's contract, and the example InferenceServices reconcile into the
priority table under the names the runtime maps ModelMesh ids to."""

from __future__ import annotations

import copy

import pytest
from deft_manifest_support import (
    MANIFESTS,
    SPEC_HELP,
    crd_errors,
    documents,
    kubectl,
    kustomize_build,
    spec_dir,
)

from controller.dryrun import dry_run
from controller.objects import DEFAULT_MODEL_FORMATS, DEFAULT_RUNTIMES
from controller.reconcile import CONFIGMAP_KEY, CONFIGMAP_NAME
from runtime.config import parse_args
from runtime.modelmesh.ids import priority_name
from scheduler.priority import ModelSettings, Priority

HERE = MANIFESTS / "modelmesh"
FILES = sorted(p for p in HERE.rglob("*.yaml") if p.name != "kustomization.yaml")
DOCS = [(f"{p.relative_to(HERE)}#{i}", d) for p in FILES for i, d in enumerate(documents(p))]
[RUNTIME] = [d for _, d in DOCS if d["kind"] == "ServingRuntime"]
EXAMPLES = [d for _, d in DOCS if d["kind"] == "InferenceService"]


@pytest.fixture(scope="module")
def schemas() -> None:
    if spec_dir() is None:
        pytest.skip(SPEC_HELP)


@pytest.mark.parametrize("doc", [d for _, d in DOCS], ids=[i for i, _ in DOCS])
def test_objects_match_the_crds(schemas, doc):
    assert crd_errors(doc) == []


@pytest.mark.parametrize("mutate,expected", [
    (lambda d: d["spec"].update(grpcEndpoint=8085), "is not of type 'string'"),
    (lambda d: d["spec"].update(storageHelper={"disabled": "no"}), "is not of type 'boolean'"),
    (lambda d: d["spec"]["containers"][0].update(port=8085), "Additional properties"),
])
def test_the_schema_check_catches_mistakes(schemas, mutate, expected):
    doc = copy.deepcopy(RUNTIME)
    mutate(doc)
    assert any(expected in e for e in crd_errors(doc)), crd_errors(doc)


def container() -> dict:
    [c] = RUNTIME["spec"]["containers"]
    return c


def endpoint_port(value: str) -> int:
    kind, _, port = value.partition(":")
    assert kind == "port", value
    return int(port)


def test_runtime_is_a_modelmesh_runtime_the_controller_watches():
    spec = RUNTIME["spec"]
    assert RUNTIME["metadata"]["name"] == "deft-modelmesh" in DEFAULT_RUNTIMES
    assert spec["multiModel"] is True
    assert "builtInAdapter" not in spec  # Deft serves mmesh.ModelRuntime itself
    assert not spec.get("storageHelper", {}).get("disabled", False)  # models come pulled
    assert spec["protocolVersions"] == ["grpc-v2"]
    assert {f["name"] for f in spec["supportedModelFormats"]} == DEFAULT_MODEL_FORMATS
    assert endpoint_port(spec["grpcEndpoint"]) == 8085
    assert endpoint_port(spec["grpcDataEndpoint"]) == 8001


def test_runtime_arguments_parse_and_match_the_endpoints():
    spec, args = RUNTIME["spec"], container()["args"]
    cfg, unknown = parse_args(args)
    assert unknown == []
    assert cfg.modelmesh_port == endpoint_port(spec["grpcEndpoint"])
    assert cfg.grpc_port == endpoint_port(spec["grpcDataEndpoint"]) and cfg.enable_grpc
    assert cfg.http_port == int(spec["annotations"]["prometheus.kserve.io/port"])
    assert not cfg.repository_api  # ModelMesh alone loads and unloads
    assert cfg.policy == "deft" and cfg.model_name is None


def test_runtime_mounts_the_priority_table_and_is_hardened():
    spec, c = RUNTIME["spec"], container()
    cfg, _ = parse_args(c["args"])
    path = str(cfg.priority_config)
    [mount] = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert path == f"{mount['mountPath']}/{CONFIGMAP_KEY}" and mount["readOnly"]
    assert "subPath" not in mount  # a subPath mount never sees ConfigMap updates
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"] == {"name": CONFIGMAP_NAME, "optional": True}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_examples_are_a_latency_critical_and_a_batch_model_on_modelmesh():
    formats = {f["name"] for f in RUNTIME["spec"]["supportedModelFormats"]}
    assert len(EXAMPLES) == 2
    for isvc in EXAMPLES:
        annotations = isvc["metadata"]["annotations"]
        assert annotations["serving.kserve.io/deploymentMode"] == "ModelMesh"
        model = isvc["spec"]["predictor"]["model"]
        assert model["runtime"] == RUNTIME["metadata"]["name"]
        assert model["modelFormat"]["name"] in formats
        assert model.get("storage") or model.get("storageUri")
    classes = {d["metadata"]["annotations"]["deft.dev/priority"] for d in EXAMPLES}
    assert classes == {"latency-critical", "batch"}


def test_examples_reconcile_under_the_names_the_runtime_maps_ids_to():
    path = HERE / "examples" / "inferenceservices.yaml"
    result = dry_run([(path.read_text(), path.name)])
    assert [e for e in result.desired.events if e.type == "Warning"] == []
    [configmap] = result.desired.configmaps
    table = configmap.table
    for isvc in EXAMPLES:
        name = isvc["metadata"]["name"]
        model_id = f"{name}__isvc-6b2eb0b8bf"  # what ModelMesh calls its model
        assert table.get(priority_name(model_id)) is not None, name
    assert table.get("detector") == ModelSettings(Priority.LATENCY_CRITICAL, 20.0, 4)
    assert table.get("classifier") == ModelSettings(Priority.BATCH, None, 16)


def test_every_file_is_in_a_kustomization():
    listed = set()
    for kustomization in HERE.rglob("kustomization.yaml"):
        text = kustomization.read_text()
        listed |= {(kustomization.parent / line.strip()[2:]).resolve()
                   for line in text.splitlines() if line.strip().startswith("- ")}
    assert {p.resolve() for p in FILES} <= listed


@pytest.mark.parametrize("directory", [HERE, HERE / "examples"], ids=["runtime", "examples"])
def test_kustomizations_build_and_match_the_crds(schemas, directory):
    if kubectl() is None:
        pytest.skip("kubectl (with its built-in kustomize) is not on PATH")
    docs = kustomize_build(directory)
    assert docs
    for doc in docs:
        assert crd_errors(doc) == [], doc["metadata"]["name"]
