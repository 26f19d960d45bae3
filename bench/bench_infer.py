"""Bare ONNX Runtime inference of the default model at batch 1 (target <= 15 ms), and
its int8 variant against it: latency at batch 1 and 8, mAP@0.5 on held-out images; and
decoding at the size the network needs against the full decode, in mAP."""

from __future__ import annotations

import io

import numpy as np
from common import DEFAULT_MODEL, log, p50, phone_jpeg, setup_logging, timed
from PIL import Image
from scenes import scene

from model.cli import DATA_SEED_TEST, evaluate_onnx
from model.data import shapes_dataset
from model.evaluate import evaluate_grids
from model.infer import OnnxDetector
from model.preprocess import REDUCE_GAP, decode_for_size, decode_image
from model.quantize import int8_path
from model.shapes import CLASS_NAMES


def photo_sized_scenes(n: int) -> list[tuple[bytes, np.ndarray]]:
    """Held-out scenes of another generator (bench/scenes.py: 320x240 to 2016x1512, JPEG
    and PNG), every third re-encoded as a noisy 4000x3000 JPEG, as a phone writes it."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        data, _, labels = scene(50_000 + i, list(CLASS_NAMES))
        if i % 3 == 0:
            data = phone_jpeg(Image.open(io.BytesIO(data)), rng)
        out.append((data, labels))
    return out


def decode_map(det: OnnxDetector, items: list[tuple[bytes, np.ndarray]], decode) -> float:
    grids = [det.run(det.preprocess(decode(data))[None])[0] for data, _ in items]
    cfg = det.cfg
    return evaluate_grids(np.stack(grids), [lab for _, lab in items], S=cfg.S, B=cfg.B, C=cfg.C).map


def main() -> None:
    setup_logging()
    det = OnnxDetector(DEFAULT_MODEL)
    size = det.cfg.input_size
    x = np.random.default_rng(0).integers(0, 255, (1, size, size, 3), dtype=np.uint8)
    t1 = timed(lambda: det.run(x), 200)
    x8 = np.repeat(x, 8, 0)
    t8 = timed(lambda: det.run(x8), 40)
    log.info("default model %s (%dx%d), provider %s", det.cfg.arch, size, size, det.provider)
    log.info("bare ONNX Runtime batch 1 : p50 %6.2f ms/image  (target <= 15 ms)", p50(t1) * 1e3)
    log.info(
        "bare ONNX Runtime batch 8 : p50 %6.2f ms/image  (%.2fx batch-1 throughput)",
        p50(t8) * 1e3 / 8,
        p50(t1) * 8 / p50(t8),
    )
    q = OnnxDetector(int8_path(DEFAULT_MODEL))
    q1 = timed(lambda: q.run(x), 200)
    q8 = timed(lambda: q.run(x8), 40)
    held_out = shapes_dataset(300, DATA_SEED_TEST)
    m32 = evaluate_onnx(str(DEFAULT_MODEL), held_out).map
    m8 = evaluate_onnx(str(int8_path(DEFAULT_MODEL)), held_out).map
    log.info(
        "int8 vs fp32: batch 1 %.2fx faster, batch 8 %.2fx faster; mAP@0.5 on 300 held-out "
        "images %.4f vs %.4f (%+.4f; tolerance -0.01)",
        p50(t1) / p50(q1),
        p50(t8) / p50(q8),
        m8,
        m32,
        m8 - m32,
    )
    items = photo_sized_scenes(240)
    full = decode_map(det, items, decode_image)
    at_size = decode_map(det, items, lambda data: decode_for_size(data, size).image)
    log.info(
        "decode at the size needed (%g x the input) vs the full decode: mAP@0.5 on 240 "
        "held-out scenes (80 of them 12 MP JPEGs) %.4f vs %.4f (%+.4f; target within 0.005)",
        REDUCE_GAP, at_size, full, at_size - full,
    )  # fmt: skip


if __name__ == "__main__":
    main()
