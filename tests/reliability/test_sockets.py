"""Client behaviour only a real socket shows: clients that go away with a request queued or
running, and bodies that never end. uvicorn serves the v2 routes from a thread on a loopback
port; the engine and its torch model are the real ones."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from runtime.codec import Limits
from tests.reliability.support import (
    ThreadedServer,
    build_app,
    faulty_mlp,
    raw_request,
    read_response,
    valid_body,
    wait_for,
)
from tests.runtime.helpers import make_engine

LIMIT = 32 * 1024


@pytest.fixture
def held(caplog):
    """A batch model whose units wait until the test releases them, served over a socket."""
    caplog.set_level(logging.INFO, logger="runtime.http")
    release = threading.Event()
    served, _, units = faulty_mlp("held", max_batch_size=1, gate=release)
    engine = make_engine([served], policy="layer")  # a sync point after every unit
    engine.start()
    with ThreadedServer(build_app(engine, Limits(max_body_bytes=LIMIT))) as server:
        yield server, engine, units, release
        release.set()
    engine.stop(2.0)


def test_a_client_that_goes_away_frees_its_queued_job(held, caplog):
    server, engine, units, release = held
    first = raw_request(server.port, "POST", "/v2/models/held/infer", valid_body())
    assert wait_for(lambda: units.started.is_set())  # the first job holds the device
    second = raw_request(server.port, "POST", "/v2/models/held/infer", valid_body())
    assert wait_for(lambda: engine.outstanding == 2)
    second.close()  # queued behind the first one; its client leaves
    assert wait_for(lambda: "went away" in caplog.text)
    time.sleep(0.05)  # the withdrawal reaches the executor's inbox
    release.set()  # the executor reaches its next sync point and drops the queued job
    status, body = read_response(first)
    assert status == 200, body
    first.close()
    assert wait_for(lambda: engine.outstanding == 0), "the queued job was not withdrawn"
    assert units.starts == 1  # the withdrawn job never ran
    again = raw_request(server.port, "POST", "/v2/models/held/infer", valid_body())
    assert read_response(again)[0] == 200
    again.close()


def test_a_client_that_goes_away_frees_its_running_job_at_the_next_sync_point(held, caplog):
    server, engine, units, release = held
    sock = raw_request(server.port, "POST", "/v2/models/held/infer", valid_body())
    assert wait_for(lambda: units.started.is_set())
    sock.close()  # the job is running its first unit
    assert wait_for(lambda: "went away" in caplog.text)
    time.sleep(0.05)
    release.set()
    assert wait_for(lambda: engine.outstanding == 0), "the running job was never let go"
    assert units.units_run < units.num_units  # dropped at a sync point, not run to the end
    again = raw_request(server.port, "POST", "/v2/models/held/infer", valid_body())
    assert read_response(again)[0] == 200
    again.close()


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_a_body_over_the_limit_is_refused_before_it_ends(held, framing):
    """The server answers once the limit is passed, without waiting for (or keeping) the
    rest: a body that never ends gets its 400 all the same."""
    server, engine, _, release = held
    release.set()
    path = "/v2/models/held/infer"
    if framing == "chunked":
        sock = raw_request(server.port, "POST", path, headers={"transfer-encoding": "chunked"})
        piece = b" " * 4096
        for _ in range(2 * LIMIT // len(piece)):
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    else:
        sock = raw_request(server.port, "POST", path,
                           headers={"content-length": str(100 * LIMIT)}, body=b" " * 1024)
    sock.settimeout(5)
    status, body = read_response(sock)  # the body was never finished
    sock.close()
    assert status == 400 and b"limit" in body
    assert engine.outstanding == 0
    ok = raw_request(server.port, "POST", path, valid_body())
    assert read_response(ok)[0] == 200
    ok.close()
