"""Model-affinity routing, simulated: 1,000 models on 20 replicas under a Zipf load.

Pure Python, no servers. Each replica keeps an LRU session cache of ``--capacity`` models; a
request whose model is not in its replica's cache is a miss (one load). Placements compared:

* ``round robin``: request i goes to replica i mod R (what a plain load balancer does);
* ``consistent hash``: the model id on a ring of ``--vnodes`` points per replica;
* ``consistent hash, bounded loads``: the same, but a replica already serving more than
  ``--factor`` times the average of the requests in flight (``--concurrency`` of them) is
  skipped for the next one on the ring (HAProxy's hash-balance-factor, ingress-nginx's
  upstream-hash-by-balance-factor);
* ``ideal``: an oracle that knows the popularity: the R * capacity hottest models, each held
  once, spread so that every replica gets the same share of requests (largest first);
  everything else misses.

Printed per placement: the miss rate; the distinct models each replica was asked for (the
memory it needs to never miss, max and mean over replicas); the requests of the busiest
replica against the mean.

    python benchmarks/sim_affinity.py            # the defaults of docs/SCALING.md
    python benchmarks/sim_affinity.py --capacity 10 --factor 1.5
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import heapq
import itertools
import math
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def zipf_weights(n: int, s: float) -> list[float]:
    total = sum(1 / k**s for k in range(1, n + 1))
    return [1 / k**s / total for k in range(1, n + 1)]


def stream(n_models: int, n_requests: int, s: float, seed: int) -> list[int]:
    """Model indices (0 is the hottest), Zipf(s), in a random but reproducible order."""
    cumulative = list(itertools.accumulate(zipf_weights(n_models, s)))
    rng = random.Random(seed)
    return [
        min(bisect.bisect_left(cumulative, rng.random()), n_models - 1) for _ in range(n_requests)
    ]


def h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Ring:
    """A consistent-hash ring: ``vnodes`` points per replica."""

    def __init__(self, replicas: int, vnodes: int) -> None:
        points = sorted(
            (h64(f"replica-{r}#{v}"), r) for r in range(replicas) for v in range(vnodes)
        )
        self.keys = [p for p, _ in points]
        self.owners = [r for _, r in points]

    def walk(self, key: str) -> list[int]:
        """The replicas in ring order from the key's point (each once)."""
        start = bisect.bisect(self.keys, h64(key)) % len(self.keys)
        seen: list[int] = []
        for i in range(len(self.keys)):
            owner = self.owners[(start + i) % len(self.keys)]
            if owner not in seen:
                seen.append(owner)
        return seen


class LRU:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: OrderedDict[int, None] = OrderedDict()

    def hit(self, model: int) -> bool:
        if model in self.items:
            self.items.move_to_end(model)
            return True
        self.items[model] = None
        if len(self.items) > self.capacity:
            self.items.popitem(last=False)
        return False


@dataclass
class Result:
    name: str
    misses: int
    requests: int
    working_sets: list[int]
    per_replica: list[int]

    def row(self) -> str:
        mean_ws = sum(self.working_sets) / len(self.working_sets)
        mean_load = sum(self.per_replica) / len(self.per_replica)
        return (
            f"| {self.name} | {self.misses / self.requests:.1%} | {max(self.working_sets)} "
            f"| {mean_ws:.0f} | {max(self.per_replica) / mean_load:.2f} |"
        )


Router = Callable[[int, int, list[int]], int]


def simulate(
    name: str, picks: Sequence[int], replicas: int, capacity: int, route: Router, window: int
) -> Result:
    """Send ``picks`` through ``route(i, model, inflight)``; ``inflight`` counts each
    replica's share of the last ``window`` requests (the ones still running)."""
    caches = [LRU(capacity) for _ in range(replicas)]
    asked: list[set[int]] = [set() for _ in range(replicas)]
    per_replica = [0] * replicas
    inflight = [0] * replicas
    running: deque[int] = deque()
    misses = 0
    for i, model in enumerate(picks):
        if len(running) >= window:
            inflight[running.popleft()] -= 1
        r = route(i, model, inflight)
        running.append(r)
        inflight[r] += 1
        per_replica[r] += 1
        asked[r].add(model)
        misses += not caches[r].hit(model)
    return Result(name, misses, len(picks), [len(a) for a in asked], per_replica)


def ideal(picks: Sequence[int], n_models: int, replicas: int, capacity: int, s: float) -> Result:
    """The oracle placement of the module docstring (no LRU: a static assignment). A model
    hotter than one replica's fair share is held by as many replicas as it needs; the copies,
    hottest first, go to the least-loaded replica with room. Misses go round robin and are
    not counted as models a replica holds."""
    weights = zipf_weights(n_models, s)
    fair = 1 / replicas
    heap = [(0.0, r, 0) for r in range(replicas)]  # (load, replica, models held)
    homes: dict[int, list[int]] = {}
    slots = replicas * capacity
    for m in sorted(range(n_models), key=lambda m: -weights[m]):
        copies = min(replicas, max(1, math.ceil(weights[m] / fair)))
        if copies > slots:
            break
        slots -= copies
        taken, full = [], []
        while len(taken) < copies:
            load, r, count = heapq.heappop(heap)
            (full if count >= capacity else taken).append((load, r, count))
        homes[m] = [r for _, r, _ in taken]
        for load, r, count in taken:
            heapq.heappush(heap, (load + weights[m] / copies, r, count + 1))
        for item in full:
            heapq.heappush(heap, item)
    per_replica = [0] * replicas
    held: list[set[int]] = [set() for _ in range(replicas)]
    misses = 0
    for i, m in enumerate(picks):
        home = homes.get(m)
        if home is None:
            misses += 1
            per_replica[i % replicas] += 1
            continue
        r = home[i % len(home)]
        per_replica[r] += 1
        held[r].add(m)
    return Result("ideal (oracle)", misses, len(picks), [len(h) for h in held], per_replica)


def main(argv: Sequence[str] | None = None) -> list[Result]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", type=int, default=1000)
    p.add_argument("--replicas", type=int, default=20)
    p.add_argument("--requests", type=int, default=200_000)
    p.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent s")
    p.add_argument("--capacity", type=int, default=20, help="models per replica's cache")
    p.add_argument("--concurrency", type=int, default=200, help="requests in flight")
    p.add_argument("--factor", type=float, default=1.25, help="bounded-load factor (> 1)")
    p.add_argument("--vnodes", type=int, default=100, help="ring points per replica")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    if a.factor <= 1:
        p.error("--factor must be above 1")

    picks = stream(a.models, a.requests, a.zipf, a.seed)
    ring = Ring(a.replicas, a.vnodes)
    walks = [ring.walk(f"model-{m}") for m in range(a.models)]

    def round_robin(i: int, model: int, inflight: list[int]) -> int:
        return i % a.replicas

    def hashed(i: int, model: int, inflight: list[int]) -> int:
        return walks[model][0]

    def bounded(i: int, model: int, inflight: list[int]) -> int:
        cap = math.ceil(a.factor * (sum(inflight) + 1) / a.replicas)
        for r in walks[model]:
            if inflight[r] < cap:
                return r
        return walks[model][0]

    results = [
        simulate("round robin", picks, a.replicas, a.capacity, round_robin, a.concurrency),
        simulate("consistent hash", picks, a.replicas, a.capacity, hashed, a.concurrency),
        simulate(
            f"consistent hash, bounded loads ({a.factor:g})",
            picks,
            a.replicas,
            a.capacity,
            bounded,
            a.concurrency,
        ),
        ideal(picks, a.models, a.replicas, a.capacity, a.zipf),
    ]
    print(
        f"{a.models} models, {a.replicas} replicas x {a.capacity} models, Zipf({a.zipf:g}), "
        f"{a.requests} requests, {a.concurrency} in flight"
    )
    print("| placement | miss rate | models asked of a replica (max) | (mean) | busiest / mean |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        print(r.row())
    return results


if __name__ == "__main__":
    main()
