"""KServe objects in manifests/: valid against KServe's CRDs, and consistent with what the
runtime and the controller expect (flags, paths, names, model formats)."""

from __future__ import annotations

import copy

import pytest
from deft_manifest_support import (
    KSERVE_KINDS,
    MANIFESTS,
    SPEC_HELP,
    all_documents,
    crd_errors,
    documents,
    kubectl,
    kustomizations,
    kustomize_build,
    quantity,
    spec_dir,
)

from controller.dryrun import dry_run
from controller.objects import DEFAULT_MODEL_FORMATS, DEFAULT_RUNTIMES
from controller.reconcile import CONFIGMAP_KEY, CONFIGMAP_NAME

KSERVE_DOCS = [(i, d) for i, d in all_documents() if d.get("kind") in KSERVE_KINDS]
# the ModelMesh runtime (grpcEndpoint) has a contract of its own, tested with the ModelMesh mode
RUNTIMES = [
    (i, d)
    for i, d in KSERVE_DOCS
    if d["kind"].endswith("ServingRuntime") and "grpcEndpoint" not in d["spec"]
]
EXAMPLES = MANIFESTS / "examples"


@pytest.fixture(scope="module")
def schemas() -> None:
    if spec_dir() is None:
        pytest.skip(SPEC_HELP)


@pytest.mark.parametrize("doc", [d for _, d in KSERVE_DOCS], ids=[i for i, _ in KSERVE_DOCS])
def test_kserve_objects_match_the_crd(schemas, doc):
    assert crd_errors(doc) == []


def test_every_kserve_kind_is_covered():
    assert {d["kind"] for _, d in KSERVE_DOCS} == set(KSERVE_KINDS)


def test_kustomize_output_matches_the_crds(schemas):
    if kubectl() is None:
        pytest.skip("kubectl (with its built-in kustomize) is not on PATH")
    checked = 0
    for directory in kustomizations():
        for doc in kustomize_build(directory):
            if doc["kind"] in KSERVE_KINDS:
                assert crd_errors(doc) == [], (directory, doc["metadata"]["name"])
                checked += 1
    assert checked >= 10


@pytest.mark.parametrize("mutate,expected", [
    (lambda d: d["spec"]["containers"][0].update(argz=["x"]), "Additional properties"),
    (lambda d: d["spec"].update(multiModel="yes"), "is not of type 'boolean'"),
    (lambda d: d["spec"]["containers"][0]["env"].append({"name": "PYTHONUNBUFFERED"}),
     "duplicate entries"),
    (lambda d: d["spec"]["supportedModelFormats"][0].update(priority="high"),
     "is not of type 'integer'"),
    (lambda d: d["spec"]["containers"][0]["resources"]["limits"].update(cpu=[1]),
     "is not valid under any of the given schemas"),
])
def test_the_schema_check_catches_mistakes(schemas, mutate, expected):
    doc = copy.deepcopy(RUNTIMES[0][1])
    mutate(doc)
    assert any(expected in e for e in crd_errors(doc)), crd_errors(doc)


def container(doc: dict) -> dict:
    [c] = [c for c in doc["spec"]["containers"] if c["name"] == "kserve-container"]
    return c


def flags(doc: dict) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for arg in container(doc).get("args", []):
        name, _, value = arg.partition("=")
        out[name] = value or None
    return out


@pytest.mark.parametrize("doc", [d for _, d in RUNTIMES], ids=[i for i, _ in RUNTIMES])
def test_runtime_contract(doc):
    spec, name = doc["spec"], doc["metadata"]["name"]
    assert name in DEFAULT_RUNTIMES
    assert {f["name"] for f in spec["supportedModelFormats"]} == DEFAULT_MODEL_FORMATS
    assert spec["protocolVersions"][0] == "v2"
    assert spec["annotations"] == {"prometheus.kserve.io/port": "8080",
                                   "prometheus.kserve.io/path": "/metrics"}
    args = flags(doc)
    assert args["--http_port"] == "8080" and args["--grpc_port"] == "8081"
    assert args["--model_dir"] == "/mnt/models" and args["--policy"] == "deft"
    assert args["--device"] in ("auto", "cuda")
    multi = spec.get("multiModel", False)
    assert ("--disable_repository_api" in args) is not multi
    assert ("--model_name" in args) is not multi
    if not multi:
        assert args["--model_name"] == "{{.Name}}"
    c = container(doc)
    config_path = args["--priority_config"]
    [mount] = [m for m in c["volumeMounts"] if config_path.startswith(m["mountPath"] + "/")]
    assert config_path == f"{mount['mountPath']}/{CONFIGMAP_KEY}" and mount.get("readOnly")
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"] == {"name": CONFIGMAP_NAME, "optional": True}
    assert "subPath" not in mount  # a subPath mount never sees ConfigMap updates
    limits, requests = c["resources"]["limits"], c["resources"]["requests"]
    assert limits["nvidia.com/gpu"] == requests["nvidia.com/gpu"] == "1"
    for key in requests:
        assert quantity(requests[key]) <= quantity(limits[key]), key
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["name"] for m in c["volumeMounts"]}
    assert mounts <= {v["name"] for v in spec["volumes"]}


def test_namespaced_and_cluster_runtimes_are_the_same():
    def by_name(kind: str) -> dict:
        return {d["metadata"]["name"]: d["spec"] for _, d in RUNTIMES if d["kind"] == kind}

    namespaced, clustered = by_name("ServingRuntime"), by_name("ClusterServingRuntime")
    assert namespaced == clustered and set(namespaced) == {"deft", "deft-multimodel"}
    assert [s.get("multiModel", False) for s in namespaced.values()].count(True) == 1


def example_objects(*names: str) -> list[dict]:
    return [d for n in names for d in documents(EXAMPLES / n)]


def test_examples_use_deft_runtimes_and_formats():
    runtimes = {d["metadata"]["name"]: d["spec"] for _, d in RUNTIMES}
    objects = example_objects("multi-model.yaml", "single-model.yaml", "broken.yaml")
    hosts = {}
    for doc in objects:
        if doc["kind"] == "InferenceService":
            model = doc["spec"]["predictor"]["model"]
            runtime = model.get("runtime")
            formats = {f["name"] for r in runtimes.values() for f in r["supportedModelFormats"]}
            assert model["modelFormat"]["name"] in formats
            if runtime:
                assert runtime in runtimes
                multi = runtimes[runtime].get("multiModel", False)
                assert multi is ("storageUri" not in model)
                if multi:
                    hosts[doc["metadata"]["name"]] = model["modelFormat"]["name"]
    for doc in objects:
        if doc["kind"] == "TrainedModel":
            host = doc["spec"]["inferenceService"]
            assert host in hosts and doc["spec"]["model"]["framework"] == hosts[host]


def test_examples_kustomization_leaves_the_broken_example_out():
    text = (EXAMPLES / "kustomization.yaml").read_text()
    assert "broken.yaml" not in text.replace("# ", "").split("resources:")[1]


def read(*names: str) -> list[tuple[str, str]]:
    return [((EXAMPLES / n).read_text(), n) for n in names]


def test_examples_dry_run_cleanly():
    result = dry_run(read("multi-model.yaml", "single-model.yaml"))
    assert [e for e in result.desired.events if e.type == "Warning"] == []
    [cm] = result.desired.configmaps
    assert cm.table.get("detector").priority.value == "latency-critical"
    assert cm.table.get("resnet152").priority.value == "batch"
    assert "edge-gpu" not in cm.table.models  # the host is not a model


def test_broken_example_warns_on_each_of_its_objects():
    broken = {d["metadata"]["name"] for d in example_objects("broken.yaml")}
    result = dry_run(read("multi-model.yaml", "broken.yaml"))
    warned = {e.ref.name for e in result.desired.events if e.type == "Warning"}
    assert warned == broken
    assert not broken & set(result.desired.configmaps[0].table.models)
