"""The router of deploy/router/ in front of three real replicas: model affinity, measured.

HAProxy runs from deploy/router/haproxy.cfg as shipped, with only the addresses rewritten to
loopback (the replicas' ports, the router's own). Three ``cidserve serve`` processes share one
Redis (a private key prefix) and one data directory (the content store holding nine small
models); each may hold six models in memory, so no replica can hold all nine. A Zipf(1.1)
stream of distinct requests (prediction cache off) goes once through a round-robin twin of the
router and once through the router itself; the fleet's session-cache miss rate, read from each
replica's ``GET /api/models`` counters, must drop to a third or less. Then a replica is stopped
in the middle of a stream: no request fails, and the only new loads are the stopped
replica's models finding a new home. docs/SCALING.md records the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from tests.harness import ServiceProcess, free_port
from tests.models import linear_model
from tests.redis_support import REDIS_URL, delete_prefix, require_redis, unique_prefix

REPO = Path(__file__).resolve().parents[2]
ROUTER_CFG = REPO / "deploy" / "router" / "haproxy.cfg"
COMPOSE = REPO / "docker-compose.yml"
CIDSERVE = [sys.executable, "-m", "services.cli"]
REPLICAS = ("cidserve-1", "cidserve-2", "cidserve-3")
N_MODELS = 9
MODELS_PER_REPLICA = 6
ZIPF_S = 1.1
STREAM = 1000
CLIENTS = 4
# Seconds a stopped replica keeps answering (readiness 503) before it closes its socket: more
# than the router's two failed checks one second apart.
DRAIN_DELAY_S = 3.0


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if found is None:
        pytest.fail("haproxy is not installed: run scripts/ci-deps.sh")
    return found


def loopback_config(ports: dict[str, int], listen: int, *, round_robin: bool = False) -> str:
    """deploy/router/haproxy.cfg with each ``cidserve-N:8000`` and the listener on loopback;
    ``round_robin`` swaps the balance line only, for the comparison."""
    text = ROUTER_CFG.read_text()
    for name, port in ports.items():
        text, n = re.subn(rf"\b{name}:8000\b", f"127.0.0.1:{port}", text)
        assert n == 1, f"{name}:8000 appears {n} times in {ROUTER_CFG.name}"
    text, n = re.subn(r"^(\s*)bind :8080$", rf"\1bind 127.0.0.1:{listen}", text, flags=re.M)
    assert n == 1, "the router listens on :8080"
    # No container DNS here: the servers are literal addresses.
    text = re.sub(r"^\s*nameserver .*$", "", text, flags=re.M)
    text = re.sub(r" resolvers docker| resolve-prefer ipv4", "", text)
    text = re.sub(r"^resolvers docker$.*?(?=^\S)", "", text, flags=re.M | re.S)
    if round_robin:
        text, n = re.subn(r"^(\s*)balance hash .*$", r"\1balance roundrobin", text, flags=re.M)
        assert n == 1
    return text


class Router:
    """``haproxy`` in the foreground on a loopback port, in its own process group."""

    def __init__(self, config: str, listen: int, workdir: Path, tag: str) -> None:
        self.url = f"http://127.0.0.1:{listen}"
        self.path = workdir / f"haproxy-{tag}.cfg"
        self.path.write_text(config)
        binary = haproxy_binary()
        check = subprocess.run(
            [binary, "-c", "-f", str(self.path)], capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 0, check.stdout + check.stderr
        self.log_path = workdir / f"haproxy-{tag}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [binary, "-db", "-f", str(self.path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_up(self, servers: int, timeout: float = 30) -> None:
        """Until the router answers and ``servers`` replicas pass its health check."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            with contextlib.suppress(httpx.HTTPError):
                seen = {
                    httpx.get(self.url + "/health/live", timeout=2).headers.get(
                        "x-cidserve-replica"
                    )
                    for _ in range(3 * servers)
                }
                if len(seen - {None}) == servers:
                    return
            time.sleep(0.2)
        raise AssertionError(f"router not up with {servers} replicas: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


@dataclass
class Fleet:
    replicas: dict[str, ServiceProcess]
    models: list[PublishResult]
    affinity: Router
    round_robin: Router


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_redis()
    root = tmp_path_factory.mktemp("router")
    data = root / "data"
    store = LocalContentStore(data / "store")  # the replicas' CIDSERVE_DATA_DIR/store
    models = [
        asyncio.run(
            publish_model(
                store, linear_model(root / f"m{seed}.onnx", seed=seed), name=f"route-{seed}"
            )
        )
        for seed in range(N_MODELS)
    ]
    prefix = unique_prefix("router")
    ports = {name: free_port() for name in REPLICAS}
    replicas: dict[str, ServiceProcess] = {}
    routers: list[Router] = []
    try:
        for name, port in ports.items():
            env = {
                "CIDSERVE_DATA_DIR": str(data),
                "CIDSERVE_PORT": str(port),
                "CIDSERVE_REDIS_URL": REDIS_URL,
                "CIDSERVE_REDIS_PREFIX": prefix,
                # Three replicas, the router and the clients share this machine's cores: a
                # looser bound than the default keeps a slow Redis answer from reading as an
                # outage (which would hide the fleet's index from a replica).
                "CIDSERVE_REDIS_TIMEOUT_MS": "250",
                "CIDSERVE_MAX_MODELS_IN_MEMORY": str(MODELS_PER_REPLICA),
                "CIDSERVE_PREDICTION_CACHE": "false",
                "CIDSERVE_SESSION_PROBE": "false",
                # As many loads at once as clients: round robin's reloads would otherwise
                # also be refused (503), which is not what is compared here.
                "CIDSERVE_MAX_CONCURRENT_LOADS": str(CLIENTS),
                "CIDSERVE_INTRA_OP_THREADS": "1",
                "CIDSERVE_DRAIN_DELAY_S": str(DRAIN_DELAY_S),
                "CIDSERVE_LOG_LEVEL": "warning",
            }
            replicas[name] = ServiceProcess([*CIDSERVE, "serve"], env, root / f"{name}.log")
        for svc in replicas.values():
            svc.wait_ready(timeout=120)
        # Each model is loaded once, so that the fleet's index knows it: from then on any
        # replica loads it on demand.
        first = replicas[REPLICAS[0]]
        for pub in models:
            r = httpx.post(
                first.url + "/api/models/load", json={"metadataCid": pub.metadata_cid}, timeout=60
            )
            assert r.status_code == 200, r.text
        for tag, rr in (("affinity", False), ("round-robin", True)):
            listen = free_port()
            routers.append(
                Router(loopback_config(ports, listen, round_robin=rr), listen, root, tag)
            )
        for router in routers:
            router.wait_up(len(REPLICAS))
        affinity, round_robin = routers
        models = balance_homes(models, affinity, store, root, first)
        yield Fleet(replicas, models, affinity, round_robin)
    finally:
        for router in routers:
            router.stop()
        for svc in replicas.values():
            svc.stop()
        delete_prefix(REDIS_URL, prefix)


def home_of(router: Router, model_id: str) -> str:
    """The replica the router sends ``model_id``'s requests to (a light request, keyed by
    the model id in its path)."""
    r = httpx.get(f"{router.url}/api/models/{model_id}", timeout=10)
    return r.headers["x-cidserve-replica"]


def balance_homes(
    models: list[PublishResult],
    router: Router,
    store: LocalContentStore,
    root: Path,
    first: ServiceProcess,
) -> list[PublishResult]:
    """The models, some published again under another name until no replica is home to more
    than its cache holds. Model ids (hence ring positions) change with every publish, and nine
    keys on a three-node ring are lumpy now and then (7/1/1): a placement no cache can serve
    says nothing about routing. How placements spread over many keys is the simulation's
    job (benchmarks/sim_affinity.py)."""
    models = list(models)
    for attempt in range(20):
        homes = {i: home_of(router, m.model_id) for i, m in enumerate(models)}
        load = Counter(homes.values())
        crowded = [r for r, n in load.items() if n > MODELS_PER_REPLICA - 1]
        if not crowded and len(load) >= 2:
            return models
        i = next(i for i, r in homes.items() if r in crowded or len(load) < 2)
        path = linear_model(root / f"m{i}-{attempt}.onnx", seed=i)
        pub = asyncio.run(publish_model(store, path, name=f"route-{i}-{attempt}"))
        r = httpx.post(
            first.url + "/api/models/load", json={"metadataCid": pub.metadata_cid}, timeout=60
        )
        assert r.status_code == 200, r.text
        models[i] = pub
    raise AssertionError("no balanced placement of the models in 20 publishes")


# -- the stream ---------------------------------------------------------------------------


def zipf_stream(n_models: int, length: int, s: float, seed: int) -> list[int]:
    """Model indices drawn from Zipf(s) over ``n_models`` (index 0 the hottest)."""
    weights = [1 / (k + 1) ** s for k in range(n_models)]
    return random.Random(seed).choices(range(n_models), weights=weights, k=length)


@dataclass
class Run:
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    answered_by: Counter[str] = field(default_factory=Counter)
    placement: Counter[tuple[str, str]] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _request(client: httpx.Client, model_id: str, i: int, rng: random.Random) -> httpx.Response:
    """Distinct inputs; the two routes carry the key two ways (header, path)."""
    x = [rng.uniform(-1, 1) for _ in range(8)]
    if i % 2 == 0:
        return client.post(
            "/api/inference/execute",
            json={"model_id": model_id, "input_data": {"format": "tensor", "content": [x]}},
            headers={"X-Model-Id": model_id},
        )
    body = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": x}]}
    return client.post(f"/v2/models/{model_id}/infer", json=body)


def drive(router: Router, model_ids: list[str], picks: list[int], run: Run, seed: int) -> None:
    """Send the stream through ``router`` from CLIENTS keep-alive clients."""
    local = threading.local()

    def one(i: int) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=router.url, timeout=60)
            local.rng = random.Random(seed * 1000 + threading.get_ident())
        start = time.perf_counter()
        try:
            r = _request(local.client, model_ids[picks[i]], i, local.rng)
        except httpx.HTTPError as exc:
            with run.lock:
                run.errors.append(f"{i}: {exc!r}")
            return
        elapsed = (time.perf_counter() - start) * 1000
        with run.lock:
            if r.status_code != 200:
                run.errors.append(f"{i}: {r.status_code} {r.text[:200]}")
            run.latencies_ms.append(elapsed)
            replica = r.headers.get("x-cidserve-replica", "?")
            run.answered_by[replica] += 1
            run.placement[(model_ids[picks[i]], replica)] += 1

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(one, range(len(picks))))


def counters(fleet: Fleet) -> dict[str, tuple[int, int]]:
    """(hits, misses) of each running replica's session cache."""
    out = {}
    for name, svc in fleet.replicas.items():
        if svc.proc.poll() is None:
            c = httpx.get(svc.url + "/api/models", timeout=10).json()["counters"]
            out[name] = (c["session_cache_hits"], c["session_cache_misses"])
    return out


def held(svc: ServiceProcess) -> set[str]:
    return {m["model_id"] for m in httpx.get(svc.url + "/api/models", timeout=10).json()["models"]}


@dataclass
class Measured:
    requests: int
    misses: int
    loads_by_replica: dict[str, int]
    run: Run

    @property
    def miss_rate(self) -> float:
        return self.misses / self.requests

    def row(self, label: str) -> str:
        loads = " / ".join(str(self.loads_by_replica.get(n, 0)) for n in REPLICAS)
        return (
            f"| {label} | {self.requests} | {self.miss_rate:.1%} | {self.run.percentile(0.5):.1f} "
            f"| {self.run.percentile(0.99):.1f} | {loads} |"
        )


def measure(fleet: Fleet, router: Router, picks: list[int], seed: int) -> Measured:
    model_ids = [m.model_id for m in fleet.models]
    before = counters(fleet)
    run = Run()
    drive(router, model_ids, picks, run, seed)
    after = counters(fleet)
    assert not run.errors, run.errors[:5]
    hits = sum(after[n][0] - before[n][0] for n in after)
    misses = {n: after[n][1] - before[n][1] for n in after}
    # Every request looked its model up on one replica (a request that waited for another's
    # load of its model looks once more, and finds it).
    assert hits + sum(misses.values()) >= len(picks)
    return Measured(len(picks), sum(misses.values()), misses, run)


# -- the tests ----------------------------------------------------------------------------


def test_the_shipped_config_names_the_replicas_and_checks_readiness() -> None:
    text = ROUTER_CFG.read_text()
    servers = re.findall(r"^\s*server (\S+) (\S+)", text, flags=re.M)
    assert servers == [(n, f"{n}:8000") for n in REPLICAS]
    assert re.search(r"^\s*bind :8080$", text, flags=re.M)
    assert re.search(r"^\s*hash-type consistent$", text, flags=re.M)
    assert re.search(r"^\s*hash-balance-factor \d+$", text, flags=re.M)
    assert "option httpchk GET /health/ready" in text
    # The compose stack runs what the router names, with this file mounted.
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert set(REPLICAS) <= set(services)
    router = services["router"]
    assert router["image"].startswith("haproxy:")
    assert any(str(v).startswith("./deploy/router:") for v in router["volumes"])
    assert any(str(p).endswith(":8080") for p in router["ports"])
    for name in REPLICAS:
        assert services[name]["environment"]["CIDSERVE_PORT"] == "8000"


def test_affinity_cuts_the_fleet_miss_rate_and_a_stopped_replica_costs_only_its_models(
    fleet: Fleet,
) -> None:
    model_ids = [m.model_id for m in fleet.models]
    # Requests without a model key are spread over every replica.
    spread = Counter(
        httpx.get(fleet.affinity.url + "/api/models", timeout=10).headers["x-cidserve-replica"]
        for _ in range(9)
    )
    assert set(spread) == set(REPLICAS), spread

    rr = measure(fleet, fleet.round_robin, zipf_stream(N_MODELS, STREAM, ZIPF_S, 1), 1)
    aff = measure(fleet, fleet.affinity, zipf_stream(N_MODELS, STREAM, ZIPF_S, 2), 2)
    print("\n| routing | requests | miss rate | p50 ms | p99 ms | loads per replica |")
    print(rr.row("round robin"))
    print(aff.row("model affinity"))
    assert aff.miss_rate <= 0.10, aff.row("model affinity")

    # Each model has a home replica (the hottest may spill to a second one). Nine keys on a
    # three-node ring leave a node without a home now and then (the model ids, hence the
    # ring positions, change with each publish): at least two replicas are homes.
    homes = {mid: home(aff.run, mid) for mid in model_ids}
    assert len(set(homes.values())) >= 2, homes
    # Three homes use every replica's cache: a third of round robin's misses at most; two
    # homes hold the nine models in two caches of three, so some keep missing: half.
    factor = 3 if len(set(homes.values())) == len(REPLICAS) else 2
    assert aff.miss_rate <= rr.miss_rate / factor, (
        rr.row("round robin"),
        aff.row("affinity"),
        dict(Counter(homes.values())),
    )
    print("models per home:", dict(Counter(homes.values())))

    # Stop a replica mid-stream: nothing fails, its models move (each to one survivor) and
    # every other model stays where it was, so the survivors' caches keep their models.
    victim = max(REPLICAS, key=lambda n: sum(h == n for h in homes.values()))
    moved = {mid for mid, h in homes.items() if h == victim}
    before = counters(fleet)
    stopper = threading.Thread(target=fleet.replicas[victim].stop)
    stopper.start()
    during = Run()
    seed = 3
    deadline = time.monotonic() + 30
    while fleet.replicas[victim].proc.poll() is None:  # readiness 503, then the drain
        assert time.monotonic() < deadline, "the stopped replica did not exit"
        drive(fleet.affinity, model_ids, zipf_stream(N_MODELS, 40, ZIPF_S, seed), during, seed)
        seed += 1
    stopper.join(timeout=30)
    after_stop = Run()
    drive(fleet.affinity, model_ids, zipf_stream(N_MODELS, 400, ZIPF_S, seed), after_stop, seed)
    assert not during.errors and not after_stop.errors, (during.errors + after_stop.errors)[:5]
    after = counters(fleet)
    new_loads = sum(after[n][1] - before[n][1] for n in after)
    served = sum(during.answered_by.values()) + sum(after_stop.answered_by.values())
    print(
        f"stopped {victim} (home of {len(moved)} models) after {sum(during.answered_by.values())}"
        f" requests; {served} requests, survivors' new loads: {new_loads}"
    )
    assert after_stop.answered_by[victim] == 0
    for mid, was in homes.items():
        if mid not in moved and any(m == mid for m, _ in after_stop.placement):
            assert home(after_stop, mid) == was, f"{mid} moved from {was} though {victim} left"
    assert new_loads / served <= 0.10, (new_loads, served)


def home(run: Run, model_id: str) -> str:
    """The replica that answered most of the model's requests in ``run``."""
    counts = Counter({r: n for (m, r), n in run.placement.items() if m == model_id})
    return counts.most_common(1)[0][0]


def test_the_ingress_routes_by_the_same_key() -> None:
    """k8s/base/ingress.yaml: ingress-nginx hashes on the model id of the path, or on the
    X-Model-Id header, with bounded loads; anything else has no key (round robin)."""
    doc = yaml.safe_load((REPO / "k8s" / "base" / "ingress.yaml").read_text())
    notes = doc["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert notes[prefix + "upstream-hash-by"] == "$model_id$http_x_model_id"
    assert float(notes[prefix + "upstream-hash-by-balance-factor"]) > 1
    assert notes[prefix + "use-regex"] == "true"
    paths = [p["path"] for rule in doc["spec"]["rules"] for p in rule["http"]["paths"]]
    # nginx matches a regex location from the start of the URI, case-insensitively.
    regexes = [re.compile("^" + p.replace("(?<", "(?P<"), re.I) for p in paths if "(?<" in p]

    def key(path: str) -> str | None:
        for regex in regexes:
            found = regex.match(path)
            if found:
                return found.group("model_id")
        return None

    assert key("/api/models/route-0-d6ae69ed/predict") == "route-0-d6ae69ed"
    assert key("/api/models/route-0-d6ae69ed") == "route-0-d6ae69ed"
    assert key("/v2/models/resnet/versions/1/infer") == "resnet"
    assert key("/api/models/load") is None
    assert key("/api/models") is None and key("/api/inference/execute") is None
    assert "/" in paths


def test_the_simulation_ranks_the_placements() -> None:
    """benchmarks/sim_affinity.py, small: hashing beats round robin on misses, bounded loads
    keep the busiest replica near the factor, the oracle is the floor."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import sim_affinity
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    rr, ch, bounded, best = sim_affinity.main(
        ["--models", "200", "--replicas", "8", "--requests", "20000", "--capacity", "10"]
    )
    assert ch.misses < rr.misses / 2 and best.misses <= ch.misses
    assert max(best.working_sets) <= 10
    mean = sum(bounded.per_replica) / len(bounded.per_replica)
    assert max(bounded.per_replica) / mean < max(ch.per_replica) / mean
