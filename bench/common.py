"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import io
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_MODEL = ROOT / "models" / "default" / "model.onnx"

log = logging.getLogger("bench")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")


def timed(fn: Callable[[], object], repeat: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def phone_jpeg(img: Image.Image, rng: np.random.Generator) -> bytes:
    """``img`` as a phone would write it: 4000x3000, sensor-like noise, JPEG quality 90
    (about 2.4 MB)."""
    big = img.convert("RGB").resize((4000, 3000), Image.BICUBIC)
    noisy = np.asarray(big, np.float32) + rng.normal(0, 4, (3000, 4000, 1)).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()
