"""On a real cluster with KServe: annotations on an InferenceService reach ConfigMap
deft-priorities, and changing them changes the table.

Needs a reachable cluster (kubeconfig or in-cluster) with KServe's CRDs; skips otherwise,
after a check of a few seconds. Everything happens in a fresh namespace that is deleted at the
end. The controller runs in this process against the cluster, unless
``DEFT_E2E_CONTROLLER_IMAGE`` names a controller image the cluster can pull: then the
namespaced controller manifests (RBAC included) are applied with kubectl and the controller
runs as a Deployment.

    make e2e                      # or: pytest -m cluster e2e/cluster
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
GROUP, ISVC_VERSION, ISVC_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
PROBE_TIMEOUT_S = 3
WAIT_S = float(os.environ.get("DEFT_E2E_WAIT_S", "90"))


def _connect() -> Any:
    """An ApiClient for a reachable cluster with KServe, or skip saying why not."""
    try:
        from kubernetes import client, config
    except ImportError:
        pytest.skip("the kubernetes package is not installed")
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            api_client = client.ApiClient()
        else:
            api_client = config.new_client_from_config()
    except Exception as exc:
        pytest.skip(f"no Kubernetes configuration (kubeconfig or in-cluster): {exc}")
    host = api_client.configuration.host
    api_client.configuration.retries = 0
    try:
        client.VersionApi(api_client).get_code(_request_timeout=PROBE_TIMEOUT_S)
    except Exception as exc:
        pytest.skip(f"no Kubernetes cluster reachable at {host}: {type(exc).__name__}")
    try:
        client.CustomObjectsApi(api_client).list_cluster_custom_object(
            GROUP, ISVC_VERSION, ISVC_PLURAL, limit=1, _request_timeout=PROBE_TIMEOUT_S
        )
    except client.exceptions.ApiException as exc:
        if exc.status == 404:
            pytest.skip(f"KServe's CRDs are not installed on the cluster at {host}")
        if exc.status != 403:  # 403: may still be allowed in our own namespace
            raise
    return api_client


@pytest.fixture(scope="module")
def cluster() -> Any:
    return _connect()


@pytest.fixture
def namespace(cluster: Any) -> Iterator[str]:
    from kubernetes import client

    core = client.CoreV1Api(cluster)
    name = f"deft-e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"app.kubernetes.io/part-of":
                                                                   "deft"}}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _create_custom(cluster: Any, namespace: str, doc: dict) -> None:
    from kubernetes import client

    group, version = doc["apiVersion"].split("/")
    plural = {"ServingRuntime": "servingruntimes", "InferenceService": "inferenceservices",
              "TrainedModel": "trainedmodels"}[doc["kind"]]
    doc = {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}
    client.CustomObjectsApi(cluster).create_namespaced_custom_object(
        group, version, namespace, plural, doc)


def _wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {WAIT_S:.0f} s waiting for {what}")


def _table(cluster: Any, namespace: str) -> dict | None:
    from kubernetes import client

    try:
        cm = client.CoreV1Api(cluster).read_namespaced_config_map("deft-priorities", namespace)
    except client.exceptions.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return yaml.safe_load((cm.data or {}).get("priorities.yaml", "")) or {}


@pytest.fixture
def controller(cluster: Any, namespace: str) -> Iterator[None]:
    image = os.environ.get("DEFT_E2E_CONTROLLER_IMAGE")
    if image:
        yield from _deployed_controller(namespace, image)
        return
    from controller.clock import SystemClock
    from controller.kube import KubernetesApi
    from controller.loop import Controller, ControllerConfig

    ctl = Controller(
        KubernetesApi(cluster),
        ControllerConfig(namespace=namespace, resync_s=10, watch_timeout_s=10, debounce_s=0.1),
        clock=SystemClock(),
    )
    thread = threading.Thread(target=ctl.run, daemon=True)
    thread.start()
    yield
    ctl.stop()
    thread.join(timeout=20)


def _deployed_controller(namespace: str, image: str) -> Iterator[None]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("DEFT_E2E_CONTROLLER_IMAGE is set but kubectl is not on PATH")
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": namespace, "resources": [str(ROOT / "manifests/controller/namespaced")],
        "images": [{"name": "deft-controller", "newName": image.rsplit(":", 1)[0],
                    "newTag": image.rsplit(":", 1)[1] if ":" in image else "latest"}],
    }
    workdir = ROOT / ".cache" / f"e2e-{namespace}"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    built = subprocess.run([kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone",
                            str(workdir)], check=True, capture_output=True, text=True).stdout
    subprocess.run([kubectl, "apply", "-f", "-"], input=built, check=True, text=True,
                   capture_output=True)
    subprocess.run([kubectl, "-n", namespace, "rollout", "status", "deployment/deft-controller",
                    f"--timeout={int(WAIT_S)}s"], check=True, capture_output=True)
    yield
    shutil.rmtree(workdir, ignore_errors=True)


def test_annotation_changes_reach_the_priority_table(cluster, namespace, controller):
    from kubernetes import client

    for doc in _docs(ROOT / "manifests/runtime/servingruntime.yaml"):
        _create_custom(cluster, namespace, doc)
    speech = next(d for d in _docs(ROOT / "manifests/examples/single-model.yaml")
                  if d["metadata"]["name"] == "speech-commands")
    _create_custom(cluster, namespace, speech)

    def entry() -> dict | None:
        return ((_table(cluster, namespace) or {}).get("models") or {}).get("speech-commands")

    _wait_for("speech-commands as latency-critical",
              lambda: entry() == {"priority": "latency-critical", "slo_ms": 50})

    custom = client.CustomObjectsApi(cluster)
    custom.patch_namespaced_custom_object(
        GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, "speech-commands",
        {"metadata": {"annotations": {"deft.dev/priority": "batch",
                                      "deft.dev/max-batch-size": "8"}}})
    _wait_for("speech-commands as batch", lambda: entry() == {
        "priority": "batch", "slo_ms": 50, "max_batch_size": 8})

    custom.patch_namespaced_custom_object(
        GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, "speech-commands",
        {"metadata": {"annotations": {"deft.dev/slo-ms": "soon"}}})
    _wait_for("speech-commands to leave the table", lambda: entry() is None)

    def warned() -> bool:
        events = client.CoreV1Api(cluster).list_namespaced_event(
            namespace, field_selector="involvedObject.name=speech-commands")
        return any(e.reason == "InvalidPriorityAnnotation" and e.type == "Warning"
                   for e in events.items)

    _wait_for("a Warning Event on speech-commands", warned)
