"""``cidserve serve``: the HTTP service under uvicorn, one process or ``--workers N``, once
the settings pass :mod:`services.cli.preflight`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from services.cli.preflight import PreflightError, check_serve
from services.settings import Settings
from services.wiring import Services

log = logging.getLogger("cidserve")


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from services.cli import shutdown
    from services.http.app import create_app
    from services.runtime.errors import ProviderUnavailable
    from services.wiring import build_services

    if args.workers is not None and not 1 <= args.workers <= 64:
        print(f"cidserve: --workers must be 1..64, got {args.workers}", file=sys.stderr)
        return 2
    given = (("host", args.host), ("port", args.port), ("workers", args.workers))
    overrides = {k: v for k, v in given if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    try:
        for warning in check_serve(settings):
            log.warning("%s", warning)
    except PreflightError as exc:
        print(f"cidserve: {exc}", file=sys.stderr)
        return 2
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir:  # prometheus_client writes there as soon as the first metric exists
        Path(metrics_dir).mkdir(parents=True, exist_ok=True)
    try:
        services = build_services(settings)
    except ProviderUnavailable as exc:
        print(f"cidserve: CIDSERVE_REQUIRE_GPU is set but {exc}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        return _serve_workers(args, settings, services)
    if args.demo:
        from services.cli.demo import curl_lines, prepare_demo

        demo = asyncio.run(prepare_demo(settings.data_dir, settings.models_dir, services.store))

        async def load_demo(svc: object) -> None:
            outcome = await services.repository.load(demo.metadata_cid, None, True, bind_name=True)
            base = f"http://{settings.host}:{settings.port}"
            lines = "\n".join(curl_lines(base, demo))
            print(
                f"\ncidserve demo: model {outcome.model.model_id} "
                f"(metadataCid {demo.metadata_cid}) loaded in {outcome.load_time_ms:.0f} ms "
                f"on {outcome.model.provider}.\nTry:\n{lines}\n",
                file=sys.stderr,
                flush=True,
            )

        services.startup_tasks.append(load_demo)
    app = create_app(settings, services)
    # SIGTERM: readiness off, finish what was received, exit 0 (services/cli/shutdown.py).
    return shutdown.serve(
        app,
        on_drain=services.dataplane.admission.drain,
        drain_delay_s=settings.drain_delay_s,
        timeout_graceful_shutdown=settings.drain_timeout_s,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # our handlers and format (services/observability/logs.py)
        access_log=False,  # the request middleware writes the access line
        server_header=False,
        **server_impls(),
    )


def server_impls() -> dict[str, Any]:
    """uvicorn's event loop and HTTP protocol: uvloop and httptools (core dependencies; they
    cut the gateway's CPU per request, see docs/PERFORMANCE.md), the latter as
    :class:`~services.http.protocol.HttpProtocol` (a response's head and body in one write);
    asyncio and h11 where a platform lacks them."""
    import importlib.util

    http: Any = "h11"
    if importlib.util.find_spec("httptools"):
        from services.http.protocol import HttpProtocol

        http = HttpProtocol
    return {"loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio", "http": http}


def _serve_workers(args: argparse.Namespace, settings: Settings, services: Services) -> int:
    """``--workers N``: N uvicorn worker processes, metrics aggregated across them."""
    import os

    import uvicorn

    from services.cli.workers import ENV_DEMO_CID, MultiprocessMetricsDir

    if args.demo:
        from services.cli.demo import curl_lines, prepare_demo

        demo = asyncio.run(prepare_demo(settings.data_dir, settings.models_dir, services.store))
        os.environ[ENV_DEMO_CID] = demo.metadata_cid
        lines = "\n".join(curl_lines(f"http://{settings.host}:{settings.port}", demo))
        print(
            f"\ncidserve demo: model {demo.model_id} (metadataCid {demo.metadata_cid}) loads in "
            f"each of {settings.workers} workers. Once they are up, try:\n{lines}\n",
            file=sys.stderr,
            flush=True,
        )
    # The parent only supervises: its parts served the start-up checks and the demo.
    try:
        asyncio.run(services.aclose())
    except Exception as exc:
        log.debug("closing the parent's services: %s", exc)
    with MultiprocessMetricsDir() as metrics_dir:
        log.info("%d worker processes; metrics aggregated in %s", settings.workers, metrics_dir)
        uvicorn.run(
            "services.cli.workers:worker_app",
            factory=True,
            workers=settings.workers,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            log_config=None,
            access_log=False,
            server_header=False,
            # SIGTERM: each worker finishes the requests it has received within this bound.
            timeout_graceful_shutdown=settings.drain_timeout_s,
            **server_impls(),
        )
    return 0
