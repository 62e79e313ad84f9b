"""ModelMesh mode: the ``mmesh.ModelRuntime`` gRPC server, and its wiring into the runtime.

ModelMesh's container runs in the same pod and calls the management service on
``localhost:--modelmesh_port``; the server listens on the loopback interfaces only, since
loading and unloading take no credentials. Inference requests do not come here: ModelMesh
forwards them to the v2 gRPC data endpoint (``--grpc_port``), kserve's gRPC server, which
finds a model under its ModelMesh id because :func:`install` registers every model that loads
with kserve's model registry (and removes it on unload).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc

from runtime.engine import Engine
from runtime.modelmesh import memory
from runtime.modelmesh.loading import load_served
from runtime.modelmesh.models import ModelMeshModels, ModelMeshOptions
from runtime.modelmesh.servicer import ModelRuntimeServicer
from runtime.modelmesh.stubs import pb_grpc

log = logging.getLogger(__name__)

LOOPBACK = "localhost"  # gRPC binds every loopback address this resolves to (IPv4 and IPv6)


class ModelMeshServer:
    """A grpc.aio server for one ``ModelMeshModels``; start and stop it on the event loop."""

    def __init__(self, models: ModelMeshModels, port: int, host: str = LOOPBACK) -> None:
        self.models = models
        self.host = host
        self.port = port
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Listen and serve; returns the bound port (``port`` 0 picks a free one)."""
        server = grpc.aio.server()
        pb_grpc.add_ModelRuntimeServicer_to_server(ModelRuntimeServicer(self.models), server)
        bound = server.add_insecure_port(f"{self.host}:{self.port}")
        if not bound:
            raise OSError(f"cannot listen on {self.host}:{self.port} for ModelMesh")
        await server.start()
        self._server, self.port = server, bound
        log.info("ModelMesh model-runtime service on %s:%d", self.host, bound)
        return bound

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        self.models.close()


class ModelRegistry(Protocol):
    """What :func:`install` needs of kserve's ``ModelRepository``."""

    def update(self, model: Any) -> None: ...

    def unload(self, name: str) -> None: ...


class LifespanApp(Protocol):
    """A Starlette/FastAPI application (its router runs the lifespan)."""

    router: Any


def install(
    app: LifespanApp,
    engine: Engine,
    registry: ModelRegistry,
    make_model: Callable[[str], Any],
    *,
    port: int,
    memory_budget_mb: float | None = None,
) -> ModelMeshServer:
    """Serve ModelMesh's management API beside ``app`` (the kserve ModelServer's FastAPI app):
    the gRPC server starts and stops with the app's lifespan, on its event loop.

    ``make_model(model_id)`` builds the kserve model registered for the data endpoint.
    """
    capacity = memory.capacity_bytes(engine.device, memory_budget_mb)
    options = ModelMeshOptions(capacity_bytes=capacity)

    def loaded(model_id: str) -> None:
        registry.update(make_model(model_id))

    def unloaded(model_id: str) -> None:
        with contextlib.suppress(KeyError):
            registry.unload(model_id)

    models = ModelMeshModels(
        engine,
        functools.partial(load_served, device=engine.device),
        options,
        on_loaded=loaded,
        on_unloaded=unloaded,
    )
    server = ModelMeshServer(models, port)
    app_lifespan = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        await server.start()
        try:
            async with app_lifespan(application) as state:
                yield state
        finally:
            await server.stop()

    app.router.lifespan_context = lifespan
    log.info(
        "ModelMesh mode on port %d: %.0f MiB of %s memory for models",
        port, options.capacity_bytes / memory.MIB, engine.device,
    )
    return server
