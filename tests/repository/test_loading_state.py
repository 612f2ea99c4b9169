"""A load under way shows in ``GET /api/models`` under ``loading``: its metadata CID, its stage,
the bytes fetched and the declared size; it leaves the list when the load ends, loaded or
refused."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx

from registry.local_store import LocalContentStore
from registry.publish import PublishResult
from services.http.app import create_app
from services.settings import Settings
from services.wiring import build_services
from tests.harness import ServerThread


def _watch_load(
    client: httpx.Client, metadata_cid: str, deadline_s: float = 120
) -> tuple[list[dict[str, Any]], httpx.Response]:
    """Load ``metadata_cid`` in a thread; return what ``loading`` showed meanwhile and the
    load's reply."""
    reply: dict[str, httpx.Response] = {}

    def load() -> None:
        reply["r"] = client.post("/api/models/load", json={"metadataCid": metadata_cid})

    t = threading.Thread(target=load)
    t.start()
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + deadline_s
    while t.is_alive() and time.monotonic() < deadline:
        r = client.get("/api/models")
        assert r.status_code == 200, r.text
        seen.extend(r.json()["loading"])
        time.sleep(0.02)
    t.join(deadline_s)
    assert not t.is_alive(), "the load did not end"
    return seen, reply["r"]


def test_a_slow_load_shows_its_stage_and_size_until_it_is_loaded(
    tmp_path: Path, unit_store: LocalContentStore, slow: PublishResult
) -> None:
    # The warm-up deadline leaves room for a busy machine: the point is to see it run.
    settings = Settings(
        data_dir=tmp_path / "data", prediction_cache=False, warmup_timeout_ms=60_000
    )
    services = build_services(settings, store=unit_store)
    with (
        ServerThread(create_app(settings, services)) as srv,
        httpx.Client(base_url=srv.url, timeout=120) as client,
    ):
        assert client.get("/api/models").json()["loading"] == []
        seen, r = _watch_load(client, slow.metadata_cid)
        assert r.status_code == 200, r.text
        assert seen, "the load never showed under loading"
        for entry in seen:
            assert entry["metadataCid"] == slow.metadata_cid
            assert entry["tokenId"] is None
            assert entry["stage"] in (
                "fetching metadata",
                "fetching model",
                "building",
                "warming up",
            )
        later = [e for e in seen if e["stage"] in ("building", "warming up")]
        # The slow model's warm-up run takes about a second: it is seen warming up.
        assert "warming up" in {e["stage"] for e in later}
        for entry in later:
            assert entry["name"] == "slow"
            assert entry["size_bytes"] == slow.metadata.model.size
            assert entry["bytes_fetched"] == entry["size_bytes"]  # the file is all there
        # Stages only move forward, and time only grows.
        order = ["fetching metadata", "fetching model", "building", "warming up"]
        ranks = [order.index(e["stage"]) for e in seen]
        assert ranks == sorted(ranks)
        elapsed = [e["elapsed_ms"] for e in seen]
        assert elapsed == sorted(elapsed)
        after = client.get("/api/models").json()
        assert after["loading"] == []
        assert [m["metadataCid"] for m in after["models"]] == [slow.metadata_cid]


def test_a_refused_load_leaves_the_list(tmp_path: Path, unit_store: LocalContentStore) -> None:
    """A load that fails (here: the metadata is not in the store) is not left showing."""
    settings = Settings(data_dir=tmp_path / "data", prediction_cache=False)
    services = build_services(settings, store=unit_store)
    missing = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    with (
        ServerThread(create_app(settings, services)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        r = client.post("/api/models/load", json={"metadataCid": missing})
        assert r.status_code == 404, r.text
        assert client.get("/api/models").json()["loading"] == []
