"""Bookkeeping around one fine-tuning job: the Redis record, the lock, the heartbeat,
cancellation and attempts. The training itself is ``model.finetune`` (imported, with
torch, only here inside the worker process)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from worker.jobstore import TERMINAL, JobStore
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


def resolve_dataset(
    request: dict[str, Any], jobs: JobStore, data_root: Path
) -> tuple[str, str | None]:
    ds = request["dataset"]
    if ds["format"] == "shapes":
        return "shapes", None
    if ds.get("dataset_id"):
        rec = jobs.get_dataset(ds["dataset_id"])
        if rec is None:
            raise ValueError(f"data set {ds['dataset_id']} does not exist")
        return rec["format"], rec["path"]
    return ds["format"], str((data_root / ds["path"]).resolve())


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


def _train(
    job_id: str, request: dict[str, Any], settings: WorkerSettings, jobs: JobStore
) -> dict[str, Any]:
    import torch
    from celery.exceptions import SoftTimeLimitExceeded

    from model.finetune import JobSpec, run_finetune
    from model.registry import ModelStore
    from model.train import Cancelled

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    store = ModelStore(settings.model_store)
    fmt, path = resolve_dataset(request, jobs, settings.data_root)
    spec = JobSpec(
        dataset_format=fmt,
        dataset_path=path,
        shapes_images=request["dataset"].get("images", 64),
        base_version=request["base_model"] or store.active_version() or 1,
        epochs=request["epochs"],
        batch_size=request["batch_size"],
        learning_rate=request["learning_rate"],
        lambda_coord=request["lambda_coord"],
        lambda_noobj=request["lambda_noobj"],
        confidence_target=request["confidence_target"],
        image_size=request.get("image_size"),
        augment=request["augment"],
        seed=request["seed"],
        val_fraction=request["val_fraction"],
    )
    started = time.time()
    last_write = 0.0

    def progress(p: dict[str, Any]) -> None:
        nonlocal last_write
        if "epoch_metrics" in p:
            jobs.append_metrics(job_id, p["epoch_metrics"])
        now = time.time()
        if "epoch_metrics" in p or now - last_write > 0.5:
            done = (p["epoch"] - 1) * p["steps"] + p["step"]
            total = p["epochs"] * p["steps"]
            rate = done / max(now - started, 1e-6)
            jobs.update(
                job_id,
                progress={
                    "epoch": p["epoch"],
                    "epochs": p["epochs"],
                    "step": p["step"],
                    "steps": p["steps"],
                    "eta_s": round((total - done) / max(rate, 1e-9), 1),
                },
            )
            last_write = now

    try:
        result = run_finetune(
            spec,
            settings.runs_root / job_id,
            store,
            progress=progress,
            should_cancel=lambda: jobs.cancel_requested(job_id),
            on_info=lambda info: jobs.update(job_id, info=info),
            checkpoint_on=(SoftTimeLimitExceeded,),
        )
    except Cancelled as exc:
        jobs.update(job_id, status="cancelled", finished_at=time.time(), error=str(exc))
        return {"status": "cancelled"}
    except SoftTimeLimitExceeded:
        jobs.update(
            job_id,
            status="failed",
            finished_at=time.time(),
            error=f"time limit of {settings.soft_time_limit_s} s reached; "
            "the weights at that step are in interrupted.pt, the last epoch's in last.pt",
        )
        return {"status": "failed"}
    except Exception as exc:
        log.exception("job %s failed", job_id)
        jobs.update(
            job_id, status="failed", finished_at=time.time(), error=f"{type(exc).__name__}: {exc}"
        )
        return {"status": "failed"}
    activated = False
    if request.get("auto_activate"):
        parent = store.meta(spec.base_version).get("metrics", {}).get("val_map50")
        if parent is None or result["val_map50"] >= parent:
            store.set_active(result["model_version"])
            activated = True
    jobs.update(
        job_id,
        status="succeeded",
        finished_at=time.time(),
        model_version=result["model_version"],
        result={**result, "activated": activated},
    )
    return {"status": "succeeded", **result}
