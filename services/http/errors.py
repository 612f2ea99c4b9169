"""Errors over HTTP: one table from exception to status, title and headers; two renderers.

Domain code raises domain exceptions (:mod:`services.errors`, the content stores', the
metadata's, the plug-ins', the runtime's); the HTTP layer's own checks raise
:class:`HttpError`. :func:`describe` is the one place that turns any of them into an
:class:`ErrorReply`; ``/api`` renders it as ``{success: false, error, message, ...}`` and
``/v2`` as the Open Inference Protocol's ``{"error": message}``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from postprocessing import PostprocessingError
from preprocessing import InputTooLarge, PreprocessingError
from registry.metadata import MetadataError
from registry.redact import redact_urls
from registry.store import (
    ContentIntegrityError,
    ContentNotFound,
    ContentStoreError,
    ContentTimeout,
    ContentTooLarge,
    ContentUnavailable,
    InvalidCid,
)
from services.errors import (
    DependencyUnavailable,
    InferenceTimeout,
    InputOutOfRange,
    InvalidRequest,
    ModelNotFound,
    ModelOutputError,
    NotLicensed,
    OperatorRequired,
    Overloaded,
    RateLimited,
    ServiceError,
    SignatureRejected,
    SignatureRequired,
    TokenConflict,
    TokenMismatch,
    TokenNotFound,
    UntrustedToken,
    VersionNotFound,
)
from services.http.responses import JSONResponse
from services.repository.loader import ModelInvalid
from services.runtime.errors import RunTimeout
from services.state.kv import KVUnavailable

log = logging.getLogger("cidserve.http")


class HttpError(Exception):
    """An error found by the HTTP layer itself (a malformed body, an unsupported media type):
    it carries its own status."""

    status_code = 400
    title = "Bad request"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class BadRequest(HttpError):
    pass


class PayloadTooLarge(HttpError):
    status_code = 413
    title = "Payload too large"


class UnsupportedMediaType(HttpError):
    status_code = 415
    title = "Unsupported media type"


# Exception type -> (status, title). The first match wins: subclasses before their bases.
TABLE: tuple[tuple[type[BaseException], int, str], ...] = (
    (ModelNotFound, 404, "Model not found"),
    (VersionNotFound, 404, "Not found"),
    (InvalidRequest, 400, "Bad request"),
    (SignatureRequired, 401, "Signature required"),
    (SignatureRejected, 401, "Invalid signature"),
    (NotLicensed, 403, "No valid license"),
    (TokenNotFound, 404, "Token not found"),
    (TokenMismatch, 409, "Token names another model"),
    (TokenConflict, 409, "Content has another token"),
    (UntrustedToken, 403, "Untrusted token"),
    (OperatorRequired, 401, "Operator credentials required"),
    (RateLimited, 429, "Too many requests"),
    (Overloaded, 503, "Overloaded"),
    (DependencyUnavailable, 503, "Service unavailable"),
    (InferenceTimeout, 504, "Timeout"),
    (RunTimeout, 504, "Timeout"),
    (InputOutOfRange, 422, "Input out of range"),
    (ModelOutputError, 500, "Model output error"),
    (InvalidCid, 400, "Invalid CID"),
    (ContentNotFound, 404, "Content not found"),
    (ContentTooLarge, 413, "Content too large"),
    (ContentIntegrityError, 502, "Content verification failed"),
    (ContentUnavailable, 503, "Content store unavailable"),
    (ContentTimeout, 504, "Content store timeout"),
    (ContentStoreError, 502, "Content store error"),
    (KVUnavailable, 503, "Shared state unavailable"),
    (MetadataError, 422, "Invalid metadata"),
    (ModelInvalid, 422, "Invalid model"),
    (InputTooLarge, 413, "Input too large"),
    (PreprocessingError, 400, "Invalid input"),
    (PostprocessingError, 500, "Model output error"),
)
_HTTP_TITLES = {404: "Not found", 405: "Method not allowed", 413: "Payload too large"}


@dataclass(slots=True)
class ErrorReply:
    """What an error becomes over HTTP."""

    status: int
    title: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def describe(exc: BaseException) -> ErrorReply:
    """The status, title, message, extra body fields and headers for any exception."""
    if isinstance(exc, HttpError):
        return ErrorReply(exc.status_code, exc.title, exc.message, dict(exc.extra))
    if isinstance(exc, RequestValidationError):
        return _validation(exc)
    if isinstance(exc, StarletteHTTPException):
        title = _HTTP_TITLES.get(exc.status_code, "HTTP error")
        return ErrorReply(exc.status_code, title, str(exc.detail), {}, dict(exc.headers or {}))
    for exc_type, status, title in TABLE:
        if isinstance(exc, exc_type):
            reply = ErrorReply(status, title, str(exc))
            break
    else:
        log.exception("unhandled error", exc_info=exc)
        return ErrorReply(500, "Internal error", type(exc).__name__)
    if isinstance(exc, ServiceError):
        reply.message = exc.message
        reply.extra.update(exc.extra)
    if isinstance(exc, OperatorRequired):
        reply.headers["WWW-Authenticate"] = 'Bearer realm="cidserve-control-plane"'
    if isinstance(exc, ContentStoreError) and exc.cid:
        reply.extra["cid"] = exc.cid
    if isinstance(exc, MetadataError) and exc.field:
        reply.extra["field"] = exc.field
    retry_after = getattr(exc, "retry_after_s", None)
    if isinstance(exc, KVUnavailable):
        retry_after = 1
    if retry_after is not None and reply.status in (429, 503):
        reply.headers["Retry-After"] = str(retry_after)
    reply.message = redact_urls(reply.message)  # no API keys of RPC/IPFS URLs in replies
    if reply.status >= 500:
        log.error("%s: %s", reply.title, exc)
    return reply


def _validation(exc: RequestValidationError) -> ErrorReply:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    details = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in errors[:20]]
    return ErrorReply(422, "Invalid request", message, {"details": details})


def api_error(reply: ErrorReply) -> JSONResponse:
    """``/api`` and the rest: ``{success: false, error: <title>, message, ...extra}``."""
    body = {"success": False, "error": reply.title, "message": reply.message, **reply.extra}
    return JSONResponse(body, status_code=reply.status, headers=reply.headers)


def v2_error(reply: ErrorReply) -> JSONResponse:
    """``/v2``: the Open Inference Protocol's ``{"error": message}``; a request that does
    not validate is a 400 there."""
    status = 400 if reply.status == 422 and reply.title == "Invalid request" else reply.status
    message = reply.message
    if reply.title == "Internal error":
        message = f"internal error ({reply.message})"
    elif reply.title == "Invalid request" and status == 400:
        message = message.split(" (and ")[0]
    return JSONResponse({"error": message}, status_code=status, headers=reply.headers)


def known_errors() -> tuple[type[Exception], ...]:
    """The exception types the error table (and the HTTP layer's own errors) describe."""
    known = {HttpError, RequestValidationError, StarletteHTTPException}
    known.update(exc_type for exc_type, _, _ in TABLE)
    return tuple(known)


def error_response(path: str, exc: Exception) -> JSONResponse:
    """The reply to ``exc`` (:func:`describe`), rendered for the API of ``path``."""
    reply = describe(exc)
    if path.startswith("/v2"):
        return v2_error(reply)
    return api_error(reply)


def install_error_handlers(app: FastAPI) -> None:
    """Every exception, whatever raised it, goes through :func:`describe` and the renderer of
    the API it happened in."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request.url.path, exc)

    for exc_type in known_errors():
        app.add_exception_handler(exc_type, handle)
    # Anything else: a 500 (Starlette's outermost middleware renders it, then re-raises it
    # for the server's log).
    app.add_exception_handler(Exception, handle)
