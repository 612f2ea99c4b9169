"""API errors: one exception type per HTTP status, rendered as JSON by the handlers in app.py.

Every error body is ``{"success": false, "error": <short title>, "message": <what went wrong>}``
plus optional fields (``suggestion``, ``field``, ``cid``).
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Base class: an error with an HTTP status and a JSON body."""

    status_code = 500
    title = "Internal error"

    def __init__(
        self,
        message: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.title = title or self.title
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"success": False, "error": self.title, "message": self.message, **self.extra}


class BadRequest(ApiError):
    status_code = 400
    title = "Bad request"


class Unauthorized(ApiError):
    status_code = 401
    title = "Unauthorized"


class Forbidden(ApiError):
    status_code = 403
    title = "Forbidden"


class NotFound(ApiError):
    status_code = 404
    title = "Not found"


class ModelNotFound(NotFound):
    title = "Model not found"

    def __init__(self, model_id: str) -> None:
        super().__init__(
            f"model {model_id!r} is not loaded",
            model_id=model_id,
            suggestion="Use /api/models/load endpoint first",
        )


class PayloadTooLarge(ApiError):
    status_code = 413
    title = "Payload too large"


class UnsupportedMediaType(ApiError):
    status_code = 415
    title = "Unsupported media type"


class Unprocessable(ApiError):
    status_code = 422
    title = "Invalid request"


class ServiceUnavailable(ApiError):
    status_code = 503
    title = "Service unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 5, **extra: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)}, **extra)


class GatewayTimeout(ApiError):
    status_code = 504
    title = "Timeout"
