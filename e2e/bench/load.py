"""Load generators with real clients (tritonclient over HTTP): open-loop for latency-critical
streams, closed-loop for batch streams. Latency is measured from each request's scheduled
send time, so queueing in front of a slow server is not hidden."""

from __future__ import annotations

import contextlib
import gc
import math
import multiprocessing as mp
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import np_to_triton_dtype

from e2e.bench.stats import completion_rate


def make_input(name: str, x: np.ndarray) -> httpclient.InferInput:
    inp = httpclient.InferInput(name, list(x.shape), np_to_triton_dtype(x.dtype))
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


def _infer_kwargs(priority: int) -> dict[str, int]:
    # tritonclient's request-level priority (1 = highest); 0 sends nothing
    return {"priority": priority} if priority else {}


def sequential(url: str, model: str, x: np.ndarray, n: int, input_name: str = "image",
               warmup: int = 5, priority: int = 0) -> Stream:
    """``n`` round trips one after another."""
    client = httpclient.InferenceServerClient(url, network_timeout=120)
    inp = make_input(input_name, x)
    kw = _infer_kwargs(priority)
    for _ in range(warmup):
        client.infer(model, [inp], **kw)
    out = Stream()
    for _ in range(n):
        t = time.perf_counter()
        out.sent += 1
        try:
            client.infer(model, [inp], **kw)
            out.latencies.append(time.perf_counter() - t)
        except Exception:  # noqa: BLE001
            out.errors += 1
    return out


def _closed_loop_worker(url: str, model: str, x: np.ndarray, clients: int, input_name: str,
                       stop: Any, results: Any, priority: int = 0, grace_s: float = 60.0,
                       timeout_s: float = 300.0, ready: Any = None, gate: Any = None) -> None:
    done: list[tuple[float, float]] = []
    errors = [0]
    answered = [0]  # clients whose first request has come back
    lock = threading.Lock()

    def run() -> None:
        client = httpclient.InferenceServerClient(url, network_timeout=timeout_s)
        inp = make_input(input_name, x)
        kw = _infer_kwargs(priority)
        first = True
        while not stop.is_set():
            if gate is not None and not gate.wait(0.05):
                continue  # paused: the next request waits for resume()
            t = time.monotonic()
            try:
                client.infer(model, [inp], **kw)
                with lock:
                    done.append((time.monotonic(), time.monotonic() - t))
            except Exception:  # noqa: BLE001
                with lock:
                    errors[0] += 1
            if first:
                first = False
                with lock:
                    answered[0] += 1
                    if answered[0] == clients and ready is not None:
                        ready.set()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    stop.wait()
    # requests still in flight after the grace period are abandoned (not counted)
    deadline = time.monotonic() + grace_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        results.put((list(done), errors[0]))


class ClosedLoop:
    """``clients`` threads, each sending the next request when the last one returns. They run
    in a process of their own, so their encoding work does not share a GIL with the
    latency-critical client being measured. ``stop`` waits at most ``grace_s`` for requests
    in flight; ``timeout_s`` bounds one request."""

    def __init__(self, url: str, model: str, x: np.ndarray, clients: int,
                 input_name: str = "image", priority: int = 0, grace_s: float = 60.0,
                 timeout_s: float = 300.0, pausable: bool = False) -> None:
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        self._ready = ctx.Event()
        self._gate = ctx.Event() if pausable else None
        if self._gate is not None:
            self._gate.set()
        self._results = ctx.Queue()
        self._proc = ctx.Process(
            target=_closed_loop_worker,
            args=(url, model, x, clients, input_name, self._stop, self._results, priority,
                  grace_s, timeout_s, self._ready, self._gate),
            daemon=True,
        )
        self.stream = Stream()
        self.completed_at: list[float] = []

    def start(self, ready_timeout_s: float = 120.0) -> ClosedLoop:
        """Start the clients and wait (at most ``ready_timeout_s``) until each has had its
        first answer: starting the process and its imports take a second or more, which
        would otherwise eat into the warm-up that follows."""
        self._proc.start()
        self._ready.wait(ready_timeout_s)
        return self

    def pause(self) -> None:
        """(``pausable`` only) Each client finishes the request it has in flight and sends
        no other until ``resume``."""
        assert self._gate is not None, "ClosedLoop(pausable=True) to pause"
        self._gate.clear()

    def resume(self) -> None:
        assert self._gate is not None, "ClosedLoop(pausable=True) to resume"
        self._gate.set()

    def stop(self) -> None:
        if self._gate is not None:
            self._gate.set()
        self._stop.set()
        done, errors = self._results.get(timeout=600)
        self._proc.join(60)
        done.sort()
        self.completed_at = [t for t, _ in done]
        self.stream.latencies = [lat for _, lat in done]
        self.stream.errors = errors
        self.stream.sent = len(done) + errors

    def throughput(self, t0: float, t1: float) -> float:
        """Completions per second between monotonic times ``t0`` and ``t1`` (after stop)."""
        return sum(1 for t in self.completed_at if t0 <= t <= t1) / (t1 - t0)

    def window(self, t0: float, t1: float) -> list[float]:
        """Latencies (s) of the requests completed between monotonic ``t0`` and ``t1``."""
        return [lat for t, lat in zip(self.completed_at, self.stream.latencies, strict=True)
                if t0 <= t <= t1]


def open_loop(url: str, model: str, x: np.ndarray, rate_per_s: float, duration_s: float,
              input_name: str = "image", workers: int = 32, priority: int = 0) -> Stream:
    """Requests at a steady rate for ``duration_s``; latency from each scheduled send."""
    n = int(duration_s * rate_per_s)
    return open_loop_at(url, model, x, [i / rate_per_s for i in range(n)], input_name,
                        workers, priority)


_quiet_lock = threading.Lock()
_quiet_users = [0]


@contextlib.contextmanager
def quiet_heap() -> Iterator[None]:
    """No cyclic garbage collection in this process while latencies are measured. With
    torch imported (the profile and in-process stages), a full collection here walks some
    200,000 objects and holds the GIL for 80-200 ms, stalling every sender thread at once:
    every system's measured latencies would carry those stalls. Everything alive at the
    start is frozen (out of the collector's reach for good), and the collector is off until
    the last measurement in flight ends; reference counting still frees what the senders
    drop. Nests across threads."""
    with _quiet_lock:
        if _quiet_users[0] == 0:
            gc.collect()
            gc.freeze()
            gc.disable()
        _quiet_users[0] += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_users[0] -= 1
            if _quiet_users[0] == 0:
                gc.enable()


def open_loop_at(url: str, model: str, x: np.ndarray, offsets_s: list[float],
                 input_name: str = "image", workers: int = 64, priority: int = 0,
                 start: float | None = None, timeout_s: float = 120.0,
                 lead_s: float = 0.05) -> Stream:
    """One request at each offset (seconds after ``start``, a ``time.perf_counter`` value;
    default: now); latency from each scheduled send, so a server that falls behind shows
    its queueing. Returns when every request has been answered or has failed; a request
    not answered within ``timeout_s`` counts as an error.

    Each request goes to a sender thread ``lead_s`` before its time, and that thread sleeps
    until the send itself: the only wake-up on the clock is the sender's own, not a hand-off
    from a scheduling thread to a sender, which on a loaded machine costs as much again. A
    sender's first use opens its connection, also before the send."""
    out = Stream()
    lock = threading.Lock()
    local = threading.local()
    kw = _infer_kwargs(priority)

    def one(scheduled: float) -> None:
        if not hasattr(local, "client"):
            local.client = httpclient.InferenceServerClient(
                url, network_timeout=timeout_s, connection_timeout=timeout_s)
            local.inp = make_input(input_name, x)
            # a failure here is reported by the request itself
            with contextlib.suppress(Exception):
                local.client.is_server_live()
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        with lock:
            out.sent += 1
        try:
            local.client.infer(model, [local.inp], **kw)
            lat = time.perf_counter() - scheduled
            with lock:
                out.latencies.append(lat)
        except Exception:  # noqa: BLE001
            with lock:
                out.errors += 1

    with quiet_heap(), ThreadPoolExecutor(workers) as pool:
        begin = (time.perf_counter() + 0.05) if start is None else start
        for offset in offsets_s:
            scheduled = begin + offset
            delay = scheduled - lead_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, scheduled)
    return out


def alternating_throughput(url: str, model: str, x: np.ndarray, input_name: str,
                           in_process: Any, windows: int, window_s: float,
                           warm_s: float = 1.0, clients: int = 2) -> dict[str, Any]:
    """A model's throughput over HTTP (``clients`` closed-loop clients) and in this process
    without HTTP (``in_process.measure(seconds)``: items/s), in alternating windows, so that
    both see the same machine: on a shared machine its speed drifts by more than the
    serving overhead being measured."""
    running, stop = threading.Event(), threading.Event()
    done: list[float] = []
    in_flight = [0]
    lock = threading.Lock()
    batch = x.shape[0]

    def client() -> None:
        c = httpclient.InferenceServerClient(url, network_timeout=300)
        inp = make_input(input_name, x)
        while not stop.is_set():
            if not running.wait(0.05):
                continue
            with lock:
                if not running.is_set():
                    continue
                in_flight[0] += 1
            try:
                c.infer(model, [inp])
                with lock:
                    done.append(time.monotonic())
            finally:
                with lock:
                    in_flight[0] -= 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    http: list[float] = []
    local: list[float] = []
    try:
        for _ in range(windows):
            running.set()
            time.sleep(warm_s)
            t0 = time.monotonic()
            time.sleep(window_s)
            t1 = time.monotonic()
            with lock:
                running.clear()
            while True:  # the server goes quiet before the in-process window
                with lock:
                    if in_flight[0] == 0:
                        break
                time.sleep(0.01)
            with lock:
                rate = completion_rate(list(done), t0, t1)
            if math.isfinite(rate) and rate > 0:
                http.append(rate * batch)
            local.append(in_process.measure(window_s))
    finally:
        stop.set()
        running.set()
        for t in threads:
            t.join(60)
    http_mean = sum(http) / len(http) if http else None
    local_mean = sum(local) / len(local) if local else None
    return {
        "http_items_per_s": [round(v, 3) for v in http],
        "in_process_items_per_s": [round(v, 3) for v in local],
        "ratio": round(http_mean / local_mean, 4) if http_mean and local_mean else None,
        "windows": windows, "window_s": window_s, "clients": clients, "batch_size": batch,
    }


SPEED_RATIO_METRIC = "deft_profile_speed_ratio"


def parse_speed_ratios(text: str) -> dict[str, float]:
    """Each model's ``deft_profile_speed_ratio`` in a Prometheus text exposition: how long
    its chunks took against its profile's prediction, as the runtime measured them."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(SPEED_RATIO_METRIC + "{"):
            continue
        labels, _, value = line.rpartition("} ")
        for pair in labels[len(SPEED_RATIO_METRIC) + 1:].split(","):
            key, _, quoted = pair.partition("=")
            if key.strip() == "model":
                with contextlib.suppress(ValueError):
                    out[quoted.strip().strip('"')] = float(value)
    return out


def speed_ratios(url: str, timeout_s: float = 5.0) -> dict[str, float]:
    """``parse_speed_ratios`` of a Deft server's ``/metrics`` at ``url`` (host:port);
    empty where the server serves none."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{url}/metrics", timeout=timeout_s) as r:
            return parse_speed_ratios(r.read().decode("utf-8", "replace"))
    except OSError:
        return {}

