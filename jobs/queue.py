"""The training queue: its names, and the one way a job is put on it."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

TRAIN_TASK = "yolov1.train"
QUEUE = "training"


@lru_cache(maxsize=4)
def _producer(broker_url: str) -> Any:
    # A bare Celery app that only sends: the API needs neither the worker's settings
    # nor its tasks to enqueue one by name.
    from celery import Celery

    app = Celery("yolov1", broker=broker_url)
    app.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
    return app


def enqueue(broker_url: str, job_id: str) -> None:
    """Queue job ``job_id`` for a worker (raises when the broker cannot be reached)."""
    _producer(broker_url).send_task(TRAIN_TASK, args=[job_id], queue=QUEUE)
