"""Errors the client raises: one class per HTTP status the server uses, each carrying the
status, the server's title and message, the reply's other fields and ``Retry-After``.

``/api`` routes reply ``{"success": false, "error": title, "message": text, ...}``; ``/v2``
routes reply ``{"error": text}``. Both become the same exception types::

    try:
        client.predict(model_id, "cat.jpg")
    except NotFoundError as exc:      # 404: unknown model
        print(exc.status, exc.message)
    except RateLimitedError as exc:   # 429
        time.sleep(exc.retry_after or 1)
"""

from __future__ import annotations

from typing import Any


class CidserveError(Exception):
    """Anything the client could not do. ``status`` is None when no HTTP reply came."""

    status: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TransportError(CidserveError):
    """The server could not be reached, or the connection failed or timed out."""


class InvalidResponseError(CidserveError):
    """The server replied, but not with what this route replies (too large, not JSON, or
    not the expected fields)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class APIError(CidserveError):
    """The server answered with an error status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        title: str | None = None,
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.body = body or {}
        self.retry_after = retry_after

    def __str__(self) -> str:
        head = f"{self.status} {self.title}" if self.title else str(self.status)
        return f"{head}: {self.message}"


class BadRequestError(APIError):
    """400: the message names the field or value."""


class AuthenticationError(APIError):
    """401: operator credentials (``admin_token``) or a valid request signature needed."""


class PermissionDeniedError(APIError):
    """403: the signer holds no valid license, or the token is not trusted."""


class NotFoundError(APIError):
    """404: unknown model, version, token or content."""


class ConflictError(APIError):
    """409: the token names other content, or the content has another token."""


class PayloadTooLargeError(APIError):
    """413: body, input or content over a bound the server names."""


class UnsupportedMediaTypeError(APIError):
    """415: the content type or encoding is not accepted on that route."""


class UnprocessableError(APIError):
    """422: the request (or the model's metadata) does not validate."""


class RateLimitedError(APIError):
    """429: over the per-caller rate limit; ``retry_after`` says how long to wait."""


class ServerError(APIError):
    """5xx."""


class BadGatewayError(ServerError):
    """502: the content store returned content that failed verification, or an error."""


class ServiceUnavailableError(ServerError):
    """503: overloaded, draining, or a dependency is down; ``retry_after`` when transient."""


class GatewayTimeoutError(ServerError):
    """504: the deadline passed (inference or content store)."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: UnprocessableError,
    429: RateLimitedError,
    502: BadGatewayError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
}


def error_class(status: int) -> type[APIError]:
    """The exception type for an error status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else APIError


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP date: not sent by cidserve
    return seconds if seconds >= 0 else None


def api_error(status: int, doc: object, text: str, retry_after: str | None) -> APIError:
    """The exception for an error reply: ``doc`` is its parsed JSON (or None), ``text`` its
    start as text (used when the reply is not JSON)."""
    title: str | None = None
    body: dict[str, Any] = {}
    if isinstance(doc, dict):
        body = doc
        if isinstance(doc.get("message"), str):
            message = doc["message"]
            title = doc["error"] if isinstance(doc.get("error"), str) else None
        elif isinstance(doc.get("error"), str):
            message = doc["error"]
        elif isinstance(doc.get("detail"), str):
            message = doc["detail"]
        else:
            message = text or f"HTTP {status}"
    else:
        message = text or f"HTTP {status}"
    return error_class(status)(
        status, message, title=title, body=body, retry_after=_retry_after(retry_after)
    )
