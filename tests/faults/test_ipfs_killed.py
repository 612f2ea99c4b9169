"""The IPFS node is killed while a model is being fetched from it, under load.

A gateway reads its content from a real node (js-ipfs, ``tests/ipfs_node.py``). A small model
is loaded and three clients keep running it; then a model of a few megabytes is loaded and
the node is killed (SIGKILL) while its bytes are flowing. The load must end in a typed error
within the IPFS timeouts, nothing partial may be kept, the loaded model keeps answering, and
once the same node (same repository, same ports) is back, the load succeeds within 5 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from registry.blob_cache import BlobCache
from registry.blob_record import TMP_PREFIX
from registry.ipfs_store import IpfsConfig, IpfsContentStore
from registry.publish import PublishResult, publish_model
from services.http.app import create_app
from services.wiring import build_services
from tests.conftest import make_settings
from tests.faults.linear import Linear
from tests.faults.load import Call, Load, assert_nothing_lies, summary
from tests.harness import ServerThread
from tests.ipfs_node import IpfsNode
from tests.models import linear_model

BIG = 2560  # y = x W + b with W 2560 x 2560: a 25 MiB model file
INFERENCE_TIMEOUT_MS = 2000
SETTINGS: dict[str, object] = {
    "prediction_cache": False,
    "inference_timeout_ms": INFERENCE_TIMEOUT_MS,
    "ipfs_timeout_s": 3.0,
    "ipfs_find_timeout_s": 1.0,
    "ipfs_retries": 1,
    "ipfs_retry_backoff_s": 0.05,
    "ipfs_fetch_timeout_s": 15.0,
}
JSON = {"Content-Type": "application/json"}


def publish(node: IpfsNode, work: Path) -> tuple[PublishResult, PublishResult]:
    async def main() -> tuple[PublishResult, PublishResult]:
        store = IpfsContentStore(
            IpfsConfig(api_url=node.api_url), BlobCache(work / "publisher", 1 << 30)
        )
        try:
            small = await publish_model(store, linear_model(work / "s.onnx", seed=1), name="s")
            big_path = linear_model(work / "b.onnx", n_in=BIG, n_out=BIG, seed=2)
            big = await publish_model(store, big_path, name="big")
            return small, big
        finally:
            await store.aclose()

    return asyncio.run(main())


def kept_files(data_dir: Path, cid: str) -> list[Path]:
    """The blob cache's files of ``cid`` and any write left in progress."""
    root = data_dir / "blob-cache"
    return [p for p in root.rglob("*") if p.name.startswith((cid, TMP_PREFIX))]


def test_node_killed_mid_load(tmp_path: Path) -> None:
    node = IpfsNode(tmp_path / "node")
    try:
        node.start()
        small, big = publish(node, tmp_path)
        big_size = (tmp_path / "b.onnx").stat().st_size
        settings = make_settings(tmp_path, ipfs_api_url=node.api_url, **SETTINGS)
        services = build_services(settings)
        store = services.store
        assert isinstance(store, IpfsContentStore)
        small_lin, big_lin = Linear(1), Linear(2, BIG, BIG)
        rng = np.random.default_rng(7)

        def infer(_client: int) -> Call:
            x = rng.standard_normal(8).astype(np.float32)
            return Call(
                "infer",
                "POST",
                f"/v2/models/{small.model_id}/infer",
                check=lambda r: small_lin.v2_is_right(r, x),
                headers=JSON,
                content=small_lin.v2_body(x),
            )

        with (
            ServerThread(create_app(settings, services)) as srv,
            httpx.Client(base_url=srv.url, timeout=60) as client,
        ):
            r = client.post("/api/models/load", json={"metadataCid": small.metadata_cid})
            assert r.status_code == 200, r.text
            with Load(srv.url, infer, clients=3) as load:
                time.sleep(0.5)
                result: dict[str, object] = {}

                def load_big() -> None:
                    t0 = time.monotonic()
                    result["reply"] = httpx.post(
                        srv.url + "/api/models/load",
                        json={"metadataCid": big.metadata_cid},
                        timeout=60,
                    )
                    result["took"] = time.monotonic() - t0

                # The node dies the moment the model's bytes flow (past the metadata): the
                # store tells its fetch listeners of every batch received, on its event loop.
                assert node.proc is not None
                victim = node.proc.pid
                fired = threading.Event()
                flowed = {"at_kill": 0}
                start = store.bytes_fetched

                def on_bytes(_n: int) -> None:
                    if not fired.is_set() and store.bytes_fetched - start >= 64 * 1024:
                        fired.set()
                        flowed["at_kill"] = store.bytes_fetched - start
                        os.killpg(victim, signal.SIGKILL)

                store.add_fetch_listener(on_bytes)
                loader = threading.Thread(target=load_big)
                loader.start()
                assert fired.wait(20), "the model never started to flow"
                node.kill()  # reaps the killed group
                killed_at = time.monotonic()
                fetched = flowed["at_kill"]
                loader.join(timeout=30)
                assert not loader.is_alive()
                assert fetched < big_size, "the fetch ended before the node was killed"

                reply = result["reply"]
                assert isinstance(reply, httpx.Response)
                took = float(result["took"])  # type: ignore[arg-type]
                assert reply.status_code in (503, 504), reply.text
                doc = reply.json()
                assert doc["success"] is False and doc["cid"]
                if reply.status_code == 503:
                    assert int(reply.headers["Retry-After"]) > 0
                assert took < float(SETTINGS["ipfs_fetch_timeout_s"])  # type: ignore[arg-type]
                assert kept_files(tmp_path / "data", big.model_cid) == []

                # While the node is down: a new load is refused at once, the model is not
                # listed, and the loaded one keeps answering (the load counts that).
                t0 = time.monotonic()
                again = client.post("/api/models/load", json={"metadataCid": big.metadata_cid})
                assert again.status_code == 503 and int(again.headers["Retry-After"]) > 0
                assert time.monotonic() - t0 < 5
                ids = [m["model_id"] for m in client.get("/api/models").json()["models"]]
                assert ids == [small.model_id]
                time.sleep(1.0)

                node.start()  # the same repository on the same ports
                back_at = time.monotonic()
                while True:
                    r = client.post("/api/models/load", json={"metadataCid": big.metadata_cid})
                    if r.status_code == 200:
                        break
                    assert r.status_code in (503, 504), r.text
                    assert time.monotonic() - back_at < 5, f"no load 5 s after restart: {r.text}"
                    time.sleep(0.2)
                recovered_s = time.monotonic() - back_at
                x = rng.standard_normal(BIG).astype(np.float32)
                r = client.post(
                    f"/v2/models/{big.model_id}/infer", content=big_lin.v2_body(x), headers=JSON
                )
                assert r.status_code == 200 and big_lin.v2_is_right(r, x), r.text[:300]
                assert kept_files(tmp_path / "data", big.model_cid)  # now complete, kept
                time.sleep(0.3)
            outcomes = load.stop()

        during = [o for o in outcomes if killed_at <= o.sent_at <= back_at]
        assert during, "no request ran while the node was down"
        assert_nothing_lies(outcomes, max_latency_s=INFERENCE_TIMEOUT_MS / 1000)
        assert all(o.status == 200 for o in outcomes), summary(outcomes)
        print(
            f"\nipfs killed: load answered {reply.status_code} in {took:.2f} s "
            f"({fetched} of {big_size} bytes fetched); {summary(outcomes)}; "
            f"max infer latency {max(o.latency_s for o in outcomes) * 1000:.0f} ms; "
            f"load back {recovered_s:.2f} s after the node answered"
        )
    finally:
        node.kill()
