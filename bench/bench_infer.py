"""Bare ONNX Runtime inference of the default model at batch 1 (target <= 15 ms)."""

from __future__ import annotations

import numpy as np
from common import DEFAULT_MODEL, log, p50, setup_logging, timed

from model.infer import OnnxDetector


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


if __name__ == "__main__":
    main()
