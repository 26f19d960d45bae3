"""Label Studio's ML backend (label_studio_ml/api.py): add
``http://<this host>:8000/labelstudio`` as a model in a project's settings and its
tasks get pre-annotations. ``app.labelstudio`` has the protocol's shapes."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app import labelstudio as ls
from app.aio import gather_or_cancel
from app.detection import detect_image
from app.errors import InputError
from app.state import AppState, ModelDep, StateDep, presents_key
from app.training import train_from_labelstudio
from model.registry import RegistryError

router = APIRouter(prefix="/labelstudio", tags=["label studio"])
VERSION = re.compile(r"-v(\d{1,9})$")


class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    project: str | int | None = None
    schema_: str | None = Field(None, alias="schema", description="the project's label config")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    tasks: list[dict[str, Any]] = Field(min_length=1, max_length=64)
    label_config: str | None = None
    project: str | int | None = None
    model_version: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class Prediction(BaseModel):
    result: list[dict[str, Any]] = Field(
        description="RectangleLabels regions: value {x, y, width, height} in percent, "
        "rectanglelabels, score"
    )
    score: float = Field(description="the mean of the regions' scores (0 with none)")
    model_version: str


class PredictResponse(BaseModel):
    results: list[Prediction] = Field(description="one per task, in order")


def model_version(name: str, version: int) -> str:
    return f"{name}-v{version}"


@router.get("/health", summary="Label Studio's health check")
@router.get("/", summary="Label Studio's health check", include_in_schema=False)
def health() -> dict[str, str]:
    return {"status": "UP", "model_class": "YOLOv1"}


@router.post("/setup", summary="Label Studio connects a project")
def setup(req: SetupRequest, model: ModelDep) -> dict[str, str]:
    ls.parse_config(req.schema_)  # a config this backend cannot serve is said now
    return {"model_version": model_version(model.name, model.version)}


@router.get("/versions", summary="The model versions Label Studio can ask /predict for")
def versions(state: StateDep, model: ModelDep) -> dict[str, list[str]]:
    """Every registered version as ``name-vN`` (Label Studio's model version list); a
    server without a registry has only the model it serves."""
    store = state.manager.store
    if store is None:
        return {"versions": [model_version(model.name, model.version)]}
    out = []
    for v in store.versions():
        try:
            out.append(model_version(store.meta(v).get("name") or "model", v))
        except RegistryError:
            continue  # a version being written or removed
    return {"versions": out}


@router.post(
    "/webhook",
    summary="Label Studio's events: START_TRAINING submits a fine-tuning job",
    responses={
        201: {"description": "the job, queued"},
        401: {"description": "API keys are set: Basic auth with a key as the password"},
        403: {"description": "training from Label Studio is off (YOLOV1_LABELSTUDIO_TRAIN)"},
    },
)
async def webhook(request: Request, state: StateDep) -> JSONResponse:
    """Label Studio sends ``{"action": "START_TRAINING", "project": {...}}`` when a user
    presses "Start Training" in the project's model settings. The project's annotated
    tasks become a YOLO data set and a job (``/v1/jobs/{id}`` follows it) whose version
    is activated only if it beats the served one. Other events are acknowledged."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise InputError(422, "the webhook's body must be a JSON object")
    if body.get("action") != "START_TRAINING":
        return JSONResponse({"status": "Unknown event", "detail": "only START_TRAINING trains"})
    s = state.settings
    if not s.labelstudio_train:
        raise HTTPException(
            403,
            "training from Label Studio is off on this server: set YOLOV1_LABELSTUDIO_TRAIN="
            "true, or train with POST /v1/jobs on an export",
        )
    _check_key(request, s.api_keys)
    if state.jobs is None:
        raise HTTPException(503, "jobs need Redis: set YOLOV1_REDIS_URL (make run does)")
    project = body.get("project")
    if not isinstance(project, dict):
        raise InputError(422, "the webhook's body has no 'project' object")
    job = await train_from_labelstudio(state, state.jobs, project)
    return JSONResponse({"status": "ok", **job}, status_code=201)


def _check_key(request: Request, keys: list[str]) -> None:
    """With API keys set, Label Studio's model connection sends one as the password of
    its Basic authentication (or a client sends ``Bearer <key>``)."""
    if keys and not presents_key(request, keys, basic=True):
        raise HTTPException(
            401,
            "an API key is needed: in Label Studio's model connection, turn on Basic "
            "Authentication with any user and a key of YOLOV1_API_KEYS as the password",
            headers={"WWW-Authenticate": 'Basic realm="yolov1"'},
        )


@router.get("/metrics", include_in_schema=False)
def metrics() -> dict[str, Any]:
    return {}


@router.post(
    "/predict",
    summary="Pre-annotations for Label Studio tasks",
    response_model=PredictResponse,
    responses={
        413: {"description": "too large"},
        422: {"description": "a config or task this backend cannot read, and why"},
    },
)
async def predict(req: PredictRequest, state: StateDep, model: ModelDep) -> dict[str, Any]:
    """One prediction per task, in order: RectangleLabels regions for the config's
    first RectangleLabels control, classes matched to its labels by name."""
    target = ls.parse_config(req.label_config)
    served = await _served(state, req.model_version)
    labels = ls.class_to_label(served.cfg.class_names, target.labels)
    version = model_version(served.name, served.version)
    opts = dict(
        conf_threshold=_threshold(req.params.get("conf_threshold"), state.settings.conf_threshold),
        iou_threshold=0.5,
        max_detections=100,
        classes=None,
    )

    async def one(i: int, task: dict[str, Any]) -> dict[str, Any]:
        ref = ls.task_image_ref(task, target, i)
        data = await ls.task_image(ref, state.settings, state.studio, f"tasks[{i}]")
        detecting = detect_image(
            data,
            served,
            state.batcher,
            state.cpu_pool,
            max_pixels=state.settings.max_pixels,
            options=opts,
        )
        d = await state.stats.count(served.version, detecting, lambda d: [d.timing])
        return ls.prediction(ls.regions(d.detections, d.width, d.height, target, labels), version)

    results = await gather_or_cancel(*(one(i, t) for i, t in enumerate(req.tasks)))
    return {"results": list(results)}


def _threshold(given: Any, setting: float | None) -> float | None:
    """The request's ``params.conf_threshold``, else the setting, else None (the
    model's calibrated threshold)."""
    if given is None:
        return setting
    try:
        value = float(given)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 <= value <= 1:
        raise InputError(422, f"params.conf_threshold must be a number in [0, 1], not {given!r}")
    return value


async def _served(state: AppState, requested: str | None):
    """The version Label Studio asks for (``name-vN``) when this server has it, else
    the active one (Label Studio may remember a version since removed)."""
    m = VERSION.search(requested or "")
    if m is not None:
        try:
            return await state.manager.model_for(int(m.group(1)))
        except KeyError:
            pass
    return state.holder.current
