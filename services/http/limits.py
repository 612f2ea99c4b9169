"""The per-caller rate limit of the inference routes, as a FastAPI dependency.

:data:`RATE_LIMIT` runs before the route's body is decoded (images, tensors) or any model
work, so a caller over its allowance costs one bucket lookup (services/state/rate_limit.py).
The caller is, first found:

1. the signer address of a signed request (``X-Cidserve-Address``), when the service checks
   signatures: a request whose signature does not hold is refused (401) anyway, so claiming
   an address buys nothing but a 401; without signature checks the header is ignored (it
   would let a client pick a fresh bucket per request);
2. the operator token (``Authorization: Bearer``), when it is the configured
   ``CIDSERVE_ADMIN_TOKEN``: keyed by its SHA-256, never by the token itself;
3. the client address of the connection (behind a proxy, what uvicorn's
   ``--forwarded-allow-ips`` makes of ``X-Forwarded-For``).
"""

from __future__ import annotations

import hashlib
import hmac
import re

from fastapi import Depends, Request

from services.http.deps import Svc
from services.licensing import Anonymous
from services.wiring import Services

# The signer header of services/chain/signing.py (not imported: it loads eth-account).
_ADDRESS_HEADER = "x-cidserve-address"
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def caller_key(svc: Services, request: Request) -> str:
    """The bucket key of ``request``'s caller (see the module docstring)."""
    address = request.headers.get(_ADDRESS_HEADER, "").strip()
    if address and not isinstance(svc.authenticator, Anonymous) and _ADDRESS.fullmatch(address):
        return "signer:" + address.lower()
    token = _operator_token(svc)
    auth = request.headers.get("authorization", "")
    if token and auth[:7].lower() == "bearer ":
        given = auth[7:].strip().encode()
        if hmac.compare_digest(given, token.encode()):
            return "operator:" + hashlib.sha256(given).hexdigest()[:32]
    client = request.client
    return "client:" + (client.host if client is not None else "unknown")


def _operator_token(svc: Services) -> str | None:
    """``CIDSERVE_ADMIN_TOKEN`` when the settings have one (a str or a pydantic SecretStr)."""
    value = getattr(svc.settings, "admin_token", None)
    if value is None:
        return None
    reveal = getattr(value, "get_secret_value", None)
    secret = reveal() if callable(reveal) else value
    return secret if isinstance(secret, str) and secret else None


async def check_rate_limit(request: Request, svc: Svc) -> None:
    """429 with ``Retry-After`` when the caller is over ``CIDSERVE_RATE_LIMIT_RPS``."""
    if svc.limiter is not None:
        await svc.limiter.check(caller_key(svc, request))


RATE_LIMIT = Depends(check_rate_limit)
