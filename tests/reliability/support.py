"""Shared pieces of the reliability tests: models with injected faults, the in-process app,
a real-socket server in a thread, the v2 OpenAPI spec and the tally of fuzz cases.

The faulty models wrap a real torch model split into units (``tests.runtime.helpers``): the
engine, the executor and the HTTP edge are the production ones; only what a unit does is
changed (sleep without using the CPU, raise, or run out of memory above some rows).
"""

from __future__ import annotations

import collections
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from runtime.codec import Limits
from runtime.engine import Engine, EngineOptions, ServedModel
from runtime.http import RepositoryAccess, install
from scheduler.priority import Priority
from tests.runtime.helpers import make_engine, served_mlp

ROOT = Path(__file__).resolve().parents[2]
X1 = np.arange(4, dtype=np.float32).reshape(1, 4) / 10


def valid_body(x: np.ndarray = X1, **extra: Any) -> bytes:
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                       "data": x.ravel().tolist()}], **extra}
    return json.dumps(doc).encode()


# --- the v2 OpenAPI spec ---------------------------------------------------------------------


def spec_dir() -> Path | None:
    env = os.environ.get("KSERVE_SPEC_DIR")
    for candidate in ([Path(env)] if env else []) + [ROOT.parent / "shared" / "kserve"]:
        if (candidate / "rest_predict_v2.yaml").is_file():
            return candidate
    return None


def load_v2_spec() -> dict[str, Any]:
    """The v2 REST OpenAPI document, or skip the calling test saying where it comes from."""
    found = spec_dir()
    if found is None:
        pytest.skip(
            "the v2 REST OpenAPI spec (rest_predict_v2.yaml, from KServe's "
            "docs/predict-api/v2/) was not found: set KSERVE_SPEC_DIR to the folder holding "
            "it, or put it in ../shared/kserve/ beside the repository"
        )
    return yaml.safe_load((found / "rest_predict_v2.yaml").read_text())


# --- models with injected faults -------------------------------------------------------------


@dataclass
class _State:
    inner: Any
    rows: int


class FaultyUnits:
    """A ``SegmentedModel`` look-alike around a real one, with faults injected per unit.

    ``sleep_s``: each unit first sleeps (a slow model that leaves the CPU free);
    ``gate``: each unit first waits for this event (a model held still by the test);
    ``raises``: each unit raises this exception; ``oom_above_rows``: a unit given more rows
    raises ``oom`` (a CUDA out-of-memory error by default). Counts the rows started, the units
    run and the row counts the units saw; ``started`` is set once any rows start."""

    def __init__(self, inner: Any, *, sleep_s: float = 0.0, gate: threading.Event | None = None,
                 raises: BaseException | None = None, oom_above_rows: int | None = None,
                 oom: Callable[[], BaseException] | None = None) -> None:
        self.inner = inner
        self.sleep_s = sleep_s
        self.gate = gate
        self.raises = raises
        self.oom_above_rows = oom_above_rows
        self.oom = oom or (lambda: torch.cuda.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 20.00 GiB"))
        self.units_run = 0
        self.starts = 0
        self.started = threading.Event()
        self.rows_seen: list[int] = []
        self.lock = threading.Lock()

    @property
    def num_units(self) -> int:
        return int(self.inner.num_units)

    def start(self, inputs: dict[str, torch.Tensor]) -> _State:
        rows = int(next(iter(inputs.values())).shape[0])
        with self.lock:
            self.starts += 1
        self.started.set()
        return _State(self.inner.start(inputs), rows)

    def run(self, state: _State, start: int, end: int) -> _State:
        for unit in range(start, end):
            if self.gate is not None:
                self.gate.wait(10.0)
            if self.sleep_s:
                time.sleep(self.sleep_s)
            with self.lock:
                self.rows_seen.append(state.rows)
            if self.raises is not None:  # a fresh exception, as a model raises each time
                raise type(self.raises)(*self.raises.args)
            if self.oom_above_rows is not None and state.rows > self.oom_above_rows:
                raise self.oom()
            state.inner = self.inner.run(state.inner, unit, unit + 1)
            with self.lock:
                self.units_run += 1
        return state

    def finish(self, state: _State) -> dict[str, torch.Tensor]:
        return self.inner.finish(state.inner)


def faulty_mlp(name: str, priority: Priority = Priority.BATCH, slo_ms: float | None = None,
               max_batch_size: int = 8, max_queue_size: int = 16,
               **faults: Any) -> tuple[ServedModel, torch.nn.Module, FaultyUnits]:
    served, module = served_mlp(name, priority, slo_ms, max_batch_size, max_queue_size)
    units = FaultyUnits(served.segmented, **faults)
    served.segmented = units
    return served, module, units


def reference(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


# --- the in-process app ----------------------------------------------------------------------


def build_app(engine: Engine, limits: Limits | None = None,
              access: RepositoryAccess | None = None) -> FastAPI:
    app = FastAPI()
    install(app, engine, limits or Limits(max_body_bytes=1 << 20, max_tensor_elements=1 << 16),
            access or RepositoryAccess())
    return app


@contextmanager
def serving(models: list[ServedModel], *, policy: str = "deft",
            limits: Limits | None = None,
            access: RepositoryAccess | None = None,
            options: EngineOptions | None = None) -> Iterator[tuple[TestClient, Engine]]:
    """A started engine serving ``models`` behind the v2 routes, and a TestClient on it."""
    engine = make_engine(models, policy=policy, options=options)
    engine.start()
    try:
        with TestClient(build_app(engine, limits, access)) as client:
            yield client, engine
    finally:
        engine.stop(2.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadedServer:
    """uvicorn serving ``app`` on a loopback port from a thread: real sockets, so a client
    can go away mid-request."""

    def __init__(self, app: FastAPI) -> None:
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def raw_request(port: int, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> socket.socket:
    """Send one HTTP/1.1 request on a fresh socket and return the socket (for the caller to
    read from or to close)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    framed = {k.lower() for k in headers or {}} & {"content-length", "transfer-encoding"}
    if not framed:
        lines.append(f"content-length: {len(body)}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return sock


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and raw bytes of the response on ``sock`` (reads until the peer closes or the
    declared body has arrived)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = None
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            length = int(value)
    while length is not None and len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, rest


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


# --- tally of fuzz cases ---------------------------------------------------------------------


@dataclass
class Tally:
    """Fuzz cases sent, by kind and by answer (printed at the end of the run)."""

    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)

    def add(self, kind: str, status: int) -> None:
        self.kinds[kind] += 1
        self.statuses[status] += 1

    @property
    def total(self) -> int:
        return sum(self.kinds.values())


TALLY = Tally()
