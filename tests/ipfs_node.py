"""Test harness: a real IPFS node (js-ipfs from ``node_modules``) on free loopback ports.

js-ipfs implements the Kubo RPC API (``/api/v0``) and a path gateway (``/ipfs/<cid>``). Each
:class:`IpfsNode` gets a fresh repository directory and its own ports, runs in its own process
group (the daemon renames itself ``ipfs``; killing the group leaves nothing behind even when a
test fails), and is ready once ``POST /api/v0/version`` answers. :meth:`IpfsNode.stop` and
:meth:`IpfsNode.start` on the same object take the node away and bring the same node (same
repository, same ports) back, for outage tests. The node is offline: no bootstrap peers, no
discovery, no preload; every address is 127.0.0.1.

:class:`TamperingProxy` sits between a client and the node, forwards every request, and can
change what the node answers (``tamper``) or answer late (``stall_s``): the node turned
hostile or slow, over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from fastapi import FastAPI, Request, Response

from tests.harness import ServerThread, free_port

ROOT = Path(__file__).resolve().parent.parent
IPFS_CLI = ROOT / "node_modules" / "ipfs" / "src" / "cli.js"


def ipfs_available() -> str | None:
    """Why a node cannot be started here, or ``None`` when it can."""
    if shutil.which("node") is None:
        return "node (Node.js 20) is not on PATH"
    if not IPFS_CLI.exists():
        return f"{IPFS_CLI} is missing: run `npm ci` in the repository root"
    return None


class IpfsNode:
    """One js-ipfs daemon; see the module docstring."""

    def __init__(self, workdir: Path) -> None:
        problem = ipfs_available()
        if problem is not None:
            raise RuntimeError(f"cannot start an IPFS node: {problem}")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.repo = workdir / "repo"
        self.api_port = free_port()
        self.gateway_port = free_port()
        self.rpc_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        self.log_path = workdir / "ipfs.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _init_config(self) -> Path:
        config = {
            "Addresses": {
                "API": f"/ip4/127.0.0.1/tcp/{self.api_port}",
                "Gateway": f"/ip4/127.0.0.1/tcp/{self.gateway_port}",
                "RPC": f"/ip4/127.0.0.1/tcp/{self.rpc_port}",
                "Swarm": [],
                "Announce": [],
                "NoAnnounce": [],
                "Delegates": [],
            },
            "Bootstrap": [],
            "Discovery": {"MDNS": {"Enabled": False}, "webRTCStar": {"Enabled": False}},
        }
        path = self.workdir / "init-config.json"
        path.write_text(json.dumps(config))
        return path

    def start(self, timeout: float = 60.0) -> IpfsNode:
        """Start the daemon (initialising the repository the first time); wait until ready."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        # A daemon that was killed leaves its repository lock behind; the group is gone.
        # js-ipfs' lock is a directory (proper-lockfile); the api file is a plain file.
        for stale in ("repo.lock", "api"):
            path = self.repo / stale
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                path.unlink()
        env = {**os.environ, "IPFS_PATH": str(self.repo), "IPFS_MONITORING": "0"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "node",
                    str(IPFS_CLI),
                    "daemon",
                    "--init-profile=test",
                    f"--init-config={self._init_config()}",
                    "--enable-preload=false",
                    "--offline",
                ],
                env=env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the IPFS node exited: {self.log()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.post(f"{self.api_url}/api/v0/version").status_code == 200:
                        return self
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the IPFS node was not ready in {timeout:g} s: {self.log()}")

    def stop(self) -> None:
        """Stop the daemon's process group: SIGTERM, then SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        # Children that outlived the leader (none expected) go with the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the daemon's process group at once (a crash, not a shutdown)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def restart(self) -> IpfsNode:
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    # -- direct RPC calls (the test's view of the node, not the code under test) -----------------

    def rpc(self, path: str, client_timeout: float = 30.0, **params: str) -> httpx.Response:
        """``POST /api/v0/<path>`` with ``params`` (``timeout=`` is the node's own)."""
        with httpx.Client(timeout=client_timeout, trust_env=False) as client:
            return client.post(f"{self.api_url}/api/v0/{path}", params=params)

    def add(self, data: bytes, **params: str) -> str:
        """``ipfs add`` through the RPC API, with the given options; returns the CID."""
        query = {"cid-version": "1", "pin": "true", **params}
        if query["cid-version"] != "0":
            query.setdefault("cid-base", "base32")
        with httpx.Client(timeout=60, trust_env=False) as client:
            r = client.post(
                f"{self.api_url}/api/v0/add", params=query, files={"file": ("blob", data)}
            )
        r.raise_for_status()
        return str(json.loads(r.text.strip().splitlines()[-1])["Hash"])

    def cat(self, cid: str) -> bytes:
        r = self.rpc("cat", arg=cid, timeout="10s")
        r.raise_for_status()
        return r.content

    def block(self, cid: str) -> bytes:
        r = self.rpc("block/get", arg=cid, timeout="10s")
        r.raise_for_status()
        return r.content

    def pinned(self, cid: str) -> bool:
        r = self.rpc("pin/ls", arg=cid, timeout="10s")
        return r.status_code == 200 and bool(r.json().get("Keys"))

    def __enter__(self) -> IpfsNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


Tamper = Callable[[str, dict[str, str], bytes], bytes]
"""``(path, query, body) -> body``: what the proxy sends instead of the node's reply."""


class TamperingProxy:
    """An HTTP proxy on 127.0.0.1:<free port> in front of ``upstream`` (see module docstring)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.tamper: Tamper | None = None
        self.stall_s = 0.0
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, query) as received
        app = FastAPI()
        app.add_api_route(
            "/{path:path}", self._forward, methods=["GET", "POST", "HEAD"], response_model=None
        )
        self._server = ServerThread(app)
        self.url = self._server.url

    async def _forward(self, request: Request) -> Response:
        self.requests.append((request.url.path, dict(request.query_params)))
        if self.stall_s:
            await asyncio.sleep(self.stall_s)
        async with httpx.AsyncClient(timeout=120, trust_env=False) as client:
            r = await client.request(
                request.method,
                self.upstream + request.url.path,
                params=dict(request.query_params),
                content=await request.body(),
            )
        body = r.content
        if self.tamper is not None and r.status_code == 200:
            body = self.tamper(request.url.path, dict(request.query_params), body)
        media = r.headers.get("content-type")
        return Response(body, status_code=r.status_code, media_type=media)

    def __enter__(self) -> TamperingProxy:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)
