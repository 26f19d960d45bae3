"""What a job trains: the request (as the API validated it) mapped to a spec the
trainer runs. The hyperparameter defaults live in ``model.config.FINETUNE`` alone."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from model.config import FINETUNE, JobSpec, TrainConfig

# The request fields that are training hyperparameters, passed through as they are.
TRAIN_FIELDS = tuple(
    f.name
    for f in fields(TrainConfig)
    if f.name not in ("momentum", "amp", "channels_last", "grad_clip")
)


def spec_from_request(
    request: dict[str, Any], dataset_format: str, dataset_path: Path | None, base_version: int
) -> JobSpec:
    """``request`` is a stored job request (``JobRequest.model_dump()``)."""
    train = {k: request[k] for k in TRAIN_FIELDS if request.get(k) is not None}
    return JobSpec(
        dataset_format=dataset_format,
        dataset_path=dataset_path,
        dataset_id=request["dataset"].get("dataset_id"),
        shapes_images=request["dataset"].get("images", 64),
        base_version=base_version,
        image_size=request.get("image_size"),
        val_fraction=request.get("val_fraction", 0.2),
        auto_activate=bool(request.get("auto_activate")),
        int8=request.get("int8"),
        train=TrainConfig(**{**FINETUNE.to_dict(), **train}),
    )
