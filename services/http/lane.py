"""The inference routes' direct path: matched and called without FastAPI's router.

FastAPI's routing (a walk over every route's pattern), its dependency resolution and its
exception middleware take about as long on the event loop as everything the inference route
itself does there, which on a 2-core host is time taken from inference. :class:`InferenceLane`
is the innermost of the app's own middleware (inside the request id and access log, the body
bound, CORS and the JSON-only rule, which all still apply): a ``POST`` to one of the paths of
:data:`LaneRoute` s goes straight to its handler, with the same :class:`Request`, the same
``scope["route"]`` (the metrics and traces name the same endpoint) and the same error table
(:func:`services.http.errors.error_response`); everything else goes on to FastAPI.

The routes stay declared on the FastAPI app too: the OpenAPI document describes them, and a
request the lane does not take (another method) is answered there as before.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from services.http.errors import error_response, known_errors

Handler = Callable[[Request, dict[str, str]], Awaitable[Response]]
"""Takes the request and its path parameters; returns the reply or raises."""


@dataclass(frozen=True, slots=True)
class LaneRoute:
    """A ``POST`` route of the lane: its path template (FastAPI's spelling) and handler."""

    path: str
    handler: Handler


@dataclass(frozen=True, slots=True)
class _Compiled:
    pattern: re.Pattern[str]
    handler: Handler
    route: BaseRoute  # the FastAPI route of the same path, for scope["route"]


def _pattern(template: str) -> re.Pattern[str]:
    """``/a/{x}/b`` -> a pattern matching one non-empty path segment per parameter."""
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts)
    )
    return re.compile(regex)


class InferenceLane:
    """Pure ASGI middleware; see the module docstring."""

    def __init__(
        self, app: ASGIApp, routes: Sequence[LaneRoute], routers: Sequence[APIRouter]
    ) -> None:
        """``routers``: where the same routes are declared for FastAPI (``scope["route"]``)."""
        self.app = app
        by_path = {
            getattr(r, "path", None): r
            for router in routers
            for r in router.routes
            if "POST" in (getattr(r, "methods", None) or ())
        }
        missing = [r.path for r in routes if r.path not in by_path]
        if missing:
            raise ValueError(f"lane routes without a FastAPI route of the same path: {missing}")
        self._routes = [_Compiled(_pattern(r.path), r.handler, by_path[r.path]) for r in routes]
        self._known = known_errors()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            for compiled in self._routes:
                found = compiled.pattern.fullmatch(path)
                if found is not None:
                    await self._dispatch(compiled, found.groupdict(), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _dispatch(
        self,
        compiled: _Compiled,
        params: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        scope["route"] = compiled.route
        scope["path_params"] = params
        request = Request(scope, receive, send)
        try:
            response = await compiled.handler(request, params)
        except self._known as exc:
            response = error_response(scope["path"], exc)
        # Anything else goes up to Starlette's outermost middleware: a 500, and the server log.
        await response(scope, receive, send)
