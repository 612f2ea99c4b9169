"""The asynchronous client: :class:`Client`'s methods as coroutines.

::

    async with AsyncClient("http://127.0.0.1:8000") as client:
        result = await client.predict(model_id, "cat.jpg", top_k=3)

Files are read and large bodies signed in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import os
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


class AsyncClient:
    """A cidserve server at ``base_url``. Use it as a context manager, or call :meth:`close`.

    ``timeout``: seconds (or an ``httpx.Timeout``) for each request; a load of a large model
    can take a while. ``max_response_bytes`` bounds any reply read. ``transport`` and
    ``headers`` go to the underlying ``httpx.AsyncClient``.
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
        transport: httpx.AsyncBaseTransport | None = None,
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
        self._http = httpx.AsyncClient(transport=transport, **options)
        self.max_response_bytes = max_response_bytes

    @property
    def base_url(self) -> str:
        return str(self._http.base_url).rstrip("/")

    @property
    def address(self) -> str | None:
        """The signer's address, when requests are signed."""
        return None if self._auth is None else str(self._auth.address)

    def __repr__(self) -> str:
        return f"AsyncClient({self.base_url!r}, signer={self.address})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, call: Call[R]) -> R:
        request = self._http.build_request(
            call.method,
            call.path,
            params=call.params or None,
            headers=call.headers,
            content=call.content,
        )
        try:
            response = await self._http.send(request, stream=True)
            try:
                body = BoundedBody(response, self.max_response_bytes)
                async for chunk in response.aiter_bytes():
                    body.add(chunk)
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            raise TransportError(
                f"{call.method} {request.url}: {type(exc).__name__}: {exc}"
            ) from exc
        return calls.parse_reply(call, response.status_code, response.headers, body.bytes())

    # --- the API ----------------------------------------------------------------------------

    async def health(self) -> Health:
        """``GET /health``: version, models in memory, store and licensing."""
        return await self._send(calls.health())

    async def models(self) -> ModelList:
        """``GET /api/models``: the models in memory and every model ever loaded."""
        return await self._send(calls.models())

    async def load(
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
        return await self._send(calls.load(metadata_cid, token_id, warmup, model))

    async def unload(self, model_id: str) -> UnloadResult:
        """``DELETE /api/models/{model_id}`` (the operator's)."""
        return await self._send(calls.unload(model_id))

    async def predict(
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
        if isinstance(image, str | os.PathLike):
            data = await asyncio.to_thread(calls.read_image, image)
        else:
            data = calls.read_image(image)
        call = calls.predict(
            model_id,
            data,
            top_k=top_k,
            threshold=threshold,
            timeout_ms=timeout_ms,
            content_type=content_type,
        )
        return await self._send(call)

    async def execute(
        self,
        model_id: str,
        input_data: InputData | Mapping[str, Any],
        options: ExecuteOptions | Mapping[str, Any] | None = None,
    ) -> PredictResult:
        """``POST /api/inference/execute``: ``input_data`` is ``{"format", "content"}`` (see
        :class:`InputData`'s constructors), ``options`` ``{"top_k", "threshold", "timeout"}``."""
        return await self._send(calls.execute(model_id, input_data, options))

    async def infer(
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
        return await self._send(call)
