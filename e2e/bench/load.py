"""Load generators with real clients (tritonclient over HTTP): open-loop for latency-critical
streams, closed-loop for batch streams. Latency is measured from each request's scheduled
send time, so queueing in front of a slow server is not hidden."""

from __future__ import annotations

import math
import multiprocessing as mp
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.http as httpclient


def make_input(name: str, x: np.ndarray) -> httpclient.InferInput:
    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    return inp


@dataclass
class Stream:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    sent: int = 0

    def p(self, q: float) -> float:
        if not self.latencies:
            return math.nan
        s = sorted(self.latencies)
        return s[max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))]

    def attainment(self, slo_s: float) -> float:
        if not self.sent:
            return math.nan
        return sum(1 for x in self.latencies if x <= slo_s) / self.sent


def sequential(url: str, model: str, x: np.ndarray, n: int, input_name: str = "image",
               warmup: int = 5) -> Stream:
    """``n`` round trips one after another."""
    client = httpclient.InferenceServerClient(url, network_timeout=120)
    inp = make_input(input_name, x)
    for _ in range(warmup):
        client.infer(model, [inp])
    out = Stream()
    for _ in range(n):
        t = time.perf_counter()
        out.sent += 1
        try:
            client.infer(model, [inp])
            out.latencies.append(time.perf_counter() - t)
        except Exception:  # noqa: BLE001
            out.errors += 1
    return out


def _closed_loop_worker(url: str, model: str, x: np.ndarray, clients: int, input_name: str,
                       stop: Any, results: Any) -> None:
    done: list[tuple[float, float]] = []
    errors = [0]
    lock = threading.Lock()

    def run() -> None:
        client = httpclient.InferenceServerClient(url, network_timeout=300)
        inp = make_input(input_name, x)
        while not stop.is_set():
            t = time.monotonic()
            try:
                client.infer(model, [inp])
                with lock:
                    done.append((time.monotonic(), time.monotonic() - t))
            except Exception:  # noqa: BLE001
                with lock:
                    errors[0] += 1

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put((done, errors[0]))


class ClosedLoop:
    """``clients`` threads, each sending the next request when the last one returns. They run
    in a process of their own, so their encoding work does not share a GIL with the
    latency-critical client being measured."""

    def __init__(self, url: str, model: str, x: np.ndarray, clients: int,
                 input_name: str = "image") -> None:
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        self._results = ctx.Queue()
        self._proc = ctx.Process(
            target=_closed_loop_worker,
            args=(url, model, x, clients, input_name, self._stop, self._results),
            daemon=True,
        )
        self.stream = Stream()
        self.completed_at: list[float] = []

    def start(self) -> ClosedLoop:
        self._proc.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        done, errors = self._results.get(timeout=600)
        self._proc.join(60)
        self.completed_at = [t for t, _ in done]
        self.stream.latencies = [lat for _, lat in done]
        self.stream.errors = errors
        self.stream.sent = len(done) + errors

    def throughput(self, t0: float, t1: float) -> float:
        """Completions per second between monotonic times ``t0`` and ``t1`` (after stop)."""
        return sum(1 for t in self.completed_at if t0 <= t <= t1) / (t1 - t0)


def open_loop(url: str, model: str, x: np.ndarray, rate_per_s: float, duration_s: float,
              input_name: str = "image", workers: int = 32) -> Stream:
    """Requests at a steady rate for ``duration_s``; latency from each scheduled send."""
    out = Stream()
    lock = threading.Lock()
    local = threading.local()

    def one(scheduled: float) -> None:
        if not hasattr(local, "client"):
            local.client = httpclient.InferenceServerClient(url, network_timeout=120)
            local.inp = make_input(input_name, x)
        try:
            local.client.infer(model, [local.inp])
            lat = time.perf_counter() - scheduled
            with lock:
                out.latencies.append(lat)
        except Exception:  # noqa: BLE001
            with lock:
                out.errors += 1

    n = int(duration_s * rate_per_s)
    with ThreadPoolExecutor(workers) as pool:
        start = time.perf_counter() + 0.05
        for i in range(n):
            scheduled = start + i / rate_per_s
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            out.sent += 1
            pool.submit(one, scheduled)
    return out
