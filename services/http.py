"""HTTP plumbing shared by the routes: fast JSON responses and the request-body bound."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialize {type(obj).__name__}")


class JSONResponse(Response):
    """JSON via orjson (numpy scalars and arrays allowed)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_default, option=_ORJSON_OPTS)


def error_body(status: int, title: str, message: str) -> bytes:
    return orjson.dumps({"success": False, "error": title, "message": message})


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the bound (FastAPI re-raises
    HTTPExceptions from body parsing instead of turning them into 400s)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over {limit} bytes (CIDSERVE_MAX_BODY_BYTES)")


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reply(send, 400, "Bad request", "Content-Length is not a number")
                    return
                if declared > limit:
                    await self._too_large(send, declared)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._too_large(send, seen)

    async def _too_large(self, send: Send, size: int) -> None:
        await self._reply(
            send,
            413,
            "Payload too large",
            f"request body is over {self.max_bytes} bytes (CIDSERVE_MAX_BODY_BYTES); got {size}+",
        )

    @staticmethod
    async def _reply(send: Send, status: int, title: str, message: str) -> None:
        body = error_body(status, title, message)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
