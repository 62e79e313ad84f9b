"""The benchmark's open-loop client against a minimal v2 server on loopback."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from e2e.bench.load import open_loop_at


class _V2(BaseHTTPRequestHandler):
    arrivals: list[float] = []
    checks: list[float] = []

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, doc):
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        type(self).checks.append(time.perf_counter())
        self._reply({"live": True})

    def do_POST(self):
        type(self).arrivals.append(time.perf_counter())
        self.rfile.read(int(self.headers["content-length"]))
        self._reply({"model_name": "m", "outputs": []})


@pytest.fixture
def server():
    _V2.arrivals, _V2.checks = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _V2)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_every_request_is_sent_at_its_time_never_before_and_answered(server):
    x = np.zeros((1, 4), dtype=np.float32)
    start = time.perf_counter() + 1.0
    offsets = [0.0, 0.0, 0.01, 0.03]
    st = open_loop_at(server, "m", x, offsets, "x", start=start, timeout_s=10, lead_s=0.9)
    assert (st.sent, st.errors, len(st.latencies)) == (4, 0, 4)
    # each sender opened its connection ahead of time, and sent at the scheduled time
    assert _V2.checks and min(_V2.checks) < start
    arrivals = sorted(_V2.arrivals)
    assert len(arrivals) == 4
    for arrived, offset in zip(arrivals, sorted(offsets), strict=True):
        assert arrived >= start + offset
    assert all(lat > 0 for lat in st.latencies)


def test_requests_to_a_server_that_is_not_there_count_as_errors():
    x = np.zeros((1, 4), dtype=np.float32)
    st = open_loop_at("127.0.0.1:9", "m", x, [0.0, 0.01], "x", timeout_s=2)
    assert (st.sent, st.errors, st.latencies) == (2, 2, [])


def test_no_cyclic_collection_while_latencies_are_measured():
    import gc

    from e2e.bench.load import quiet_heap

    assert gc.isenabled()
    inner = threading.Event()
    release = threading.Event()
    seen: list[bool] = []

    def other() -> None:
        with quiet_heap():
            inner.set()
            release.wait(5)
            seen.append(gc.isenabled())

    t = threading.Thread(target=other)
    with quiet_heap():
        t.start()
        inner.wait(5)
        seen.append(gc.isenabled())
    # the first measurement ended; the other is still in flight: still off
    seen.append(gc.isenabled())
    release.set()
    t.join(5)
    assert seen == [False, False, False]
    assert gc.isenabled()  # back on once the last one ended
    assert gc.get_freeze_count() > 0
    gc.unfreeze()
