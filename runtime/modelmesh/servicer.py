"""The ``mmesh.ModelRuntime`` gRPC edge: decode a request, call ``ModelMeshModels``, encode
the answer. Error conditions become gRPC status codes here and only here.

- RESOURCE_EXHAUSTED: the model does not fit (InsufficientMemory), or the device ran out
  of memory while loading it;
- NOT_FOUND: the model's path does not exist; ``modelSize`` of an id that is not loaded;
- INVALID_ARGUMENT: no id or path, not a model file, a corrupt or refused model file, a bad
  ``config.yaml``, a model that fails on example inputs;
- CANCELLED: the model was unloaded while it loaded (LoadCancelled);
- UNAVAILABLE: the runtime is shutting down;
- INTERNAL: anything else, with the exception's type and message.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import grpc

from runtime import errors
from runtime.executor import out_of_memory
from runtime.modelmesh.errors import InsufficientMemory, LoadCancelled, ModelFilesMissing
from runtime.modelmesh.models import ModelMeshModels
from runtime.modelmesh.stubs import pb

log = logging.getLogger(__name__)

V2_SERVICE = "inference.GRPCInferenceService"
# The v2 inference methods ModelMesh may forward to the data endpoint, and the path to the
# string field it overwrites with the model id (field 1: ModelInferRequest.model_name,
# ModelMetadataRequest.name, ModelReadyRequest.name). The data endpoint then finds the model
# under the id it was loaded as.
ID_INJECTION_PATHS: dict[str, list[int]] = {
    f"{V2_SERVICE}/ModelInfer": [1],
    f"{V2_SERVICE}/ModelMetadata": [1],
    f"{V2_SERVICE}/ModelReady": [1],
}

_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InsufficientMemory, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ModelFilesMissing, grpc.StatusCode.NOT_FOUND),
    (errors.ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ModelLoadError, grpc.StatusCode.INVALID_ARGUMENT),
    (LoadCancelled, grpc.StatusCode.CANCELLED),
    (errors.ShuttingDown, grpc.StatusCode.UNAVAILABLE),
]


def status_code(exc: BaseException) -> grpc.StatusCode:
    # a load that ran out of memory reaches here wrapped (ModelLoadError from the OOM): it
    # is still RESOURCE_EXHAUSTED, which tells ModelMesh to place the model elsewhere
    cause: BaseException | None = exc
    while cause is not None:
        if out_of_memory(cause):
            return grpc.StatusCode.RESOURCE_EXHAUSTED
        cause = cause.__cause__
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> NoReturn:
    code = status_code(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("%s failed", method, exc_info=exc)
        message = f"{type(exc).__name__}: {exc}"
    else:
        message = str(exc)
    await context.abort(code, message)  # raises: the RPC ends here
    raise AssertionError("unreachable")


class ModelRuntimeServicer:
    """Implements ``mmesh.ModelRuntime`` (registered with ``pb_grpc``'s ``add_..._to_server``)."""

    def __init__(self, models: ModelMeshModels) -> None:
        self._models = models

    async def loadModel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            size = await self._models.load(request.modelId, request.modelPath, request.modelKey)
        except Exception as exc:
            await _abort(context, "loadModel", exc)
        return pb.LoadModelResponse(sizeInBytes=size)

    async def unloadModel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            await self._models.unload(request.modelId)
        except Exception as exc:
            await _abort(context, "unloadModel", exc)
        return pb.UnloadModelResponse()

    async def predictModelSize(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        size = self._models.predict_size(request.modelId, request.modelPath, request.modelKey)
        return pb.PredictModelSizeResponse(sizeInBytes=size)

    async def modelSize(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            size = await self._models.size(request.modelId)
        except Exception as exc:
            await _abort(context, "modelSize", exc)
        return pb.ModelSizeResponse(sizeInBytes=size)

    async def runtimeStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            status = await self._models.status()
        except Exception as exc:
            await _abort(context, "runtimeStatus", exc)
        if not status.ready:
            return pb.RuntimeStatusResponse(status=pb.RuntimeStatusResponse.STARTING)
        options = status.options
        response = pb.RuntimeStatusResponse(
            status=pb.RuntimeStatusResponse.READY,
            capacityInBytes=options.capacity_bytes,
            maxLoadingConcurrency=options.max_loading_concurrency,
            modelLoadingTimeoutMs=options.loading_timeout_ms,
            defaultModelSizeInBytes=options.default_model_size_bytes,
            runtimeVersion=options.runtime_version,
            # the scheduler, not ModelMesh, decides what runs: every request must reach it
            # so a latency-critical one can preempt batch work
            limitModelConcurrency=False,
        )
        for method, path in ID_INJECTION_PATHS.items():
            response.methodInfos[method].idInjectionPath.extend(path)
        return response
