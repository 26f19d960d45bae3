"""Celery tasks: thin, idempotent, taking ids; the work is in worker.runner and model/."""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_ready

from jobs.queue import TRAIN_TASK
from jobs.store import JobStore
from worker.celery_app import celery_app

log = logging.getLogger(__name__)


@celery_app.task(name=TRAIN_TASK, bind=True, max_retries=None)
def train_job(self, job_id: str) -> dict:
    from worker.runner import LockBusy, run_job

    settings = celery_app.conf.yolov1_settings
    try:
        return run_job(job_id, settings, JobStore.from_url(settings.redis_url))
    except LockBusy as exc:
        # Redelivered while another process still runs it: look again later.
        raise self.retry(exc=exc, countdown=settings.lock_ttl_s) from exc


@worker_ready.connect
def _start_reaper(sender=None, **_kwargs) -> None:
    """Re-enqueue running jobs whose whole worker died (no heartbeat, lock expired).
    A job killed with only its pool process is re-queued by Celery itself
    (``task_reject_on_worker_lost``)."""
    settings = celery_app.conf.yolov1_settings
    jobs = JobStore.from_url(settings.redis_url)

    def loop() -> None:
        while True:
            try:
                for job_id in jobs.stale_running(settings.stale_after_s):
                    log.warning("job %s lost its worker; queueing it again", job_id)
                    jobs.heartbeat(job_id)  # one re-queue per stale period
                    train_job.apply_async(args=[job_id])
            except Exception:
                log.exception("reaper pass failed")
            threading.Event().wait(settings.stale_after_s / 2)

    threading.Thread(target=loop, name="reaper", daemon=True).start()
