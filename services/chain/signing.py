"""Signed requests: the canonical string a caller signs, and the client helper.

A caller proves its address by signing each licensed request with its EVM key (EIP-191
``personal_sign``, as wallets do) over this canonical string, six lines joined by ``\\n``
with no trailing newline::

    cidserve-request-v1
    <METHOD>                  upper case, e.g. POST
    <path>                    the request target as sent: path plus ``?query`` when there is one
    <sha256 hex of the body>  lower-case hex; of the empty string when there is no body
    <timestamp>               unix seconds, decimal
    <nonce>                   8-64 characters of [A-Za-z0-9_-], never reused

and sends the result in four headers:

==========================  ===============================================================
``X-Cidserve-Address``      the signer's address (0x + 40 hex)
``X-Cidserve-Timestamp``    the timestamp of the canonical string
``X-Cidserve-Nonce``        the nonce of the canonical string
``X-Cidserve-Signature``    the 65-byte signature as 0x + 130 hex (r, s, v)
==========================  ===============================================================

:func:`sign_request` builds those headers; the server side is
:class:`services.chain.auth.SignatureAuthenticator`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from eth_account import Account
from eth_account.messages import encode_defunct

VERSION = "cidserve-request-v1"
HEADER_ADDRESS = "X-Cidserve-Address"
HEADER_TIMESTAMP = "X-Cidserve-Timestamp"
HEADER_NONCE = "X-Cidserve-Nonce"
HEADER_SIGNATURE = "X-Cidserve-Signature"
HEADERS = (HEADER_ADDRESS, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)

NONCE_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")
ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")
SIGNATURE_RE = re.compile(r"0x[0-9a-fA-F]{130}")
TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
MAX_PATH_CHARS = 8192


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def canonical_string(method: str, path: str, body_hash: str, timestamp: int, nonce: str) -> str:
    """The exact text that is signed (see the module docstring)."""
    if "\n" in path or "\r" in path:
        raise ValueError("the path must not contain line breaks")
    return "\n".join((VERSION, method.upper(), path, body_hash, str(timestamp), nonce))


def new_nonce() -> str:
    return secrets.token_hex(16)


def sign_request(
    private_key: str | bytes,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers that prove the holder of ``private_key`` sent this request.

    ``path`` is the request target exactly as it goes on the wire, query included
    (``/api/models/x/predict?top_k=3``). Sign each request anew: a nonce is accepted once.
    """
    account = Account.from_key(private_key)
    ts = int(time.time()) if timestamp is None else int(timestamp)
    nonce = nonce or new_nonce()
    if not NONCE_RE.fullmatch(nonce):
        raise ValueError("nonce: 8-64 characters of [A-Za-z0-9_-]")
    text = canonical_string(method, path, body_sha256(body), ts, nonce)
    signed = account.sign_message(encode_defunct(text=text))
    return {
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
