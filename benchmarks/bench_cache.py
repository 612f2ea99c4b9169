"""Prediction-cache benchmark: hit and miss latency end to end over HTTP.

For each backend (``memory``: the in-process store; ``redis``: a Redis server) it starts the
gateway as its own process (``python -m services.cli serve``) on a free 127.0.0.1 port with a
temporary data directory, publishes EfficientNet-Lite0 into its content store, loads it, and
then, one request at a time on one keep-alive connection (httpx):

* ``hit jpeg``: the same 224x224 JPEG as the raw body of ``POST /api/models/{id}/predict``
  after one request that filled the cache (every reply must say ``X-Cache: hit``);
* ``hit json``: the same through ``POST /api/inference/execute`` with the image as base64;
* ``miss jpeg``: the same JPEG with a different ``threshold`` each time (a new key, so the
  model runs and the reply is stored; the threshold is too small to change the answer).

Reported per point: requests, how many replies had the expected ``X-Cache`` (a Redis call
over ``CIDSERVE_REDIS_TIMEOUT_MS`` turns a hit into a ``bypass``; the environment's
``CIDSERVE_*`` variables reach the gateway), p50/p95/p99 of the client-side wall time
(request sent to reply parsed) of those replies, and the p50 of the ``total_time_ms`` the
server reports. With ``redis`` the
keys go under a fresh prefix that is deleted at the end.

Run from the repository root::

    .venv/bin/python benchmarks/bench_cache.py                          # both backends
    .venv/bin/python benchmarks/bench_cache.py --backends redis --requests 5000
    .venv/bin/python benchmarks/bench_cache.py --quick                  # smoke run

Options: ``--backends memory,redis``, ``--redis-url redis://127.0.0.1:6379/0``, ``--requests
2000`` (hits per point), ``--misses 100``, ``--warmup 200``, ``--size 224x224``, ``--json
PATH`` (write the results as JSON too).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"
START_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def make_jpeg(size: tuple[int, int]) -> bytes:
    from PIL import Image

    from registry import samples

    image = Image.open(io.BytesIO(samples.sample_image_bytes("chelsea"))).convert("RGB")
    out = io.BytesIO()
    image.resize(size).save(out, format="JPEG", quality=90)
    return out.getvalue()


def publish(data_dir: Path) -> tuple[str, str]:
    """Export EfficientNet-Lite0 (in a child process) and publish it; (metadata CID, model id)."""
    from registry import export
    from registry.local_store import LocalContentStore
    from registry.publish import publish_model

    onnx_path = data_dir / "efficientnet-lite0.onnx"
    cmd = [sys.executable, "-m", "services.cli", "export", "efficientnet-lite0", str(onnx_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"export failed:\n{done.stdout}{done.stderr}")

    async def run() -> tuple[str, str]:
        store = LocalContentStore(data_dir / "store")
        try:
            result = await publish_model(
                store,
                onnx_path,
                name="efficientnet-lite0",
                labels=export.imagenet_labels(),
                preset="efficientnet-lite",
            )
        finally:
            await store.aclose()
        return result.metadata_cid, result.model_id

    return asyncio.run(run())


@contextlib.contextmanager
def gateway(data_dir: Path, extra_env: dict[str, str], log_path: Path) -> Iterator[str]:
    """The gateway in its own process group on a free port; killed on exit."""
    import httpx

    port = free_port()
    env = {
        **os.environ,
        "CIDSERVE_DATA_DIR": str(data_dir),
        "CIDSERVE_PORT": str(port),
        "CIDSERVE_HOST": HOST,
        "CIDSERVE_LOG_LEVEL": os.environ.get("CIDSERVE_LOG_LEVEL", "warning"),
        **extra_env,
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://{HOST}:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited:\n{log_path.read_text()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/health/live", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not start")
                time.sleep(0.2)
            yield base
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def measure(send: Callable[[int], Any], n: int, warmup: int, expect: str) -> dict[str, Any]:
    """``n`` sequential requests after ``warmup``; client wall times and server totals (ms)
    of the replies whose ``X-Cache`` is ``expect`` (the others are counted: a Redis call
    that passed ``CIDSERVE_REDIS_TIMEOUT_MS`` makes a ``bypass``)."""
    for i in range(warmup):
        send(-1 - i)
    wall: list[float] = []
    server: list[float] = []
    other: dict[str, int] = {}
    for i in range(n):
        t0 = time.perf_counter()
        resp = send(i)
        body = resp.json()
        elapsed = (time.perf_counter() - t0) * 1000
        if resp.status_code != 200:
            raise RuntimeError(f"request failed: {resp.status_code} {resp.text[:300]}")
        status = resp.headers.get("x-cache", "?")
        if status != expect:
            other[status] = other.get(status, 0) + 1
            continue
        wall.append(elapsed)
        server.append(float(body["metrics"]["total_time_ms"]))
    if not wall:
        raise RuntimeError(f"no reply was a {expect}: {other}")
    return {
        "requests": n,
        "as_expected": len(wall),
        "other": other,
        "p50_ms": round(percentile(wall, 0.50), 3),
        "p95_ms": round(percentile(wall, 0.95), 3),
        "p99_ms": round(percentile(wall, 0.99), 3),
        "mean_ms": round(statistics.fmean(wall), 3),
        "server_p50_ms": round(percentile(server, 0.50), 3),
    }


def run_backend(
    backend: str, args: argparse.Namespace, data_dir: Path, cid: str, model_id: str, jpeg: bytes
) -> list[dict[str, Any]]:
    import httpx

    env: dict[str, str] = {"CIDSERVE_PREDICTION_CACHE_MAX_ENTRIES": str(args.misses + 1000)}
    prefix = f"cidserve-bench:{uuid.uuid4().hex[:8]}:"
    if backend == "redis":
        env.update(CIDSERVE_REDIS_URL=args.redis_url, CIDSERVE_REDIS_PREFIX=prefix)
    rows: list[dict[str, Any]] = []
    try:
        with (
            gateway(data_dir, env, data_dir / f"server-{backend}.log") as base,
            httpx.Client(base_url=base, timeout=60, trust_env=False) as client,
        ):
            r = client.post("/api/models/load", json={"metadataCid": cid})
            r.raise_for_status()
            if backend == "redis":
                ready = client.get("/health/ready").json()
                if ready["dependencies"].get("redis", {}).get("status") != "ok":
                    raise RuntimeError(f"redis is not reachable: {ready}")
            predict = f"/api/models/{model_id}/predict"
            jpeg_headers = {"content-type": "image/jpeg"}
            body = {
                "model_id": model_id,
                "input_data": {"format": "base64_jpeg", "content": base64.b64encode(jpeg).decode()},
                "options": {"top_k": 5},
            }
            client.post(predict, content=jpeg, headers=jpeg_headers, params={"top_k": 5})

            def hit_jpeg(_i: int) -> Any:
                return client.post(predict, content=jpeg, headers=jpeg_headers, params={"top_k": 5})

            def hit_json(_i: int) -> Any:
                return client.post("/api/inference/execute", json=body)

            run_id = time.time_ns() % 1_000_000

            def miss_jpeg(i: int) -> Any:
                # A threshold far below any confidence: same answer, new key.
                threshold = (run_id * 10_000 + i + 20_000) * 1e-15
                return client.post(
                    predict,
                    content=jpeg,
                    headers=jpeg_headers,
                    params={"top_k": 5, "threshold": f"{threshold:.20f}"},
                )

            for name, send, n, expect in (
                ("hit jpeg", hit_jpeg, args.requests, "hit"),
                ("hit json", hit_json, args.requests, "hit"),
                ("miss jpeg", miss_jpeg, args.misses, "miss"),
            ):
                print(f"  {backend:6} {name} ...", file=sys.stderr, flush=True)
                warm = args.warmup if expect == "hit" else min(args.warmup, 5)
                rows.append({"backend": backend, "point": name, **measure(send, n, warm, expect)})
    finally:
        if backend == "redis":
            with contextlib.suppress(Exception):
                import redis

                client_r = redis.Redis.from_url(args.redis_url)
                keys = list(client_r.scan_iter(match=prefix + "*", count=1000))
                if keys:
                    client_r.delete(*keys)
                client_r.close()
    return rows


def render(rows: list[dict[str, Any]], args: argparse.Namespace, jpeg_bytes: int) -> str:
    lines = [
        f"EfficientNet-Lite0, {args.size} JPEG ({jpeg_bytes} bytes), one request at a time on "
        f"one keep-alive connection; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}.",
        "",
        "| backend | point | requests | as expected | p50 ms | p95 ms | p99 ms | server p50 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        other = ", ".join(f"{v} {k}" for k, v in r["other"].items())
        lines.append(
            f"| {r['backend']} | {r['point']} | {r['requests']} | {r['as_expected']}"
            f"{f' ({other})' if other else ''} | {r['p50_ms']:.2f} | "
            f"{r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['server_p50_ms']:.3f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="memory,redis")
    p.add_argument(
        "--redis-url", default=os.environ.get("CIDSERVE_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--misses", type=int, default=100)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--size", default="224x224")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="200 hits, 20 misses, 20 warm-up")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.misses, args.warmup = 200, 20, 20
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    jpeg = make_jpeg((w, h))
    with tempfile.TemporaryDirectory(prefix="cidserve-bench-cache-") as tmp:
        data_dir = Path(tmp)
        print("exporting and publishing EfficientNet-Lite0 ...", file=sys.stderr, flush=True)
        cid, model_id = publish(data_dir)
        rows: list[dict[str, Any]] = []
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            if backend not in ("memory", "redis"):
                raise SystemExit(f"unknown backend {backend!r}: use memory and/or redis")
            rows += run_backend(backend, args, data_dir, cid, model_id, jpeg)
    table = render(rows, args, len(jpeg))
    print(table)
    if args.json is not None:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": None}, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
