"""Test support for the Redis parts: the machine's Redis, private redis-servers, key cleanup.

The shared Redis is ``127.0.0.1:6379`` (``CIDSERVE_TEST_REDIS_URL`` overrides it). Every test
module writes under its own random key prefix and deletes its keys at the end. Outage tests
start a private ``redis-server`` on a free port in its own process group and stop, pause
(SIGSTOP: a Redis that accepts connections but never answers) or restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis

from services.http.app import create_app
from services.wiring import Services, build_services
from tests.harness import ServerThread, free_port

T = TypeVar("T")

REDIS_URL = os.environ.get("CIDSERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def require_redis() -> None:
    """Skip (with the reason) on a machine without the shared Redis."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")


def unique_prefix(tag: str) -> str:
    return f"cidserve-test:{tag}:{uuid.uuid4().hex[:10]}:"


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix``; the count deleted."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        return len(keys)
    finally:
        client.close()


def keys_under(url: str, prefix: str) -> list[str]:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return sorted(k.decode() for k in client.scan_iter(match=prefix + "*", count=1000))
    finally:
        client.close()


class RedisServer:
    """A private ``redis-server`` on a free loopback port, in its own process group."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    def start(self) -> None:
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 10
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.RedisError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("private redis-server did not start") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def pause(self) -> None:
        """Freeze it: connections are accepted by the kernel, nothing is answered."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.paused:
            self.resume()
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=5)
        self.proc = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LoopHandle:
    """The event loop an app runs on (captured by a start-up task), to call its parts."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    async def capture(self, _svc: Services) -> None:
        self.loop = asyncio.get_running_loop()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        assert self.loop is not None, "the app has not started"
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class App:
    """One running gateway: URL, its services, a client, and its event loop."""

    def __init__(self, url: str, services: Services, client: httpx.Client, loop: LoopHandle):
        self.url = url
        self.services = services
        self.client = client
        self.loop = loop


@contextlib.contextmanager
def running_app(settings: Any, **parts: Any) -> Iterator[App]:
    """Build services from ``settings`` (+ parts), serve them on a free port, yield an App."""
    services = build_services(settings, **parts)
    handle = LoopHandle()
    services.startup_tasks.append(handle.capture)
    with (
        ServerThread(create_app(settings, services)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        yield App(srv.url, services, client, handle)
