"""``make soak``: mixed latency-critical and batch load on a real runtime for a bounded time,
counting requests sent, answered, refused (429) and lost (must be zero), and the server's
resident memory at start and end.

``python -m e2e.soak [--seconds 180] [--batch_clients 3] [--rate 20]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from e2e.server import RuntimeProcess


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = {"sent": 0, "answered": 0, "refused": 0, "errors": 0, "lost": 0}

    def add(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1


def worker(url: str, model: str, x: np.ndarray, stop: threading.Event, c: Counter,
           period: float | None) -> None:
    client = httpclient.InferenceServerClient(url, network_timeout=120)
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    while not stop.is_set():
        c.add("sent")
        try:
            client.infer(model, [inp])
            c.add("answered")
        except InferenceServerException as exc:
            c.add("refused" if exc.status() == "429" or "429" in str(exc) else "errors")
        except Exception:  # noqa: BLE001 - no answer at all: the request was lost
            c.add("lost")
        if period:
            time.sleep(period)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.soak")
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--batch_clients", type=int, default=3)
    p.add_argument("--rate", type=float, default=20.0, help="detector requests/s per client")
    p.add_argument("--detector_clients", type=int, default=2)
    args = p.parse_args(argv)
    log = Path(tempfile.mkdtemp()) / "runtime.log"
    with RuntimeProcess("--demo", log_path=log) as server:
        assert server.proc is not None
        pid = server.proc.pid
        start_rss = rss_mb(pid)
        stop = threading.Event()
        det, cls = Counter(), Counter()
        rng = np.random.default_rng(0)
        threads = [threading.Thread(target=worker, args=(
            server.url, "detector", rng.random((1, 3, 96, 96), dtype=np.float32), stop, det,
            1.0 / args.rate)) for _ in range(args.detector_clients)]
        threads += [threading.Thread(target=worker, args=(
            server.url, "classifier", rng.random((8, 3, 224, 224), dtype=np.float32), stop, cls,
            None)) for _ in range(args.batch_clients)]
        for t in threads:
            t.start()
        peak = start_rss
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            time.sleep(1.0)
            peak = max(peak, rss_mb(pid))
        stop.set()
        for t in threads:
            t.join(180)
        end_rss = rss_mb(pid)
        code = server.stop()
    result = {
        "seconds": args.seconds,
        "detector": det.counts,
        "classifier": cls.counts,
        "rss_mb": {"start": round(start_rss, 1), "peak": round(peak, 1), "end": round(end_rss, 1)},
        "exit_code": code,
    }
    print(json.dumps(result, indent=1))
    lost = det.counts["lost"] + cls.counts["lost"]
    unanswered = sum(c.counts["sent"] - c.counts["answered"] - c.counts["refused"]
                     - c.counts["errors"] - c.counts["lost"] for c in (det, cls))
    ok = lost == 0 and unanswered == 0 and code == 0
    print("soak:", "passed" if ok else "FAILED", f"(lost {lost})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
