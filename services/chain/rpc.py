"""A small JSON-RPC client for the license hot path: ``eth_call`` over one reused connection.

web3's contract objects cost a few milliseconds per call in Python overhead; the service only
needs ``eth_call`` and a few reads, so this client posts the JSON-RPC request itself over a
kept-alive ``httpx.AsyncClient`` (about 1 ms per call against a local node, see
docs/LICENSING.md). Every call has bounded connect/read timeouts and a bounded response size.

Errors:

* :class:`RpcUnavailable`: the node cannot be reached or did not answer in time, or answered
  with something that is not JSON-RPC (HTTP 5xx, a proxy error page). The caller decides what
  that means (fail closed: 503).
* :class:`RpcError`: the node answered with a JSON-RPC error, e.g. a revert (``data`` holds
  the revert data).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from services.observability.tracing import span

MAX_RESPONSE_BYTES = 4 << 20


class RpcUnavailable(Exception):
    """The RPC endpoint cannot be reached, timed out, or did not speak JSON-RPC."""


class RpcError(Exception):
    """A JSON-RPC error object (``code``, ``message``, ``data``)."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        super().__init__(f"JSON-RPC error {code}: {message}")
        self.code = code
        self.message = message
        self.data = data

    @property
    def revert_data(self) -> bytes | None:
        """The revert data of a reverted call, when the node returned it."""
        data = self.data
        if isinstance(data, dict):  # some nodes nest it: {"data": "0x..."}
            data = data.get("data")
        if isinstance(data, str) and data.startswith("0x"):
            try:
                return bytes.fromhex(data[2:])
            except ValueError:
                return None
        return None

    @property
    def is_revert(self) -> bool:
        return self.code == 3 or "revert" in self.message.lower()


def redact_url(url: str) -> str:
    """``scheme://host:port`` only: paths and query strings of RPC URLs often hold API keys."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


class JsonRpcClient:
    """JSON-RPC over HTTP with one connection pool, created in the loop that first uses it."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 2.0,
        connect_timeout_s: float | None = None,
        max_connections: int = 16,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.url = url
        self.display_url = redact_url(url)
        self.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s or min(timeout_s, 1.0))
        self.limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
        )
        self.max_response_bytes = max_response_bytes
        self._ids = itertools.count(1)
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop or self._client.is_closed:
            # A pool belongs to one event loop; a new loop (a CLI call, a test) gets its own.
            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                limits=self.limits,
                headers={"content-type": "application/json", "accept": "application/json"},
                follow_redirects=False,
            )
            self._loop = loop
        return self._client

    async def request(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC call; returns ``result`` (a ``chain.rpc`` span when tracing)."""
        with span("chain.rpc", rpc_method=method):
            return await self._request(method, params)

    async def _request(self, method: str, params: list[Any]) -> Any:
        payload = orjson.dumps(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        )
        for attempt in (0, 1):
            try:
                raw = await self._post(payload)
                break
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                # A kept-alive connection the node closed (restart, idle timeout): retry once
                # on a fresh connection. Calls made here are reads, so a retry is harmless.
                if attempt:
                    raise RpcUnavailable(
                        f"{self.display_url}: {type(exc).__name__}: {exc}"
                    ) from None
            except httpx.TimeoutException as exc:
                raise RpcUnavailable(
                    f"{self.display_url}: no answer within {self.timeout.read} s "
                    f"({type(exc).__name__})"
                ) from None
            except httpx.HTTPError as exc:
                raise RpcUnavailable(
                    f"{self.display_url}: {type(exc).__name__}: {exc or 'unreachable'}"
                ) from None
        return self._result(raw, method)

    async def _post(self, payload: bytes) -> bytes:
        async with self._http().stream("POST", self.url, content=payload) as resp:
            if resp.status_code >= 500 or resp.status_code in (429, 408):
                raise RpcUnavailable(f"{self.display_url}: HTTP {resp.status_code}")
            declared = resp.headers.get("content-length")
            if declared is not None and declared.isdigit():
                if int(declared) > self.max_response_bytes:
                    raise RpcUnavailable(f"{self.display_url}: response over the bound")
                # HTTP/1.1 framing stops the read at the declared length.
                return await resp.aread()
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise RpcUnavailable(f"{self.display_url}: response over the bound")
                chunks.append(chunk)
            if resp.status_code >= 400 and not chunks:
                raise RpcUnavailable(f"{self.display_url}: HTTP {resp.status_code}")
            return b"".join(chunks)

    def _result(self, raw: bytes, method: str) -> Any:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise RpcUnavailable(f"{self.display_url}: {method}: not a JSON answer") from None
        if not isinstance(doc, dict):
            raise RpcUnavailable(f"{self.display_url}: {method}: not a JSON-RPC answer")
        err = doc.get("error")
        if err is not None:
            if not isinstance(err, dict):
                raise RpcUnavailable(f"{self.display_url}: {method}: malformed error")
            raise RpcError(int(err.get("code", 0)), str(err.get("message", "")), err.get("data"))
        if "result" not in doc:
            raise RpcUnavailable(f"{self.display_url}: {method}: answer without a result")
        return doc["result"]

    async def eth_call(self, to: str, data: bytes, block: str = "latest") -> bytes:
        """The return data of a read-only call of ``data`` on contract ``to``."""
        result = await self.request("eth_call", [{"to": to, "data": "0x" + data.hex()}, block])
        return _hex_bytes(result, "eth_call")

    async def chain_id(self) -> int:
        return _hex_int(await self.request("eth_chainId", []), "eth_chainId")

    async def block_number(self) -> int:
        return _hex_int(await self.request("eth_blockNumber", []), "eth_blockNumber")

    async def latest_block_timestamp(self) -> int:
        block = await self.request("eth_getBlockByNumber", ["latest", False])
        if not isinstance(block, dict):
            raise RpcUnavailable(f"{self.display_url}: eth_getBlockByNumber: no block")
        return _hex_int(block.get("timestamp"), "block timestamp")

    async def get_code(self, address: str) -> bytes:
        return _hex_bytes(await self.request("eth_getCode", [address, "latest"]), "eth_getCode")

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            with contextlib.suppress(RuntimeError):  # its loop is gone
                await client.aclose()


def _hex_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise RpcUnavailable(f"{what}: expected hex data, got {str(value)[:40]!r}")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise RpcUnavailable(f"{what}: malformed hex data") from None


def _hex_int(value: object, what: str) -> int:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise RpcUnavailable(f"{what}: expected a hex quantity, got {str(value)[:40]!r}")
    try:
        return int(value, 16)
    except ValueError:
        raise RpcUnavailable(f"{what}: malformed hex quantity") from None
