"""Bare ONNX Runtime inference of the default model at batch 1 (target <= 15 ms), and
its int8 variant against it: latency at batch 1 and 8, mAP@0.5 on held-out images."""

from __future__ import annotations

import numpy as np
from common import DEFAULT_MODEL, log, p50, setup_logging, timed

from model.cli import DATA_SEED_TEST, evaluate_onnx
from model.data import shapes_dataset
from model.infer import OnnxDetector
from model.quantize import int8_path


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


if __name__ == "__main__":
    main()
