"""Async jobs: a request answered at once with a job id, run in the background, polled.

A job's record lives in the ⚙ key-value store (Redis: every replica answers a poll, and the
record outlives the replica that ran it) for ``CIDSERVE_JOB_TTL_S``. The work itself runs on
the replica that accepted it, as an asyncio task; each replica holds at most
``CIDSERVE_MAX_JOBS`` jobs queued or running (past it :class:`Overloaded`: 503 + Retry-After).

Records: ``queued`` -> ``running`` -> ``done`` (``result``) or ``failed`` (``error``). While a
job is not finished its replica renews a lease (``lease_until``) every third of
:data:`LEASE_S`; a poll that finds an unfinished job whose lease has passed (its replica died
or lost the store) reports it ``failed`` and records that, so a job never stays ``queued``
forever. It is not run again: its input is not kept, and running it twice could bill a
licensed caller twice. A replica that stops cleanly marks its unfinished jobs failed at once.

Job ids are 128 random bits. A job records its owner (the signer's address, or none for an
anonymous caller); :meth:`Jobs.get` answers None (404 over HTTP) to anyone else, so a signed
caller's job is invisible to others even with its id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.errors import Overloaded
from services.state.kv import KeyValueStore, KVUnavailable

log = logging.getLogger("cidserve.jobs")

LEASE_S = 30.0
PREFIX = "job:"
FINISHED = ("done", "failed")
ID_HEX = 32  # 128 bits

Work = Callable[[], Awaitable[dict[str, Any]]]
"""The job's work: the reply body it computes."""
Describe = Callable[[BaseException], dict[str, Any]]
"""An error as the record keeps it (the HTTP layer passes its own: status, error, message)."""


LOST = {
    "error": "Job lost",
    "message": "the replica running this job stopped answering before it finished; submit it again",
}
STOPPED = {
    "error": "Job lost",
    "message": "the replica running this job stopped before it finished; submit it again",
}


@dataclass(frozen=True, slots=True)
class _Job:
    task: asyncio.Task[None]
    owner: str | None
    created: float


@dataclass(frozen=True, slots=True)
class JobPolicy:
    max_jobs: int
    ttl_s: float
    lease_s: float = LEASE_S


def is_job_id(text: str) -> bool:
    return len(text) == ID_HEX and all(c in "0123456789abcdef" for c in text)


class Jobs:
    """The jobs of one replica, their records in ``kv`` (shared with the other replicas)."""

    def __init__(
        self,
        kv: KeyValueStore,
        policy: JobPolicy,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kv = kv
        self.policy = policy
        self.clock = clock
        self._tasks: dict[str, _Job] = {}

    @property
    def active(self) -> int:
        """Jobs of this replica queued or running."""
        return len(self._tasks)

    def _record(self, owner: str | None, status: str, **fields: Any) -> dict[str, Any]:
        now = self.clock()
        return {
            "status": status,
            "owner": owner,
            "updated_at": now,
            "lease_until": None if status in FINISHED else now + self.policy.lease_s,
            **fields,
        }

    async def _write(self, job_id: str, record: dict[str, Any]) -> None:
        data = json.dumps(record, separators=(",", ":")).encode()
        await self.kv.set(PREFIX + job_id, data, self.policy.ttl_s)

    async def submit(self, owner: str | None, work: Work, describe: Describe) -> str:
        """Record a queued job and start it; its id. 503 when this replica is full; the
        store's :class:`KVUnavailable` (503) when the record cannot be written."""
        if self.active >= self.policy.max_jobs:
            raise Overloaded(
                f"{self.active} async jobs are queued or running here; the limit is "
                f"{self.policy.max_jobs} (CIDSERVE_MAX_JOBS)",
                retry_after_s=1,
            )
        job_id = secrets.token_hex(ID_HEX // 2)
        created = self.clock()
        await self._write(job_id, self._record(owner, "queued", created_at=created))
        task = asyncio.create_task(self._run(job_id, owner, created, work, describe))
        self._tasks[job_id] = _Job(task, owner, created)
        task.add_done_callback(lambda _t: self._tasks.pop(job_id, None))
        return job_id

    async def _run(
        self, job_id: str, owner: str | None, created: float, work: Work, describe: Describe
    ) -> None:
        heartbeat: asyncio.Task[None] | None = None
        try:
            await self._write(job_id, self._record(owner, "running", created_at=created))
            heartbeat = asyncio.create_task(self._renew(job_id, owner, created))
            try:
                body = await work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the job's failure is its record, not this task's
                final = self._record(owner, "failed", created_at=created, error=describe(exc))
            else:
                final = self._record(owner, "done", created_at=created, result=body)
            heartbeat.cancel()
            await self._write(job_id, final)
        except KVUnavailable:
            log.warning("job %s: the shared state did not take its record", job_id)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()

    async def _renew(self, job_id: str, owner: str | None, created: float) -> None:
        while True:
            await asyncio.sleep(self.policy.lease_s / 3)
            with contextlib.suppress(KVUnavailable):
                await self._write(job_id, self._record(owner, "running", created_at=created))

    async def get(self, job_id: str, owner: str | None) -> dict[str, Any] | None:
        """The job's record as a caller sees it; None when unknown, expired or another
        caller's. An unfinished job whose lease has passed is reported (and recorded) failed."""
        if not is_job_id(job_id):
            return None
        data = await self.kv.get(PREFIX + job_id)
        if data is None:
            return None
        record: dict[str, Any] = json.loads(data)
        if record.get("owner") != owner:
            return None
        lease = record.get("lease_until")
        if record["status"] not in FINISHED and lease is not None and lease < self.clock():
            record = self._record(
                owner,
                "failed",
                created_at=record.get("created_at"),
                error=LOST,
            )
            with contextlib.suppress(KVUnavailable):
                await self._write(job_id, record)
        return {
            "job_id": job_id,
            "status": record["status"],
            "result": record.get("result"),
            "error": record.get("error"),
            "created_at": record.get("created_at"),
            "updated_at": record.get("updated_at"),
        }

    async def aclose(self) -> None:
        """Stop this replica's jobs; each is recorded failed (best effort)."""
        jobs = list(self._tasks.items())
        for _, job in jobs:
            job.task.cancel()
        for job_id, job in jobs:
            with contextlib.suppress(asyncio.CancelledError):
                await job.task
            record = self._record(job.owner, "failed", created_at=job.created, error=STOPPED)
            with contextlib.suppress(KVUnavailable):
                await self._write(job_id, record)
