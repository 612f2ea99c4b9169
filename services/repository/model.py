"""A loaded model: its session, runner and plug-ins, built once at load time."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import onnxruntime as ort

from postprocessing.base import Postprocessor
from preprocessing.base import Preprocessor
from registry.metadata import ModelMetadata
from services.runtime.runner import ModelRunner


@dataclass(slots=True, eq=False)
class LoadedModel:
    """Everything needed to serve one model, built once at load time."""

    model_id: str
    metadata_cid: str
    token_id: int | None
    metadata: ModelMetadata
    session: ort.InferenceSession
    runner: ModelRunner
    preprocessor: Preprocessor
    postprocessor: Postprocessor
    size_bytes: int
    provider: str
    load_time_ms: float
    loaded_at: float = field(default_factory=time.time)
    requests: int = 0
    errors: int = 0

    def describe(self) -> dict[str, Any]:
        m = self.metadata
        return {
            "model_id": self.model_id,
            "name": m.name,
            "version": m.version,
            "metadataCid": self.metadata_cid,
            "modelCid": m.model.cid,
            "tokenId": self.token_id,
            "licensed": self.token_id is not None,
            "size_bytes": self.size_bytes,
            "execution_provider": self.provider,
            # Whether this model's runs may hold rows of other callers' requests.
            "cross_request_batching": self.runner.cross_request_batching,
            "preprocessing": m.preprocessing.kind,
            "postprocessing": m.postprocessing.kind,
            "inputs": [t.model_dump() for t in m.inputs],
            "outputs": [t.model_dump() for t in m.outputs],
            "load_time_ms": round(self.load_time_ms, 2),
            "loaded_at": self.loaded_at,
            "requests": self.requests,
            "errors": self.errors,
        }
