"""``python -m e2e.bench.turns``: a mix's batch streams alone, on several servers in turns.

Each server (Deft at each ``--batch_slice_ms`` value, and Triton without priority levels
where its peer venv is built) gets the mix's closed-loop batch clients for one window per
round, the others idle meanwhile (``driver.paired_windows``, as the suite's paired windows,
without the latency-critical streams). Windows in turns see
the same machine: on a shared machine the speed drifts by more than the differences being
measured, so one window per server minutes apart would compare the drift instead.

Prints, per server, the summed batch items per second in each window and per model, and
each server's per-round ratio to Triton (median). ``--batch_slice_ms`` takes ``job`` for a
slice longer than any job (batch models served job by job).

    python -m e2e.bench.turns --mix trio-periodic --batch_slice_ms 20,60,job
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from e2e.bench.__main__ import find_mixes
from e2e.bench.driver import PairedTarget, paired_windows
from e2e.bench.models import model_specs, write_bench_repository
from e2e.bench.systems import ServerProcess, deft_server, triton_server, triton_unavailable
from e2e.bench.workload import load_bench_workload
from e2e.server import ROOT

JOB_BY_JOB_MS = "1000000"  # a slice longer than any job


def ratios_to(reference: Sequence[float], values: Sequence[float]) -> list[float]:
    """Per-round ratios of ``values`` to ``reference`` (rounds where the reference did
    nothing are left out)."""
    return [v / r for v, r in zip(values, reference, strict=True) if r > 0]


def summary(windows: Mapping[str, Sequence[float]], reference: str | None) -> list[str]:
    """One line per server: its summed items/s per window and median, and where a reference
    server ran, the median of the per-round ratios to it."""
    lines = []
    for name, values in windows.items():
        line = (f"{name:<16} items/s {', '.join(f'{v:.1f}' for v in values)} "
                f"(median {statistics.median(values):.1f})")
        if reference is not None and name != reference:
            r = ratios_to(windows[reference], values)
            if r:
                line += f"; / {reference} per round: median {statistics.median(r):.3f}"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.bench.turns", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--mix", default="trio-periodic")
    p.add_argument("--batch_slice_ms", default="20,job",
                   help="comma-separated Deft batch slices; 'job': job by job")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--window_s", type=float, default=5.0)
    p.add_argument("--peer_python", type=Path, default=ROOT / ".peer-venv" / "bin" / "python")
    p.add_argument("--model_dir", type=Path, default=None)
    args = p.parse_args(argv)

    wl = load_bench_workload(find_mixes(args.mix, quick=False)[0])
    if not wl.batch:
        raise SystemExit(f"mix {wl.name!r} has no batch streams")
    model_dir = args.model_dir or write_bench_repository()
    specs = model_specs(model_dir)
    logs = Path(tempfile.mkdtemp(prefix="deft-turns-"))
    prio = logs / "priorities.yaml"
    prio.write_text("models: {}\n")
    servers: dict[str, ServerProcess] = {}
    for value in (v.strip() for v in args.batch_slice_ms.split(",") if v.strip()):
        ms = JOB_BY_JOB_MS if value == "job" else value
        server = deft_server(model_dir, "deft", prio, logs / f"deft-{value}.log", list(specs))
        server.args += ["--batch_slice_ms", ms]
        servers["deft job by job" if value == "job" else f"deft {value} ms"] = server
    reason = triton_unavailable(args.peer_python)
    reference = None
    if reason is None:
        reference = "triton:none"
        servers[reference] = triton_server(args.peer_python, specs, 0, logs / "triton.log")
    else:
        print(f"Triton skipped: {reason}")
    print(f"{wl.name}: {', '.join(f'{s.model} b{s.batch_size}' for s in wl.batch)} alone, "
          f"{args.rounds} rounds of {args.window_s} s on {len(servers)} servers (logs in {logs})")

    started: list[ServerProcess] = []
    try:
        for server in servers.values():
            started.append(server.__enter__())
        targets = [PairedTarget(name, server.url, False) for name, server in servers.items()]
        # the mix without its latency-critical streams: the batch clients alone, in turns
        batch_only = replace(wl, streams=tuple(wl.batch))
        results = paired_windows(targets, batch_only, specs, rounds=args.rounds,
                                 window_s=args.window_s, warm_s=1.0, lc_timeout_s=20.0,
                                 log=lambda msg: None)
    finally:
        for server in reversed(started):
            server.__exit__(None, None, None)
    for name, r in results.items():
        models = ", ".join(f"{m} {statistics.median(w):.1f}"
                           for m, w in r["batch_items_per_s_by_model"].items())
        print(f"  {name}: per model, median items/s: {models}")
    for line in summary({name: r["batch_items_per_s"] for name, r in results.items()},
                        reference):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
