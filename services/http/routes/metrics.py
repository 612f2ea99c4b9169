"""``GET /metrics``: every cidserve metric in the Prometheus text format.

With several worker processes (``cidserve serve --workers N``) the values of all workers are
aggregated from ``PROMETHEUS_MULTIPROC_DIR`` (:meth:`services.metrics.Metrics.exposition_registry`),
so one scrape of any worker sees the whole service.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from prometheus_client.exposition import choose_encoder
from starlette.responses import Response

from services.http.deps import Svc

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "The Prometheus text format, or OpenMetrics when the Accept header "
            "asks for application/openmetrics-text",
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/openmetrics-text": {"schema": {"type": "string"}},
            },
        }
    },
)
async def metrics(request: Request, svc: Svc) -> Response:
    """Prometheus exposition (OpenMetrics when the scraper asks for it)."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))

    def render() -> bytes:
        # Multiprocess mode reads one file per worker and metric: keep it off the event loop.
        return encoder(svc.metrics.exposition_registry())

    body = await asyncio.to_thread(render)
    return Response(body, media_type=content_type)
