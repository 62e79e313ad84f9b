"""The v2 REST edge: decode, call the engine, encode. No scheduling or torch here.

Routes are registered on the kserve ModelServer's FastAPI app before kserve adds its own, so
they take precedence for the paths below; kserve keeps serving ``/metrics``, health and the
rest. Infer requests reach their handler ahead of the app's middleware stack
(``InferFastPath``). Error conditions map to status codes here and only here.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from runtime import errors
from runtime.codec import Limits, decode_request, encode_response, error_body
from runtime.engine import Engine
from runtime.http_body import RECEIVED_AT
from scheduler.clock import MonotonicClock

log = logging.getLogger(__name__)

SERVER_NAME = "deft"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "model_repository", "schedule_policy"]

_STATUS: list[tuple[type[errors.DeftError], int]] = [
    (errors.ModelNotFound, 404),
    (errors.PayloadTooLarge, 400),
    (errors.InvalidInput, 400),
    (errors.QueueFull, 429),
    (errors.RequestTimeout, 408),
    (errors.ModelNotReady, 503),
    (errors.ShuttingDown, 503),
    (errors.Unauthorized, 401),
    (errors.Disabled, 403),
    (errors.ModelLoadError, 500),
    (errors.InferenceFailed, 500),
]


def status_of(exc: errors.DeftError) -> int:
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return 500


def error_response(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(errors.printable(message)), status, headers,
                    media_type="application/json")


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status, media_type="application/json")


@dataclass(frozen=True)
class RepositoryAccess:
    """Who may call the repository (load/unload/index) routes."""

    enabled: bool = True
    token: str | None = None

    def check(self, request: Request) -> None:
        self.check_authorization(request.headers.get("authorization", ""))

    def check_authorization(self, authorization: str) -> None:
        """Refuse a caller (``Disabled``, ``Unauthorized``) by the value of its
        ``Authorization`` header (REST) or ``authorization`` metadata (gRPC). The scheme is
        matched case-insensitively, as HTTP's authentication schemes are."""
        if not self.enabled:
            raise errors.Disabled("the model repository API is disabled on this server")
        if self.token is None:
            return
        scheme, _, credentials = authorization.strip().partition(" ")
        if not (scheme.lower() == "bearer"
                and hmac.compare_digest(credentials.strip().encode(), self.token.encode())):
            raise errors.Unauthorized("the model repository API needs a valid bearer token")


INLINE_DECODE_BYTES = 256 * 1024
SMALL_CHUNK_BYTES = 4096
INLINE_JSON_BYTES = 2 * 1024


def _decodes_inline(body: bytes | BodyChunks, headers: dict[str, str]) -> bool:
    """Whether a request body is cheap enough to decode on the event loop: uncompressed,
    and either a binary-extension body of at most ``INLINE_DECODE_BYTES`` whose JSON header
    is small, or a JSON body of at most ``INLINE_JSON_BYTES``."""
    if headers.get("content-encoding") or len(body) > INLINE_DECODE_BYTES:
        return False
    header_len = headers.get("inference-header-content-length", "")
    if header_len.isascii() and header_len.isdigit():  # not "\u00b2": the codec refuses it
        return int(header_len) <= INLINE_JSON_BYTES
    return len(body) <= INLINE_JSON_BYTES


# a request body from which nothing arrives for this long is answered 408 (a client that
# declares a large body and stalls must not hold the server's memory or its shutdown)
BODY_IDLE_TIMEOUT_S = 30.0


async def _read_body(
    request: Request, limit: int, idle_s: float = BODY_IDLE_TIMEOUT_S
) -> bytes | BodyChunks:
    """The request body, refused with ``PayloadTooLarge`` as soon as it passes ``limit``
    bytes (declared or received): a chunked body is never read past the limit. A body from
    which nothing arrives for ``idle_s`` raises ``RequestTimeout``.

    A body declared larger than ``INLINE_DECODE_BYTES`` comes back as its chunks
    (``BodyChunks``), to be joined off the event loop."""
    header = request.headers.get("content-length", "")
    declared = int(header) if header.isdigit() else None
    if declared is not None and declared > limit:
        raise errors.PayloadTooLarge(
            f"request body is {declared} bytes, more than the limit of {limit}"
        )
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(idle_s) as deadline:

            def arrived() -> None:  # data came: the idle timeout starts over
                deadline.reschedule(loop.time() + idle_s)

            if declared is not None and declared > INLINE_DECODE_BYTES:
                return await _read_into(request, declared, arrived)
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.stream():
                arrived()
                size += len(chunk)
                if size > limit:
                    raise errors.PayloadTooLarge(
                        f"request body is more than the limit of {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except TimeoutError:
        raise errors.RequestTimeout(
            f"request body stalled: nothing arrived for {idle_s:g} s") from None


class BodyChunks:
    """A large request body as the chunks the server read, in order: on the event loop
    each chunk is only kept; ``join`` copies them into one buffer, in the worker thread that
    decodes the request. Copying a batch of images on the loop took about 1.5 ms a request
    (megabytes, with the interpreter lock held), during which no other request was read."""

    def __init__(self, chunks: list[bytes | bytearray], length: int) -> None:
        self._chunks = collections.deque(chunks)
        self._length = length
        self._joined: np.ndarray | None = None

    def __len__(self) -> int:
        return self._length

    def join(self) -> np.ndarray:
        """The whole body as one ``uint8`` array (the same one on every call); numpy copies
        without the interpreter lock, and each chunk is let go once copied."""
        if self._joined is not None:
            return self._joined
        body = np.empty(self._length, dtype=np.uint8)
        pos = 0
        while self._chunks:
            chunk = self._chunks.popleft()
            body[pos:pos + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            pos += len(chunk)
        self._joined = body
        return body

    def __bytes__(self) -> bytes:
        return self.join().tobytes()


async def _read_into(
    request: Request, length: int, arrived: Callable[[], None]
) -> BodyChunks:
    """A body of declared ``length`` bytes, kept chunk by chunk as it arrives: a client that
    declares a large body and sends little holds little. Chunks under ``SMALL_CHUNK_BYTES``
    (a client sending a few bytes at a time) are gathered into one buffer instead of kept
    each as an object of its own, so memory stays about the bytes received."""
    chunks: list[bytes | bytearray] = []
    small = bytearray()
    size = 0
    async for chunk in request.stream():
        arrived()
        size += len(chunk)
        if size > length:  # the server's HTTP parser keeps to the declared length
            raise errors.InvalidInput(f"request body is longer than its content-length {length}")
        if len(chunk) >= SMALL_CHUNK_BYTES and not small:
            chunks.append(chunk)
            continue
        small += chunk
        if len(small) >= SMALL_CHUNK_BYTES:
            chunks.append(small)
            small = bytearray()
    if small:
        chunks.append(small)
    if size != length:
        raise errors.InvalidInput(
            f"request body is {size} bytes, shorter than its content-length {length}"
        )
    return BodyChunks(chunks, length)


async def _optional_object(request: Request) -> dict[str, Any]:
    """A repository request's body: empty, or a JSON object (its other fields are for
    extensions this server does not implement)."""
    body = bytes(await _read_body(request, 1 << 20))
    if not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise errors.InvalidInput(f"request body must be a JSON object, got {type(doc).__name__}")
    return doc


def _repository_parameters(doc: dict[str, Any], action: str) -> None:
    """A load or unload request's ``parameters``: an object, if given. Models load from the
    server's repository as configured there: a load that brings a configuration or files of
    its own (tritonclient's ``config``, ``file:<path>``) is refused rather than loaded
    without them."""
    parameters = doc.get("parameters", {})
    if not isinstance(parameters, dict):
        raise errors.InvalidInput(f"{action} request 'parameters' must be an object")
    if action == "load":
        check_load_parameters(parameters)


def check_load_parameters(keys: Iterable[str]) -> None:
    """Refuse a load (REST or gRPC) whose parameters bring a model configuration or files of
    their own (``config``, ``file:<path>``): models load from the repository as configured."""
    brought = sorted(k for k in keys if k == "config" or k.startswith("file:"))
    if brought:
        raise errors.InvalidInput(
            f"load parameters {brought} are not supported: models load from the "
            "server's repository with the configuration found there")


async def _cancel_on_disconnect(request: Request, task: asyncio.Task[Any]) -> bool:
    """Cancels ``task`` when the client goes away; True once it has."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return True


def _guard(fn: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    import functools

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return await fn(*args, **kwargs)
        except errors.DeftError as exc:
            headers = None
            if isinstance(exc, errors.QueueFull):
                headers = {"retry-after": str(max(1, round(exc.retry_after_s)))}
            return error_response(str(exc), status_of(exc), headers)

    return wrapper


def _check_version(engine: Engine, model_name: str, model_version: str | None) -> None:
    """A version in the path must be the loaded model's (each model serves one)."""
    if model_version is not None and engine.model_ready(model_name):
        served = engine.model(model_name)
        if model_version != served.version:
            raise errors.ModelNotFound(model_name, model_version)


@dataclass(frozen=True)
class StageHistograms:
    """KServe's per-request histograms (``request_preprocess_seconds``,
    ``request_predict_seconds``, ``request_postprocess_seconds``, labelled by ``model_name``),
    which KServe's own infer path fills: Deft's REST infer fills them too, with its decoding,
    its run on the engine and its encoding. Passed in by the entry point (kserve parses
    ``sys.argv`` when it is imported)."""

    preprocess: Any
    predict: Any
    postprocess: Any

    @classmethod
    def from_kserve(cls) -> StageHistograms:
        from kserve.metrics import POST_HIST_TIME, PRE_HIST_TIME, PREDICT_HIST_TIME

        return cls(PRE_HIST_TIME, PREDICT_HIST_TIME, POST_HIST_TIME)


def infer_handler(
    engine: Engine, limits: Limits, stages: StageHistograms | None = None
) -> Callable[..., Awaitable[Response]]:
    """``POST /v2/models/{name}[/versions/{version}]/infer``: read, decode (off the loop
    where it costs), run on the engine, encode. Served by the router and, ahead of the
    whole middleware stack, by ``InferFastPath``. ``stages``: histograms to time each
    stage in."""
    clock = time.perf_counter

    @_guard
    async def infer(
        request: Request, model_name: str, model_version: str | None = None
    ) -> Response:
        received = request.scope.get(RECEIVED_AT) if isinstance(engine.clock, MonotonicClock) \
            else None
        if received is None:
            received = engine.clock.now()
        served = engine.model(model_name)
        _check_version(engine, model_name, model_version)
        engine.check_room(model_name)  # a full queue costs the server no body read, no decode
        try:
            body = await _read_body(request, limits.max_body_bytes)
        except ClientDisconnect:
            return error_response("client disconnected", 499)
        headers = {k.lower(): v for k, v in request.headers.items()}

        def decode() -> Any:
            raw = body.join().data if isinstance(body, BodyChunks) else body
            return decode_request(raw, headers, served.inputs, limits, outputs=served.outputs,
                                  max_batch_size=served.max_batch_size)

        # A small binary request decodes in microseconds (numpy views of the body): on the
        # loop it saves two thread hops. Anything else (JSON, compressed, large) decodes in a
        # worker thread so that the loop keeps serving meanwhile.
        t0 = clock()
        if _decodes_inline(body, headers):
            decoded = decode()
        else:
            decoded = await asyncio.get_running_loop().run_in_executor(None, decode)
        t1 = clock()
        plan = decoded.output_plan([s.name for s in served.outputs])
        # The job is submitted from this task, and its answer resumes this task in the event
        # loop's next turn after the executor posts it. A task of its own, asyncio.wait and
        # asyncio.shield would add a turn each (and one more on the way in); on a busy
        # machine each turn is a chance to wait for the loop or the GIL. A client that goes
        # away cancels this task, which withdraws the job.
        this = asyncio.current_task()
        assert this is not None
        gone = asyncio.ensure_future(_cancel_on_disconnect(request, this))
        try:
            outputs = await engine.infer(
                model_name, decoded.inputs, priority=decoded.priority,
                timeout_us=decoded.timeout_us, received_at=received,
                served=served,  # the version its inputs were checked against, reload or not
            )
        except asyncio.CancelledError:
            if not (gone.done() and not gone.cancelled() and gone.exception() is None):
                raise  # cancelled from elsewhere (shutdown): not ours to answer
            this.uncancel()
            log.info("client of a %s request went away; its job was withdrawn", model_name)
            return error_response("client disconnected", 499)
        finally:
            gone.cancel()
        t2 = clock()
        selected = {o.name: outputs[o.name] for o in plan}
        binary = {o.name for o in plan if o.binary_data}
        payload, out_headers = encode_response(
            model_name, served.version, decoded.id, selected, served.outputs, binary
        )
        if stages is not None:
            stages.preprocess.labels(model_name=model_name).observe(t1 - t0)
            stages.predict.labels(model_name=model_name).observe(t2 - t1)
            stages.postprocess.labels(model_name=model_name).observe(clock() - t2)
        return Response(payload, 200, out_headers)

    return infer


def build_router(
    engine: Engine, limits: Limits, access: RepositoryAccess | None = None,
    infer: Callable[..., Awaitable[Response]] | None = None,
) -> APIRouter:
    """The v2 routes Deft serves itself (infer, metadata, readiness, repository); ``infer``:
    the infer handler, when the caller has made it (``infer_handler``)."""
    access = access or RepositoryAccess()
    infer = infer or infer_handler(engine, limits)
    router = APIRouter()

    @_guard
    async def server_metadata() -> Response:
        return _json({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})

    @_guard
    async def live() -> Response:
        return _json({"live": True})

    @_guard
    async def ready() -> Response:
        # a dead executor thread is restarted, and this probe still says it was not ready
        ok = engine.ensure_executor() and engine.ready()
        return _json({"ready": ok}, 200 if ok else 503)

    @_guard
    async def list_models() -> Response:
        return _json({"models": engine.ready_models()})

    def check_version(model_name: str, model_version: str | None) -> None:
        _check_version(engine, model_name, model_version)

    @_guard
    async def model_metadata(model_name: str, model_version: str | None = None) -> Response:
        check_version(model_name, model_version)
        return _json(engine.metadata(model_name))

    @_guard
    async def model_ready(model_name: str, model_version: str | None = None) -> Response:
        check_version(model_name, model_version)
        ok = engine.model_ready(model_name)
        return _json({"name": model_name, "ready": ok}, 200 if ok else 503)

    @_guard
    async def repository_index(request: Request) -> Response:
        access.check(request)
        doc = await _optional_object(request)
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise errors.InvalidInput("repository index: 'ready' must be a boolean")
        return _json(engine.index(ready_only=ready))

    @_guard
    async def repository_load(request: Request, model_name: str) -> Response:
        access.check(request)
        _repository_parameters(await _optional_object(request), "load")
        await engine.load(model_name)
        return _json({"name": model_name, "load": True})

    @_guard
    async def repository_unload(request: Request, model_name: str) -> Response:
        access.check(request)
        _repository_parameters(await _optional_object(request), "unload")
        await engine.unload(model_name)
        return _json({"name": model_name, "unload": True})

    @_guard
    async def v1(rest: str) -> Response:
        # kserve's v1 routes would hand our models requests they cannot read (500)
        return error_response(
            "this server speaks the v2 inference protocol: POST /v2/models/{name}/infer", 404)

    add = router.add_api_route
    add("/v2", server_metadata, methods=["GET"])
    add("/v2/health/live", live, methods=["GET"])
    add("/v2/health/ready", ready, methods=["GET"])
    add("/v2/models", list_models, methods=["GET"])
    add("/v2/models/{model_name}", model_metadata, methods=["GET"])
    add("/v2/models/{model_name}/versions/{model_version}", model_metadata, methods=["GET"])
    add("/v2/models/{model_name}/ready", model_ready, methods=["GET"])
    add("/v2/models/{model_name}/versions/{model_version}/ready", model_ready, methods=["GET"])
    add("/v2/models/{model_name}/infer", infer, methods=["POST"])
    add("/v2/models/{model_name}/versions/{model_version}/infer", infer, methods=["POST"])
    add("/v2/repository/index", repository_index, methods=["POST"])
    add("/v2/repository/models/{model_name}/load", repository_load, methods=["POST"])
    add("/v2/repository/models/{model_name}/unload", repository_unload, methods=["POST"])
    add("/v1/{rest:path}", v1, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    return router


_MODELS = "/v2/models/"
_INFER = "/infer"


def infer_target(path: str) -> tuple[str, str | None] | None:
    """``(model, version)`` when ``path`` is an infer route (as the router matches it: no
    empty segment, no extra slash), else None."""
    if not (path.startswith(_MODELS) and path.endswith(_INFER)):
        return None
    parts = path[len(_MODELS):-len(_INFER)].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


class InferFastPath:
    """ASGI: ``POST`` infer requests go straight to Deft's handler, ahead of the app's
    middleware stack; everything else goes through the app.

    Per latency-critical request the stack cost more event-loop time than the handler:
    kserve's timing middleware (it logs two lines for every request), FastAPI's routing over
    every route, its dependency solving and three more middlewares, about half of the loop's
    time for a small request, measured with a sampling profiler on the server. The handler
    answers every outcome itself (a v2 ``{"error": ...}`` body); an exception it does not
    expect is a 500 with one too, as kserve's catch-all handler would give."""

    def __init__(self, app: ASGIApp, infer: Callable[..., Awaitable[Response]]) -> None:
        self.app = app
        self.infer = infer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = None
        if scope["type"] == "http" and scope["method"] == "POST":
            path, root = scope["path"], scope.get("root_path", "")
            if root and path.startswith(root + "/"):
                path = path[len(root):]
            target = infer_target(path)
        if target is None:
            await self.app(scope, receive, send)
            return
        try:
            response = await self.infer(Request(scope, receive), *target)
        except Exception as exc:
            log.exception("infer request for %s failed", target[0])
            response = error_response(f"{type(exc).__name__}: {exc}", 500)
        await response(scope, receive, send)


# a line per request: the web server's access log, and kserve's timing middleware (two
# lines per request on the routes that pass through the middleware stack)
ACCESS_LOGGERS = ("uvicorn.access", "kserve.trace")


def quiet_access_log() -> None:
    """No line per request (``--access_log off``): the loggers stay, at WARNING, so each
    request costs them one level check on the event loop."""
    for name in ACCESS_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def install(app: FastAPI, engine: Engine, limits: Limits, access: RepositoryAccess,
            stages: StageHistograms | None = None) -> None:
    """Put Deft's routes and v2 error mapping on ``app`` (before kserve adds its routes and
    middlewares), and ``InferFastPath`` in front of its middleware stack; infer requests
    time their stages in ``stages``."""
    infer = infer_handler(engine, limits, stages)
    app.include_router(build_router(engine, limits, access, infer))
    build = app.build_middleware_stack  # called once, at the app's first request

    def build_with_fast_path() -> ASGIApp:
        return InferFastPath(build(), infer)

    app.build_middleware_stack = build_with_fast_path  # type: ignore[method-assign]
    # a path with a trailing slash is not a route: a v2 404, not a redirect with an empty
    # body (which v2 clients do not follow) to the host the request named
    app.router.redirect_slashes = False

    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(f"invalid request: {exc.errors()}", 400)

    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        return error_response(detail, exc.status_code, getattr(exc, "headers", None))

    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
