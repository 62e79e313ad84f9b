"""Factories for runtime tests: small real torch models served by a real engine."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
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
                names: list[str] | None = None, options: EngineOptions | None = None) -> Engine:
    by_name = {m.name: m for m in models}

    def loader(name: str) -> ServedModel:
        if name not in by_name:
            from runtime.errors import ModelNotFound

            raise ModelNotFound(name)
        return by_name[name]

    engine = Engine(loader, lambda: sorted(names or by_name),
                    options or EngineOptions(policy=policy),
                    Metrics(CollectorRegistry()), clock=clock)
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
