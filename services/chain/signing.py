"""Signed requests: the canonical string a caller signs, and the signing primitive.

A caller proves its address by signing each licensed request with its EVM key (EIP-191
``personal_sign``, as wallets do) over this canonical string, lines joined by ``\\n`` with no
trailing newline::

    cidserve-request-v2
    <METHOD>                  upper case, e.g. POST
    <target>                  the request target as sent: path plus ``?query`` when there is one
    <host>                    the Host header (authority) as sent, lower case, e.g. 127.0.0.1:8000
    <content-type>            the Content-Type header, lower case, trimmed; empty when absent
    <sha256 hex of the body>  lower-case hex; of the empty string when there is no body
    <timestamp>               unix seconds, decimal
    <nonce>                   8-64 characters of [A-Za-z0-9_-], never reused
    <signer>                  the signer's address, lower case 0x + 40 hex
    <name>:<value>            one line per covered header, sorted by name (see below)

The covered headers are those that change how the body is read: ``inference-header-content-
length``, ``x-tensor-dtype``, ``x-tensor-input`` and ``x-tensor-shape`` always (with an empty
value when the request lacks one), plus every other ``x-tensor-*`` header the request carries.
Names are lower case, values trimmed of surrounding whitespace.

The result goes in five headers:

==========================  ===============================================================
``X-Cidserve-Version``      ``cidserve-request-v2``: the first line of the canonical string
``X-Cidserve-Address``      the signer's address (0x + 40 hex)
``X-Cidserve-Timestamp``    the timestamp of the canonical string
``X-Cidserve-Nonce``        the nonce of the canonical string
``X-Cidserve-Signature``    the 65-byte signature as 0x + 130 hex (r, s, v)
==========================  ===============================================================

:func:`sign_request` builds those headers from the parts of a request;
:mod:`services.chain.client` signs a ``(method, url, headers, body)`` as an HTTP client sends
it. The server side is :class:`services.chain.auth.SignatureAuthenticator`.

``cidserve-request-v1`` (method, target, body hash, timestamp and nonce only, no version header)
is refused: it left the host, ``Content-Type`` and the tensor headers open to change in flight.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Iterable, Mapping

from eth_account import Account
from eth_account.messages import encode_defunct

VERSION = "cidserve-request-v2"
OLD_VERSIONS = ("cidserve-request-v1",)
HEADER_VERSION = "X-Cidserve-Version"
HEADER_ADDRESS = "X-Cidserve-Address"
HEADER_TIMESTAMP = "X-Cidserve-Timestamp"
HEADER_NONCE = "X-Cidserve-Nonce"
HEADER_SIGNATURE = "X-Cidserve-Signature"
# The four a signature is made of; the version header says which canonical string they sign.
HEADERS = (HEADER_ADDRESS, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)

# Headers that change how the body is read: always in the canonical string, empty when absent.
COVERED_ALWAYS = (
    "inference-header-content-length",
    "x-tensor-dtype",
    "x-tensor-input",
    "x-tensor-shape",
)
COVERED_PREFIX = "x-tensor-"
MAX_COVERED_HEADERS = 16

NONCE_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")
ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")
SIGNATURE_RE = re.compile(r"0x[0-9a-fA-F]{130}")
TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
MAX_PATH_CHARS = 8192


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def normalize_host(host: str) -> str:
    """The host line: the ``Host`` header as sent, lower case, trimmed."""
    return host.strip().lower()


def normalize_content_type(content_type: str | None) -> str:
    """The content-type line: lower case, trimmed; empty for a request without one."""
    return (content_type or "").strip().lower()


def covered_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The covered headers of ``headers`` (any case), as sorted ``(name, value)`` pairs.

    Every name of :data:`COVERED_ALWAYS` is there, with ``""`` when ``headers`` lacks it.
    Raises ``ValueError`` for more than :data:`MAX_COVERED_HEADERS` of them.
    """
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
    """The exact text that is signed (see the module docstring).

    ``host`` and ``content_type`` are normalised here; ``covered`` is the output of
    :func:`covered_headers`. Raises ``ValueError`` when a part holds a line break.
    """
    lines = [
        VERSION,
        method.upper(),
        target,
        normalize_host(host),
        normalize_content_type(content_type),
        body_hash,
        str(timestamp),
        nonce,
        signer.lower(),
    ]
    lines.extend(f"{name}:{value}" for name, value in covered)
    text = "\n".join(lines)
    # One scan: each part is one line, so the text holds exactly len(lines) - 1 line feeds.
    if "\r" in text or text.count("\n") != len(lines) - 1:
        raise ValueError(
            "a signed part holds a line break (method, target, Host, Content-Type, a covered "
            "header, nonce or signer)"
        )
    return text


def new_nonce() -> str:
    return secrets.token_hex(16)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def sign_request(
    private_key: str | bytes,
    method: str,
    target: str,
    body: bytes = b"",
    *,
    host: str = "",
    headers: Mapping[str, str] | None = None,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers that prove the holder of ``private_key`` sent this request.

    ``target`` is the request target exactly as it goes on the wire, query included
    (``/api/models/x/predict?top_k=3``); ``host`` the ``Host`` header the request is sent with
    (``127.0.0.1:8000``; default: a ``Host`` in ``headers``, else empty, which no request that
    crossed HTTP matches); ``headers`` the other headers it is sent with, of which ``Content-Type``
    and the covered ones are signed. Sign each request anew: a nonce is accepted once.
    :func:`services.chain.client.sign_url` works these out from a URL.
    """
    account = Account.from_key(private_key)
    sent = headers or {}
    ts = int(time.time()) if timestamp is None else int(timestamp)
    nonce = nonce or new_nonce()
    if not NONCE_RE.fullmatch(nonce):
        raise ValueError("nonce: 8-64 characters of [A-Za-z0-9_-]")
    text = canonical_string(
        method,
        target,
        host=host or _header(sent, "host") or "",
        content_type=_header(sent, "content-type"),
        covered=covered_headers(sent),
        body_hash=body_sha256(body),
        timestamp=ts,
        nonce=nonce,
        signer=account.address,
    )
    signed = account.sign_message(encode_defunct(text=text))
    return {
        HEADER_VERSION: VERSION,
        HEADER_ADDRESS: account.address,
        HEADER_TIMESTAMP: str(ts),
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: "0x" + bytes(signed.signature).hex(),
    }


def recover_signer(text: str, signature: bytes) -> str:
    """The checksummed address whose key made ``signature`` over ``text`` (EIP-191).

    Raises ``ValueError`` for a signature that does not recover to any key.
    """
    try:
        return str(Account.recover_message(encode_defunct(text=text), signature=signature))
    except Exception as exc:  # eth_keys raises BadSignature / ValidationError
        raise ValueError(f"signature does not recover: {type(exc).__name__}") from None
