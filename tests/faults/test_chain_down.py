"""The chain's RPC node (anvil) is stopped under load, then started again.

A gateway checks licenses on a real chain (``tests/anvil.py``, the ModelLicense contract),
caching each caller's license for a few seconds. While anvil is down: a caller whose license
was checked just before keeps being served until the cache entry lapses, then is refused; a
caller never checked is refused at once (503 + ``Retry-After``: licensing fails closed); an
open model answers 200 throughout. Once the same chain (same port, same state) is back, every
licensee is served again within 5 s.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
from eth_account.signers.local import LocalAccount

from registry.local_store import LocalContentStore
from registry.publish import publish_model
from services.chain.client import sign_url
from services.http.app import create_app
from services.wiring import build_services
from tests.anvil import Anvil, deploy_license
from tests.conftest import make_settings
from tests.faults.linear import Linear
from tests.faults.load import Call, Load, Outcome, assert_nothing_lies, summary
from tests.harness import ServerThread
from tests.models import linear_model

CACHE_TTL_S = 4.0
INFERENCE_TIMEOUT_MS = 2000
JSON = {"Content-Type": "application/json"}


def statuses(outcomes: list[Outcome], kind: str, start: float, end: float) -> list[int | None]:
    return [o.status for o in outcomes if o.kind == kind and start <= o.sent_at <= end]


def test_chain_down_under_load(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path / "store")
    lic_pub = asyncio.run(publish_model(store, linear_model(tmp_path / "l.onnx", seed=4), name="l"))
    open_pub = asyncio.run(
        publish_model(store, linear_model(tmp_path / "o.onnx", seed=5), name="o")
    )
    lic, opened = Linear(4), Linear(5)
    anvil = Anvil(tmp_path / "anvil")
    try:
        anvil.start()
        chain = deploy_license(anvil)
        token = int(chain.client().mint(lic_pub.metadata_cid).value)
        expires = anvil.chain_time() + 3600
        users: dict[str, LocalAccount] = {}
        for name in ("cached", "uncached", "steady"):
            users[name] = anvil.funded_account()
            chain.client().grant(token, users[name].address, expires)
        settings = make_settings(
            tmp_path,
            chain_rpc_url=anvil.url,
            license_contract=chain.contract,
            chain_id=31337,
            chain_timeout_s=1.0,
            license_cache_ttl_s=CACHE_TTL_S,
            license_negative_cache_ttl_s=0.2,
            prediction_cache=False,
            inference_timeout_ms=INFERENCE_TIMEOUT_MS,
        )
        services = build_services(settings, store=store)
        with (
            ServerThread(create_app(settings, services)) as srv,
            httpx.Client(base_url=srv.url, timeout=30) as client,
        ):
            r = client.post(
                "/api/models/load", json={"metadataCid": lic_pub.metadata_cid, "tokenId": token}
            )
            assert r.status_code == 200, r.text
            r = client.post("/api/models/load", json={"metadataCid": open_pub.metadata_cid})
            assert r.status_code == 200, r.text
            outage = threading.Event()
            counter = iter(range(1 << 30))

            def execute(kind: str, account: LocalAccount | None) -> Call:
                model, linear = (lic_pub, lic) if account is not None else (open_pub, opened)
                body, x = linear.execute_body(model.model_id, next(counter))
                headers = dict(JSON)
                if account is not None:
                    url = srv.url + "/api/inference/execute"
                    headers |= sign_url(account.key, "POST", url, headers, body)
                return Call(
                    kind,
                    "POST",
                    "/api/inference/execute",
                    check=lambda r: linear.execute_is_right(r, x),
                    headers=headers,
                    content=body,
                )

            def make_call(i: int) -> Call | None:
                if i < 2:
                    return execute("open", None)
                if i == 2:
                    return execute("steady", users["steady"])
                # These two first ask once the chain is down (one was checked just before).
                if not outage.is_set():
                    return None
                name = "cached" if i == 3 else "uncached"
                return execute(name, users[name])

            with Load(srv.url, make_call, clients=5) as load:
                time.sleep(1.0)
                primed_at = time.monotonic()
                prime = client.post(
                    "/api/inference/execute",
                    content=(call := execute("prime", users["cached"])).content,
                    headers=call.headers,
                )
                assert prime.status_code == 200 and call.check(prime), prime.text
                primed_end = time.monotonic()
                stopping_at = time.monotonic()
                anvil.stop()
                down_at = time.monotonic()
                outage.set()
                time.sleep(max(0.0, primed_end + CACHE_TTL_S + 1.5 - time.monotonic()))
                starting_at = time.monotonic()
                anvil.start()  # same port, same state (dumped at stop, loaded at start)
                back_at = time.monotonic()
                deadline = back_at + 5
                while time.monotonic() < deadline:
                    seen = load.since(back_at)
                    if all(
                        any(o.kind == k and o.status == 200 for o in seen)
                        for k in ("cached", "uncached", "steady")
                    ):
                        break
                    time.sleep(0.05)
                time.sleep(0.3)
            outcomes = load.stop()
    finally:
        anvil.close()

    counts = summary(outcomes)
    assert_nothing_lies(outcomes, max_latency_s=INFERENCE_TIMEOUT_MS / 1000)
    assert all(o.status is not None for o in outcomes), counts
    # Open models never depend on the chain.
    assert all(o.status == 200 for o in outcomes if o.kind == "open"), counts
    assert set(statuses(outcomes, "steady", 0, stopping_at)) == {200}, counts
    # Fail closed: a license never checked cannot be served while the chain is down.
    assert set(statuses(outcomes, "uncached", down_at, starting_at)) == {503}, counts
    # Served from the cache while it lasts, refused after (never a 200 once refused).
    # (sent at least 1 s before the entry can expire: under load a request may wait in the
    # server that long before its license is looked up)
    still_cached = statuses(outcomes, "cached", down_at, primed_at + CACHE_TTL_S - 1.0)
    lapsed = statuses(outcomes, "cached", primed_end + CACHE_TTL_S + 0.2, starting_at)
    assert still_cached and set(still_cached) == {200}, counts
    assert lapsed and set(lapsed) == {503}, counts
    for kind in ("cached", "steady"):
        during = [o for o in outcomes if o.kind == kind and down_at <= o.sent_at < starting_at]
        refused = [o.sent_at for o in during if o.status == 503]
        assert all(o.status == 503 for o in during if refused and o.sent_at > refused[0])
    # Back within 5 s of the restart, for every licensee.
    recovery = {}
    for kind in ("cached", "uncached", "steady"):
        ok = [
            o.ended_at
            for o in outcomes
            if o.kind == kind and o.sent_at >= back_at and o.status == 200
        ]
        assert ok, f"{kind} never served again: {counts}"
        recovery[kind] = round(ok[0] - back_at, 2)
        assert ok[0] - back_at < 5
        late = [o for o in outcomes if o.kind == kind and o.sent_at > ok[0]]
        assert all(o.status == 200 for o in late), counts
    print(
        f"\nchain down: {counts}; licensed requests back after {recovery} s; max latency "
        f"{max(o.latency_s for o in outcomes) * 1000:.0f} ms"
    )
