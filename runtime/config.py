"""The runtime's command line, parsed once into a frozen ``RuntimeConfig``."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from scheduler.policies import POLICY_NAMES, validate_policy_name
from scheduler.priority import InvalidSettings, ModelSettings, Priority


@dataclass(frozen=True)
class RuntimeConfig:
    model_dir: Path | None
    model_name: str | None
    demo: bool
    http_port: int
    grpc_port: int
    enable_grpc: bool
    policy: str
    device: str
    priority_config: Path | None
    priority_poll_s: float
    repository_api: bool
    repository_token: str | None
    max_body_bytes: int
    max_tensor_elements: int
    launch_overhead_us: float | None
    sync_overhead_us: float | None
    cpu_threads: int | None
    batch_sched: str
    batch_nice: int
    grace_period_s: int
    retry_after_s: float
    default_settings: ModelSettings | None
    modelmesh_port: int = 0  # 0: ModelMesh mode off
    memory_budget_mb: float | None = None  # None: the device's default (runtime.modelmesh.memory)
    batch_shards: int | None = None  # None: one per intra-op thread
    batch_slice_ms: float = 20.0
    switch_interval_ms: float | None = None  # None: Python's own (5 ms)
    event_loop: str = "auto"  # auto: uvloop where installed, else asyncio
    access_log: bool = True  # uvicorn's line per HTTP request
    calibration: bool = True  # plans follow the measured speed of batch chunks
    cpu_lane: bool | None = None  # None: on a CPU with a preemptive policy


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default in --help, where it has one worth stating (not None, not off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime",
        formatter_class=_HelpFormatter,
        description="Deft: a KServe runtime that lets latency-critical models preempt batch "
        "inference. `python -m runtime profile --model_dir DIR` profiles models instead.",
    )
    p.add_argument("--model_dir", type=Path, default=None,
                   help="model repository: one folder per model, or one model's files")
    p.add_argument("--model_name", default=None,
                   help="serve --model_dir as this single model (KServe's single-model layout)")
    p.add_argument("--demo", action="store_true",
                   help="serve the built-in demo models (detector, classifier)")
    p.add_argument("--http_port", type=int, default=8080, help="REST (v2) port")
    p.add_argument("--grpc_port", type=int, default=8081, help="v2 gRPC port")
    p.add_argument("--disable_grpc", action="store_true", help="do not serve v2 gRPC")
    p.add_argument("--policy", default="deft", help=f"one of {', '.join(POLICY_NAMES)}")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: CUDA where torch sees a GPU, else the CPU")
    p.add_argument("--priority_config", type=Path, default=None,
                   help="priorities.yaml (the controller's ConfigMap); reloaded when it changes")
    p.add_argument("--priority_poll_s", type=float, default=1.0,
                   help="how often --priority_config is checked for changes")
    p.add_argument("--disable_repository_api", action="store_true",
                   help="refuse POST /v2/repository/... (load, unload, index)")
    p.add_argument("--repository_api_token_file", type=Path, default=None,
                   help="require 'Authorization: Bearer <token>' on the repository API")
    p.add_argument("--max_body_mb", type=float, default=64.0,
                   help="the largest request: a REST body, or a gRPC message")
    p.add_argument("--max_tensor_elements", type=int, default=64 * 1024 * 1024,
                   help="the most elements one input tensor may have")
    p.add_argument("--launch_overhead_us", type=float, default=None,
                   help="the predictor's cost of a unit launch (default: the device's)")
    p.add_argument("--sync_overhead_us", type=float, default=None,
                   help="the predictor's cost of a sync point (default: the device's)")
    p.add_argument("--cpu_threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--batch_sched", default="idle", choices=("idle", "normal"),
                   help="CPU lane: OS scheduling of the batch executor thread: 'idle' "
                   "(SCHED_IDLE: it runs only on cores the serving threads leave) "
                   "or 'normal' (at nice --batch_nice)")
    p.add_argument("--batch_nice", type=int, default=0, choices=range(0, 20), metavar="0..19",
                   help="CPU lane with --batch_sched normal: OS nice value of the batch "
                   "executor thread")
    p.add_argument("--cpu_lane", default="auto", choices=("auto", "on", "off"),
                   help="run latency-critical jobs on a lane of their own beside batch work "
                   "(auto: on a CPU with a preemptive policy); 'off' runs batch work in "
                   "chunks between sync points, as on a GPU")
    p.add_argument("--batch_shards", type=int, default=None, metavar="N",
                   help="CPU lane: run a batch job's rows as up to N shards side by side, "
                   "sharing the intra-op threads (default: one per thread; 1: off)")
    p.add_argument("--batch_slice_ms", type=_positive_float, default=20.0, metavar="MS",
                   help="while two or more batch models have work, a batch job runs at most "
                   "this long before the device may pass to another batch model with less "
                   "device time used (preemptive policies)")
    p.add_argument("--calibration", default="on", choices=("on", "off"),
                   help="scale each model's profile by how long its batch chunks measure "
                   "against it, so that plans follow the device's speed as it drifts "
                   "('off' plans with the profile as measured at load)")
    p.add_argument("--switch_interval_ms", type=_positive_float, default=None, metavar="MS",
                   help="the Python interpreter's thread switch interval: the longest a "
                   "serving thread waits for the interpreter lock while the executor thread "
                   "holds it, as it does between kernel launches on CUDA (default: Python's "
                   "own, 5)")
    p.add_argument("--event_loop", default="auto", choices=("auto", "uvloop", "asyncio"),
                   help="the HTTP server's event loop (auto: uvloop where installed)")
    p.add_argument("--access_log", default="on", choices=("on", "off"),
                   help="log a line per HTTP request (the web server's access log); 'off' "
                   "for request rates where that is more log than anyone reads")
    p.add_argument("--grace_period", type=int, default=30, help="seconds to drain on SIGTERM")
    p.add_argument("--retry_after_s", type=float, default=1.0,
                   help="Retry-After of a 429 (a model's queue full)")
    p.add_argument("--priority", default=None, choices=[x.value for x in Priority],
                   help="class of models whose configuration names none")
    p.add_argument("--slo_ms", type=float, default=None,
                   help="SLO of models whose configuration names none")
    p.add_argument("--max_batch_size", type=int, default=None,
                   help="dynamic batching bound of models whose configuration names none "
                   "(it lowers one a configuration names)")
    p.add_argument("--modelmesh_port", type=int, default=0,
                   help="serve ModelMesh's model-runtime gRPC service on this loopback port "
                   "(0: off)")
    p.add_argument("--memory_budget_mb", type=float, default=None,
                   help="memory for ModelMesh's models (default: 4096 on a CPU, 80%% of the "
                   "GPU's memory on CUDA)")
    return p


def parse_args(argv: list[str]) -> tuple[RuntimeConfig, list[str]]:
    """Parse the command line; unknown flags (KServe passes some of its own) are returned."""
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    try:
        validate_policy_name(args.policy)
        default = None
        if args.priority or args.slo_ms or args.max_batch_size:
            default = ModelSettings(
                Priority.parse(args.priority or "batch"), args.slo_ms, args.max_batch_size
            )
    except InvalidSettings as exc:
        parser.error(str(exc))
    if not args.demo and args.model_dir is None:
        parser.error("give --model_dir DIR or --demo")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            built = "with" if torch.version.cuda else "without"
            parser.error(f"--device cuda: no CUDA device here (torch {torch.__version__}, "
                         f"built {built} CUDA); --device auto or cpu serves on the CPU")
    if not 0 <= args.modelmesh_port <= 65535:
        parser.error(f"--modelmesh_port must be a port number, got {args.modelmesh_port}")
    if args.memory_budget_mb is not None and not args.memory_budget_mb > 0:
        parser.error(f"--memory_budget_mb must be positive, got {args.memory_budget_mb}")
    if not args.max_body_mb > 0:
        parser.error(f"--max_body_mb must be positive, got {args.max_body_mb}")
    if args.max_tensor_elements < 1:
        parser.error(f"--max_tensor_elements must be positive, got {args.max_tensor_elements}")
    token = None
    if args.repository_api_token_file is not None:
        # a token file that cannot be read, or is empty, must not leave the API open
        try:
            token = args.repository_api_token_file.read_text().strip()
        except OSError as exc:
            parser.error(f"--repository_api_token_file: {exc}")
        if not token:
            parser.error(f"--repository_api_token_file {args.repository_api_token_file} is empty")
    token = token or os.environ.get("DEFT_REPOSITORY_API_TOKEN") or None
    return RuntimeConfig(
        model_dir=args.model_dir,
        model_name=args.model_name,
        demo=args.demo,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=not args.disable_grpc,
        policy=args.policy,
        device=args.device,
        priority_config=args.priority_config,
        priority_poll_s=args.priority_poll_s,
        repository_api=not args.disable_repository_api,
        repository_token=token,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_tensor_elements=args.max_tensor_elements,
        launch_overhead_us=args.launch_overhead_us,
        sync_overhead_us=args.sync_overhead_us,
        cpu_threads=args.cpu_threads,
        batch_sched=args.batch_sched,
        batch_nice=args.batch_nice,
        grace_period_s=args.grace_period,
        retry_after_s=args.retry_after_s,
        default_settings=default,
        modelmesh_port=args.modelmesh_port,
        memory_budget_mb=args.memory_budget_mb,
        batch_shards=args.batch_shards,
        batch_slice_ms=args.batch_slice_ms,
        switch_interval_ms=args.switch_interval_ms,
        event_loop=args.event_loop,
        access_log=args.access_log == "on",
        calibration=args.calibration == "on",
        cpu_lane={"auto": None, "on": True, "off": False}[args.cpu_lane],
    ), unknown
