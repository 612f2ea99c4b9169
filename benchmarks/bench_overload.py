"""Overload benchmark: many concurrent connections against one model.

Starts the gateway as its own process (``python -m services.cli serve``) on a free 127.0.0.1
port with a temporary data directory, publishes a CPU-bound ONNX model built here (a
``[1, width]`` input expanded to ``rows`` rows and pushed through ``depth`` chained MatMuls:
tens of ms per run), loads it, and then, at each concurrency, keeps that many connections
busy with ``POST /v2/models/{id}/infer`` (JSON tensors; no prediction cache on /v2, so every
accepted request runs the model) for ``--duration`` seconds.

The load generator is ``wrk`` when it is installed (``--generator wrk``; a Lua script counts
the statuses and the latency percentiles), else a bounded asyncio/aiohttp closed loop
(``--generator python``): ``concurrency`` workers, one keep-alive connection each.

Reported per concurrency: requests, statuses (200 served, 429 rate-limited, 503 shed by the
model's bounded queue), socket errors (connect, read, write, timeouts), p50/p99 latency of
all replies, and the shed rate ((429 + 503) / replies). The run passes (exit 0) when there
is no socket error, every status is 200, 429 or 503, and p99 is under the request timeout.

Run from the repository root::

    .venv/bin/python benchmarks/bench_overload.py                       # c = 16, 64, 256
    .venv/bin/python benchmarks/bench_overload.py --quick               # smoke run, ~15 s
    .venv/bin/python benchmarks/bench_overload.py --concurrency 256 --duration 20 \\
        --queue 64 --rate-limit-rps 0

``CIDSERVE_*`` variables in the environment reach the gateway (``--queue`` and
``--queue-delay-ms`` set ``CIDSERVE_MAX_QUEUE_PER_MODEL`` and ``CIDSERVE_MAX_QUEUE_DELAY_MS``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.harness import ServiceProcess, free_port  # noqa: E402
from tests.models import slow_model  # noqa: E402

HOST = "127.0.0.1"
START_TIMEOUT_S = 90.0
EXPECTED = {200, 429, 503}


@dataclass
class Point:
    """What one concurrency level gave."""

    concurrency: int
    generator: str
    duration_s: float
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    socket_errors: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0

    @property
    def replies(self) -> int:
        return sum(self.statuses.values())

    @property
    def shed_rate(self) -> float:
        shed = self.statuses.get("429", 0) + self.statuses.get("503", 0)
        return shed / self.replies if self.replies else 0.0

    def problems(self, timeout_ms: float) -> list[str]:
        out = []
        if self.socket_errors:
            out.append(f"{self.socket_errors} socket errors")
        odd = {s: n for s, n in self.statuses.items() if int(s) not in EXPECTED}
        if odd:
            out.append(f"unexpected statuses {odd}")
        if self.p99_ms > timeout_ms:
            out.append(f"p99 {self.p99_ms:.0f} ms over the {timeout_ms:.0f} ms timeout")
        if not self.statuses.get("200"):
            out.append("no request was served")
        return out


# -- the model -------------------------------------------------------------------------------


def publish(data_dir: Path, model_path: Path) -> str:
    """Publish into the gateway's embedded store; the metadata CID."""
    from registry.local_store import LocalContentStore
    from registry.publish import publish_model

    store = LocalContentStore(data_dir / "store")
    return asyncio.run(publish_model(store, model_path, name="overload")).metadata_cid


def infer_body(width: int) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "x", "shape": [1, width], "datatype": "FP32", "data": [0.5] * width}]}
    ).encode()


# -- the gateway -----------------------------------------------------------------------------


@contextlib.contextmanager
def gateway(data_dir: Path, extra_env: dict[str, str], log_path: Path) -> Iterator[str]:
    """``cidserve serve`` in its own process group on a free port; stopped on exit."""
    env = {
        "CIDSERVE_DATA_DIR": str(data_dir),
        "CIDSERVE_PORT": str(free_port()),
        "CIDSERVE_HOST": HOST,
        "CIDSERVE_LOG_LEVEL": os.environ.get("CIDSERVE_LOG_LEVEL", "warning"),
        **extra_env,
    }
    service = ServiceProcess([sys.executable, "-m", "services.cli", "serve"], env, log_path)
    try:
        service.wait_ready(timeout=START_TIMEOUT_S)
        yield service.url
    finally:
        service.stop()


def load_model(base: str, metadata_cid: str) -> str:
    import httpx

    r = httpx.post(f"{base}/api/models/load", json={"metadataCid": metadata_cid}, timeout=120)
    r.raise_for_status()
    return str(r.json()["model_id"])


# -- load generators -------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def python_load(
    url: str,
    body: bytes,
    *,
    concurrency: int,
    duration_s: float | None = None,
    total: int | None = None,
    timeout_s: float = 30.0,
) -> Point:
    """A closed loop of ``concurrency`` workers (one keep-alive connection each) for
    ``duration_s`` seconds or ``total`` requests, whichever ends first."""
    import aiohttp

    assert duration_s is not None or total is not None
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    errors = 0
    sent = 0
    stop_at = time.monotonic() + duration_s if duration_s is not None else None
    headers = {"Content-Type": "application/json"}

    def more() -> bool:
        nonlocal sent
        if stop_at is not None and time.monotonic() >= stop_at:
            return False
        if total is not None and sent >= total:
            return False
        sent += 1
        return True

    async def worker() -> None:
        nonlocal errors
        connector = aiohttp.TCPConnector(limit=1)
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while more():
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        statuses[str(r.status)] += 1
                except (aiohttp.ClientError, TimeoutError, OSError):
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)

    t_start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Point(
        concurrency=concurrency,
        generator="python",
        duration_s=round(time.monotonic() - t_start, 2),
        requests=sent,
        statuses=dict(sorted(statuses.items())),
        socket_errors=errors,
        p50_ms=round(percentile(latencies, 0.50), 1),
        p99_ms=round(percentile(latencies, 0.99), 1),
        max_ms=round(max(latencies, default=0.0), 1),
    )


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("BENCH_BODY"), "rb"):read("*a")
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for s, n in pairs(t:get("statuses")) do total[tostring(s)] = (total[tostring(s)] or 0) + n end
  end
  local parts = {}
  for s, n in pairs(total) do table.insert(parts, string.format('"%s": %d', s, n)) end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "statuses": {%s}, "socket_errors": %d, '
    .. '"p50_ms": %.1f, "p99_ms": %.1f, "max_ms": %.1f, "duration_s": %.2f}\\n',
    summary.requests, table.concat(parts, ", "),
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.duration / 1e6))
end
"""


def wrk_load(
    url: str, body: bytes, *, concurrency: int, duration_s: float, timeout_s: float, workdir: Path
) -> Point:
    """``wrk`` with as many connections as ``concurrency`` (statuses from its Lua hooks)."""
    script = workdir / "overload.lua"
    script.write_text(_WRK_SCRIPT)
    body_path = workdir / "body.json"
    body_path.write_bytes(body)
    threads = max(1, min(concurrency, os.cpu_count() or 1))
    proc = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{max(1, round(duration_s))}s",
            f"--timeout={max(1, round(timeout_s))}s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY": str(body_path)},
        timeout=duration_s + timeout_s + 60,
    )
    found = re.search(r"^BENCH (\{.*\})$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    data = json.loads(found.group(1))
    return Point(
        concurrency=concurrency,
        generator="wrk",
        duration_s=data["duration_s"],
        requests=data["requests"],
        statuses=dict(sorted(data["statuses"].items())),
        socket_errors=data["socket_errors"],
        p50_ms=data["p50_ms"],
        p99_ms=data["p99_ms"],
        max_ms=data["max_ms"],
    )


# -- the run ---------------------------------------------------------------------------------


def render(points: list[Point], args: argparse.Namespace) -> str:
    lines = [
        f"model: [1, {args.width}] x {args.rows} rows x {args.depth} MatMuls; "
        f"queue {args.queue}/model, queue delay {args.queue_delay_ms:g} ms, "
        f"rate limit {args.rate_limit_rps:g}/s; timeout {args.timeout_ms} ms; "
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "",
        "| c | generator | requests | 200 | 429 | 503 | socket errors | p50 ms | p99 ms | "
        "max ms | shed rate |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        s = p.statuses
        lines.append(
            f"| {p.concurrency} | {p.generator} | {p.requests} | {s.get('200', 0)} | "
            f"{s.get('429', 0)} | {s.get('503', 0)} | {p.socket_errors} | {p.p50_ms:.1f} | "
            f"{p.p99_ms:.1f} | {p.max_ms:.1f} | {p.shed_rate:.1%} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--queue", type=int, default=64, help="CIDSERVE_MAX_QUEUE_PER_MODEL")
    parser.add_argument("--queue-delay-ms", type=float, default=2000.0)
    parser.add_argument("--rate-limit-rps", type=float, default=0.0)
    parser.add_argument("--timeout-ms", type=int, default=10_000, help="request deadline")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--depth", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="c = 16 and 64, 3 s each")
    parser.add_argument("--json", type=Path, help="write the points as JSON too")
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.duration = [16, 64], 3.0
    if args.generator == "auto":
        args.generator = "wrk" if shutil.which("wrk") else "python"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = {
        "CIDSERVE_MAX_QUEUE_PER_MODEL": str(args.queue),
        "CIDSERVE_MAX_QUEUE_DELAY_MS": str(args.queue_delay_ms),
        "CIDSERVE_RATE_LIMIT_RPS": str(args.rate_limit_rps),
        "CIDSERVE_INFERENCE_TIMEOUT_MS": str(args.timeout_ms),
    }
    env = {k: os.environ.get(k, v) for k, v in env.items()}
    points: list[Point] = []
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        work = Path(tmp)
        model = slow_model(
            work / "overload.onnx", width=args.width, rows=args.rows, depth=args.depth
        )
        cid = publish(work / "data", model)
        with gateway(work / "data", env, work / "gateway.log") as base:
            model_id = load_model(base, cid)
            url = f"{base}/v2/models/{model_id}/infer"
            body = infer_body(args.width)
            # A short warm-up, untimed.
            asyncio.run(python_load(url, body, concurrency=2, total=10))
            timeout_s = args.timeout_ms / 1000 + 5
            for c in args.concurrency:
                if args.generator == "wrk":
                    point = wrk_load(
                        url, body, concurrency=c, duration_s=args.duration,
                        timeout_s=timeout_s, workdir=work,
                    )  # fmt: skip
                else:
                    point = asyncio.run(
                        python_load(
                            url, body, concurrency=c, duration_s=args.duration, timeout_s=timeout_s
                        )
                    )
                points.append(point)
                print(f"c={c}: {asdict(point)}", file=sys.stderr, flush=True)
    print(render(points, args))
    if args.json:
        rows = [{**asdict(p), "shed_rate": p.shed_rate} for p in points]
        args.json.write_text(json.dumps({"points": rows, "args": vars(args)}, default=str))
    problems = [f"c={p.concurrency}: {x}" for p in points for x in p.problems(args.timeout_ms)]
    for line in problems:
        print("FAIL " + line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
