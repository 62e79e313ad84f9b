"""Loading the manifests and KServe's CRD schemas for the manifest tests.

KServe's CRDs are structural OpenAPI v3 schemas with Kubernetes extensions; ``crd_validator``
turns one into a JSON Schema validator that behaves like the API server with strict field
validation (``kubectl apply`` rejects unknown fields):

- an object schema with ``properties`` and neither ``additionalProperties`` nor
  ``x-kubernetes-preserve-unknown-fields`` rejects unknown fields (the server would prune or,
  under strict validation, reject them);
- ``x-kubernetes-int-or-string`` accepts an integer or a string;
- ``nullable`` accepts null;
- ``x-kubernetes-list-type: map`` requires unique ``x-kubernetes-list-map-keys``, ``set``
  unique items. ``x-kubernetes-validations`` (CEL) are not evaluated.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
KSERVE_KINDS = {
    "InferenceService": "serving.kserve.io_inferenceservices.yaml",
    "TrainedModel": "serving.kserve.io_trainedmodels.yaml",
    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
}
SPEC_HELP = (
    "KServe's CRD schemas were not found: set KSERVE_SPEC_DIR to a directory holding "
    "serving.kserve.io_*.yaml from KServe's config/crd/full/, or place them in "
    "../shared/kserve/ beside the repository"
)


def manifest_files() -> list[Path]:
    """Every YAML file under manifests/ except kustomizations."""
    return sorted(p for p in MANIFESTS.rglob("*.yaml") if p.name != "kustomization.yaml")


def kustomizations() -> list[Path]:
    return sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    """(id, document) for every document of every manifest file."""
    for path in manifest_files():
        for i, doc in enumerate(documents(path)):
            yield f"{path.relative_to(MANIFESTS)}#{i}:{doc.get('kind')}", doc


def kubectl() -> str | None:
    return shutil.which("kubectl")


@cache
def kustomize_build(directory: Path) -> tuple[dict[str, Any], ...]:
    tool = kubectl()
    assert tool is not None
    out = subprocess.run([tool, "kustomize", str(directory)], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def spec_dir() -> Path | None:
    env = os.environ.get("KSERVE_SPEC_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(ROOT.parent / "shared" / "kserve")
    for directory in candidates:
        if all((directory / name).is_file() for name in KSERVE_KINDS.values()):
            return directory
    return None


@cache
def crd_schema(kind: str, api_version: str) -> dict[str, Any]:
    directory = spec_dir()
    assert directory is not None, SPEC_HELP
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are large: use libyaml
    crd = yaml.load((directory / KSERVE_KINDS[kind]).read_text(), Loader=loader)
    group = crd["spec"]["group"]
    for version in crd["spec"]["versions"]:
        if f"{group}/{version['name']}" == api_version and version.get("served", True):
            return _strict(version["schema"]["openAPIV3Schema"])
    raise AssertionError(f"{kind}: the CRD serves no version {api_version}")


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out and "type" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_validator(kind: str, api_version: str) -> Any:
    import jsonschema
    from jsonschema import ValidationError

    def list_type(validator: Any, value: str, instance: Any, schema: dict) -> Iterator[Any]:
        if not isinstance(instance, list):
            return
        if value == "map":
            keys = schema.get("x-kubernetes-list-map-keys", [])
            seen = [tuple(json.dumps(i.get(k), sort_keys=True) for k in keys)
                    for i in instance if isinstance(i, dict)]
        elif value == "set":
            seen = [json.dumps(i, sort_keys=True) for i in instance]
        else:
            return
        if len(seen) != len(set(seen)):
            yield ValidationError(f"duplicate entries in a list of type {value!r}")

    cls = jsonschema.validators.extend(
        jsonschema.Draft7Validator, {"x-kubernetes-list-type": list_type}
    )
    return cls(crd_schema(kind, api_version))


def quantity(value: object) -> float:
    """A Kubernetes resource quantity as a number (cores, bytes, devices)."""
    text = str(value)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
                "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * suffixes[suffix]
    return float(text)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    """Where ``doc`` breaks its KServe CRD schema ("path: message"); empty when it fits."""
    validator = crd_validator(doc["kind"], doc["apiVersion"])
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]
