"""What :class:`~cidserve_client.Client` and :class:`~cidserve_client.AsyncClient` share:
the connection options, and reading a reply body up to a bound."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from cidserve_client.errors import InvalidResponseError
from cidserve_client.signing import SignedRequestAuth

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RESPONSE_BYTES = 64 << 20


def http_options(
    base_url: str,
    *,
    private_key: str | bytes | None,
    admin_token: str | None,
    timeout: float | httpx.Timeout,
    headers: Mapping[str, str] | None,
    user_agent: str,
) -> dict[str, Any]:
    """Keyword arguments of ``httpx.Client`` / ``httpx.AsyncClient``."""
    url = httpx.URL(base_url.strip())
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an http:// or https:// URL, not {base_url[:200]!r}")
    sent = {"User-Agent": user_agent, "Accept": "application/json", **(headers or {})}
    if admin_token is not None:
        if not admin_token.strip() or any(c in admin_token for c in "\r\n"):
            raise ValueError("admin_token must be a non-empty single line")
        sent["Authorization"] = f"Bearer {admin_token.strip()}"
    return {
        "base_url": str(url).rstrip("/"),
        "timeout": timeout,
        "headers": sent,
        "auth": SignedRequestAuth(private_key) if private_key is not None else None,
        # A redirect would resend the operator token and the signed body elsewhere.
        "follow_redirects": False,
    }


class BoundedBody:
    """Collects a reply body, refusing one larger than ``limit`` bytes (before and while
    reading it)."""

    def __init__(self, response: httpx.Response, limit: int) -> None:
        self.limit = limit
        self.status = response.status_code
        self.parts: list[bytes] = []
        self.size = 0
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            self._too_large()

    def _too_large(self) -> None:
        raise InvalidResponseError(
            f"HTTP {self.status}: the reply is larger than max_response_bytes={self.limit}",
            self.status,
        )

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            self._too_large()
        self.parts.append(chunk)

    def bytes(self) -> bytes:
        return b"".join(self.parts)
