"""Submitting fine-tuning jobs, from the API's own job route or from Label Studio's
"Start Training" (its ML backend webhook): the domain side of both, callable without
HTTP. The worker (worker/tasks.py) runs what is submitted here."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from PIL import Image

from app import labelstudio as ls
from app.aio import gather_or_cancel
from app.errors import InputError
from app.schemas import DatasetRef, JobRequest
from app.state import AppState
from jobs.datasets import DatasetError, resolve_dataset
from jobs.queue import enqueue
from jobs.store import JobStore
from model.config import ModelConfig

MIN_TASKS = 4  # a job needs images to train on and a few to validate on
FETCHES_AT_ONCE = 8


def base_config(store, version: int) -> ModelConfig:
    """The network a version was exported with (its sidecar), without loading it."""
    meta = json.loads((store.path(version) / "model.json").read_text())
    return ModelConfig.from_dict(meta["model_config"])


def submit_job(state: AppState, jobs: JobStore, req: JobRequest) -> dict[str, str]:
    """Check what the worker would only find out later (the data set, the base version,
    the input size), record the job and queue it."""
    try:
        resolve_dataset(req.dataset.model_dump(), jobs, state.settings.data_root)
    except DatasetError as exc:
        raise HTTPException(422, str(exc)) from exc
    store = state.manager.store
    if req.base_model is not None and (store is None or req.base_model not in store.versions()):
        raise HTTPException(422, f"base_model version {req.base_model} does not exist")
    if req.image_size is not None:
        base = req.base_model or state.holder.current.version
        cfg = base_config(store, base) if store is not None else state.holder.current.cfg
        if problem := cfg.input_size_problem(req.image_size):
            raise HTTPException(422, f"image_size: {problem}")
    rec = jobs.create(req.model_dump())
    try:
        enqueue(state.settings.redis_url, rec["id"])
    except Exception as exc:
        jobs.update(rec["id"], status="failed", error=f"could not enqueue: {exc}")
        raise HTTPException(503, f"could not enqueue the job: {exc}") from exc
    return {"id": rec["id"], "status": "queued"}


async def train_from_labelstudio(
    state: AppState, jobs: JobStore, project: dict[str, Any]
) -> dict[str, Any]:
    """A Label Studio project's annotated tasks as a YOLO data set under the data root
    (``labelstudio/project-<id>-<time>``: the workers read it there), then a job on it
    that activates its version only if it beats the served one on its validation split."""
    studio = state.studio
    if studio is None:
        raise InputError(422, "set YOLOV1_LABELSTUDIO_URL (and _API_KEY) to train from it")
    pid = project.get("id")
    if not isinstance(pid, int):
        raise InputError(422, "the webhook's 'project' has no integer 'id'")
    config = project.get("label_config")
    if not isinstance(config, str) or not config:
        about = await studio.get_json(f"/api/projects/{pid}")
        config = about.get("label_config") if isinstance(about, dict) else None
    target = ls.parse_config(config)
    if not target.labels:
        raise InputError(422, "the project's <RectangleLabels> lists no <Label>")
    tasks = await studio.get_json(
        f"/api/projects/{pid}/export", {"exportType": "JSON", "download_all_tasks": "false"}
    )
    if not isinstance(tasks, list):
        raise InputError(422, "Label Studio's export is not a list of tasks")
    labelled = [
        (t, lines)
        for t in tasks
        if isinstance(t, dict) and (lines := ls.yolo_lines(t, target, target.labels)) is not None
    ]
    if len(labelled) < MIN_TASKS:
        raise InputError(
            422,
            f"project {pid} has {len(labelled)} annotated tasks; a job needs at least "
            f"{MIN_TASKS} (it trains on some and validates on the others)",
        )
    gate = asyncio.Semaphore(FETCHES_AT_ONCE)

    async def image(i: int, task: dict[str, Any]) -> bytes:
        async with gate:
            ref = ls.task_image_ref(task, target, i)
            return await ls.task_image(ref, state.settings, studio, f"task {task.get('id', i)}")

    images = await gather_or_cancel(*(image(i, t) for i, t in enumerate(t for t, _ in labelled)))
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    rel = Path("labelstudio") / f"project-{pid}-{stamp}"
    root = state.settings.data_root / rel
    try:
        await asyncio.to_thread(_write_yolo, root, target.labels, labelled, images)
    except OSError as exc:
        raise HTTPException(
            503, f"could not write the data set under YOLOV1_DATA_ROOT ({root}): {exc}"
        ) from exc
    req = JobRequest(dataset=DatasetRef(format="yolo", path=str(rel)), auto_activate=True)
    job = await asyncio.to_thread(submit_job, state, jobs, req)  # Redis and the disk
    boxes = sum(len(lines) for _, lines in labelled)
    return {**job, "dataset": str(rel), "tasks": len(labelled), "boxes": boxes}


def _write_yolo(
    root: Path, names: list[str], labelled: list[tuple[dict, list[str]]], images: list[bytes]
) -> None:
    """``images/train/<task>.<ext>``, ``labels/train/<task>.txt`` and ``data.yaml``."""
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for (task, lines), data in zip(labelled, images, strict=True):
        try:
            fmt = (Image.open(io.BytesIO(data)).format or "jpeg").lower()
        except Exception:  # not an image: the job's reader says so, with the file
            fmt = "jpg"
        stem = f"task-{task.get('id', id(task))}"
        (root / "images" / "train" / f"{stem}.{fmt}").write_bytes(data)
        (root / "labels" / "train" / f"{stem}.txt").write_text("".join(f"{x}\n" for x in lines))
    doc = {"path": ".", "train": "images/train", "names": names}
    (root / "data.yaml").write_text(json.dumps(doc))  # JSON is YAML
