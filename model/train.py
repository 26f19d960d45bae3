"""The training loop, reading top to bottom (after nanoGPT's train.py).

Data are ``(N, H, W, 3)`` uint8 arrays already at the network's input size plus
per-image labels, so the loop does no file I/O. Everything random derives from
``seed`` (and the epoch and image index), so a run is reproducible and a
resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.augment import augment
from model.config import ModelConfig, TrainConfig
from model.devices import host_to_device
from model.evaluate import Evaluator
from model.loss import yolo_loss
from model.loss_core import TERMS
from model.networks import build_model, pool_before_activation
from model.plots import plot_curves

log = logging.getLogger(__name__)

__all__ = ["Cancelled", "EpochMetrics", "TrainConfig", "TrainResult", "evaluate", "train"]


class Cancelled(Exception):
    """Raised inside :func:`train` when the cancel check says stop."""


@dataclass
class EpochMetrics:
    epoch: int  # 0: the starting weights, before any step
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
    best_map: float  # the best trained epoch's (epoch 0 not included)
    best_epoch: int


@dataclass
class Data:
    """Training and validation arrays; ``val_difficult`` flags objects that count
    neither as hits nor misses."""

    train_images: np.ndarray
    train_labels: list[np.ndarray]
    val_images: np.ndarray
    val_labels: list[np.ndarray]
    val_difficult: list[np.ndarray] | None = None


def train_device() -> torch.device:
    """A CUDA GPU when torch sees one, else the CPU; ``YOLOV1_TRAIN_DEVICE`` (``cpu``,
    ``cuda``, ``cuda:1``) chooses."""
    name = os.environ.get("YOLOV1_TRAIN_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def bf16_supported(device: torch.device | None = None) -> bool:
    """bf16 in hardware: on a CPU AVX512-BF16 or AMX. oneDNN also runs bf16 on plain
    AVX-512 by converting in software, which trains the default model at 27 img/s
    against 58 in float32 on a Xeon without them: that is not support worth using."""
    if device is not None and device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    native = any(
        getattr(torch.cpu, probe, lambda: False)()
        for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    return native and torch.backends.mkldnn.is_available()


# (arch, input size, batch, channels_last, threads) -> whether bf16 trains faster there
_bf16_faster: dict[tuple, bool] = {}


def bf16_pays(cfg: ModelConfig, tc: TrainConfig) -> bool:
    """Whether a training step of this network in bf16 autocast beats float32 on this
    CPU by at least 5 %, timed once per process on random weights and inputs (the
    time does not depend on the values). bf16 in hardware is not enough: on a Xeon
    with AVX512-BF16 but no AMX a job trained at 47 img/s in bf16 where this network
    trains at 58 in float32, while an AMD EPYC with it trained at 155-169 img/s in bf16."""
    key = (cfg.arch, cfg.input_size, tc.batch_size, tc.channels_last, torch.get_num_threads())
    if key not in _bf16_faster:
        with torch.random.fork_rng(devices=[]):  # leaves the job's random state as it was
            torch.manual_seed(0)
            model = build_network(cfg, dataclasses.replace(tc, freeze_layers=0), None)
            model.train()
            n = max(tc.batch_size, 2)
            x = torch.rand(n, 3, cfg.input_size, cfg.input_size)
            if tc.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            labs = [torch.tensor([[i % cfg.C, 0.5, 0.5, 0.3, 0.3]]) for i in range(n)]

            def step(amp: bool) -> float:
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    pred = model(x)
                r = yolo_loss(pred.float(), labs, S=cfg.S, B=cfg.B, C=cfg.C)
                model.zero_grad(set_to_none=True)
                r.total.backward()
                return time.perf_counter() - t0

            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(3):  # the first of each warms oneDNN's kernels up
                for amp in (False, True):
                    times[amp].append(step(amp))
            fp32, bf16 = min(times[False][1:]), min(times[True][1:])
        _bf16_faster[key] = bf16 < 0.95 * fp32
        log.info(
            "a training step of %s: float32 %.0f ms, bf16 %.0f ms: %s",
            cfg.arch, fp32 * 1e3, bf16 * 1e3, "bf16" if _bf16_faster[key] else "float32",
        )  # fmt: skip
    return _bf16_faster[key]


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def to_device(
    x: torch.Tensor, labs: list[torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A batch made on the CPU (``make_batch``), where the model is. The labels stay on
    the CPU: the loss makes its targets from them there (``model.targets``), and each
    label sent to a GPU came back, one wait for the GPU apiece."""
    return host_to_device(x, device), labs


def make_batch(
    images: np.ndarray,
    labels: list[np.ndarray],
    idx: np.ndarray,
    cfg: ModelConfig,
    tc: TrainConfig,
    epoch: int | None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Images ``idx`` as network input ``(n, 3, H, W)`` and their labels; with an
    ``epoch`` (training) augmented and label-shuffled as ``tc`` says, seeded by
    (seed, epoch, image)."""
    imgs, labs = batch_arrays(images, labels, idx, tc, epoch)
    return to_tensor(imgs, cfg, tc.channels_last), labs


def batch_arrays(
    images: np.ndarray,
    labels: list[np.ndarray],
    idx: np.ndarray,
    tc: TrainConfig,
    epoch: int | None,
) -> tuple[np.ndarray, list[torch.Tensor]]:
    """:func:`make_batch` before :func:`to_tensor`: the images ``(n, H, W, 3)`` uint8."""
    imgs, labs = [], []
    for i in idx:
        img, lab = images[i], labels[i]
        if epoch is not None:
            rng = np.random.default_rng((tc.seed, epoch, int(i)))
            if tc.shuffle_labels and len(lab) > 1:
                lab = lab[rng.permutation(len(lab))]
            if tc.augment:
                img, lab = augment(img, lab, rng, keep_whole=tc.keep_whole)
        imgs.append(img)
        labs.append(torch.from_numpy(np.asarray(lab, dtype=np.float32)))
    return np.stack(imgs), labs  # (n, H, W, 3)


def to_tensor(
    batch_uint8: np.ndarray | torch.Tensor, cfg: ModelConfig, channels_last: bool
) -> torch.Tensor:
    """``(n, H, W, 3)`` uint8 -> ``(n, 3, H, W)`` float32 network input on the batch's
    device, the same numbers as ``model.preprocess.to_input`` but in torch: a permuted
    view of the NHWC array is already channels_last, so no transposing copy (4x faster
    than NumPy here)."""
    x = torch.as_tensor(batch_uint8).permute(0, 3, 1, 2).float() / 255.0  # (n, 3, H, W)
    mean = host_to_device(torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1), x.device)
    std = host_to_device(torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1), x.device)
    x = (x - mean) / std
    return x.contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )


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


def set_lr(opt: torch.optim.Optimizer, lr: float, epoch: int, tc: TrainConfig) -> None:
    frozen = epoch < tc.freeze_backbone_epochs
    for g in opt.param_groups:
        g["lr"] = lr * ((0.0 if frozen else tc.backbone_lr_scale) if g["backbone"] else 1.0)


def frozen_layers(model: torch.nn.Module, n: int) -> list[torch.nn.Module]:
    """The backbone's modules before its ``n+1``-th convolution: the first ``n``
    convolutions with their batch norms, activations and pooling."""
    out, convs = [], 0
    for m in model.features if n > 0 else ():
        if isinstance(m, torch.nn.Conv2d):
            if convs == n:
                break
            convs += 1
        out.append(m)
    return out


def train_mode(model: torch.nn.Module, tc: TrainConfig) -> None:
    model.train()
    frozen = [m for f in frozen_layers(model, tc.freeze_layers) for m in f.modules()]
    for m in model.modules() if tc.freeze_bn else frozen:
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def use_amp(tc: TrainConfig, cfg: ModelConfig, device: torch.device | None = None) -> bool:
    """bf16 autocast: asked for (``tc.amp``), in hardware here and, on a CPU, faster."""
    if not (tc.amp and bf16_supported(device)):
        return False
    return (device is not None and device.type == "cuda") or bf16_pays(cfg, tc)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: list[np.ndarray],
    cfg: ModelConfig,
    tc: TrainConfig,
    difficult: list[np.ndarray] | None = None,
    batch_size: int = 64,
    known_classes: list[int] | None = None,
) -> tuple[dict[str, float], float]:
    """Validation loss terms (mean per image) and VOC all-point mAP@0.5
    (``model.evaluate``'s rules). ``known_classes``: score only these classes (the
    others' outputs are untrained: a base model before its first step knows none)."""
    model.eval()
    device = device_of(model)
    sums = dict.fromkeys(TERMS, 0.0)
    ev = Evaluator(cfg.S, cfg.B, cfg.C)
    for start in range(0, len(images), batch_size):
        idx = np.arange(start, min(start + batch_size, len(images)))
        x, labs = to_device(*make_batch(images, labels, idx, cfg, tc, None), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp(tc, cfg, device)):
            pred = model(x)
        pred = pred.float()  # (n, S, S, 5B + C)
        r = yolo_loss(pred, labs, **loss_options(cfg, tc), reduction="sum")
        for k in TERMS:
            sums[k] += float(r.terms[k])
        grids = pred.cpu().numpy()
        if known_classes is not None:
            unknown = np.setdiff1d(np.arange(cfg.C), known_classes)
            grids = grids.copy()
            grids[..., 5 * cfg.B + unknown] = 0.0
        part = slice(start, start + len(idx))
        ev.add(grids, labels[part], None if difficult is None else difficult[part])
    n = max(len(images), 1)
    val = {k: v / n for k, v in sums.items()}
    val["total"] = sum(val[k] for k in TERMS)
    return val, ev.result().map


def build_network(
    cfg: ModelConfig,
    tc: TrainConfig,
    init_weights: dict[str, torch.Tensor] | None,
    device: torch.device | None = None,
) -> torch.nn.Module:
    torch.manual_seed(tc.seed)
    model = pool_before_activation(build_model(cfg))
    if init_weights is not None:
        model.load_state_dict(init_weights, strict=False)
    if device is not None:
        model = model.to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    for m in frozen_layers(model, tc.freeze_layers):
        m.requires_grad_(False)
    return model


def build_optimizer(model: torch.nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on weights only, not on biases and batch-norm parameters; the
    backbone's groups are marked so that :func:`set_lr` can slow or freeze them."""
    groups = []
    for part, backbone in ((model.features, True), (model.head, False)):
        for decay in (True, False):
            params = [p for p in part.parameters() if p.requires_grad and (p.dim() > 1) == decay]
            if params:
                wd = tc.weight_decay if decay else 0.0
                groups.append({"params": params, "weight_decay": wd, "backbone": backbone})
    if tc.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=tc.learning_rate, momentum=tc.momentum)
    # The fused kernel: 2.2 ms a step for the default model on 2 cores, against 5-7 ms
    # for the per-parameter loop (the default off CUDA).
    return torch.optim.AdamW(groups, lr=tc.learning_rate, fused=True)


def steps_per_epoch(images: int, tc: TrainConfig) -> int:
    """Optimizer steps in an epoch of ``images`` training images (the last batch short)."""
    return max(1, math.ceil(images / tc.batch_size))


def average_decay(tc: TrainConfig, total_steps: int) -> float:
    """The weight average's decay per step for a run of ``total_steps``: ``ema_decay``,
    but without warm-up at most ``1 - 1 / total_steps``, so that a short job's average
    ends at least 1 - 1/e (63 %) trained instead of mostly its starting weights."""
    if tc.ema_warmup:
        return tc.ema_decay
    return min(tc.ema_decay, 1.0 - 1.0 / total_steps)


class WeightAverage:
    """An exponential moving average of a model's weights (and batch-norm statistics).

    With ``warmup`` the decay ramps up from 0 over the first steps (``(1 + n) / (10 + n)``
    until it reaches ``decay``), so that the average soon leaves random starting weights;
    without it the average starts from the model's weights at full decay."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup, self.updates = decay, warmup, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.decay
        if self.warmup:
            d = min(d, (1 + self.updates) / (10 + self.updates))
        avgs, nows = [], []
        for avg, now in zip(
            self.module.state_dict().values(), model.state_dict().values(), strict=True
        ):
            if avg.dtype.is_floating_point:
                avgs.append(avg)
                nows.append(now.detach())
            else:
                avg.copy_(now)
        # avg + (1 - d) (now - avg) over all tensors in one call: the update takes 0.34 ms a
        # step for the default model, against 0.72 ms tensor by tensor.
        torch._foreach_lerp_(avgs, nows, 1 - d)


@dataclass
class Progress:
    """Where a run stands: restored from ``last.pt`` on resume."""

    start_epoch: int = 0
    best_map: float = -1.0
    best_epoch: int = 0
    history: list[EpochMetrics] = field(default_factory=list)
    step: int = 0  # the step of the epoch running now


def restore(
    path: str | Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    ema: WeightAverage | None = None,
) -> Progress:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt.get("trained_model", ckpt["model"]))
    if ema is not None:
        ema.module.load_state_dict(ckpt["model"])
        ema.updates = ckpt.get("ema_updates", 0)
    opt.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["torch_rng"])
    return Progress(
        start_epoch=ckpt["epoch"] + 1,
        best_map=ckpt["best_map"],
        best_epoch=ckpt.get("best_epoch", 0),
        history=[EpochMetrics(**h) for h in ckpt["history"]],
    )


def batch_workers(device: torch.device) -> int:
    """Threads that make training batches: one on the CPU, where the training step
    owns the cores; on a GPU most of the cores (up to 8), so augmentation (about 0.5 ms
    an image on one core, 2,000 images/s) keeps up with what the GPU trains."""
    return 1 if device.type == "cpu" else max(1, min(8, (os.cpu_count() or 1) - 1))


class Batches:
    """Training batches by (epoch, step), made in background threads one step ahead
    (OpenCV and NumPy release the GIL), each batch's images split across ``workers``;
    what a batch holds does not depend on timing or on the number of workers.

    For a GPU the threads leave the images uint8 (in pinned memory): a quarter of the
    bytes to send, and the arithmetic that makes them network input runs on the GPU
    instead of in threads that share the GIL with the one launching its kernels."""

    def __init__(
        self,
        data: Data,
        cfg: ModelConfig,
        tc: TrainConfig,
        workers: int = 1,
        device: torch.device | None = None,
    ) -> None:
        self.data, self.cfg, self.tc = data, cfg, tc
        self.steps = steps_per_epoch(len(data.train_images), tc)
        self.workers = workers
        self.device = device or torch.device("cpu")
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="batches")
        self.ahead: dict[tuple[int, int], tuple[np.ndarray, list[Future]]] = {}

    def indices(self, epoch: int, step: int) -> np.ndarray:
        order = np.random.default_rng((self.tc.seed, epoch)).permutation(
            len(self.data.train_images)
        )
        return order[step * self.tc.batch_size : (step + 1) * self.tc.batch_size]

    def _make(self, idx: np.ndarray, epoch: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        d = self.data
        imgs, labs = batch_arrays(d.train_images, d.train_labels, idx, self.tc, epoch)
        if self.device.type == "cpu":
            return to_tensor(imgs, self.cfg, self.tc.channels_last), labs
        imgs = torch.from_numpy(imgs)  # (n, H, W, 3) uint8
        return (imgs.pin_memory() if self.device.type == "cuda" else imgs), labs

    def prepare(self, epoch: int, step: int) -> None:
        """Start making a batch now (the next epoch's first during validation, say)."""
        if epoch < self.tc.epochs and (epoch, step) not in self.ahead:
            idx = self.indices(epoch, step)
            parts = np.array_split(idx, self.workers)
            self.ahead[(epoch, step)] = (
                idx,
                [self.pool.submit(self._make, part, epoch) for part in parts if len(part)],
            )

    def get(self, epoch: int, step: int) -> tuple[np.ndarray, torch.Tensor, list[torch.Tensor]]:
        """The batch's image indices, its network input on ``device`` and its labels
        (on the CPU, where the loss reads them)."""
        self.prepare(epoch, step)
        idx, futures = self.ahead.pop((epoch, step))
        parts = [f.result() for f in futures]
        self.prepare(*((epoch, step + 1) if step + 1 < self.steps else (epoch + 1, 0)))
        labs = [lab for p in parts for lab in p[1]]
        if self.device.type != "cpu":  # pinned: each part goes without waiting
            x = torch.cat([p[0].to(self.device, non_blocking=True) for p in parts])
            return idx, to_tensor(x, self.cfg, self.tc.channels_last), labs
        if len(parts) == 1:
            return idx, parts[0][0], labs
        x = torch.cat([p[0] for p in parts]).contiguous(
            memory_format=torch.channels_last if self.tc.channels_last else torch.contiguous_format
        )
        return idx, x, labs

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def train_one_epoch(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batches: Batches,
    cfg: ModelConfig,
    tc: TrainConfig,
    epoch: int,
    state: Progress,
    progress: Callable[[dict], None] | None,
    should_cancel: Callable[[], bool] | None,
    ema: WeightAverage | None = None,
) -> tuple[dict[str, float], float, float]:
    """One pass over the training set: mean loss terms per image, images/s, last lr."""
    train_mode(model, tc)
    device = device_of(model)
    amp = use_amp(tc, cfg, device)
    steps = batches.steps
    warmup = int(tc.warmup_epochs * steps)
    sums, seen, lr, t0 = dict.fromkeys(TERMS, 0.0), 0, tc.learning_rate, time.perf_counter()
    for step in range(steps):
        state.step = step
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"cancelled at epoch {epoch}, step {step}")
        idx, x, labs = batches.get(epoch, step)  # on the model's device
        lr = lr_at(epoch * steps + step, tc.epochs * steps, warmup, tc.learning_rate)
        set_lr(opt, lr, epoch, tc)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = model(x)  # (n, S, S, 5B + C)
        r = yolo_loss(pred, labs, **loss_options(cfg, tc))
        opt.zero_grad(set_to_none=True)
        r.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        if ema is not None:
            ema.update(model)
        seen += len(idx)
        # One read of the five terms: each read waits for the GPU to finish the step.
        values = torch.stack([r.terms[k].detach() for k in TERMS]).tolist()
        terms = dict(zip(TERMS, values, strict=True))
        for k in TERMS:
            sums[k] += terms[k] * len(idx)
        if progress is not None:
            progress(
                {
                    "epoch": epoch + 1,
                    "epochs": tc.epochs,
                    "step": step + 1,
                    "steps": steps,
                    "images": len(idx),
                    "loss": sum(terms.values()),
                    "terms": terms,
                }
            )
    train_terms = {k: v / max(seen, 1) for k, v in sums.items()}
    train_terms["total"] = sum(train_terms[k] for k in TERMS)
    return train_terms, seen / (time.perf_counter() - t0), lr


def checkpoint(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    state: Progress,
    epoch: int,
    cfg: ModelConfig,
    tc: TrainConfig,
    ema: WeightAverage | None = None,
) -> dict:
    """``model``: the weights to use (the average when there is one); the weights as
    trained, to resume from, are ``trained_model`` then."""
    weights = {"model": model.state_dict()}
    if ema is not None:
        weights = {
            "model": ema.module.state_dict(),
            "trained_model": model.state_dict(),
            "ema_updates": ema.updates,
        }
    return {
        **weights,
        "optimizer": opt.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "epoch": epoch,
        "best_map": state.best_map,
        "best_epoch": state.best_epoch,
        "history": [asdict(h) for h in state.history],
        "model_config": cfg.to_dict(),
        "train_config": tc.to_dict(),
    }


def train(
    model_cfg: ModelConfig,
    tc: TrainConfig,
    data: Data,
    out_dir: str | Path,
    *,
    resume: str | Path | None = None,
    init_weights: dict[str, torch.Tensor] | None = None,
    baseline: bool = False,
    known_classes: list[int] | None = None,
    progress: Callable[[dict], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    checkpoint_on: tuple[type[BaseException], ...] = (),
) -> TrainResult:
    """Train, validating and checkpointing (``last.pt``, ``best.pt``) every epoch.

    ``baseline``: first validate the starting weights and record them as epoch 0,
    scoring only ``known_classes`` (default all) there.
    An exception of a type in ``checkpoint_on`` raised during training (Celery's soft
    time limit, say) first saves ``interrupted.pt`` with the weights at that step."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = train_device()
    log.info("training on %s (bf16 autocast: %s)", device, use_amp(tc, model_cfg, device))
    model = build_network(model_cfg, tc, init_weights, device)
    opt = build_optimizer(model, tc)
    ema = None
    if tc.ema_decay > 0:
        total = tc.epochs * steps_per_epoch(len(data.train_images), tc)
        ema = WeightAverage(model, average_decay(tc, total), tc.ema_warmup)
    state = restore(resume, model, opt, ema) if resume is not None else Progress()
    scored = model if ema is None else ema.module  # what is validated, kept and exported
    last_path, best_path = out / "last.pt", out / "best.pt"
    if baseline and not state.history:
        val_terms, val_map = evaluate(
            model,
            data.val_images,
            data.val_labels,
            model_cfg,
            tc,
            data.val_difficult,
            known_classes=known_classes,
        )
        state.history.append(EpochMetrics(0, {}, val_terms, val_map))
        log.info("epoch 0 (the starting weights)  val mAP@0.5 %.4f", val_map)
        report_epoch(state.history[-1], tc, progress)
    batches = Batches(data, model_cfg, tc, batch_workers(device), device)
    batches.prepare(state.start_epoch, 0)
    epoch = state.start_epoch
    try:
        for epoch in range(state.start_epoch, tc.epochs):
            train_terms, speed, lr = train_one_epoch(
                model, opt, batches, model_cfg, tc, epoch, state, progress, should_cancel, ema
            )
            val_terms, val_map = evaluate(
                scored, data.val_images, data.val_labels, model_cfg, tc, data.val_difficult
            )
            m = EpochMetrics(epoch + 1, train_terms, val_terms, val_map, speed, lr)
            state.history.append(m)
            log.info(
                "epoch %d/%d  loss %.3f  val loss %.3f  val mAP@0.5 %.4f  %.0f img/s",
                m.epoch, tc.epochs, train_terms["total"], val_terms["total"], val_map, speed,
            )  # fmt: skip
            kept = tc.keep == "last" or better(m, state) or not best_path.exists()
            if kept and not math.isnan(val_map):
                state.best_map, state.best_epoch = val_map, m.epoch
            ckpt = checkpoint(model, opt, state, epoch, model_cfg, tc, ema)
            _atomic_save(ckpt, last_path)
            if kept and tc.keep == "best":
                _atomic_save(ckpt, best_path)
            write_metrics(state.history, out)
            report_epoch(m, tc, progress)
            if stop_early(state, tc):
                break
    except checkpoint_on:
        # Stopped from outside (a time limit): keep where it got to, then let it propagate.
        interrupted = {
            **checkpoint(model, opt, state, epoch, model_cfg, tc, ema),
            "step": state.step,
        }
        _atomic_save(interrupted, out / "interrupted.pt")
        raise
    finally:
        batches.close()
    write_metrics(state.history, out)
    plot_curves([asdict(h) for h in state.history], out / "curves.png")
    kept_path = best_path if tc.keep == "best" else last_path
    return TrainResult(kept_path, last_path, state.history, state.best_map, state.best_epoch)


def better(m: EpochMetrics, state: Progress) -> bool:
    """Is epoch ``m`` better than the best so far: a higher val mAP, or the same mAP
    at a lower val loss. A small or easy validation split saturates (every epoch from
    the 8th at mAP 1.0 on 50 images): the first epoch to get there is not the best."""
    if m.val_map != state.best_map:
        return m.val_map > state.best_map
    best = next((h for h in state.history if h.epoch == state.best_epoch), None)
    return best is not None and m.val["total"] < best.val["total"]


def stop_early(state: Progress, tc: TrainConfig) -> bool:
    """``tc.early_stop_patience`` epochs (``TrainConfig.keep`` says of what) have passed."""
    patience, epoch = tc.early_stop_patience, state.history[-1].epoch
    if not patience:
        return False
    if tc.keep == "best":
        if epoch - state.best_epoch >= patience:
            log.info("no better epoch for %d epochs: stopping", patience)
            return True
        return False
    start = state.history[0]
    if start.epoch != 0 or epoch < patience:
        return False  # keep="last" without a validated start: the schedule runs out
    if any(h.val_map > start.val_map for h in state.history[1:]):
        return False
    log.info("no epoch beat the starting weights in %d epochs: stopping", patience)
    return True


def report_epoch(m: EpochMetrics, tc: TrainConfig, progress: Callable[[dict], None] | None):
    if progress is not None:
        progress(
            {
                "epoch": m.epoch,
                "epochs": tc.epochs,
                "step": 0,
                "steps": 0,
                "epoch_metrics": asdict(m),
            }
        )


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
                    h.train.get("total"),
                    *[h.train.get(k) for k in TERMS],
                    h.val.get("total"),
                    h.val_map,
                    h.images_per_s,
                    h.lr,
                ]
            )
