"""Async jobs over HTTP: the 202 of ``execution_mode: "async"`` and
``GET /api/inference/jobs/{job_id}``.

``POST /api/inference/execute`` with ``execution_mode: "async"`` takes the same steps as a
sync request up to the run (caller, license gate, admission check, input decoded or fetched:
401/403/404/400/413/503 come back before a job exists), then hands the run to
:class:`services.dataplane.jobs.Jobs` and answers 202 ``{job_id}``. The poll answers the job's
status and, once ``done``, the body the sync request would have answered (``result``), or
once ``failed`` the error it would have answered (``error``: status, title, message). A job
id that is unknown, expired or another caller's is a 404. A job submitted by a signed
caller is read with a request signed by the same address.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from services.http.deps import Svc, caller_of
from services.http.errors import HttpError, describe
from services.http.responses import JSONResponse
from services.http.schemas import SIGNED_OR_OPEN, api_errors
from services.licensing import Caller
from services.wiring import Services

router = APIRouter(tags=["inference"])


class JobNotFound(HttpError):
    status_code = 404
    title = "Job not found"


class JobAccepted(BaseModel):
    """The 202 of an async request."""

    success: Literal[True] = True
    job_id: str = Field(description="128 random bits in hex; poll GET /api/inference/jobs/{id}")
    status: Literal["queued"] = "queued"


class JobError(BaseModel):
    status: int | None = Field(None, description="the HTTP status a sync request would get")
    error: str
    message: str


class JobStatus(BaseModel):
    """``GET /api/inference/jobs/{job_id}``."""

    success: Literal[True] = True
    job_id: str
    status: Literal["queued", "running", "done", "failed"]
    result: dict[str, Any] | None = Field(
        description="once done: the body a sync request would have answered"
    )
    error: JobError | None = Field(description="once failed: what went wrong")
    created_at: float | None = Field(description="Unix time")
    updated_at: float | None = Field(description="Unix time")


def owner_of(caller: Caller | None) -> str | None:
    """Whom a job belongs to: the signer's address (lower-case), or nobody (anonymous)."""
    return None if caller is None else caller.address.lower()


def job_error(exc: BaseException) -> dict[str, Any]:
    """A job's failure as the error the sync request would have answered."""
    reply = describe(exc)
    return {"status": reply.status, "error": reply.title, "message": reply.message}


async def submit(
    svc: Services, caller: Caller | None, work: Callable[[], Awaitable[dict[str, Any]]]
) -> JSONResponse:
    """Start ``work`` as a job of ``caller``; the 202 reply."""
    job_id = await svc.jobs.submit(owner_of(caller), work, job_error)
    return JSONResponse(
        JobAccepted(job_id=job_id).model_dump(),
        status_code=202,
        headers={"Location": f"/api/inference/jobs/{job_id}"},
    )


@router.get(
    "/api/inference/jobs/{job_id}",
    response_model=JobStatus,
    responses=api_errors(401, 404, 503),
    openapi_extra=SIGNED_OR_OPEN,
)
async def get_job(job_id: str, request: Request, svc: Svc) -> JSONResponse:
    """An async job's status, and its result once done (only to the caller who submitted it)."""
    caller = await caller_of(svc, request)
    record = await svc.jobs.get(job_id, owner_of(caller))
    if record is None:
        raise JobNotFound(
            f"job {job_id[:64]!r} is unknown, expired, or was submitted by another caller",
            job_id=job_id[:64],
        )
    return JSONResponse({"success": True, **record})
