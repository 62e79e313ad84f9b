"""``python -m e2e.bench.corun``: how much batch compute on the other cores slows a
latency-critical model's own compute on this machine, with no server in the way.

On a CPU the runtime runs a latency-critical job on its lane thread while a batch job's row
shards run at ``SCHED_IDLE``: the OS gives the lane any core it wants at once, and the shards
pause at their next unit boundary. Until then they still run on the other cores, and the
cores share the memory system, the caches and the clock. This probe times the
latency-critical model's compute, from Poisson arrivals on a thread of its own with the
lane's one intra-op thread, in turns under four conditions:

- ``alone``: nothing else runs;
- ``shards``: beside the batch model run as the runtime runs it beside the lane (a row shard
  per core at ``SCHED_IDLE``, unit by unit, pausing at each unit boundary while a
  latency-critical job runs);
- ``process``: beside the same batch work in another process at ``SCHED_IDLE`` that never
  pauses; it shares nothing with this process but the machine (no interpreter lock, no
  allocator);
- ``suspended``: beside those processes, suspended (``SIGSTOP``) the moment each
  latency-critical job starts and resumed (``SIGCONT``) when it ends: batch work stops at
  once, mid-op, instead of at a unit boundary; the signals, and the wait until the
  processes have stopped, are counted in the time.

Conditions alternate within each round (the machine's speed drifts over minutes). The
report is the median over rounds of each percentile, and each condition's p99 over
``alone``'s. The compute here is what the lane's compute is; everything else a request does
in a server (reading, the event loop, hand-offs) is not in it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from e2e.bench.stats import percentile

CONDITIONS = ("alone", "shards", "process", "suspended")
QUANTILES = (0.5, 0.9, 0.99)

_BATCH_PROCESS = """
import os, sys, torch
from runtime import model_repository as repo
from runtime.threads import lower_thread_priority
lower_thread_priority("corun-batch", 0, True)
torch.set_num_threads(1)
model_dir, name, rows, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] or None
loaded = repo.load(repo.find(model_dir, name), "cpu", cache_dir=cache, progress=False)
seg, x = loaded.model, loaded.config.example_inputs(rows)
print("ready", flush=True)
with torch.inference_mode():
    while True:
        s = seg.start(x); seg.run(s, 0, seg.num_units); seg.finish(s)
"""


def poisson_offsets(rate_per_s: float, seconds: float, seed: int) -> list[float]:
    """Arrival offsets (s) of a Poisson stream of ``rate_per_s`` over ``seconds``."""
    rnd = random.Random(seed)
    out: list[float] = []
    t = rnd.expovariate(rate_per_s)
    while t < seconds:
        out.append(t)
        t += rnd.expovariate(rate_per_s)
    return out


def summarize(rounds: Sequence[Mapping[str, Sequence[float]]]) -> dict[str, dict[str, Any]]:
    """``rounds``: per round, each condition's compute times (s). Per condition: each
    round's p50/p90/p99 (ms), their medians over rounds, and the median p99 over
    ``alone``'s."""
    out: dict[str, dict[str, Any]] = {}
    for cond in CONDITIONS:
        per_round = [
            {f"p{round(q * 100)}_ms": round(1e3 * percentile(r[cond], q), 3) for q in QUANTILES}
            for r in rounds if r.get(cond)
        ]
        if not per_round:
            continue
        out[cond] = {
            "rounds": per_round,
            "samples": sum(len(r[cond]) for r in rounds if r.get(cond)),
            **{k: round(statistics.median(x[k] for x in per_round), 3) for k in per_round[0]},
        }
    base = out.get("alone", {}).get("p99_ms")
    for row in out.values():
        row["p99_over_alone"] = round(row["p99_ms"] / base, 3) if base else None
    return out


def markdown(summary: Mapping[str, Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    lines = [
        f"Machine: {meta.get('machine', '?')}  ",
        f"Run: {meta.get('started', '?')}",
        "",
        f"Latency-critical compute: `{meta['lc']}` (batch 1, "
        f"{meta.get('lane_threads', 1)} intra-op thread(s), Poisson "
        f"{meta['rate_per_s']:g}/s) beside `{meta['batch']}` in batches of "
        f"{meta['batch_size']} on {meta['cores']} cores; {meta['rounds']} rounds of "
        f"{meta['seconds']:g} s per condition, medians over rounds.",
        "",
        "| condition | p50 ms | p90 ms | p99 ms | p99 / alone | samples |",
        "|---|---|---|---|---|---|",
    ]
    for cond, row in summary.items():
        lines.append(f"| {cond} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | "
                      f"{row['p99_ms']:.2f} | {row['p99_over_alone']:.2f} | {row['samples']} |")
    return "\n".join(lines) + "\n"


class Probe:
    """The two models loaded as the runtime loads them, and the three conditions."""

    def __init__(self, model_dir: Path, lc: str, batch: str, batch_size: int,
                 cache_dir: Path | None, cores: int | None = None, profile: bool = True,
                 lane_threads: int = 1) -> None:
        import torch

        from runtime import model_repository as repo

        self.model_dir, self.batch_name = model_dir, batch
        self.cache_dir = cache_dir
        self.cores = cores or torch.get_num_threads()
        self.lane_threads = lane_threads
        kw: dict[str, Any] = {"cache_dir": cache_dir, "progress": False, "profile": profile}
        self.lc = repo.load(repo.find(model_dir, lc), "cpu", **kw)
        self.batch = repo.load(repo.find(model_dir, batch), "cpu", **kw)
        self.lc_inputs = self.lc.config.example_inputs(1)
        rows = max(1, batch_size // self.cores)
        self.shard_rows = rows
        self.shard_inputs = self.batch.config.example_inputs(rows)
        self.lane_idle = threading.Event()
        self.lane_idle.set()

    # -- the latency-critical side ----------------------------------------------------------

    def lc_compute(self, offsets: Sequence[float], suspend: Sequence[int] = ()) -> list[float]:
        """The latency-critical model's compute time (s) for one request at each offset,
        on the calling (lane) thread; the shards' gate (``lane_idle``) is closed while
        each runs, and the processes ``suspend`` (children of this one) are stopped."""
        import torch

        from runtime.threads import limit_intra_op_threads

        limit_intra_op_threads(self.lane_threads)
        seg, took = self.lc.model, []
        with torch.inference_mode():
            start = time.perf_counter()
            for off in offsets:
                wait = start + off - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                self.lane_idle.clear()
                t = time.perf_counter()
                for pid in suspend:
                    os.kill(pid, signal.SIGSTOP)
                for pid in suspend:  # a signal is delivered later: compute once it has been
                    os.waitpid(pid, os.WUNTRACED)
                state = seg.start(self.lc_inputs)
                seg.run(state, 0, seg.num_units)
                seg.finish(state)
                for pid in suspend:
                    os.kill(pid, signal.SIGCONT)
                took.append(time.perf_counter() - t)
                self.lane_idle.set()
        return took

    # -- the batch side ---------------------------------------------------------------------

    def _shard_loop(self, stop: threading.Event) -> None:
        import torch

        seg = self.batch.model
        with torch.inference_mode():
            while not stop.is_set():
                state = seg.start(self.shard_inputs)
                for u in range(seg.num_units):
                    self.lane_idle.wait()  # the runtime's gate: pause at a unit boundary
                    seg.run(state, u, u + 1)
                seg.finish(state)

    def beside_shards(self, run: Callable[[], list[float]]) -> list[float]:
        from runtime.threads import limit_intra_op_threads, lower_thread_priority

        stop = threading.Event()

        def shard(i: int) -> None:
            lower_thread_priority(f"corun-shard-{i}", 0, True)
            limit_intra_op_threads(1)
            self._shard_loop(stop)

        threads = [threading.Thread(target=shard, args=(i,), daemon=True)
                   for i in range(self.cores)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            return run()
        finally:
            stop.set()
            for t in threads:
                t.join(30)

    def beside_process(self, run: Callable[[Sequence[int]], list[float]]) -> list[float]:
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
        procs = [subprocess.Popen(
            [sys.executable, "-c", _BATCH_PROCESS, str(self.model_dir), self.batch_name,
             str(self.shard_rows), str(self.cache_dir or "")],
            stdout=subprocess.PIPE, text=True, env=env) for _ in range(self.cores)]
        try:
            for p in procs:
                assert p.stdout is not None
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"the batch process for {self.batch_name} did not start")
            time.sleep(0.5)
            return run([p.pid for p in procs])
        finally:
            for p in procs:
                p.kill()
                p.wait(30)

    def measure(self, cond: str, offsets: Sequence[float]) -> list[float]:
        """The latency-critical compute times (s), on a lane thread of their own, under
        ``cond``."""
        run = lambda: _on_thread(lambda: self.lc_compute(offsets))  # noqa: E731
        if cond == "alone":
            return run()
        if cond == "shards":
            return self.beside_shards(run)
        if cond == "process":
            return self.beside_process(lambda _: run())
        if cond == "suspended":
            return self.beside_process(
                lambda pids: _on_thread(lambda: self.lc_compute(offsets, suspend=pids)))
        raise ValueError(f"unknown condition {cond!r}")


def _on_thread(fn: Callable[[], list[float]]) -> list[float]:
    out: list[list[float]] = []
    t = threading.Thread(target=lambda: out.append(fn()), name="corun-lane")
    t.start()
    t.join()
    if not out:
        raise RuntimeError("the latency-critical thread failed (see its traceback above)")
    return out[0]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m e2e.bench.corun",
        description="A latency-critical model's compute alone and beside batch compute "
                    "(row shards at SCHED_IDLE in this process; other processes, running or "
                    "suspended while it computes), in turns.")
    p.add_argument("--model_dir", type=Path, default=None,
                   help="model repository (default: the bench repository)")
    p.add_argument("--lc", default="detector")
    p.add_argument("--batch", default="classifier")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--rate", type=float, default=40.0, help="latency-critical arrivals per s")
    p.add_argument("--seconds", type=float, default=6.0, help="per condition and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lane_threads", type=int, default=1,
                   help="intra-op threads of the latency-critical model (the runtime's lane: 1)")
    p.add_argument("--conditions", default=",".join(CONDITIONS))
    p.add_argument("--cache_dir", type=Path, default=None,
                   help="profile cache (default: the runtime's)")
    p.add_argument("--out", type=Path, default=None,
                   help="write OUT.json and OUT.md (e.g. e2e/bench/results/corun)")
    args = p.parse_args(argv)
    conditions = [c for c in args.conditions.split(",") if c]
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        p.error(f"unknown conditions {unknown}; choose from {list(CONDITIONS)}")

    import torch

    from e2e.bench.__main__ import machine
    from e2e.bench.models import write_bench_repository

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    model_dir = args.model_dir or write_bench_repository()
    probe = Probe(model_dir, args.lc, args.batch, args.batch_size, args.cache_dir,
                  lane_threads=args.lane_threads)
    probe.measure("alone", poisson_offsets(args.rate, 1.0, seed=99))  # warm
    rounds: list[dict[str, list[float]]] = []
    for r in range(args.rounds):
        offsets = poisson_offsets(args.rate, args.seconds, seed=r)
        row = {c: probe.measure(c, offsets) for c in conditions}
        rounds.append(row)
        print(f"round {r + 1}: " + ", ".join(
            f"{c} p99 {1e3 * percentile(v, 0.99):.2f} ms" for c, v in row.items()), flush=True)
    summary = summarize(rounds)
    meta = {"lc": args.lc, "batch": args.batch, "batch_size": args.batch_size,
            "rate_per_s": args.rate, "seconds": args.seconds, "rounds": args.rounds,
            "machine": machine("cpu"), "cores": probe.cores,
            "lane_threads": args.lane_threads, "torch": torch.__version__, "started": started}
    text = markdown(summary, meta)
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(
            json.dumps({"meta": meta, "conditions": summary}, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
