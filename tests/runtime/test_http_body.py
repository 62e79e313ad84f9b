"""Request bodies kept as the HTTP parser's chunks (runtime.http_body) and the event loop the
server runs on (runtime.serve.use_event_loop)."""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx
import pytest

from runtime.http_body import BodyParts


def test_one_waiting_chunk_is_handed_over_without_a_copy():
    chunk = b"x" * 100_000
    parts = BodyParts(bytearray())
    parts += chunk
    assert len(parts) == 100_000 and bytes(parts) is chunk


def test_several_waiting_chunks_are_joined_in_order():
    parts = BodyParts(bytearray(b"ab"))  # what uvicorn's cycle held before the first chunk
    parts += b"cd"
    parts += b""
    parts += b"ef"
    assert len(parts) == 6 and bytes(parts) == b"abcdef"
    assert bytes(BodyParts()) == b"" and len(BodyParts()) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("protocol", ["chunked", "uvicorn"])
def test_a_real_uvicorn_server_delivers_every_byte(protocol):
    import uvicorn

    from runtime.http_body import RECEIVED_AT, ChunkedBodyProtocol

    received: list[bytes] = []
    stamps: list[float] = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            return
        if RECEIVED_AT in scope:
            stamps.append(scope[RECEIVED_AT])
        body = []
        more = True
        while more:
            message = await receive()
            assert type(message["body"]) is bytes  # what ASGI promises applications
            body.append(message["body"])
            more = message.get("more_body", False)
        received.append(b"".join(body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(received[-1])).encode()})

    port = _free_port()
    http = ChunkedBodyProtocol if protocol == "chunked" else "httptools"
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=http,
                                           log_config=None, lifespan="off"))
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    try:
        while not server.started:
            thread.join(0.01)
            assert thread.is_alive()
        payload = bytes(range(256)) * 20_000  # 5 MB: many chunks, flow control pauses
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(3):
                r = client.post("/", content=payload)
                assert r.text == str(len(payload))
            assert client.post("/", content=b"").text == "0"
    finally:
        server.should_exit = True
        thread.join(10)
    assert received[:3] == [payload] * 3 and received[3] == b""
    if protocol == "chunked":  # each request noted when it began to arrive
        assert all(isinstance(t, float) for t in stamps) and stamps == sorted(stamps)


def test_install_makes_it_uvicorns_auto_protocol(monkeypatch):
    import uvicorn.config

    from runtime import http_body

    monkeypatch.setitem(uvicorn.config.HTTP_PROTOCOLS, "auto",
                        uvicorn.config.HTTP_PROTOCOLS["auto"])
    assert http_body.install()
    config = uvicorn.Config(lambda *a: None, log_config=None)
    config.load()
    assert config.http_protocol_class is http_body.ChunkedBodyProtocol
    monkeypatch.setattr(http_body, "HttpToolsProtocol", None)  # no httptools: left alone
    uvicorn.config.HTTP_PROTOCOLS["auto"] = "x:y"
    assert not http_body.install() and uvicorn.config.HTTP_PROTOCOLS["auto"] == "x:y"


def test_the_server_runs_on_uvloop_where_installed(monkeypatch):
    uvloop = pytest.importorskip("uvloop")
    from runtime.serve import use_event_loop

    policy = asyncio.get_event_loop_policy()
    try:
        assert use_event_loop("asyncio") == "asyncio"
        assert not isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)
        assert use_event_loop("auto") == "uvloop"
        assert isinstance(asyncio.new_event_loop(), uvloop.Loop)
        # KServe's ModelServer.start asks for the current loop before asyncio.run
        assert isinstance(asyncio.get_event_loop(), uvloop.Loop)
    finally:
        asyncio.get_event_loop().close()
        asyncio.set_event_loop_policy(policy)
        asyncio.set_event_loop(None)
