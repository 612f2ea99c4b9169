"""Cold load of a model from an IPFS node: what block-by-block verification costs.

For ResNet-18 (random weights, ~47 MB, a UnixFS DAG of 179 raw leaves) published to a real
IPFS node (js-ipfs, started here on free 127.0.0.1 ports with a fresh repository), it
measures in the same run, on the same CID, repetitions interleaved (the order rotates) so that
load from other processes falls on every path alike:

* ``cat``: the node's plain ``POST /api/v0/cat`` streamed into a file with httpx (the same
  client library and limits as the store): the download alone, nothing verified.
* ``fetch+verify``: ``IpfsContentStore.get_path`` into an empty blob cache (one store for the
  run, as in the service: its connections stay open like the ``cat`` client's): the root and the
  dag-pb nodes by ``block/get``, then the file by ``cat``, each 256 KiB range hashed and
  compared with the CID of its raw leaf, written and committed to the cache.
* ``fetch+verify (CAR)``: the same CID with ``IpfsConfig(file_stream=False)``: the store
  walks the blocks of a ``dag/export`` CAR stream instead of checking ``cat`` leaf by leaf.
* ``fetch+verify (CAR, dag-pb leaves)``: the same file added with ``cid-version=0`` (dag-pb
  leaves, which the file stream cannot be checked against): the path other layouts take.
* ``session``: ``services.runtime.create_session`` on the local file (ONNX Runtime
  ``InferenceSession`` with the service's settings).
* ``fetch+verify+session``: the two above back to back, as a cold load does them.
* ``service load``: ``POST /api/models/load`` on a gateway (in this process, on a free port)
  with an empty blob cache and session cache: metadata, labels and model fetched and
  verified, the loader's size and SHA-256 check, session, warm-up run.

Run from the repository root (needs ``npm ci`` for js-ipfs and the ``[export]`` extra)::

    .venv/bin/python benchmarks/bench_cold_load.py              # 7 repetitions, ~1 minute
    .venv/bin/python benchmarks/bench_cold_load.py --reps 15 --json /tmp/cold.json

It prints a markdown table of medians (and min/max) and the verification overhead over
``cat``. ``--transports`` adds the bare transfer (read and thrown away) by ``cat``,
``dag/export`` and ``block/get`` of every block (8 in flight): why the store reads raw leaves
from the file stream. The node is stopped (its process group killed) on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from registry import export  # noqa: E402
from registry.blob_cache import BlobCache  # noqa: E402
from registry.dagpb import decode_node  # noqa: E402
from registry.ipfs_store import IpfsConfig, IpfsContentStore  # noqa: E402
from registry.publish import publish_model  # noqa: E402
from registry.unixfs import cid_to_str  # noqa: E402
from services.runtime.session import SessionConfig, create_session  # noqa: E402
from tests.ipfs_node import IpfsNode  # noqa: E402

PATHS = (
    "cat",
    "fetch+verify",
    "fetch+verify (CAR)",
    "fetch+verify (CAR, dag-pb leaves)",
    "session",
    "fetch+verify+session",
    "service load",
)
TRANSPORTS = ("transfer: cat", "transfer: dag/export", "transfer: block/get x8")
"""``--transports``: the bytes only (read and thrown away), by each way of asking the node."""


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


class Bench:
    def __init__(self, node: IpfsNode, work: Path, model: Path, cids: dict[str, str]) -> None:
        self.node = node
        self.work = work
        self.model = model
        self.cids = cids
        self.config = IpfsConfig(api_url=node.api_url)
        self.session_config = SessionConfig()
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=2, read=30, write=30, pool=30),
            limits=httpx.Limits(max_connections=8, keepalive_expiry=4.0),
            trust_env=False,
        )
        self.store = IpfsContentStore(self.config, BlobCache(work / "unused", 1 << 34))
        self.car_store = IpfsContentStore(
            IpfsConfig(api_url=node.api_url, file_stream=False), BlobCache(work / "unused", 1)
        )
        self.results: dict[str, list[float]] = {name: [] for name in PATHS}
        self._n = 0

    async def _transfer(self, endpoint: str) -> float:
        t0 = time.perf_counter()
        async with self.client.stream(
            "POST", f"{self.node.api_url}/api/v0/{endpoint}", params={"arg": self.cids["model"]}
        ) as r:
            r.raise_for_status()
            async for _ in r.aiter_raw():
                pass
        return time.perf_counter() - t0

    async def transfer_cat(self) -> float:
        return await self._transfer("cat")

    async def transfer_export(self) -> float:
        return await self._transfer("dag/export")

    async def transfer_blocks(self) -> float:
        """Every block by ``block/get``, 8 in flight, the DAG walked level by level."""
        sem = asyncio.Semaphore(8)
        url = f"{self.node.api_url}/api/v0/block/get"

        async def get(cid: str) -> bytes:
            async with sem:
                r = await self.client.post(url, params={"arg": cid})
                r.raise_for_status()
                return r.content

        t0 = time.perf_counter()
        level = [self.cids["model"]]
        while level:
            blocks = await asyncio.gather(*(get(c) for c in level))
            level = [
                cid_to_str(link.hash)
                for c, block in zip(level, blocks, strict=True)
                if c.startswith("bafy")
                for link in decode_node(block).links
            ]
        return time.perf_counter() - t0

    def _fresh_dir(self) -> Path:
        self._n += 1
        path = self.work / f"run-{self._n}"
        path.mkdir()
        return path

    async def cat(self) -> float:
        target = self._fresh_dir() / "model.onnx"
        t0 = time.perf_counter()
        with target.open("wb") as f:
            async with self.client.stream(
                "POST", f"{self.node.api_url}/api/v0/cat", params={"arg": self.cids["model"]}
            ) as r:
                r.raise_for_status()
                async for chunk in r.aiter_raw():
                    f.write(chunk)
        elapsed = time.perf_counter() - t0
        assert target.stat().st_size == self.model.stat().st_size
        shutil.rmtree(target.parent)
        return elapsed

    async def _fetch(self, then_session: bool, cid_key: str = "model", car: bool = False) -> float:
        # One store for the whole run, as in the service (its connections stay open, as the
        # `cat` client's do); an empty blob cache every time, so every fetch is cold.
        cache_dir = self._fresh_dir()
        store = self.car_store if car else self.store
        store.cache = BlobCache(cache_dir, 1 << 34)
        t0 = time.perf_counter()
        path = await store.get_path(self.cids[cid_key], 1 << 34)
        if then_session:
            await asyncio.to_thread(create_session, path, self.session_config)
        elapsed = time.perf_counter() - t0
        shutil.rmtree(cache_dir)
        return elapsed

    async def fetch_verify(self) -> float:
        return await self._fetch(False)

    async def fetch_verify_car(self) -> float:
        return await self._fetch(False, car=True)

    async def fetch_verify_car_v0(self) -> float:
        return await self._fetch(False, "model_v0")

    async def fetch_verify_session(self) -> float:
        return await self._fetch(True)

    async def session(self) -> float:
        t0 = time.perf_counter()
        await asyncio.to_thread(create_session, self.model, self.session_config)
        return time.perf_counter() - t0

    async def service_load(self) -> float:
        from services.http.app import create_app
        from services.settings import Settings
        from services.wiring import build_services
        from tests.harness import ServerThread

        data_dir = self._fresh_dir()
        settings = Settings(  # type: ignore[call-arg]
            data_dir=data_dir, ipfs_api_url=self.node.api_url, prediction_cache=False
        )
        services = build_services(settings)
        with ServerThread(create_app(settings, services)) as srv:
            async with httpx.AsyncClient(base_url=srv.url, timeout=120, trust_env=False) as c:
                t0 = time.perf_counter()
                r = await c.post("/api/models/load", json={"metadataCid": self.cids["metadata"]})
                elapsed = time.perf_counter() - t0
                r.raise_for_status()
        shutil.rmtree(data_dir)
        return elapsed

    async def run(self, reps: int, transports: bool) -> None:
        steps: list[tuple[str, Callable[[], Awaitable[float]]]] = [
            ("cat", self.cat),
            ("fetch+verify", self.fetch_verify),
            ("fetch+verify (CAR)", self.fetch_verify_car),
            ("fetch+verify (CAR, dag-pb leaves)", self.fetch_verify_car_v0),
            ("session", self.session),
            ("fetch+verify+session", self.fetch_verify_session),
            ("service load", self.service_load),
        ]
        if transports:
            steps += [
                ("transfer: cat", self.transfer_cat),
                ("transfer: dag/export", self.transfer_export),
                ("transfer: block/get x8", self.transfer_blocks),
            ]
            for name in TRANSPORTS:
                self.results[name] = []
        # One untimed round: the node's block cache and the page cache warm up alike.
        for _, step in steps:
            await step()
        for rep in range(reps):
            order = steps[rep % len(steps) :] + steps[: rep % len(steps)]
            for name, step in order:
                self.results[name].append(await step())
            print(f"  repetition {rep + 1}/{reps} done", file=sys.stderr, flush=True)
        await self.client.aclose()
        await self.store.aclose()
        await self.car_store.aclose()


def table(results: dict[str, list[float]], size: int) -> str:
    cat = statistics.median(results["cat"])
    lines = [
        "| path | median ms | min ms | max ms | vs cat |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in (*PATHS, *(t for t in TRANSPORTS if t in results)):
        values = results[name]
        med = statistics.median(values)
        base = statistics.median(results["transfer: cat"]) if name in TRANSPORTS else cat
        rel = f"{med / base:.2f}x" if name != "session" else ""
        lines.append(f"| {name} | {_ms(med)} | {_ms(min(values))} | {_ms(max(values))} | {rel} |")
    overhead = statistics.median(results["fetch+verify"]) / cat - 1
    # Paired: each repetition's fetch+verify over the cat measured next to it (the same load
    # from other processes falls on both), then the median of those ratios.
    paired = statistics.median(
        f / c for f, c in zip(results["fetch+verify"], results["cat"], strict=True)
    )
    lines.append("")
    lines.append(
        f"Model {size / 1e6:.1f} MB. Verification over `cat`: {overhead * 100:+.0f}% "
        f"(median of fetch+verify vs median of cat), {(paired - 1) * 100:+.0f}% (median of "
        f"the per-repetition ratios); {len(results['cat'])} repetitions."
    )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="cidserve-coldload-"))
    node = IpfsNode(work / "node")
    try:
        model = work / "resnet18.onnx"
        print("exporting ResNet-18 ...", file=sys.stderr, flush=True)
        export.build_resnet18(model, seed=0)
        print("starting the IPFS node ...", file=sys.stderr, flush=True)
        await asyncio.to_thread(node.start)
        publisher = IpfsContentStore(IpfsConfig(api_url=node.api_url), BlobCache(work / "p", 1))
        try:
            pub = await publish_model(
                publisher, model, name="resnet18", labels=export.imagenet_labels()
            )
        finally:
            await publisher.aclose()
        model_v0 = await asyncio.to_thread(node.add, model.read_bytes(), **{"cid-version": "0"})
        cids = {"model": pub.model_cid, "metadata": pub.metadata_cid, "model_v0": model_v0}
        bench = Bench(node, work, model, cids)
        load = os.getloadavg()
        print(f"measuring {args.reps} repetitions ...", file=sys.stderr, flush=True)
        await bench.run(args.reps, args.transports)
        load_after = os.getloadavg()
        size = model.stat().st_size
        node_version = node.rpc("version").json().get("Version")
        print(table(bench.results, size))
        print(
            f"\n{platform.platform()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, js-ipfs {node_version}; 1-min load average "
            f"{load[0]:.1f} before, {load_after[0]:.1f} after."
        )
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "model_bytes": size,
                        "model_cid": cids["model"],
                        "results_s": bench.results,
                        "load_average": [load[0], load_after[0]],
                        "node": node_version,
                    },
                    indent=2,
                )
            )
        return 0
    finally:
        node.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=7, help="timed repetitions of every path")
    p.add_argument("--json", help="also write the raw timings here")
    p.add_argument(
        "--transports",
        action="store_true",
        help="also time the bare transfer by cat, dag/export and block/get (8 in flight)",
    )
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
