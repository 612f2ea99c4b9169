"""License-check benchmark: what licensing costs per request, on a real local chain.

It starts ``anvil`` (npm ``@foundry-rs/anvil``) on a free 127.0.0.1 port, deploys the
ModelLicense contract from ``services/chain/ModelLicense.json``, mints a token and grants a
license, then measures, in the same run and against the same node:

* ``raw eth_call``: one ``licenseStatus`` call through :class:`services.chain.rpc.JsonRpcClient`
  (kept-alive httpx connection, hand-built JSON-RPC) - the service's uncached hot path;
* ``web3 contract call (sync)`` / ``(async)``: the same call through a web3 8 contract object
  (``HTTPProvider`` / ``AsyncHTTPProvider``), what the hot path would cost with web3;
* ``uncached check``: :meth:`ChainLicenseBackend.has_valid_license` with the cache off
  (the raw call plus decoding, metrics and bookkeeping);
* ``cached check (memory)``: the same with the license in the in-process cache;
* ``cached check (redis)``: the same with the cache in Redis at 127.0.0.1:6379 (skipped when
  no Redis answers);
* ``signature check``: :class:`SignatureAuthenticator` on a signed request (canonical string
  v2, EIP-191 recovery with coincurve, body hash, nonce ``SET NX`` in memory);
* ``content token lookup (cached)``: :meth:`ChainLicenseBackend.token_of_content`, what every
  load (and every reload of an evicted model) asks the chain, with the answer cached;
* ``bearer check``: :func:`services.http.control.is_operator` on a request carrying the
  operator's ``Authorization: Bearer`` token (a constant-time compare);
* ``HTTP``: sequential requests, interleaved, to two ``cidserve serve`` processes on free
  ports (cache on / cache off; a small linear model, tensor input): an open model unsigned,
  and a licensed model with signed requests. The difference is what licensing adds to a
  request end to end (signature check, license check, the larger request).

Each point runs ``--n`` times after ``--warmup`` discarded runs and reports the median, p95
and mean in milliseconds. The chain points run twice: *back to back* (each point alone, many
times in a row: the best case, hot connection and CPU caches) and *interleaved* (round-robin
with the other points: closer to a server doing other work between checks, and other load on
the machine weighs on every point alike). The HTTP points are interleaved.

Run from the repository root::

    .venv/bin/python benchmarks/bench_license.py            # about 1.5 minutes
    .venv/bin/python benchmarks/bench_license.py --n 200 --n-http 100 --no-http   # quick

The figures and their reading are in docs/LICENSING.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from starlette.requests import Request  # noqa: E402
from web3 import AsyncHTTPProvider, AsyncWeb3, Web3  # noqa: E402

from registry.local_store import LocalContentStore  # noqa: E402
from registry.publish import publish_model  # noqa: E402
from services.chain import abi  # noqa: E402
from services.chain.auth import SignatureAuthenticator  # noqa: E402
from services.chain.backend import ChainLicenseBackend  # noqa: E402
from services.chain.client import sign_url  # noqa: E402
from services.chain.rpc import JsonRpcClient  # noqa: E402
from services.chain.signing import sign_request  # noqa: E402
from services.http.control import is_operator  # noqa: E402
from services.licensing import Caller  # noqa: E402
from services.settings import Settings  # noqa: E402
from services.state.kv import MemoryKV  # noqa: E402
from tests.anvil import Anvil, deploy_license  # noqa: E402
from tests.harness import ServiceProcess, free_port  # noqa: E402
from tests.models import linear_model  # noqa: E402

Row = dict[str, Any]
CONTENT_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def summarize(name: str, samples: list[float]) -> Row:
    ordered = sorted(samples)
    ms = [s * 1000 for s in ordered]
    return {
        "name": name,
        "n": len(ms),
        "median_ms": statistics.median(ms),
        "p95_ms": ms[int(0.95 * (len(ms) - 1))],
        "mean_ms": statistics.fmean(ms),
    }


async def back_to_back(
    points: dict[str, Callable[[], Awaitable[object]]], n: int, warmup: int
) -> list[Row]:
    """Each point ``n`` times in a row: the best case (a hot connection, hot caches)."""
    rows = []
    for name, fn in points.items():
        for _ in range(warmup):
            await fn()
        values = []
        for _ in range(n):
            t0 = time.perf_counter()
            await fn()
            values.append(time.perf_counter() - t0)
        rows.append(summarize(f"{name}, back to back", values))
    return rows


async def interleaved(
    points: dict[str, Callable[[], Awaitable[object]]], n: int, warmup: int
) -> list[Row]:
    """Run the points round-robin, one call each per round, so that whatever else the machine
    does at a given moment weighs on every point alike."""
    samples: dict[str, list[float]] = {name: [] for name in points}
    for i in range(n + warmup):
        for name, fn in points.items():
            t0 = time.perf_counter()
            await fn()
            elapsed = time.perf_counter() - t0
            if i >= warmup:
                samples[name].append(elapsed)
    return [summarize(f"{name}, interleaved", values) for name, values in samples.items()]


async def redis_kv() -> Any:
    """A RedisKV on the machine's Redis, or None when none answers."""
    try:
        from services.state.redis_kv import RedisKV
    except ImportError:
        return None
    kv = RedisKV(
        "redis://127.0.0.1:6379/0", prefix=f"bench-license-{os.getpid()}:", timeout_ms=1000
    )
    try:
        await kv.set("probe", b"1", 5)
        return kv
    except Exception:
        await kv.aclose()
        return None


async def chain_points(url: str, contract: str, user: str, token: int, args: Any) -> list[Row]:
    artifact = abi.load_artifact()
    rpc = JsonRpcClient(url)
    data = abi.LICENSE_STATUS.encode(user, token)
    address = Web3.to_checksum_address(contract)

    w3 = Web3(Web3.HTTPProvider(url))
    sync_call = w3.eth.contract(address=address, abi=artifact.abi).functions.licenseStatus(
        Web3.to_checksum_address(user), token
    )
    aw3 = AsyncWeb3(AsyncHTTPProvider(url))
    async_call = aw3.eth.contract(address=address, abi=artifact.abi).functions.licenseStatus(
        Web3.to_checksum_address(user), token
    )

    content_cid = CONTENT_CID

    async def web3_sync() -> object:
        return sync_call.call()  # blocks the loop: fine here, nothing else runs

    caller = Caller(user)
    uncached = ChainLicenseBackend(JsonRpcClient(url), contract, MemoryKV(), cache_ttl_s=0)
    cached = ChainLicenseBackend(JsonRpcClient(url), contract, MemoryKV(), cache_ttl_s=300)

    auth = SignatureAuthenticator(MemoryKV(), skew_s=300)
    key = os.urandom(32)
    body = b"x" * 1024
    path = "/api/inference/execute"

    class View:
        def __init__(self, headers: dict[str, str]) -> None:
            self.method = "POST"
            self.path = path
            self.headers = {k.lower(): v for k, v in headers.items()}
            self.body = body

    sent = {"host": "127.0.0.1:8000", "content-type": "application/json"}
    views = iter(
        [
            View(sent | sign_request(key, "POST", path, body, host=sent["host"], headers=sent))
            for _ in range(2 * (args.n + args.warmup))
        ]
    )
    operator = operator_check()

    points: dict[str, Callable[[], Awaitable[object]]] = {
        "raw eth_call (JsonRpcClient)": lambda: rpc.eth_call(contract, data),
        "web3 contract call (sync)": web3_sync,
        "web3 contract call (async)": async_call.call,
        "uncached check (backend)": lambda: uncached.has_valid_license(caller, token),
        "cached check (memory)": lambda: cached.has_valid_license(caller, token),
        "signature check (1 KiB body)": lambda: auth.authenticate(next(views)),
        "content token lookup (cached)": lambda: cached.token_of_content(content_cid),
        "bearer check (operator token)": operator,
    }
    kv = await redis_kv()
    on_redis = None
    if kv is not None:
        on_redis = ChainLicenseBackend(JsonRpcClient(url), contract, kv, cache_ttl_s=300)
        points["cached check (redis)"] = lambda: on_redis.has_valid_license(caller, token)
    try:
        rows = await back_to_back(points, args.n, args.warmup)
        return rows + await interleaved(points, args.n, args.warmup)
    finally:
        for backend in (uncached, cached, on_redis):
            if backend is not None:
                await backend.aclose()
        if kv is not None:
            await kv.aclose()
        await rpc.aclose()
        await aw3.provider.disconnect()


def operator_check() -> Callable[[], Awaitable[object]]:
    """:func:`is_operator` on a request with the operator's bearer token (the control plane's
    check), against settings with ``CIDSERVE_ADMIN_TOKEN`` set."""
    secret = "op-" + os.urandom(16).hex()
    svc = SimpleNamespace(settings=Settings(admin_token=secret))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/models/load",
        "headers": [(b"authorization", f"Bearer {secret}".encode()), (b"host", b"127.0.0.1")],
    }

    async def check() -> object:
        ok = await is_operator(svc, Request(scope))  # type: ignore[arg-type]
        assert ok
        return ok

    return check


def http_points(url: str, chain: Any, user: Any, args: Any, workdir: Path) -> list[Row]:
    """Sequential requests to two gateway processes (cache on / cache off), interleaved:
    open model unsigned, licensed model signed (cache on), licensed model signed (cache off).
    """
    n, warm = args.n_http, args.warmup
    store = LocalContentStore(workdir / "store")
    open_m = asyncio.run(
        publish_model(store, linear_model(workdir / "a.onnx", seed=1), name="open")
    )
    lic_m = asyncio.run(publish_model(store, linear_model(workdir / "b.onnx", seed=2), name="lic"))
    token = int(chain.client().mint(lic_m.metadata_cid).value)
    chain.client().grant(token, user.address, chain.anvil.chain_time() + 86400)
    procs = []
    try:
        for ttl in ("300", "0"):
            env = {
                "CIDSERVE_DATA_DIR": str(workdir),
                "CIDSERVE_PORT": str(free_port()),
                "CIDSERVE_CHAIN_RPC_URL": url,
                "CIDSERVE_LICENSE_CONTRACT": chain.contract,
                "CIDSERVE_LICENSE_CACHE_TTL_S": ttl,
                "CIDSERVE_PREDICTION_CACHE": "false",
                "CIDSERVE_LOG_LEVEL": "warning",
            }
            proc = ServiceProcess(
                [sys.executable, "-m", "services.cli", "serve"], env, workdir / f"serve-{ttl}.log"
            )
            procs.append(proc)
        for proc in procs:
            proc.wait_ready()
        clients = [httpx.Client(base_url=p.url, timeout=30) for p in procs]
        ids = []
        for client in clients:
            pair = []
            for cid, tok in ((open_m.metadata_cid, None), (lic_m.metadata_cid, token)):
                r = client.post("/api/models/load", json={"metadataCid": cid, "tokenId": tok})
                r.raise_for_status()
                pair.append(r.json()["model_id"])
            ids.append(pair)

        def body(model_id: str, i: int) -> bytes:
            # A distinct input per request, so no reply cache could answer.
            x = [[float(i % 997) / 997] * 8]
            return json.dumps(
                {"model_id": model_id, "input_data": {"format": "tensor", "content": x}}
            ).encode()

        points = {
            "HTTP open model, unsigned": (clients[0], ids[0][0], False),
            "HTTP licensed model, signed, cache on": (clients[0], ids[0][1], True),
            "HTTP licensed model, signed, cache off": (clients[1], ids[1][1], True),
        }
        samples: dict[str, list[float]] = {name: [] for name in points}
        for i in range(n + warm):
            for name, (client, model_id, signed) in points.items():
                b = body(model_id, i)
                headers = {"content-type": "application/json"}
                if signed:  # signed before the clock starts: the client's cost is not counted
                    url = client.base_url.join("/api/inference/execute")
                    headers |= sign_url(user.key, "POST", url, headers, b)
                t0 = time.perf_counter()
                r = client.post("/api/inference/execute", content=b, headers=headers)
                elapsed = time.perf_counter() - t0
                if r.status_code != 200:
                    raise RuntimeError(r.text)
                if i >= warm:
                    samples[name].append(elapsed)
        for client in clients:
            client.close()
        return [summarize(name, values) for name, values in samples.items()]
    finally:
        for proc in procs:
            proc.stop()


def markdown(rows: list[Row]) -> str:
    lines = ["| point | n | median ms | p95 ms | mean ms |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['n']} | {r['median_ms']:.3f} | {r['p95_ms']:.3f} | "
            f"{r['mean_ms']:.3f} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="calls per chain point")
    p.add_argument("--n-http", type=int, default=500, help="requests per HTTP point")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--no-http", action="store_true", help="skip the gateway points")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-license-") as tmp:
        workdir = Path(tmp)
        with Anvil(workdir / "anvil") as anvil:
            chain = deploy_license(anvil)
            user = anvil.funded_account()
            token = int(chain.client().mint(CONTENT_CID).value)
            chain.client().grant(token, user.address, anvil.chain_time() + 86400)
            rows = asyncio.run(chain_points(anvil.url, chain.contract, user.address, token, args))
            if not args.no_http:
                rows += http_points(anvil.url, chain, user, args, workdir)
    table = markdown(rows)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"
    )
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
