"""Several worker processes for ``cidserve serve --workers N``, with metrics that add up.

uvicorn runs N copies of the app in spawned processes sharing one listening socket. Each
worker builds its own services (session cache, pools) from the same settings. Prometheus
metrics are shared through ``PROMETHEUS_MULTIPROC_DIR``: every worker writes its values
there and ``GET /metrics`` on any worker aggregates them all.

:class:`MultiprocessMetricsDir` prepares that directory before the workers start (a fresh
temporary one, or the operator's, emptied of a previous run's files), drops the live gauges
of workers that exit (so ``cidserve_inflight_requests`` and ``cidserve_models_loaded`` count
only live workers) and removes what it created at the end. Counters of an exited worker are
kept: totals never go backwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from types import TracebackType

from fastapi import FastAPI

log = logging.getLogger("cidserve.workers")

ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Handed from the parent to the workers: the demo model each worker loads at start-up.
ENV_DEMO_CID = "_CIDSERVE_WORKER_DEMO_CID"
_LIVE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class MultiprocessMetricsDir:
    """Context manager around the worker processes; see the module docstring."""

    def __init__(self, reap_interval_s: float = 2.0) -> None:
        self.reap_interval_s = reap_interval_s
        self.path: Path | None = None
        self._owned = False
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    def __enter__(self) -> Path:
        given = os.environ.get(ENV_DIR)
        if given:
            path = Path(given)
            path.mkdir(parents=True, exist_ok=True)
            for stale in path.glob("*.db"):  # a previous run's values must not be summed in
                stale.unlink()
        else:
            path = Path(tempfile.mkdtemp(prefix="cidserve-metrics-"))
            self._owned = True
            os.environ[ENV_DIR] = str(path)
        self.path = path
        self._reaper = threading.Thread(target=self._reap_loop, name="metrics-reaper", daemon=True)
        self._reaper.start()
        return path

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join(timeout=5)
        if self.path is None:
            return
        if self._owned:
            shutil.rmtree(self.path, ignore_errors=True)
            os.environ.pop(ENV_DIR, None)
        else:
            for db in self.path.glob("*.db"):
                with contextlib.suppress(OSError):
                    db.unlink()

    def reap(self) -> list[int]:
        """Drop the live gauges of exited workers; returns their pids."""
        from prometheus_client import multiprocess

        assert self.path is not None
        dead = set()
        for name in os.listdir(self.path):
            m = _LIVE_FILE.fullmatch(name)
            if m and not _alive(int(m.group(1))):
                dead.add(int(m.group(1)))
        for pid in dead:
            multiprocess.mark_process_dead(pid, str(self.path))
            log.info("worker %d exited; its live gauges are dropped", pid)
        return sorted(dead)

    def _reap_loop(self) -> None:
        while not self._stop.wait(self.reap_interval_s):
            try:
                self.reap()
            except OSError as exc:
                log.warning("metrics reaper: %s", exc)


def worker_app() -> FastAPI:
    """The app of one worker process (``uvicorn --factory services.cli.workers:worker_app``)."""
    from services.http.app import create_app
    from services.observability.logs import setup_logging
    from services.settings import load_settings
    from services.wiring import build_services

    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    services = build_services(settings)
    demo_cid = os.environ.get(ENV_DEMO_CID)
    if demo_cid:

        async def load_demo(svc: object) -> None:
            outcome = await services.repository.load(demo_cid, None, True, bind_name=True)
            log.info(
                "demo model %s loaded in %.0f ms on %s (pid %d)",
                outcome.model.model_id,
                outcome.load_time_ms,
                outcome.model.provider,
                os.getpid(),
            )

        services.startup_tasks.append(load_demo)
    return create_app(settings, services)
