"""A response's head and body leave in one write (services/http/protocol.py), and every kind
of response still reaches the client whole: JSON, streamed, large, HEAD, keep-alive."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse

from services.http.protocol import CoalescingTransport
from tests.harness import serve_app

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recorder:
    """A transport that records what is written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, chunks: list[bytes]) -> None:
        self.writes.append(b"".join(chunks))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return f"info:{name}"


def _wrapped() -> tuple[CoalescingTransport, Recorder, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    rec = Recorder()
    return CoalescingTransport(rec, loop), rec, loop  # type: ignore[arg-type]


def test_head_and_body_are_one_write() -> None:
    transport, rec, loop = _wrapped()
    try:
        transport.write(HEAD)
        assert rec.writes == []
        transport.write(b"{}")
        assert rec.writes == [HEAD + b"{}"]
        transport.write(b"more")  # not a head: written at once
        assert rec.writes[-1] == b"more"
    finally:
        loop.close()


def test_a_head_alone_leaves_at_the_end_of_the_step() -> None:
    transport, rec, loop = _wrapped()
    try:
        transport.write(HEAD)
        loop.run_until_complete(asyncio.sleep(0))
        assert rec.writes == [HEAD]
        transport.write(b"{}")
        assert rec.writes == [HEAD, b"{}"]
    finally:
        loop.close()


def test_close_sends_a_held_head_first_and_large_bodies_go_out_whole() -> None:
    transport, rec, loop = _wrapped()
    try:
        transport.write(HEAD)
        transport.close()
        assert rec.writes == [HEAD] and rec.closed
        rec2 = Recorder()
        transport2 = CoalescingTransport(rec2, loop)  # type: ignore[arg-type]
        big = b"x" * (1 << 20)
        transport2.write(HEAD)
        transport2.write(big)
        assert rec2.writes == [HEAD + big]
        assert transport2.get_extra_info("peername") == "info:peername"
    finally:
        loop.close()


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/json")
    async def json_reply() -> JSONResponse:
        return JSONResponse({"ok": True, "n": list(range(10))})

    @app.get("/big")
    async def big() -> JSONResponse:
        return JSONResponse({"data": "y" * 300_000})

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> Any:
            for i in range(3):
                await asyncio.sleep(0.02)
                yield f"chunk{i};".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    return app


def test_replies_reach_the_client_whole_over_one_connection() -> None:
    with serve_app(_app()) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        for _ in range(3):  # keep-alive: the same connection answers each time
            assert client.get("/json").json() == {"ok": True, "n": list(range(10))}
        assert len(client.get("/big").json()["data"]) == 300_000
        assert client.get("/stream").text == "chunk0;chunk1;chunk2;"
        head = client.head("/json")
        assert head.status_code in (200, 405) and head.content == b""
        assert client.get("/missing").status_code == 404


def _segments_in(sock: socket.socket) -> int:
    """TCP segments this socket has received (Linux ``tcp_info.tcpi_segs_in``)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, TCPI_SEGS_IN)[0])


TCPI_SEGS_IN = 140  # offset of tcpi_segs_in in struct tcp_info (linux/tcp.h, since 4.2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's tcp_info")
def test_a_small_reply_is_one_segment() -> None:
    """The client receives one TCP segment per reply (the head and the body together), not
    two: one wake-up of the client instead of two for each small reply."""
    requests = 30
    with serve_app(_app()) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            before = _segments_in(sock)
            for _ in range(requests):
                sock.sendall(b"GET /json HTTP/1.1\r\nhost: x\r\n\r\n")
                data = b""
                while not data.endswith(b"]}"):
                    chunk = sock.recv(65536)
                    assert chunk
                    data += chunk
                assert data.startswith(b"HTTP/1.1 200")
            segments = _segments_in(sock) - before
    assert segments < requests * 1.5, f"{segments} segments for {requests} replies"


@pytest.mark.parametrize("path", ["/json"])
def test_pipelined_requests_are_answered_in_order(path: str) -> None:
    with serve_app(_app()) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode() * 3)
            data = b""
            while data.count(b"HTTP/1.1 200") < 3 or not data.endswith(b"]}"):
                chunk = sock.recv(65536)
                assert chunk
                data += chunk
            assert data.count(b'{"ok":true,"n":[0,1,2,3,4,5,6,7,8,9]}') == 3
