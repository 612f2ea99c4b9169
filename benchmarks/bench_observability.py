"""What metrics and logs cost per request: the request middleware and the stage histograms.

    .venv/bin/python benchmarks/bench_observability.py
    PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) .venv/bin/python benchmarks/bench_observability.py

Runs ``RequestMiddleware`` around an ASGI app that answers at once (so only the middleware's
own work is timed: request id, in-flight gauge, request counter, and the access log line in
each format), and the five stage-histogram observations ``InferenceService`` makes per
request. Figures are microseconds per request, medians of 5 rounds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from starlette.types import Message, Receive, Scope, Send

from services.http.middleware import RequestMiddleware
from services.observability.context import note_model, note_stages
from services.observability.logs import setup_logging
from services.observability.metrics import STAGES, Metrics

N = 20_000
ROUNDS = 5
STAGE_MS = {f"{s}_ms": 1.0 for s in STAGES}


class _Route:
    path = "/api/models/{model_id}/predict"


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    scope["route"] = _Route
    note_model("m-1")
    note_stages(STAGE_MS)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _drop(message: Message) -> None:
    return None


async def _per_request_us(app: object) -> float:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/models/m-1/predict",
        "headers": [(b"x-request-id", b"bench-1")],
    }
    rounds = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(N):
            await app(dict(scope), None, _drop)  # type: ignore[operator]
        rounds.append((time.perf_counter() - t0) / N * 1e6)
    return statistics.median(rounds)


def _stage_observations_us(metrics: Metrics) -> float:
    hists = {s: metrics.request_duration.labels("m-1", s) for s in STAGES}
    rounds = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(N):
            for stage in STAGES:
                hists[stage].observe(0.001)
        rounds.append((time.perf_counter() - t0) / N * 1e6)
    return statistics.median(rounds)


def main() -> None:
    mode = "multiprocess" if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else "single process"
    metrics = Metrics()
    bare = asyncio.run(_per_request_us(_app))
    print(f"metrics: {mode}; {N} requests x {ROUNDS} rounds")
    with open(os.devnull, "w") as sink:
        for fmt in ("off", "json", "text"):
            if fmt == "off":
                logging.getLogger().setLevel(logging.WARNING)
            else:
                setup_logging("info", fmt, stream=sink)
            us = asyncio.run(_per_request_us(RequestMiddleware(_app, metrics))) - bare
            print(f"  middleware, access log {fmt:>4}: {us:5.1f} us/request")
    print(f"  5 stage histogram observations: {_stage_observations_us(metrics):5.1f} us/request")


if __name__ == "__main__":
    main()
