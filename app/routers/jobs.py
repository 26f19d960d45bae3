from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app.schemas import Job, JobList, JobRequest
from app.state import AuthDep, JobsDep, ReadAuthDep, StateDep
from app.training import submit_job
from jobs.store import TERMINAL

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _job(rec: dict) -> Job:
    return Job(**{k: v for k, v in rec.items() if k in Job.model_fields and v is not None})


def _get(jobs, job_id: str) -> dict:
    rec = jobs.get(job_id)
    if rec is None:
        raise HTTPException(404, f"job {job_id} does not exist")
    return rec


@router.post(
    "",
    status_code=202,
    summary="Submit a fine-tuning job",
    responses={401: {"description": "API key needed"}, 503: {"description": "no Redis"}},
)
def submit(req: JobRequest, state: StateDep, jobs: JobsDep, _auth: AuthDep) -> dict:
    return submit_job(state, jobs, req)


@router.get("", response_model=JobList, summary="Jobs, newest first")
def list_jobs(
    jobs: JobsDep,
    _auth: ReadAuthDep,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobList:
    total, items = jobs.list(offset, limit)
    return JobList(total=total, offset=offset, limit=limit, items=[_job(r) for r in items])


@router.get("/{job_id}", response_model=Job, summary="A job's status, progress and metrics")
def get_job(job_id: str, jobs: JobsDep, _auth: ReadAuthDep) -> Job:
    return _job(_get(jobs, job_id))


@router.delete(
    "/{job_id}",
    response_model=Job,
    summary="Cancel a job",
    responses={401: {"description": "API key needed"}},
)
def cancel(job_id: str, jobs: JobsDep, _auth: AuthDep) -> Job:
    rec = _get(jobs, job_id)
    if rec["status"] in TERMINAL:
        return _job(rec)
    jobs.request_cancel(job_id)
    if rec["status"] == "queued":  # the worker skips it when it comes
        jobs.update(job_id, status="cancelled")
    return _job(_get(jobs, job_id))


def last_seen(
    job_id: str, jobs: JobsDep, last_event_id: Annotated[str | None, Header()] = None
) -> int:
    """``Last-Event-ID`` as a reconnecting EventSource sends it (a job's ``rev``), checked
    with the job before the stream starts: after that only events can be sent."""
    _get(jobs, job_id)
    value = (last_event_id or "").strip()
    if not value:
        return 0
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise HTTPException(400, f"Last-Event-ID must be an event id this stream sent: {value!r}")
    return int(value)


@router.get(
    "/{job_id}/events",
    summary="Server-sent events: the job record on every change",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "`job` events (the whole record; id: its `rev`), then one `end`; "
            "`: keep-alive` comments while nothing changes"
        },
        404: {"description": "no such job"},
    },
)
async def events(
    job_id: str,
    jobs: JobsDep,
    state: StateDep,
    request: Request,
    _auth: ReadAuthDep,
    seen: Annotated[int, Depends(last_seen)],
) -> AsyncIterable[ServerSentEvent]:
    """Each event carries the whole job record, so a client that reconnects with
    ``Last-Event-ID`` (as EventSource does) misses nothing: it gets the record again
    only if it changed since that id, then every later change."""
    ping_s = state.settings.sse_keepalive_s
    quiet_since = time.monotonic()
    while not await request.is_disconnected():
        rec = await asyncio.to_thread(jobs.get, job_id)
        rev = rec.get("rev") or 0
        if rev > seen:
            seen = rev
            quiet_since = time.monotonic()
            yield ServerSentEvent(raw_data=_job(rec).model_dump_json(), event="job", id=str(rev))
        if rec["status"] in TERMINAL:
            yield ServerSentEvent(data={"status": rec["status"]}, event="end", id=str(rev))
            return
        if time.monotonic() - quiet_since >= ping_s:
            # A comment: proxies that cut idle streams see traffic, EventSource ignores it.
            quiet_since = time.monotonic()
            yield ServerSentEvent(comment="keep-alive")
        await asyncio.sleep(0.5)


@router.get(
    "/{job_id}/curves.png",
    summary="Loss and mAP per epoch",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
async def curves(job_id: str, jobs: JobsDep, _auth: ReadAuthDep) -> Response:
    from model.plots import plot_curves

    rec = _get(jobs, job_id)
    if not rec["metrics"]:
        raise HTTPException(404, "no epoch has finished yet")
    png = await asyncio.to_thread(plot_curves, rec["metrics"])
    return Response(png, media_type="image/png")
