"""The console's sample image (app/console/sample.jpg): the first held-out scene of the
project's generator (``model.shapes``, "medium" level, split seed 97, never a training
seed) that holds at least four objects of four classes and is at least 480 pixels on its
short side. It is chosen by those rules alone, not by how the model does on it; the
script prints what the shipped model finds there at its calibrated threshold."""

from __future__ import annotations

from pathlib import Path

from model.infer import OnnxDetector
from model.shapes import CLASS_NAMES, make_sample, sample_seed

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    for i in range(1000):
        s = make_sample(sample_seed(97, i), "medium")
        classes = {int(c) for c in s.labels[:, 0]}
        if len(s.labels) >= 4 and len(classes) >= 4 and min(s.image.size) >= 480:
            break
    out = ROOT / "app" / "console" / "sample.jpg"
    s.image.save(out, "JPEG", quality=90)
    det = OnnxDetector(str(ROOT / "models" / "default" / "model.onnx"))
    found = det.detect([s.image])[0]
    print(f"scene {i}: {s.image.size}, truth {[CLASS_NAMES[int(c)] for c in s.labels[:, 0]]}")
    scores = [(d.class_name, round(d.confidence, 2)) for d in found]
    print(f"found at {det.conf_threshold}: {scores}")


if __name__ == "__main__":
    main()
