"""Bookkeeping around one fine-tuning job: the Redis record, the lock, the heartbeat,
cancellation and attempts. The training itself is ``model.finetune`` (imported, with
torch, only here inside the worker process)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import asdict
from typing import Any

from jobs.datasets import resolve_dataset
from jobs.spec import spec_from_request
from jobs.store import TERMINAL, JobStore
from model.config import JobSpec
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class LockBusy(Exception):
    """Another live process runs this job now."""


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_is_dead(owner: str) -> bool:
    host, _, pid = owner.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's process: wait for its lock to expire
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def run_job(job_id: str, settings: WorkerSettings, jobs: JobStore) -> dict[str, Any]:
    rec = jobs.get(job_id)
    if rec is None:
        log.warning("job %s does not exist; dropping it", job_id)
        return {"status": "unknown"}
    if rec["status"] in TERMINAL:  # a redelivered message for a finished job
        return {"status": rec["status"]}
    if jobs.cancel_requested(job_id):
        jobs.update(job_id, status="cancelled", finished_at=time.time())
        return {"status": "cancelled"}

    me = owner_id()
    if not jobs.acquire_lock(job_id, me, settings.lock_ttl_s):
        holder = jobs.lock_owner(job_id)
        if not (
            holder
            and _owner_is_dead(holder)
            and jobs.steal_lock(job_id, holder, me, settings.lock_ttl_s)
        ):
            raise LockBusy(f"job {job_id} is running in {holder}")
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(settings.heartbeat_s):
            jobs.refresh_lock(job_id, me, settings.lock_ttl_s)
            jobs.heartbeat(job_id)

    heart = threading.Thread(target=beat, daemon=True)
    try:
        attempts = jobs.incr_attempts(job_id)
        if attempts > settings.max_attempts:
            jobs.update(
                job_id,
                status="failed",
                finished_at=time.time(),
                error=f"gave up after {attempts - 1} attempts (the job kept killing its worker)",
            )
            return {"status": "failed"}
        jobs.update(job_id, status="running", started_at=time.time(), worker=me)
        jobs.heartbeat(job_id)
        heart.start()
        return _train(job_id, rec["request"], settings, jobs)
    finally:
        stop.set()
        jobs.release_lock(job_id, me)


class ProgressWriter:
    """Turns the trainer's progress calls into the job record: each epoch's metrics
    as it ends, and the step position with an ETA at most twice a second."""

    def __init__(self, job_id: str, jobs: JobStore) -> None:
        self.job_id, self.jobs = job_id, jobs
        self.started = time.time()
        self.last_write = 0.0

    def __call__(self, p: dict[str, Any]) -> None:
        if "epoch_metrics" in p:
            self.jobs.append_metrics(self.job_id, p["epoch_metrics"])
            return
        now = time.time()
        if now - self.last_write < 0.5 and p["step"] < p["steps"]:
            return
        done = (p["epoch"] - 1) * p["steps"] + p["step"]
        total = p["epochs"] * p["steps"]
        rate = done / max(now - self.started, 1e-6)
        self.jobs.update(
            self.job_id,
            progress={
                "epoch": p["epoch"],
                "epochs": p["epochs"],
                "step": p["step"],
                "steps": p["steps"],
                "eta_s": round((total - done) / max(rate, 1e-9), 1),
            },
        )
        self.last_write = now


def job_spec(request: dict[str, Any], settings: WorkerSettings, jobs: JobStore, store) -> JobSpec:
    where = resolve_dataset(request["dataset"], jobs, settings.data_root)
    base = request.get("base_model") or store.active_version() or 1
    return spec_from_request(request, where.format, where.path, base)


def _train(
    job_id: str, request: dict[str, Any], settings: WorkerSettings, jobs: JobStore
) -> dict[str, Any]:
    import torch
    from celery.exceptions import SoftTimeLimitExceeded

    from model.finetune import run_finetune
    from model.registry import ModelStore
    from model.train import Cancelled

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    store = ModelStore(settings.model_store)

    def fail(status: str, error: str) -> dict[str, Any]:
        jobs.update(job_id, status=status, finished_at=time.time(), error=error)
        return {"status": status}

    try:
        outcome = run_finetune(
            job_spec(request, settings, jobs, store),
            settings.runs_root / job_id,
            store,
            progress=ProgressWriter(job_id, jobs),
            should_cancel=lambda: jobs.cancel_requested(job_id),
            on_info=lambda info: jobs.update(job_id, info=info),
            checkpoint_on=(SoftTimeLimitExceeded,),
        )
    except Cancelled as exc:
        return fail("cancelled", str(exc))
    except SoftTimeLimitExceeded:
        return fail(
            "failed",
            f"time limit of {settings.soft_time_limit_s} s reached; "
            "the weights at that step are in interrupted.pt, the last epoch's in last.pt",
        )
    except Exception as exc:
        log.exception("job %s failed", job_id)
        return fail("failed", f"{type(exc).__name__}: {exc}")
    result = asdict(outcome)
    jobs.update(
        job_id,
        status="succeeded",
        finished_at=time.time(),
        model_version=outcome.model_version,
        result=result,
    )
    return {"status": "succeeded", **result}
