"""uvicorn's httptools protocol, with each response's head and body sent in one write.

uvicorn writes a response's status line and headers as soon as the application sends
``http.response.start``, and the body with ``http.response.body``: two ``send`` system
calls, two TCP segments, and a client woken twice for one small JSON reply. Here the
connection's transport holds a response head until the next write, which cidserve's replies
make in the same step of the event loop, and sends both together; a head that no write
follows in that step (a streamed body still being produced, ``100 Continue``) leaves at the end
of the step. Order and content of the bytes are unchanged, and nothing is held across steps of
the loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# What starts every response head uvicorn writes (HTTP/1.1 only; HTTP/1.0 requests get
# "HTTP/1.1" status lines too) and what ends it.
_HEAD_START = b"HTTP/1.1 "
_HEAD_END = b"\r\n\r\n"
# Bodies up to this size are joined to the head; larger ones go out with writelines.
_JOIN_MAX = 64 * 1024


class CoalescingTransport:
    """A connection's transport that holds a response head until the next write (or the end
    of the current step of the loop) and writes both at once; everything else is the
    wrapped transport's."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if len(data) <= _JOIN_MAX:
                self._transport.write(held + bytes(data))
            else:
                self._transport.writelines([held, data])
            return
        if isinstance(data, bytes) and data.startswith(_HEAD_START) and data.endswith(_HEAD_END):
            self._held = data
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        self.flush()
        self._transport.writelines(chunks)

    def flush(self) -> None:
        """Send a held head now (no-op when none is held)."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a :class:`CoalescingTransport` (``http=`` of
    ``uvicorn.Config``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
