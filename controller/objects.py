"""Typed observations of the KServe objects the controller reads.

``parse_object`` turns one raw object (a dict, as the API or a YAML file gives it) into an
``InferenceService`` or ``TrainedModel``, returns None for kinds the controller ignores, and
raises ``MalformedObject`` for objects it cannot read. It never raises anything else, whatever
the input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.errors import MalformedObject

GROUP = "serving.kserve.io"
DEFAULT_RUNTIMES = frozenset({"deft", "deft-multimodel", "deft-modelmesh"})
# The model formats Deft's ServingRuntimes claim (manifests/): torch.export programs
# (``model.pt2``) and TorchScript (``model.pt``), the two the runtime loads.
DEFT_MODEL_FORMAT = "pytorch-export"
DEFAULT_MODEL_FORMATS = frozenset({DEFT_MODEL_FORMAT, "torchscript"})


@dataclass(frozen=True)
class Resource:
    """A watched resource type of group ``serving.kserve.io``."""

    version: str
    plural: str
    kind: str
    group: str = GROUP

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


INFERENCE_SERVICES = Resource("v1beta1", "inferenceservices", "InferenceService")
TRAINED_MODELS = Resource("v1alpha1", "trainedmodels", "TrainedModel")


@dataclass(frozen=True)
class ObjectRef:
    """Enough of an object's identity to key tables and to address Events to it."""

    kind: str
    api_version: str
    namespace: str
    name: str
    uid: str = ""
    resource_version: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class InferenceService:
    """An InferenceService. ``has_model``: the predictor names a model location of its own
    (storageUri, storage or storageUris); one without is a multi-model host whose models are
    TrainedModels."""

    ref: ObjectRef
    annotations: Mapping[str, object] = field(default_factory=dict)
    runtime: str | None = None
    model_format: str | None = None
    has_model: bool = True


@dataclass(frozen=True)
class TrainedModel:
    """A TrainedModel; ``inference_service`` names its host in the same namespace."""

    ref: ObjectRef
    annotations: Mapping[str, object] = field(default_factory=dict)
    inference_service: str | None = None


KServeObject = InferenceService | TrainedModel


@dataclass(frozen=True)
class Selection:
    """Which InferenceServices the Deft runtime serves.

    An InferenceService that names a runtime (``predictor.model.runtime``) is Deft's when that
    name is in ``runtimes``; one that names none is Deft's when its model format is in
    ``model_formats`` (KServe then auto-selects a runtime by format, and Deft's runtimes claim
    those formats with ``autoSelect: true``).
    """

    runtimes: frozenset[str] = DEFAULT_RUNTIMES
    model_formats: frozenset[str] = DEFAULT_MODEL_FORMATS

    def serves(self, isvc: InferenceService) -> bool:
        if isvc.runtime:
            return isvc.runtime in self.runtimes
        return isvc.model_format is not None and isvc.model_format in self.model_formats


def parse_object(raw: object, default_namespace: str = "default") -> KServeObject | None:
    """The typed form of ``raw``; None when it is not an InferenceService or TrainedModel."""
    if not isinstance(raw, Mapping):
        raise MalformedObject(f"expected a mapping, got {type(raw).__name__}")
    kind, api_version = raw.get("kind"), raw.get("apiVersion")
    if not isinstance(api_version, str) or api_version.split("/")[0] != GROUP:
        return None
    if kind not in (INFERENCE_SERVICES.kind, TRAINED_MODELS.kind):
        return None
    ref, annotations = _identity(raw, kind, api_version, default_namespace)
    spec = _mapping(raw.get("spec"), f"{ref}: spec")
    if kind == TRAINED_MODELS.kind:
        host = spec.get("inferenceService")
        return TrainedModel(ref, annotations, host if isinstance(host, str) and host else None)
    predictor = _mapping(spec.get("predictor"), f"{ref}: spec.predictor")
    model = _mapping(predictor.get("model"), f"{ref}: spec.predictor.model")
    model_format = _mapping(model.get("modelFormat"), f"{ref}: spec.predictor.model.modelFormat")
    runtime = model.get("runtime")
    format_name = model_format.get("name")
    has_model = bool(
        model.get("storageUri") or model.get("storage") or predictor.get("storageUris")
    )
    return InferenceService(
        ref,
        annotations,
        runtime=runtime if isinstance(runtime, str) and runtime else None,
        model_format=format_name if isinstance(format_name, str) and format_name else None,
        has_model=has_model,
    )


def _identity(
    raw: Mapping[str, Any], kind: str, api_version: str, default_namespace: str
) -> tuple[ObjectRef, dict[str, object]]:
    metadata = _mapping(raw.get("metadata"), f"{kind}: metadata")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise MalformedObject(f"{kind} without metadata.name")
    namespace = metadata.get("namespace") or default_namespace
    if not isinstance(namespace, str):
        raise MalformedObject(f"{kind} {name}: metadata.namespace is not a string")
    annotations = _mapping(metadata.get("annotations"), f"{kind} {namespace}/{name}: annotations")
    ref = ObjectRef(
        kind=kind,
        api_version=api_version,
        namespace=namespace,
        name=name,
        uid=_text(metadata.get("uid")),
        resource_version=_text(metadata.get("resourceVersion")),
    )
    return ref, {k: v for k, v in annotations.items() if isinstance(k, str)}


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedObject(f"{what} is a {type(value).__name__}, not a mapping")
    return value


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
