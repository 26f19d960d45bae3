"""Model and training hyperparameters, saved beside every checkpoint and ONNX file
(no torch: the API's job schema takes its defaults from here too)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ARCHITECTURES = ("yolov1", "fast-yolov1", "tiny-yolov1")


def class_key(name: str) -> str:
    """What two class names are compared by, wherever a data set's classes meet a
    model's (fine-tuning, evaluation, Label Studio): case, spaces, ``_`` and ``-`` aside,
    so a data set's ``Circle`` or ``traffic_light`` is the model's ``circle`` or
    ``traffic light``, not a new class learnt from nothing."""
    return " ".join(name.replace("_", " ").replace("-", " ").split()).casefold()


# Input pixels per feature-map cell before the pooling to S x S (model/networks.py).
STRIDE = {"yolov1": 64, "fast-yolov1": 64, "tiny-yolov1": 32}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a network and pre/post-process its images."""

    arch: str = "tiny-yolov1"
    input_size: int = 224  # square network input; images are resized (stretched) to it
    S: int = 7
    B: int = 2
    C: int = 5
    class_names: list[str] = field(default_factory=list)
    # Pixels are fed as (rgb / 255 - mean) / std, channels first.
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    layout: str = "cells"  # output (N, S, S, 5B + C), see docs/loss.md
    # "sigmoid" squashes x, y, conf and class scores into [0, 1] inside the
    # network (still the loss's layout); "linear" is the paper's last layer.
    head_activation: str = "linear"
    width: int = 32  # channel multiplier of the tiny network

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got {self.arch!r}")
        if not self.class_names:
            self.class_names = [f"class{i}" for i in range(self.C)]
        if len(self.class_names) != self.C:
            raise ValueError(f"{len(self.class_names)} class names for C={self.C}")
        if self.head_activation not in ("linear", "sigmoid"):
            raise ValueError(f"head_activation must be linear or sigmoid: {self.head_activation}")

    @property
    def channels(self) -> int:
        return 5 * self.B + self.C

    def input_size_problem(self, size: int) -> str | None:
        """Why the network cannot take ``size`` x ``size`` images (None: it can): the
        feature map must pool evenly to S x S, or the ONNX export fails."""
        stride = STRIDE[self.arch]
        if size % stride or (size // stride) % self.S:
            ok = [stride * self.S * k for k in range(1, 5)]
            return f"{self.arch} with S={self.S} takes image sizes {ok}, not {size}"
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class TrainConfig:
    """One training run. The defaults are the paper's recipe for training from scratch;
    :data:`FINETUNE` holds the defaults of fine-tuning jobs."""

    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "sgd"  # "sgd" (the paper's) or "adamw"
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0  # linear warm-up from lr/10, then cosine decay to lr/20
    lambda_coord: float = 5.0
    lambda_noobj: float = 0.5
    confidence_target: str = "iou"
    augment: bool = True
    # The share of augmented images whose scaling and shifting cut no object that lies
    # wholly inside the image (model.augment.whole_scale_shift); 0: the paper's alone.
    keep_whole: float = 0.0
    # darknet shuffles an image's labels on every load, so any object of a shared
    # cell may be the one trained; off: the first listed always wins (docs/loss.md).
    shuffle_labels: bool = True
    # darknet's voc_label.py leaves difficult objects out of training; they still
    # count (as neither hit nor miss) in validation.
    keep_difficult: bool = False
    # Fine-tuning: the backbone (everything before the head) learns at this fraction
    # of the learning rate, and not at all for the first freeze_backbone_epochs.
    backbone_lr_scale: float = 1.0
    freeze_backbone_epochs: int = 0
    # Fine-tuning: the backbone's first freeze_layers convolutions (each with its batch
    # norm) keep the starting weights for the whole run, so backward stops above them:
    # at 224 px the first layers are the costly ones to train, not to run.
    freeze_layers: int = 0
    # Keep batch-norm statistics as the starting weights have them (small batches of
    # a small data set estimate them badly).
    freeze_bn: bool = False
    # Which epoch's weights a run keeps: "best", the highest validation mAP (a tie going
    # to the lower validation loss), or "last", the end of the schedule, where the
    # learning rate has decayed and the weight average settled.
    keep: str = "best"
    # Stop early (0: never). keep="best": when no epoch has been better than the best for
    # this many epochs. keep="last": when no epoch has beaten the starting weights
    # (epoch 0, where the run validates them) for this many: the run is going nowhere.
    early_stop_patience: int = 0
    # Validate, keep and export an exponential moving average of the weights with this
    # decay per step (0: the weights as trained). It smooths the last epochs' noise.
    ema_decay: float = 0.0
    # Ramp the average's decay up from 0 over the first steps ((1 + n) / (10 + n)), so
    # that it soon forgets randomly initialised weights. Off for fine-tuning: there the
    # starting weights are a trained model, and an average that keeps them through the
    # first epochs' upheaval is what the job should validate (a short job's decay is
    # then capped: model.train.average_decay).
    ema_warmup: bool = True
    # Fine-tuning: move the kept weights this share of the way back to the base model's
    # (WiSE-FT); outputs of classes the base does not know stay as trained.
    keep_base: float = 0.0
    seed: int = 0
    amp: bool = True  # bf16 autocast where the CPU supports it (the loss stays float32)
    channels_last: bool = True
    grad_clip: float = 10.0

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        if self.confidence_target not in ("iou", "one"):
            raise ValueError(f"confidence_target must be iou or one: {self.confidence_target!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be best or last, got {self.keep!r}")
        if self.freeze_layers < 0:
            raise ValueError(f"freeze_layers must be >= 0, got {self.freeze_layers}")
        if not 0.0 <= self.keep_whole <= 1.0:
            raise ValueError(f"keep_whole must be in [0, 1], got {self.keep_whole}")
        if not 0.0 <= self.keep_base < 1.0:
            raise ValueError(f"keep_base must be in [0, 1), got {self.keep_base}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# Fine-tuning jobs start from a trained model: AdamW at 1e-3 for the whole network, a
# moving average of the weights (decay 0.995 a step from the first, starting at the
# base model's weights), 80 epochs whose last is kept (on a 40-image validation split
# the best epoch is a spike of noise; the end of the cosine scored higher on held-out
# data in every run), given up after 20 epochs if none
# has beaten the base model; the kept average is the result (no keep_base blend: the
# average already holds the base, and blending it in again cost mAP). Measured in
# bench/bench_finetune.py against the alternatives; README's fine-tuning section has
# the figures.
FINETUNE = TrainConfig(
    epochs=80,
    batch_size=16,
    optimizer="adamw",
    learning_rate=1e-3,
    warmup_epochs=1.0,
    backbone_lr_scale=1.0,
    keep="last",
    early_stop_patience=20,
    ema_decay=0.995,
    ema_warmup=False,
)


@dataclass
class JobSpec:
    """One fine-tuning job: its data, its base version and its hyperparameters."""

    dataset_format: str  # "yolo" | "voc" | "coco" | "shapes"
    dataset_path: Path | None = None  # None for shapes
    dataset_id: str | None = None
    shapes_images: int = 64
    base_version: int = 1
    image_size: int | None = None  # None: the base model's input size
    val_fraction: float = 0.2
    auto_activate: bool = False
    # also register a verified int8 variant (model.quantize); None: when the base has one
    int8: bool | None = None
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**FINETUNE.to_dict()))
