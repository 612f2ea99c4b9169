"""Signed requests (``cidserve-request-v2``): an ``httpx.Auth`` that signs every request.

A licensed model runs only for a caller who signs each request with an EVM key holding a
license. The signature is EIP-191 (``personal_sign``) over this text, lines joined by ``\\n``::

    cidserve-request-v2
    <METHOD>                  upper case
    <target>                  path plus ?query, exactly as sent (percent-encoded)
    <host>                    the Host header as sent, lower case
    <content-type>            the Content-Type header, lower case, trimmed; empty when absent
    <sha256 hex of the body>
    <timestamp>               unix seconds
    <nonce>                   8-64 of [A-Za-z0-9_-], fresh for each request
    <signer>                  the signer's address, lower case
    <name>:<value>            covered headers, sorted: inference-header-content-length,
                              x-tensor-dtype, x-tensor-input, x-tensor-shape (empty when
                              absent) and any other x-tensor-* header

and goes in the headers ``X-Cidserve-Version``, ``-Address``, ``-Timestamp``, ``-Nonce`` and
``-Signature``. :class:`SignedRequestAuth` computes it from the request httpx is about to send
(after httpx set ``Host`` and ``Content-Type``), so whatever the client sends is what is signed.

Needs the ``signing`` extra: ``pip install 'cidserve-client[signing]'``.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping
from typing import Any

import httpx

VERSION = "cidserve-request-v2"
HEADER_VERSION = "X-Cidserve-Version"
HEADER_ADDRESS = "X-Cidserve-Address"
HEADER_TIMESTAMP = "X-Cidserve-Timestamp"
HEADER_NONCE = "X-Cidserve-Nonce"
HEADER_SIGNATURE = "X-Cidserve-Signature"

COVERED_ALWAYS = (
    "inference-header-content-length",
    "x-tensor-dtype",
    "x-tensor-input",
    "x-tensor-shape",
)
COVERED_PREFIX = "x-tensor-"
MAX_COVERED_HEADERS = 16
# Bodies at least this large are hashed and signed in a worker thread by the async client.
THREAD_SIGN_BYTES = 1 << 20


def covered_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The covered headers of ``headers`` as sorted ``(name, value)`` pairs."""
    found = dict.fromkeys(COVERED_ALWAYS, "")
    for name, value in headers.items():
        low = name.lower()
        if low.startswith(COVERED_PREFIX) or low in found:
            found[low] = value.strip()
    if len(found) > MAX_COVERED_HEADERS:
        raise ValueError(f"more than {MAX_COVERED_HEADERS} X-Tensor-* headers")
    return sorted(found.items())


def canonical_string(
    method: str,
    target: str,
    *,
    host: str,
    content_type: str | None,
    covered: Iterable[tuple[str, str]],
    body_hash: str,
    timestamp: int,
    nonce: str,
    signer: str,
) -> str:
    """The text that is signed. Raises ``ValueError`` when a part holds a line break."""
    lines = [
        VERSION,
        method.upper(),
        target,
        host.strip().lower(),
        (content_type or "").strip().lower(),
        body_hash,
        str(timestamp),
        nonce,
        signer.lower(),
    ]
    lines.extend(f"{name}:{value}" for name, value in covered)
    text = "\n".join(lines)
    if "\r" in text or text.count("\n") != len(lines) - 1:
        raise ValueError("a signed part (target, Host, Content-Type, a header) holds a line break")
    return text


def _account(private_key: str | bytes) -> Any:
    try:
        from eth_account import Account
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "signed requests need the signing extra: pip install 'cidserve-client[signing]'"
        ) from None
    try:
        return Account.from_key(private_key)
    except (ValueError, TypeError) as exc:
        # Never echo the key.
        raise ValueError(f"private_key is not a secp256k1 key ({type(exc).__name__})") from None


class SignedRequestAuth(httpx.Auth):
    """Signs each request with ``private_key`` (0x-hex string or 32 bytes), a fresh nonce and
    the current time. ``clock`` (unix seconds) is for clocks other than the system's."""

    requires_request_body = True

    def __init__(
        self, private_key: str | bytes, *, clock: Callable[[], float] | None = None
    ) -> None:
        self._account = _account(private_key)
        self._clock = clock or time.time

    @property
    def address(self) -> str:
        """The signer's (checksummed) address."""
        return str(self._account.address)

    def __repr__(self) -> str:
        return f"SignedRequestAuth(address={self.address})"

    def headers_for(self, request: httpx.Request) -> dict[str, str]:
        """The ``X-Cidserve-*`` headers for ``request`` as it will be sent."""
        from eth_account.messages import encode_defunct

        timestamp = int(self._clock())
        nonce = secrets.token_hex(16)
        text = canonical_string(
            request.method,
            request.url.raw_path.decode("ascii"),
            host=request.headers.get("host", request.url.netloc.decode("ascii")),
            content_type=request.headers.get("content-type"),
            covered=covered_headers(request.headers),
            body_hash=hashlib.sha256(request.content).hexdigest(),
            timestamp=timestamp,
            nonce=nonce,
            signer=self.address,
        )
        signed = self._account.sign_message(encode_defunct(text=text))
        return {
            HEADER_VERSION: VERSION,
            HEADER_ADDRESS: self.address,
            HEADER_TIMESTAMP: str(timestamp),
            HEADER_NONCE: nonce,
            HEADER_SIGNATURE: "0x" + bytes(signed.signature).hex(),
        }

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(self.headers_for(request))
        yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        if len(request.content) >= THREAD_SIGN_BYTES:
            headers = await asyncio.to_thread(self.headers_for, request)
        else:
            headers = self.headers_for(request)
        request.headers.update(headers)
        yield request
