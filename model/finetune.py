"""A fine-tuning job from start to registered model version: the logic behind the
Celery task, callable directly (and tested directly)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.config import ModelConfig
from model.data import DetectionDataset, read_dataset, shapes_dataset, to_arrays
from model.export import export_onnx, slim_checkpoint
from model.networks import build_model
from model.registry import ModelStore
from model.train import TrainConfig, train

log = logging.getLogger(__name__)


@dataclass
class JobSpec:
    dataset_format: str  # "yolo" | "voc" | "coco" | "shapes"
    dataset_path: str | None = None  # absolute; None for shapes
    shapes_images: int = 64
    base_version: int = 1
    epochs: int = 5
    batch_size: int = 16
    learning_rate: float = 1e-3
    optimizer: str = "adamw"
    lambda_coord: float = 5.0
    lambda_noobj: float = 0.5
    confidence_target: str = "iou"
    image_size: int | None = None  # None: the base model's input size
    augment: bool = True
    seed: int = 0
    val_fraction: float = 0.2


def adapt_head(
    state: dict[str, torch.Tensor], old: ModelConfig, new: ModelConfig
) -> tuple[dict[str, torch.Tensor], bool]:
    """Base weights for a network with ``new``'s classes, matched by name.

    Returns the state dict for ``build_model(new)`` and whether the class part
    of the head was rebuilt. Box channels and the channels of classes present
    in both are copied; new classes start from the new network's initialisation.
    """
    target = build_model(new).state_dict()
    if old.class_names == new.class_names:
        return dict(state), False
    B = new.B
    old_index = {n: i for i, n in enumerate(old.class_names)}
    src_ch = list(range(5 * B))
    dst_ch = list(range(5 * B))
    for j, name in enumerate(new.class_names):
        if name in old_index:
            src_ch.append(5 * B + old_index[name])
            dst_ch.append(5 * B + j)
    out: dict[str, torch.Tensor] = {}
    for key, value in target.items():
        base = state.get(key)
        if base is not None and base.shape == value.shape:
            out[key] = base.clone()
            continue
        if base is None:
            out[key] = value
            continue
        # The last layer: outputs are (S*S, 5B+C) for a linear head, (5B+C) for a conv head.
        cells = value.shape[0] // new.channels
        new_w = value.clone().reshape(cells, new.channels, *value.shape[1:])
        old_w = base.reshape(cells, old.channels, *base.shape[1:])
        new_w[:, dst_ch] = old_w[:, src_ch]
        out[key] = new_w.reshape(value.shape)
    return out, True


def load_job_dataset(spec: JobSpec) -> DetectionDataset:
    if spec.dataset_format == "shapes":
        return shapes_dataset(spec.shapes_images, 1000 + spec.seed)
    ds = read_dataset(spec.dataset_path, spec.dataset_format)
    if len(ds) < 2:
        raise ValueError(f"the data set has {len(ds)} usable images; at least 2 are needed")
    return ds


def run_finetune(
    spec: JobSpec,
    run_dir: str | Path,
    store: ModelStore,
    *,
    progress: Callable[[dict], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    on_info: Callable[[dict], None] | None = None,
    checkpoint_on: tuple[type[BaseException], ...] = (),
) -> dict[str, Any]:
    """Train from ``spec.base_version``, resuming from ``run_dir/last.pt`` when a previous
    attempt left one; export, verify and register the result. Returns what the job reports."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    base = torch.load(
        store.checkpoint_path(spec.base_version), map_location="cpu", weights_only=False
    )
    base_cfg = ModelConfig.from_dict(base["model_config"])
    ds = load_job_dataset(spec)
    new_cfg = replace(
        base_cfg,
        class_names=list(ds.class_names),
        C=len(ds.class_names),
        input_size=spec.image_size or base_cfg.input_size,
    )
    weights, rebuilt = adapt_head(base["model"], base_cfg, new_cfg)
    info = {
        "head_rebuilt": rebuilt,
        "classes": new_cfg.class_names,
        "skipped": ds.skipped[:100],
        "images": len(ds),
    }
    if on_info is not None:
        on_info(info)

    order = np.random.default_rng(spec.seed).permutation(len(ds))
    n_val = max(1, round(len(ds) * spec.val_fraction))
    val = DetectionDataset(ds.class_names, [ds.records[i] for i in order[:n_val]])
    tr = DetectionDataset(ds.class_names, [ds.records[i] for i in order[n_val:]] or val.records)
    Xtr, Ltr = to_arrays(tr, new_cfg.input_size)
    Xva, Lva = to_arrays(val, new_cfg.input_size)
    tc = TrainConfig(
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        optimizer=spec.optimizer,
        learning_rate=spec.learning_rate,
        lambda_coord=spec.lambda_coord,
        lambda_noobj=spec.lambda_noobj,
        confidence_target=spec.confidence_target,
        augment=spec.augment,
        seed=spec.seed,
        warmup_epochs=min(1.0, spec.epochs / 4),
    )
    last = run_dir / "last.pt"
    resume = last if last.exists() else None
    if resume is not None:
        log.info("resuming from %s", resume)
    result = train(
        new_cfg,
        tc,
        Xtr,
        Ltr,
        Xva,
        Lva,
        run_dir,
        resume=resume,
        init_weights=weights,
        progress=progress,
        should_cancel=should_cancel,
        checkpoint_on=checkpoint_on,
    )
    export_onnx(result.best_checkpoint, run_dir / "model.onnx", real_images=Xva[:4])
    slim_checkpoint(result.best_checkpoint, run_dir / "model.pt")
    files = {n: run_dir / n for n in ("model.onnx", "model.json", "model.pt")}
    meta = {
        "name": f"finetune-{run_dir.name}",
        "parent": spec.base_version,
        "dataset": {
            "format": spec.dataset_format,
            "path": spec.dataset_path,
            "images": len(ds),
            "classes": new_cfg.class_names,
        },
        "hyperparameters": asdict(tc),
        "metrics": {"val_map50": result.best_map, "history": [asdict(h) for h in result.history]},
        "head_rebuilt": rebuilt,
    }
    version = store.register(files, meta)
    return {
        "model_version": version,
        "val_map50": result.best_map,
        "head_rebuilt": rebuilt,
        "epochs_trained": len(result.history),
    }
