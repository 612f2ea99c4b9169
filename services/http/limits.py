"""The per-caller rate limit of the inference routes.

Each inference route calls :func:`check_rate_limit` first (a direct call, not a FastAPI
dependency: see :func:`services.http.deps.services_of`), before the route's body is decoded
(images, tensors) or any model work, so a caller over its allowance costs one bucket lookup
(services/state/rate_limit.py).
Its bucket is the operator token's (``Authorization: Bearer``, when it is the configured
``CIDSERVE_ADMIN_TOKEN``; keyed by its SHA-256, never by the token itself), else the client
address of the connection (behind a proxy, what uvicorn's ``--forwarded-allow-ips`` makes of
``X-Forwarded-For``).

A signed request is charged to its signer's bucket too, once the signature is verified
(:func:`services.http.deps.caller_of`): a signer's allowance follows it across addresses and
replicas. The signer is never the only key: keys cost nothing to make, so a client minting a
fresh key (or claiming a fresh address) per request would otherwise get a fresh bucket each
time; its address's bucket still bounds it.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from services.http.deps import client_key
from services.wiring import Services


def caller_key(svc: Services, request: Request) -> str:
    """The bucket key of ``request``'s sender (see the module docstring)."""
    secret = svc.settings.admin_secret  # CIDSERVE_ADMIN_TOKEN or the _FILE's content
    token = secret.get_secret_value() if secret is not None else None
    auth = request.headers.get("authorization", "")
    if token and auth[:7].lower() == "bearer ":
        given = auth[7:].strip().encode()
        if hmac.compare_digest(given, token.encode()):
            return "operator:" + hashlib.sha256(given).hexdigest()[:32]
    return client_key(request)


async def check_rate_limit(request: Request, svc: Services) -> None:
    """429 with ``Retry-After`` when the caller is over ``CIDSERVE_RATE_LIMIT_RPS``."""
    if svc.limiter is not None:
        await svc.limiter.check(caller_key(svc, request))
