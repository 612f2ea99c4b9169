"""cidserve-client: a light Python client of the cidserve model server.

::

    from cidserve_client import Client

    with Client("http://127.0.0.1:8000", admin_token=None, private_key=None) as client:
        model_id = client.load("bafkrei...").model_id
        print(client.predict(model_id, "cat.jpg", top_k=3).top)

:class:`AsyncClient` is the same with coroutines. Replies are pydantic models
(:mod:`cidserve_client.models`); errors are :mod:`cidserve_client.errors` types.
"""

from __future__ import annotations

from cidserve_client.async_client import AsyncClient
from cidserve_client.client import Client
from cidserve_client.errors import (
    APIError,
    AuthenticationError,
    BadGatewayError,
    BadRequestError,
    CidserveError,
    ConflictError,
    GatewayTimeoutError,
    InvalidResponseError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    ServiceUnavailableError,
    TransportError,
    UnprocessableError,
    UnsupportedMediaTypeError,
)
from cidserve_client.models import (
    ExecuteOptions,
    Health,
    InferInput,
    InferOutput,
    InferResult,
    InputData,
    LoadResult,
    ModelDescription,
    ModelList,
    Prediction,
    PredictResult,
    RequestedOutput,
    UnloadResult,
)
from cidserve_client.signing import SignedRequestAuth
from cidserve_client.version import client_version

__version__ = client_version()

__all__ = [
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "BadGatewayError",
    "BadRequestError",
    "CidserveError",
    "Client",
    "ConflictError",
    "ExecuteOptions",
    "GatewayTimeoutError",
    "Health",
    "InferInput",
    "InferOutput",
    "InferResult",
    "InputData",
    "InvalidResponseError",
    "LoadResult",
    "ModelDescription",
    "ModelList",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PredictResult",
    "Prediction",
    "RateLimitedError",
    "RequestedOutput",
    "ServerError",
    "ServiceUnavailableError",
    "SignedRequestAuth",
    "TransportError",
    "UnloadResult",
    "UnprocessableError",
    "UnsupportedMediaTypeError",
    "__version__",
]
