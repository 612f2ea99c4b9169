"""The control plane's gate: who may load, unload and manage the models of this server.

An operator is a request with ``Authorization: Bearer <token>``, the token being
``CIDSERVE_ADMIN_TOKEN`` (or the content of ``CIDSERVE_ADMIN_TOKEN_FILE``), compared in constant
time. Without a configured token the control plane is open: ``cidserve serve`` only starts that
way on a loopback address, or with ``CIDSERVE_ALLOW_OPEN_CONTROL_PLANE``
(:mod:`services.cli.preflight`). Open without that opt-out, it also requires the request's
``Host`` to name a loopback address, so that a web page whose name is rebound to 127.0.0.1,
or a reverse proxy forwarding outside traffic to the loopback port, does not reach it.

Routes that change what the server serves declare the :data:`Operator` dependency (401 JSON with
``WWW-Authenticate`` otherwise); a route that serves operators and others differently calls
:func:`is_operator`.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Annotated

from fastapi import Depends, Request

from services.errors import OperatorRequired
from services.http.deps import Svc
from services.wiring import Services

NEEDS_TOKEN = (
    "this is a control-plane operation: send 'Authorization: Bearer <token>' with the token "
    "configured in CIDSERVE_ADMIN_TOKEN (or CIDSERVE_ADMIN_TOKEN_FILE)"
)
NEEDS_LOOPBACK = (
    "this is a control-plane operation and CIDSERVE_ADMIN_TOKEN is not set: it is only "
    "answered for requests addressed to a loopback host (Host: 127.0.0.1, ::1 or localhost); "
    "set CIDSERVE_ADMIN_TOKEN and send 'Authorization: Bearer <token>'"
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, no port) names this machine's loopback only:
    ``localhost``, 127.0.0.0/8, ``::1`` (also IPv4-mapped)."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def host_of(header: str) -> str:
    """The host of a ``Host`` header value, without its port (``[::1]:8000`` -> ``::1``)."""
    value = header.strip()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    name, sep, port = value.rpartition(":")
    return name if sep and port.isdigit() and ":" not in name else value


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None without one)."""
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def is_operator(svc: Services, request: Request) -> bool:
    """True when the request carries the admin token, or when none is configured (open
    control plane; see the module docstring for the loopback ``Host`` rule)."""
    secret = svc.settings.admin_secret
    if secret is None:
        if svc.settings.allow_open_control_plane:
            return True
        return is_loopback(host_of(request.headers.get("host", "")))
    token = bearer_token(request)
    if token is None:
        return False
    return hmac.compare_digest(token.encode("utf-8"), secret.get_secret_value().encode("utf-8"))


async def require_operator(request: Request, svc: Svc) -> None:
    """FastAPI dependency: raise :class:`OperatorRequired` (401) unless the caller is the
    operator."""
    if not await is_operator(svc, request):
        open_plane = svc.settings.admin_secret is None
        raise OperatorRequired(NEEDS_LOOPBACK if open_plane else NEEDS_TOKEN)


Operator = Annotated[None, Depends(require_operator)]
"""Declare ``_: Operator`` on a route (or ``dependencies=[Depends(require_operator)]``)."""
