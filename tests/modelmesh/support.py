"""A ModelMesh runtime in-process for tests: a real engine, the model-runtime gRPC server on
a loopback port, a grpc.aio client, and small real torch models saved into a folder."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch
import yaml

from runtime.engine import Engine, ServedModel
from runtime.model_repository import ModelSource
from runtime.modelmesh.loading import load_served
from runtime.modelmesh.models import ModelMeshModels, ModelMeshOptions
from runtime.modelmesh.server import ModelMeshServer
from runtime.modelmesh.stubs import pb, pb_grpc
from tests.runtime.helpers import make_engine

MIB = 1024 * 1024
WEIGHT_BYTES = (4 * 8 + 8 + 8 * 3 + 3) * 4  # Tiny's parameters, FP32


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(4, 8)
        self.fc2 = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def export_tiny(path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=4)
    program = torch.export.export(Tiny().eval(), (torch.randn(2, 4),),
                                  dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, path)
    return path


def model_folder(root: Path, name: str, model_file: Path, config: dict | None = None) -> Path:
    """``root/name/model.pt2`` (+ ``config.yaml``), as ModelMesh's storage helper lays it out."""
    folder = root / name
    folder.mkdir(parents=True)
    shutil.copy(model_file, folder / "model.pt2")
    if config is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


class GatedLoader:
    """Wraps a loader: records each call and holds it until ``release`` is set."""

    def __init__(self, inner: Callable[[ModelSource], ServedModel]) -> None:
        self.inner = inner
        self.calls: list[str] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def hold(self) -> None:
        self.started.clear()
        self.release.clear()

    def __call__(self, source: ModelSource) -> ServedModel:
        self.calls.append(source.name)
        self.started.set()
        if not self.release.wait(30):
            raise TimeoutError("the test never released the load")
        return self.inner(source)

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, 30), "the load never started"


@dataclass
class Mesh:
    engine: Engine
    models: ModelMeshModels
    stub: pb_grpc.ModelRuntimeStub
    loader: GatedLoader
    registered: set[str] = field(default_factory=set)  # what the data endpoint would serve

    async def load(self, model_id: str, path: Path | str, key: str = "") -> int:
        reply = await self.stub.loadModel(
            pb.LoadModelRequest(modelId=model_id, modelType="pytorch-export",
                                modelPath=str(path), modelKey=key)
        )
        return reply.sizeInBytes

    async def unload(self, model_id: str) -> None:
        await self.stub.unloadModel(pb.UnloadModelRequest(modelId=model_id))

    async def status(self) -> pb.RuntimeStatusResponse:
        return await self.stub.runtimeStatus(pb.RuntimeStatusRequest())


@contextlib.asynccontextmanager
async def mesh(capacity_bytes: int = 64 * MIB, loader=None) -> AsyncIterator[Mesh]:
    engine = make_engine([])
    engine.start()
    gated = GatedLoader(loader or functools.partial(load_served, device=torch.device("cpu")))
    registered: set[str] = set()
    models = ModelMeshModels(
        engine, gated, ModelMeshOptions(capacity_bytes=capacity_bytes),
        on_loaded=registered.add, on_unloaded=registered.discard,
    )
    server = ModelMeshServer(models, 0)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"localhost:{port}") as channel:
            yield Mesh(engine, models, pb_grpc.ModelRuntimeStub(channel), gated, registered)
    finally:
        await server.stop(0)
        engine.stop(1.0)


def run(scenario: Callable[[Mesh], object], **options) -> None:
    """Run ``async def scenario(mesh)`` against a fresh in-process runtime."""

    async def main() -> None:
        async with mesh(**options) as m:
            await scenario(m)

    asyncio.run(main())
