"""A bounded load on loopback: a few concurrent clients sending requests for a few seconds.

:class:`Load` runs ``clients`` asyncio tasks in a thread of its own (the test's thread stays
free to kill and restart dependencies), each sending the :class:`Call` its ``make_call``
returns, one after another, until :meth:`Load.stop` or ``max_s`` (so it always stops by
itself). Every call ends as one :class:`Outcome`: the status and how long it took, or the
transport error when no reply came. A call marked ``retry`` (a retry-safe GET) is sent again
on a transport error, as a careful client would. ``check`` says whether a 200's body is the
right answer; a reply that is not a 200 is judged by the scenario.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class Call:
    """One request to send, and how to tell a right 200 from a wrong one."""

    kind: str
    method: str
    path: str
    check: Callable[[httpx.Response], bool]
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""
    retry: bool = False


@dataclass(frozen=True)
class Outcome:
    """What one call got: a reply (status, headers, correctness) or a transport error."""

    kind: str
    sent_at: float  # time.monotonic() when it was first sent
    latency_s: float  # first send to the final reply or error, retries included
    status: int | None  # None: no reply (the connection failed)
    error: str = ""  # the transport error's class, when there was no reply
    retries: int = 0
    retry_after: str | None = None
    correct: bool | None = None  # a 200's verdict; None for anything else
    typed: bool = False  # a JSON error body naming the error
    cache: str | None = None  # X-Cache, when present
    body: str = ""

    @property
    def ended_at(self) -> float:
        return self.sent_at + self.latency_s


MakeCall = Callable[[int], Call | None]
"""``make_call(client_index)``: the next call of that client, or None to idle a moment."""


def _typed(r: httpx.Response) -> bool:
    try:
        doc = r.json()
    except ValueError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("error") or doc.get("message"), str)


class Load:
    """See the module docstring. Use as a context manager; :attr:`outcomes` grows meanwhile."""

    def __init__(
        self,
        base_url: str,
        make_call: MakeCall,
        *,
        clients: int = 4,
        timeout_s: float = 20.0,
        pause_s: float = 0.02,
        keepalive: bool = True,
        max_s: float = 60.0,
    ) -> None:
        self.base_url = base_url
        self.make_call = make_call
        self.clients = clients
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        self.keepalive = keepalive
        self.max_s = max_s
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-load", daemon=True)
        self.failure: BaseException | None = None

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 10)
        assert not self._thread.is_alive(), "the load generator did not stop"
        if self.failure is not None:
            raise self.failure
        return list(self.outcomes)

    def since(self, t: float) -> list[Outcome]:
        return [o for o in list(self.outcomes) if o.sent_at >= t]

    # -- the clients ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by stop()
            self.failure = exc

    async def _main(self) -> None:
        deadline = time.monotonic() + self.max_s
        limits = httpx.Limits(max_keepalive_connections=None if self.keepalive else 0)
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout_s, limits=limits, trust_env=False
        ) as client:
            await asyncio.gather(*(self._client(client, i, deadline) for i in range(self.clients)))

    async def _client(self, client: httpx.AsyncClient, index: int, deadline: float) -> None:
        while not self._stop.is_set() and time.monotonic() < deadline:
            call = self.make_call(index)
            if call is not None:
                self.outcomes.append(await self._send(client, call))
            await asyncio.sleep(self.pause_s)

    async def _send(self, client: httpx.AsyncClient, call: Call) -> Outcome:
        t0 = time.monotonic()
        retries = 0
        while True:
            try:
                r = await client.request(
                    call.method, call.path, headers=call.headers, content=call.content
                )
            except httpx.TransportError as exc:
                if call.retry and retries < 5 and not self._stop.is_set():
                    retries += 1
                    await asyncio.sleep(0.1)
                    continue
                return Outcome(
                    call.kind,
                    t0,
                    time.monotonic() - t0,
                    None,
                    error=type(exc).__name__,
                    retries=retries,
                )
            latency = time.monotonic() - t0
            ok = r.status_code == 200
            return Outcome(
                call.kind,
                t0,
                latency,
                r.status_code,
                retries=retries,
                retry_after=r.headers.get("retry-after"),
                correct=call.check(r) if ok else None,
                typed=not ok and _typed(r),
                cache=r.headers.get("x-cache"),
                body=r.text[:2000],
            )


def summary(outcomes: list[Outcome]) -> dict[str, dict[str, int]]:
    """Counts by kind and status (``'error'`` for no reply), for messages and reports."""
    out: dict[str, dict[str, int]] = {}
    for o in outcomes:
        key = str(o.status) if o.status is not None else f"error:{o.error}"
        out.setdefault(o.kind, {}).setdefault(key, 0)
        out[o.kind][key] += 1
    return out


def assert_nothing_lies(outcomes: list[Outcome], *, max_latency_s: float) -> None:
    """The rules of every scenario: no 500, every 200 right, every other reply a typed error
    (503 with ``Retry-After``), and no call waited past ``max_latency_s``."""
    assert outcomes, "the load sent nothing"
    counts = summary(outcomes)
    for o in outcomes:
        where = f"{o.kind} -> {o.status} {o.error} {o.body!r} ({counts})"
        if o.status is None:
            continue  # the scenario decides whether a lost connection is allowed
        assert o.status < 500 or o.status in (503, 504), where
        if o.status == 200:
            assert o.correct, f"wrong answer: {where}"
        else:
            assert o.typed, f"untyped error: {where}"
        if o.status == 503:
            assert o.retry_after and int(o.retry_after) > 0, f"503 without Retry-After: {where}"
    worst = max(o.latency_s for o in outcomes)
    assert worst <= max_latency_s, f"a call took {worst:.2f} s > {max_latency_s} s ({counts})"
