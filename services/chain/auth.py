"""Who sent a request: EIP-191 signed requests (see :mod:`services.chain.signing`).

:class:`SignatureAuthenticator` implements :class:`services.licensing.Authenticator`:

* no ``X-Cidserve-*`` header at all: anonymous (``None``); open models still run, licensed
  ones answer 401 from the license gate;
* some headers missing, malformed values, a signature that does not recover to the claimed
  address (the host, ``Content-Type``, a tensor header or the body changed on the way): 401;
* no ``X-Cidserve-Version: cidserve-request-v2`` (a ``cidserve-request-v1`` signature, which
  left those open): 401, reason ``version``, naming the version to sign with;
* a timestamp further than the allowed skew from this server's clock: 401;
* a nonce this address used before (within the skew window): 401 (replay);
* the nonce store cannot answer: 503 (fail closed: a replay could not be ruled out).

Checks run cheapest first; the nonce is recorded only for a valid signature, so forged
requests cannot fill the nonce store or burn another caller's nonces.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from services.chain.signing import (
    ADDRESS_RE,
    HEADER_ADDRESS,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    HEADER_VERSION,
    HEADERS,
    MAX_PATH_CHARS,
    NONCE_RE,
    OLD_VERSIONS,
    SIGNATURE_RE,
    TIMESTAMP_RE,
    VERSION,
    body_sha256,
    canonical_string,
    covered_headers,
    recover_signer,
)
from services.errors import DependencyUnavailable, SignatureRejected
from services.licensing import Caller, RequestView
from services.observability.metrics import Metrics
from services.state.kv import KeyValueStore, KVUnavailable

log = logging.getLogger("cidserve.auth")

# Bodies larger than this are hashed in a worker thread, not on the event loop.
_THREAD_HASH_BYTES = 1 << 20


class SignatureAuthenticator:
    """Proves callers by their signature; see the module docstring for the outcomes."""

    def __init__(
        self,
        kv: KeyValueStore,
        *,
        skew_s: int = 300,
        metrics: Metrics | None = None,
        key_prefix: str = "nonce:",
        clock: Callable[[], float] | None = None,
        store_timeout_s: float = 0.25,
    ) -> None:
        self.kv = kv
        self.skew_s = skew_s
        # The replay store fails closed, so its call gets a looser bound than the cache's
        # (which bypasses): a busy event loop or Redis must not turn licensees away.
        self.store_timeout_s = store_timeout_s
        self.metrics = metrics
        self.key_prefix = key_prefix
        self._now = time.time if clock is None else clock

    def _fail(self, reason: str, message: str) -> SignatureRejected:
        if self.metrics is not None:
            self.metrics.signature_checks.labels(reason).inc()
        return SignatureRejected(message, reason=reason)

    def _check_version(self, version: str | None) -> None:
        if version is not None and version.strip() == VERSION:
            return
        if version is None or version.strip() in OLD_VERSIONS:
            raise self._fail(
                "version",
                f"{OLD_VERSIONS[-1]} signatures are no longer accepted (they leave the host, "
                f"Content-Type and tensor headers unsigned): sign with {VERSION} and send "
                f"{HEADER_VERSION}: {VERSION} (see docs/LICENSING.md)",
            )
        raise self._fail(
            "version",
            f"{HEADER_VERSION} {version.strip()[:40]!r} is not supported: sign with {VERSION}",
        )

    async def authenticate(self, request: RequestView) -> Caller | None:
        headers = request.headers
        values = {name: headers.get(name.lower()) for name in HEADERS}
        version = headers.get(HEADER_VERSION.lower())
        present = [n for n, v in values.items() if v is not None]
        if not present and version is None:
            return None
        missing = [n for n, v in values.items() if v is None]
        if missing:
            raise self._fail("missing", "signed request without " + ", ".join(missing))
        self._check_version(version)
        address = values[HEADER_ADDRESS].strip()  # type: ignore[union-attr]
        stamp = values[HEADER_TIMESTAMP].strip()  # type: ignore[union-attr]
        nonce = values[HEADER_NONCE].strip()  # type: ignore[union-attr]
        signature = values[HEADER_SIGNATURE].strip()  # type: ignore[union-attr]
        if not ADDRESS_RE.fullmatch(address):
            raise self._fail("malformed", f"{HEADER_ADDRESS}: expected 0x + 40 hex digits")
        if not TIMESTAMP_RE.fullmatch(stamp):
            raise self._fail("malformed", f"{HEADER_TIMESTAMP}: expected unix seconds")
        if not NONCE_RE.fullmatch(nonce):
            raise self._fail("malformed", f"{HEADER_NONCE}: expected 8-64 of [A-Za-z0-9_-]")
        if not SIGNATURE_RE.fullmatch(signature):
            raise self._fail("malformed", f"{HEADER_SIGNATURE}: expected 0x + 130 hex digits")
        if len(request.path) > MAX_PATH_CHARS:
            raise self._fail("malformed", "request target too long to sign")

        ts = int(stamp)
        now = self._now()
        if abs(now - ts) > self.skew_s:
            raise self._fail(
                "stale",
                f"{HEADER_TIMESTAMP} is {int(now - ts)} s away from the server clock; "
                f"the limit is {self.skew_s} s: sign the request again",
            )

        body = request.body
        if len(body) > _THREAD_HASH_BYTES:
            digest = await asyncio.to_thread(body_sha256, body)
        else:
            digest = body_sha256(body)
        try:
            text = canonical_string(
                request.method,
                request.path,
                host=headers.get("host", ""),
                content_type=headers.get("content-type"),
                covered=covered_headers(headers),
                body_hash=digest,
                timestamp=ts,
                nonce=nonce,
                signer=address,
            )
        except ValueError as exc:
            raise self._fail("malformed", f"cannot be signed: {exc}") from None
        try:
            signer = recover_signer(text, bytes.fromhex(signature[2:]))
        except ValueError:
            raise self._fail("forged", "the signature does not verify") from None
        if signer.lower() != address.lower():
            raise self._fail(
                "forged",
                f"the signature does not match this request as received: {VERSION} covers the "
                "method, target, Host, Content-Type, X-Tensor-* and "
                "Inference-Header-Content-Length headers, body, timestamp, nonce and address",
            )

        key = f"{self.key_prefix}{signer.lower()}:{nonce}"
        try:
            # Remembered for longer than any timestamp stays acceptable (both directions).
            fresh = await self.kv.set_nx(
                key, b"1", 2 * self.skew_s + 5, timeout_s=self.store_timeout_s
            )
        except KVUnavailable as exc:
            log.error("nonce store unavailable, refusing signed requests: %s", exc)
            raise DependencyUnavailable(
                "the replay-protection store is unavailable; try again"
            ) from None
        if not fresh:
            raise self._fail("replay", f"{HEADER_NONCE} was used before: sign each request anew")
        if self.metrics is not None:
            self.metrics.signature_checks.labels("ok").inc()
        return Caller(address=signer)
