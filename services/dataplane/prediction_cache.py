"""The prediction cache: a reply computed once is served again without decode or inference.

The key is a SHA-256 over the model's metadata CID (which pins the model bytes, the labels
and the pre/postprocessing spec), the exact input that reaches preprocessing (the image
bytes; a tensor's dtype, shape, input name and bytes; every tensor of a ``tensors`` input, by
input name, the same way, strings by their UTF-8 bytes; the features as canonical JSON), every
field of :class:`postprocessing.Options` (``top_k``, ``threshold``: the options that change
the answer; the timeout does not) and the cidserve version. The value is the reply without
timings: ``{"predictions", "details"}`` as JSON (orjson; never pickle).

Entries live in a bucket of the shared :class:`~services.kv.KeyValueStore` with their own TTL
and bounds (entry count, bytes), so every replica on the same Redis serves the others'
answers, and a full cache drops only its own entries. A store that does not answer makes
the request a *bypass*: it is served uncached, never failed.

The caller (:class:`services.dataplane.plane.DataPlane`) looks up only after the license
gate, so a cached answer never reaches a caller who may not run the model, and skips models
whose metadata says ``cache_predictions: false``.

A cached reply only ever comes from a run of the same model on the same input: the key is
derived from the metadata CID and the input bytes, and the data plane stores, under the key of
the request it is serving, the reply it computed from that request's own outputs (a miss is
never filled from anything else). What "that request's own outputs" means is up to the
runner: rows of different requests share one ``session.run`` only for models the operator
trusts (``CIDSERVE_BATCH_TRUSTED_CIDS``, :mod:`services.runtime.batching`), so an untrusted
model that moves rows between requests cannot get another caller's result stored under a key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from postprocessing import Options
from preprocessing import FeaturesPayload, ImagePayload, Payload, TensorPayload, TensorsPayload
from services import __version__
from services.encoding import dumps
from services.observability.metrics import Metrics
from services.state.kv import KeyValueStore, KVUnavailable

log = logging.getLogger("cidserve.prediction_cache")

CacheStatus = Literal["hit", "miss", "bypass"]
BUCKET = "pred"
_SCHEME = b"cidserve.prediction/v1"
# Inputs larger than this are hashed in a worker thread (hashlib releases the GIL), so a
# large upload does not hold the event loop.
_HASH_INLINE_BYTES = 512 << 10


@dataclass(frozen=True, slots=True)
class Lookup:
    """The outcome of one lookup: ``hit`` carries the cached reply."""

    status: CacheStatus
    key: str | None = None
    predictions: list[dict[str, Any]] | None = None
    details: dict[str, Any] | None = None


def _input_parts(payload: Payload) -> tuple[list[bytes | memoryview], int] | None:
    """The bytes that identify a payload, and their size; None for an unknown payload kind."""
    if isinstance(payload, ImagePayload):
        return [b"image", payload.data], len(payload.data)
    if isinstance(payload, TensorPayload):
        array = np.ascontiguousarray(payload.array)
        meta = orjson.dumps([payload.input, array.dtype.str, list(array.shape)])
        return [b"tensor", meta, memoryview(array.reshape(-1).view(np.uint8))], array.nbytes
    if isinstance(payload, TensorsPayload):
        parts: list[bytes | memoryview] = [b"tensors"]
        size = 0
        for name in sorted(payload.tensors):
            array = np.ascontiguousarray(payload.tensors[name])
            parts.append(orjson.dumps([name, array.dtype.str, list(array.shape)]))
            parts.extend(_tensor_bytes(array))
            size += array.nbytes
        return parts, size
    if isinstance(payload, FeaturesPayload):
        return [b"features", orjson.dumps(payload.values, option=orjson.OPT_SORT_KEYS)], 0
    return None


def _tensor_bytes(array: np.ndarray) -> list[bytes | memoryview]:
    """A tensor's values: its bytes, or each string's UTF-8 bytes (length-prefixed by
    :func:`_digest`)."""
    if array.dtype.kind == "O":
        return [str(v).encode() for v in array.reshape(-1)]
    return [memoryview(array.reshape(-1).view(np.uint8))]


def _digest(metadata_cid: str, parts: list[bytes | memoryview], options: Options) -> str:
    h = hashlib.sha256()
    # Every field of the options (a shallow asdict: they are plain values).
    fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    opts = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    for part in (_SCHEME, __version__.encode(), metadata_cid.encode(), opts, *parts):
        h.update(memoryview(part).nbytes.to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def encode_reply(predictions: list[dict[str, Any]], details: dict[str, Any]) -> bytes:
    """The cached value: the reply without timings."""
    return dumps({"predictions": predictions, "details": details})


class PredictionCache:
    """Lookups and stores of replies; see the module docstring."""

    def __init__(
        self,
        store: KeyValueStore,
        *,
        ttl_s: float,
        metrics: Metrics | None = None,
        enabled: bool = True,
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.metrics = metrics
        self.enabled = enabled

    async def key_for(self, metadata_cid: str, payload: Payload, options: Options) -> str | None:
        """The cache key of this input for this model and these options (None: uncacheable)."""
        found = _input_parts(payload)
        if found is None:
            return None
        parts, size = found
        if size > _HASH_INLINE_BYTES:
            return await asyncio.to_thread(_digest, metadata_cid, parts, options)
        return _digest(metadata_cid, parts, options)

    async def lookup(self, metadata_cid: str, payload: Payload, options: Options) -> Lookup:
        """``hit`` with the cached reply, ``miss`` (store the answer under ``key``), or
        ``bypass`` (disabled, uncacheable input, or the store did not answer)."""
        if not self.enabled:
            return Lookup("bypass")
        key = await self.key_for(metadata_cid, payload, options)
        if key is None:
            return Lookup("bypass")
        try:
            raw = await self.store.get(key)
        except KVUnavailable:
            self._count("errors")
            return Lookup("bypass")
        if raw is not None:
            try:
                value = orjson.loads(raw)
                predictions, details = value["predictions"], value["details"]
                if not isinstance(predictions, list) or not isinstance(details, dict):
                    raise ValueError("unexpected shape")
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.warning("dropping unreadable prediction-cache entry %s: %s", key, exc)
                self._count("errors")
            else:
                self._count("hits")
                return Lookup("hit", key, predictions, details)
        self._count("misses")
        return Lookup("miss", key)

    async def store_reply(
        self, key: str, predictions: list[dict[str, Any]], details: dict[str, Any]
    ) -> bool:
        """Keep a computed reply; False when the store did not take it (down, too large)."""
        try:
            await self.store.set(key, encode_reply(predictions, details), self.ttl_s)
        except KVUnavailable:
            self._count("errors")
            return False
        return True

    def _count(self, what: Literal["hits", "misses", "errors"]) -> None:
        if self.metrics is not None:
            getattr(self.metrics, f"prediction_cache_{what}").inc()
