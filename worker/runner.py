"""Bookkeeping around one fine-tuning job: the Redis record, the lock, the heartbeat,
cancellation and attempts. The training itself is ``model.finetune`` (imported, with
torch, only here inside the worker process)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

import redis

from jobs.datasets import resolve_dataset
from jobs.spec import spec_from_request
from jobs.store import TERMINAL, JobStore
from model.config import JobSpec
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class LockBusy(Exception):
    """Another live process runs this job now."""


def patiently(fn: Callable[[], T], *, for_s: float = 300.0) -> T:
    """``fn()``, retried with back-off while Redis is away (a restart, a fail-over), so
    that what a job must record (an epoch's metrics, its end) is not lost."""
    deadline, wait = time.monotonic() + for_s, 0.5
    while True:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() > deadline:
                raise
            log.warning("Redis is not reachable; retrying in %.1f s", wait)
            time.sleep(wait)
            wait = min(wait * 2, 10.0)


def best_effort(fn: Callable[[], T], default: T) -> T:
    """``fn()``, or ``default`` while Redis is away: for what the next call redoes
    (a heartbeat, a progress line, a look at the cancel flag)."""
    try:
        return fn()
    except (redis.ConnectionError, redis.TimeoutError):
        return default


def _host() -> str:
    """This process's machine as far as its pids go: the host name, and the pid
    namespace, since containers on host networking share one host name while each
    counts pids from 1."""
    try:
        ns = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}/{ns}"


def owner_id() -> str:
    return f"{_host()}:{os.getpid()}"


def _owner_is_dead(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != _host() or not pid.isdigit():
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
            best_effort(lambda: jobs.refresh_lock(job_id, me, settings.lock_ttl_s), False)
            best_effort(lambda: jobs.heartbeat(job_id), None)

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
        best_effort(lambda: jobs.release_lock(job_id, me), None)  # it expires anyway


class ProgressWriter:
    """Turns the trainer's progress calls into the job record: each epoch's metrics
    as it ends, and the step position with an ETA at most twice a second."""

    def __init__(self, job_id: str, jobs: JobStore) -> None:
        self.job_id, self.jobs = job_id, jobs
        self.started = time.time()
        self.last_write = 0.0
        # Images since the last write: the throughput shown is recent, not an average
        # that includes the epochs' validation passes long gone.
        self.window_start = time.time()
        self.window_images = 0

    def __call__(self, p: dict[str, Any]) -> None:
        if "epoch_metrics" in p:
            patiently(lambda: self.jobs.append_metrics(self.job_id, p["epoch_metrics"]))
            self.window_start, self.window_images = time.time(), 0  # validation ran
            return
        self.window_images += p.get("images", 0)
        now = time.time()
        if now - self.last_write < 0.5 and p["step"] < p["steps"]:
            return
        done = (p["epoch"] - 1) * p["steps"] + p["step"]
        total = p["epochs"] * p["steps"]
        rate = done / max(now - self.started, 1e-6)
        images_per_s = self.window_images / max(now - self.window_start, 1e-6)
        best_effort(lambda: self._write(done, total, rate, images_per_s, p), None)
        self.last_write = now
        self.window_start, self.window_images = now, 0

    def _write(
        self, done: int, total: int, rate: float, images_per_s: float, p: dict[str, Any]
    ) -> None:
        self.jobs.update(
            self.job_id,
            progress={
                "epoch": p["epoch"],
                "epochs": p["epochs"],
                "step": p["step"],
                "steps": p["steps"],
                "eta_s": round((total - done) / max(rate, 1e-9), 1),
                "images_per_s": round(images_per_s, 2),
            },
        )


def private_paths_out(text: str, settings: WorkerSettings) -> str:
    """A message for the job record, with the server's own folders named, not shown."""
    for folder, name in ((settings.data_root, "<data root>"), (settings.model_store, "<store>")):
        text = text.replace(str(folder.resolve()), name).replace(str(folder), name)
    return text


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
        patiently(lambda: jobs.update(job_id, status=status, finished_at=time.time(), error=error))
        return {"status": status}

    try:
        outcome = run_finetune(
            job_spec(request, settings, jobs, store),
            settings.runs_root / job_id,
            store,
            progress=ProgressWriter(job_id, jobs),
            should_cancel=lambda: best_effort(lambda: jobs.cancel_requested(job_id), False),
            on_info=lambda info: patiently(lambda: jobs.update(job_id, info=info)),
            checkpoint_on=(SoftTimeLimitExceeded,),
        )
    except Cancelled as exc:
        shutil.rmtree(settings.runs_root / job_id, ignore_errors=True)
        return fail("cancelled", str(exc))
    except SoftTimeLimitExceeded:
        return fail(
            "failed",
            f"time limit of {settings.soft_time_limit_s} s reached; "
            "the weights at that step are in interrupted.pt, the last epoch's in last.pt",
        )
    except Exception as exc:
        log.exception("job %s failed", job_id)
        return fail("failed", private_paths_out(f"{type(exc).__name__}: {exc}", settings))
    result = asdict(outcome)
    # The registry holds copies of what it needs; the run folder (checkpoints every
    # epoch) only mattered while the job could still resume.
    shutil.rmtree(settings.runs_root / job_id, ignore_errors=True)
    if settings.keep_versions:
        removed = store.prune(settings.keep_versions)
        if removed:
            log.info("pruned model versions %s", removed)
    patiently(
        lambda: jobs.update(
            job_id,
            status="succeeded",
            finished_at=time.time(),
            model_version=outcome.model_version,
            result=result,
        )
    )
    return {"status": "succeeded", **result}
