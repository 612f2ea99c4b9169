"""Per-stage timings of a request: the reply's ``metrics``, the stage histograms, the log line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.observability.context import note_stages
from services.observability.metrics import STAGES, Metrics


@dataclass(slots=True)
class StageTimes:
    preprocessing_ms: float = 0.0
    inference_ms: float = 0.0
    postprocessing_ms: float = 0.0
    total_ms: float = 0.0
    # Waiting for a preprocess or inference worker (not in the reply; in metrics and logs).
    queue_ms: float = 0.0

    def as_metrics(self) -> dict[str, float]:
        return {
            "preprocessing_time_ms": round(self.preprocessing_ms, 3),
            "inference_time_ms": round(self.inference_ms, 3),
            "postprocessing_time_ms": round(self.postprocessing_ms, 3),
            "total_time_ms": round(self.total_ms, 3),
        }


class StageRecorder:
    """Observes a request's stages in ``cidserve_request_duration_seconds`` and puts them on
    its log line (microsecond-rounded milliseconds)."""

    def __init__(self, metrics: Metrics | None) -> None:
        self.metrics = metrics
        # Histogram children by model and stage, looked up once per model (labels() is the
        # expensive part of an observation).
        self._hists: dict[str, dict[str, Any]] = {}

    def record(self, model_id: str, times: StageTimes, *, computed: bool) -> None:
        """A reply from the prediction cache (``computed=False``) has only a ``total``."""
        if computed:
            stages = {
                "queue": times.queue_ms,
                "preprocess": times.preprocessing_ms,
                "inference": times.inference_ms,
                "postprocess": times.postprocessing_ms,
                "total": times.total_ms,
            }
        else:
            stages = {"total": times.total_ms}
        note_stages({f"{k}_ms": round(v, 3) for k, v in stages.items()})
        if self.metrics is None:
            return
        hists = self._hists.get(model_id)
        if hists is None:
            hist = self.metrics.request_duration
            hists = {s: hist.labels(model_id, s) for s in STAGES}
            self._hists[model_id] = hists
        for stage, ms in stages.items():
            hists[stage].observe(ms / 1000)
