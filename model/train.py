"""The training loop: one function that reads top to bottom (after nanoGPT's train.py).

Data are ``(N, H, W, 3)`` uint8 arrays already at the network's input size plus
per-image labels, so the loop does no file I/O. Everything random derives from
``seed`` (and the epoch and image index), so a run is reproducible and a
resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.augment import augment
from model.boxes import cxcywh_to_xyxy, decode_predictions
from model.config import ModelConfig
from model.loss import yolo_loss
from model.loss_core import TERMS
from model.metrics import ImageDetections, ImageTruth, evaluate_map
from model.networks import build_model
from model.plots import plot_curves
from model.preprocess import to_input

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
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
    seed: int = 0
    amp: bool = True  # bf16 autocast where the CPU supports it (the loss stays float32)
    channels_last: bool = True
    eval_conf_threshold: float = 0.01  # low, so the mAP sees the whole precision/recall curve
    grad_clip: float = 10.0


class Cancelled(Exception):
    """Raised inside :func:`train` when the cancel check says stop."""


@dataclass
class EpochMetrics:
    epoch: int
    train: dict[str, float]
    val: dict[str, float] = field(default_factory=dict)
    val_map: float = float("nan")
    images_per_s: float = 0.0
    lr: float = 0.0


@dataclass
class TrainResult:
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[EpochMetrics]
    best_map: float


def bf16_supported() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def make_batch(
    images: np.ndarray,
    labels: list[np.ndarray],
    idx: np.ndarray,
    cfg: ModelConfig,
    aug_seed: tuple[int, ...] | None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    imgs, labs = [], []
    for i in idx:
        img, lab = images[i], labels[i]
        if aug_seed is not None:
            img, lab = augment(img, lab, np.random.default_rng((*aug_seed, int(i))))
        imgs.append(img)
        labs.append(torch.from_numpy(np.asarray(lab, dtype=np.float32)))
    x = torch.from_numpy(to_input(np.stack(imgs), cfg))  # (N, 3, H, W)
    return x, labs


def loss_options(cfg: ModelConfig, tc: TrainConfig) -> dict:
    """The loss's grid and weights for this model and run."""
    return dict(
        S=cfg.S,
        B=cfg.B,
        C=cfg.C,
        lambda_coord=tc.lambda_coord,
        lambda_noobj=tc.lambda_noobj,
        confidence_target=tc.confidence_target,
    )


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (0.1 + 0.9 * step / max(warmup, 1))
    t = (step - warmup) / max(total - warmup, 1)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: list[np.ndarray],
    cfg: ModelConfig,
    tc: TrainConfig,
    batch_size: int = 64,
) -> tuple[dict[str, float], float]:
    """Validation loss terms (mean per image) and VOC all-point mAP@0.5."""
    model.eval()
    sums = dict.fromkeys(TERMS, 0.0)
    dets, truths = [], []
    for start in range(0, len(images), batch_size):
        idx = np.arange(start, min(start + batch_size, len(images)))
        x, labs = make_batch(images, labels, idx, cfg, None)
        if tc.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.amp and bf16_supported()):
            pred = model(x)
        pred = pred.float()
        r = yolo_loss(pred, labs, **loss_options(cfg, tc), reduction="sum")
        for k in TERMS:
            sums[k] += float(r.terms[k])
        for p, lab in zip(pred.numpy(), labs, strict=True):
            d = decode_predictions(
                p, S=cfg.S, B=cfg.B, C=cfg.C, conf_threshold=tc.eval_conf_threshold
            )
            dets.append(ImageDetections(d["boxes"], d["scores"], d["class_ids"]))
            lab = lab.numpy()
            truths.append(ImageTruth(cxcywh_to_xyxy(lab[:, 1:]), lab[:, 0].astype(int)))
    n = max(len(images), 1)
    val = {k: v / n for k, v in sums.items()}
    val["total"] = sum(val[k] for k in TERMS)
    return val, evaluate_map(dets, truths, cfg.C).map


def train(
    model_cfg: ModelConfig,
    tc: TrainConfig,
    train_images: np.ndarray,
    train_labels: list[np.ndarray],
    val_images: np.ndarray,
    val_labels: list[np.ndarray],
    out_dir: str | Path,
    *,
    resume: str | Path | None = None,
    init_weights: dict[str, torch.Tensor] | None = None,
    progress: Callable[[dict], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    checkpoint_on: tuple[type[BaseException], ...] = (),
) -> TrainResult:
    """Train, validating and checkpointing (``last.pt``, ``best.pt``) every epoch.

    An exception of a type in ``checkpoint_on`` raised during training (Celery's soft
    time limit, say) first saves ``interrupted.pt`` with the weights at that step."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tc.seed)
    model = build_model(model_cfg)
    if init_weights is not None:
        model.load_state_dict(init_weights, strict=False)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params_decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    params_other = [p for n, p in model.named_parameters() if p.dim() <= 1]
    groups = [
        {"params": params_decay, "weight_decay": tc.weight_decay},
        {"params": params_other, "weight_decay": 0.0},
    ]
    if tc.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=tc.learning_rate, momentum=tc.momentum)
    elif tc.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=tc.learning_rate)
    else:
        raise ValueError(f"optimizer must be sgd or adamw, got {tc.optimizer!r}")
    amp = tc.amp and bf16_supported()

    history: list[EpochMetrics] = []
    start_epoch, best_map = 0, -1.0
    if resume is not None:
        ckpt = torch.load(resume, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        start_epoch = ckpt["epoch"] + 1
        best_map = ckpt["best_map"]
        history = [EpochMetrics(**h) for h in ckpt["history"]]

    n = len(train_images)
    steps_per_epoch = max(1, math.ceil(n / tc.batch_size))
    total_steps = tc.epochs * steps_per_epoch
    warmup = int(tc.warmup_epochs * steps_per_epoch)
    last_path, best_path = out / "last.pt", out / "best.pt"
    prefetch = ThreadPoolExecutor(1)
    epoch, step = start_epoch, 0
    try:
        for epoch in range(start_epoch, tc.epochs):
            model.train()
            order = np.random.default_rng((tc.seed, epoch)).permutation(n)
            sums, seen, t0 = dict.fromkeys(TERMS, 0.0), 0, time.perf_counter()
            aug_seed = (tc.seed, epoch) if tc.augment else None

            def batch_at(step: int, order=order, aug_seed=aug_seed):
                idx = order[step * tc.batch_size : (step + 1) * tc.batch_size]
                return idx, *make_batch(train_images, train_labels, idx, model_cfg, aug_seed)

            # Prepare the next batch in a thread while this one trains (PIL and
            # NumPy release the GIL); the batch contents do not depend on timing.
            pending = prefetch.submit(batch_at, 0)
            for step in range(steps_per_epoch):
                if should_cancel is not None and should_cancel():
                    pending.cancel()
                    raise Cancelled(f"cancelled at epoch {epoch}, step {step}")
                idx, x, labs = pending.result()
                if step + 1 < steps_per_epoch:
                    pending = prefetch.submit(batch_at, step + 1)
                if tc.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                lr = lr_at(epoch * steps_per_epoch + step, total_steps, warmup, tc.learning_rate)
                for g in opt.param_groups:
                    g["lr"] = lr
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    pred = model(x)  # (N, S, S, 5B + C)
                r = yolo_loss(pred, labs, **loss_options(model_cfg, tc))
                opt.zero_grad(set_to_none=True)
                r.total.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                opt.step()
                seen += len(idx)
                terms = {k: float(v.detach()) for k, v in r.terms.items()}
                for k in TERMS:
                    sums[k] += terms[k] * len(idx)
                if progress is not None:
                    progress(
                        {
                            "epoch": epoch + 1,
                            "epochs": tc.epochs,
                            "step": step + 1,
                            "steps": steps_per_epoch,
                            "loss": sum(terms.values()),
                            "terms": terms,
                        }
                    )
            elapsed = time.perf_counter() - t0
            train_terms = {k: v / max(seen, 1) for k, v in sums.items()}
            train_terms["total"] = sum(train_terms[k] for k in TERMS)
            val_terms, val_map = evaluate(model, val_images, val_labels, model_cfg, tc)
            m = EpochMetrics(epoch + 1, train_terms, val_terms, val_map, seen / elapsed, lr)
            history.append(m)
            log.info(
                "epoch %d/%d  loss %.3f  val loss %.3f  val mAP@0.5 %.4f  %.0f img/s",
                epoch + 1,
                tc.epochs,
                train_terms["total"],
                val_terms["total"],
                val_map,
                m.images_per_s,
            )
            improved = val_map > best_map or not best_path.exists()
            best_map = max(best_map, val_map) if not math.isnan(val_map) else best_map
            ckpt = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "epoch": epoch,
                "best_map": best_map,
                "history": [asdict(h) for h in history],
                "model_config": model_cfg.to_dict(),
                "train_config": asdict(tc),
            }
            _atomic_save(ckpt, last_path)
            if improved:
                _atomic_save(ckpt, best_path)
            write_metrics(history, out)
            if progress is not None:
                progress(
                    {
                        "epoch": epoch + 1,
                        "epochs": tc.epochs,
                        "step": steps_per_epoch,
                        "steps": steps_per_epoch,
                        "epoch_metrics": asdict(m),
                    }
                )
    except checkpoint_on:
        # Stopped from outside (a time limit): keep where it got to, then let it propagate.
        interrupted = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": epoch,
            "step": step,
            "model_config": model_cfg.to_dict(),
            "train_config": asdict(tc),
            "history": [asdict(h) for h in history],
        }
        _atomic_save(interrupted, out / "interrupted.pt")
        raise
    finally:
        prefetch.shutdown(wait=False, cancel_futures=True)
    plot_curves([asdict(h) for h in history], out / "curves.png")
    return TrainResult(best_path, last_path, history, best_map)


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def write_metrics(history: list[EpochMetrics], out: Path) -> None:
    """``metrics.json`` and ``metrics.csv`` of the run so far (the plot comes at the end)."""
    (out / "metrics.json").write_text(json.dumps([asdict(h) for h in history], indent=1))
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "epoch",
                "train_loss",
                *[f"train_{k}" for k in TERMS],
                "val_loss",
                "val_map50",
                "images_per_s",
                "lr",
            ]
        )
        for h in history:
            w.writerow(
                [
                    h.epoch,
                    h.train["total"],
                    *[h.train[k] for k in TERMS],
                    h.val.get("total"),
                    h.val_map,
                    h.images_per_s,
                    h.lr,
                ]
            )
