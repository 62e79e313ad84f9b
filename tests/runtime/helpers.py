"""Factories for runtime tests: small real torch models served by a real engine."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml
from prometheus_client import CollectorRegistry

from runtime import segments
from runtime.engine import Engine, EngineOptions, ServedModel
from runtime.metrics import Metrics
from runtime.tensors import TensorSpec
from scheduler.priority import ModelSettings, Priority
from scheduler.profile import Profile


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(4, 8)
        self.b = torch.nn.Linear(8, 8)
        self.c = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


class Exploding(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


SCALE_CONFIG = {"max_batch_size": 4,
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]}


class Scale(torch.nn.Module):
    """``layers`` steps that each add nothing, then a multiplication by ``k``: versions that
    answer differently and split into different numbers of units."""

    def __init__(self, k: float, layers: int) -> None:
        super().__init__()
        self.k = k
        self.steps = torch.nn.ModuleList(torch.nn.ReLU() for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x + 100.0
        for step in self.steps:
            y = step(y) + 0.0
        return (y - 100.0) * self.k


def write_model(folder: Path, k: float, layers: int, max_batch_size: int = 4) -> None:
    """``folder`` as a repository model: ``Scale(k, layers)`` exported for batches up to
    ``max_batch_size``, split into at most ``layers`` units; its file's modification time
    always moves."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {**SCALE_CONFIG, "max_units": layers, "max_batch_size": max_batch_size}))
    batch = torch.export.Dim("batch", min=1, max=max_batch_size)
    program = torch.export.export(Scale(k, layers).eval(), (torch.randn(2, 4),),
                                  dynamic_shapes={"x": {0: batch}})
    path = folder / "model.pt2"
    before = path.stat().st_mtime_ns if path.exists() else None
    torch.export.save(program, path)
    if before is not None and path.stat().st_mtime_ns == before:  # a coarse file clock
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def served_mlp(name: str = "mlp", priority: Priority = Priority.BATCH,
               slo_ms: float | None = None, max_batch_size: int = 8,
               max_queue_size: int = 16) -> tuple[ServedModel, torch.nn.Module]:
    module = Mlp().eval()
    seg = segments.split(name, module, max_units=3, input_names=["x"], output_names=["y"])
    profile = Profile({1: tuple([1e-4] * seg.num_units)})
    served = ServedModel(
        name=name,
        segmented=seg,
        inputs=(TensorSpec("x", "FP32", (-1, 4)),),
        outputs=(TensorSpec("y", "FP32", (-1, 3)),),
        settings=ModelSettings(priority, slo_ms),
        profile=profile,
        max_batch_size=max_batch_size,
        max_queue_size=max_queue_size,
    )
    return served, module


def make_engine(models: list[ServedModel], policy: str = "deft", clock=None,
                names: list[str] | None = None, options: EngineOptions | None = None,
                metrics: Metrics | None = None) -> Engine:
    by_name = {m.name: m for m in models}

    def loader(name: str) -> ServedModel:
        if name not in by_name:
            from runtime.errors import ModelNotFound

            raise ModelNotFound(name)
        return by_name[name]

    engine = Engine(loader, lambda: sorted(names or by_name),
                    options or EngineOptions(policy=policy),
                    metrics or Metrics(CollectorRegistry()), clock=clock)
    for m in models:
        engine.add_served(m)
    return engine


@contextlib.contextmanager
def kserve_argv() -> Iterator[None]:
    """kserve parses ``sys.argv`` when it is imported: import it inside this block, with a
    command line of its own rather than pytest's."""
    saved = sys.argv
    sys.argv = ["deft"]
    try:
        yield
    finally:
        sys.argv = saved
