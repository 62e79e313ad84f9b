"""Command line: ``python -m controller``.

    python -m controller [--namespace NS | --all-namespaces] [--metrics_port 8090]
    python -m controller --dry-run -f FILE.yaml        # or -f - for stdin

Exit status: 0 done (or stopped by SIGTERM/SIGINT), 1 the controller failed, 2 bad usage or
unreadable input (one line on stderr). Options accept ``_`` and ``-`` spellings alike.
Logging is configured here and nowhere else.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TextIO

from controller.errors import ConfigError, ControllerError, InputError
from controller.objects import DEFAULT_MODEL_FORMATS, DEFAULT_RUNTIMES, Selection

log = logging.getLogger("controller")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m controller",
        description="Turns deft.dev/* annotations on KServe InferenceServices and "
        "TrainedModels into ConfigMap deft-priorities.",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", help="watch one namespace (default: the pod's, "
                       "else the kubeconfig context's, else 'default')")
    scope.add_argument("--all-namespaces", "--all_namespaces", "-A", action="store_true",
                       help="watch every namespace (needs the ClusterRole)")
    p.add_argument("--dry-run", "--dry_run", action="store_true",
                   help="read objects from -f and print what would be written; no cluster")
    p.add_argument("-f", "--filename", metavar="FILE", action="append",
                   help="with --dry-run: a multi-document YAML file, '-' for stdin "
                   "(repeatable)")
    p.add_argument("--runtimes", default=",".join(sorted(DEFAULT_RUNTIMES)),
                   help="comma-separated ServingRuntime names that are Deft "
                   "(default: %(default)s)")
    p.add_argument("--model_formats", "--model-formats",
                   default=",".join(sorted(DEFAULT_MODEL_FORMATS)),
                   help="comma-separated model formats Deft auto-selects "
                   "(default: %(default)s)")
    p.add_argument("--metrics_port", "--metrics-port", type=int, default=8090,
                   help="port of /metrics, /healthz and /readyz (default: %(default)s; "
                   "0 disables)")
    p.add_argument("--resync_seconds", "--resync-seconds", type=float, default=300.0,
                   help="full resync period (default: %(default)s)")
    p.add_argument("--watch_timeout_seconds", "--watch-timeout-seconds", type=int, default=300,
                   help="server-side timeout of each watch call (default: %(default)s)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else ~/.kube)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--log_level", "--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    return p


def main(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None,
         stdout: TextIO | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    stdout = stdout or sys.stdout
    try:
        selection = Selection(runtimes=_names(args.runtimes, "--runtimes"),
                              model_formats=_names(args.model_formats, "--model_formats"))
        if args.dry_run:  # logs nothing worth configuring logging for
            return _dry_run(args, selection, stdin or sys.stdin, stdout)
        if args.filename:
            raise ConfigError("-f is only used with --dry-run")
        logging.basicConfig(
            level=getattr(logging, args.log_level.upper()),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        return _run(args, selection)
    except (ConfigError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ControllerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _names(value: str, flag: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise ConfigError(f"{flag} needs at least one name")
    return names


def _dry_run(args: argparse.Namespace, selection: Selection, stdin: TextIO,
             stdout: TextIO) -> int:
    from controller.dryrun import dry_run

    if not args.filename:
        raise ConfigError("--dry-run needs -f FILE (or -f - for stdin)")
    if args.all_namespaces:
        raise ConfigError("--all-namespaces has no meaning with --dry-run")
    inputs = []
    for name in args.filename:
        source = "<stdin>" if name == "-" else name
        try:
            if name == "-":
                text = stdin.read()
            else:
                with open(name, encoding="utf-8") as f:
                    text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{source}: {exc}") from None
        inputs.append((text, source))
    result = dry_run(inputs, namespace=args.namespace, selection=selection)
    stdout.write(result.render(", ".join(source for _, source in inputs)))
    return 0


def _run(args: argparse.Namespace, selection: Selection) -> int:
    from controller.clock import SystemClock
    from controller.health import HealthServer
    from controller.kube import KubernetesApi, default_namespace, load_client
    from controller.loop import Controller, ControllerConfig
    from controller.metrics import Metrics

    namespace = None if args.all_namespaces else (
        args.namespace or default_namespace(args.kubeconfig, args.context)
    )
    config = ControllerConfig(
        namespace=namespace,
        selection=selection,
        resync_s=args.resync_seconds,
        watch_timeout_s=args.watch_timeout_seconds,
        instance=os.environ.get("POD_NAME", ""),
    )
    api = KubernetesApi(load_client(args.kubeconfig, args.context))
    clock = SystemClock()
    metrics = Metrics()
    controller = Controller(api, config, clock=clock, metrics=metrics)
    stale_after = 2 * config.resync_s + config.backoff_max_s + 60

    def live() -> bool:
        return clock.monotonic() - controller.heartbeat < stale_after

    server = None
    if args.metrics_port:
        try:
            server = HealthServer(metrics.registry, live, lambda: controller.synced_once,
                                  port=args.metrics_port).start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on port {args.metrics_port}: {exc}") from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: controller.stop())
    log.info("watching %s; runtimes %s; model formats %s",
             f"namespace {namespace}" if namespace else "all namespaces",
             ",".join(sorted(selection.runtimes)), ",".join(sorted(selection.model_formats)))
    try:
        controller.run()
    finally:
        if server is not None:
            server.close()
    log.info("stopped")
    return 0
