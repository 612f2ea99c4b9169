"""The LRU session cache: loaded models by ``model_id``, bounded by count and optionally bytes.

The bytes are what each model really took in memory (its session's measured growth, given to
:meth:`SessionCache.put` by the loader), not its file size: a 183-byte model may hold a
gigabyte, so only measured bytes keep the process inside ``max_bytes``.

Eviction drops the cache's reference to the model's ONNX Runtime session; requests already
running keep theirs until they finish, after which the session is freed (no copies are kept
anywhere else, so memory returns to the allocator).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from services.repository.model import LoadedModel

if TYPE_CHECKING:
    from services.observability.metrics import Metrics


class SessionCache:
    """LRU over :class:`LoadedModel`; ``on_evict`` is told about every model pushed out.

    With ``metrics``, hits, misses and evictions are also counted in
    ``cidserve_session_cache_{hits,misses,evictions}_total`` and the number of models in
    ``cidserve_models_loaded``.
    """

    def __init__(
        self,
        max_models: int,
        max_bytes: int | None = None,
        on_evict: Callable[[LoadedModel], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if max_models < 1:
            raise ValueError("max_models must be at least 1")
        self.max_models = max_models
        self.max_bytes = max_bytes
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._memory: dict[str, int] = {}  # model_id -> measured bytes
        self._on_evict = on_evict
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._metrics = metrics

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._models

    @property
    def total_bytes(self) -> int:
        """The measured memory of the models held (file size for a model not measured)."""
        return sum(self.memory_bytes(model_id) for model_id in self._models)

    def memory_bytes(self, model_id: str) -> int:
        """What the model was measured to take in memory (0 when absent)."""
        model = self._models.get(model_id)
        if model is None:
            return 0
        return self._memory.get(model_id, model.size_bytes)

    def get(self, model_id: str) -> LoadedModel | None:
        """The model, marked most recently used; None when absent."""
        model = self._models.get(model_id)
        if model is None:
            self.misses += 1
            if self._metrics is not None:
                self._metrics.session_cache_misses.inc()
            return None
        self._models.move_to_end(model_id)
        self.hits += 1
        if self._metrics is not None:
            self._metrics.session_cache_hits.inc()
        return model

    def peek(self, model_id: str) -> LoadedModel | None:
        """The model without touching its recency or the counters."""
        return self._models.get(model_id)

    def put(self, model: LoadedModel, memory_bytes: int | None = None) -> list[LoadedModel]:
        """Insert (most recently used) and evict least recently used models over the bounds.

        ``memory_bytes`` is what the model was measured to take (default: its file size)."""
        self._models[model.model_id] = model
        self._memory[model.model_id] = (
            memory_bytes if memory_bytes is not None else model.size_bytes
        )
        self._models.move_to_end(model.model_id)
        evicted: list[LoadedModel] = []
        while len(self._models) > 1 and (
            len(self._models) > self.max_models
            or (self.max_bytes is not None and self.total_bytes > self.max_bytes)
        ):
            _, old = self._models.popitem(last=False)
            self._memory.pop(old.model_id, None)
            evicted.append(old)
        for old in evicted:
            self.evictions += 1
            if self._on_evict:
                self._on_evict(old)
        if self._metrics is not None:
            if evicted:
                self._metrics.session_cache_evictions.inc(len(evicted))
            self._metrics.models_loaded.set(len(self._models))
        return evicted

    def remove(self, model_id: str) -> LoadedModel | None:
        model = self._models.pop(model_id, None)
        self._memory.pop(model_id, None)
        if self._metrics is not None:
            self._metrics.models_loaded.set(len(self._models))
        return model

    def models(self) -> list[LoadedModel]:
        """Least recently used first."""
        return list(self._models.values())

    def status(self) -> dict[str, Any]:
        """The ``cacheStatus`` object of the API."""
        return {
            "current_size": len(self._models),
            "max_size": self.max_models,
            "models_in_cache": list(self._models),
            "total_bytes": self.total_bytes,
            "max_bytes": self.max_bytes,
            "memory_bytes": {model_id: self.memory_bytes(model_id) for model_id in self._models},
        }
