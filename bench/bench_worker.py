"""Jobs: time from submit to running, and training throughput inside a Celery worker
against the same training loop called directly, in one run (needs Redis)."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import redis
from common import DEFAULT_MODEL, log, setup_logging

from model.config import FINETUNE, JobSpec, TrainConfig
from model.finetune import run_finetune
from model.registry import ModelStore
from support.procs import Server, Worker

REDIS_URL = os.environ.get("YOLOV1_BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")
JOB = {
    "dataset": {"format": "shapes", "images": 96},
    "epochs": 8,
    "batch_size": 16,
    "augment": True,
    "seed": 0,
}


def images_per_s(history: list[dict]) -> float:
    """Median speed of epochs 3 on, past the first steps' warm-up in a new process."""
    log.info("img/s by epoch: %s", [round(h["images_per_s"], 1) for h in history[1:]])
    return statistics.median(h["images_per_s"] for h in history if h["epoch"] >= 3)


def direct(base: Path, name: str) -> float:
    """The job's training loop called in this process, without Celery or the API."""
    store = ModelStore(base / f"{name}-store")
    store.ensure_default(DEFAULT_MODEL)
    train = {**FINETUNE.to_dict(), **{k: v for k, v in JOB.items() if k != "dataset"}}
    spec = JobSpec(dataset_format="shapes", shapes_images=96, train=TrainConfig(**train))
    run_finetune(spec, base / f"{name}-run", store)
    return images_per_s(json.loads((base / f"{name}-run" / "metrics.json").read_text()))


def main() -> None:
    setup_logging()
    redis.Redis.from_url(REDIS_URL).flushdb()
    base = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    # Direct runs before and after the worker's job, so that this machine's drift (a
    # fifth within a minute) reads as neither overhead nor gain: one direct run before
    # it read 0.88, 1.15 and 1.12 in three runs of the same code.
    direct_rates = [direct(base, "direct-before")]

    env = {
        "YOLOV1_REDIS_URL": REDIS_URL,
        "YOLOV1_MODEL_STORE": str(base / "store"),
        "YOLOV1_DATA_ROOT": str(base),
        "YOLOV1_MODEL_PATH": str(DEFAULT_MODEL),
    }
    api, worker = Server(env), Worker(env, "bench")
    try:
        api.wait_ready()
        with httpx.Client(base_url=api.url, timeout=30) as c:
            time.sleep(3)  # let the worker connect
            t0 = time.perf_counter()
            job_id = c.post("/v1/jobs", json=JOB).json()["id"]
            running_at = None
            while True:
                job = c.get(f"/v1/jobs/{job_id}").json()
                if running_at is None and job["status"] != "queued":
                    running_at = time.perf_counter() - t0
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    break
                # Poll fast until it runs, then rarely: the API shares the 2 cores.
                time.sleep(0.05 if running_at is None else 2.0)
        worker_rate = images_per_s(job["metrics"])
    finally:
        worker.stop()
        api.stop()
    direct_rates.append(direct(base, "direct-after"))
    direct_rate = statistics.mean(direct_rates)
    log.info("job: submit to running %.2f s, status %s", running_at, job["status"])
    log.info(
        "training inside the worker %.1f img/s, the same loop called directly %.1f img/s "
        "(mean of a run before and one after), ratio %.2f (target >= 0.95)",
        worker_rate,
        direct_rate,
        worker_rate / direct_rate,
    )


if __name__ == "__main__":
    main()
