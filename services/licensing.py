"""Who may run a model: the caller's identity and the license check.

Two plug-in points, each a small protocol:

* :class:`Authenticator` turns a request into a :class:`Caller` (or None when the request
  carries no identity). The embedded default identifies nobody.
* :class:`LicenseBackend` answers ``hasValidLicense(caller, tokenId)`` and checks, at load
  time, that a token names the metadata CID being loaded. The embedded default
  (:class:`NoLicensing`) has no chain: every model is open.

:class:`LicenseGate` applies the policy: a model whose content has no token is open; a model
with one needs an authenticated caller that holds a valid license. Loads: the operator may load
anything; a licensee may load the content of a token it holds a license for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from services.errors import NotLicensed, SignatureRequired
from services.observability.tracing import span

log = logging.getLogger("cidserve.licensing")


@dataclass(frozen=True, slots=True)
class Caller:
    """A proven caller: an EVM address (checksummed or lower-case hex)."""

    address: str


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asks for a control-plane operation: the operator (bearer token, or an open control
    plane on loopback), else a proven caller, else nobody."""

    operator: bool = False
    caller: Caller | None = None


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

    async def token_of_content(self, metadata_cid: str) -> int | None:
        """The token the chain records for this content (``metadata_cid``: canonical CIDv1
        base32, ``registry.unixfs.canonical_cid``), None when it has none. Raises
        :class:`services.errors.UntrustedToken` when the token's minter is not trusted and
        :class:`services.errors.DependencyUnavailable` when the chain does not answer."""
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

    async def token_of_content(self, metadata_cid: str) -> int | None:
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
        """May ``caller`` run a model licensed under ``token_id`` (None: open)? Raises if not."""
        with span("license.check", token_id=token_id, backend=self.backend.name):
            await self._authorize(caller, token_id)

    async def _authorize(self, caller: Caller | None, token_id: int | None) -> None:
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

    async def authorize_load(self, requester: Requester, token_id: int | None) -> None:
        """May ``requester`` load content licensed under ``token_id`` (None: open content)?

        The operator may load anything. Anyone else must sign the request and hold a valid
        license for the content's token (the token the chain records, not one the request
        names); content without a token is loaded only by the operator.
        """
        with span("license.check_load", token_id=token_id, operator=requester.operator):
            await self._authorize_load(requester, token_id)

    async def _authorize_load(self, requester: Requester, token_id: int | None) -> None:
        if requester.operator:
            return
        if requester.caller is None:
            raise SignatureRequired(
                "loading a model needs the operator's bearer token (CIDSERVE_ADMIN_TOKEN) or "
                "a licensee's signed request (see docs/LICENSING.md)"
            )
        if token_id is None:
            raise NotLicensed("this content has no license token: only the operator may load it")
        if self.backend.enabled and not await self.backend.has_valid_license(
            requester.caller, token_id
        ):
            raise NotLicensed(f"You need an active license for token {token_id} to load this model")
