"""The systems the suite compares, each a real server process on loopback serving the same
``model.pt2`` files, and how to start and stop them.

| system | policy | process |
|---|---|---|
| ``deft`` | fifo, priority, layer, fixed:K, deft | ``python -m runtime --policy P`` |
| ``kserve`` | ``-`` | ``python -m e2e.bench.plain_kserve`` (one kserve.Model per model) |
| ``triton`` | ``priority-levels`` / ``none`` | ``e2e/bench/triton_peer.py`` (peer venv) |

On a GPU (``--gpu``) the suite adds two variants of ``deft``: CUDA stream priorities off
(``python -m e2e.bench.same_stream_runtime``), to show what the high-priority stream buys,
and a 0.25 ms thread switch interval (``--switch_interval_ms 0.25``) instead of the
interpreter's 5 ms.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from e2e.server import ROOT, free_port
from scheduler.policies import validate_policy_name
from scheduler.priority import InvalidSettings

DEFT_POLICIES = ("deft", "fifo", "priority", "layer", "fixed:4")
# GPU variants of Deft's reference: CUDA stream priorities off, and a 0.25 ms thread switch
# interval instead of the interpreter's 5 ms
SAME_STREAM = "stream-priorities-off"
SWITCH_SHORT = "switch-interval-0.25ms"
# and the profiles as measured at load, not scaled to the chunk times measured since
# (``--calibration off``): what calibration does to deft's plans where batch work runs in
# chunks
NO_CALIBRATION = "calibration-off"


@dataclass(frozen=True)
class SystemSpec:
    """One column of the comparison. ``label`` is unique; ``priorities``: clients send
    tritonclient's request-level ``priority`` (1 for latency-critical streams)."""

    system: str
    policy: str
    label: str
    priorities: bool
    variant: str = ""

    @property
    def reference(self) -> bool:
        """The system whose solo p99 sets factor SLOs (Deft, ``deft`` policy)."""
        return self.system == "deft" and self.policy == "deft" and not self.variant


def all_systems(gpu: bool = False) -> list[SystemSpec]:
    """Every system, the reference first (its solo p99 sets the SLOs of the others)."""
    out = [SystemSpec("deft", p, f"deft:{p}", True) for p in DEFT_POLICIES]
    if gpu:
        out.append(SystemSpec("deft", "deft", "deft:deft/same-stream", True,
                              variant=SAME_STREAM))
        out.append(SystemSpec("deft", "deft", "deft:deft/switch-0.25ms", True,
                              variant=SWITCH_SHORT))
        out.append(SystemSpec("deft", "deft", "deft:deft/no-calibration", True,
                              variant=NO_CALIBRATION))
    out += [
        SystemSpec("kserve", "-", "kserve", False),
        SystemSpec("triton", "priority-levels", "triton:priority-levels", True),
        SystemSpec("triton", "none", "triton:none", False),
    ]
    return out


def select_systems(names: str, gpu: bool = False) -> list[SystemSpec]:
    """Systems by comma-separated names: a label (``deft:fifo``, ``kserve``,
    ``triton:none``), a bare Deft policy (``deft``, ``fifo``, ``fixed:8``: Deft with that
    policy), ``deft:*`` (every Deft row) or ``triton`` (both Triton variants). Unknown names
    raise ValueError. The reference system, when chosen, comes first."""
    every = all_systems(gpu)
    chosen: list[SystemSpec] = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name == "deft:*":
            hits = [s for s in every if s.system == "deft"]
        elif name == "triton":
            hits = [s for s in every if s.system == "triton"]
        else:
            hits = [s for s in every if s.label == name]
        if not hits:
            policy = name.removeprefix("deft:")
            try:
                validate_policy_name(policy)
            except InvalidSettings:
                raise ValueError(f"unknown system {name!r}; choose from deft:*, triton, "
                                 f"{', '.join(s.label for s in every)}") from None
            hits = [SystemSpec("deft", policy, f"deft:{policy}", True)]
        chosen += [h for h in hits if h not in chosen]
    return sorted(chosen, key=lambda s: not s.reference)


class ServerProcess:
    """A server subprocess in its own process group; a context manager that waits until the
    server and every named model are ready, and stops the whole group on exit."""

    def __init__(self, args: list[str], http_port: int, models: list[str], log: Path,
                 env: dict[str, str] | None = None, ready_timeout_s: float = 240.0) -> None:
        self.args = args
        self.http_port = http_port
        self.models = models
        self.log = log
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_s = 0.0

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def _ready(self) -> bool:
        base = f"http://{self.url}/v2"
        try:
            if httpx.get(f"{base}/health/ready", timeout=1.0).status_code != 200:
                return False
            return all(httpx.get(f"{base}/models/{m}/ready", timeout=1.0).status_code == 200
                       for m in self.models)
        except httpx.HTTPError:
            return False

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self) -> ServerProcess:
        began = time.monotonic()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        while time.monotonic() - began < self.ready_timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[:3]} exited with {self.proc.returncode}:\n"
                                   f"{self.tail()}")
            if self._ready():
                self.started_s = time.monotonic() - began
                return self
            time.sleep(0.25)
        self.__exit__()
        raise TimeoutError(f"not ready after {self.ready_timeout_s} s:\n{self.tail()}")

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        # children the server started itself (tritonserver, its stubs) share its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def deft_server(model_dir: Path, policy: str, priorities: Path, log: Path, models: list[str],
                device: str = "cpu", variant: str = "") -> ServerProcess:
    module = "e2e.bench.same_stream_runtime" if variant == SAME_STREAM else "runtime"
    http, grpc = free_port(), free_port()
    args = [sys.executable, "-m", module, "--model_dir", str(model_dir), "--policy", policy,
            "--priority_config", str(priorities), "--priority_poll_s", "0.2",
            "--device", device, "--http_port", str(http), "--grpc_port", str(grpc)]
    if variant == SWITCH_SHORT:
        args += ["--switch_interval_ms", "0.25"]
    if variant == NO_CALIBRATION:
        args += ["--calibration", "off"]
    return ServerProcess(args, http, models, log)


def kserve_server(model_dir: Path, log: Path, models: list[str],
                  device: str = "cpu") -> ServerProcess:
    http, grpc = free_port(), free_port()
    args = [sys.executable, "-m", "e2e.bench.plain_kserve", "--model_dir", str(model_dir),
            "--http_port", str(http), "--grpc_port", str(grpc), "--device", device]
    return ServerProcess(args, http, models, log)


def peer_libdir(peer_python: Path) -> str:
    """The peer Python's own ``lib/`` (sysconfig LIBDIR): tritonserver's Python backend stub
    loads libpython from there."""
    out = subprocess.run([str(peer_python), "-c",
                          "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def triton_unavailable(peer_python: Path | None) -> str | None:
    """Why Triton cannot run here, or None when it can."""
    if peer_python is None:
        return "no peer Python given (--peer_python)"
    if not Path(peer_python).exists():
        return (f"{peer_python} does not exist: build the peer venv with `make peer-venv` "
                "(needs network access to PyPI)")
    probe = subprocess.run([str(peer_python), "-c", "import pytriton.triton, torch, numpy"],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        return f"the peer venv cannot import pytriton/torch: {probe.stderr.strip()[-300:]}"
    return None


def triton_server(peer_python: Path, specs: dict[str, dict], priority_levels: int, log: Path,
                  device: str = "cpu") -> ServerProcess:
    http, grpc, metrics = free_port(), free_port(), free_port()
    spec = {"http_port": http, "grpc_port": grpc, "metrics_port": metrics, "device": device,
            "priority_levels": priority_levels, "models": list(specs.values())}
    spec_path = log.with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec, indent=1))
    libdir = peer_libdir(peer_python)
    env = {"LD_LIBRARY_PATH": ":".join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH"))
                                       if p)}
    args = [str(peer_python), str(ROOT / "e2e" / "bench" / "triton_peer.py"),
            "--spec", str(spec_path)]
    return ServerProcess(args, http, list(specs), log, env=env)
