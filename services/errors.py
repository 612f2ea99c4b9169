"""Domain errors of the service: what went wrong, in the service's own terms.

Nothing here knows HTTP. The HTTP layer maps each type to a status, a title and headers in
one table (:mod:`services.http.errors`). ``extra`` holds fields a reply may show (``model_id``,
``reason``, ...); ``retry_after_s`` says when a transient failure is worth retrying.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of the domain errors: a message for the caller and extra reply fields."""

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class ModelNotFound(ServiceError):
    """No model of that id or name is known here (never loaded, or unloaded)."""

    def __init__(self, model_id: str, message: str | None = None) -> None:
        super().__init__(
            message or f"model {model_id!r} is not loaded",
            model_id=model_id,
            suggestion="Use /api/models/load endpoint first",
        )


class VersionNotFound(ServiceError):
    """The model exists, but not in the version asked for."""


class InvalidRequest(ServiceError):
    """A request the domain cannot act on as given (the caller must change it)."""


class SignatureRequired(ServiceError):
    """The model is licensed and the request carries no caller identity."""


class SignatureRejected(ServiceError):
    """The request's signature is malformed, stale, forged or replayed (``extra["reason"]``)."""


class NotLicensed(ServiceError):
    """The caller is identified but holds no valid license for the model's token."""


class TokenNotFound(ServiceError):
    """The token does not exist on the license contract."""


class TokenMismatch(ServiceError):
    """The token names another metadata CID than the one being loaded."""


class TokenConflict(ServiceError):
    """The request names a token, but the chain records another token for this content."""


class UntrustedToken(ServiceError):
    """The content's token was minted by an address the operator does not trust."""


class OperatorRequired(ServiceError):
    """A control-plane operation without the operator's credentials (``CIDSERVE_ADMIN_TOKEN``)."""


class RateLimited(ServiceError):
    """The caller sent more requests than its allowance; retry after ``retry_after_s``."""

    def __init__(self, message: str, *, retry_after_s: int = 1, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.retry_after_s = retry_after_s


class Overloaded(ServiceError):
    """The service (or one model's queue) is full; retry after ``retry_after_s``."""

    def __init__(self, message: str, *, retry_after_s: int = 1, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.retry_after_s = retry_after_s


class DependencyUnavailable(ServiceError):
    """A dependency (chain, replay store, ...) does not answer; try again later."""

    def __init__(self, message: str, *, retry_after_s: int = 5, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.retry_after_s = retry_after_s


class InferenceTimeout(ServiceError):
    """The request's deadline passed before the model answered (the run was terminated)."""


class InputOutOfRange(ServiceError):
    """The model computes NaN or infinity for this input: outside what it handles (422)."""


class ModelOutputError(ServiceError):
    """The model's outputs do not fit what its metadata promised (a fault of the model)."""
