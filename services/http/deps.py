"""What every route needs from a request: the service's parts and the caller's identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.licensing import Caller
from services.wiring import Services


def services_of(request: Request) -> Services:
    """The app instance's :class:`Services`. The inference routes call this (and the rate
    limit) themselves rather than declare dependencies: FastAPI's dependency resolution is a
    measurable share of a request's time on the event loop."""
    return request.app.state.services  # type: ignore[no-any-return]


async def get_services(request: Request) -> Services:
    """FastAPI dependency: :func:`services_of` (``async``: FastAPI runs a plain function in a
    worker thread, a hand-off per request)."""
    return services_of(request)


Svc = Annotated[Services, Depends(get_services)]


class RequestView:
    """What an authenticator may read of a request (method, target, headers, body)."""

    __slots__ = ("body", "headers", "method", "path")

    def __init__(self, request: Request, body: bytes) -> None:
        self.method = request.method
        # The request target as sent (path + ?query): what a signed request's signature covers.
        raw = request.scope.get("raw_path")
        path = raw.decode("latin-1") if raw else request.url.path
        query = request.scope.get("query_string", b"")
        self.path = f"{path}?{query.decode('latin-1')}" if query else path
        # A repeated header is one value joined by ", " (RFC 9110), as signers see it: keeping
        # only one copy would let an added copy be read by the route but not be signed.
        headers: dict[str, str] = {}
        for k, v in request.headers.items():
            name = k.lower()
            headers[name] = f"{headers[name]}, {v}" if name in headers else v
        self.headers = headers
        self.body = body


def client_key(request: Request) -> str:
    """The rate-limit bucket of the connection's client address."""
    client = request.client
    return "client:" + (client.host if client is not None else "unknown")


async def caller_of(svc: Services, request: Request) -> Caller | None:
    """The proven caller of ``request`` (None: it carries no identity). A proven signer is
    charged to its own rate-limit bucket (services/http/limits.py charged the client's)."""
    caller = await svc.authenticator.authenticate(RequestView(request, await request.body()))
    if caller is not None and svc.limiter is not None:
        await svc.limiter.check("signer:" + caller.address.lower())
    return caller
