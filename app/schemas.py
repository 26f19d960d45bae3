"""Request and response schemas."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.config import FINETUNE

TERMS_DOC = "coord_xy, coord_wh, obj, noobj and class, as in docs/loss.md"


class Box(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float


class Detection(BaseModel):
    class_id: int
    class_name: str
    confidence: float = Field(ge=0, le=1)
    box: Box = Field(description="corners in the original image's pixels")


class ModelRef(BaseModel):
    name: str
    version: int


class ImageSize(BaseModel):
    width: int
    height: int


class Timing(BaseModel):
    decode: float
    preprocess: float
    queue: float
    inference: float
    postprocess: float


class DetectResult(BaseModel):
    model: ModelRef
    image: ImageSize
    detections: list[Detection]
    timing_ms: Timing
    conf_threshold: float = Field(description="the score threshold these detections passed")
    raw: list[list[list[float]]] | None = Field(
        None, description="the raw (S, S, 5B+C) grid (include_raw=true); send it to /v1/loss"
    )


class ImageInput(BaseModel):
    """One image of a JSON detect request: ``base64`` (or a ``data:`` URL in it), or
    ``url`` where the server allows URLs (YOLOV1_IMAGE_URL_HOSTS)."""

    model_config = ConfigDict(extra="forbid")

    base64: str | None = Field(None, description="the encoded image file, base64")
    url: str | None = Field(None, description="http(s) URL, or a data: URL")
    id: int | None = Field(
        None, ge=0, le=2**53, description="image_id in format=coco output (default: index)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> ImageInput:
        if (self.base64 is None) == (self.url is None):
            raise ValueError("give exactly one of 'base64' and 'url'")
        return self


class DetectRequest(BaseModel):
    """``POST /v1/detect`` with ``Content-Type: application/json``. Options given here
    take the place of the query's."""

    model_config = ConfigDict(extra="forbid")

    images: list[ImageInput] = Field(min_length=1)
    conf_threshold: float | None = Field(None, ge=0, le=1)
    iou_threshold: float | None = Field(None, ge=0, le=1)
    max_detections: int | None = Field(None, ge=1, le=1000)
    classes: list[str] | None = None
    include_raw: bool | None = None
    format: Literal["json", "coco"] | None = None


class CocoDetection(BaseModel):
    """One entry of a COCO results file (``format=coco``)."""

    image_id: int
    category_id: int = Field(description="the model's class id (GET /v1/models: class_names)")
    bbox: list[float] = Field(description="[x, y, width, height] in the image's pixels")
    score: float


class Grid(BaseModel):
    S: int = Field(ge=1, le=64)
    B: int = Field(ge=1, le=16)
    C: int = Field(ge=1, le=1000)


class Label(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"class_id": 1, "box": [0.5, 0.5, 0.2, 0.3]}}
    )

    class_id: int = Field(ge=0, le=2**31, description="in [0, C)")
    box: list[float] = Field(min_length=4, max_length=4, description="cx, cy, w, h (fractions)")


class LossOptions(BaseModel):
    grid: Grid | None = Field(None, description="defaults to the served model's grid")
    lambda_coord: float = Field(5.0, ge=0, le=1e6)
    lambda_noobj: float = Field(0.5, ge=0, le=1e6)
    confidence_target: Literal["iou", "one"] = Field(
        FINETUNE.confidence_target,
        description="what a responsible box's confidence learns: its IoU with the object "
        "(darknet) or 1",
    )
    layout: Literal["cells", "darknet"] = "cells"
    metrics: bool = Field(False, description="also return mAP@0.5 of the decoded predictions")


class LossRequest(LossOptions):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "predictions": "N x S x S x (5B+C) numbers (or N flat darknet vectors)",
                "labels": [[{"class_id": 1, "box": [0.5, 0.5, 0.2, 0.3]}]],
                "grid": {"S": 7, "B": 2, "C": 5},
            }
        }
    )

    predictions: list[Any] = Field(
        description="N x S x S x (5B+C) (layout 'cells') or N x S*S*(5B+C) (layout 'darknet')"
    )
    labels: list[list[Label]] = Field(description="one list of labels per image")


class LossTerms(BaseModel):
    coord_xy: float
    coord_wh: float
    obj: float
    noobj: float
    class_: float = Field(alias="class", serialization_alias="class")

    model_config = ConfigDict(populate_by_name=True)


class ImageLoss(BaseModel):
    loss: float
    terms: LossTerms
    darknet_cost: float = Field(
        description="the figure darknet's detection layer reports for the same outputs, "
        "sum(delta²): λcoord·coord + obj + λnoobj·noobj + class (docs/loss.md)"
    )
    objects: int = Field(description="objects assigned to a cell")
    dropped_objects: int = Field(
        description="objects not trained: their cell was taken by one listed before, or "
        "the box, clipped to the image, is under 0.005 of it wide or high (docs/loss.md)"
    )


class LossMetrics(BaseModel):
    map50: float | None
    ap50: dict[str, float]


class LossResponse(BaseModel):
    loss: float = Field(description="mean over images of the per-image loss")
    terms: LossTerms = Field(description=f"means over images of {TERMS_DOC}")
    darknet_cost: float = Field(
        description="darknet's cost for the batch, summed over images as darknet prints it"
    )
    per_image: list[ImageLoss]
    grid: Grid
    metrics: LossMetrics | None = None


class ModelInfo(BaseModel):
    name: str
    version: int
    provider: str
    architecture: str
    input_size: int
    grid: Grid
    classes: list[str]
    layout: str
    precision: Literal["fp32", "int8"] = Field(
        "fp32",
        description="int8: the version's verified int8 variant serves (YOLOV1_PRECISION int8, "
        "or auto where this CPU runs it faster)",
    )
    precision_reason: str | None = Field(
        None, description="why this precision serves (YOLOV1_PRECISION=auto: both timed here)"
    )
    quantization: dict[str, Any] | None = Field(
        None, description="how the int8 variant was made and what both scored"
    )
    training_metrics: dict[str, Any] = {}
    best_val_map50: float | None = None
    conf_threshold: float = Field(
        description="detect's default score threshold: YOLOV1_CONF_THRESHOLD when set, "
        "else this model's calibrated one (calibration), else 0.2"
    )
    calibration: dict[str, Any] | None = Field(
        None,
        description="yolov1 calibrate: the score at which held-out precision reached "
        "target_precision, with that precision and recall",
    )
    warmup_ms: dict[int, float] = {}
    cpu_lanes: int = Field(
        0,
        description="one-thread sessions that run concurrent images side by side on the "
        "CPU (YOLOV1_CPU_LANES); 0: they are micro-batched",
    )
    batch_buckets: list[int] | None = Field(
        None,
        description="the batch sizes that each have a session of their own, every batch "
        "padded to the next (YOLOV1_BATCH_BUCKETS; by default on a GPU provider); null: "
        "one session takes every size",
    )


class ModelsResponse(BaseModel):
    active: ModelInfo
    provider: str
    versions: list[dict[str, Any]] = Field(default_factory=list, description="the registry")
    last_swap_error: str | None = None


class ModelFile(BaseModel):
    name: str
    bytes: int
    sha256: str | None = Field(None, description="as recorded when the version was registered")
    url: str = Field(description="GET it here (the same API key as reading)")


class ModelVersion(BaseModel):
    version: int
    active: bool
    name: str | None = None
    parent: int | None = None
    created_at: float | None = None
    source: str | None = None
    dataset: Any = None
    hyperparameters: dict[str, Any] | None = Field(
        None, description="the job's TrainConfig, as saved beside the checkpoint"
    )
    metrics: dict[str, Any] | None = Field(None, description="what the job measured")
    int8: str | None = Field(
        None, description="whether the job registered an int8 variant, or why not"
    )
    files: list[ModelFile] = Field(description="the version's files, to download")


class DatasetRef(BaseModel):
    format: Literal["yolo", "voc", "coco", "shapes"]
    path: str | None = Field(None, description="relative to the data root (yolo, voc, coco)")
    dataset_id: str | None = Field(None, description="an uploaded data set (POST /v1/datasets)")
    images: int = Field(64, ge=4, le=100_000, description="shapes only: images to generate")


# A share in [0, 1): the constraints of the fields that say how much of something.
BELOW_ONE: dict[str, Any] = {"ge": 0, "lt": 1, "allow_inf_nan": False}
UP_TO_ONE: dict[str, Any] = {"ge": 0, "le": 1, "allow_inf_nan": False}
# ... and those that weigh a term of the loss.
LOSS_WEIGHT: dict[str, Any] = {"ge": 0, "le": 1000, "allow_inf_nan": False}


class JobRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "dataset": {"format": "shapes", "images": 64},
                "epochs": 2,
                "batch_size": 16,
            }
        },
    )

    dataset: DatasetRef
    base_model: int | None = Field(None, ge=1, description="a version; default the active one")
    epochs: int = Field(
        FINETUNE.epochs, ge=1, le=1000, description="at most; early stopping may end sooner"
    )
    batch_size: int = Field(FINETUNE.batch_size, ge=1, le=512, description="images per step")
    optimizer: Literal["sgd", "adamw"] = Field(
        FINETUNE.optimizer, description="sgd with momentum 0.9 (the paper's) or adamw"
    )
    learning_rate: float = Field(
        FINETUNE.learning_rate,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="the peak, after warm-up; it then falls to a twentieth on a cosine",
    )
    weight_decay: float = Field(
        FINETUNE.weight_decay, **UP_TO_ONE, description="L2 (decoupled for adamw)"
    )
    warmup_epochs: float = Field(
        FINETUNE.warmup_epochs,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="the learning rate rises linearly from a tenth over these epochs",
    )
    backbone_lr_scale: float = Field(
        FINETUNE.backbone_lr_scale,
        **UP_TO_ONE,
        description="the backbone learns at this fraction of learning_rate",
    )
    freeze_backbone_epochs: int = Field(
        FINETUNE.freeze_backbone_epochs,
        ge=0,
        le=1000,
        description="only the head learns for this many epochs first",
    )
    freeze_layers: int = Field(
        FINETUNE.freeze_layers,
        ge=0,
        le=100,
        description="the backbone's first N convolutions keep the base model's weights "
        "(steps get faster: backward stops above them)",
    )
    freeze_bn: bool = Field(
        FINETUNE.freeze_bn, description="keep the base model's batch-norm statistics"
    )
    keep: Literal["best", "last"] = Field(
        FINETUNE.keep,  # type: ignore[arg-type]
        description="the epoch whose weights the job keeps: the last (the end of the "
        "schedule) or the best (the highest val mAP, a tie going to the lower val loss)",
    )
    early_stop_patience: int = Field(
        FINETUNE.early_stop_patience,
        ge=0,
        le=1000,
        description="stop after this many epochs: with keep 'last', when none has beaten the "
        "base model; with 'best', when none has beaten the best (0: never)",
    )
    ema_decay: float = Field(
        FINETUNE.ema_decay,
        **BELOW_ONE,
        description="validate and keep a moving average of the weights with this decay "
        "per step (0: the weights as trained)",
    )
    ema_warmup: bool = Field(
        FINETUNE.ema_warmup,
        description="ramp the average's decay up from 0 over the first steps, so that it "
        "soon leaves its starting weights (for random ones; a job starts from a trained model)",
    )
    keep_base: float = Field(
        FINETUNE.keep_base,
        **BELOW_ONE,
        description="move the result this share of the way back to the base model's "
        "weights (outputs of new classes stay as trained)",
    )
    lambda_coord: float = Field(
        FINETUNE.lambda_coord, **LOSS_WEIGHT, description="the box terms' weight (paper: 5)"
    )
    lambda_noobj: float = Field(
        FINETUNE.lambda_noobj, **LOSS_WEIGHT, description="the no-object term's weight (paper: 0.5)"
    )
    confidence_target: Literal["iou", "one"] = Field(
        FINETUNE.confidence_target,
        description="what a responsible box's confidence learns: its IoU with the object "
        "(darknet) or 1",
    )
    augment: bool = Field(
        FINETUNE.augment, description="random scale, shift, flip and colour (the paper's)"
    )
    keep_whole: float = Field(
        FINETUNE.keep_whole,
        **UP_TO_ONE,
        description="the share of augmented images scaled and shifted so that no object "
        "lying wholly inside the image is cut (for objects that nearly fill it)",
    )
    shuffle_labels: bool = Field(
        FINETUNE.shuffle_labels, description="darknet's rule for objects that share a cell"
    )
    keep_difficult: bool = Field(
        FINETUNE.keep_difficult, description="train on objects marked difficult too"
    )
    image_size: int | None = Field(
        None,
        ge=32,
        le=1024,
        multiple_of=32,
        description="train and serve at this input size; default the base model's (its "
        "features fit no other)",
    )
    seed: int = Field(
        FINETUNE.seed, ge=0, le=2**31 - 1, description="the split, the order and the augmentation"
    )
    val_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="share of the images held out to validate, when the data set has no "
        "split of its own",
    )
    auto_activate: bool = Field(
        False,
        description="activate the new version if its validation mAP beats the base "
        "model's on the same validation split",
    )
    int8: bool | None = Field(
        None,
        description="also register an int8 variant, calibrated on the training images and "
        "kept only if it loses at most 0.01 mAP@0.5 on the validation split; default: "
        "when the base version has one (the shipped default model does)",
    )


class JobProgress(BaseModel):
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    eta_s: float | None = None
    images_per_s: float | None = Field(None, description="training throughput, recent")


class Job(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: JobProgress = Field(default_factory=JobProgress)
    metrics: list[dict[str, Any]] = Field(default_factory=list, description="one entry per epoch")
    model_version: int | None = None
    error: str | None = None
    request: dict[str, Any]
    info: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    attempts: int = 0
    rev: int = Field(1, description="grows with every change; the events stream's event id")
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None

    @model_validator(mode="after")
    def _no_eta_once_ended(self) -> Job:
        # The last progress the worker wrote still holds the time it then expected to
        # need (an early stop ends a job before its last epoch).
        if self.status in ("succeeded", "failed", "cancelled"):
            self.progress.eta_s = None
        return self


class JobList(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[Job]


class DatasetSummary(BaseModel):
    id: str
    format: str
    images: int
    boxes: int
    boxes_per_class: dict[str, int]
    skipped: list[str]


class Ready(BaseModel):
    status: Literal["ready", "starting"]
    model: ModelRef | None = None
    provider: str | None = None
    dependencies: dict[str, Literal["up", "down"]] = Field(
        default_factory=dict, description="Redis, for jobs and data sets, where configured"
    )
