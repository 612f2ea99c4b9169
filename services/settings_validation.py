"""Checks of single setting values, used by :mod:`services.settings` (field types there).

Each check takes the parsed value (and, where it compares fields, pydantic's
``ValidationInfo``), returns the value to keep, and raises ``ValueError`` with a message that
never repeats the value (``load_settings`` adds the variable's name, and the value unless secret).
This module knows no ``Settings`` class: ``services.settings`` imports it, never the reverse.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from pydantic import SecretStr, ValidationInfo

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HTTP_PROBLEM = "must be an http:// or https:// URL with a host"
_ALLOW_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(:[0-9]+)?")


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


def _entries(v: object, what: str, parse: Callable[[int, str], str | None]) -> tuple[str, ...]:
    """A comma-separated setting (or a list) of ``what``: each entry passed through
    ``parse(index, text)`` (None: skip it; raises naming the entry), without duplicates;
    blank entries are skipped, so an unset or blank value is the empty list."""
    if v is None:
        return ()
    if isinstance(v, str):
        items: list[object] = list(v.split(","))
    elif isinstance(v, list | tuple | set | frozenset):
        items = list(v)
    else:
        raise ValueError(f"must be a comma-separated list of {what}")
    out: list[str] = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, str):
            raise ValueError(f"entry {i} is not one of {what}")
        if not item.strip():
            continue
        entry = parse(i, item.strip())
        if entry is not None and entry not in out:
            out.append(entry)
    return tuple(out)


def cid_list(v: object) -> tuple[str, ...]:
    """Comma-separated CIDs (or a list of them), each canonical (CIDv1 base32)."""
    from registry.unixfs import canonical_cid

    def parse(i: int, text: str) -> str:
        try:
            return canonical_cid(text)
        except ValueError:
            raise ValueError(f"entry {i} is not a CID") from None

    return _entries(v, "CIDs", parse)


MAX_TOKEN_FILE_BYTES = 4096
_TOKEN = re.compile(r"[\x21-\x7e]+")
_TOKEN_PROBLEM = "must be printable ASCII without spaces (it is sent as 'Bearer <token>')"


def admin_token(v: SecretStr | None) -> SecretStr | None:
    """Blank: no token; else printable ASCII without spaces, surrounding space stripped."""
    if v is None or not (raw := v.get_secret_value().strip()):
        return None
    if not _TOKEN.fullmatch(raw):
        raise ValueError(_TOKEN_PROBLEM)
    return SecretStr(raw)


def read_token_file(path: Path) -> str:
    """The token in ``path``, surrounding whitespace stripped; ``ValueError`` (never
    repeating the content) when the file is unreadable, too large, empty or not a token."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read the file ({type(exc).__name__}: {exc.strerror})") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise ValueError(f"the file is over {MAX_TOKEN_FILE_BYTES} bytes; it must hold the token")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(f"the token in the file {_TOKEN_PROBLEM}") from None
    if not token:
        raise ValueError("the file is empty; it must hold the token")
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"the token in the file {_TOKEN_PROBLEM}")
    return token


def admin_token_file(v: Path | None, info: ValidationInfo) -> Path | None:
    """A readable file holding a token, and not together with ``admin_token`` (validated
    before it)."""
    if v is None or not str(v).strip():
        return None
    if info.data.get("admin_token") is not None:
        raise ValueError("set CIDSERVE_ADMIN_TOKEN or CIDSERVE_ADMIN_TOKEN_FILE, not both")
    read_token_file(v)
    return v


def origin_list(v: object) -> tuple[str, ...]:
    """Comma-separated browser origins (``scheme://host[:port]``, or ``*``); an unset or blank
    value is the empty list (CORS off)."""

    def parse(i: int, text: str) -> str | None:
        text = text.rstrip("/")
        if text and text != "*":
            parts = urlsplit(text)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"entry {i} must be * or an http(s)://host[:port] origin")
            if parts.path or parts.query or parts.fragment or parts.username:
                raise ValueError(f"entry {i} must be an origin: scheme://host[:port], no path")
            _check_port(parts)
        return text or None

    return _entries(v, "origins", parse)


def url_allow_list(v: object) -> tuple[str, ...]:
    """Comma-separated ``host[:port]`` entries (an IPv6 address in brackets), kept lower-case
    as ``host`` or ``host:port``; unset or blank: nothing is allowed past the address check."""

    def parse(i: int, text: str) -> str:
        text = text.lower()
        parts = urlsplit(f"//{text}")
        if (
            not parts.hostname
            or parts.username is not None
            or parts.path
            or parts.query
            or parts.fragment
            or text.endswith(":")
            or not _ALLOW_HOST.fullmatch(parts.netloc)
        ):
            raise ValueError(f"entry {i} must be host[:port] (an IPv6 address in brackets)")
        _check_port(parts)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return host if parts.port is None else f"{host}:{parts.port}"

    return _entries(v, "host[:port] entries", parse)


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


def address_list(v: object) -> tuple[str, ...]:
    """Comma-separated EVM addresses (or a list of them), kept lower-case."""

    def parse(i: int, text: str) -> str:
        if not is_evm_address(text):
            raise ValueError(
                f"entry {i} is not an address: 0x followed by 40 hex digits (EIP-55 case)"
            )
        return text.lower()

    return _entries(v, "addresses", parse)


def trusted_minters(v: frozenset[str], info: ValidationInfo) -> frozenset[str]:
    """Only with a license contract (``license_contract`` is validated before it)."""
    if v and info.data.get("license_contract") is None:
        raise ValueError(
            "needs CIDSERVE_CHAIN_RPC_URL and CIDSERVE_LICENSE_CONTRACT: minters are checked on "
            "that contract"
        )
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
