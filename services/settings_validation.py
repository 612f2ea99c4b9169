"""Checks of single setting values, used by :mod:`services.settings` (field types there).

Each check takes the parsed value (and, where it compares fields, pydantic's
``ValidationInfo``), returns the value to keep, and raises ``ValueError`` with a message that
never repeats the value (``load_settings`` adds the variable's name, and the value unless secret).
This module knows no ``Settings`` class: ``services.settings`` imports it, never the reverse.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from pydantic import SecretStr, ValidationInfo

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HTTP_PROBLEM = "must be an http:// or https:// URL with a host"


def is_evm_address(value: str) -> bool:
    """``0x`` + 40 hex digits; mixed case must be a valid EIP-55 checksum."""
    if not _ADDRESS.fullmatch(value):
        return False
    body = value[2:]
    if body == body.lower() or body == body.upper():
        return True
    from eth_utils import is_checksum_address

    return bool(is_checksum_address(value))


def _split(v: str, schemes: tuple[str, ...], problem: str) -> SplitResult:
    parts = urlsplit(v)
    if parts.scheme not in schemes:
        raise ValueError(problem)
    return parts


def _check_port(parts: SplitResult) -> None:
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError("has an invalid port") from None


def blank_to_none(v: str | None) -> str | None:
    """An unset or blank value means "not configured"; others lose surrounding space."""
    return None if v is None or not v.strip() else v.strip()


def ipfs_url(v: str | None) -> str | None:
    """An http(s) URL with a host and a valid port, no query or fragment; no trailing /."""
    if (v := blank_to_none(v)) is None:
        return None
    parts = _split(v, ("http", "https"), _HTTP_PROBLEM)
    if not parts.hostname:
        raise ValueError(_HTTP_PROBLEM)
    _check_port(parts)
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or a fragment")
    return v.rstrip("/")


def rpc_url(v: str | None) -> str | None:
    """An http(s) URL with a host."""
    if (v := blank_to_none(v)) is None:
        return None
    if not _split(v, ("http", "https"), _HTTP_PROBLEM).hostname:
        raise ValueError(_HTTP_PROBLEM)
    return v


def redis_url(v: str | None) -> str | None:
    """A redis://, rediss:// (with a host) or unix:// URL."""
    if (v := blank_to_none(v)) is None:
        return None
    parts = _split(v, ("redis", "rediss", "unix"), "must be a redis://, rediss:// or unix:// URL")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("needs a host, e.g. redis://127.0.0.1:6379/0")
    _check_port(parts)
    return v


def find_timeout(v: float, info: ValidationInfo) -> float:
    """The IPFS find timeout is below the read timeout (validated before it)."""
    read = info.data.get("ipfs_timeout_s")
    if read is not None and v >= read:
        raise ValueError(f"must be less than CIDSERVE_IPFS_TIMEOUT_S ({read:g})")
    return v


def license_contract(v: str | None, info: ValidationInfo) -> str | None:
    """An EVM address, and only with an RPC URL (``chain_rpc_url`` is validated before it)."""
    if (v := blank_to_none(v)) is None:
        return None
    if not is_evm_address(v):
        raise ValueError("must be an address: 0x followed by 40 hex digits (EIP-55 case)")
    if info.data.get("chain_rpc_url") is None:
        raise ValueError("needs CIDSERVE_CHAIN_RPC_URL (or AVALANCHE_RPC_URL) as well")
    return v


def private_key(v: SecretStr | None) -> SecretStr | None:
    """32 bytes as hex, kept as ``0x`` + lower-case hex."""
    if v is None or not v.get_secret_value().strip():
        return None
    raw = v.get_secret_value().strip()
    body = raw[2:] if raw[:2] in ("0x", "0X") else raw
    if len(body) != 64 or any(c not in "0123456789abcdefABCDEF" for c in body):
        raise ValueError("must be 32 bytes as hex (64 hex digits, optional 0x)")
    return SecretStr("0x" + body.lower())


def keystore_file(v: Path | None) -> Path | None:
    """An existing file."""
    if v is not None and not v.is_file():
        raise ValueError("no such keystore file")
    return v


def lower(v: object) -> object:
    """Before validation: names of levels and formats in any case."""
    return v.lower() if isinstance(v, str) else v
