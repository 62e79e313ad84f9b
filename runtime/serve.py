"""Builds the runtime from its configuration and runs it inside a kserve ModelServer.

Imported only by ``python -m runtime`` (kserve parses ``sys.argv`` on import).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import torch
from kserve import ModelServer
from kserve import model_server as kserve_model_server

from runtime import http_body
from runtime import model_repository as repo
from runtime.codec import Limits
from runtime.config import RuntimeConfig
from runtime.engine import Engine, EngineOptions, ServedModel
from runtime.errors import ModelLoadError
from runtime.grpc_api import DeftModelServer, model_registry
from runtime.heap import reclaim_heap, settle_heap
from runtime.http import RepositoryAccess, StageHistograms, install, quiet_access_log
from runtime.kserve_model import DeftModel
from runtime.metrics import Metrics
from runtime.priorities import PriorityFileWatcher
from runtime.threads import set_switch_interval
from scheduler.profile import DeviceCosts

log = logging.getLogger(__name__)

# per-unit host overhead and sync cost the predictor assumes, by device type (microseconds)
_COSTS_US = {"cpu": (15.0, 0.0), "cuda": (8.0, 20.0)}


def stop_grpc_at_signal(server: ModelServer) -> None:
    """While it serves, uvicorn takes SIGTERM (and SIGINT) and drains HTTP first; kserve
    stops its gRPC server only once that drain is over, so gRPC would take new calls for the
    whole drain and then answer NOT_FOUND once the models are unregistered. Here the gRPC
    server stops at the signal: new calls are refused (UNAVAILABLE), calls in flight finish
    within the grace period, as HTTP's do."""
    import uvicorn

    original = uvicorn.Server.handle_exit
    stopping: list[asyncio.Task[None]] = []  # the stop task, kept from the collector

    def handle_exit(self: uvicorn.Server, sig: int, frame: object) -> None:
        grpc_server = getattr(server, "_grpc_server", None)
        if grpc_server is not None and not stopping:
            try:
                loop = asyncio.get_running_loop()  # handlers run on the loop's own thread
            except RuntimeError:
                loop = None
            if loop is not None:
                log.info("signal %d: the gRPC server takes no new calls", sig)
                stopping.append(loop.create_task(grpc_server.stop(sig)))
        original(self, sig, frame)  # type: ignore[arg-type]

    uvicorn.Server.handle_exit = handle_exit  # type: ignore[method-assign]


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def demo_dir() -> Path:
    from runtime.demo import write_demo_repository

    base = Path(os.environ.get("DEFT_CACHE_DIR", Path.home() / ".cache" / "deft"))
    return write_demo_repository(base / f"demo-{torch.__version__}")


def make_loader(model_dir: Path, model_name: str | None, device: torch.device):
    def source_of(name: str) -> repo.ModelSource | None:
        return next((s for s in repo.discover(model_dir, model_name) if s.name == name), None)

    def load(name: str) -> ServedModel:
        source = source_of(name)
        if source is None:
            from runtime.errors import ModelNotFound

            raise ModelNotFound(name)
        return ServedModel.from_loaded(repo.load(source, device), name)

    def available() -> list[str]:
        try:
            return [s.name for s in repo.discover(model_dir, model_name)]
        except ModelLoadError:
            return []

    def stamp(name: str) -> object:
        """The model's files as they are now (None: no longer in the repository)."""
        try:
            source = source_of(name)
        except ModelLoadError:
            return None
        return repo.stamp(source) if source is not None else None

    return load, available, stamp


def build_engine(cfg: RuntimeConfig, metrics: Metrics) -> tuple[Engine, Path]:
    device = pick_device(cfg.device)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    model_dir = demo_dir() if cfg.demo else cfg.model_dir
    assert model_dir is not None
    launch, sync = _COSTS_US[device.type]
    costs = DeviceCosts.from_us(
        cfg.launch_overhead_us if cfg.launch_overhead_us is not None else launch,
        cfg.sync_overhead_us if cfg.sync_overhead_us is not None else sync,
    )
    loader, available, stamp = make_loader(
        model_dir, None if cfg.demo else cfg.model_name, device)
    cli = {}
    if cfg.default_settings is not None:
        cli = {name: cfg.default_settings for name in available()}
    options = EngineOptions(
        policy=cfg.policy, device=str(device), costs=costs, retry_after_s=cfg.retry_after_s,
        batch_sched=cfg.batch_sched,
        batch_nice=cfg.batch_nice,
        batch_shards=cfg.batch_shards,
        batch_slice_s=cfg.batch_slice_ms / 1000.0,
        cpu_lane=cfg.cpu_lane,
        calibrate=cfg.calibration,
        cli_settings=cli,
    )
    return Engine(loader, available, options, metrics, stamp=stamp), model_dir


def use_event_loop(name: str = "auto") -> str:
    """Make the loops ``asyncio.run`` creates uvloop's where it is installed (``auto``,
    ``uvloop``), else asyncio's own; returns which. A single-worker KServe ModelServer runs
    uvicorn inside its own ``asyncio.run``, which takes the default policy: asyncio's loop,
    whatever uvicorn's own loop setting says.
    uvloop reads sockets in C: the event loop spends less of itself on each megabyte of a
    request body (measured here: about 15-25% more batch-of-images requests a second)."""
    if name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            # ModelServer.start asks for the current loop before asyncio.run makes one
            asyncio.set_event_loop(asyncio.new_event_loop())
            return "uvloop"
    return "asyncio"


def main(cfg: RuntimeConfig) -> int:
    metrics = Metrics()
    engine, model_dir = build_engine(cfg, metrics)
    log.info("policy %s on %s, models from %s", cfg.policy, engine.device, model_dir)
    for name in engine.index():
        try:
            engine.load_sync(name["name"])
        except Exception as exc:  # reported; the other models still serve
            log.error("%s", exc)
    set_switch_interval(cfg.switch_interval_ms)
    engine.start()
    watcher = None
    if cfg.priority_config is not None:
        watcher = PriorityFileWatcher(cfg.priority_config, engine.apply_priorities,
                                      cfg.priority_poll_s)
        watcher.start()

    limits = Limits(max_body_bytes=cfg.max_body_bytes, max_tensor_elements=cfg.max_tensor_elements)
    access = RepositoryAccess(enabled=cfg.repository_api, token=cfg.repository_token)
    # KServe's request_*_seconds histograms count REST infers too, as on KServe's own path
    install(kserve_model_server.app, engine, limits, access, StageHistograms.from_kserve())

    # models loaded later through the repository API (REST or gRPC) are served over gRPC too
    registry = model_registry(engine, str(model_dir))
    models = list(registry.get_models().values())
    engine.on_unloaded.append(reclaim_heap)
    if cfg.modelmesh_port:
        from runtime.modelmesh.server import install as install_modelmesh

        install_modelmesh(kserve_model_server.app, engine, registry,
                          lambda model_id: DeftModel(model_id, engine),
                          port=cfg.modelmesh_port, memory_budget_mb=cfg.memory_budget_mb)
    log.info("heap settled: %d objects out of the garbage collector's way", settle_heap())
    server = DeftModelServer(
        engine, access,
        http_port=cfg.http_port,
        grpc_port=cfg.grpc_port,
        enable_grpc=cfg.enable_grpc,
        access_log=cfg.access_log,
        max_message_bytes=cfg.max_body_bytes,
        registered_models=registry,
        grace_period=cfg.grace_period_s,
        workers=1,
    )
    if not cfg.access_log:  # after the ModelServer configured logging
        quiet_access_log()
    if cfg.enable_grpc:
        stop_grpc_at_signal(server)
    log.info("event loop: %s", use_event_loop(cfg.event_loop))
    if http_body.install():
        log.info("HTTP: request bodies kept as the parser's chunks")
    try:
        server.start(models)
    finally:
        # uvicorn has drained its in-flight requests; stop the executor and watchers
        if watcher is not None:
            watcher.stop()
        engine.stop(grace_s=1.0)
        log.info("stopped")
    return 0


