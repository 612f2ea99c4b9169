"""Who may run a model: the caller's identity and the license check.

Two plug-in points, each a small protocol:

* :class:`Authenticator` turns a request into a :class:`Caller` (or None when the request
  carries no identity). The embedded default identifies nobody.
* :class:`LicenseBackend` answers ``hasValidLicense(caller, tokenId)`` and checks, at load
  time, that a token names the metadata CID being loaded. The embedded default
  (:class:`NoLicensing`) has no chain: every model is open.

:class:`LicenseGate` applies the policy: a model loaded without a ``tokenId`` is open; a model
with one needs an authenticated caller that holds a valid license.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from services.errors import NotLicensed, SignatureRequired

log = logging.getLogger("cidserve.licensing")


@dataclass(frozen=True, slots=True)
class Caller:
    """A proven caller: an EVM address (checksummed or lower-case hex)."""

    address: str


class RequestView(Protocol):
    """The parts of an HTTP request an authenticator may read."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Authenticator(Protocol):
    async def authenticate(self, request: RequestView) -> Caller | None: ...


class LicenseBackend(Protocol):
    name: str
    enabled: bool

    async def has_valid_license(self, caller: Caller, token_id: int) -> bool: ...

    async def check_token_metadata(self, token_id: int, metadata_cid: str) -> None:
        """Raise :class:`services.errors.TokenMismatch` / ``TokenNotFound`` when the token does
        not name this CID."""
        ...

    async def health(self) -> dict[str, object]: ...


class Anonymous:
    """Identifies nobody (embedded defaults: no signatures are checked)."""

    async def authenticate(self, request: RequestView) -> Caller | None:
        return None


class NoLicensing:
    """No chain configured: licenses are not checked and every model is open."""

    name = "none"
    enabled = False

    async def has_valid_license(self, caller: Caller, token_id: int) -> bool:
        return True

    async def check_token_metadata(self, token_id: int, metadata_cid: str) -> None:
        return None

    async def health(self) -> dict[str, object]:
        return {
            "status": "disabled",
            "message": "no chain configured: every model is open, tokenIds are recorded only",
        }


class LicenseGate:
    """The execution policy, applied before any work is done for a request."""

    def __init__(self, backend: LicenseBackend) -> None:
        self.backend = backend
        self._warned_open = False

    async def authorize(self, caller: Caller | None, token_id: int | None) -> None:
        if token_id is None:
            return
        if not self.backend.enabled:
            if not self._warned_open:
                log.warning("licensing disabled: serving token-bound models without a check")
                self._warned_open = True
            return
        if caller is None:
            raise SignatureRequired(
                "this model is licensed: sign the request (see docs/LICENSING.md)"
            )
        if not await self.backend.has_valid_license(caller, token_id):
            raise NotLicensed("You need an active license to use this model")
