"""The synchronous client.

::

    from cidserve_client import Client

    with Client("http://127.0.0.1:8000") as client:
        model = client.load("bafkrei...")                    # LoadResult
        result = client.predict(model.model_id, "cat.jpg", top_k=3)
        print(result.top.label, result.top.confidence)

``private_key`` signs every request (licensed models; needs the ``signing`` extra),
``admin_token`` sends the operator's bearer (load, unload on a server that has one).
Errors are raised as the types of :mod:`cidserve_client.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from cidserve_client import calls
from cidserve_client.calls import Call, ImageSource, R
from cidserve_client.config import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    BoundedBody,
    http_options,
)
from cidserve_client.errors import TransportError
from cidserve_client.models import (
    ExecuteOptions,
    Health,
    InferInput,
    InferResult,
    InputData,
    LoadResult,
    ModelList,
    PredictResult,
    RequestedOutput,
    UnloadResult,
)
from cidserve_client.version import user_agent


class Client:
    """A cidserve server at ``base_url``. Use it as a context manager, or call :meth:`close`.

    ``timeout``: seconds (or an ``httpx.Timeout``) for each request; a load of a large model
    can take a while. ``max_response_bytes`` bounds any reply read. ``transport`` and
    ``headers`` go to the underlying ``httpx.Client``.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        private_key: str | bytes | None = None,
        admin_token: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        *,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        options = http_options(
            base_url,
            private_key=private_key,
            admin_token=admin_token,
            timeout=timeout,
            headers=headers,
            user_agent=user_agent(),
        )
        self._auth = options["auth"]
        self._http = httpx.Client(transport=transport, **options)
        self.max_response_bytes = max_response_bytes

    @property
    def base_url(self) -> str:
        return str(self._http.base_url).rstrip("/")

    @property
    def address(self) -> str | None:
        """The signer's address, when requests are signed."""
        return None if self._auth is None else str(self._auth.address)

    def __repr__(self) -> str:
        return f"Client({self.base_url!r}, signer={self.address})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: Call[R]) -> R:
        request = self._http.build_request(
            call.method,
            call.path,
            params=call.params or None,
            headers=call.headers,
            content=call.content,
        )
        try:
            response = self._http.send(request, stream=True)
            try:
                body = BoundedBody(response, self.max_response_bytes)
                for chunk in response.iter_bytes():
                    body.add(chunk)
            finally:
                response.close()
        except httpx.TransportError as exc:
            raise TransportError(
                f"{call.method} {request.url}: {type(exc).__name__}: {exc}"
            ) from exc
        return calls.parse_reply(call, response.status_code, response.headers, body.bytes())

    # --- the API ----------------------------------------------------------------------------

    def health(self) -> Health:
        """``GET /health``: version, models in memory, store and licensing."""
        return self._send(calls.health())

    def models(self) -> ModelList:
        """``GET /api/models``: the models in memory and every model ever loaded."""
        return self._send(calls.models())

    def load(
        self,
        metadata_cid: str | None = None,
        token_id: int | None = None,
        warmup: bool = True,
        *,
        model: str | None = None,
    ) -> LoadResult:
        """Load the model whose ``metadata.json`` has ``metadata_cid``, or the one a reference
        of the operator's catalogue names (``model="NAME@latest"``, ``NAME@VERSION``,
        ``NAME@LABEL``); ``token_id`` for a licensed model (the operator, or a signer holding a
        license, may load it)."""
        return self._send(calls.load(metadata_cid, token_id, warmup, model))

    def unload(self, model_id: str) -> UnloadResult:
        """``DELETE /api/models/{model_id}`` (the operator's)."""
        return self._send(calls.unload(model_id))

    def predict(
        self,
        model_id: str,
        image: ImageSource,
        top_k: int = 5,
        *,
        threshold: float | None = None,
        timeout_ms: int | None = None,
        content_type: str | None = None,
    ) -> PredictResult:
        """Run an image (a path, or its bytes) through the model: the raw image is the body of
        ``POST /api/models/{model_id}/predict``; ``content_type`` defaults to the format its
        first bytes show."""
        data = calls.read_image(image)
        call = calls.predict(
            model_id,
            data,
            top_k=top_k,
            threshold=threshold,
            timeout_ms=timeout_ms,
            content_type=content_type,
        )
        return self._send(call)

    def execute(
        self,
        model_id: str,
        input_data: InputData | Mapping[str, Any],
        options: ExecuteOptions | Mapping[str, Any] | None = None,
    ) -> PredictResult:
        """``POST /api/inference/execute``: ``input_data`` is ``{"format", "content"}`` (see
        :class:`InputData`'s constructors), ``options`` ``{"top_k", "threshold", "timeout"}``."""
        return self._send(calls.execute(model_id, input_data, options))

    def infer(
        self,
        model_name: str,
        inputs: Sequence[InferInput | Mapping[str, Any]],
        *,
        outputs: Sequence[RequestedOutput | Mapping[str, Any] | str] | None = None,
        request_id: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        version: str | None = None,
    ) -> InferResult:
        """``POST /v2/models/{model_name}/infer`` (the Open Inference Protocol, JSON tensors).
        ``model_name``: the model id, or the published name the operator loaded."""
        call = calls.infer(
            model_name,
            inputs,
            outputs=outputs,
            request_id=request_id,
            parameters=parameters,
            version=version,
        )
        return self._send(call)
