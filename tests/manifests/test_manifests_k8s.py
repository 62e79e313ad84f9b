"""Kubernetes built-in kinds in manifests/: well-formed, hardened, least-privilege RBAC, and
kustomizations that build."""

from __future__ import annotations

import re

import pytest
import yaml
from deft_manifest_support import (
    KSERVE_KINDS,
    MANIFESTS,
    all_documents,
    kubectl,
    kustomizations,
    kustomize_build,
    quantity,
)

from controller.reconcile import CONFIGMAP_NAME

BUILTIN = {
    ("v1", "Namespace"), ("v1", "ServiceAccount"), ("v1", "ConfigMap"),
    ("apps/v1", "Deployment"),
    ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"),
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "ClusterServingRuntime",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")

DOCS = list(all_documents())
OTHER = [(i, d) for i, d in DOCS if d.get("kind") not in KSERVE_KINDS]
ROLES = [d for _, d in DOCS if d["kind"] in ("Role", "ClusterRole")]
BINDINGS = [d for _, d in DOCS if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
DEPLOYMENTS = [d for _, d in DOCS if d["kind"] == "Deployment"]

# What the controller may do, and nothing more (controller/kube.py makes exactly these calls).
ALLOWED = {
    ("serving.kserve.io", "inferenceservices"): {"get", "list", "watch"},
    ("serving.kserve.io", "trainedmodels"): {"get", "list", "watch"},
    ("", "configmaps"): {"get", "list", "create", "update", "patch"},
    ("", "events"): {"create", "patch"},
}
NEEDED = {
    ("serving.kserve.io", "inferenceservices"): {"list", "watch"},
    ("serving.kserve.io", "trainedmodels"): {"list", "watch"},
    ("", "configmaps"): {"get", "create", "patch"},
    ("", "events"): {"create", "patch"},
}


def check_metadata(doc: dict) -> None:
    meta = doc["metadata"]
    assert DNS_SUBDOMAIN.fullmatch(meta["name"]) and len(meta["name"]) <= 253
    for key, value in (meta.get("labels") or {}).items():
        assert isinstance(value, str) and LABEL_VALUE.fullmatch(value) and len(value) <= 63, key
    for key, value in (meta.get("annotations") or {}).items():
        assert isinstance(value, str), f"annotation {key} must be a string"
    if doc["kind"] in CLUSTER_SCOPED:
        assert "namespace" not in meta


@pytest.mark.parametrize("doc", [d for _, d in DOCS], ids=[i for i, _ in DOCS])
def test_every_document_has_type_and_metadata(doc):
    assert isinstance(doc.get("apiVersion"), str) and isinstance(doc.get("kind"), str)
    assert (doc["apiVersion"], doc["kind"]) in BUILTIN or doc["kind"] in KSERVE_KINDS
    check_metadata(doc)


@pytest.mark.parametrize("doc", [d for _, d in OTHER], ids=[i for i, _ in OTHER])
def test_builtin_kinds_have_their_required_fields(doc):
    kind = doc["kind"]
    if kind == "Deployment":
        assert doc["spec"]["template"]["spec"]["containers"]
    elif kind in ("Role", "ClusterRole"):
        assert doc["rules"]
    elif kind in ("RoleBinding", "ClusterRoleBinding"):
        assert doc["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io" and doc["subjects"]
    elif kind == "ValidatingAdmissionPolicy":
        assert doc["spec"]["validations"] and doc["spec"]["matchConstraints"]
    elif kind == "ValidatingAdmissionPolicyBinding":
        assert doc["spec"]["policyName"] and doc["spec"]["validationActions"] == ["Deny"]


def test_controller_deployment_is_hardened_and_sane():
    [deployment] = DEPLOYMENTS
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    service_accounts = {d["metadata"]["name"] for _, d in DOCS if d["kind"] == "ServiceAccount"}
    assert pod["serviceAccountName"] in service_accounts
    volumes = {v["name"] for v in pod.get("volumes", [])}
    [c] = pod["containers"]
    assert DNS_LABEL.fullmatch(c["name"]) and c["image"]
    assert all(isinstance(a, str) for a in c["args"])
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert all(1 <= n <= 65535 and len(name) <= 15 for name, n in ports.items())
    for probe in ("livenessProbe", "readinessProbe"):
        port = c[probe]["httpGet"]["port"]
        assert port in ports or port in ports.values()
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert f"--metrics_port={ports['metrics']}" in c["args"]
    requests, limits = c["resources"]["requests"], c["resources"]["limits"]
    assert set(requests) == set(limits) == {"cpu", "memory"}
    for key in requests:
        assert quantity(requests[key]) <= quantity(limits[key])
    assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert "--namespace=$(POD_NAMESPACE)" in c["args"]


def rule_pairs(rule: dict) -> list[tuple[str, str]]:
    return [(g, r) for g in rule.get("apiGroups", []) for r in rule.get("resources", [])]


@pytest.mark.parametrize("role", ROLES, ids=[f"{r['kind']}/{r['metadata']['name']}"
                                             for r in ROLES])
def test_rbac_is_least_privilege(role):
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in item for item in rule.get(field, [])), (field, rule)
        assert "nonResourceURLs" not in rule
        pairs = rule_pairs(rule)
        assert pairs, rule
        for pair in pairs:
            assert pair in ALLOWED, f"{pair} is not a resource the controller needs"
            assert set(rule["verbs"]) <= ALLOWED[pair], (pair, rule["verbs"])
        if any(resource == "configmaps" for _, resource in pairs):
            if "create" in rule["verbs"]:
                # create cannot be limited by name: a rule with resourceNames would deny it
                assert "resourceNames" not in rule and rule["verbs"] == ["create"]
            else:
                assert rule.get("resourceNames") == [CONFIGMAP_NAME]


@pytest.mark.parametrize("role", ROLES, ids=[f"{r['kind']}/{r['metadata']['name']}"
                                             for r in ROLES])
def test_rbac_grants_what_the_controller_calls(role):
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for pair in rule_pairs(rule):
            granted.setdefault(pair, set()).update(rule["verbs"])
    needed = dict(NEEDED)
    if role["kind"] == "ClusterRole":
        # across all namespaces it lists the tables it wrote before (by name) at start-up
        needed[("", "configmaps")] = NEEDED[("", "configmaps")] | {"list"}
    for pair, verbs in needed.items():
        assert verbs <= granted.get(pair, set()), pair


def test_rbac_test_would_catch_a_wildcard():
    bad = {"kind": "Role", "metadata": {"name": "x"},
           "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]}]}
    with pytest.raises(AssertionError):
        test_rbac_is_least_privilege(bad)
    bad["rules"][0]["verbs"] = ["get", "delete"]
    bad["rules"][0]["resourceNames"] = [CONFIGMAP_NAME]
    with pytest.raises(AssertionError):
        test_rbac_is_least_privilege(bad)


@pytest.mark.parametrize("binding", BINDINGS, ids=[b["kind"] for b in BINDINGS])
def test_bindings_point_at_our_role_and_service_account(binding):
    roles = {(r["kind"], r["metadata"]["name"]) for r in ROLES}
    assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in roles
    assert binding["roleRef"]["kind"] == binding["kind"].replace("Binding", "")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "deft-controller"}]


def test_every_manifest_file_is_in_a_kustomization_or_documented_as_separate():
    listed = set()
    for directory in kustomizations():
        text = (directory / "kustomization.yaml").read_text()
        listed |= {(directory / line.strip()[2:]).resolve()
                   for line in text.splitlines() if line.strip().startswith("- ")}
    separate = {MANIFESTS / "examples" / "broken.yaml"}
    for path in MANIFESTS.rglob("*.yaml"):
        if path.name != "kustomization.yaml":
            assert path.resolve() in listed or path in separate, path


INSTALLS = {MANIFESTS, MANIFESTS / "cluster", MANIFESTS / "cluster-hardening", MANIFESTS / "cpu"}


@pytest.mark.parametrize("directory", kustomizations(),
                         ids=[str(d.relative_to(MANIFESTS)) or "." for d in kustomizations()])
def test_kustomizations_build(directory):
    if kubectl() is None:
        pytest.skip("kubectl (with its built-in kustomize) is not on PATH")
    docs = kustomize_build(directory)
    assert docs
    for doc in docs:
        check_metadata(doc)
        if directory not in INSTALLS:
            continue  # bases leave the namespace to the overlay that installs them
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace"), (directory, doc["kind"])
        for subject in doc.get("subjects", []):
            assert subject.get("namespace"), "a ServiceAccount subject needs its namespace"


def test_install_overlays_contain_runtime_and_controller():
    if kubectl() is None:
        pytest.skip("kubectl (with its built-in kustomize) is not on PATH")
    namespaced = {(d["kind"], d["metadata"]["name"]) for d in kustomize_build(MANIFESTS)}
    assert {("ServingRuntime", "deft"), ("ServingRuntime", "deft-multimodel"),
            ("Deployment", "deft-controller"), ("Role", "deft-controller"),
            ("RoleBinding", "deft-controller")} <= namespaced
    cluster = kustomize_build(MANIFESTS / "cluster")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in cluster}
    assert {("ClusterServingRuntime", "deft"), ("ClusterRole", "deft-controller"),
            ("ClusterRoleBinding", "deft-controller")} <= kinds
    [deployment] = [d for d in cluster if d["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args and not any(a.startswith("--namespace") for a in args)
    assert deployment["metadata"]["namespace"] == "deft-system"


def test_the_cpu_install_is_the_namespaced_one_without_gpus():
    if kubectl() is None:
        pytest.skip("kubectl (with its built-in kustomize) is not on PATH")

    def without_gpus(doc):
        for container in doc.get("spec", {}).get("containers", []):
            for bound in container.get("resources", {}).values():
                bound.pop("nvidia.com/gpu", None)
        return doc

    cpu = kustomize_build(MANIFESTS / "cpu")
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(cpu)
    assert [without_gpus(d) for d in kustomize_build(MANIFESTS)] == list(cpu)
