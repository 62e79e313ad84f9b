"""The v2 gRPC edge: kserve's gRPC server (its interceptors and status mapping) running a
servicer that answers from Deft's engine, as the REST routes (``runtime.http``) do: the same
checks, the same words, gRPC's codes.

kserve's own servicer answers from kserve's model registry and its repository extension,
which know neither what the engine serves nor who may call the repository API. Here model
readiness, metadata and inference are checked against the engine first, and repository
load and unload go through the engine (the registry follows it through the engine's hooks)
behind the same ``RepositoryAccess`` as REST, with its token in the ``authorization``
metadata (``Bearer <token>``).

Imports kserve at module level: import this module only from the entry point (kserve parses
``sys.argv`` when imported).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from grpc import ServicerContext, StatusCode, aio
from grpc_interceptor.exceptions import InvalidArgument
from kserve import ModelServer
from kserve import model_server as kserve_model_server
from kserve.errors import InvalidInput as KServeInvalidInput
from kserve.errors import ModelNotFound as KServeModelNotFound
from kserve.errors import UnsupportedProtocol
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferRequest
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.utils.utils import to_headers

from runtime.codec import UNSUPPORTED_PARAMS
from runtime.engine import Engine
from runtime.errors import printable
from runtime.http import (
    EXTENSIONS,
    SERVER_NAME,
    SERVER_VERSION,
    RepositoryAccess,
    check_load_parameters,
)
from runtime.http import _check_version as check_version
from runtime.kserve_model import (
    GRPC_RECEIVED_AT,
    DeftModel,
    QueueFullStatus,
    as_kserve_errors,
    check_message_inputs,
)

log = logging.getLogger(__name__)

# messages larger than this are converted to kserve's InferRequest off the event loop
INLINE_MESSAGE_BYTES = 256 * 1024

# Triton's RepositoryModelLoad/UnloadRequest (tritonclient.grpc) carries the model's name in
# field 2 (field 1 is its repository_name); KServe's proto has only field 1, model_name.
TRITON_MODEL_NAME_FIELD = 2
_LENGTH_DELIMITED = 2  # protobuf wire type of a string


def repository_model_name(request: Any) -> str:
    """The model a RepositoryModelLoad or RepositoryModelUnload request names, in KServe's
    proto (field 1) or Triton's (field 2, kept among KServe's message's unknown fields: where
    it is there, field 1 is Triton's repository name, which this server, with a single
    repository, ignores as REST ignores a load request body's other fields)."""
    name = request.model_name
    for field in UnknownFieldSet(request):
        if field.field_number == TRITON_MODEL_NAME_FIELD and field.wire_type == _LENGTH_DELIMITED:
            try:
                name = bytes(field.data).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArgument("model name is not valid UTF-8") from None
    if not name:
        raise InvalidArgument("model name is empty")
    return name


# Triton's RepositoryModelLoadRequest carries its parameters (a map: entries of key, field 1,
# and value, field 2) in field 3
TRITON_PARAMETERS_FIELD = 3


def triton_load_parameter_keys(request: Any) -> list[str]:
    """The keys of the parameters a Triton RepositoryModelLoadRequest brings (KServe's proto
    has none: they arrive among its message's unknown fields). Each map entry is read as
    KServe's RepositoryModelLoadRequest, whose one field, a string numbered 1, is where an
    entry keeps its key (the value is left among the unknown fields)."""
    keys = []
    for field in UnknownFieldSet(request):
        if field.field_number == TRITON_PARAMETERS_FIELD and \
                field.wire_type == _LENGTH_DELIMITED:
            try:
                keys.append(pb.RepositoryModelLoadRequest.FromString(bytes(field.data))
                            .model_name)
            except DecodeError:
                raise InvalidArgument("malformed load parameters") from None
    return keys


def model_registry(engine: Engine, models_dir: str | None = None) -> ModelRepository:
    """kserve's model registry kept in step with the engine: a ``DeftModel`` for each model
    the engine serves, added when the engine readies one (a load through either API) and
    dropped when it unloads one."""
    registry = ModelRepository(models_dir=models_dir) if models_dir else ModelRepository()
    for name in engine.ready_models():
        registry.update(DeftModel(name, engine))
    engine.on_ready.append(lambda name: registry.update(DeftModel(name, engine), name))
    engine.on_unloaded.append(lambda name: registry.models.pop(name, None))
    return registry


def _authorization(context: ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return ""


def _triton_index_messages() -> tuple[Any, Any]:
    """Triton's RepositoryIndexRequest and RepositoryIndexResponse (grpc_service.proto), which
    KServe's proto lacks: built in a descriptor pool of their own, since KServe's and Triton's
    generated modules both claim the ``inference`` package in the default one."""
    fd = descriptor_pb2.FileDescriptorProto(name="deft_triton_index.proto",
                                            package="deft.triton", syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    req = fd.message_type.add(name="RepositoryIndexRequest")
    req.field.add(name="repository_name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    req.field.add(name="ready", number=2, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    resp = fd.message_type.add(name="RepositoryIndexResponse")
    entry = resp.nested_type.add(name="ModelIndex")
    for number, name in enumerate(("name", "version", "state", "reason"), start=1):
        entry.field.add(name=name, number=number, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    resp.field.add(name="models", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                   type_name=".deft.triton.RepositoryIndexResponse.ModelIndex")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(
        f"deft.triton.{n}")) for n in ("RepositoryIndexRequest", "RepositoryIndexResponse"))


RepositoryIndexRequest, RepositoryIndexResponse = _triton_index_messages()
REPOSITORY_INDEX_METHOD = "RepositoryIndex"


class DeftServicer(InferenceServicer):  # type: ignore[misc]
    """kserve's v2 servicer with the engine as the authority on models: what REST answers,
    gRPC answers."""

    def __init__(
        self, data_plane: DataPlane, model_repository_extension: ModelRepositoryExtension,
        engine: Engine, access: RepositoryAccess,
    ) -> None:
        super().__init__(data_plane, model_repository_extension)
        self._engine = engine
        self._access = access

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: ServicerContext
    ) -> pb.ServerReadyResponse:
        # as REST's probe: a dead executor thread is restarted, and this answer says not ready
        return pb.ServerReadyResponse(
            ready=self._engine.ensure_executor() and self._engine.ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: ServicerContext
    ) -> pb.ModelReadyResponse:
        """Ready or not for a known model (false while it is not loaded); NOT_FOUND for an
        unknown one or a version other than the served one."""
        with as_kserve_errors():
            check_version(self._engine, request.name, request.version or None)
            ready = self._engine.model_ready(request.name)
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: ServicerContext
    ) -> pb.ModelMetadataResponse:
        with as_kserve_errors():
            check_version(self._engine, request.name, request.version or None)
            meta = self._engine.metadata(request.name)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: ServicerContext
    ) -> pb.ModelInferResponse:
        """kserve's ModelInfer, except that the engine decides whether the model is known and
        loaded (kserve's registry holds only loaded models), a large message is converted
        off the event loop (typed contents become Python values one by one: 126 ms for 8 MB,
        time the loop would not serve anyone), and the time the call arrived goes with it
        (``GRPC_RECEIVED_AT``). kserve's data plane runs the rest through
        ``DeftModel.predict``."""
        received = self._engine.clock.now()
        with as_kserve_errors():
            served = self._engine.model(request.model_name)
        self.validate_grpc_request(request)
        # before the typed contents cost their conversion
        check_message_inputs(request, served.inputs,
                             functools.partial(self._engine.check_batch, served.name))
        if request.ByteSize() > INLINE_MESSAGE_BYTES:
            infer_request = await asyncio.get_running_loop().run_in_executor(
                None, InferRequest.from_grpc, request)
        else:
            infer_request = InferRequest.from_grpc(request)
        keep_unsupported_keys(request, infer_request)
        token = GRPC_RECEIVED_AT.set(received)
        try:
            body, _ = await self._data_plane.infer(
                request=infer_request, headers=to_headers(context),
                model_name=request.model_name)
        finally:
            GRPC_RECEIVED_AT.reset(token)
        return body.to_grpc()  # every model here is a DeftModel: an InferResponse

    def _check_access(self, context: ServicerContext) -> None:
        with as_kserve_errors():
            self._access.check_authorization(_authorization(context))

    def _repository_call(self, request: Any, context: ServicerContext) -> str:
        self._check_access(context)
        return repository_model_name(request)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        name = self._repository_call(request, context)
        with as_kserve_errors():
            check_load_parameters(triton_load_parameter_keys(request))
            await self._engine.load(name)
        return pb.RepositoryModelLoadResponse(model_name=name, isLoaded=True)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        name = self._repository_call(request, context)
        with as_kserve_errors():
            await self._engine.unload(name)
        return pb.RepositoryModelUnloadResponse(model_name=name, isUnloaded=True)

    async def RepositoryIndex(self, request: Any, context: ServicerContext) -> Any:
        """Triton's repository index (not in KServe's proto; served by ``index_handler``):
        REST's ``POST /v2/repository/index``, behind the same access check; ``ready``: only
        the models ready now."""
        self._check_access(context)
        entry = RepositoryIndexResponse.ModelIndex
        return RepositoryIndexResponse(
            models=[entry(**m) for m in self._engine.index(ready_only=request.ready)])


def index_handler(servicer: DeftServicer) -> grpc.GenericRpcHandler:
    """``inference.GRPCInferenceService/RepositoryIndex`` (what ``tritonclient.grpc``'s
    ``get_model_repository_index`` calls), beside KServe's methods of the same service."""
    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
        REPOSITORY_INDEX_METHOD: grpc.unary_unary_rpc_method_handler(
            servicer.RepositoryIndex,
            request_deserializer=RepositoryIndexRequest.FromString,
            response_serializer=RepositoryIndexResponse.SerializeToString),
    })


def keep_unsupported_keys(request: pb.ModelInferRequest, converted: InferRequest) -> None:
    """kserve's conversion keeps a tensor's parameters only of the kinds its proto has, so a
    Triton client's ``uint64_param`` or ``double_param`` is dropped. The keys of the v2
    extensions Deft does not implement are put back, so that they are refused, with REST's
    words, wherever they come."""
    outputs = getattr(converted, "request_outputs", None) or []
    pairs = [*zip(request.inputs, converted.inputs, strict=False),
             *zip(request.outputs, outputs, strict=False)]
    for raw, tensor in pairs:
        kept = tensor.parameters or {}
        missing = {k: True for k in UNSUPPORTED_PARAMS if k in raw.parameters and k not in kept}
        if missing:
            tensor.parameters = {**kept, **missing}


class ClientErrorsToStatus(ExceptionToStatusInterceptor):  # type: ignore[misc]
    """kserve's exceptions-to-status mapping, except that a client's mistake (bad input, an
    unknown model) is logged as one line, as the REST server logs a 4xx, not as an error
    with a traceback; the server's own errors are logged as kserve logs them."""

    async def handle_exception(
        self, ex: Exception, request_or_iterator: Any, context: ServicerContext,
        method_name: str,
    ) -> None:
        trailing: tuple[tuple[str, str], ...] = ()
        if isinstance(ex, QueueFullStatus):
            code, details = ex.status_code, ex.details
            # REST's Retry-After, as gRPC's retry pushback: a client whose retry policy
            # covers RESOURCE_EXHAUSTED waits that long before it tries again
            trailing = (("grpc-retry-pushback-ms", str(max(1, round(ex.retry_after_s * 1000)))),)
        elif isinstance(ex, (KServeInvalidInput, UnsupportedProtocol)):
            code, details = StatusCode.INVALID_ARGUMENT, ex.reason
        elif isinstance(ex, KServeModelNotFound):
            code, details = StatusCode.NOT_FOUND, ex.reason
        else:
            await super().handle_exception(ex, request_or_iterator, context, method_name)
            return
        details = printable(details)
        log.info("%s: %s %s", method_name, code.name, details)
        await context.abort(code, details, trailing_metadata=trailing)


class _Malformed:
    """What a request that is not a valid protobuf message of its method's type decodes to."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class MalformedMessagesToStatus(aio.ServerInterceptor):  # type: ignore[misc]
    """A request whose bytes are not a message of its method's type is INVALID_ARGUMENT,
    logged as one line, as a client's other mistakes are. gRPC itself answers UNKNOWN and
    logs an error with a traceback for each, which any client could fill the log with."""

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        decode, inner = handler.request_deserializer, handler.unary_unary

        def lenient(raw: bytes) -> Any:
            try:
                return decode(raw)
            except DecodeError as exc:
                return _Malformed(str(exc))

        async def call(request: Any, context: ServicerContext) -> Any:
            if isinstance(request, _Malformed):
                reason = printable(f"the request is not a valid message: {request.reason}")
                log.info("%s: INVALID_ARGUMENT %s", details.method, reason)
                await context.abort(StatusCode.INVALID_ARGUMENT, reason)
            answer = inner(request, context)
            return await answer if inspect.isawaitable(answer) else answer

        return handler._replace(request_deserializer=lenient, unary_unary=call)


def make_server(
    servicer: InferenceServicer, max_workers: int, max_message_bytes: int | None = None,
    log_calls: bool = True,
) -> aio.Server:
    """A grpc.aio server serving ``servicer`` with kserve's interceptors (its line per call,
    unless ``log_calls`` is off; its exceptions-to-status mapping, quiet about clients'
    mistakes). It receives messages of up to ``max_message_bytes`` (REST's body limit in
    the runtime; None: gRPC's own 4 MiB) and sends answers of any size, as REST does. No
    port yet."""
    options = [("grpc.max_send_message_length", -1)]
    if max_message_bytes is not None:
        options.append(("grpc.max_receive_message_length", max_message_bytes))
    interceptors = (LoggingInterceptor(),) if log_calls else ()
    server = aio.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=(MalformedMessagesToStatus(), *interceptors, ClientErrorsToStatus()),
        options=options,
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    if isinstance(servicer, DeftServicer):
        server.add_generic_rpc_handlers((index_handler(servicer),))
    return server


class DeftGRPCServer(GRPCServer):  # type: ignore[misc]
    """kserve's gRPC server with ``DeftServicer`` in place of kserve's servicer."""

    def __init__(
        self, port: int, data_plane: DataPlane,
        model_repository_extension: ModelRepositoryExtension, kwargs: dict[str, Any],
        grace_period: int, *, engine: Engine, access: RepositoryAccess,
        log_calls: bool = True, max_message_bytes: int | None = None,
    ) -> None:
        super().__init__(port, data_plane, model_repository_extension, kwargs, grace_period)
        self._engine = engine
        self._access = access
        self._log_calls = log_calls
        self._max_message_bytes = max_message_bytes

    async def start(self, max_workers: int) -> None:
        servicer = DeftServicer(
            self._data_plane, self._model_repository_extension, self._engine, self._access)
        self._server = make_server(
            servicer, max_workers, self._max_message_bytes, self._log_calls)
        listen_addr = f"[::]:{self._port}"
        self._server.add_insecure_port(listen_addr)
        log.info("gRPC server on %s, %d workers", listen_addr, max_workers)
        await self._server.start()
        await self._server.wait_for_termination()


class DeftModelServer(ModelServer):  # type: ignore[misc]
    """kserve's ModelServer whose gRPC server (``enable_grpc``) is ``DeftGRPCServer``: kserve
    itself is told to start none, and this one joins the servers it runs."""

    def __init__(
        self, engine: Engine, access: RepositoryAccess, *, enable_grpc: bool = True,
        access_log: bool = True, max_message_bytes: int | None = None, **kwargs: Any,
    ) -> None:
        super().__init__(enable_grpc=False, **kwargs)
        self.deft_grpc = enable_grpc
        self._engine = engine
        self._access = access
        self._access_log = access_log  # off: no line per gRPC call either
        self._max_message_bytes = max_message_bytes

    async def _serve(self) -> None:
        if self.deft_grpc:
            self._grpc_server = DeftGRPCServer(
                self.grpc_port, self.dataplane, self.model_repository_extension,
                kwargs=vars(kserve_model_server.args), grace_period=self.grace_period,
                engine=self._engine, access=self._access, log_calls=self._access_log,
                max_message_bytes=self._max_message_bytes,
            )
            self.servers.append(self._grpc_server.start(self.max_threads))
        await super()._serve()
