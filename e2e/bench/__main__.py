"""``make bench``: Deft beside a plain kserve.ModelServer on the demo pair, in one run.

Every system runs as its own process on loopback and is driven by tritonclient:
1. the detector's sequential round trip alone (its solo p50/p99);
2. the classifier alone, closed-loop (its solo throughput over HTTP);
3. both: classifier saturated by closed-loop clients, detector open-loop at a steady rate,
   with the detector's SLO set to 1.5 x Deft's solo p99 measured in step 1.
Writes ``results/bench.json`` and ``results/bench.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from e2e.bench.load import ClosedLoop, Stream, open_loop, sequential
from e2e.server import ROOT, RuntimeProcess, free_port

RESULTS = ROOT / "e2e" / "bench" / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), {gpu}, torch {torch.__version__}"


def in_process_throughput(model_dir: Path, seconds: float) -> tuple[float, float]:
    """Classifier batch-8 batches/s and detector batch-1 seconds, torch only, no serving."""
    cls = torch.export.load(str(model_dir / "classifier" / "model.pt2")).module()
    det = torch.export.load(str(model_dir / "detector" / "model.pt2")).module()
    x8 = torch.rand(8, 3, 224, 224)
    x1 = torch.rand(1, 3, 96, 96)
    with torch.inference_mode():
        cls(image=x8)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            cls(image=x8)
            n += 1
        tput = n / (time.perf_counter() - t0)
        for _ in range(10):
            det(image=x1)
        times = []
        for _ in range(50):
            t = time.perf_counter()
            det(image=x1)
            times.append(time.perf_counter() - t)
    return tput, float(np.median(times))


class PlainKServe:
    """The baseline server process (see ``plain_kserve.py``)."""

    def __init__(self, model_dir: Path, log: Path) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        self.args = [sys.executable, "-m", "e2e.bench.plain_kserve", "--model_dir", str(model_dir),
                     "--http_port", str(self.http_port), "--grpc_port", str(self.grpc_port)]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def __enter__(self) -> PlainKServe:
        import httpx

        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=open(self.log, "wb"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT)
        for _ in range(600):
            try:
                if httpx.get(f"http://{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise TimeoutError(self.log.read_text()[-2000:])

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def summarize(s: Stream, slo_s: float | None = None) -> dict[str, float | int | None]:
    return {
        "sent": s.sent, "answered": len(s.latencies), "errors": s.errors,
        "p50_ms": round(s.p(0.5) * 1e3, 3), "p99_ms": round(s.p(0.99) * 1e3, 3),
        "slo_attainment": round(s.attainment(slo_s), 4) if slo_s else None,
    }


def run_system(name: str, policy: str, server, args, slo_s: float | None,
               priorities: Path | None) -> dict:
    det_x = np.random.default_rng(0).random((1, 3, 96, 96), dtype=np.float32)
    cls_x = np.random.default_rng(1).random((8, 3, 224, 224), dtype=np.float32)
    solo = sequential(server.url, "detector", det_x, args.solo_requests)
    loop = ClosedLoop(server.url, "classifier", cls_x, args.batch_clients).start()
    time.sleep(args.warm_s)
    t0 = time.monotonic()
    time.sleep(args.cls_solo_s)
    t1 = time.monotonic()
    loop.stop()
    cls_solo = loop.throughput(t0, t1)
    if slo_s is None:
        slo_s = 1.5 * solo.p(0.99)
        if priorities is not None:
            priorities.write_text(
                "models:\n"
                f"  detector: {{priority: latency-critical, slo_ms: {slo_s * 1e3:.3f}}}\n"
                "  classifier: {priority: batch}\n")
            time.sleep(2.5)  # the runtime polls the file every second
    loop = ClosedLoop(server.url, "classifier", cls_x, args.batch_clients).start()
    time.sleep(args.warm_s)
    t0 = time.monotonic()
    det = open_loop(server.url, "detector", det_x, args.rate, args.mixed_s)
    t1 = time.monotonic()
    loop.stop()
    cls_mixed = loop.throughput(t0, t1)
    return {
        "system": name, "policy": policy, "slo_ms": round(slo_s * 1e3, 3),
        "detector_solo": summarize(solo),
        "detector_mixed": summarize(det, slo_s),
        "classifier_solo_batches_per_s": round(cls_solo, 3),
        "classifier_mixed_batches_per_s": round(cls_mixed, 3),
        "classifier_errors": loop.stream.errors,
    }


def table(rows: list[dict]) -> str:
    out = ["| system | policy | det solo p50 ms | det solo p99 ms | det p50 ms (mixed) | "
           "det p99 ms (mixed) | SLO ms | SLO met | cls solo b/s | cls mixed b/s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["detector_mixed"]
        out.append(f"| {r['system']} | {r['policy']} | {r['detector_solo']['p50_ms']} | "
                   f"{r['detector_solo']['p99_ms']} | {m['p50_ms']} | {m['p99_ms']} | "
                   f"{r['slo_ms']} | {100 * (m['slo_attainment'] or 0):.1f}% | "
                   f"{r['classifier_solo_batches_per_s']} | {r['classifier_mixed_batches_per_s']} |")
    return "\n".join(out)


def checks(rows: list[dict], compute_tput: float, det_compute_s: float, rate: float) -> list[dict]:
    by = {(r["system"], r["policy"]): r for r in rows}
    deft = by.get(("deft", "deft"))
    plain = by.get(("kserve", "-"))
    out = []
    if deft:
        m = deft["detector_mixed"]
        out.append({"check": "deft meets the detector SLO (1.5 x solo p99) for >= 99%",
                    "value": m["slo_attainment"], "pass": (m["slo_attainment"] or 0) >= 0.99})
        share = max(0.0, 1.0 - rate * det_compute_s)
        want = 0.85 * deft["classifier_solo_batches_per_s"] * share
        out.append({"check": "classifier throughput under load >= 85% x solo x device share "
                             f"left ({share:.3f})",
                    "value": round(deft["classifier_mixed_batches_per_s"] / max(want / 0.85, 1e-9), 3),
                    "pass": deft["classifier_mixed_batches_per_s"] >= want})
        ratio = deft["classifier_solo_batches_per_s"] / compute_tput
        out.append({"check": "classifier solo throughput over HTTP >= 90% of in-process compute",
                    "value": round(ratio, 3), "pass": ratio >= 0.9})
    if deft and plain:
        r = plain["detector_mixed"]["p99_ms"] / deft["detector_mixed"]["p99_ms"]
        out.append({"check": "plain kserve detector p99 under load >= 20 x deft's",
                    "value": round(r, 1), "pass": r >= 20})
        r = plain["detector_solo"]["p50_ms"] / deft["detector_solo"]["p50_ms"]
        out.append({"check": "detector sequential round trip >= 3 x faster than plain kserve",
                    "value": round(r, 2), "pass": r >= 3})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.bench")
    p.add_argument("--quick", action="store_true", help="shorter phases (about 2 minutes)")
    p.add_argument("--systems", default="deft,fifo,priority,kserve")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    quick = args.quick
    args.solo_requests = 100 if quick else 300
    args.batch_clients = 2
    args.warm_s = 2.0 if quick else 3.0
    args.cls_solo_s = 6.0 if quick else 15.0
    args.mixed_s = 8.0 if quick else 25.0
    args.rate = 20.0
    args.out.mkdir(parents=True, exist_ok=True)

    from runtime.demo import write_demo_repository

    model_dir = write_demo_repository(Path.home() / ".cache" / "deft" / f"demo-{torch.__version__}")
    compute_tput, det_compute = in_process_throughput(model_dir, 5.0 if quick else 10.0)
    print(f"in-process: classifier {compute_tput:.2f} batches/s of 8, "
          f"detector {det_compute * 1e3:.2f} ms", flush=True)
    rows: list[dict] = []
    slo_s: float | None = None
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    for system in args.systems.split(","):
        t = time.perf_counter()
        if system == "kserve":
            with PlainKServe(model_dir, logs / "kserve.log") as server:
                rows.append(run_system("kserve", "-", server, args, slo_s, None))
        else:
            prio = args.out / f"priorities-{system}.yaml"
            prio.write_text("models:\n  detector: {priority: latency-critical, slo_ms: 1000}\n")
            if slo_s is not None:
                prio.write_text("models:\n  detector: {priority: latency-critical, "
                                f"slo_ms: {slo_s * 1e3:.3f}}}\n")
            with RuntimeProcess("--model_dir", str(model_dir), "--policy", system,
                                "--priority_config", str(prio),
                                log_path=logs / f"deft-{system}.log") as server:
                rows.append(run_system("deft", system, server, args, slo_s, prio))
            prio.unlink()
        slo_s = rows[-1]["slo_ms"] / 1e3
        print(f"{system}: done in {time.perf_counter() - t:.0f} s", flush=True)
    result = {
        "machine": machine(),
        "in_process": {"classifier_batches_per_s": round(compute_tput, 3),
                       "detector_ms": round(det_compute * 1e3, 3)},
        "detector_rate_per_s": args.rate,
        "quick": quick,
        "systems": rows,
        "checks": checks(rows, compute_tput, det_compute, args.rate),
    }
    (args.out / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    md = [f"Machine: {result['machine']}", "", table(rows), "",
          "| check | value | pass |", "|---|---|---|"]
    md += [f"| {c['check']} | {c['value']} | {'yes' if c['pass'] else 'NO'} |"
           for c in result["checks"]]
    (args.out / "bench.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
