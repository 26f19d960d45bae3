"""The Celery application (no tasks here, no torch): imported by the API to enqueue
and by ``celery -A worker.celery_app worker`` to run ``worker.tasks``."""

from __future__ import annotations

from celery import Celery

from jobs.queue import QUEUE, TRAIN_TASK
from worker.settings import WorkerSettings


def make_celery(settings: WorkerSettings | None = None) -> Celery:
    s = settings or WorkerSettings()
    app = Celery("yolov1", broker=s.redis_url, backend=s.redis_url, include=["worker.tasks"])
    transport = {"visibility_timeout": s.visibility_timeout_s}
    app.conf.update(
        task_acks_late=True,  # a job is acknowledged when it ends, not when it starts
        task_reject_on_worker_lost=True,  # a killed process puts its job back in the queue
        worker_prefetch_multiplier=1,  # a worker holds only the job it runs
        worker_concurrency=1,  # one training per worker process
        worker_max_tasks_per_child=1,  # a fresh process (and torch) for every job
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        visibility_timeout=s.visibility_timeout_s,
        task_soft_time_limit=s.soft_time_limit_s,
        task_time_limit=s.hard_time_limit_s,
        task_default_queue=QUEUE,
        task_routes={TRAIN_TASK: {"queue": QUEUE}},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    app.conf.yolov1_settings = s
    return app


celery_app = make_celery()
