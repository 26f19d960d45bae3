"""Training throughput: plain fp32 eager against the trainer's configuration
(bf16 autocast + channels_last), same network, same data, same loss, one run."""

from __future__ import annotations

import time

import numpy as np
import torch
from common import log, setup_logging

from model.config import ModelConfig, TrainConfig
from model.data import shapes_dataset, to_arrays
from model.loss import yolo_loss
from model.networks import build_model
from model.train import (
    build_network,
    build_optimizer,
    make_batch,
    to_device,
    train_mode,
    use_amp,
)


def images_per_s(
    cfg: ModelConfig,
    X,
    L,
    *,
    amp: bool,
    channels_last: bool,
    steps: int,
    plain: bool = False,
    batch_size: int = 32,
    device: torch.device | None = None,
    warmup: int = 2,
    tc: TrainConfig | None = None,
) -> float:
    """The bare loop: forward, loss, backward, clipping and the optimizer's step (``tc``'s,
    the paper's SGD by default) on batches made beforehand. ``plain``: the network as
    written (``build_model``), not as the trainer arranges it."""
    device = device or torch.device("cpu")
    tc = tc or TrainConfig(channels_last=channels_last)
    if plain:
        torch.manual_seed(tc.seed)
        model = build_model(cfg).to(device)
    else:
        model = build_network(cfg, tc, None, device)  # frozen layers too, as a job builds it
    train_mode(model, tc)
    opt = build_optimizer(model, tc)
    bs = batch_size
    batches = [
        to_device(*make_batch(X, L, np.arange(i * bs, (i + 1) * bs) % len(X), cfg, tc, i), device)
        for i in range(steps + warmup)
    ]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    n = 0
    for i, (x, labs) in enumerate(batches):
        if i == warmup:  # after cuDNN's autotuning and the allocator's first growth
            sync()
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = model(x)
        r = yolo_loss(pred, labs, S=cfg.S, B=cfg.B, C=cfg.C)
        opt.zero_grad()
        r.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        n += len(x) if i >= warmup else 0
    sync()
    return n / (time.perf_counter() - t0)


def same_map_check() -> None:
    """Fine-tune the default model twice on the same data and seed, fp32 eager and the
    trainer's configuration, and compare validation mAP@0.5 (the service's use)."""
    import tempfile

    from common import DEFAULT_MODEL

    from model.train import Data, train

    ckpt = torch.load(DEFAULT_MODEL.with_suffix(".pt"), weights_only=False)
    cfg = ModelConfig.from_dict(ckpt["model_config"])
    Xtr, Ltr = to_arrays(shapes_dataset(800, 101), cfg.input_size)
    Xva, Lva = to_arrays(shapes_dataset(300, 102), cfg.input_size)
    out = {}
    trainer_amp = use_amp(TrainConfig(batch_size=32), cfg)
    for name, amp, cl in (("fp32 eager", False, False), ("trainer", trainer_amp, True)):
        tc = TrainConfig(
            epochs=2,
            batch_size=32,
            optimizer="adamw",
            learning_rate=2e-4,
            warmup_epochs=0.2,
            amp=amp,
            channels_last=cl,
            seed=0,
        )
        t0 = time.perf_counter()
        r = train(
            cfg,
            tc,
            Data(Xtr, Ltr, Xva, Lva),
            tempfile.mkdtemp(prefix="bench-train-"),
            init_weights=ckpt["model"],
        )
        out[name] = (r.history[-1].val_map, time.perf_counter() - t0)
    (m32, t32), (mtr, ttr) = out["fp32 eager"], out["trainer"]
    log.info(
        "fine-tune 2 epochs x 800 images: fp32 eager val mAP@0.5 %.3f in %.0f s | trainer "
        "val mAP@0.5 %.3f in %.0f s | time ratio %.2fx",
        m32,
        t32,
        mtr,
        ttr,
        t32 / ttr,
    )


def main() -> None:
    setup_logging()
    ds = shapes_dataset(64, 77)
    for name, cfg in [
        (
            "tiny-yolov1 224 (default model)",
            ModelConfig(arch="tiny-yolov1", input_size=224, C=5, head_activation="sigmoid"),
        ),
        ("fast-yolov1 224", ModelConfig(arch="fast-yolov1", input_size=224, C=5)),
    ]:
        X, L = to_arrays(ds, cfg.input_size)
        base = images_per_s(cfg, X, L, amp=False, channels_last=False, steps=6, plain=True)
        amp = use_amp(TrainConfig(batch_size=32), cfg)  # as a job decides
        fast = images_per_s(cfg, X, L, amp=amp, channels_last=True, steps=6)
        log.info(
            "train %-32s fp32 eager %6.1f img/s | trainer (bf16=%s, channels_last, pool first) "
            "%6.1f img/s | ratio %.2fx",
            name,
            base,
            amp,
            fast,
            fast / base,
        )
    same_map_check()


if __name__ == "__main__":
    main()
