"""Plays ModelMesh's side against a running Deft runtime: what ModelMesh's container does
in a pod, step by step, with the same calls on the wire.

1. ``runtimeStatus`` until READY; the answer must allow-list v2 ``ModelInfer`` with the id
   injected at field 1 (``model_name``);
2. ``predictModelSize``, ``loadModel`` and ``modelSize`` for two models, laid out as
   ModelMesh's storage helper lays them out (``<models>/<model id>/``);
3. v2 gRPC on the data endpoint with tritonclient: ServerLive/Ready, ModelReady,
   ModelMetadata and ModelInfer, each naming the model by its ModelMesh id (what ModelMesh
   forwards after injecting the id);
4. ``unloadModel`` for both (twice: it is idempotent); the data endpoint then answers
   NOT_FOUND for them.

Run it against a runtime started with ``--modelmesh_port``::

    python -m runtime --model_dir /tmp/empty --modelmesh_port 8085 --grpc_port 8001
    python -m e2e.modelmesh_play --modelmesh 127.0.0.1:8085 --data 127.0.0.1:8001

Exit status 0 when every step behaved as ModelMesh expects. The models are the demo models
(exported once into the demo cache); ``--models DIR`` is where their copies are put.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

# ModelMesh's ids for the InferenceServices "detector" and "classifier"
DETECTOR = "detector__isvc-6b2eb0b8bf"
CLASSIFIER = "classifier__isvc-3d2daa3370"
INPUTS = {DETECTOR: (96, "scores", (16,)), CLASSIFIER: (224, "logits", (1000,))}


@dataclass
class PlayReport:
    sizes: dict[str, int] = field(default_factory=dict)
    predicted: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)


def demo_repository() -> Path:
    """The demo models, exported once (shared with ``python -m runtime --demo``)."""
    import torch

    from runtime.demo import write_demo_repository

    base = Path(os.environ.get("DEFT_CACHE_DIR", Path.home() / ".cache" / "deft"))
    return write_demo_repository(base / f"demo-{torch.__version__}")


def stage(models: Path, ids: dict[str, str] | None = None) -> dict[str, Path]:
    """Copy demo models to ``models/<id>/`` as ModelMesh's storage helper would; returns the
    paths that ``loadModel`` gets."""
    ids = ids or {DETECTOR: "detector", CLASSIFIER: "classifier"}
    source = demo_repository()
    paths = {}
    for model_id, demo in ids.items():
        target = models / model_id
        shutil.copytree(source / demo, target, dirs_exist_ok=True)
        paths[model_id] = target
    return paths


def wait_ready(stub, pb, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status = stub.runtimeStatus(pb.RuntimeStatusRequest(), timeout=10)
            if status.status == pb.RuntimeStatusResponse.READY:
                return status
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError("the runtime never answered READY")
        time.sleep(0.2)


def play(modelmesh: str, data: str, models: Path,
         say: Callable[[str], None] = print) -> PlayReport:
    """Run the whole exchange; raises AssertionError (or an RPC error) on the first step that
    does not behave as ModelMesh expects."""
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    from runtime.modelmesh.stubs import pb, pb_grpc

    report = PlayReport()

    def step(text: str) -> None:
        report.steps.append(text)
        say(text)

    paths = stage(models)
    with grpc.insecure_channel(modelmesh) as channel:
        mesh = pb_grpc.ModelRuntimeStub(channel)
        status = wait_ready(mesh, pb)
        infer_method = status.methodInfos["inference.GRPCInferenceService/ModelInfer"]
        assert list(infer_method.idInjectionPath) == [1], status
        assert status.capacityInBytes > 0 and status.maxLoadingConcurrency >= 1
        step(f"runtimeStatus READY: {status.capacityInBytes} bytes, {status.runtimeVersion}")

        for model_id, path in paths.items():
            predicted = mesh.predictModelSize(pb.PredictModelSizeRequest(
                modelId=model_id, modelType="pytorch-export", modelPath=str(path))).sizeInBytes
            loaded = mesh.loadModel(pb.LoadModelRequest(
                modelId=model_id, modelType="pytorch-export", modelPath=str(path),
                modelKey='{"model_type": {"name": "pytorch-export"}}'), timeout=300).sizeInBytes
            size = mesh.modelSize(pb.ModelSizeRequest(modelId=model_id)).sizeInBytes
            assert 0 < loaded == size <= predicted, (model_id, loaded, size, predicted)
            report.sizes[model_id], report.predicted[model_id] = size, predicted
            step(f"loadModel {model_id}: {size} bytes (predicted {predicted})")

        client = tc.InferenceServerClient(data)
        assert client.is_server_live() and client.is_server_ready()
        for model_id, (side, output, shape) in INPUTS.items():
            assert client.is_model_ready(model_id), model_id
            meta = client.get_model_metadata(model_id)
            assert meta.name == model_id and meta.inputs[0].shape == [-1, 3, side, side], meta
            x = np.random.default_rng(0).random((2, 3, side, side), dtype=np.float32)
            tensor = tc.InferInput("image", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            out = client.infer(model_id, [tensor]).as_numpy(output)
            assert out is not None and out.shape == (2, *shape), (model_id, out)
            report.shapes[model_id] = tuple(out.shape)
            step(f"ModelInfer {model_id}: {output} {list(out.shape)}")

        for model_id in paths:
            mesh.unloadModel(pb.UnloadModelRequest(modelId=model_id))
            mesh.unloadModel(pb.UnloadModelRequest(modelId=model_id))
            try:
                client.is_model_ready(model_id)
            except InferenceServerException as exc:
                assert exc.status() == "StatusCode.NOT_FOUND", exc
            else:
                raise AssertionError(f"{model_id} is still served after unloadModel")
            step(f"unloadModel {model_id}: gone from the data endpoint")
        client.close()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.modelmesh_play", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modelmesh", required=True, help="HOST:PORT of mmesh.ModelRuntime")
    p.add_argument("--data", required=True, help="HOST:PORT of the v2 gRPC data endpoint")
    p.add_argument("--models", type=Path, default=None,
                   help="where to put the models' copies (default: a temporary folder)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="modelmesh-models-") as tmp:
        try:
            play(args.modelmesh, args.data, args.models or Path(tmp))
        except (AssertionError, grpc.RpcError, TimeoutError) as exc:
            print(f"FAILED: {exc!r}", file=sys.stderr)
            return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
