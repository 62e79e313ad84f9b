"""``make soak``: mixed latency-critical and batch load on a real runtime for a bounded time.

Every request a client sends ends in exactly one of: answered (200), refused (429, the queue
was full), error (any other status) or lost (no HTTP answer at all, or still unanswered when
the run ends). The run passes when nothing is lost, the server's own request counters
(``deft_requests_total``) agree with what the clients saw, nothing is left queued, and the
server exits 0 on SIGTERM. The server's resident memory is sampled every second: at start
(models loaded, idle), after the warm-up, at its peak and at the end; growth is measured from
the warm-up on, since the first batches grow the allocator's pools once.

``python -m e2e.soak [--seconds 180] [--batch_clients 3] [--detector_clients 2] [--rate 20]
[--embedder_clients N] [--json FILE]``

``--embedder_clients N`` adds a second batch model (the bench's ``embedder``, batches of 8
160x160 images) with N closed-loop clients, served beside the demo models, so that two batch
models take turns on the device throughout the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from e2e.server import RuntimeProcess

OUTCOMES = ("answered", "refused", "errors", "lost")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Counter:
    """One model's request outcomes; ``in_flight`` counts requests sent and not yet ended."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = {"sent": 0, **dict.fromkeys(OUTCOMES, 0)}
        self.in_flight = 0

    def sent(self) -> None:
        with self.lock:
            self.counts["sent"] += 1
            self.in_flight += 1

    def ended(self, outcome: str) -> None:
        with self.lock:
            self.counts[outcome] += 1
            self.in_flight -= 1

    def final(self) -> dict[str, int]:
        """The counts, with requests still in flight counted as lost."""
        with self.lock:
            out = dict(self.counts)
            out["lost"] += self.in_flight
            return out


def worker(url: str, model: str, x: np.ndarray, stop: threading.Event, c: Counter,
           period: float | None) -> None:
    client = httpclient.InferenceServerClient(url, network_timeout=120)
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    while not stop.is_set():
        c.sent()
        try:
            client.infer(model, [inp])
            c.ended("answered")
        except InferenceServerException as exc:
            c.ended("refused" if exc.status() == "429" else "errors")
        except Exception:  # noqa: BLE001 - no HTTP answer at all: the request was lost
            c.ended("lost")
        if period:
            time.sleep(period)


def server_counts(url: str) -> tuple[dict[tuple[str, str], float], float]:
    """``deft_requests_total`` by (model, outcome), and the summed ``deft_queue_depth``."""
    text = httpx.get(f"http://{url}/metrics", timeout=10).text
    requests: dict[tuple[str, str], float] = {}
    depth = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "deft_requests_total":
                key = (sample.labels["model"], sample.labels["outcome"])
                requests[key] = requests.get(key, 0.0) + sample.value
            elif sample.name == "deft_queue_depth":
                depth += sample.value
    return requests, depth


def run(args: argparse.Namespace) -> dict[str, object]:
    log = Path(tempfile.mkdtemp(prefix="deft-soak-")) / "runtime.log"
    models = ["--demo"]
    if args.embedder_clients:
        from e2e.bench.models import write_bench_repository

        models = ["--model_dir", str(write_bench_repository())]
    with RuntimeProcess(*models, log_path=log) as server:
        assert server.proc is not None
        pid = server.proc.pid
        stop = threading.Event()
        # model, input shape, clients, seconds between a client's requests (None: back to back)
        clients = [("detector", (1, 3, 96, 96), args.detector_clients, 1.0 / args.rate),
                   ("classifier", (8, 3, 224, 224), args.batch_clients, None)]
        if args.embedder_clients:
            clients.append(("embedder", (8, 3, 160, 160), args.embedder_clients, None))
        counters = {model: Counter() for model, *_ in clients}
        rng = np.random.default_rng(0)
        threads = [threading.Thread(target=worker, daemon=True, args=(
            server.url, model, rng.random(shape, dtype=np.float32), stop, counters[model],
            interval)) for model, shape, n, interval in clients for _ in range(n)]
        samples = [(0.0, rss_mb(pid))]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while (elapsed := time.monotonic() - t0) < args.seconds:
            time.sleep(min(1.0, max(0.0, args.seconds - elapsed)))
            samples.append((time.monotonic() - t0, rss_mb(pid)))
        stop.set()
        for t in threads:
            t.join(180)
        wall = time.monotonic() - t0
        samples.append((wall, rss_mb(pid)))
        by_server, depth = server_counts(server.url)
        code = server.stop()
    warmup_s = min(args.warmup, args.seconds / 2)
    warm = next(rss for t, rss in samples if t >= warmup_s)
    counts = {model: c.final() for model, c in counters.items()}
    mismatches = []
    for model, c in counts.items():
        for ours, theirs in (("answered", "ok"), ("refused", "refused")):
            seen = int(by_server.get((model, theirs), 0))
            if seen != c[ours]:
                mismatches.append(f"{model}: clients saw {c[ours]} {ours}, server counted {seen}")
    totals = {k: sum(c[k] for c in counts.values()) for k in ("sent", *OUTCOMES)}
    return {
        "seconds": args.seconds,
        "wall_s": round(wall, 1),
        "clients": {"detector": args.detector_clients, "classifier": args.batch_clients,
                    "embedder": args.embedder_clients},
        **counts,
        "total": totals,
        "server_agrees": not mismatches,
        "mismatches": mismatches,
        "queued_at_end": depth,
        "rss_mb": {
            "start": round(samples[0][1], 1),
            "after_warmup": round(warm, 1),
            "peak": round(max(rss for _, rss in samples), 1),
            "end": round(samples[-1][1], 1),
            "growth_after_warmup": round(samples[-1][1] - warm, 1),
            "warmup_s": warmup_s,
        },
        "exit_code": code,
        "log": str(log),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--batch_clients", type=int, default=3)
    p.add_argument("--detector_clients", type=int, default=2)
    p.add_argument("--rate", type=float, default=20.0, help="detector requests/s per client")
    p.add_argument("--embedder_clients", type=int, default=0,
                   help="closed-loop clients of a second batch model (0: demo models only)")
    p.add_argument("--warmup", type=float, default=20.0,
                   help="seconds after which memory growth is measured (at most half the run)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    totals = result["total"]
    ok = (totals["lost"] == 0 and totals["sent"] == sum(totals[k] for k in OUTCOMES)
          and result["server_agrees"] and result["queued_at_end"] == 0
          and result["exit_code"] == 0)
    print("soak:", "passed" if ok else "FAILED",
          f"({totals['sent']} sent, {totals['answered']} answered, {totals['refused']} refused, "
          f"{totals['errors']} errors, {totals['lost']} lost)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
