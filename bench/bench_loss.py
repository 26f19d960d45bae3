"""Loss benchmark: torch forward+backward, NumPy forward and the brute-force
reference (a plain Python loop), batches 64 and 1024, S=7, B=2, C=20, timed in the
same run."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere
from model.loss import yolo_loss  # noqa: E402
from model.loss_numpy import yolo_loss_numpy  # noqa: E402
from support.reference_loss import reference_loss  # noqa: E402

log = logging.getLogger("bench.loss")


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def batch(N: int, S: int, B: int, C: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pred = rng.normal(0.3, 0.5, size=(N, S, S, 5 * B + C)).astype(np.float32)
    labels = []
    for _ in range(N):
        k = rng.integers(0, 7)
        lab = np.column_stack(
            [rng.integers(0, C, k), rng.uniform(0, 1, (k, 2)), rng.uniform(0.05, 0.9, (k, 2))]
        )
        labels.append(lab)
    return pred, labels


def measure(N: int, S: int, B: int, C: int) -> None:
    pred, labels = batch(N, S, B, C)
    tlabels = [torch.tensor(lab, dtype=torch.float32) for lab in labels]
    tpred = torch.tensor(pred)

    def torch_fwd_bwd() -> None:
        p = tpred.clone().requires_grad_(True)
        yolo_loss(p, tlabels).total.backward()

    repeat = 30 if N <= 64 else 5
    t_torch = best_of(torch_fwd_bwd, repeat)
    t_np = best_of(lambda: yolo_loss_numpy(pred, labels), repeat)
    pred_l, labels_l = pred.tolist(), [lab.tolist() for lab in labels]
    t_ref = best_of(lambda: reference_loss(pred_l, labels_l, S, B, C), 10 if N <= 64 else 2)
    us = 1e6 / N
    line = "  %-24s: %8.2f ms  %6.1f us/image  %5.1fx faster"
    log.info("batch %d:", N)
    log.info("  %-24s: %8.2f ms  %6.1f us/image   1.0x", "python loop (reference)", t_ref * 1e3,
             t_ref * us)  # fmt: skip
    log.info(line, "torch forward+backward", t_torch * 1e3, t_torch * us, t_ref / t_torch)
    log.info(line + " (target >= 10x)", "numpy forward (the API)", t_np * 1e3, t_np * us,
             t_ref / t_np)  # fmt: skip


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    S, B, C = 7, 2, 20
    log.info("loss, S=%d B=%d C=%d, best of repeated runs; ratios to the Python loop", S, B, C)
    for N in (64, 1024):
        measure(N, S, B, C)


if __name__ == "__main__":
    main()
