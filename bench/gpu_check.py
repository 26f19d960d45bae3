"""``make gpu-check``: the GPU paths on a machine with a CUDA GPU, with the CPU bench's
ratios, each against a baseline measured in the same run.

- Detect: the default model under ONNX Runtime's CUDA provider (and TensorRT's, where
  TensorRT's libraries are installed) against its CPU provider: batch 1 and 8 latency,
  the largest grid difference, and mAP@0.5 on 300 held-out images, which must agree
  within 0.002.
- Train: images/s of fp32 eager against the trainer's configuration (bf16 autocast and
  channels_last) on CUDA, and the CUDA trainer against the CPU trainer; then a short
  fine-tune through ``model.train.train`` on CUDA, which must end with finite losses;
  then a job's loop (the fine-tuning defaults, 2,048 images) against the bare loop on
  the same arrays, as ``make bench`` measures it on the CPU (target >= 0.8).

Where this ONNX Runtime has no CUDA provider (onnxruntime-gpu not installed, or not
for this CUDA) it says so and checks the torch training path alone. Exit status: 0 when
every check that could run passed, 1 when one failed, 2 when there is no CUDA device.
"""

from __future__ import annotations

import math
import sys
import tempfile

import numpy as np
from common import DEFAULT_MODEL, log, p50, setup_logging, timed

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def check_detect(providers: list[str]) -> bool:
    from model.cli import DATA_SEED_TEST
    from model.data import shapes_dataset
    from model.infer import OnnxDetector

    cpu = OnnxDetector(DEFAULT_MODEL, providers=["CPUExecutionProvider"])
    size = cpu.cfg.input_size
    x1 = np.random.default_rng(0).integers(0, 255, (1, size, size, 3), dtype=np.uint8)
    x8 = np.repeat(x1, 8, 0)
    c1, c8 = p50(timed(lambda: cpu.run(x1), 100)), p50(timed(lambda: cpu.run(x8), 30))
    log.info("CPU provider: batch 1 p50 %.2f ms, batch 8 %.2f ms/image (the baseline)",
             c1 * 1e3, c8 * 1e3 / 8)  # fmt: skip
    held_out = shapes_dataset(300, DATA_SEED_TEST, "hard")
    cpu_map = _map_with(cpu, held_out)
    ok = True
    for name in providers:
        if name == "TensorrtExecutionProvider" and not _tensorrt_installed():
            # onnxruntime-gpu always lists it; without TensorRT it would fall back to the CPU
            log.info("%s: TensorRT's libraries (libnvinfer) are not installed; skipped", name)
            continue
        try:
            det = OnnxDetector(DEFAULT_MODEL, providers=[name, "CPUExecutionProvider"])
        except Exception as exc:  # a provider that cannot start (TensorRT libraries missing)
            log.info("%s: could not start (%s)", name, exc)
            ok = False
            continue
        if det.provider != name:  # ONNX Runtime falls back to the CPU without a word
            log.info("%s: asked for, but the session runs on %s", name, det.provider)
            ok = False
            continue
        g1 = p50(timed(lambda d=det: d.run(x1), 100))
        g8 = p50(timed(lambda d=det: d.run(x8), 30))
        diff = float(np.abs(det.run(x8) - cpu.run(x8)).max())
        gpu_map = _map_with(det, held_out)
        good = diff < 1e-2 and abs(gpu_map - cpu_map) <= 0.002
        ok &= good
        log.info(
            "%s: batch 1 p50 %.2f ms (%.2fx the CPU), batch 8 %.2f ms/image (%.2fx); "
            "max |grid - CPU grid| %.1e; mAP@0.5 %.4f vs CPU %.4f  %s",
            name, g1 * 1e3, c1 / g1, g8 * 1e3 / 8, c8 / g8, diff, gpu_map, cpu_map,
            "ok" if good else "FAILED",
        )  # fmt: skip
        ok &= check_mixed_batches(name, x1, g8)
    return ok


def check_mixed_batches(provider: str, x1: np.ndarray, fixed8_s: float) -> bool:
    """Batches of 1 to 8 in turn, as the micro-batcher forms them: one session against
    the API's served model (a session per batch size on a GPU provider). Passes when
    the served model's mean run is within 3x a fixed batch of 8."""
    from app.serving import load_served_model
    from model.infer import OnnxDetector

    sizes = np.random.default_rng(1).integers(1, 9, 80).tolist()
    batches = {n: np.repeat(x1, n, 0) for n in range(1, 9)}
    providers = [provider, "CPUExecutionProvider"]
    one = OnnxDetector(DEFAULT_MODEL, providers=providers)
    served = load_served_model(DEFAULT_MODEL, version=1, providers=providers, batcher_sizes=[8])
    means = {}
    for label, run in (("one session", one.run), ("served (buckets)", served.run)):
        it = iter(sizes * 2)
        times = timed(lambda r=run, i=it: r(batches[next(i)]), len(sizes), warmup=len(sizes))
        means[label] = sum(times) / len(times)
    good = means["served (buckets)"] <= 3 * fixed8_s
    log.info(
        "%s, batch sizes 1-8 in turn: one session %.2f ms a run, the served model %.2f ms "
        "(buckets %s), a fixed batch of 8 %.2f ms  %s",
        provider, means["one session"] * 1e3, means["served (buckets)"] * 1e3,
        sorted(served.buckets or []), fixed8_s * 1e3, "ok" if good else "FAILED",
    )  # fmt: skip
    return good


def _tensorrt_installed() -> bool:
    import ctypes

    for lib in ("libnvinfer.so.10", "libnvinfer.so"):
        try:
            ctypes.CDLL(lib)
            return True
        except OSError:
            pass
    return False


def _map_with(det, ds) -> float:
    """mAP@0.5 of a running detector (its provider) on a data set."""
    from model.data import load_image
    from model.evaluate import Evaluator

    ev = Evaluator(det.cfg.S, det.cfg.B, det.cfg.C)
    for start in range(0, len(ds), 32):
        recs = ds.records[start : start + 32]
        grids = det.run(np.stack([det.preprocess(load_image(r)) for r in recs]))
        ev.add(grids, [r.labels for r in recs], [r.difficult for r in recs])
    return ev.result().map


def check_train() -> bool:
    import torch
    from bench_train import images_per_s

    from model.config import ModelConfig, TrainConfig
    from model.data import shapes_dataset, to_arrays
    from model.train import Data, bf16_supported, train, use_amp

    cuda = torch.device("cuda")
    cfg = ModelConfig(arch="tiny-yolov1", input_size=224, C=5, head_activation="sigmoid")
    X, L = to_arrays(shapes_dataset(256, 77), cfg.input_size)
    bf16 = bf16_supported(cuda)
    on_gpu = dict(steps=20, warmup=3, device=cuda)
    fp32 = images_per_s(cfg, X, L, amp=False, channels_last=False, **on_gpu)
    fast = images_per_s(cfg, X, L, amp=bf16, channels_last=True, **on_gpu)
    cpu = images_per_s(cfg, X, L, amp=use_amp(TrainConfig(), cfg), channels_last=True, steps=4)
    log.info(
        "train tiny-yolov1 224 on %s: fp32 eager %.0f img/s | trainer (bf16=%s, "
        "channels_last) %.0f img/s | ratio %.2fx | %.1fx the CPU trainer (%.0f img/s)",
        torch.cuda.get_device_name(0), fp32, bf16, fast, fast / fp32, fast / cpu, cpu,
    )  # fmt: skip
    ckpt = torch.load(DEFAULT_MODEL.with_suffix(".pt"), map_location="cpu", weights_only=False)
    base = ModelConfig.from_dict(ckpt["model_config"])
    Xtr, Ltr = to_arrays(shapes_dataset(256, 101), base.input_size)
    Xva, Lva = to_arrays(shapes_dataset(64, 102), base.input_size)
    tc = TrainConfig(epochs=2, batch_size=32, optimizer="adamw", learning_rate=2e-4, seed=0)
    with tempfile.TemporaryDirectory() as out:
        r = train(base, tc, Data(Xtr, Ltr, Xva, Lva), out, init_weights=ckpt["model"],
                  baseline=True)  # fmt: skip
    losses = [h.train["total"] for h in r.history[1:]]
    good = all(math.isfinite(v) for v in losses) and math.isfinite(r.best_map)
    log.info(
        "fine-tune on CUDA through model.train: val mAP@0.5 %s, train loss %s  %s",
        " -> ".join(f"{h.val_map:.3f}" for h in r.history),
        " -> ".join(f"{v:.3f}" for v in losses),
        "ok" if good else "FAILED",
    )
    job_loop_vs_bare(base, ckpt["model"], Xva, Lva)
    return good


def job_loop_vs_bare(cfg, weights, Xva, Lva) -> None:
    """The trainer's own img/s in epochs 2-3 of a job with the fine-tuning defaults
    (augmentation, the weight average, per-step progress) against the bare loop on the
    same arrays: where the job loses time around the step on a GPU."""
    import torch
    from bench_train import images_per_s

    from model.config import FINETUNE, TrainConfig
    from model.data import shapes_dataset, to_arrays
    from model.train import Data, train, use_amp

    cuda = torch.device("cuda")
    X, L = to_arrays(shapes_dataset(2048, 103), cfg.input_size)
    tc = TrainConfig(**{**FINETUNE.to_dict(), "epochs": 3})
    steps = len(X) // tc.batch_size
    with tempfile.TemporaryDirectory() as out:
        r = train(cfg, tc, Data(X, L, Xva, Lva), out, init_weights=weights,
                  progress=lambda event: None)  # fmt: skip
    job = float(np.median([h.images_per_s for h in r.history[1:]]))
    bare = images_per_s(cfg, X, L, amp=use_amp(tc, cfg, cuda), channels_last=tc.channels_last,
                        steps=steps, batch_size=tc.batch_size, device=cuda, tc=tc)  # fmt: skip
    log.info(
        "job loop on CUDA (fine-tuning defaults, batch %d, %d images): %.0f img/s in epochs "
        "2-3, bare loop on the same arrays %.0f img/s, ratio %.2f (target >= 0.8)",
        tc.batch_size, len(X), job, bare, job / bare,
    )  # fmt: skip


def main() -> int:
    setup_logging()
    import onnxruntime as ort
    import torch

    available = ort.get_available_providers()
    providers = [p for p in GPU_PROVIDERS if p in available]
    cuda = torch.cuda.is_available()
    log.info("torch %s (CUDA %s, device: %s); onnxruntime %s, providers %s",
             torch.__version__, torch.version.cuda, cuda, ort.__version__, available)  # fmt: skip
    if not cuda and not providers:
        log.info("no CUDA device here: nothing to check (make bench has the CPU figures)")
        return 2
    ok = True
    if providers:
        ok &= check_detect(providers)
    else:
        log.info("this onnxruntime has no CUDA provider (pip install onnxruntime-gpu for this "
                 "CUDA); checking the torch training path alone")  # fmt: skip
    if cuda:
        ok &= check_train()
    else:
        log.info("torch sees no CUDA device (a CPU build?): the training path is not checked")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
